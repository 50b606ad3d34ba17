"""Event ingestion for near-real-time personalisation: validate, log durably, apply, acknowledge.

An event is `{event_id, user_id, item_id, type, ts, context}` (plus an optional `value`, e.g. the
rating). Ingest is idempotent by `event_id`. Its effects, in this order:

1. durable append to the event log (`EventLog`: append-only JSONL under `settings.events_dir`,
   `fsync` before returning), which later lands in the offline store (`land_events`);
2. live state in the online store (`ActivityStore`): counters per type, top category, capped
   recent-items list, applied once per event_id (the idempotency marks live as long as the window);
3. the user's Bloom filter of recently interacted items (adding twice is harmless).

The log is written before the live state, so a crash after the fsync loses nothing: `recover()`
replays the log (idempotently) into a fresh embedded store. In Valkey mode events first go to a
Valkey Stream; a consumer group reads them, performs the same three steps and `XACK`s only after
the durable write, so an event that was added but not processed stays pending and is re-read by
the next consumer with the same name, or, once it has been pending for `events.claim_idle_s` (its
consumer died for good: a replaced pod), by whichever replica consumes next (XAUTOCLAIM). An
event counts as acknowledged when `ingest` returns.
One ingestor runs one ingest at a time (a lock): two concurrent calls sharing a consumer name
could otherwise each return while the other still held its events un-logged.

Store restarts. A Valkey restarted without persistence has lost the stream and its consumer
group; the stream (`ValkeyEventStream`) recreates both on the NOGROUP answer and carries on, from
the stream's start, so nothing added meanwhile is skipped. Whatever comes twice (re-delivery after
a lost group, a retried request, a crash between log and XACK) is logged twice but applied once
(event_id marks) and landed once (`land_events` and the offline store dedup by event_id). Live
state of events from before the restart is not rebuilt in Valkey (it is in the log; `recover`).

Store outage on the serving path (`ingest_or_defer`, used by POST /events). Every store call is
bounded by the serving timeout (`online.timeout_ms`), and the caller's breaker skips a store known
to be down, so the attempt fails within a few short timeouts at most. The decision: an event is
still acknowledged when the store is down or hung, because it can still be made durable locally:
accepted events are appended (fsync) to an outbox log (`<log_name>.outbox.jsonl`) and the answer
says `deferred`; `drain_outbox` (a background task of the app) pushes them through the normal
ingest once the store answers again and then removes them from the outbox (atomic rewrite), so
their effects (live state, Bloom) appear after recovery, possibly after newer events. A crash
between the two re-drains them, which the idempotent ingest absorbs. Only when the outbox cannot
be written either (disk full, read-only) is the batch refused: `EventsNotDurableError`, which the
app answers with 503 and Retry-After. Outbox events reach the main log, and so the offline store,
when drained.

Malformed events are rejected one by one with the offending field named and counted per field;
they never reach the log or the stores.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator
from pydantic import ValidationError as PydanticValidationError

from strata.datasets.base import EVENT_TYPE_PATTERN, EVENT_TYPES
from strata.errors import StoreUnavailableError, ValidationError
from strata.features.event_log import EventLog, OwnerLock
from strata.features.online import (
    ActivityEvents,
    ActivityStore,
    OnlineStore,
    open_activity_store,
    open_online_store,
)

if TYPE_CHECKING:
    from strata.config import Settings
    from strata.features.bloom import BloomFilter

log = logging.getLogger(__name__)
T = TypeVar("T")


class EventsNotDurableError(StoreUnavailableError):
    """Events could be written neither through the store nor to the local outbox: not accepted."""


def _direct(fn: Callable[..., T], *args: Any) -> T:
    """The trivial `call` wrapper: run `fn` now (serving passes its store breaker instead)."""
    return fn(*args)


INT64_MAX = 2**63 - 1
ContextValue = (
    Annotated[str, Field(max_length=256)] | int | Annotated[float, Field(allow_inf_nan=False)]
    | StrictBool
)  # fmt: skip


class Event(BaseModel):
    """One user-item interaction; unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: str = Field(min_length=1, max_length=128)
    user_id: int = Field(ge=0, le=INT64_MAX)  # ids and times are stored as int64
    item_id: int = Field(ge=0, le=INT64_MAX)
    # one of the dataset's event types (the serving app checks against the version's)
    type: str = Field(pattern=EVENT_TYPE_PATTERN)
    ts: int = Field(ge=0, le=INT64_MAX)
    value: float = Field(default=1.0, allow_inf_nan=False)  # NaN would poison the features
    context: dict[str, ContextValue] = Field(default_factory=dict, max_length=32)

    @field_validator("user_id", "item_id", "ts", "value", mode="before")
    @classmethod
    def _not_bool(cls, v: object) -> object:
        # JSON true is neither an id, a time nor a value (pydantic would read it as 1)
        if isinstance(v, bool):
            raise ValueError("expected a number, got a boolean")
        return v


