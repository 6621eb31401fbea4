"""``mmembed serve`` as a real process on a free loopback port: started, waited for until ``/health`` answers 200,
and always stopped (SIGTERM, then kill), with its stderr shown when it does not come up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
                 wait_s: float = 120) -> tuple[subprocess.Popen, str]:
    """``mmembed serve ARGS --port P``; ``env`` is the whole environment (default: this process's). Returns the
    process and its base URL once healthy; raises AssertionError (after stopping it) when it is not in time."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "multimodal_embed.cli", "serve", *args, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ.copy() if env is None else env, cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                if r.status == 200:
                    return proc, url
        except OSError:  # refused while starting, 503 while loading
            pass
        time.sleep(0.2)
    rc, err = stop_server(proc)  # never leave a server (or its Ray cluster) behind
    raise AssertionError(f"the server did not become healthy in {wait_s:g} s (rc {rc}): {err[-3000:]}")


def stop_server(proc: subprocess.Popen) -> tuple[int, str]:
    """SIGTERM (the server drains), then kill after 60 s; returns the exit status and stderr."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err
