"""HTTP layer of the CTR system: `/ctr/predict`, `/ctr/feedback`, `/ctr/status` and their metrics.

A thin wrapper over `strata.ctr.service.CtrService`. The lifespan (`ctr_lifespan`, or
`install_ctr` for an existing app) loads the serving CTR version into `app.state.ctr` and wires
feedback -> `RollingAucMonitor` -> `RetrainTrigger` -> warm-start incremental training (on a
background thread) -> gate -> publish -> hot reload. Requests keep being answered by the old
version until the new one is swapped in as a whole, so a retrain never drops a request.

Metrics are registered on the `CollectorRegistry` passed in (no global registry):

- `strata_ctr_request_seconds{endpoint,status}`: latency histogram of every request, body parsing
  and validation included. It is what the Kubernetes HPA scales on (through prometheus-adapter,
  e.g. `histogram_quantile(0.95, rate(strata_ctr_request_seconds_bucket{endpoint="predict"}[1m]))`
  or the mean `rate(..._sum) / rate(..._count)`); the buckets are dense between 1 ms and 100 ms,
  where a CPU pod's p95 target sits.
- `strata_ctr_predictions_total`, `strata_ctr_feedback_total{outcome}`,
  `strata_ctr_rolling_auc` (NaN while the window has too few labels),
  `strata_ctr_retrains_total{outcome}` (promoted | rejected | failed),
  `strata_ctr_drift_decisions_total{kind}`.

Bad input is a 422 whose `detail` names the field (`rows[3].I5`, `labels`), in FastAPI's shape.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import BaseModel, Field

from strata.config import Settings
from strata.errors import NotFoundError, StrataError, ValidationError
from strata.serving import pauses
from strata.serving.errors import body_loc, validation_response

if TYPE_CHECKING:
    from strata.ctr.drift import FeatureDriftReference
    from strata.ctr.service import CtrService
    from strata.monitoring.drift import DriftDecision
    from strata.monitoring.trigger import RetrainTrigger
    from strata.registry import Registry

log = logging.getLogger(__name__)

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

    def set_auc(self, auc: float | None) -> None:
        """Publish the rolling AUC (NaN when the window cannot give one)."""
        self.rolling_auc.set(float("nan") if auc is None else auc)


# --- runtime -------------------------------------------------------------------------------


@dataclass
class CtrRuntime:
    """What the lifespan puts into `app.state.ctr`: service, trigger, metrics and registries."""

    settings: Settings
    service: CtrService
    trigger: RetrainTrigger
    metrics: CtrMetrics
    model_registry: Registry
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


def build_runtime(
    settings: Settings, metrics: CtrMetrics, version: str | None = None
) -> CtrRuntime:
    """Load the serving (or given) CTR version and wire monitor -> trigger -> retrain -> reload."""
    from strata.ctr.artifacts import ctr_registry
    from strata.ctr.service import CtrService, ServedModel, make_retrain
    from strata.monitoring.trigger import RetrainTrigger

    cfg = settings.ctr
    model_registry = ctr_registry(settings)
    path = model_registry.path(version)
    served = ServedModel.load(path, path.name, threads=cfg.serve.onnx_threads)
    service = CtrService(served, cfg)
    base = make_retrain(service, model_registry, cfg, settings.seed)

    def retrain() -> dict[str, Any]:
        try:
            out = base()
        except Exception:
            metrics.retrains.labels("failed").inc()
            raise  # RetrainTrigger logs the failure with its traceback
        metrics.retrains.labels("promoted" if out.get("promoted") else "rejected").inc()
        metrics.set_auc(service.stats()["rolling_auc"])
        # Training allocated heavily in this process; a promotion also loaded a new model.
        pauses.settle(settings.gc)
        return out

    log_path = settings.home / "logs" / f"{cfg.registry_name}-drift.jsonl"
    trigger = RetrainTrigger(retrain, log_path=log_path, background=cfg.serve.retrain_background)
    log.info("ctr: serving %s from %s", served.version, path)
    return CtrRuntime(settings, service, trigger, metrics, model_registry)


@asynccontextmanager
async def ctr_lifespan(
    app: FastAPI,
    settings: Settings,
    registry: CollectorRegistry | None = None,
    required: bool = False,
) -> AsyncIterator[None]:
    """Load the CTR runtime into `app.state.ctr` for the app's lifetime.

    Without a trained CTR version the app still starts (`/ctr/*` answers 503) unless `required`.
    """
    metrics = CtrMetrics.create(registry if registry is not None else CollectorRegistry())
    app.state.ctr_metrics = metrics
    app.state.ctr_unavailable = None
    runtime: CtrRuntime | None = None
    try:
        runtime = await asyncio.to_thread(build_runtime, settings, metrics)
    except StrataError as exc:
        if required:
            raise
        # Mounted in the main app: a missing or broken CTR version must not stop the recommender.
        hint = ": run `strata ctr train`" if isinstance(exc, NotFoundError) else ""
        app.state.ctr_unavailable = f"{exc}{hint}"
        log.warning("ctr: no model to serve (%s); /ctr/* will answer 503", exc)
    app.state.ctr = runtime
    try:
        yield
    finally:
        if runtime is not None:
            await asyncio.to_thread(runtime.close, settings.ctr.serve.shutdown_wait_s)
        app.state.ctr = None


def install_ctr(
    app: FastAPI, settings: Settings, registry: CollectorRegistry | None = None
) -> None:
    """Add the `/ctr/*` routes to an existing app and run `ctr_lifespan` inside its lifespan."""
    app.include_router(router)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[Any]:
        async with ctr_lifespan(a, settings, registry), inner(a) as state:
            yield state

    app.router.lifespan_context = lifespan


def create_ctr_app(settings: Settings, registry: CollectorRegistry | None = None) -> FastAPI:
    """The standalone CTR server: `/ctr/*`, `/metrics` and `/healthz`."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    reg = registry if registry is not None else CollectorRegistry()

    @asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[None]:
        async with pauses.watched(reg), ctr_lifespan(a, settings, reg, required=True):
            pauses.settle(settings.gc)  # the loaded model out of the collector's reach
            yield

    app = FastAPI(title="strata CTR", version="0.1.0", lifespan=lifespan)
    app.include_router(router)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's shape plus `field` (`rows[3]`), as the main app and the domain errors have it.
        return validation_response(exc)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(reg), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz(request: Request) -> dict[str, Any]:
        rt: CtrRuntime | None = getattr(request.app.state, "ctr", None)
        return {"ok": rt is not None, "version": rt.service.served.version if rt else None}

    return app


