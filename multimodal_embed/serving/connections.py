"""The connection's own time budget: uvicorn waits forever for a request's headers (a client that connects and
sends nothing, or a header a byte at a time, holds its socket for good); here each request's headers must be
complete within ``header_timeout_s`` of the connection opening or of the previous answer, else the connection is
closed. Bodies are bounded by the app's middleware (:mod:`.body`); together no phase of a request waits on a
client without a deadline."""

from __future__ import annotations

from typing import Any


def bounded_protocol(header_timeout_s: float) -> type:
    """uvicorn's HTTP protocol (httptools, else h11) with the header deadline."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class HeaderDeadline(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
        _header_timer: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # idle between requests (a pipelined one already started re-arms when it ends)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout_s, self._expire, self.cycle)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self, waiting: Any) -> None:
            self._header_timer = None
            if self.cycle is waiting and not self.transport.is_closing():  # no request began since arming
                self.transport.close()

    return HeaderDeadline


def uvicorn_config(app: Any, host: str, port: int, **kwargs: Any) -> Any:
    """``uvicorn.Config`` for the app of :func:`~multimodal_embed.serving.create_app` with its connection budget."""
    import uvicorn

    config = app.state.mmembed.config
    return uvicorn.Config(app, host=host, port=port, http=bounded_protocol(config.header_timeout_s), **kwargs)
