"""The same app as a Ray Serve deployment: each replica builds its own app (its models, queue and batcher), Ray
Serve's proxy spreads requests over the replicas. Routes and answers are those of the single-process server.

``mmembed serve --ray --replicas N``, or in Python::

    from ray import serve
    from multimodal_embed.serving.ray import build_deployment
    serve.run(build_deployment(ServeConfig(...), replicas=2), route_prefix="/")
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import replace
from typing import Any

from ..errors import MissingDependencyError, ServingError
from .app import ServeConfig

logger = logging.getLogger(__name__)


def build_deployment(config: ServeConfig, *, replicas: int = 1, ray_actor_options: dict[str, Any] | None = None
                     ) -> Any:
    """A bound Ray Serve application serving ``config`` on ``replicas`` replicas."""
    try:
        from ray import serve
    except ImportError:
        raise MissingDependencyError("mmembed serve --ray needs Ray Serve: pip install 'ray[serve]'") from None

    replica_config = replace(config, load_in_background=False)  # a replica takes traffic once its models load

    def build_app() -> Any:  # runs in each replica
        from .app import create_app

        return create_app(replica_config)

    deployment = serve.deployment(serve.ingress(build_app)(), name="multimodal-embed", num_replicas=replicas,
                                  ray_actor_options=ray_actor_options or {"num_cpus": 0})
    return deployment.bind()


# Serve's defaults give a new proxy 5 s to report ready; a busy 2-core machine can take longer, and Serve then kills
# it before it runs. Our defaults (an operator's environment wins), set before Ray starts its processes.
_SERVE_ENV_DEFAULTS = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30"}


def run_on_ray(config: ServeConfig, *, host: str, port: int, replicas: int, address: str | None = None) -> int:
    """Run the deployment behind Ray Serve's proxy on ``host:port`` until SIGTERM/SIGINT, then shut Serve down and
    return 0.

    Ray's driver runs in a child process in its own session: Ray installs its own SIGTERM handlers in a driver (one
    in Python at ``ray.init``, a fatal-signal one in its C++ core worker some time later, which exits 15), so this
    process keeps the signals, and on one tells the child, over a pipe, to shut Serve and Ray down. A child that
    fails to start reports its error here (raised as :class:`ServingError`); a parent that dies closes the pipe,
    which stops the child too.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=_ray_driver, args=(config, host, port, replicas, address, theirs),
                        name="mmembed-ray-driver")
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        child.start()
        theirs.close()
        error = None
        while child.is_alive() and not stop.is_set():
            if ours.poll(0.2):  # the child only ever sends its error, or closes the pipe by exiting
                try:
                    error = ours.recv()
                except EOFError:
                    pass
                break
        if not stop.is_set() and error is None:  # ended on its own
            child.join(5)
            error = f"the Ray driver process exited ({child.exitcode})"
        try:
            ours.send("stop")
        except OSError:
            pass  # already gone
        child.join(120)
        if child.is_alive():
            logger.warning("the Ray driver did not stop in 120 s; terminating it")
            child.terminate()
            child.join(30)
        if error is not None:
            raise ServingError(error)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        ours.close()


def _ray_driver(config: ServeConfig, host: str, port: int, replicas: int, address: str | None, conn: Any) -> None:
    """In the child: start Ray and Serve, wait for "stop" (or the parent's end), shut down; an error goes to the
    parent as one line."""
    os.setsid()  # a terminal's Ctrl+C reaches the parent, which stops this process in order
    for key, value in _SERVE_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    started = False
    try:
        import ray
        from ray import serve

        ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
        started = True
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_deployment(config, replicas=replicas), name="multimodal-embed", route_prefix="/")
        logger.warning("mmembed serve --ray: http://%s:%d/v1 on %d replicas", host, port, replicas)
        conn.recv()
    except EOFError:
        pass  # the parent is gone: shut down
    except Exception as exc:  # noqa: BLE001 - reported by the parent as a one-line error
        try:
            conn.send(f"{type(exc).__name__}: {exc}")
        except OSError:
            pass
    finally:
        if started:
            from ray import serve

            try:
                serve.shutdown()
            finally:
                ray.shutdown()