def serve_ctr(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Run the standalone CTR server with uvicorn (blocks); fails fast without a model."""
    import uvicorn

    from strata.ctr.artifacts import ctr_registry

    ctr_registry(settings).path(None)  # NotFoundError before binding a port: CLI exit 2
    cfg = settings.ctr.serve
    # No access log: the latency histogram is the per-request record, and logging every
    # request costs more CPU than scoring a small batch.
    uvicorn.run(
        create_ctr_app(settings),
        host=host or cfg.host,
        port=port or cfg.port,
        log_level="info",
        access_log=False,
    )


# --- routes --------------------------------------------------------------------------------


class _TimedRoute(APIRoute):
    """Observes the latency of the whole request (parsing, validation, handler) per route."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        endpoint = self.name

        async def timed(request: Request) -> Response:
            t0 = time.perf_counter()
            status = "5xx"
            try:
                response = await handler(request)
                status = f"{response.status_code // 100}xx"
                return response
            except HTTPException as exc:
                status = f"{exc.status_code // 100}xx"
                raise
            except RequestValidationError:
                status = "4xx"
                raise
            finally:
                metrics: CtrMetrics | None = getattr(request.app.state, "ctr_metrics", None)
                if metrics is not None:
                    metrics.latency.labels(endpoint, status).observe(time.perf_counter() - t0)

        return timed


router = APIRouter(prefix="/ctr", tags=["ctr"], route_class=_TimedRoute)


class PredictRequest(BaseModel):
    """Raw Criteo rows: objects keyed I1..I13 (numbers) and C1..C26 (strings); missing = absent."""

    rows: list[dict[str, Any]] = Field(min_length=1)


class FeedbackRequest(BaseModel):
    """True labels for earlier prediction ids (same order, same length)."""

    ids: list[int] = Field(min_length=1)
    labels: list[int]


def _unprocessable(exc: ValidationError) -> HTTPException:
    return HTTPException(
        status_code=422,
        detail=[
            {
                "loc": body_loc(exc.field),
                "field": exc.field,
                "msg": exc.problem,
                "type": "value_error",
            }
        ],
    )


def _runtime(request: Request) -> CtrRuntime:
    rt: CtrRuntime | None = getattr(request.app.state, "ctr", None)
    if rt is None:
        reason = getattr(request.app.state, "ctr_unavailable", None) or "CTR runtime not loaded"
        raise HTTPException(status_code=503, detail=reason)
    return rt


@router.post("/predict", name="predict")
async def predict(body: PredictRequest, request: Request) -> JSONResponse:
    """Score a batch of raw rows: one probability and one prediction id per row.

    Runs on the event loop: scoring is in-process and GIL-bound, so a threadpool hand-off would
    add two cross-thread wake-ups per request and buy no parallelism (see
    `strata.serving.app._serve_recommend`)."""
    rt = _runtime(request)
    limit = rt.settings.ctr.serve.max_batch_rows
    if len(body.rows) > limit:
        raise _unprocessable(ValidationError("rows", f"{len(body.rows)} rows; at most {limit}"))
    try:
        pred = rt.service.predict(body.rows)
    except ValidationError as exc:
        raise _unprocessable(exc) from None
    rt.metrics.predictions.inc(len(pred.ids))
    return JSONResponse(
        {"ids": pred.ids.tolist(), "probabilities": pred.probs.tolist(), "version": pred.version}
    )


@router.post("/feedback", name="feedback")
def feedback(body: FeedbackRequest, request: Request) -> JSONResponse:
    """Join true labels to prediction ids; returns counts and the drift monitor's decision."""
    rt = _runtime(request)
    limit = rt.settings.ctr.serve.max_feedback_ids
    if len(body.ids) > limit:
        raise _unprocessable(ValidationError("ids", f"{len(body.ids)} ids; at most {limit}"))
    if len(body.labels) != len(body.ids):
        raise _unprocessable(
            ValidationError("labels", f"{len(body.labels)} labels for {len(body.ids)} ids")
        )
    bad = next((i for i, v in enumerate(body.labels) if v not in (0, 1)), None)
    if bad is not None:
        raise _unprocessable(ValidationError(f"labels[{bad}]", "labels must be 0 or 1"))
    try:
        res = rt.service.feedback(body.ids, body.labels)
    except ValidationError as exc:
        raise _unprocessable(exc) from None
    event = rt.trigger.handle(res.decision)
    _observe_feedback(rt.metrics, res.accepted, len(res.unknown), len(res.duplicate), res.decision)
    return JSONResponse(
        {
            "accepted": res.accepted,
            "unknown": res.unknown,
            "duplicate": res.duplicate,
            "decision": res.decision.to_dict(),
            "action": event.action,
            "version": rt.service.served.version,
        }
    )


def _observe_feedback(
    m: CtrMetrics, accepted: int, unknown: int, duplicate: int, decision: DriftDecision
) -> None:
    for outcome, n in (("accepted", accepted), ("unknown", unknown), ("duplicate", duplicate)):
        if n:
            m.feedback.labels(outcome).inc(n)
    m.decisions.labels(decision.kind).inc()
    m.set_auc(decision.auc)


@router.get("/status", name="status")
def status(request: Request) -> dict[str, Any]:
    """Served version, counters, rolling AUC and its trigger floor, retrains, feature drift."""
    rt = _runtime(request)
    stats = rt.service.stats()
    retrains = [r for r in rt.trigger.records if r.get("event") == "retrain"]
    try:
        drift = rt.feature_drift()
    except StrataError as exc:  # a corrupt reference must not take the status page down
        log.warning("ctr: feature drift unavailable: %s", exc)
        drift = None
    return {
        **stats,
        "floor": rt.service.monitor.floor(),
        "window": rt.settings.ctr.drift.window,
        "retraining": rt.trigger.running,
        "retrains": rt.trigger.runs,
        "last_retrain": _jsonable(retrains[-1]) if retrains else None,
        "feature_drift": drift,
    }


def _jsonable(record: Mapping[str, Any]) -> dict[str, Any]:
    import json

    return dict(json.loads(json.dumps(record, default=str)))