def parse_event(obj: Any) -> Event:
    """Validate one event; `ValidationError` names the first bad field."""
    if isinstance(obj, Event):
        return obj
    if not isinstance(obj, Mapping):
        raise ValidationError("event", f"expected an object, got {type(obj).__name__}")
    try:
        return Event.model_validate(dict(obj))
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"]) or "event"
        raise ValidationError(name, first["msg"]) from None


@dataclass
class IngestReport:
    """Outcome of one ingest call: counts plus the first few rejection messages."""

    accepted: int = 0
    new: int = 0
    duplicates: int = 0
    deferred: int = 0  # durable in the outbox, applied once the store is back
    rejected: int = 0
    rejected_by_field: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def reject(self, where: str, exc: ValidationError) -> None:
        """Count a rejected event under its field."""
        self.rejected += 1
        self.rejected_by_field[exc.field] += 1
        if len(self.errors) < 20:
            self.errors.append(f"{where}: {exc}")

    def merge(self, other: IngestReport) -> None:
        """Add another report's counts into this one."""
        self.accepted += other.accepted
        self.new += other.new
        self.duplicates += other.duplicates
        self.deferred += other.deferred
        self.rejected += other.rejected
        self.rejected_by_field.update(other.rejected_by_field)
        self.errors.extend(other.errors[: max(0, 20 - len(self.errors))])

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "accepted": self.accepted,
            "new": self.new,
            "duplicates": self.duplicates,
            "deferred": self.deferred,
            "rejected": self.rejected,
            "rejected_by_field": dict(self.rejected_by_field),
            "errors": self.errors,
        }


def _columns(events: list[Event], categories: Mapping[int, int] | None) -> ActivityEvents:
    cats = None
    if categories is not None:
        cats = np.fromiter((categories.get(e.item_id, -1) for e in events), np.int64, len(events))
    return ActivityEvents(
        event_id=np.array([e.event_id for e in events], dtype=object),
        user_id=np.fromiter((e.user_id for e in events), np.int64, len(events)),
        item_id=np.fromiter((e.item_id for e in events), np.int64, len(events)),
        type=np.array([e.type for e in events], dtype=object),
        ts=np.fromiter((e.ts for e in events), np.int64, len(events)),
        category=cats,
    )


