"""Prometheus metrics of the recommendation app: one `CollectorRegistry` per app (never the
global one), request latency by route template, per-stage timings, degraded answers, the served
model version and reload outcomes. The GC pause metrics join the same registry
(`strata.serving.pauses`)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from strata.serving.service import STAGES, Recommendation, RecommendationPipeline

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Seconds: dense between 0.5 ms and 50 ms where the request path lives, sparse in the tail.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
    0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
STAGE_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1,
)  # fmt: skip


@dataclass(frozen=True)
class ServingMetrics:
    """Prometheus metrics of one app, all on its own `CollectorRegistry`."""

    registry: CollectorRegistry
    latency: Histogram
    requests: Counter
    stages: Histogram
    degraded: Counter
    model: Gauge
    reloads: Counter

    @classmethod
    def create(cls) -> ServingMetrics:
        """A fresh registry with every serving metric registered on it."""
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        reg = CollectorRegistry()
        return cls(
            registry=reg,
            latency=Histogram(
                "strata_http_request_duration_seconds",
                "Request latency per endpoint (route template) and method.",
                ("endpoint", "method"),
                buckets=LATENCY_BUCKETS,
                registry=reg,
            ),
            requests=Counter(
                "strata_http_requests",
                "Requests per endpoint, method and status code.",
                ("endpoint", "method", "status"),
                registry=reg,
            ),
            stages=Histogram(
                "strata_recommend_stage_duration_seconds",
                "Time spent in each request-path stage of /recommend.",
                ("stage",),
                buckets=STAGE_BUCKETS,
                registry=reg,
            ),
            degraded=Counter(
                "strata_recommend_degraded",
                "Recommendations served with a fallback, by reason.",
                ("reason",),
                registry=reg,
            ),
            model=Gauge(
                "strata_model_info",
                "The model version being served (value 1 on the current labels).",
                ("dataset", "version", "index"),
                registry=reg,
            ),
            reloads=Counter(
                "strata_model_reloads", "Hot reloads by outcome.", ("outcome",), registry=reg
            ),
        )

    def set_model(self, pipe: RecommendationPipeline) -> None:
        """Point the info gauge at `pipe`'s version (old labels removed)."""
        self.model.clear()
        self.model.labels(pipe.dataset, pipe.version, str(pipe.index_info.get("kind"))).set(1)

    def observe(self, rec: Recommendation) -> None:
        """Per-stage timings and degraded reasons of one recommendation."""
        for stage in STAGES:
            ms = rec.timings_ms.get(stage)
            if ms is not None:
                self.stages.labels(stage).observe(ms / 1000.0)
        for reason in rec.degraded_reasons:
            self.degraded.labels(reason.split(":")[0]).inc()


class RequestMetrics:
    """Pure ASGI middleware: latency and status per route template (no per-request task)."""

    def __init__(self, app: Any, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.latency.labels(endpoint, method).observe(time.perf_counter() - t0)
            self.metrics.requests.labels(endpoint, method, str(status)).inc()
