"""Turns drift decisions into incremental training runs: one at a time, every decision logged.

`RetrainTrigger.handle(decision)` logs the decision with its numbers; on `triggered` it runs the
retrain callable (inline, or on a background thread) unless one is already running, in which case
the trigger is logged as `busy` and dropped (the monitor's cooldown will raise it again if the
drift persists). Outcomes are logged too. The log is JSON lines, appended.
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
from typing import Any, Literal

from strata.monitoring.drift import DriftDecision

log = logging.getLogger(__name__)

Action = Literal["none", "started", "busy"]


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
    ) -> None:
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
        self._record({"event": "decision", "action": "started", **decision.to_dict()})
        if self._background:
            self._thread = threading.Thread(target=self._run, name="ctr-retrain", daemon=True)
            self._thread.start()
        else:
            self._run()
        return TriggerEvent("started", decision)

    def _run(self) -> None:
        t0 = time.perf_counter()
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
            self._lock.release()

    def wait(self, timeout: float | None = None) -> None:
        """Block until a background retrain (if any) finishes."""
        if self._thread is not None:
            self._thread.join(timeout)
