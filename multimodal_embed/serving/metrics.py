"""Prometheus metrics of one app (its own registry, so several apps in one process do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("mmembed_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.latency = Histogram("mmembed_request_seconds", "request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("mmembed_queue_items", "texts and images waiting for the model", ["model"],
                                 registry=r)
        self.batch_size = Histogram("mmembed_batch_size", "items per model call", ["model", "kind"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.tokens = Counter("mmembed_tokens", "text tokens embedded", ["model"], registry=r)
        self.images = Counter("mmembed_images", "images embedded", ["model"], registry=r)
        self.cancelled = Counter("mmembed_cancelled_work", "queued work dropped before it ran", ["model", "reason"],
                                 registry=r)
        self.shed = Counter("mmembed_shed_requests", "requests refused because the queue was full", ["model"],
                            registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
