"""What a running serving app holds (`ServingState`) and how it changes over its life: the
online store's upkeep (probe while down, drain outboxes, adopt a gone replica's outbox, refresh
the catalog), swapping in another model version (`reload_version`), following the registry's
`serving` pointer (`follow_pointer`), and waiting for a first version on a fresh install
(`start_or_wait`, `when_a_model_exists`: also after a serving version that does not load).
`app.py` wires these into the FastAPI app.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from strata.errors import StoreUnavailableError, StrataError
from strata.serving import pauses
from strata.serving.follow import RETRY_FAILED_S
from strata.serving.metrics import ServingMetrics
from strata.serving.online import OnlineLink
from strata.serving.service import RecommendationPipeline

if TYPE_CHECKING:
    from strata.config import Settings
    from strata.features.events import EventIngestor
    from strata.features.online.signals import ValkeySignals

log = logging.getLogger(__name__)

#: Seconds between looks for the outboxes of replicas that are gone (their events drained here).
_ADOPT_EVERY_S = 10.0
#: Seconds between a replica's roster beats, and how long a silent one stays listed.
BEAT_EVERY_S = 5.0
ROSTER_MAX_AGE_S = 3 * BEAT_EVERY_S


@dataclass
class ServingState:
    """Everything a running app holds: settings, online link, event ingestor, the current
    pipeline (replaced as a whole on reload) and metrics."""

    settings: Settings
    link: OnlineLink
    ingestor: EventIngestor
    pipeline: RecommendationPipeline
    metrics: ServingMetrics
    signals: ValkeySignals | None = None  # replicas' notifications (None: embedded, alone)
    failed: tuple[str, float] = ("", 0.0)  # the last version that failed to load, and when
    # Why that version was refused ("" once a version loads or the pointer is back on the
    # served one): /readyz and the roster show it.
    refused: str = ""
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    started: float = field(default_factory=time.time)

    @property
    def replica(self) -> str:
        """This replica's name: `events.replica` (the pod name in a cluster), else host-pid."""
        return self.settings.events.replica or f"{socket.gethostname()}-{os.getpid()}"

    def status(self) -> dict[str, Any]:
        """What this replica serves, for the roster and the operations page."""
        pipe = self.pipeline
        return {
            "replica": self.replica, "dataset": pipe.dataset, "model_version": pipe.version,
            "item_feature_version": pipe.catalog.feature_version,
            "live_items": len(pipe.live.ids) if pipe.live is not None else 0,
            "live_revision": pipe.live.revision if pipe.live is not None else 0,  # log offset
            "degraded": self.link.breaker.is_open or bool(self.link.versions.lost()),
            "started": self.started, "refused": self.refused or None,
        }  # fmt: skip

    async def replicas(self) -> tuple[list[dict[str, Any]], str | None]:
        """Every live replica's status (this one's alone in the embedded mode, or when the
        store is down: then with the reason)."""
        if self.signals is None:
            return [{**self.status(), "ts": time.time()}], None
        try:
            listed = await asyncio.to_thread(
                self.link.breaker.call, self.signals.roster, self.pipeline.dataset,
                ROSTER_MAX_AGE_S,
            )  # fmt: skip
        except StoreUnavailableError as exc:
            return [{**self.status(), "ts": time.time()}], f"roster unavailable: {exc}"
        if not any(r.get("replica") == self.replica for r in listed):
            listed.append({**self.status(), "ts": time.time()})  # not beaten yet
        return listed, None

    @property
    def inline(self) -> bool:
        """Whether /recommend runs on the event loop (see `_serve_recommend`)."""
        mode = self.settings.serve.dispatch
        if mode == "auto":
            return self.settings.inference.type == "onnxruntime"
        return mode == "inline"


