"""The HTTP service: `create_app(settings)` builds a FastAPI app around `RecommendationPipeline`.

Artifacts load in the lifespan into `app.state.serving` (a `ServingState`); handlers reach them
through dependencies, so nothing lives at module level and two apps in one process (tests) never
share a client, a model or a metric. Endpoints:

    GET  /recommend?user_id=&k=&device=&ts=&stage=&seed=   POST /recommend (JSON)
    POST /events            one event object or a JSON array of them (online-layer semantics)
    GET  /items/{item_id}   GET /healthz (process up)   GET /readyz (models loaded; degraded?)
    GET  /metrics           Prometheus, one CollectorRegistry per app
    POST /admin/reload      bearer token; swaps to the registry's serving version atomically
                            and signals the other replicas (each follows the pointer anyway)

Bad input is a 422 naming the field (`detail[0].field`), never a 500. The online store never
causes a 500 or a hung request either: every store call has the short serving timeout and goes
through the `StoreBreaker`; /recommend then serves degraded (200), /readyz stays 200 and says
`degraded` with the reason (a store outage must not take every replica out of the Service at
once), and any other store failure is a 503 with `Retry-After`. The app starts with the store
down and recovers by itself: a background task probes the store while the breaker is open, so it
is used again within about `store_backoff_max_s` plus one timeout of its return, with or without
traffic.

POST /events with the store down or hung (decision; see `strata.features.events`): the events are
validated, written durably to the local outbox (fsync) and acknowledged with 202 and `deferred`
(200 when they were applied at once); the same background task drains the outbox into the store
once it answers. The answer comes within a few serving timeouts, never the bulk timeout. Only if
the outbox cannot be written either is the request refused: 503 with `Retry-After`, nothing
acknowledged.

Reload builds the new
pipeline completely off the event loop and then replaces one reference: a request reads the
reference once at its start and finishes on that pipeline, so nothing fails during a swap.
The `/ctr/*` routes of `strata.serving.ctr_api` are mounted when that module is present.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from strata.errors import NotFoundError, StoreUnavailableError, StrataError, ValidationError
from strata.serving import pauses
from strata.serving.bodies import RecommendBody, parse_events, recommendation_json, request_user
from strata.serving.errors import error_response, install_error_handlers
from strata.serving.follow import announce, cancel_all, follow, serving_signal
from strata.serving.items_api import install_items
from strata.serving.limits import BodyLimit
from strata.serving.live import describe
from strata.serving.metrics import RequestMetrics, ServingMetrics
from strata.serving.online import OnlineLink
from strata.serving.openapi import (
    ADMIN,
    EventsReport,
    Readiness,
    Recommendation,
    errors,
    events_body,
)
from strata.serving.service import RecommendationPipeline
from strata.serving.state import (
    ServingState,
    follow_pointer,
    online_upkeep,
    reload_version,
    start_or_wait,
)
from strata.serving.web import dense_item, install_web

if TYPE_CHECKING:
    from strata.config import Settings
    from strata.features.online import OnlineStore

log = logging.getLogger(__name__)

GET_RECOMMEND_PARAMS = frozenset({"user_id", "k", "device", "ts", "stage", "seed"})


# --- state -------------------------------------------------------------------------------------


async def _state(request: Request) -> ServingState:
    state: ServingState | None = getattr(request.app.state, "serving", None)
    if state is None:
        raise StoreUnavailableError("the service is starting or stopping")
    return state


async def _pipeline(request: Request) -> RecommendationPipeline:
    # Read once per request: a reload replaces the reference, this request keeps its pipeline.
    # Dependencies are async so FastAPI resolves them on the loop, not through the threadpool.
    return (await _state(request)).pipeline


StateDep = Annotated[ServingState, Depends(_state)]
PipelineDep = Annotated[RecommendationPipeline, Depends(_pipeline)]


async def _serve_recommend(
    state: ServingState,
    pipe: RecommendationPipeline,
    user_id: int | str | None,
    k: int | None,
    device: str,
    ts: int | None,
    stage: Literal["retrieval", "full"],
    seed: int | None,
) -> JSONResponse:
    """Run the pipeline on the event loop itself (`serve.dispatch`, default for in-process
    inference) or in the threadpool (a remote inference server, whose round trip should not
    hold the loop). Inline is the faster and steadier choice when inference is local: a request
    is ~2-4 ms of GIL-bound work either way, and a thread hand-off costs two cross-thread wake-ups
    per request (worse on an idle CPU) while concurrent worker threads convoy on the GIL's 5 ms
    switch interval once requests queue (bench/serve_load.py, docs/benchmarks.md "Tail latency")."""
    kk = pipe.config.k_default if k is None else k
    uid = request_user(pipe, user_id)
    if state.inline:
        rec = pipe.recommend(uid, kk, ts=ts, device=device, stage=stage, seed=seed)
    else:
        rec = await run_in_threadpool(pipe.recommend, uid, kk, ts=ts, device=device,
                                      stage=stage, seed=seed)  # fmt: skip
    state.metrics.observe(rec)
    return JSONResponse(recommendation_json(rec, kk, pipe, user_id))


# --- app ---------------------------------------------------------------------------------------


def create_app(
    settings: Settings,
    store: OnlineStore | None = None,
    ctr: bool = True,
) -> FastAPI:
    """The serving app for `settings.serve.dataset`; `store` overrides the configured online
    store (tests, embedded runs); `ctr` mounts the CTR routes when their module exists."""
    from strata.features.events import EventIngestor

    metrics = ServingMetrics.create()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with pauses.watched(metrics.registry), AsyncExitStack() as stack:
            tasks: list[asyncio.Task[None]] = []
            poll_s = settings.serve.follow_poll_s

            async def start() -> None:
                state = await stack.enter_async_context(_serving(app))
                name = serving_signal(state.pipeline.dataset)
                tasks.append(asyncio.create_task(online_upkeep(state)))
                check = lambda: follow_pointer(state)  # noqa: E731 - the follower's check
                tasks.append(asyncio.create_task(follow(check, state.signals, name, poll_s)))

            if settings.serve.wait_for_model:
                # A fresh install, or a serving version that does not load: up and live,
                # unready (503 with the reason) until a loadable version is promoted, instead
                # of exiting into a crash loop.
                def report(why: str) -> None:
                    app.state.waiting = why

                waiting = await start_or_wait(settings, start, report)
                if waiting is not None:
                    tasks.append(waiting)
            else:
                await start()
            try:
                yield
            finally:
                await cancel_all(tasks)

    @asynccontextmanager
    async def _serving(app: FastAPI) -> AsyncIterator[ServingState]:
        link = OnlineLink.open(settings, store)
        try:
            pipe = await asyncio.to_thread(RecommendationPipeline.load, settings, None, None, link)
        except BaseException:
            if store is None:
                link.close()  # a version that fails to load leaves no connection behind
            raise
        ingestor = EventIngestor(
            settings, store=link.store, bloom=link.bloom,
            item_categories=pipe.catalog.categories(), event_types=pipe.event_types,
        )  # fmt: skip
        if settings.online.type == "memory" and store is None:
            # The embedded store starts empty: replay the durable event log (idempotent).
            n = await asyncio.to_thread(ingestor.recover)
            log.info("replayed %d logged events into the embedded store", n)
        from strata.features.online.signals import open_signals

        state = ServingState(settings, link, ingestor, pipe, metrics, open_signals(link.store))
        metrics.set_model(pipe)
        # Everything long-lived is loaded (the CTR runtime too, when mounted): freeze it.
        pauses.settle(settings.gc)
        app.state.serving = state
        try:
            yield state
        finally:
            app.state.serving = None
            if state.signals is not None:
                state.signals.close()
            if store is None:
                link.close()

    app = FastAPI(title="strata", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    _install_routes(app, settings)
    install_items(app, _admin_state)
    install_web(app, _pipeline, _state)
    if ctr:
        _install_ctr(app, settings, metrics)
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(BodyLimit, max_bytes=settings.serve.max_body_bytes)
    return app


def _install_ctr(app: FastAPI, settings: Settings, metrics: ServingMetrics) -> None:
    """Mount `/ctr/*` (another team's module) when it is importable."""
    try:
        from strata.serving.ctr_api import install_ctr
    except ImportError as exc:
        log.info("CTR routes not mounted: %s", exc)
        return
    install_ctr(app, settings, metrics.registry)


def _install_routes(app: FastAPI, settings: Settings) -> None:
    @app.get("/recommend", responses={200: {"model": Recommendation}, **errors(404, 503)})
    async def recommend_get(
        request: Request,
        state: StateDep,
        pipe: PipelineDep,
        user_id: Annotated[
            str | None,
            Query(
                min_length=1,
                max_length=256,
                description="an integer >= 0, or the owner's id for a declared dataset",
            ),
        ] = None,
        k: Annotated[int | None, Query()] = None,
        device: Annotated[str, Query(max_length=64)] = "unknown",
        ts: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
        stage: Annotated[Literal["retrieval", "full"], Query()] = "full",
        seed: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
    ) -> JSONResponse:
        """Top-k for a user (omit user_id for an anonymous request with context only)."""
        unknown = sorted(set(request.query_params) - GET_RECOMMEND_PARAMS)
        if unknown:
            # `?=x` has an empty name: the field is then the query string itself
            raise ValidationError(unknown[0] or "query", f"unknown query parameter {unknown[0]!r}")
        return await _serve_recommend(state, pipe, user_id, k, device, ts, stage, seed)

    @app.post("/recommend", responses={200: {"model": Recommendation}, **errors(404, 503)})
    async def recommend_post(
        body: RecommendBody, state: StateDep, pipe: PipelineDep
    ) -> JSONResponse:
        """Top-k from a JSON body (unknown fields and wrong types are rejected)."""
        return await _serve_recommend(state, pipe, body.user_id, body.k, body.device, body.ts,
                                      body.stage, body.seed)  # fmt: skip

    @app.post("/events", openapi_extra=events_body(settings.serve.max_events),
              responses={200: {"model": EventsReport}, 202: {"model": EventsReport},
                         **errors(413, 503)})  # fmt: skip
    async def events(request: Request, state: StateDep) -> JSONResponse:
        """Ingest one event or a batch: durable log, live activity, Bloom filter."""
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValidationError("body", f"invalid JSON: {exc}") from None
        pipe = state.pipeline
        parsed = parse_events(body, pipe, state.settings.serve.max_events)
        # Store down or hung: durably queued and acknowledged (202), see the module docstring.
        report = await asyncio.to_thread(
            state.ingestor.ingest_or_defer, parsed, state.link.breaker.call
        )
        return JSONResponse(
            {"accepted": report.accepted, "new": report.new, "duplicates": report.duplicates,
             "deferred": report.deferred},
            status_code=202 if report.deferred else 200,
        )  # fmt: skip

    @app.get("/items/{item_id}", responses=errors(404, 503))
    async def item(
        request: Request,
        item_id: Annotated[str, Path(min_length=1, max_length=256)],
        pipe: PipelineDep,
    ) -> JSONResponse:
        """What the catalog knows about one item (404 when it is not in it); the owner's item
        id for a declared dataset, else an integer."""
        dense = dense_item(pipe, item_id)
        info = pipe.catalog.item(dense) if dense is not None else None
        if info is None:
            raise NotFoundError(f"item {item_id} is not in the catalog of {pipe.version}")
        live = describe(pipe.live, dense) if dense is not None else None  # added after training
        shown = await asyncio.to_thread(request.app.state.item_display(pipe).get, pipe, dense)
        return JSONResponse({**info, **shown, "item_id": item_id if pipe.ids is not None else dense,
                             "live": live})  # fmt: skip

    @app.get("/registry", responses=errors(503))
    def registry(pipe: PipelineDep, last: Annotated[int, Query(ge=1, le=500)] = 50) -> JSONResponse:
        """The served dataset's model versions (newest first: kind, creation, data range,
        metrics), the registry's serving pointer, the version this replica serves, and the
        last `last` promotion-gate decisions (for operators and the web UI)."""
        from strata.registry import Registry

        reg = Registry(pipe.settings.registry_dir, pipe.dataset)
        versions = []
        for v in reversed(reg.versions()):
            try:
                m = reg.manifest(v)
            except StrataError:
                continue  # a version being written or damaged is listed by nothing here
            keep = ("version", "kind", "created", "parent", "data_range", "metrics")
            versions.append({k: m.get(k) for k in keep})
        return JSONResponse({"dataset": pipe.dataset, "serving": reg.serving(),
                             "this_replica": pipe.version, "versions": versions,
                             "decisions": reg.decisions(last)})  # fmt: skip

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up (liveness)."""
        return {"status": "ok"}

    @app.get("/readyz", responses={200: {"model": Readiness}, 503: {"model": Readiness}})
    def readyz(request: Request) -> JSONResponse:
        """Readiness: a model version is loaded and answers (503 with the reason while none is:
        `serve.wait_for_model` until the first promotion). An unreachable online store is
        `degraded`, not unready: every replica keeps serving from snapshots instead of all
        leaving the Service."""
        state: ServingState | None = getattr(request.app.state, "serving", None)
        if state is None:
            why = getattr(request.app.state, "waiting", None) or "not started"
            return JSONResponse({"ready": False, "reasons": [why]}, status_code=503)
        pipe = state.pipeline
        reasons, degraded = [], []
        health = pipe.backend.health()
        if not health.ok:
            reasons.append(health.detail)
        try:
            state.link.health()
        except StoreUnavailableError as exc:
            degraded.append(f"online store: {exc}")
        degraded += state.link.versions.lost()  # the store answers but lost its features
        # A promoted version this replica refused (damaged): still ready, on the old one.
        refused = [state.refused] if state.refused else []
        body = {
            "ready": not reasons,
            "degraded": bool(degraded),
            "refused": state.refused or None,
            "model_version": pipe.version,
            "dataset": pipe.dataset,
            "index": pipe.index_info,
            "items": len(pipe.catalog),
            "item_feature_version": pipe.catalog.feature_version,
            "reasons": reasons + degraded + refused,
        }
        return JSONResponse(body, status_code=200 if not reasons else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(state: StateDep) -> Response:
        """Prometheus exposition of this app's registry (on the loop: a thread doing it would
        contend for the GIL with the requests on the loop, see `_serve_recommend`)."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload", responses=errors(*ADMIN, 409, 503))
    async def reload(request: Request, state: StateDep) -> JSONResponse:
        """Swap to the registry's serving version (build fully, then replace the reference) and
        signal the other replicas, which follow the same pointer."""
        _check_admin(request, state)
        try:
            out = await reload_version(state)
        except StrataError as exc:
            current = state.pipeline.version
            return error_response(409, None, f"reload failed, still serving {current}: {exc}")
        await asyncio.to_thread(
            announce, state.signals, serving_signal(state.pipeline.dataset), str(out["version"])
        )
        return JSONResponse(out)


