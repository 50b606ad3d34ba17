"""HTTP layer of the CTR system: `/ctr/predict`, `/ctr/feedback`, `/ctr/status` and their metrics.

A thin wrapper over `strata.ctr.service.CtrService`. The lifespan (`ctr_runtime.ctr_lifespan`,
or `install_ctr` for an existing app) loads the serving CTR version into `app.state.ctr` and wires
feedback -> `RollingAucMonitor` -> `RetrainTrigger` -> warm-start incremental training (on a
background thread) -> gate -> publish -> hot reload. Requests keep being answered by the old
version until the new one is swapped in as a whole, so a retrain never drops a request.

Metrics (`ctr_runtime.CtrMetrics`) are registered on the `CollectorRegistry` passed in (no
global registry):

- `strata_ctr_request_seconds{endpoint,status}`: latency histogram of every request, body parsing
  and validation included. It is what the Kubernetes HPA scales on (through prometheus-adapter,
  e.g. `histogram_quantile(0.95, rate(strata_ctr_request_seconds_bucket{endpoint="predict"}[1m]))`
  or the mean `rate(..._sum) / rate(..._count)`); the buckets are dense between 1 ms and 100 ms,
  where a CPU pod's p95 target sits.
- `strata_ctr_predictions_total`, `strata_ctr_feedback_total{outcome}`,
  `strata_ctr_rolling_auc` (NaN while the window has too few labels), `strata_ctr_auc_floor`
  (the level below which it triggers),
  `strata_ctr_retrains_total{outcome}` (promoted | rejected | failed),
  `strata_ctr_drift_decisions_total{kind}`.

Bad input is a 422 whose `detail` names the field (`rows[3].I5`, `labels`), in FastAPI's shape.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from strata.config import Settings
from strata.errors import StoreUnavailableError, StrataError, ValidationError
from strata.serving import pauses
from strata.serving.ctr_runtime import CtrMetrics, CtrRuntime, RetrainFactory, ctr_lifespan
from strata.serving.errors import RETRY_AFTER_S, body_loc, error_response, install_http_errors
from strata.serving.limits import BodyLimit
from strata.serving.openapi import Predictions, Readiness, errors

if TYPE_CHECKING:
    from strata.monitoring.drift import DriftDecision

log = logging.getLogger(__name__)


def install_ctr(
    app: FastAPI,
    settings: Settings,
    registry: CollectorRegistry | None = None,
    retrain_factory: RetrainFactory | None = None,
) -> None:
    """Add the `/ctr/*` routes to an existing app and run `ctr_lifespan` inside its lifespan."""
    app.include_router(router)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[Any]:
        async with ctr_lifespan(a, settings, registry, False, retrain_factory), inner(a) as state:
            yield state

    app.router.lifespan_context = lifespan


def create_ctr_app(
    settings: Settings,
    registry: CollectorRegistry | None = None,
    retrain_factory: RetrainFactory | None = None,
) -> FastAPI:
    """The standalone CTR server: `/ctr/*`, `/metrics` and `/healthz`."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    reg = registry if registry is not None else CollectorRegistry()

    @asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[None]:
        async with pauses.watched(reg), ctr_lifespan(a, settings, reg, True, retrain_factory):
            pauses.settle(settings.gc)  # the loaded model out of the collector's reach
            yield

    app = FastAPI(title="strata CTR", version="0.1.0", lifespan=lifespan)
    app.include_router(router)

    # FastAPI's shape plus `field` (`rows[3]`), as the main app and the domain errors have it.
    install_http_errors(app)
    app.add_middleware(BodyLimit, max_bytes=settings.ctr.serve.max_body_bytes)

    @app.exception_handler(StoreUnavailableError)
    async def unavailable(_: Request, exc: StoreUnavailableError) -> JSONResponse:
        # Cluster mode, the shared state unreachable: feedback is refused, to be sent again.
        return error_response(503, None, str(exc), headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(reg), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz(request: Request) -> dict[str, Any]:
        """The process is up (liveness)."""
        rt: CtrRuntime | None = getattr(request.app.state, "ctr", None)
        return {"ok": rt is not None, "version": rt.service.served.version if rt else None}

    @app.get("/readyz", responses={200: {"model": Readiness}, 503: {"model": Readiness}})
    def readyz(request: Request) -> JSONResponse:
        """A model version is loaded (readiness, and the startup probe); 503 with the reason
        while none is (`ctr.serve.wait_for_model`: until the first promotion)."""
        rt: CtrRuntime | None = getattr(request.app.state, "ctr", None)
        if rt is None:
            why = getattr(request.app.state, "ctr_unavailable", None) or "not started"
            return JSONResponse({"ready": False, "reasons": [why]}, status_code=503)
        # A promoted version this replica refused (damaged): still ready, on the old one.
        refused = [rt.refused] if rt.refused else []
        return JSONResponse({"ready": True, "version": rt.service.served.version,
                             "refused": rt.refused or None, "reasons": refused})  # fmt: skip

    return app


def serve_ctr(
    settings: Settings,
    host: str | None = None,
    port: int | None = None,
    retrain_factory: RetrainFactory | None = None,
) -> None:
    """Run the standalone CTR server with uvicorn (blocks); fails fast without a model."""
    import uvicorn

    from strata.ctr.artifacts import ctr_registry

    if not settings.ctr.serve.wait_for_model:  # NotFoundError before binding a port: exit 2
        ctr_registry(settings).path(None)
    cfg = settings.ctr.serve
    # No access log: the latency histogram is the per-request record, and logging every
    # request costs more CPU than scoring a small batch.
    uvicorn.run(
        create_ctr_app(settings, retrain_factory=retrain_factory),
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

    model_config = ConfigDict(extra="forbid")

    rows: list[dict[str, Any]] = Field(min_length=1)


class FeedbackRequest(BaseModel):
    """True labels for earlier prediction ids (same order, same length)."""

    model_config = ConfigDict(extra="forbid")

    ids: list[Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]] = Field(min_length=1)
    labels: list[Annotated[StrictInt, Field(ge=0, le=1)]]  # 0 or 1; true/false are not labels


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


@router.post("/predict", name="predict", responses={200: {"model": Predictions}, **errors(503)})
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


@router.post("/feedback", name="feedback", responses=errors(503))
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
    m.set_auc(decision.auc, decision.floor)


@router.get("/status", name="status", responses=errors(503))
def status(request: Request) -> dict[str, Any]:
    """Served version, counters, rolling AUC and its trigger floor, retrains, feature drift, and
    the served version's baseline-gate record (`strata ctr train`'s; None for a retrained one)."""
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
        "promotion": rt.service.served.meta.get("metrics", {}).get("promotion"),
    }


def _jsonable(record: Mapping[str, Any]) -> dict[str, Any]:
    import json

    return dict(json.loads(json.dumps(record, default=str)))
