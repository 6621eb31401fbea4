"""Issue 24, hardening second round: every input bounded before the service multiplies it.

One test (or a few) per defect of the issue, numbered as there. Memory tests run in a fresh interpreter under an
address-space cap (what is mapped at the start of the measured step plus a stated margin) and compare the peak RSS
(VmHWM, reset at the start of the step) with the RSS before it, with the bound stated beside each assertion.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multimodal_embed import Embedder, ImageIndex
from multimodal_embed.cli import EXIT_ERROR, EXIT_PARTIAL, EXIT_USAGE, main
from multimodal_embed.errors import (
    ConfigError,
    ImageDecodeError,
    IndexCorruptError,
    InputTypeError,
    InvalidInputError,
    NotAModelFolderError,
)
from multimodal_embed.imagefiles import NOT_REGULAR, printable
from multimodal_embed.images import load_image

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "multimodal_embed" / "demo_assets"
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status and sets RLIMIT_AS")

# Run at the top of every memory script: start(extra_mb) limits the address space to what is mapped now plus
# extra_mb (a runaway allocation then fails with MemoryError instead of taking the machine), resets the peak RSS and
# returns the current RSS in MB; peak_mb() is the peak RSS since.
PROLOGUE = """
import json, resource, sys
def _status_mb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
def reset():
    with open("/proc/self/clear_refs", "w") as fh:  # the peak RSS starts again from the current RSS
        fh.write("5")
    return _status_mb("VmRSS")
def start(extra_mb):
    resource.setrlimit(resource.RLIMIT_AS, ((int(_status_mb("VmSize")) + extra_mb) << 20,) * 2)
    return reset()
