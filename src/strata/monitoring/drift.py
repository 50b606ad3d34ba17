"""Drift monitoring: rolling AUC over recent labelled predictions, and feature-distribution PSI.

`RollingAucMonitor.check()` turns the window into a typed `DriftDecision`: `insufficient` (fewer
than W/2 labels, or one class only), `healthy`, `triggered` (AUC below the absolute threshold, or
dropped by more than `relative_drop` from the serving model's validation AUC) or `cooldown` (would
trigger, but the last trigger is too recent). Feature drift is the population stability index
PSI = sum((a - e) * ln(a / e)) over two histograms of the same bins (`psi`); PSI > 0.2 is the
usual "significant shift" rule of thumb. The CTR system's per-column reference (quantile bins,
top categories) is `strata.ctr.drift.FeatureDriftReference`, built on `psi`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from strata.config import DriftConfig
from strata.errors import ValidationError

DecisionKind = Literal["insufficient", "healthy", "triggered", "cooldown"]


@dataclass(frozen=True)
class DriftDecision:
    """One evaluation of the rolling window, with every number that led to it."""

    kind: DecisionKind
    auc: float | None
    n: int
    window: int
    reference_auc: float | None
    floor: float | None  # the AUC below which the monitor triggers (max of both rules)
    reasons: tuple[str, ...] = ()
    labels_seen: int = 0
    at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict of the decision."""
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        return d


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from strata.training.metrics import auc

    return float(auc(y, p))


class RollingAucMonitor:
    """Rolling AUC over the last `window` labelled predictions with threshold, drop and cooldown."""

    def __init__(
        self,
        cfg: DriftConfig,
        reference_auc: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.reference_auc = reference_auc
        self._clock = clock
        self._y = np.zeros(cfg.window, dtype=np.float32)
        self._p = np.zeros(cfg.window, dtype=np.float32)
        self._pos = 0
        self._n = 0
        self.labels_seen = 0
        self._last_trigger_at: float | None = None
        self._last_trigger_labels = 0

    def add(self, labels: np.ndarray, probs: np.ndarray) -> None:
        """Append labelled predictions (vectorised; the oldest fall out of the window)."""
        y = np.asarray(labels, dtype=np.float32).ravel()
        p = np.asarray(probs, dtype=np.float32).ravel()
        if y.shape != p.shape:
            raise ValidationError("labels", f"{y.size} labels for {p.size} predictions")
        w = self.cfg.window
        self.labels_seen += int(y.size)
        if y.size >= w:
            y, p = y[-w:], p[-w:]
        idx = (self._pos + np.arange(y.size)) % w
        self._y[idx] = y
        self._p[idx] = p
        self._pos = int((self._pos + y.size) % w)
        self._n = min(self._n + y.size, w)

    def load(self, labels: np.ndarray, probs: np.ndarray, labels_seen: int) -> None:
        """Replace the window with these pairs, oldest first, and the count of labels seen (a
        window kept elsewhere: the cluster's, in the online store)."""
        w = self.cfg.window
        y = np.asarray(labels, dtype=np.float32).ravel()[-w:]
        p = np.asarray(probs, dtype=np.float32).ravel()[-w:]
        self._y[: y.size], self._p[: p.size] = y, p
        self._n, self._pos = int(y.size), int(y.size % w)
        self.labels_seen = int(labels_seen)

    @property
    def n(self) -> int:
        """Labelled predictions currently in the window."""
        return self._n

    def rolling_auc(self) -> float | None:
        """AUC over the window, or None below W/2 labels or with a single class."""
        if self._n * 2 < self.cfg.window:
            return None
        y = self._y[: self._n] if self._n < self.cfg.window else self._y
        p = self._p[: self._n] if self._n < self.cfg.window else self._p
        if y.min() == y.max():
            return None
        return _auc(y, p)

    def floor(self) -> float | None:
        """The effective trigger level: the higher of the absolute and the relative rule."""
        levels = []
        if self.cfg.auc_threshold is not None:
            levels.append(self.cfg.auc_threshold)
        if self.cfg.relative_drop is not None and self.reference_auc is not None:
            levels.append(self.reference_auc * (1.0 - self.cfg.relative_drop))
        return max(levels) if levels else None

    def _in_cooldown(self, now: float) -> bool:
        if self._last_trigger_at is None:
            return False
        too_soon = now - self._last_trigger_at < self.cfg.cooldown_s
        too_few = self.labels_seen - self._last_trigger_labels < self.cfg.cooldown_labels
        return too_soon or too_few

    def check(self) -> DriftDecision:
        """Evaluate the window; a `triggered` decision starts the cooldown."""
        now = self._clock()
        auc = self.rolling_auc()
        common: dict[str, Any] = {
            "auc": auc,
            "n": self._n,
            "window": self.cfg.window,
            "reference_auc": self.reference_auc,
            "floor": self.floor(),
            "labels_seen": self.labels_seen,
            "at": now,
        }
        if auc is None:
            return DriftDecision(kind="insufficient", **common)
        reasons = []
        if self.cfg.auc_threshold is not None and auc < self.cfg.auc_threshold:
            reasons.append("absolute")
        if (
            self.cfg.relative_drop is not None
            and self.reference_auc is not None
            and auc < self.reference_auc * (1.0 - self.cfg.relative_drop)
        ):
            reasons.append("relative")
        if not reasons:
            return DriftDecision(kind="healthy", **common)
        if self._in_cooldown(now):
            return DriftDecision(kind="cooldown", reasons=tuple(reasons), **common)
        self._last_trigger_at = now
        self._last_trigger_labels = self.labels_seen
        return DriftDecision(kind="triggered", reasons=tuple(reasons), **common)

    def reset(self, reference_auc: float | None) -> None:
        """Start a fresh window for a newly served model (the cooldown clock is kept)."""
        self.reference_auc = reference_auc
        self._pos = 0
        self._n = 0


# --- feature drift -------------------------------------------------------------------------


def psi(expected: np.ndarray, actual: np.ndarray, eps: float = 1e-4) -> float:
    """Population stability index of two histograms (counts or proportions, same bins)."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.sum() <= 0 or a.sum() <= 0:
        raise ValidationError("histogram", "PSI needs two non-empty histograms of the same bins")
    e = np.clip(e / e.sum(), eps, None)
    a = np.clip(a / a.sum(), eps, None)
    return float(np.sum((a - e) * np.log(a / e)))
