"""In-process online store (the embedded default): columnar NumPy tables per entity and version.

Each (entity, version) is an immutable snapshot: sorted int64 ids plus one array per feature.
A write builds a new snapshot and swaps the reference under a lock, so concurrent readers always
see a whole snapshot; reads are a vectorised `searchsorted`, never a per-row loop.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from strata.datasets.base import EVENT_TYPES
from strata.errors import ValidationError
from strata.features.online import (
    ActivityEvents,
    FeatureRows,
    FeatureSpec,
    as_ids,
    check_entity,
    check_features,
    check_version,
    empty_rows,
    infer_specs,
)

if TYPE_CHECKING:
    from strata.config import MemoryOnlineConfig

DEFAULT_VERSION = "default"


@dataclass(frozen=True)
class _Table:
    ids: np.ndarray  # (N,) int64, sorted, unique
    specs: dict[str, FeatureSpec]
    columns: dict[str, np.ndarray]

    def positions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row index of each id (clipped) and whether it exists."""
        if len(self.ids) == 0:
            return np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=bool)
        pos = np.searchsorted(self.ids, ids).clip(0, len(self.ids) - 1)
        return pos, self.ids[pos] == ids


_EMPTY = _Table(np.zeros(0, dtype=np.int64), {}, {})


def _last_wins(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique ids and, for each, the index of its last occurrence (later rows overwrite)."""
    rev_ids, rev_idx = np.unique(ids[::-1], return_index=True)
    return rev_ids, len(ids) - 1 - rev_idx


class MemoryOnlineStore:
    """The embedded `OnlineStore`: thread-safe, copy-on-write NumPy snapshots."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tables: dict[tuple[str, str], _Table] = {}
        self._active: dict[str, str] = {}
        self._order: dict[str, list[str]] = {}
        self._activity: MemoryActivityStore | None = None

    @classmethod
    def from_config(cls, config: MemoryOnlineConfig) -> MemoryOnlineStore:
        """Build from `MemoryOnlineConfig` (nothing to configure yet)."""
        return cls()

    def _resolve(self, entity: str, version: str | None) -> str:
        check_entity(entity)
        if version is not None:
            return check_version(version)
        return self._active.get(entity, DEFAULT_VERSION)

    def write(
        self,
        entity: str,
        ids: Any,
        columns: Mapping[str, Any],
        version: str | None = None,
    ) -> int:
        """Upsert rows into `version` (default: the active one, or `default` made active)."""
        ids = as_ids(ids)
        parsed = infer_specs(ids, columns)
        uniq, last = _last_wins(ids)
        with self._lock:
            auto_activate = version is None and entity not in self._active
            ver = self._resolve(entity, version)
            old = self._tables.get((entity, ver), _EMPTY)
            specs = dict(old.specs)
            for name, (spec, _) in parsed.items():
                if name in specs and specs[name] != spec:
                    raise ValidationError(name, f"stored as {specs[name]}, got {spec}")
                specs[name] = spec
            all_ids = np.union1d(old.ids, uniq)
            old_pos = np.searchsorted(all_ids, old.ids)
            new_pos = np.searchsorted(all_ids, uniq)
            cols = empty_rows(all_ids, specs, list(specs))
            for name, col in cols.items():
                if name in old.columns:
                    col[old_pos] = old.columns[name]
                if name in parsed:
                    col[new_pos] = parsed[name][1][last]
            self._tables[(entity, ver)] = _Table(all_ids, specs, cols)
            if ver not in self._order.setdefault(entity, []):
                self._order[entity].append(ver)
            if auto_activate:
                self._active[entity] = ver
        return len(uniq)

    def read(self, entity: str, ids: Any, features: Sequence[str]) -> FeatureRows:
        """Vectorised lookup of `features` for `ids` in the active version."""
        ids = as_ids(ids)
        check_entity(entity)
        ver = self._active.get(entity)
        table = self._tables.get((entity, ver), _EMPTY) if ver else _EMPTY
        check_features(entity, ver, table.specs, features)
        pos, found = table.positions(ids)
        values = empty_rows(ids, table.specs, features)
        for name in features:
            values[name][found] = table.columns[name][pos[found]]
        return FeatureRows(ids=ids, found=found, values=values, version=ver)

    def delete(self, entity: str, ids: Any) -> int:
        """Remove `ids` from the active version."""
        ids = as_ids(ids)
        with self._lock:
            ver = self._active.get(check_entity(entity))
            table = self._tables.get((entity, ver)) if ver else None
            if table is None:
                return 0
            keep = ~np.isin(table.ids, ids)
            cols = {k: v[keep] for k, v in table.columns.items()}
            self._tables[(entity, ver)] = _Table(table.ids[keep], table.specs, cols)  # type: ignore[index]
            return int((~keep).sum())

    def activate(self, entity: str, version: str, keep: int = 2) -> None:
        """Switch readers to `version` (one reference swap) and drop older versions."""
        check_entity(entity)
        check_version(version)
        with self._lock:
            order = self._order.setdefault(entity, [])
            if version not in order:
                self._tables[(entity, version)] = _EMPTY
                order.append(version)
            self._active[entity] = version
            order.remove(version)
            order.append(version)
            while len(order) > max(keep, 1):
                self._tables.pop((entity, order.pop(0)), None)

    def active_version(self, entity: str) -> str | None:
        """The version readers see."""
        return self._active.get(check_entity(entity))

    def versions(self, entity: str) -> list[str]:
        """Stored versions of `entity`, oldest first."""
        return list(self._order.get(check_entity(entity), []))

    def health(self) -> None:
        """Always healthy: it lives in this process."""

    def activity_store(self) -> MemoryActivityStore:
        """The live per-user activity state kept beside these features."""
        if self._activity is None:
            self._activity = MemoryActivityStore()
        return self._activity

    def close(self) -> None:
        """Nothing to release."""


@dataclass
class _UserActivity:
    seen: set[str] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)
    categories: Counter[int] = field(default_factory=Counter)
    recent: deque[int] = field(default_factory=deque)
    last_ts: int = 0
    expires: float = 0.0


