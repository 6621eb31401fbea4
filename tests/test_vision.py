"""The image pipeline's resources: thread pools are released by the caller's block on every exit path (issue 36)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# Loops the raising path (a bad first item with the default on_error="raise") and an early stop, checking after every
# call that no decode thread is left alive. Before the fix the pool lived in an abandoned generator, shut down later
# by the garbage collector in whatever thread ran it: idle workers piled up, and the process could deadlock for good.
LOOP = textwrap.dedent("""
    import faulthandler, io, sys, threading, time
    import numpy as np
    from PIL import Image
    from multimodal_embed import Embedder
    from multimodal_embed.errors import ImageDecodeError

    emb = Embedder.from_pretrained(sys.argv[1], device="cpu")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    good = buf.getvalue()
    n, per_call = int(sys.argv[2]), float(sys.argv[3])
    base = threading.active_count()
    peak = base
    start = time.monotonic()
    for k in range(n):
        faulthandler.dump_traceback_later(per_call, exit=True)  # a call that hangs: every stack, exit code 1
        bad_at = k % 4  # the bad item first, in the middle, last
        items = [good] * 3
        items.insert(bad_at, b"not an image")
        try:
            emb.embed_images(items, batch_size=1 + k % 3, num_workers=1 + k % 4, show_progress=False)
        except ImageDecodeError as exc:
            assert f"#{bad_at}" in str(exc), exc
        else:
            raise AssertionError("no error")
        peak = max(peak, threading.active_count())
        if peak > base:
            print(f"LEAK after {k + 1} calls: {peak} threads, {base} before", flush=True)
            sys.exit(1)
    faulthandler.cancel_dump_traceback_later()
    print(f"OK {n} calls in {time.monotonic() - start:.1f} s, threads {base} -> {threading.active_count()}",
          flush=True)
""")


@pytest.mark.parametrize("calls", [100, pytest.param(3000, marks=pytest.mark.slow)])
def test_raising_path_releases_decode_threads(fixtures_dir, tmp_path, calls):
    """The thread count stays flat over every call, and no call hangs (30 s each, on a loaded 2-core machine)."""
    script = tmp_path / "loop.py"
    script.write_text(LOOP)
    proc = subprocess.run([sys.executable, str(script), str(fixtures_dir / "vision-v1.5-tiny"), str(calls), "30"],
                          check=False, capture_output=True, text=True, timeout=60 + calls * 0.5)
    assert proc.returncode == 0 and "OK" in proc.stdout, (proc.stdout, proc.stderr[-3000:])


def test_early_break_and_error_leave_no_threads(fixtures_dir):
    """In-process: an encode that raises, and a pipeline stopped by its caller, both leave the thread count as it
    was (the pool is joined before encode returns or raises)."""
    import threading

    from multimodal_embed import Embedder
    from multimodal_embed.errors import ImageDecodeError

    emb = Embedder.from_pretrained(str(fixtures_dir / "vision-v1.5-tiny"), device="cpu")
    from PIL import Image
    good = Image.new("RGB", (20, 20), "red")
    before = threading.active_count()
    for _ in range(20):
        with pytest.raises(ImageDecodeError):
            emb.embed_images([good, good, b"junk", good, good], batch_size=2, num_workers=3, show_progress=False)
        assert threading.active_count() == before
    out = emb.embed_images_with_errors([good, b"junk", good], num_workers=2, show_progress=False)
    assert out.indices == [0, 2] and threading.active_count() == before
