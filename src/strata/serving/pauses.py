"""Stop-the-world pauses of a serving process: the garbage collector, measured and kept small.

CPython's cyclic collector stops every thread while it walks a generation. A full (generation 2)
collection walks every container object the process ever kept: after FastAPI, pydantic, NumPy,
pandas and ONNX Runtime are imported and a model version is loaded that is about 116k objects
(the catalogue itself is NumPy arrays), and one such walk took 18-81 ms on the 2-core benchmark
machine, long enough to queue a dozen requests behind it and set the p99 of `/recommend`. Two
measures keep it out of serving:

- `settle()` after start-up and after every hot reload: one full collection (garbage from
  loading), then `gc.freeze()` moves every surviving object into the permanent generation, which
  no later collection walks. What a request allocates is short-lived and dies young.
- A larger young threshold (`GcConfig`, 10,000 instead of 700): thresholds count net allocations
  (allocations minus frees), and the request path leaves few objects alive (8 young collections
  in 3,000 requests at 700), so young collections become rarer still and each walks only what
  was allocated since the last one.

On a reload the previous version's objects sit in the permanent generation; `settle()` first
unfreezes them so one full collection can free whatever of them is cyclic garbage, then freezes
again. That collection does pause requests, once per reload (44-62 ms measured); skipping it
would keep the old version's cyclic garbage for the life of the process.

`GcPauseCollector` times every collection through `gc.callbacks` and exposes them on a
Prometheus registry as `strata_gc_pause_seconds{generation}` (histogram) and
`strata_gc_pause_longest_seconds{generation}` (longest since the process started). The callback
only updates plain integers and floats: it runs inside the collector, possibly while another
thread holds a metric's (non-reentrant) lock, so it must not touch prometheus_client objects;
the collector turns the counts into metric families at scrape time.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from strata.config import GcConfig

log = logging.getLogger(__name__)

# Seconds: a young collection takes tens of microseconds, an unfrozen full one tens of ms.
PAUSE_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
GENERATIONS = (0, 1, 2)
_settle_lock = threading.Lock()


def settle(cfg: GcConfig) -> dict[str, float]:
    """After loading long-lived state: collect once, then freeze the survivors out of every later
    collection (when `cfg.freeze`); returns what it did, for the log and the tests."""
    with _settle_lock:
        gc.set_threshold(cfg.threshold0, cfg.threshold1, cfg.threshold2)  # process-wide
        t0 = time.perf_counter()
        if cfg.freeze:
            gc.unfreeze()  # a reload: let the previous version's cyclic garbage be found
        collected = gc.collect()
        if cfg.freeze:
            gc.freeze()
        out = {
            "collected": float(collected),
            "frozen": float(gc.get_freeze_count()),
            "seconds": time.perf_counter() - t0,
        }
    log.info(
        "gc settled: %d collected, %d objects frozen, %.1f ms",
        collected, gc.get_freeze_count(), out["seconds"] * 1e3,
    )  # fmt: skip
    return out


class GcPauseCollector:
    """Times every garbage collection of the process and exports the pauses (see module doc)."""

    def __init__(self) -> None:
        self._buckets = [[0] * (len(PAUSE_BUCKETS) + 1) for _ in GENERATIONS]
        self._sum = [0.0 for _ in GENERATIONS]
        self._longest = [0.0 for _ in GENERATIONS]
        self._started = 0.0
        self._installed = False

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        # Runs inside the collector: plain arithmetic only (no locks, no metric objects).
        if phase == "start":
            self._started = time.perf_counter()
            return
        dt = time.perf_counter() - self._started
        g = int(info.get("generation", 2))
        self._buckets[g][bisect_left(PAUSE_BUCKETS, dt)] += 1
        self._sum[g] += dt
        if dt > self._longest[g]:
            self._longest[g] = dt

    def install(self, registry: CollectorRegistry | None = None) -> GcPauseCollector:
        """Start timing collections; register the metrics on `registry` when given."""
        if not self._installed:
            gc.callbacks.append(self._on_gc)
            self._installed = True
        if registry is not None:
            registry.register(self)
        return self

    def uninstall(self) -> None:
        """Stop timing (an app's shutdown); metrics keep their last values."""
        if self._installed:
            gc.callbacks.remove(self._on_gc)
            self._installed = False

    def describe(self) -> list[Metric]:
        """Metric families without values (lets the registry check names on register)."""
        return list(self._families(empty=True))

    def collect(self) -> Iterator[Metric]:
        """Metric families for a scrape."""
        yield from self._families(empty=False)

    def _families(self, empty: bool) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

        hist = HistogramMetricFamily(
            "strata_gc_pause_seconds",
            "Garbage-collector pauses (all threads stopped) by generation.",
            labels=("generation",),
        )
        longest = GaugeMetricFamily(
            "strata_gc_pause_longest_seconds",
            "Longest garbage-collector pause since the process started, by generation.",
            labels=("generation",),
        )
        if not empty:
            bounds = [*(repr(b) for b in PAUSE_BUCKETS), "+Inf"]
            for g in GENERATIONS:
                counts = list(self._buckets[g])  # a copy: the callback may add while we read
                cum, running = [], 0
                for bound, c in zip(bounds, counts, strict=True):
                    running += c
                    cum.append((bound, running))
                hist.add_metric([str(g)], cum, self._sum[g])
                longest.add_metric([str(g)], self._longest[g])
        yield hist
        yield longest


@asynccontextmanager
async def watched(registry: CollectorRegistry) -> AsyncIterator[GcPauseCollector]:
    """An app's lifetime with its collections timed onto `registry` (callback removed at exit)."""
    collector = GcPauseCollector().install(registry)
    try:
        yield collector
    finally:
        collector.uninstall()
