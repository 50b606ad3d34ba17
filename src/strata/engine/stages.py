"""The request path's building blocks on NumPy arrays, composed by `strata.engine.recommend`:
retrieval (`retrieve` over any `Retriever`), the seen filter (`filter_seen` over `SeenFilter`s:
exact pairs, the Bloom filter) and the fresh-item slots (`fresh_pool`, `fresh_order`,
`interleave_fresh`). Each works on (U, N) arrays; invalid slots carry id -1 and score -inf.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Candidates:
    """Per-user candidate lists: item ids (U, N) int64 (-1 = empty) and scores (U, N) float32."""

    ids: np.ndarray
    scores: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """(U, N) bool: slots holding a real candidate."""
        return self.ids >= 0


class Retriever(Protocol):
    """Nearest-neighbour search over item embeddings: `ExactIndex` here, or any
    `strata.engine.index.AnnIndex` (FAISS flat / IVF / HNSW), which pads short results with
    id -1 and score -inf like the other stages."""

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-`n` item ids (U, n) int64 and inner-product scores (U, n) float32."""
        ...


class SeenFilter(Protocol):
    """Answers 'has user u interacted with item i' for a whole candidate matrix at once."""

    def seen(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        """(U, N) bool for `user_ids` (U,) and candidate `item_ids` (U, N)."""
        ...


class ExactIndex:
    """Brute-force inner-product search over an (I, D) embedding matrix (ids given per row)."""

    def __init__(self, item_ids: np.ndarray, embeddings: np.ndarray) -> None:
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        self.emb = np.ascontiguousarray(embeddings, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.item_ids)

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-`n` by inner product, sorted by descending score."""
        scores = queries.astype(np.float32) @ self.emb.T  # (U, I)
        n = min(n, scores.shape[1])
        top = np.argpartition(-scores, n - 1, axis=1)[:, :n]  # (U, n) unordered
        s = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-s, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        return self.item_ids[top], np.take_along_axis(s, order, axis=1)


class PairSetFilter:
    """Exact seen-items filter from (user_id, item_id) pairs, vectorised with a sorted key array."""

    def __init__(self, user_ids: np.ndarray, item_ids: np.ndarray) -> None:
        self.keys = np.unique(self._key(np.asarray(user_ids), np.asarray(item_ids)))

    @staticmethod
    def _key(u: np.ndarray, i: np.ndarray) -> np.ndarray:
        # Ids are non-negative int64 below 2**31 in every dataset we load; pack them in one int64.
        return (u.astype(np.int64) << 32) | (i.astype(np.int64) & 0xFFFFFFFF)

    def seen(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        """(U, N) bool membership of (user, candidate) pairs."""
        k = self._key(np.broadcast_to(user_ids[:, None], item_ids.shape), item_ids)
        if len(self.keys) == 0:
            return np.zeros(item_ids.shape, dtype=bool)
        pos = np.minimum(np.searchsorted(self.keys, k), len(self.keys) - 1)
        return self.keys[pos] == k

    def count(self, user_ids: np.ndarray) -> np.ndarray:
        """Number of seen items per user (sizes the retrieval depth for exact filtering)."""
        # Keys sort by user first: a user's pairs lie in [u << 32, (u + 1) << 32). Two binary
        # searches per user, no pass over the keys (this runs on every request).
        u = np.asarray(user_ids, np.int64)
        lo = np.searchsorted(self.keys, u << 32, side="left")
        hi = np.searchsorted(self.keys, (u + 1) << 32, side="left")
        return np.where(u >= 0, hi - lo, 0).astype(np.int64)


def retrieve(index: Retriever, queries: np.ndarray, n: int) -> Candidates:
    """Stage 1: top-`n` candidates per query vector (U, D)."""
    ids, scores = index.search(queries, n)
    return Candidates(ids.astype(np.int64, copy=False), scores.astype(np.float32, copy=False))


def filter_seen(cands: Candidates, user_ids: np.ndarray, *seen: SeenFilter | None) -> Candidates:
    """Stage 2: drop candidates the user has already interacted with according to any of the
    `seen` filters (None ones skipped); a dropped slot becomes id -1, score -inf."""
    valid = cands.valid
    safe = np.where(valid, cands.ids, 0)
    drop: np.ndarray | None = None
    for f in seen:
        if f is not None:
            hit = f.seen(user_ids, safe)
            drop = hit if drop is None else drop | hit
    if drop is None:
        return cands
    drop &= valid
    return Candidates(np.where(drop, -1, cands.ids), np.where(drop, -np.inf, cands.scores))


def fresh_slots(k: int, start: int, every: int) -> np.ndarray:
    """List positions (0-based, ascending) reserved for fresh items in a top-`k` list: `start`,
    `start + every`, ... below `k` (none when `start >= k`)."""
    return np.arange(start, k, every, dtype=np.int64) if start < k else np.zeros(0, np.int64)


def fresh_pool(
    near: np.ndarray, year: np.ndarray, drop: np.ndarray, how: str, size: int
) -> np.ndarray:
    """(U, size) columns of the fresh items worth ranking per user, dropped ones (seen) last:
    the newest, nearest (retrieval score `near`) first within a year, for "newest"; else the
    nearest."""
    near = np.where(drop, -np.inf, near)
    if how == "newest":
        newest = np.where(drop, -np.inf, np.nan_to_num(year, nan=-1e9))
        return np.lexsort((-near, -newest), axis=-1)[:, :size]
    return np.argsort(-near, axis=1, kind="stable")[:, :size]


def fresh_order(
    valid: np.ndarray,
    net: np.ndarray,
    year: np.ndarray | None,
    how: str,
    rng: np.random.Generator | Sequence[np.random.Generator] | None = None,
) -> np.ndarray:
    """(U, P) column order of fresh candidates, best first, invalid slots last: by the ranker
    network's logit `net` ("ranker"), newest release `year` first with `net` breaking ties
    ("newest"; unknown years after known ones), or uniformly at random ("random": unbiased
    exploration, drawn from `rng`, or row r from `rng[r]` given one generator per row)."""
    if how == "random":
        if isinstance(rng, Sequence):
            net = np.stack([g.random(net.shape[1]) for g in rng]).reshape(net.shape)
        else:
            net = (rng or np.random.default_rng()).random(net.shape)
    net = np.where(valid, net, -np.inf)
    if how in ("ranker", "random") or year is None:
        return np.argsort(-net, axis=1, kind="stable")
    yr = np.where(valid, np.nan_to_num(year, nan=-1e9), -np.inf)
    return np.lexsort((-net, -yr), axis=-1)


def interleave_fresh(
    main_ids: np.ndarray, fresh_ids: np.ndarray, start: int, every: int
) -> np.ndarray:
    """Stage 4b: put fresh items (ones the model has no interactions for) into reserved slots.

    `main_ids` (U, k) is the ranked list, `fresh_ids` (U, F) the fresh candidates best first
    (-1 pads both). Returns (U, k) column indices into `concatenate([main_ids, fresh_ids], 1)`
    (-1 = empty slot): slot positions `fresh_slots(k, start, every)` take the best fresh items
    not already in the main list, in order; the other positions keep the main list's order; a
    user with fewer fresh items than slots gets main items there; empty slots go last.
    """
    u, k = main_ids.shape
    slots = fresh_slots(k, start, every)
    out = np.full((u, k), -1, np.int64)
    for r in range(u):  # U is one request, or a chunk of users; the work per row is vectorised
        m_cols = np.flatnonzero(main_ids[r] >= 0)
        f_ok = (fresh_ids[r] >= 0) & ~np.isin(fresh_ids[r], main_ids[r, m_cols])
        f_cols = np.flatnonzero(f_ok)[: len(slots)]
        taken = slots[: len(f_cols)]
        rest = np.setdiff1d(np.arange(k), taken, assume_unique=True)
        out[r, taken] = k + f_cols
        out[r, rest[: len(m_cols)]] = m_cols[: len(rest)]
        row = out[r]
        out[r] = np.r_[row[row >= 0], row[row < 0]]
    return out
