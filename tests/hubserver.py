"""A tiny HTTP server that speaks the part of the Hugging Face hub file protocol that ``hf_hub_download`` uses.

``HEAD/GET /{org}/{name}/resolve/{revision}/{path}`` answers with ``X-Repo-Commit``, ``ETag`` and
``Content-Length`` as the hub does. Repositories are local folders; every request is logged.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class FakeHub:
    def __init__(self, repos: dict[str, tuple[Path, str]]):
        """``repos`` maps a repo id to (folder, commit sha)."""
        self.repos = repos
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _serve(self, body: bool) -> None:
                path = unquote(urlparse(self.path).path)
                hub.requests.append((self.command, path))
                parts = path.strip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    self.send_error(404)
                    return
                repo_id, revision, rel = f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])
                if repo_id not in hub.repos:
                    self.send_response(401)
                    self.send_header("X-Error-Code", "RepoNotFound")
                    self.end_headers()
                    return
                folder, sha = hub.repos[repo_id]
                if revision not in (sha, "main"):
                    self.send_response(404)
                    self.send_header("X-Error-Code", "RevisionNotFound")
                    self.end_headers()
                    return
                file = folder / rel
                if not file.is_file():
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", sha)
                    self.end_headers()
                    return
                data = file.read_bytes()
                self.send_response(200)
                self.send_header("X-Repo-Commit", sha)
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:  # noqa: PYI034
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def files_served(self) -> set[str]:
        return {p.split("/resolve/", 1)[1].split("/", 1)[1] for m, p in self.requests if m == "GET" and "/resolve/" in p}


class AnswerServer:
    """An HTTP server on 127.0.0.1 answering every request (GET, HEAD, CONNECT, ...) with one status and no body:
    a hub mirror that answers 404 or 502, or a proxy that refuses to connect anywhere (403 to CONNECT)."""

    def __init__(self, status: int):
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self) -> None:
                server.requests.append((self.command, self.path))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.send_header("Connection", "close")
                self.end_headers()

            do_GET = do_HEAD = do_POST = do_CONNECT = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> AnswerServer:  # noqa: PYI034
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class SilentServer:
    """A port on 127.0.0.1 that completes TCP connections (the kernel's backlog) and never answers a byte: a hub or
    proxy that hangs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def __enter__(self) -> SilentServer:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()