async def online_upkeep(state: ServingState) -> None:
    """Background care of the online side, every tick (at most the breaker's longest backoff):
    beat this replica's status into the roster (every `BEAT_EVERY_S`, replicas only);
    while the breaker is open, probe the store so it closes without traffic; drain events
    deferred to the outbox once the store answers (and, every 10 s, the outbox a gone replica
    left on the shared volume); reload the catalog cache when the item
    feature version changed (every `catalog_refresh_s`, and right after the store came back)."""
    cfg = state.settings.serve
    link, ingestor = state.link, state.ingestor
    tick = min(cfg.catalog_refresh_s, cfg.store_backoff_max_s)
    last_refresh = last_adopt = time.monotonic()
    last_beat = -float("inf")
    while True:
        await asyncio.sleep(tick)
        try:
            was_open = link.breaker.is_open
            if was_open:
                await asyncio.to_thread(link.health)  # StoreUnavailableError while still down
            if ingestor.has_deferred():
                await asyncio.to_thread(ingestor.drain_outbox, link.breaker.call)
            if time.monotonic() - last_adopt >= _ADOPT_EVERY_S:  # outboxes of gone replicas
                last_adopt = time.monotonic()
                await asyncio.to_thread(ingestor.adopt_orphans, link.breaker.call)
            if was_open or time.monotonic() - last_refresh >= cfg.catalog_refresh_s:
                last_refresh = time.monotonic()
                await asyncio.to_thread(state.pipeline.catalog.refresh)
            if state.signals is not None and time.monotonic() - last_beat >= BEAT_EVERY_S:
                last_beat = time.monotonic()  # a beat that fails waits for the next period
                await asyncio.to_thread(
                    link.breaker.call, state.signals.beat, state.pipeline.dataset, state.replica,
                    state.status(),
                )  # fmt: skip
        except StoreUnavailableError:
            continue  # the breaker has logged it; keep serving degraded and cached
        except (StrataError, OSError) as exc:
            log.warning("online store upkeep failed: %s", exc)
        except Exception:  # a bug must not end the loop: without it nothing drains or probes
            log.exception("online store upkeep failed unexpectedly")


