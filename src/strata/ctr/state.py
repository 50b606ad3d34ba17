"""The CTR service's live state, behind one small interface with two implementations.

What a CTR replica must remember between requests: the predictions awaiting their labels (so
feedback can be joined to the features and probability that were served), the rolling-AUC window
of labelled predictions and the recent labelled rows an incremental retrain learns from. In the
embedded single-process mode that is `MemoryCtrState` (rings in the process); in cluster mode it
is `ValkeyCtrState` (`state_valkey.py`) in the online store, so feedback for a prediction served
by one replica is joined on any other and every replica sees one window and one count of labels
(it is also the cluster's retrain `Lease`, `strata.monitoring.trigger`). Both keep the same
semantics (one contract test runs against both):

- `record` gives each prediction a new id (unique within the state) and keeps it until it is
  labelled or falls out (the ring's capacity, the store's TTL);
- `label` joins each label to its kept prediction once (a second label for the same id is a
  duplicate, an id never served or forgotten is unknown), appends the (label, served
  probability) pairs to the window (the last `window` stay) and the labelled rows to the recent
  rows (the last `recent_rows` stay), and returns the window, all in one step;
- `reset` starts a fresh window for a new version (the count of labels goes on); it forgets the
  recent rows and pending predictions too when the preprocessing changed (their features were
  encoded by the old one).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from strata.ctr.preprocess import CtrBatch


@dataclass(frozen=True)
class Joined:
    """Feedback ids joined to their predictions: which were found (their first label) and which
    were labelled before; the rest are unknown."""

    found: np.ndarray  # (B,) bool
    duplicate: np.ndarray  # (B,) bool


@dataclass(frozen=True)
class Window:
    """The rolling window of labelled predictions, oldest first, and every label observed (it
    keeps counting across resets: the drift monitor's cooldown counts labels with it)."""

    labels: np.ndarray  # (n,) float32
    probs: np.ndarray  # (n,) float32
    seen: int
    recent: int = 0  # recent labelled rows kept for retraining


class CtrState(Protocol):
    """Predictions awaiting labels, the rolling window and the recent labelled rows."""

    def record(self, probs: np.ndarray, batch: CtrBatch) -> np.ndarray: ...
    def label(self, ids: np.ndarray, labels: np.ndarray) -> tuple[Joined, Window]: ...
    def window(self) -> Window: ...
    def recent(self) -> CtrBatch: ...
    def reset(self, forget_recent: bool) -> None: ...


class _Ring:
    """The last `cap` rows of a (cap, width) array; `ordered()` gives them oldest first."""

    def __init__(self, cap: int, width: int, dtype: type) -> None:
        self.data: np.ndarray = np.zeros((cap, width), dtype=dtype)
        self.pos = 0
        self.n = 0

    def push(self, rows: np.ndarray) -> None:
        cap, width = self.data.shape
        rows = np.asarray(rows).reshape(len(rows), width)[-cap:]
        if not len(rows):
            return
        idx = (self.pos + np.arange(len(rows))) % cap
        self.data[idx] = rows
        self.pos = int((self.pos + len(rows)) % cap)
        self.n = min(self.n + len(rows), cap)

    def ordered(self) -> np.ndarray:
        cap = len(self.data)
        order = np.arange(self.n) if self.n < cap else (self.pos + np.arange(cap)) % cap
        return self.data[order].copy()

    def clear(self) -> None:
        self.pos = self.n = 0


class MemoryCtrState:
    """`CtrState` in the process: a ring of `capacity` predictions, the window and the recent
    rows as rings too. Ids start at `first_id` (a cluster replica's fallback, while the store is
    away, uses ids that cannot collide with the store's)."""

    def __init__(
        self,
        n_dense: int,
        n_cat: int,
        capacity: int,
        window: int,
        recent_rows: int,
        first_id: int = 0,
    ) -> None:
        self._lock = threading.Lock()
        self.capacity = capacity
        self.first_id = first_id
        self._ids = np.full(capacity, -1, dtype=np.int64)
        self._dense = np.zeros((capacity, n_dense), dtype=np.float32)
        self._cats = np.zeros((capacity, n_cat), dtype=np.int64)
        self._probs = np.zeros(capacity, dtype=np.float32)
        self._labelled = np.zeros(capacity, dtype=bool)
        self._next = first_id
        self._win = _Ring(window, 2, np.float32)
        self._seen = 0
        self._r_dense = _Ring(recent_rows, n_dense, np.float32)
        self._r_cats = _Ring(recent_rows, n_cat, np.int64)
        self._r_y = _Ring(recent_rows, 1, np.float32)

    def record(self, probs: np.ndarray, batch: CtrBatch) -> np.ndarray:
        n, cap = len(batch), self.capacity
        with self._lock:
            ids = np.arange(self._next, self._next + n, dtype=np.int64)
            self._next += n
            keep = slice(max(0, n - cap), n)  # a batch bigger than the ring keeps its tail
            slots = ids[keep] % cap
            self._ids[slots] = ids[keep]
            self._dense[slots] = batch.dense[keep]
            self._cats[slots] = batch.cats[keep]
            self._probs[slots] = probs[keep]
            self._labelled[slots] = False
        return ids

    def label(self, ids: np.ndarray, labels: np.ndarray) -> tuple[Joined, Window]:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        y = np.asarray(labels, dtype=np.float32).reshape(-1)
        with self._lock:
            slots = ids % self.capacity
            known = (ids >= 0) & (self._ids[slots] == ids)
            dup = known & self._labelled[slots]
            found = known & ~dup
            _, first = np.unique(ids, return_index=True)  # the same id twice: the first wins
            once = np.zeros(ids.size, dtype=bool)
            once[first] = True
            dup |= found & ~once
            found &= once
            s = slots[found]
            self._labelled[s] = True
            self._win.push(np.column_stack([y[found], self._probs[s]]))
            self._seen += int(found.sum())
            self._r_dense.push(self._dense[s])
            self._r_cats.push(self._cats[s])
            self._r_y.push(y[found].reshape(-1, 1))
            return Joined(found, dup), self._window()

    def window(self) -> Window:
        with self._lock:
            return self._window()

    def _window(self) -> Window:
        pairs = self._win.ordered()
        return Window(pairs[:, 0].copy(), pairs[:, 1].copy(), self._seen, self._r_y.n)

    def recent(self) -> CtrBatch:
        with self._lock:
            y = self._r_y.ordered()[:, 0].copy()
            return CtrBatch(self._r_dense.ordered(), self._r_cats.ordered(), y)

    def reset(self, forget_recent: bool) -> None:
        with self._lock:
            self._win.clear()
            if forget_recent:
                self._ids[:] = -1
                for ring in (self._r_dense, self._r_cats, self._r_y):
                    ring.clear()