def peak_mb():  # this process's peak RSS (VmHWM: ru_maxrss would include the parent's, inherited at exec)
    return _status_mb("VmHWM")
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
before = start(1500)
big, _ = call("compare", "\\n".join(f"l{i}" for i in range(2000)), None)  # 2,000 short lines: 11 KB sent
labels, _ = call("zero_shot", Image.new("RGB", (64, 64)), ",".join(f"l{i}" for i in range(3000)), "simple")
full, out = call("compare", "\\n".join(f"line {i}" for i in range(32)), None)
rows = (out.count("<tr") - 1 if isinstance(out, str) else len(out[1])) if out else 0  # table rows (a header row)
print(json.dumps({"big": big, "labels": labels, "full": full, "rows": rows,
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
    assert res["grew_mb"] < 150, res  # measured 2 MB: the refused requests cost nothing


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


# -- 2. a FIFO or device given directly as an image path: a per-item error at once, the good rows kept ----------------
def _within(seconds: float, fn, unblock) -> dict:
    """``fn()`` in a thread; if it is still running after ``seconds`` (blocked, as before the fix), ``unblock()`` is
    called until it ends and the test fails."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        while thread.is_alive():
            unblock()
            thread.join(0.2)
        pytest.fail(f"still blocked after {seconds} s")
    if "error" in out:
        raise out["error"]
    return out["value"]


def _release(fifo: Path):
    def unblock():  # a reader waiting in open() for a writer gets one, then end of file
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    return unblock


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_and_device_paths_fail_at_once_and_the_good_rows_stay(emb, tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    items = [str(fifo), str(SAMPLE / "cat.jpg"), "/dev/zero"]
    res = _within(60, lambda: emb.embed_images_with_errors(items, num_workers=2), _release(fifo))
    assert res.indices == [1] and res.vectors.shape[0] == 1
    assert [(f.index, f.reason) for f in res.failures] == [(0, NOT_REGULAR), (2, NOT_REGULAR)]
    with pytest.raises(ImageDecodeError, match="not a regular file"):
        load_image(fifo)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_cli_embed_fifo_path_is_a_failed_row(fixtures_dir, tmp_path, capsys):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    argv = ["embed", "--model", str(fixtures_dir / "vision-v1.5-tiny"), "--images", str(fifo), str(SAMPLE / "cat.jpg")]
    code = _within(60, lambda: main(argv), _release(fifo))
    captured = capsys.readouterr()
    assert code == EXIT_PARTIAL
    assert [json.loads(line)["path"] for line in captured.out.splitlines()] == [str(SAMPLE / "cat.jpg")]
    assert captured.err == f"mmembed: failed: #0 '{fifo}': {NOT_REGULAR}\n"  # one line: the item and the reason


# -- 3. a file-like input is read up to the byte cap, never to its end ----------------------------------------------
class Endless(io.RawIOBase):
    """A binary stream of ``total`` zero bytes (a stand-in for /dev/zero, a pipe or a socket) counting what is read."""

    def __init__(self, total: int):
        self.total, self.served = total, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = min(len(buf), self.total - self.served)
        buf[:n] = b"\0" * n
        self.served += n
        return n


def test_stream_is_read_up_to_the_cap_only():
    stream = Endless(32 << 20)
    with pytest.raises(ImageDecodeError, match="over the 1048576-byte limit"):
        load_image(stream, url_max_bytes=1 << 20)
    assert stream.served <= (1 << 20) + 1  # before the fix: all 32 MB (and /dev/zero: until memory ran out)
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buf, "PNG")
    buf.seek(0)
    assert load_image(io.BufferedReader(buf), url_max_bytes=1 << 20).size == (40, 30)  # under the cap: read
    with pytest.raises(ImageDecodeError, match="binary mode"):
        load_image(io.StringIO("not bytes"))


@linux_only
@pytest.mark.slow
def test_dev_zero_stream_memory_is_bounded_by_the_cap():
    res = run_script("""
        from multimodal_embed.errors import ImageDecodeError
        from multimodal_embed.images import URL_MAX_BYTES, load_image
        before = start(2000)
        try:
            with open("/dev/zero", "rb") as fh:
                load_image(fh)
            reason = None
        except ImageDecodeError as exc:
            reason = exc.reason
        print(json.dumps({"reason": reason, "grew_mb": peak_mb() - before, "cap_mb": URL_MAX_BYTES / 2**20}))
    """)
    assert res["reason"].startswith("the stream is over the 52428800-byte limit"), res
    assert res["grew_mb"] < 2.5 * res["cap_mb"] + 20, res  # measured 52 MB for the 50 MB cap; before: up to the limit


# -- 4. 16-bit, I and F images: scaled strip by strip; the decode workers together within DECODE_BUDGET ----------
def _whole_image_reference(arr: np.ndarray, mode: str) -> np.ndarray:
    """The conversion before the fix, on the whole array in float64 (the values the strips must reproduce)."""
    arr = arr.astype(np.float64)
    if mode.startswith("I;16"):
        arr = arr / 257.0
    elif mode == "F" and arr.size and np.nanmin(arr) >= 0 and np.nanmax(arr) <= 1.0:
        arr = arr * 255.0
    elif arr.size and np.nanmax(arr) > 255:
        if np.nanmax(arr) <= 65535 and np.nanmin(arr) >= 0:
            arr = arr / 257.0
        else:
            lo, top = np.nanmin(arr), np.nanmax(arr)
            arr = (arr - lo) * (255.0 / max(top - lo, 1e-12))
    return np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)


@pytest.mark.parametrize("mode, values", [
    ("I;16", [0, 1, 128, 129, 385, 65535, 40000]), ("I", [-70000, 0, 5, 2**31 - 1]), ("I", [0, 3, 255]),
    ("I", [0, 300, 65535]), ("F", [0.0, 0.25, 1.0, np.nan]), ("F", [-3.5, 1e6, np.nan, np.inf]), ("F", [np.nan]),
])
def test_high_depth_strips_equal_the_whole_image_conversion(monkeypatch, mode, values):
    from multimodal_embed import images

    rng = np.random.default_rng(0)
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    arr = rng.choice(np.asarray(values, dtype=dtype), size=(37, 23))
    img = Image.fromarray(arr)
    assert img.mode == mode
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN min/max
        want = _whole_image_reference(np.asarray(img), mode)
    monkeypatch.setattr(images, "STRIP_PIXELS", 50)  # two rows a strip: the range is found across strips
    got = np.asarray(images.to_rgb(img))
    assert got.shape == (37, 23, 3) and (got == want[:, :, None]).all()


@pytest.fixture(scope="module")
def big_pngs(tmp_path_factory) -> dict[str, Path]:
    """9,400 x 9,400 images (88.4 M pixels, under the 89.5 M pixel limit): 16-bit and 8-bit grey PNGs of ~200 KB."""
    folder = tmp_path_factory.mktemp("big")
    out = {}
    for mode in ("I;16", "L"):
        img = Image.new(mode, (9400, 9400), 0)
        patch = np.full((4900, 3900), 40000, np.uint16) if mode == "I;16" else np.full((4900, 3900), 155, np.uint8)
        img.paste(Image.fromarray(patch), (100, 100))
        out[mode] = folder / f"{mode.replace(';', '')}.png"
        img.save(out[mode])
        del img
    return out


DECODE_ONE = """
from multimodal_embed.images import load_image
before = start(4000)
img = load_image(sys.argv[1])
print(json.dumps({"grew_mb": peak_mb() - before, "size": img.size, "pixel": img.getpixel((200, 200))}))
"""


@linux_only
@pytest.mark.slow
def test_16_bit_image_decodes_in_about_the_8_bit_memory(big_pngs):
    eight = run_script(DECODE_ONE, str(big_pngs["L"]))
    sixteen = run_script(DECODE_ONE, str(big_pngs["I;16"]))
    assert eight["size"] == sixteen["size"] == [9400, 9400]
    assert sixteen["pixel"] == [156, 156, 156] and eight["pixel"] == [155, 155, 155]  # 40000 / 257 = 155.6
    # measured 423 MB for 8-bit (grey, 1 byte a pixel, and RGB, 4) and 593 MB for 16-bit (its 2-byte pixels and an
    # 8-bit grey copy besides); before the fix the float64 copies took 16-bit past +2 GB
    assert sixteen["grew_mb"] < 1.6 * eight["grew_mb"] + 50, (eight, sixteen)


@linux_only
@pytest.mark.slow
def test_decode_workers_together_stay_within_the_budget(fixtures_dir, big_pngs):
    res = run_script("""
        from multimodal_embed import Embedder, images
        emb = Embedder.from_pretrained(sys.argv[1], device="cpu")
        emb.embed_images_with_errors([sys.argv[3]], num_workers=1)  # warm: the model's buffers
        before = start(6000)
        emb.embed_images_with_errors([sys.argv[2]], num_workers=1)
        one = peak_mb() - before
        before = reset()
        res = emb.embed_images_with_errors([sys.argv[2]] * 4, num_workers=4)
        print(json.dumps({"ok": len(res.indices), "failures": [f.reason for f in res.failures], "one_mb": one,
                          "four_mb": peak_mb() - before, "budget": getattr(images, "DECODE_BUDGET_BYTES", None)}))
    """, str(fixtures_dir / "vision-v1.5-tiny"), str(big_pngs["I;16"]), str(SAMPLE / "cat.jpg"))
    assert res["ok"] == 4, res
    # four workers, four ~590 MB decodes: held one at a time by the 1 GiB budget. Measured 883 MB for four vs 590 for
    # one (the rest is the workers' malloc arenas); without the budget 2,045 MB (and before the strip fix, 8+ GB)
    assert res["four_mb"] < 1.75 * res["one_mb"], res


# -- 9. model folders: damaged JSON names the file; a folder that is not a model is a usage error ------------------
def _text_model_copy(fixtures_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(fixtures_dir / "text-v1.5-tiny", folder)
    return folder


@pytest.mark.parametrize("name, content", [("config.json", b"{not json"), ("config.json", b"\xff\xfe{}"),
                                           ("tokenizer.json", b"<html>not a tokenizer</html>")])
def test_damaged_model_json_is_config_error_naming_the_file(fixtures_dir, tmp_path, name, content):
    folder = _text_model_copy(fixtures_dir, tmp_path)
    (folder / name).write_bytes(content)
    with pytest.raises(ConfigError, match=re.escape(str(folder / name))):
        Embedder.from_pretrained(str(folder), device="cpu")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_model_json_fifo_is_refused_without_blocking(fixtures_dir, tmp_path):
    folder = _text_model_copy(fixtures_dir, tmp_path)
    (folder / "config.json").unlink()
    os.mkfifo(folder / "config.json")
    with pytest.raises(ConfigError, match="config.json: cannot be read"):
        _within(60, lambda: Embedder.from_pretrained(str(folder), device="cpu"), _release(folder / "config.json"))


def test_folder_that_is_not_a_model_is_a_usage_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(SAMPLE / "cat.jpg", photos / "cat.jpg")
    for folder in (str(empty), str(photos), f"{photos}/../empty"):  # an empty folder, a folder of photos, traversal
        with pytest.raises(NotAModelFolderError, match="is not a model folder"):
            Embedder.from_pretrained(folder, device="cpu")
        code = main(["embed", "--model", folder, "--text", "a cat"])
        err = capsys.readouterr().err
        assert code == EXIT_USAGE, err
        assert err.startswith(f"mmembed embed: error: --model {folder}: {folder} is not a model folder"), err
        assert "modules.json: No such file" not in err


# -- 10. embed_text arguments: max_tokens checked, numpy integers accepted, a dict is not a list of texts ------------
def test_embed_text_arguments_are_checked(emb):
    for bad in ("x", 0, -5, 2.5, True):
        with pytest.raises(InvalidInputError, match="max_tokens must be"):
            emb.embed_text(["a cat"], max_tokens=bad)
    want = emb.embed_text(["a cat", "a dog"])
    np.testing.assert_allclose(emb.embed_text(["a cat", "a dog"], max_tokens=np.int64(64)), want, atol=1e-6)
    for bad in ({"a cat": 1}, {"a cat"}, frozenset(["a dog"])):
        with pytest.raises(InputTypeError, match="not a (dict|set|frozenset)"):
            emb.embed_text(bad)
    with pytest.raises(InvalidInputError, match="dimensionality must be an int"):
        emb.embed_text(["a cat"], dimensionality=64.0)


def test_numpy_dimensionality_is_an_int(emb, monkeypatch):
    monkeypatch.setattr(emb.text_encoder, "matryoshka_dims", (64, 32))  # the tiny model's size and a smaller one
    for dim in (64, 32):
        got = emb.embed_text(["a cat"], dimensionality=np.int64(dim))
        np.testing.assert_array_equal(got, emb.embed_text(["a cat"], dimensionality=dim))
        assert got.shape == (1, dim)


# -- 11. --text-file is read line by line with a per-line cap ----------------------------------------------------------
def test_text_file_line_cap(fixtures_dir, tmp_path, monkeypatch, capsys):
    from multimodal_embed import cli

    monkeypatch.setattr(cli, "MAX_TEXT_LINE_CHARS", 20)
    model = str(fixtures_dir / "text-v1.5-tiny")
    ok = tmp_path / "ok.txt"
    ok.write_text("a" * 20 + "\r\n\nshort\n")
    assert main(["embed", "--model", model, "--text-file", str(ok)]) == 0
    assert [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()] == ["a" * 20, "short"]
    long = tmp_path / "long.txt"
    long.write_text("short\n" + "b" * 21 + "\n")
    assert main(["embed", "--model", model, "--text-file", str(long)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err == f"mmembed: {long}: line 2 is longer than 20 characters (the --text-file limit); split it\n"


@linux_only
@pytest.mark.slow
def test_text_file_dev_zero_is_refused_in_bounded_memory():
    res = run_script("""
        import contextlib, io
        from multimodal_embed.cli import main
        before = start(2000)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["embed", "--model", "minilm-efficientnet-lite0", "--text-file", "/dev/zero"])
        print(json.dumps({"code": code, "err": err.getvalue(), "grew_mb": peak_mb() - before}))
    """)
    assert res["code"] == EXIT_ERROR, res
    assert res["err"] == "mmembed: /dev/zero: line 1 is longer than 1000000 characters (the --text-file limit); " \
                         "split it\n", res
    assert res["grew_mb"] < 50, res  # the 1M-character line (NULs: 1 byte each) and the decoder; before: 4 GB in 9 s


# -- Ray's embed_dataset under bad input: an unwritable output folder, a changed input on resume, a corrupt shard ---
@pytest.mark.slow
def test_embed_dataset_output_folder_not_writable(tmp_path):
    pytest.importorskip("ray")
    from multimodal_embed.distributed import embed_dataset

    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(SAMPLE / "cat.jpg", images / "cat.jpg")
    taken = tmp_path / "a-file"
    taken.write_text("x")
    with pytest.raises(InvalidInputError, match=f"the output folder {taken} is not writable"):
        embed_dataset(images, taken, model="unused")  # refused before Ray starts or a model loads
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    res = run_script("""
        drop_dac()
        from multimodal_embed.distributed import embed_dataset
        from multimodal_embed.errors import InvalidInputError
        try:
            embed_dataset(sys.argv[1], sys.argv[2] + "/out", model="unused")
            print(json.dumps({"error": None}))
        except InvalidInputError as exc:
            print(json.dumps({"error": str(exc)}))
    """, str(images), str(locked))
    assert res["error"] == f"the output folder {locked}/out is not writable: Permission denied", res
    assert not list(locked.iterdir())


@pytest.mark.slow
def test_embed_dataset_resume_after_a_file_changed_and_a_shard_was_damaged(fixtures_dir, tmp_path):
    ray = pytest.importorskip("ray")
    from multimodal_embed.distributed import embed_dataset, read_shards

    folder = tmp_path / "images"
    folder.mkdir()
    photos = sorted(SAMPLE.glob("*.jpg"))
    for i, p in enumerate(photos[:5]):
        shutil.copy(p, folder / f"{i:02d}.jpg")
    vision = str(fixtures_dir / "vision-v1.5-tiny")
    out = tmp_path / "out"
    single = Embedder.from_pretrained(vision, device="cpu")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        first = embed_dataset(folder, out, model=vision, num_actors=1, shard_rows=2)
        assert (first.shards_total, first.shards_written) == (3, 3)

        # the same names, one file's content replaced: its shard (only) is recomputed, not skipped as before
        shutil.copy(photos[9], folder / "02.jpg")
        st = (folder / "02.jpg").stat()
        os.utime(folder / "02.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        again = embed_dataset(folder, out, model=vision, num_actors=1, shard_rows=2)
        assert (again.shards_written, again.shards_skipped, again.shards_recomputed) == (1, 2, 1)
        paths = sorted(str(p) for p in folder.iterdir())
        _, table = read_shards(out)
        np.testing.assert_allclose(np.array(table.column("vector").to_pylist(), np.float32),
                                   single.embed_images(paths), atol=1e-5)

        # a damaged shard: reading names it; a re-run recomputes it and only it
        shard = out / "part-00000.parquet"
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
        with pytest.raises(InvalidInputError, match=re.escape(f"{shard}: not a readable Parquet shard")):
            read_shards(out)
        fixed = embed_dataset(folder, out, model=vision, num_actors=1, shard_rows=2)
        assert (fixed.shards_written, fixed.shards_skipped) == (1, 2)
        _, table = read_shards(out)
        assert table.column("id").to_pylist() == list(range(5)) and table.column("path").to_pylist() == paths
        np.testing.assert_allclose(np.array(table.column("vector").to_pylist(), np.float32),
                                   single.embed_images(paths), atol=1e-5)
    finally:
        ray.shutdown()