async def _admin_state(request: Request) -> ServingState:
    """The app's state for a request that carries the admin token (401/403 otherwise)."""
    state = await _state(request)
    _check_admin(request, state)
    return state


def _check_admin(request: Request, state: ServingState) -> None:
    """401 unless the request carries `Authorization: Bearer <serve.admin_token>`."""
    from fastapi import HTTPException

    token = state.settings.serve.admin_token
    # An empty token (an empty Secret) is no token: else a bare "Bearer" header would match it.
    if token is None or not token.get_secret_value().strip():
        raise HTTPException(403, "admin endpoints are disabled: set STRATA_SERVE__ADMIN_TOKEN")
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    ok = scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.get_secret_value().strip().encode()
    )
    if not ok:
        raise HTTPException(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})


# --- running -----------------------------------------------------------------------------------


def serve(
    settings: Settings,
    host: str | None = None,
    port: int | None = None,
    log_level: str = "info",
    store: OnlineStore | None = None,
) -> None:
    """Run the app with uvicorn (blocks); fails before binding when no model version exists.
    `store` hands over an already-filled online store (the embedded demo)."""
    import uvicorn

    from strata.registry import Registry

    if not settings.serve.wait_for_model:  # NotFoundError -> exit 2, before binding a port
        Registry(settings.registry_dir, settings.serve.dataset).path(None)
    cfg = settings.serve
    # No access log: the latency histogram is the per-request record, and formatting a log
    # line per request costs a visible share of the CPU budget on 2 cores.
    uvicorn.run(
        create_app(settings, store=store),
        host=host or cfg.host,
        port=cfg.port if port is None else port,
        log_level=log_level,
        access_log=False,
    )