async def reload_version(state: ServingState) -> dict[str, object]:
    """Load the registry's serving version off the loop and swap it in; when it cannot be
    loaded (StrataError: a damaged file, named), the old version keeps serving, and the failure
    is counted, logged and kept in `state.failed`/`state.refused` (the follower waits
    `RETRY_FAILED_S` before trying that version again; /readyz says why)."""
    from strata.registry import Registry

    async with state.reload_lock:
        old = state.pipeline
        t0 = time.perf_counter()
        registry = Registry(state.settings.registry_dir, old.dataset)
        target = await asyncio.to_thread(registry.serving)
        try:
            new = await asyncio.to_thread(
                RecommendationPipeline.load, state.settings, old.dataset, target, state.link
            )
        except Exception as exc:
            state.metrics.reloads.labels("failed").inc()
            state.failed = (target or "", time.monotonic())
            state.refused = f"version {target} of {old.dataset} refused: {exc}"
            if isinstance(exc, StrataError):
                log.warning("reload of %s failed, still serving %s: %s", target, old.version, exc)
                raise
            # A loader's own exception (not a known damage): still refused, with its traceback.
            log.exception("reload of %s failed, still serving %s", target, old.version)
            raise StrataError(f"{target}: {type(exc).__name__}: {exc}") from exc
        state.pipeline = new  # the atomic swap; in-flight requests keep `old`
        state.failed, state.refused = ("", 0.0), ""
        state.ingestor.categories = new.catalog.categories()
        state.metrics.set_model(new)
        state.metrics.reloads.labels("ok").inc()
        previous = old.version
        del old  # the last reference this handler holds: its garbage is found just below
        # The new version's objects out of the collector's reach (see strata.serving.pauses).
        await asyncio.to_thread(pauses.settle, state.settings.gc)
    log.info("reloaded %s -> %s", previous, new.version)
    return {"previous": previous, "version": new.version,
            "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip


def serving_version(settings: Settings) -> str | None:
    """The registry's serving version of the served dataset (None before the first one)."""
    from strata.registry import Registry

    return Registry(settings.registry_dir, settings.serve.dataset).serving()


async def start_or_wait(
    settings: Settings, start: Callable[[], Awaitable[None]], report: Callable[[str], None]
) -> asyncio.Task[None] | None:
    """`serve.wait_for_model` start-up: serve the registry's version now if there is one and it
    loads (None), else `report` why (unready: /readyz 503 with it) and return the task that
    waits for a loadable promotion, instead of exiting into a crash loop."""
    version = await asyncio.to_thread(serving_version, settings)
    if version is None:
        report(f"no model version of {settings.serve.dataset!r} yet: "
               "waiting for the first promotion (run the initial pipeline)")  # fmt: skip
        return asyncio.create_task(when_a_model_exists(settings, start, report))
    try:
        await start()
        return None
    except StrataError as exc:
        report(_refusal(settings, version, exc))
        return asyncio.create_task(when_a_model_exists(settings, start, report, version))


def _refusal(settings: Settings, version: str, exc: Exception) -> str:
    log.warning("version %s of %s did not load (%s); waiting for another promotion (or %.0f s)",
                version, settings.serve.dataset, exc, RETRY_FAILED_S)  # fmt: skip
    return (f"version {version} of {settings.serve.dataset!r} could not be loaded: {exc}; "
            "waiting for a loadable promotion")  # fmt: skip


async def when_a_model_exists(
    settings: Settings,
    start: Callable[[], Awaitable[None]],
    report: Callable[[str], None] | None = None,
    failed: str | None = None,
) -> None:
    """Poll the registry until the dataset has a serving version, then `start` serving it; a
    version that fails to load (`failed`, and any later one) is tried again once the pointer
    moves or after `RETRY_FAILED_S` (the next promotion may fix it), and `report`ed."""
    since = time.monotonic()
    while True:
        while True:
            version = await asyncio.to_thread(serving_version, settings)
            waited = time.monotonic() - since
            if version is not None and (version != failed or waited >= RETRY_FAILED_S):
                break
            await asyncio.sleep(settings.serve.follow_poll_s)
        log.info("model version %s of %s is promoted: loading it", version,
                 settings.serve.dataset)  # fmt: skip
        try:
            await start()
            return
        except StrataError as exc:
            why = _refusal(settings, version, exc)
            if report is not None:
                report(why)
            failed, since = version, time.monotonic()


async def change_live(
    state: ServingState,
    change: tuple[str, object, dict[str, Any] | None, bytes | None] | None = None,
) -> dict[str, Any] | None:
    """Apply one live-catalogue change (op, item id as given, fields, image bytes) and swap in the
    pipeline with it, or (no change) rebuild the live catalogue from the log after another
    replica's change. Serialised with reloads; the record appended, if any."""
    from strata.serving.live import ItemEmbedder, apply_change, build_overlay

    async with state.reload_lock:
        pipe = state.pipeline
        embedder = pipe.embedder or ItemEmbedder(state.settings, pipe.model_version)
        record = None
        if change is None:
            overlay = await asyncio.to_thread(
                build_overlay, state.settings, pipe.model_version, embedder
            )
        else:
            overlay, record = await asyncio.to_thread(
                apply_change, state.settings, pipe.model_version, embedder, *change
            )
        new = await asyncio.to_thread(pipe.with_live, overlay)
        state.pipeline = new
        state.ingestor.categories = new.catalog.categories()
    return record


async def follow_pointer(state: ServingState) -> None:
    """Reload when the registry's serving pointer names another version than the one served;
    rebuild the live catalogue when its log moved (another replica's or the CLI's change)."""
    from strata.features.live_items import LiveCatalogue
    from strata.registry import Registry

    registry = Registry(state.settings.registry_dir, state.pipeline.dataset)
    target = await asyncio.to_thread(registry.serving)
    if state.reload_lock.locked():
        return
    if target is None or target == state.pipeline.version:
        state.refused = ""  # the pointer is back on what is served: nothing is refused now
        live = state.pipeline.live
        seen = -1 if live is None else live.revision
        if LiveCatalogue(state.settings, state.pipeline.dataset).revision != seen:
            await change_live(state)
        return
    if state.failed[0] == target and time.monotonic() - state.failed[1] < RETRY_FAILED_S:
        return  # a version that would not load: tried again after a while, not every poll
    try:
        await reload_version(state)
    except StrataError:  # counted, logged and kept in state.failed by reload_version
        return
