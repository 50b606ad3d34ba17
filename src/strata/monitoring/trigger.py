"""Turns drift decisions into incremental training runs: one at a time, every decision logged.

`RetrainTrigger.handle(decision)` logs the decision with its numbers; on `triggered` it runs the
retrain callable (inline, or on a background thread) unless one is already running, in which case
the trigger is logged as `busy` and dropped (the monitor's cooldown will raise it again if the
drift persists). Outcomes are logged too. The log is JSON lines, appended.

Several replicas watching one cluster-wide window would each trigger: with a `Lease` (the online
store's, in a cluster) a retrain starts only where the lease was acquired; the holder renews it
while it works and keeps it for `hold_s` after (the cluster's cooldown), so the cluster runs one
retrain per drift. If the holder dies the lease expires after `lease_s` and the next replica
whose window still triggers takes the retrain over.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from strata.errors import StoreUnavailableError
from strata.monitoring.drift import DriftDecision

log = logging.getLogger(__name__)

Action = Literal["none", "started", "busy"]


class Lease(Protocol):
    """At most one holder at a time; it expires unless renewed."""

    def acquire(self, holder: str, ttl_s: float) -> bool: ...
    def renew(self, holder: str, ttl_s: float) -> bool: ...
    def release(self, holder: str, hold_s: float = 0.0) -> None: ...


class MemoryLease:
    """`Lease` within one process (the embedded mode: one process is the whole cluster)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._holder: str | None = None
        self._until = 0.0

    def acquire(self, holder: str, ttl_s: float) -> bool:
        with self._lock:
            now = self._clock()
            if self._holder is not None and now < self._until:
                return False  # held, or kept after a run (the cooldown), by anyone
            self._holder, self._until = holder, now + ttl_s
            return True

    def renew(self, holder: str, ttl_s: float) -> bool:
        with self._lock:
            if self._holder != holder or self._clock() >= self._until:
                return False
            self._until = self._clock() + ttl_s
            return True

    def release(self, holder: str, hold_s: float = 0.0) -> None:
        with self._lock:
            if self._holder == holder:
                self._until = self._clock() + hold_s
                if hold_s <= 0:
                    self._holder = None


@dataclass(frozen=True)
class TriggerEvent:
    """What the trigger did with one decision."""

    action: Action
    decision: DriftDecision


class RetrainTrigger:
    """Runs `retrain()` when a decision says so, never two at once, logging everything."""

    def __init__(
        self,
        retrain: Callable[[], Mapping[str, Any]],
        log_path: Path | None = None,
        background: bool = False,
        keep: int = 10_000,
        lease: Lease | None = None,
        holder: str = "",
        lease_s: float = 30.0,
        hold_s: float = 0.0,
    ) -> None:
        self._lease, self._holder = lease, holder or f"pid-{threading.get_native_id()}"
        self._lease_s, self._hold_s = lease_s, hold_s
        self._retrain = retrain
        self._log_path = log_path
        self._background = background
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.records: deque[dict[str, Any]] = deque(maxlen=keep)
        self.runs = 0

    @property
    def running(self) -> bool:
        """Whether a retrain is in progress."""
        return self._lock.locked()

    def _record(self, record: dict[str, Any]) -> None:
        record = {"time": time.time(), **record}
        self.records.append(record)
        line = json.dumps(record, default=str)
        log.info("ctr trigger: %s", line)
        if self._log_path is not None:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            with self._log_path.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")

    def handle(self, decision: DriftDecision) -> TriggerEvent:
        """Log `decision`; start a retrain if it is `triggered` and none is running."""
        if decision.kind != "triggered":
            self._record({"event": "decision", "action": "none", **decision.to_dict()})
            return TriggerEvent("none", decision)
        if not self._lock.acquire(blocking=False):
            self._record({"event": "decision", "action": "busy", **decision.to_dict()})
            return TriggerEvent("busy", decision)
        if not self._take_lease():
            self._lock.release()
            self._record({"event": "decision", "action": "busy", "lease": "held elsewhere",
                          **decision.to_dict()})  # fmt: skip
            return TriggerEvent("busy", decision)
        self._record({"event": "decision", "action": "started", **decision.to_dict()})
        if self._background:
            self._thread = threading.Thread(target=self._run, name="ctr-retrain", daemon=True)
            self._thread.start()
        else:
            self._run()
        return TriggerEvent("started", decision)

    def _take_lease(self) -> bool:
        if self._lease is None:
            return True
        try:
            return self._lease.acquire(self._holder, self._lease_s)
        except StoreUnavailableError as exc:  # no lease, no retrain (another replica may run)
            log.warning("ctr trigger: lease not acquired: %s", exc)
            return False

    def _renew_until(self, done: threading.Event) -> None:
        while not done.wait(self._lease_s / 3):
            try:
                if self._lease is not None and not self._lease.renew(self._holder, self._lease_s):
                    log.warning("ctr trigger: lease lost during the retrain")
            except StoreUnavailableError as exc:  # the next renewal may get through in time
                log.warning("ctr trigger: lease renewal failed: %s", exc)

    def _run(self) -> None:
        t0 = time.perf_counter()
        done = threading.Event()
        if self._lease is not None:
            threading.Thread(target=self._renew_until, args=(done,), daemon=True).start()
        try:
            outcome = dict(self._retrain())
            self.runs += 1
            self._record(
                {"event": "retrain", "ok": True, "seconds": time.perf_counter() - t0, **outcome}
            )
        except Exception as exc:  # a failed retrain must not take serving down; it is logged
            log.exception("ctr retrain failed")
            self._record(
                {
                    "event": "retrain",
                    "ok": False,
                    "seconds": time.perf_counter() - t0,
                    "error": repr(exc),
                }
            )
        finally:
            done.set()
            if self._lease is not None:
                try:
                    self._lease.release(self._holder, self._hold_s)
                except StoreUnavailableError as exc:  # it expires by itself
                    log.warning("ctr trigger: lease not released: %s", exc)
            self._lock.release()

    def wait(self, timeout: float | None = None) -> None:
        """Block until a background retrain (if any) finishes."""
        if self._thread is not None:
            self._thread.join(timeout)