class MemoryActivityStore:
    """Per-user live activity in process; a user's state expires after `window_s` of silence."""

    def __init__(self, clock: Any = time.time) -> None:
        self._lock = threading.Lock()
        self._users: dict[int, _UserActivity] = {}
        self._clock = clock

    def _get(self, user: int, now: float) -> _UserActivity | None:
        state = self._users.get(user)
        if state is not None and state.expires <= now:
            del self._users[user]
            return None
        return state

    def apply_events(self, events: ActivityEvents, recent_cap: int, window_s: int) -> np.ndarray:
        """Apply each new event_id once: counters, category counts, capped recent list."""
        new = np.zeros(len(events.event_id), dtype=bool)
        now = self._clock()
        with self._lock:
            for i in np.argsort(events.ts, kind="stable"):
                user = int(events.user_id[i])
                state = self._get(user, now) or self._users.setdefault(user, _UserActivity())
                state.expires = now + window_s
                eid = str(events.event_id[i])
                if eid in state.seen:
                    continue
                state.seen.add(eid)
                new[i] = True
                state.counts[str(events.type[i])] += 1
                state.counts["events"] += 1
                state.last_ts = max(state.last_ts, int(events.ts[i]))
                if events.category is not None and events.category[i] >= 0:
                    state.categories[int(events.category[i])] += 1
                state.recent.appendleft(int(events.item_id[i]))
                while len(state.recent) > recent_cap:
                    state.recent.pop()
        return new

    def activity(self, user_ids: Any) -> FeatureRows:
        """Counters per user; unknown users come back with `found` False and zeros."""
        ids = as_ids(user_ids)
        now = self._clock()
        rows = [self._get(int(u), now) for u in ids]
        return activity_rows(
            ids,
            [
                None
                if s is None
                else {
                    **{f"n_{k}": v for k, v in s.counts.items()},
                    "last_ts": s.last_ts,
                    **{f"c:{c}": n for c, n in s.categories.items()},
                }
                for s in rows
            ],
        )

    def recent_items(self, user_id: int, n: int) -> np.ndarray:
        """Newest-first recent items of `user_id`."""
        state = self._get(int(user_id), self._clock())
        items = list(state.recent)[:n] if state else []
        return np.asarray(items, dtype=np.int64)


ACTIVITY_FEATURES = (*(f"n_{t}" for t in EVENT_TYPES), "n_events", "last_ts", "top_category")


def activity_rows(ids: np.ndarray, states: Sequence[Mapping[str, int] | None]) -> FeatureRows:
    """Turn per-user counter maps (`n_<type>`, `last_ts`, `c:<category>`) into `FeatureRows`."""
    n = len(ids)
    values = {name: np.zeros(n, dtype=np.int64) for name in ACTIVITY_FEATURES}
    values["top_category"][:] = -1
    found = np.zeros(n, dtype=bool)
    for row, state in enumerate(states):
        if not state:
            continue
        found[row] = True
        best, best_n = -1, 0
        for key, val in state.items():
            if key.startswith("c:"):
                cat = int(key[2:])
                # Ties go to the smaller category id so both backends agree.
                if int(val) > best_n or (int(val) == best_n and cat < best):
                    best, best_n = cat, int(val)
            elif key in values:
                values[key][row] = int(val)
        values["top_category"][row] = best
    return FeatureRows(ids=ids, found=found, values=values)
