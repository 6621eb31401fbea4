"""``mmembed serve``: its arguments (imported with the CLI's parser, so argparse only here) and the command."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
from typing import Any

logger = logging.getLogger("multimodal_embed.serving")

API_KEY_ENV = "MMEMBED_API_KEY"


def add_serve_command(sub: Any, positive_int: Any) -> argparse.ArgumentParser:
    help_ = "an OpenAI-compatible embedding server for texts and images (pip install 'multimodal-embed[serve]')"
    p = sub.add_parser("serve", help=help_, description=help_)
    p.set_defaults(fn=cmd_serve)
    p.add_argument("--model", action="append", metavar="NAME_OR_FOLDER",
                   help="a model to serve (repeatable; default: the built-in offline model minilm-efficientnet-lite0)")
    p.add_argument("--text", metavar="FOLDER", help="one model from a text tower folder (with --vision)")
    p.add_argument("--vision", metavar="FOLDER", help="one model from a vision tower folder (with --text)")
    p.add_argument("--served-name", action="append", metavar="NAME",
                   help="the name clients send as 'model', one per model in order (default: the name given)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", help="cpu, cuda, mps (default: the best available)")
    p.add_argument("--fast", action="store_true", help="same as --precision fast")
    p.add_argument("--precision", choices=["exact", "fast", "int8"], default="exact")
    p.add_argument("--index", help="an image index to answer /v1/search (built with the first model; with no --model, "
                                  "the model it records is served)")
    p.add_argument("--api-key", help=f"require 'Authorization: Bearer KEY' on every route but /health (or set "
                                     f"${API_KEY_ENV})")
    p.add_argument("--allow-url-fetch", action="store_true",
                   help="fetch http(s) image URLs that clients send (time and size bounded); off by default")
    p.add_argument("--truncate", action="store_true",
                   help="cut texts over the model's context instead of answering 400 (a request's 'truncate' wins)")
    p.add_argument("--long-text", choices=["refuse", "truncate", "mean"], default=None,
                   help="texts over the model's context when a request does not say (its 'long_text' or 'truncate' "
                        "wins): refuse (400, the default), truncate (cut), or mean (the mean of its chunks, as "
                        "long_text='mean' in the library; lets LlamaIndex's 1024-token chunks through)")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="request body cap (413 above it)")
    p.add_argument("--max-queue", type=positive_int, default=4096,
                   help="texts and images waiting per model before requests are shed with 429")
    p.add_argument("--max-batch-tokens", type=positive_int, default=8192, help="token budget of a batch")
    p.add_argument("--max-wait-ms", type=float, default=2.0,
                   help="how long an idle model waits for more requests to join a batch")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request deadline in seconds")
    p.add_argument("--body-timeout", type=float, default=60.0,
                   help="seconds a request body may take to arrive (a stall of 10 s ends it sooner): 408, closed")
    p.add_argument("--ray", action="store_true", help="run as a Ray Serve deployment (pip install 'ray[serve]')")
    p.add_argument("--replicas", type=positive_int, default=1, help="Ray Serve replicas (with --ray)")
    return p


def index_model_source(path: str) -> Any:
    """The model an index records, as a :class:`ModelSource` (its registry name, else its towers)."""
    from ..index import ImageIndex
    from .app import ModelSource

    with ImageIndex.open(path) as index:
        identity = index.identity
    if identity.get("name"):
        return ModelSource(model=identity["name"])
    return ModelSource(text=(identity.get("text") or {}).get("name"), vision=(identity.get("vision") or {}).get("name"))


def config_from_args(args: argparse.Namespace) -> Any:
    from ..errors import InvalidInputError
    from .app import BUILTIN_MODEL, ModelSource, ServeConfig

    sources = [ModelSource(model=m) for m in (args.model or [])]
    if args.text or args.vision:
        sources.append(ModelSource(text=args.text, vision=args.vision))
    if not sources and args.index:  # the index's own model (the built-in one would not match its vectors)
        sources = [index_model_source(args.index)]
    if not sources:
        sources = [ModelSource(model=BUILTIN_MODEL)]
    names = args.served_name or []
    if len(names) > len(sources):
        raise InvalidInputError(f"{len(names)} --served-name for {len(sources)} models")
    for src, name in zip(sources, names):
        src.served_name = name
    precision = "fast" if args.fast else args.precision
    return ServeConfig(
        models=sources, index=args.index, api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        device=args.device, precision=precision, allow_url_fetch=args.allow_url_fetch, truncate=args.truncate,
        long_text=args.long_text,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_queue=args.max_queue,
        max_batch_tokens=args.max_batch_tokens, max_wait_ms=args.max_wait_ms, request_timeout_s=args.timeout,
        body_timeout_s=args.body_timeout, body_idle_s=min(10.0, args.body_timeout))


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` listens on this machine only: ``localhost`` or a loopback address. The one rule
    behind the server's and the demo's warnings: an empty host is NOT loopback (uvicorn and Gradio bind "" to
    every interface), nor is any name that is not literally ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _PlainInfo(logging.Formatter):
    """Lifecycle lines (INFO) as plain lines; warnings and errors keep the CLI's ``LEVEL name: message``."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno == logging.INFO:
            return record.getMessage()
        return super().format(record)


def _log_lifecycle() -> None:
    """Show this package's serving INFO lines (start, models loaded) on stderr as plain lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(_PlainInfo("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(min(logger.getEffectiveLevel(), logging.INFO))
    logger.propagate = False


def cmd_serve(args: argparse.Namespace) -> int:
    from ..errors import MissingDependencyError

    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(f"mmembed serve needs {exc.name}: pip install 'multimodal-embed[serve]'") \
            from None
    config = config_from_args(args)
    _log_lifecycle()
    if not is_loopback(args.host) and not config.api_key:
        logger.warning("serving on %s without an API key: anyone who reaches the port can use it "
                       "(pass --api-key or set %s)", repr(args.host) if not args.host else args.host, API_KEY_ENV)
    if args.ray:
        from .ray import run_on_ray

        return run_on_ray(config, host=args.host, port=args.port, replicas=args.replicas)
    from .app import create_app
    from .connections import uvicorn_config

    app = create_app(config)
    server = _server_class()(uvicorn_config(app, args.host, args.port, log_level="warning",
                                            timeout_graceful_shutdown=config.request_timeout_s + 5),
                             app.state.mmembed)
    logger.info("mmembed serve: http://%s:%d/v1 (models: %s)", args.host or "0.0.0.0", args.port,
                   ", ".join(s.name for s in config.models))
    server.run()
    return 0


def _server_class() -> type:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn, plus: on SIGTERM/SIGINT the app answers 503 (``/health`` included) while in-flight work
        finishes, then the queues drain and the process exits 0."""

        def __init__(self, config: Any, state: Any) -> None:
            super().__init__(config)
            self.mmembed_state = state

        def handle_exit(self, sig: int, frame: Any) -> None:
            self.mmembed_state.draining = True
            super().handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", None)
            if sig == signal.SIGTERM and captured and captured[-1] == sig:
                captured.pop()  # drained: exit 0 (uvicorn would re-raise it after the shutdown)

    return DrainingServer