class EventIngestor:
    """Validates, durably logs and applies events to the online store and Bloom filters."""

    def __init__(
        self,
        settings: Settings,
        store: OnlineStore | None = None,
        bloom: BloomFilter | None = None,
        item_categories: Mapping[int, int] | None = None,
        log_name: str = "events",
        consumer: str | None = None,
        event_types: tuple[str, ...] = EVENT_TYPES,
    ) -> None:
        from strata.features.bloom import open_bloom

        self.settings = settings
        self.config = settings.events
        self.store = store if store is not None else open_online_store(settings.online)
        self.activity: ActivityStore = open_activity_store(self.store)
        self.bloom = bloom if bloom is not None else open_bloom(settings.bloom, self.store)
        self.categories = item_categories
        self.event_types = frozenset(event_types)  # what the served dataset's log may hold
        # Replicas sharing events_dir each write their own log and outbox (a file appended by
        # several processes, on a network volume above all, can interleave or lose records).
        replica = self.config.replica
        name = log_name if replica is None else f"{log_name}.{replica}"
        self.log = EventLog(settings.events_dir / f"{name}.jsonl")
        self.outbox = EventLog(settings.events_dir / f"{name}.outbox.jsonl")
        self.consumer = consumer or f"{replica or socket.gethostname()}-{log_name}"
        self._log_name = log_name
        self._owner: OwnerLock | None = None
        if replica is not None:
            self._owner = _own(settings.events_dir / f"{name}.lock")
        # Valkey mode hands events over through a stream (no network until first use, so an
        # ingestor can be built while the store is down); the embedded mode logs directly.
        opener = getattr(self.store, "event_stream", None)
        self._stream: Any = opener(self.config.stream, self.config.group) if opener else None
        self._claimed_at = -float("inf")  # monotonic time of the last look for orphans
        self._lock = threading.Lock()  # one ingest/consume/drain at a time
        self._outbox_lock = threading.Lock()  # outbox appends vs. its prefix rewrite

    # --- core -----------------------------------------------------------------------------

    def _validate(self, records: Iterable[Any], report: IngestReport) -> list[Event]:
        events: list[Event] = []
        seen: set[str] = set()
        for i, rec in enumerate(records):
            try:
                ev = parse_event(rec)
                if ev.type not in self.event_types:
                    raise ValidationError("type", f"{ev.type!r} is not one of "
                                          f"{sorted(self.event_types)}")  # fmt: skip
            except ValidationError as exc:
                report.reject(f"event {i}", exc)
                continue
            if ev.event_id in seen:
                report.duplicates += 1
                continue
            seen.add(ev.event_id)
            events.append(ev)
        return events

    def _process(self, events: list[Event], now: float) -> int:
        """Durable log, then live state, then Bloom; returns how many events were new."""
        if not events:
            return 0
        self.log.append([{**e.model_dump(), "_at": now} for e in events])
        return self._apply(events, now)

    def _apply(self, events: list[Event], now: float) -> int:
        cols = _columns(events, self.categories)
        new = self.activity.apply_events(cols, self.config.recent_cap, self.config.window_s)
        self.bloom.add_many(cols.user_id, cols.item_id, now=now)
        return int(new.sum())

    def ingest(self, records: Iterable[Any], now: float | None = None) -> IngestReport:
        """Validate and ingest a batch; when this returns, accepted events are durable.
        StoreUnavailableError when the store cannot take them (nothing is acknowledged)."""
        report = IngestReport()
        events = self._validate(records, report)
        report.accepted = len(events)
        report.new = self._ingest_valid(events, time.time() if now is None else now)
        report.duplicates += report.accepted - report.new
        return report

    def ingest_or_defer(
        self,
        records: Iterable[Any],
        call: Callable[..., int] = _direct,
        now: float | None = None,
    ) -> IngestReport:
        """Serving ingest: like `ingest` through `call` (the store breaker), but when the store
        is unavailable the accepted events go to the durable outbox (`deferred`) instead of
        failing; EventsNotDurableError only when the outbox cannot be written either."""
        report = IngestReport()
        events = self._validate(records, report)
        report.accepted = len(events)
        t = time.time() if now is None else now
        try:
            report.new = call(self._ingest_valid, events, t)
        except StoreUnavailableError as exc:
            self._defer(events, t, f"online store unavailable ({exc})")
            report.deferred = len(events)
            return report
        except OSError as exc:  # the event log itself could not be written
            self._defer(events, t, f"event log not writable ({exc})")
            report.deferred = len(events)
            return report
        report.duplicates += report.accepted - report.new
        return report

    def _defer(self, events: list[Event], now: float, why: str) -> None:
        if not events:
            return
        try:
            with self._outbox_lock:
                first = self.outbox.size() == 0
                self.outbox.append([{**e.model_dump(), "_at": now} for e in events])
        except OSError as exc:
            raise EventsNotDurableError(f"{why}; outbox {self.outbox.path}: {exc}") from exc
        # One warning per outage (the first deferral), not one per request while it lasts.
        log.log(logging.WARNING if first else logging.DEBUG, "%s: %d event(s) queued in %s",
                why, len(events), self.outbox.path.name)  # fmt: skip

    def has_deferred(self) -> bool:
        """True while the outbox holds events that were acknowledged but not yet ingested."""
        return self.outbox.size() > 0

    def drain_outbox(self, call: Callable[..., int] = _direct) -> int:
        """Ingest the outbox's events through `call` and remove them from it; returns how many.
        StoreUnavailableError (store still down) leaves the outbox as it was."""
        with self._outbox_lock:
            records, end = self.outbox.read()
        if not records:
            return 0
        self._reingest(records, call)
        with self._outbox_lock:
            # Events appended while draining sit after `end` and stay for the next drain.
            self.outbox.drop_prefix(end)
        log.info("drained %d deferred event(s) from %s", len(records), self.outbox.path.name)
        return len(records)

    def _reingest(self, records: list[dict[str, Any]], call: Callable[..., int]) -> None:
        size = self.config.batch_size
        for start in range(0, len(records), size):
            chunk = records[start : start + size]
            events = [parse_event({k: v for k, v in r.items() if k != "_at"}) for r in chunk]
            call(self._ingest_valid, events, max(float(r.get("_at", 0.0)) for r in chunk))

    def adopt_orphans(self, call: Callable[..., int] = _direct) -> int:
        """Replicas: drain the outbox of every replica that died with events in it (its owner
        lock is free) through this replica's ingest, then empty it; returns how many. A replica
        replaced by a pod of another name would otherwise leave acknowledged events there."""
        if self._owner is None:
            return 0
        folder, n = self.outbox.path.parent, 0
        for path in sorted(folder.glob(f"{self._log_name}.*.outbox.jsonl")):
            if path == self.outbox.path or path.stat().st_size == 0:
                continue
            lock = OwnerLock(path.with_name(path.name.replace(".outbox.jsonl", ".lock")))
            if not lock.acquire():
                continue  # its replica is alive: it drains its own outbox
            try:
                orphan = EventLog(path)
                records, end = orphan.read()
                self._reingest(records, call)
                orphan.drop_prefix(end)
                n += len(records)
                log.warning("took over %d deferred event(s) of a gone replica from %s",
                            len(records), path.name)  # fmt: skip
            finally:
                lock.release()
        return n

    def _ingest_valid(self, events: list[Event], now: float) -> int:
        """Validated, de-duplicated events through the stream (Valkey) or straight to the log;
        returns how many were new."""
        with self._lock:
            if self._stream is None:
                return self._process(events, now)
            if events:
                self._stream.add([e.model_dump_json() for e in events])
            return self._consume(now, None)

    def consume(self, now: float | None = None, block_ms: int | None = None) -> int:
        """Valkey mode: process own pending entries, then new ones; XACK after the durable log."""
        if self._stream is None:
            return 0
        with self._lock:
            return self._consume(time.time() if now is None else now, block_ms)

    def _consume(self, now: float, block_ms: int | None) -> int:
        total = 0
        # Entries another replica took and never acknowledged (it died) become ours first;
        # looked for at most twice per idle bound (one more round trip, not one per request).
        idle = self.config.claim_idle_s
        if time.monotonic() - self._claimed_at >= idle / 2:
            self._claimed_at = time.monotonic()
            self._stream.claim(self.consumer, int(idle * 1000), self.config.batch_size)
        for start in ("0", ">"):
            while True:
                batch = self._stream.read(self.consumer, start, self.config.batch_size, block_ms)
                if not batch:
                    break
                ids = [entry_id for entry_id, _ in batch]
                events = []
                for entry_id, payload in batch:
                    try:
                        events.append(Event.model_validate_json(payload))
                    except PydanticValidationError as exc:
                        # Not written by a validating ingest: it can never be processed, and
                        # left pending it would block every later consume. Acked below.
                        log.error("stream entry %s is not a valid event, dropped: %s",
                                  entry_id.decode(), exc.errors()[0]["msg"])  # fmt: skip
                total += self._process(events, now)
                self._stream.ack(ids)
        return total

    def recover(self) -> int:
        """Replay the durable log into the live state (idempotent); returns events replayed."""
        records, _ = self.log.read()
        n = 0
        with self._lock:
            for start in range(0, len(records), self.config.batch_size):
                chunk = records[start : start + self.config.batch_size]
                events = [parse_event({k: v for k, v in r.items() if k != "_at"}) for r in chunk]
                ats = [float(r.get("_at", time.time())) for r in chunk]
                self._apply(events, max(ats))
                n += len(events)
        return n


def _own(path: Path) -> OwnerLock | None:
    """This replica's owner lock (retried briefly: a restarted pod of the same name may start
    before its previous process is gone); None, with a warning, if another process keeps it."""
    lock = OwnerLock(path)
    for _ in range(50):
        if lock.acquire():
            return lock
        time.sleep(0.1)
    log.warning("%s is held by another live process: two replicas share one name "
                "(events.replica); their logs may interleave", path)  # fmt: skip
    return None


__all__ = [
    "Event",
    "EventIngestor",
    "EventLog",
    "EventsNotDurableError",
    "IngestReport",
    "StoreUnavailableError",
    "parse_event",
]
