"""Prometheus metrics of one service instance, in a registry of its own (several apps can share a process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServiceMetrics:
    """Request counts and latencies by route, model work and store errors."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, queue_depth: Callable[[], float]):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "coldprompt_http_requests", "HTTP requests by route template, method and status code",
            ["route", "method", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "coldprompt_http_request_duration_seconds", "HTTP request latency by route template and method",
            ["route", "method"], buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )
        self.adaptations = Counter(
            "coldprompt_adaptations", "users whose prompt took the inner loop (one per user, not per step)",
            registry=self.registry,
        )
        self.prompt_reuses = Counter(
            "coldprompt_prompt_reuses", "recommendations served from a stored adapted prompt", registry=self.registry,
        )
        self.batch_size = Histogram(
            "coldprompt_model_batch_size", "users per model batch (adaptation and scoring)",
            buckets=BATCH_SIZE_BUCKETS, registry=self.registry,
        )
        self.queue_rejections = Counter(
            "coldprompt_queue_rejections", "requests answered 503 because the model queue was full",
            registry=self.registry,
        )
        self.store_errors = Counter(
            "coldprompt_store_errors", "database errors by store operation", ["operation"], registry=self.registry,
        )
        self.model_loaded = Gauge("coldprompt_model_loaded", "1 once the checkpoint is loaded", registry=self.registry)
        queue = Gauge("coldprompt_queue_depth", "model jobs waiting for a worker", registry=self.registry)
        queue.set_function(queue_depth)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, method=method, status=str(status)).inc()
        self.latency.labels(route=route, method=method).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
