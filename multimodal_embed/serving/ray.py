"""The same app as a Ray Serve deployment: each replica builds its own app (its models, queue and batcher), Ray
Serve's proxy spreads requests over the replicas. Routes and answers are those of the single-process server.

``mmembed serve --ray --replicas N``, or in Python::

    from ray import serve
    from multimodal_embed.serving.ray import build_deployment
    serve.run(build_deployment(ServeConfig(...), replicas=2), route_prefix="/")
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import replace
from typing import Any

from ..errors import MissingDependencyError
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


def run_on_ray(config: ServeConfig, *, host: str, port: int, replicas: int, address: str | None = None) -> int:
    """Start (or join) Ray, run the deployment behind Ray Serve's proxy on ``host:port``, block until SIGTERM/SIGINT,
    then shut Serve down."""
    import ray
    from ray import serve

    ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_deployment(config, replicas=replicas), name="multimodal-embed", route_prefix="/")
    logger.warning("mmembed serve --ray: http://%s:%d/v1 on %d replicas", host, port, replicas)
    stop = threading.Event()
    while not stop.is_set():
        # Ray's core worker installs its own fatal-signal handler (a stack dump, exit 15) some time after init: keep
        # ours in place so that SIGTERM / SIGINT shut Serve down and the command exits 0
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait(0.2)
    serve.shutdown()
    ray.shutdown()
    return 0
