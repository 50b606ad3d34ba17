"""The CTR runtime of a serving process: metrics, the served model and its live state, the drift
trigger, and, in a cluster, what makes the replicas one service.

`build_runtime` loads the serving CTR version and wires feedback -> window -> `RollingAucMonitor`
-> `RetrainTrigger` -> retrain (in process: warm-start incremental training, gate, publish, hot
reload; or a submitted KFP `ctr-retrain` run when the caller passes that factory) -> reload.

Cluster mode (the online store is a Valkey): the live state is `ValkeyCtrState` (feedback joins
on any replica, one window for all, `ctr.state`), the trigger needs its lease (one retrain per
drift for the whole cluster, `monitoring.trigger`), and `ctr_lifespan` runs a follower
(`serving.follow`) so every replica serves the registry's CTR pointer: the promoting replica
signals the others, which also poll. Without a Valkey everything is in the process
(`MemoryCtrState`, `MemoryLease`) with the same semantics.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from strata.config import Settings
from strata.errors import NotFoundError, StrataError
from strata.serving import pauses
from strata.serving.follow import RETRY_FAILED_S, announce, cancel_all, follow

if TYPE_CHECKING:
    from strata.ctr.drift import FeatureDriftReference
    from strata.ctr.service import CtrService
    from strata.ctr.service import ServedModel as CtrServedModel
    from strata.features.online.signals import ValkeySignals
    from strata.monitoring.trigger import RetrainTrigger
    from strata.registry import Registry

log = logging.getLogger(__name__)

#: Builds the retrain job for a service (the CLI passes the KFP `ctr-retrain` submission when a
#: KFP host is configured; default: in-process incremental training).
RetrainFactory = Callable[["CtrService"], Callable[[], dict[str, Any]]]


def ctr_signal(registry_name: str) -> str:
    """The signal name of the CTR registry's serving pointer."""
    return f"ctr-serving:{registry_name}"


# Seconds. Dense where a CPU pod's latency target lives (1-100 ms), sparse in the tail.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
    0.15, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


# --- metrics -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CtrMetrics:
    """The CTR server's Prometheus metrics, registered on one `CollectorRegistry`."""

    registry: CollectorRegistry
    latency: Histogram
    predictions: Counter
    feedback: Counter
    rolling_auc: Gauge
    auc_floor: Gauge
    retrains: Counter
    decisions: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> CtrMetrics:
        """Register every CTR metric on `registry` (once per registry)."""
        return cls(
            registry=registry,
            latency=Histogram(
                "strata_ctr_request_seconds",
                "Latency of /ctr/* requests (parsing and validation included).",
                ("endpoint", "status"),
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            predictions=Counter(
                "strata_ctr_predictions", "Rows scored by /ctr/predict.", registry=registry
            ),
            feedback=Counter(
                "strata_ctr_feedback",
                "Labels received by /ctr/feedback, by outcome.",
                ("outcome",),
                registry=registry,
            ),
            rolling_auc=Gauge(
                "strata_ctr_rolling_auc",
                "AUC over the last W labelled predictions (NaN below W/2 labels).",
                registry=registry,
            ),
            auc_floor=Gauge(
                "strata_ctr_auc_floor",
                "The rolling AUC below which the monitor triggers a retrain (NaN: no rule).",
                registry=registry,
            ),
            retrains=Counter(
                "strata_ctr_retrains",
                "Incremental retrains, by outcome (promoted, rejected, failed).",
                ("outcome",),
                registry=registry,
            ),
            decisions=Counter(
                "strata_ctr_drift_decisions",
                "Drift monitor decisions, by kind.",
                ("kind",),
                registry=registry,
            ),
        )

    def set_auc(self, auc: float | None, floor: float | None = None) -> None:
        """Publish the rolling AUC (NaN when the window cannot give one) and its trigger floor
        (dashboards and the AUC alert compare the two)."""
        self.rolling_auc.set(float("nan") if auc is None else auc)
        self.auc_floor.set(float("nan") if floor is None else floor)


# --- runtime -------------------------------------------------------------------------------


@dataclass
class CtrRuntime:
    """What the lifespan puts into `app.state.ctr`: service, trigger, metrics and registries."""

    settings: Settings
    service: CtrService
    trigger: RetrainTrigger
    metrics: CtrMetrics
    model_registry: Registry
    signals: ValkeySignals | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)
    failed: tuple[str, float] = ("", 0.0)  # the last version that failed to load, and when
    refused: str = ""  # why it was refused ("" once the pointer names a loadable version)
    _drift_refs: dict[str, FeatureDriftReference | None] = field(default_factory=dict)
    _ref_lock: threading.Lock = field(default_factory=threading.Lock)

    def feature_drift(self) -> dict[str, Any] | None:
        """PSI of the recent labelled rows against the served version's training reference."""
        served = self.service.served
        ref = self._drift_reference(served.version, served.path)
        recent = self.service.recent_labelled()
        if ref is None or len(recent) < self.settings.ctr.serve.min_drift_rows:
            return None
        return ref.compare(recent).to_dict()

    def _drift_reference(self, version: str, path: Any) -> FeatureDriftReference | None:
        import json

        from strata.ctr.artifacts import DRIFT_REF
        from strata.ctr.drift import FeatureDriftReference

        with self._ref_lock:
            if version not in self._drift_refs:
                f = path / DRIFT_REF
                self._drift_refs[version] = (
                    FeatureDriftReference.from_dict(json.loads(f.read_text(encoding="utf-8")))
                    if f.is_file()
                    else None
                )
            return self._drift_refs[version]

    def close(self, wait_s: float) -> None:
        """Wait (bounded) for a running retrain; its registry writes are atomic either way."""
        if self.trigger.running:
            log.info("ctr: waiting up to %.0fs for the running retrain", wait_s)
        self.trigger.wait(wait_s)
        for close in self.closers:
            close()

    async def follow_pointer(self) -> None:
        """Reload when the registry's CTR pointer names another version than the one served; a
        version that does not load (damaged: named in `refused`, /readyz) keeps the old one
        serving and is tried again after `RETRY_FAILED_S`, not every poll."""
        target = await asyncio.to_thread(self.model_registry.serving)
        if target is None or target == self.service.served.version:
            self.refused = ""
            return
        if self.failed[0] == target and time.monotonic() - self.failed[1] < RETRY_FAILED_S:
            return
        threads = self.settings.ctr.serve.onnx_threads
        try:
            served = await asyncio.to_thread(load_served, self.model_registry, target, threads)
        except Exception as exc:
            self.failed = (target, time.monotonic())
            self.refused = f"ctr version {target} refused: {exc}"
            if not isinstance(exc, StrataError):  # a loader's own exception: with traceback
                log.exception("ctr: version %s did not load", target)
            log.warning("ctr: still serving %s; %s", self.service.served.version, self.refused)
            return
        self.failed, self.refused = ("", 0.0), ""
        if served.version != self.service.served.version:
            # Shared state: the promoting replica has reset it already; the process's own: now.
            self.service.reload(served, reset_state=not self.service.shared)
            await asyncio.to_thread(pauses.settle, self.settings.gc)


