"""Reading a request body from a client that may be slow, stalled or hostile: bounded in bytes, in time and in what
parsing it will cost.

:func:`read_body` takes the ASGI messages of one request until the body ends, refusing (as :class:`ApiError`) a body
over the byte cap (413, from ``Content-Length`` before a byte is read, else as soon as the count passes it), one
that stalls (no byte for ``idle_s``: 408) and one that trickles (not complete within ``budget_s`` of the request's
start: 408). :func:`check_json_size` bounds what ``json.loads`` will build: Python objects cost 50-100 bytes per JSON
value, so a 20 MB body of ``{}`` or ``0`` would become 0.5-1 GB of dicts and ints; the values are counted (outside
strings) before parsing and more than ``max_values`` are refused (413). Refusals that leave body bytes unread ask
the server to close the connection (``Connection: close``), so the rest of such a body is never read.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from .schemas import ApiError

CLOSE = {"Connection": "close"}
_STRUCTURE = (b"[", b"{", b",", b":", b'"')  # every JSON value or key follows one of these (or starts the document)
# a JSON string (escapes included, unrolled for speed) or a structural character: one match per string or separator
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[{,:]')


def declares_body(headers: dict[bytes, bytes]) -> bool:
    """Whether the request says a body follows (a non-zero ``Content-Length`` or any ``Transfer-Encoding``)."""
    return headers.get(b"content-length", b"0").strip() not in (b"0", b"") or b"transfer-encoding" in headers


async def read_body(receive: Any, headers: dict[bytes, bytes], *, cap: int, idle_s: float, budget_s: float,
                    started: float) -> bytes:
    """The whole body, or :class:`ApiError` (413 too large, 408 too slow, 400 bad ``Content-Length``, 499 gone).
    ``started`` is the request's :func:`time.monotonic` start: the budget counts from there."""
    too_big = ApiError(413, f"the request body is larger than {cap} bytes", code="body_too_large", headers=CLOSE)
    length = headers.get(b"content-length")
    if length is not None:
        try:
            if int(length) > cap:
                raise too_big
        except ValueError:
            raise ApiError(400, "bad Content-Length header", headers=CLOSE) from None
    body = bytearray()
    deadline = started + budget_s
    while True:
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            message = await asyncio.wait_for(receive(), timeout=min(idle_s, left))
        except TimeoutError:
            why = (f"no byte of it arrived for {idle_s:g} s" if left > idle_s else
                   f"it did not arrive within {budget_s:g} s")
            raise ApiError(408, f"the request body was not received: {why}", code="body_timeout",
                           headers=CLOSE) from None
        if message["type"] == "http.disconnect":
            raise ApiError(499, "the client closed the connection", code="client_closed")
        chunk = message.get("body", b"")
        if len(body) + len(chunk) > cap:
            raise too_big
        body += chunk
        if not message.get("more_body", False):
            return bytes(body)


def check_json_size(body: bytes, max_values: int) -> None:
    """Refuse (413) a JSON body with more than ``max_values`` strings and separators (an upper bound of its values
    and keys), counted without parsing it or copying it: structure inside strings is not counted. A fast path
    counts the raw characters (an upper bound) first; the scan stops as soon as the count passes the cap."""
    if sum(map(body.count, _STRUCTURE)) < max_values:
        return
    for n, _ in enumerate(_TOKEN.finditer(body), 2):
        if n > max_values:
            raise ApiError(413, f"the request body holds more than {max_values} JSON values and keys, the most "
                                f"parsed per request", code="body_too_complex")
