"""Issue 24, hardening second round: every input bounded before the service multiplies it.

One test (or a few) per defect of the issue, numbered as there. Memory tests run in a fresh interpreter under an
address-space cap (what is mapped at the start of the measured step plus a stated margin) and compare the peak RSS
(``ru_maxrss``) before and after that step, with the bound stated beside each assertion.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from multimodal_embed import Embedder, ImageIndex
from multimodal_embed.cli import EXIT_PARTIAL, main
from multimodal_embed.errors import IndexCorruptError, InvalidInputError
from multimodal_embed.imagefiles import printable

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "multimodal_embed" / "demo_assets"
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status and sets RLIMIT_AS")

# Run at the top of every memory script: cap(extra_mb) limits the address space to what is mapped now plus
# extra_mb (a runaway allocation then fails with MemoryError instead of taking the machine); peak_mb() is the
# process's peak RSS so far.
PROLOGUE = """
import json, resource, sys
def _vm_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1])
def cap(extra_mb):
    limit = (_vm_kb() + extra_mb * 1024) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def drop_dac():  # root ignores file modes: drop CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH so a read-only file is one
    import ctypes, os
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
    header, data = Header(0x20080522, 0), (Data * 2)()
    assert libc.capget(ctypes.byref(header), data) == 0
    data[0].effective &= ~0b110
    data[0].permitted &= ~0b110
    assert libc.capset(ctypes.byref(header), data) == 0, ctypes.get_errno()
"""


def run_script(body: str, *args: str, timeout: float = 300) -> dict:
    """Run ``PROLOGUE + body`` in a fresh interpreter; its last stdout line is JSON."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", PROLOGUE + textwrap.dedent(body), *args], env=env, check=False,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def emb(fixtures_dir):
    return Embedder.from_pretrained(text=str(fixtures_dir / "text-v1.5-tiny"),
                                    vision=str(fixtures_dir / "vision-v1.5-tiny"), device="cpu")


# -- 1. the demo's Compare tab: texts and images capped per request, memory bounded by the cap --------------------
DEMO_SCRIPT = """
import gradio as gr
from multimodal_embed import Embedder, ImageIndex
from multimodal_embed.demo import build_app  # the handlers as Gradio runs them (no new names: runs on old code)

fixtures, folder, path = sys.argv[1:4]
emb = Embedder.from_pretrained(text=fixtures + "/text-v1.5-tiny", vision=fixtures + "/vision-v1.5-tiny", device="cpu")
index = ImageIndex.create(path, emb)
index.add_folder(folder, show_progress=False)
fns = {f.api_name: f.fn for f in build_app(emb, index).fns.values()}

def call(name, *a):
    try:
        return "ok", fns[name](*a)
    except gr.Error as exc:
        return "refused: " + str(exc.message), None
    except MemoryError:
        return "MemoryError", None

fns["compare"]("a cat\\na dog", None)  # warm: the first call allocates the model's buffers
before = peak_mb()
cap(1500)
big, _ = call("compare", "\\n".join(f"l{i}" for i in range(2000)), None)  # 2,000 short lines: 11 KB sent
labels, _ = call("zero_shot", Image.new("RGB", (64, 64)), ",".join(f"l{i}" for i in range(3000)), "simple")
full, out = call("compare", "\\n".join(f"line {i}" for i in range(32)), None)
print(json.dumps({"big": big, "labels": labels, "full": full, "rows": len(out[1]) if out else 0,
                  "grew_mb": peak_mb() - before}))
"""


@linux_only
@pytest.mark.slow
def test_demo_compare_and_labels_are_capped_and_memory_stays_bounded(fixtures_dir, tmp_path):
    folder = tmp_path / "g"
    folder.mkdir()
    for p in sorted(SAMPLE.glob("*.jpg"))[:2]:
        shutil.copy(p, folder / p.name)
    res = run_script("from PIL import Image\n" + DEMO_SCRIPT, str(fixtures_dir), str(folder),
                     str(tmp_path / "i.mmindex"))
    # before the fix 2,000 lines built a 2,000 x 2,000 matrix, list, HTML table and DataFrame (+2.3 GB in the issue)
    assert res["big"].startswith("refused: 2000 texts and 0 images given; Compare takes at most 32 texts"), res
    assert res["labels"].startswith("refused: 3000 labels given; at most 100"), res
    assert res["full"] == "ok" and res["rows"] == 32, res  # the cap itself is served
    assert res["grew_mb"] < 150, res  # measured about 0-20 MB: the refused requests cost nothing