def load_served(registry: Registry, version: str, threads: int = 1) -> CtrServedModel:
    """A CTR version of `registry`, its files re-hashed against the manifest first (DataError
    naming the version and file when one was damaged after the commit)."""
    from strata.ctr.service import ServedModel

    path = registry.path(version)
    registry.verify(path.name)
    return ServedModel.load(path, path.name, threads)


def ctr_registry_serving(settings: Settings) -> str | None:
    """The CTR registry's serving version (None before the first promotion)."""
    from strata.ctr.artifacts import ctr_registry

    return ctr_registry(settings).serving()


def _cluster_state(settings: Settings, service_shape: tuple[int, int]) -> Any:
    """The shared `ValkeyCtrState` when the online store is a Valkey, else None (in process)."""
    from strata.config import ValkeyOnlineConfig

    if not isinstance(settings.online, ValkeyOnlineConfig):
        return None
    from strata.ctr.state_valkey import ValkeyCtrState
    from strata.features.online.valkey import ValkeyOnlineStore

    cfg = settings.ctr
    return ValkeyCtrState(ValkeyOnlineStore(settings.online), cfg.registry_name, *service_shape,
                          cfg.drift.window, cfg.incremental.recent_rows,
                          cfg.serve.feedback_ttl_s)  # fmt: skip