def test_demo_inputs_refused_with_a_clear_message():
    from multimodal_embed.demo import MAX_COMPARE_IMAGES, MAX_LABELS, MAX_TEXT_CHARS, compare_inputs, parse_labels

    assert compare_inputs("a\n\n b \n", None) == (["a", "b"], [])
    with pytest.raises(InvalidInputError, match=f"at most 32 texts and {MAX_COMPARE_IMAGES} images"):
        compare_inputs("x", [f"{i}.jpg" for i in range(MAX_COMPARE_IMAGES + 1)])
    with pytest.raises(InvalidInputError, match=f"at most {MAX_TEXT_CHARS} per request"):
        compare_inputs("x" * (MAX_TEXT_CHARS + 1), None)  # refused before it is split
    assert parse_labels(",".join(f"l{i}" for i in range(MAX_LABELS))) == [f"l{i}" for i in range(MAX_LABELS)]
    with pytest.raises(InvalidInputError, match=f"{MAX_LABELS + 1} labels given"):
        parse_labels(",".join(f"l{i}" for i in range(MAX_LABELS + 1)))


# -- 5. names printed escaped by classify too; bidirectional controls escaped everywhere ---------------------------
def test_printable_escapes_bidirectional_controls():
    spoof = "photo\u202egpj.exe"  # shows as "photoexe.jpg" in a terminal
    assert printable(spoof) == "photo\\u202egpj.exe"
    for ch in "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u2066\u2067\u2068\u2069":
        assert printable(f"a{ch}b") == f"a\\u{ord(ch):04x}b"
    assert printable("ünï 日本 🐈") == "ünï 日本 🐈"  # ordinary text is left alone


def test_classify_prints_names_and_failures_escaped(tmp_path, capsys):
    folder = tmp_path / "g"
    folder.mkdir()
    evil = "x.jpg\nforged.jpg\tcat 1.000\x1b[2J\u202egpj"
    shutil.copy(SAMPLE / "cat.jpg", folder / f"{evil}.jpg")
    (folder / f"bad\n{evil}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code = main(["classify", "--model", "minilm-efficientnet-lite0", "--device", "cpu", "--labels", "cat,dog",
                 str(folder)])
    captured = capsys.readouterr()
    assert code == EXIT_PARTIAL
    out_lines, err_lines = captured.out.splitlines(), captured.err.splitlines()
    assert len(out_lines) == 2, out_lines  # one line per image, nothing forged
    assert not any(line.startswith("forged") for line in out_lines + err_lines)
    for text in (captured.out, captured.err):
        assert "\x1b" not in text and "\u202e" not in text
    assert "\\x1b[2J\\u202egpj" in captured.out
    failed = [line for line in err_lines if line.startswith("mmembed: failed: ")]
    assert len(failed) == 1 and "bad\\nx.jpg\\nforged" in failed[0], err_lines


# -- 6. the label check is linear; labels per demo request capped (above) ------------------------------------------
def test_label_check_is_linear():
    # 200,000 distinct labels: list.count per label was 2e10 comparisons (minutes); a set pass takes well under 1 s
    res = run_script("""
        import time
        from multimodal_embed.zeroshot import check_labels, resolve_templates
        labels = [f"label {i}" for i in range(200_000)]
        t0 = time.perf_counter()
        check_labels(labels)
        resolve_templates([f"{{}} {i}" for i in range(200_000)])
        try:
            check_labels(labels + ["label 7", "label 3"])
            dupes = None
        except ValueError as exc:
            dupes = str(exc)
        print(json.dumps({"seconds": time.perf_counter() - t0, "dupes": dupes}))
    """, timeout=60)
    assert res["dupes"] == "duplicate labels: ['label 3', 'label 7']"
    assert res["seconds"] < 20, res  # a complexity bound with a wide margin, not a benchmark


# -- 7. read-only and disk-full indexes: the package's error naming the index and the cause; nothing half-written ---
def _index_with(emb, tmp_path: Path, n: int) -> tuple[Path, Path]:
    folder = tmp_path / "g"
    folder.mkdir(parents=True)
    for p in sorted(SAMPLE.glob("*.jpg"))[:n]:
        shutil.copy(p, folder / p.name)
    path = tmp_path / "i.mmindex"
    with ImageIndex.create(path, emb) as index:
        index.add_folder(folder, show_progress=False)
    return path, folder


def _consistent(path: Path, n: int) -> None:
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT count(*) FROM files f JOIN vectors v ON v.file_id = f.id").fetchone()[0] == n
    finally:
        con.close()


READ_ONLY = """
import numpy as np
from multimodal_embed import ImageIndex
from multimodal_embed.errors import IndexAccessError
drop_dac()
path, more = sys.argv[1:3]
out = {}
try:
    index = ImageIndex.open(path)
    out["hits"] = len(index.search(np.ones(index.dim, np.float32), k=2))
    index.add_folder(more, show_progress=False)
    out["add"] = "written"
except IndexAccessError as exc:
    out["error"] = str(exc)
except Exception as exc:
    out["error"] = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


@linux_only
@pytest.mark.slow
@pytest.mark.parametrize("what", ["file", "folder"])
def test_read_only_index_is_index_access_error(emb, tmp_path, what):
    path, _ = _index_with(emb, tmp_path / "x", 2)
    more = tmp_path / "more"
    more.mkdir()
    shutil.copy(sorted(SAMPLE.glob("*.jpg"))[5], more / "new.jpg")
    path.chmod(0o444)
    if what == "folder":
        path.parent.chmod(0o555)
    try:
        res = run_script(READ_ONLY, str(path), str(more))
    finally:
        path.parent.chmod(0o755)
        path.chmod(0o644)
    if what == "file":  # the folder is writable: reading works, writing is refused
        assert res["hits"] == 2, res
    assert res["error"].startswith(f"cannot use the index {path}: the index file or its folder is read-only"), res
    assert "SQLITE_READONLY" in res["error"], res
    _consistent(path, 2)


DISK_FULL = """
import resource, signal
from multimodal_embed import ImageIndex
from multimodal_embed.errors import IndexAccessError
path, more, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
index = ImageIndex.open(path)
index.embedder  # loaded before the limit
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    index.add_folder(more, batch_size=2, show_progress=False)
    out = {"error": None}
except IndexAccessError as exc:
    out = {"error": str(exc)}
except Exception as exc:
    out = {"error": f"{type(exc).__module__}.{type(exc).__name__}: {exc}"}
print(json.dumps(out))
"""


@linux_only
@pytest.mark.slow
def test_disk_full_index_is_index_access_error_and_stays_consistent(emb, tmp_path):
    path, _ = _index_with(emb, tmp_path / "x", 2)
    more = tmp_path / "more"
    more.mkdir()
    for i, p in enumerate(sorted(SAMPLE.glob("*.jpg"))[2:22]):
        shutil.copy(p, more / f"{i:02d}.jpg")
    # the file size limit stands in for a full disk: the index and its WAL may not grow past it
    limit = max(path.stat().st_size, 32768) + 8192
    res = run_script(DISK_FULL, str(path), str(more), str(limit))
    assert res["error"] and res["error"].startswith(f"cannot use the index {path}: "), res
    assert "SQLITE_IOERR" in res["error"] or "SQLITE_FULL" in res["error"], res
    with ImageIndex.open(path) as index:  # consistent, whole batches only; a re-run finishes the job
        done = len(index)
        assert 2 <= done < 22 and (done - 2) % 2 == 0
        index.add_folder(more, show_progress=False)
        assert len(index) == 22
    _consistent(path, 22)


# -- 8. a damaged index dimension is IndexCorruptError --------------------------------------------------------------
@pytest.mark.parametrize("dim", ["1e999", "-1e999", "1e9", "64.5", "true", "\"64\"", "null", "0"])
def test_damaged_dimension_is_index_corrupt_error(emb, tmp_path, dim):
    path, _ = _index_with(emb, tmp_path, 1)
    con = sqlite3.connect(path)
    with con:
        model = con.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()[0]
        damaged = re.sub(r'"dim": \d+', f'"dim": {dim}', model)
        assert damaged != model
        con.execute("UPDATE meta SET value = ? WHERE key = 'model'", (damaged,))
    con.close()
    with pytest.raises(IndexCorruptError, match=re.escape(str(path))):
        ImageIndex.open(path)