def build_runtime(
    settings: Settings,
    metrics: CtrMetrics,
    version: str | None = None,
    retrain_factory: RetrainFactory | None = None,
) -> CtrRuntime:
    """Load the serving (or given) CTR version and wire monitor -> trigger -> retrain -> reload
    (module docstring); in a cluster over the shared state and lease."""
    from strata.ctr.artifacts import ctr_registry
    from strata.ctr.service import CtrService, make_retrain
    from strata.features.online.signals import open_signals
    from strata.monitoring.trigger import MemoryLease, RetrainTrigger

    cfg = settings.ctr
    model_registry = ctr_registry(settings)
    path = model_registry.path(version)
    served = load_served(model_registry, path.name, threads=cfg.serve.onnx_threads)
    shape = (served.preprocessor.n_dense, len(served.preprocessor.cardinalities))
    shared = _cluster_state(settings, shape)
    service = CtrService(served, cfg, state=shared)
    signals = open_signals(shared.store) if shared is not None else None
    if retrain_factory is not None:
        base = retrain_factory(service)
    else:
        base = make_retrain(service, model_registry, cfg, settings.seed)

    def retrain() -> dict[str, Any]:
        before = service.served.version
        try:
            out = base()
        except Exception:
            metrics.retrains.labels("failed").inc()
            raise  # RetrainTrigger logs the failure with its traceback
        metrics.retrains.labels("promoted" if out.get("promoted") else "rejected").inc()
        promoted = model_registry.serving()
        if promoted is not None and promoted != service.served.version:
            # Promoted elsewhere (a KFP run): this replica, the lease holder, takes it first.
            service.reload(load_served(model_registry, promoted))
        if promoted is not None and promoted != before:
            announce(signals, ctr_signal(cfg.registry_name), promoted)
        metrics.set_auc(service.stats()["rolling_auc"], service.monitor.floor())
        # Training allocated heavily in this process; a promotion also loaded a new model.
        pauses.settle(settings.gc)
        return out

    replica = settings.events.replica
    holder = replica or f"{socket.gethostname()}-{os.getpid()}"
    # One decision log per replica on the shared volume (never one file appended by several).
    suffix = f".{replica}" if replica else ""
    log_path = settings.home / "logs" / f"{cfg.registry_name}-drift{suffix}.jsonl"
    trigger = RetrainTrigger(
        retrain, log_path=log_path, background=cfg.serve.retrain_background,
        lease=shared if shared is not None else MemoryLease(), holder=holder,
        lease_s=cfg.serve.lease_s, hold_s=cfg.drift.cooldown_s,
    )  # fmt: skip
    log.info("ctr: serving %s from %s%s", served.version, path, " (cluster state)" * bool(shared))
    metrics.set_auc(None, service.monitor.floor())  # the floor is known before any label
    runtime = CtrRuntime(settings, service, trigger, metrics, model_registry, signals)
    if signals is not None:
        runtime.closers.append(signals.close)
    if shared is not None:
        runtime.closers.append(shared.store.close)
    return runtime


@asynccontextmanager
async def ctr_lifespan(
    app: FastAPI,
    settings: Settings,
    registry: CollectorRegistry | None = None,
    required: bool = False,
    retrain_factory: RetrainFactory | None = None,
) -> AsyncIterator[None]:
    """Load the CTR runtime into `app.state.ctr` for the app's lifetime.

    Without a trained CTR version the app still starts (`/ctr/*` answers 503 until a first
    version is promoted, then serves it) unless `required` and not `ctr.serve.wait_for_model`.
    """
    metrics = CtrMetrics.create(registry if registry is not None else CollectorRegistry())
    app.state.ctr_metrics = metrics
    app.state.ctr_unavailable = None
    app.state.ctr = None
    tasks: list[asyncio.Task[None]] = []

    def start(runtime: CtrRuntime) -> None:
        app.state.ctr, app.state.ctr_unavailable = runtime, None
        name = ctr_signal(settings.ctr.registry_name)
        poll_s = settings.serve.follow_poll_s
        tasks.append(asyncio.create_task(follow(runtime.follow_pointer, runtime.signals, name,
                                                poll_s)))  # fmt: skip

    async def when_a_model_exists(failed: str | None = None) -> None:
        # No version yet (a fresh install), or a `failed` one that did not load: /ctr/* answer
        # 503 until a loadable one is promoted (a damaged one is tried again after a while).
        from strata.ctr.artifacts import ctr_registry

        reg = ctr_registry(settings)
        since = time.monotonic()
        while True:
            while True:
                target = await asyncio.to_thread(reg.serving)
                again = target == failed and time.monotonic() - since < RETRY_FAILED_S
                if target is not None and not again:
                    break
                await asyncio.sleep(settings.serve.follow_poll_s)
            try:
                runtime = await asyncio.to_thread(
                    build_runtime, settings, metrics, None, retrain_factory
                )
            except StrataError as exc:  # a broken version: the next promotion may fix it
                app.state.ctr_unavailable = f"ctr version {target} refused: {exc}"
                log.warning("ctr: version %s did not load (%s); trying again", target, exc)
                failed, since = target, time.monotonic()
                continue
            start(runtime)
            log.info("ctr: a first version was promoted: %s", runtime.service.served.version)
            return

    try:
        start(await asyncio.to_thread(build_runtime, settings, metrics, None, retrain_factory))
    except StrataError as exc:
        missing = isinstance(exc, NotFoundError)
        if required and not settings.ctr.serve.wait_for_model:
            raise
        # Mounted in the main app: a missing or broken CTR version must not stop the recommender;
        # standalone with `wait_for_model`: unready with the reason instead of a crash loop.
        serving = None if missing else await asyncio.to_thread(ctr_registry_serving, settings)
        hint = ": run `strata ctr train`" if missing else ""
        refused = "" if missing else f"ctr version {serving} refused: "
        app.state.ctr_unavailable = f"{refused}{exc}{hint}"
        log.warning("ctr: no model to serve (%s); /ctr/* will answer 503", exc)
        tasks.append(asyncio.create_task(when_a_model_exists(serving)))
    try:
        yield
    finally:
        await cancel_all(tasks)
        runtime: CtrRuntime | None = app.state.ctr
        if runtime is not None:
            await asyncio.to_thread(runtime.close, settings.ctr.serve.shutdown_wait_s)
        app.state.ctr = None
