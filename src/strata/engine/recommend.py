"""The one recommendation engine: retrieve -> filter -> rank -> order for U users at once.

`Engine.run` is the only implementation of the request path. `GET /recommend` calls it with
U = 1; `strata recommend`, the evaluation harness, fine-tune gating and index tuning call it
with a chunk of users. What differs between them is only the parts plugged in:

- `Models`: the query tower and the ranker, either the torch modules (`TorchModels`, for
  evaluation and training-time gates) or the `InferenceBackend` (ONNX Runtime / Triton, in
  `strata.serving.backends`);
- `ItemSource`: the ranker's item inputs, the version's item table (`VersionItems`) or that
  table with live popularity from the online store (serving's catalogue cache);
- the retriever (exact search or the version's ANN index), and per call the seen filters.

Semantics, decided here once:

- **Depth.** Each user's exactly-known seen items (the version's history plus `exclude`) are
  counted, and retrieval fetches `n` plus the chunk's largest count, so that after the seen
  filter `n` unseen candidates remain to rank. Items only the `live` filter removes (a Bloom
  filter of interactions after the version's cut-off) are not replaced.
- **Fresh items** (no training interactions: item cold start, `FreshConfig`) are pooled after
  the seen filter: all fresh items in pool order (newest, nearest first within a year; or
  nearest), the first `pool` the user has not seen. They are ranked in the same ranker batch as
  the main candidates and ordered by the ranker's logit without its retrieval part (a fresh
  item's retrieval score carries no interaction signal), by release year first for "newest".
- **Scores.** Stage "full" reports the ranker's fused logit (network + popularity prior +
  weight x retrieval score); stage "retrieval" the inner product. Lists are ordered by them.
- **Randomness** (fresh order "random", diversity "sample") is drawn per user from
  `default_rng((seed, user_id + 1))`: the same seed gives the same list for a user whether it
  is asked alone or in a chunk; `seed=None` draws fresh entropy.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from strata.engine import stages
from strata.engine.order import genre_capped, sampled, top_k
from strata.engine.stages import Candidates, PairSetFilter, Retriever, SeenFilter
from strata.errors import ValidationError

if TYPE_CHECKING:
    from strata.config import DiversityConfig, FreshConfig
    from strata.models.batch import ItemFeatures, QueryFeatures
    from strata.models.dcn import DCNRanker
    from strata.models.space import FeatureSpace
    from strata.models.two_tower import TwoTower

Stage = Literal["retrieval", "full"]


# --- pluggable parts ----------------------------------------------------------------------------


class Models(Protocol):
    """The query tower and the ranker."""

    def encode(self, queries: QueryFeatures) -> np.ndarray:
        """Query vectors (U, D) float32."""
        ...

    def logits(
        self, queries: QueryFeatures, items: ItemFeatures, retrieval: np.ndarray
    ) -> np.ndarray:
        """Fused ranker logits (N,) for N (query, item) rows and their retrieval scores (N,)."""
        ...


class ItemSource(Protocol):
    """The ranker's item inputs and each item's primary genre (for diversity)."""

    def features(self, item_ids: np.ndarray) -> ItemFeatures:
        """Item inputs for ids (N,); unknown ids get the unknown-item row."""
        ...

    def genre(self, item_ids: np.ndarray) -> np.ndarray:
        """(N,) primary genre index, -1 for none."""
        ...


class TorchModels:
    """`Models` over the torch modules of a version (no autograd)."""

    def __init__(self, two_tower: TwoTower, ranker: DCNRanker) -> None:
        self.two_tower = two_tower
        self.ranker = ranker

    def encode(self, queries: QueryFeatures) -> np.ndarray:
        from strata.models.infer import embed_queries

        return embed_queries(self.two_tower, queries)

    def logits(
        self, queries: QueryFeatures, items: ItemFeatures, retrieval: np.ndarray
    ) -> np.ndarray:
        from strata.models.batch import RankBatch
        from strata.models.infer import score_ranker

        r = np.asarray(retrieval, np.float32)
        batch = RankBatch(queries, items, r, np.zeros(len(r), np.float32))
        return score_ranker(self.ranker, batch, logits=True)


class VersionItems:
    """`ItemSource` over the version's item table (popularity as of its cut-off)."""

    def __init__(self, space: FeatureSpace) -> None:
        self.space = space
        mh = space.t["genres"]  # (I + 1, G) multi-hot; row 0 = unknown item
        self._genre = np.where(mh.sum(1) > 0, mh.argmax(1), -1).astype(np.int64)

    def features(self, item_ids: np.ndarray) -> ItemFeatures:
        rows, _ = self.space.item_rows(np.asarray(item_ids, np.int64))
        return self.space.items(rows)

    def genre(self, item_ids: np.ndarray) -> np.ndarray:
        rows, _ = self.space.item_rows(np.asarray(item_ids, np.int64))
        return self._genre[rows]


class StageTimer:
    """Wall time of each stage in milliseconds (`ms`), plus the total since creation."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._t0 = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = (time.perf_counter() - t) * 1000.0

    def total(self) -> float:
        return (time.perf_counter() - self._t0) * 1000.0


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """Top-k lists of U users; -1 / -inf pad short lists."""

    ids: np.ndarray  # (U, k) int64, best first
    scores: np.ndarray  # (U, k) float32: fused ranker logit (full) or retrieval score
    retrieval: np.ndarray  # (U, k) float32 inner product of query and item vectors
    ranked: bool  # True when `scores` are ranker logits (stage full)
    retrieved: np.ndarray  # (U,) candidates the index returned
    after_filter: np.ndarray  # (U,) unseen candidates ranked (at most n)
    fresh: np.ndarray  # (U,) items placed in fresh-item slots


@dataclass(frozen=True)
class FreshItems:
    """The items without training interactions (sorted ids), their release years (NaN when
    unknown) and content-only item-tower vectors: the candidates of the fresh slots."""

    ids: np.ndarray  # (F,) int64
    year: np.ndarray  # (F,) float64
    emb: np.ndarray  # (F, D) float32

    @classmethod
    def of(cls, space: FeatureSpace, item_ids: np.ndarray, item_emb: np.ndarray) -> FreshItems:
        """The version's fresh items: catalogue rows without interactions that have a vector
        among `item_ids` / `item_emb` (the embedding rows)."""
        rows = space.fresh_rows()
        ids = space.item_ids[rows - 1]
        if not len(item_ids):
            return cls(ids[:0], np.zeros(0), np.zeros((0, item_emb.shape[-1]), np.float32))
        pos = np.minimum(np.searchsorted(item_ids, ids), len(item_ids) - 1)
        ok = np.asarray(item_ids)[pos] == ids
        year = space.t["year"][rows[ok]].astype(np.float64)
        return cls(ids[ok], year, np.ascontiguousarray(item_emb[pos[ok]], dtype=np.float32))


# --- the engine ---------------------------------------------------------------------------------


class Engine:
    """The request path of one model version (immutable; safe to share between threads)."""

    def __init__(
        self,
        models: Models,
        index: Retriever,
        items: ItemSource,
        history: PairSetFilter,
        fresh_items: FreshItems,
        score_weight: float,
        fresh: FreshConfig,
        diversity: DiversityConfig,
    ) -> None:
        self.models = models
        self.index = index
        self.items = items
        self.history = history
        self.score_weight = float(score_weight)
        self.fresh = fresh
        self.diversity = diversity
        self.fresh_ids = fresh_items.ids
        self.fresh_year = fresh_items.year
        self.fresh_emb = fresh_items.emb

    def run(
        self,
        users: np.ndarray,
        queries: QueryFeatures,
        k: int,
        n: int,
        stage: Stage = "full",
        exclude: PairSetFilter | None = None,
        live: SeenFilter | None = None,
        seed: int | None = 0,
        timer: StageTimer | None = None,
    ) -> Result:
        """Top-`k` of `n` unseen candidates for `users` (U,) (-1 = anonymous) with their query
        features (U rows). `exclude` adds exactly known seen pairs; `live` is a filter whose
        removals are not replaced (module docstring)."""
        if k < 1:
            raise ValidationError("k", f"must be >= 1, got {k}")
        if stage not in ("retrieval", "full"):
            raise ValidationError("stage", f"expected 'retrieval' or 'full', got {stage!r}")
        users = np.asarray(users, np.int64).reshape(-1)
        n = max(int(n), k)

        def step(name: str) -> AbstractContextManager[None]:
            return timer.stage(name) if timer is not None else nullcontext()

        with step("query_tower"):
            q_emb = np.asarray(self.models.encode(queries), np.float32)
        with step("retrieve"):
            known = self.history.count(users) + (exclude.count(users) if exclude else 0)
            extra = int(np.max(known, initial=0))
            cands = stages.retrieve(self.index, q_emb, n + extra)
            cfg = self.fresh
            use_fresh = stage == "full" and cfg.enabled and k > cfg.start and len(self.fresh_ids)
            f = self._fresh_pool(q_emb, cfg.pool + extra) if use_fresh else None
        with step("filter"):
            width = cands.ids.shape[1]
            both = cands if f is None else _hcat(cands, f)
            both = stages.filter_seen(both, users, self.history, exclude, live)
            main = _compact(Candidates(both.ids[:, :width], both.scores[:, :width]), n)
            if f is not None:
                f = _compact(Candidates(both.ids[:, width:], both.scores[:, width:]), cfg.pool)
        retrieved = cands.valid.sum(1)
        if stage == "retrieval":
            with step("order"):
                cols = self._order(main.ids, main.scores, k, users, seed)
                ids, sc = _take(cols, main.ids, main.scores)
            no_fresh = np.zeros(len(users), np.int64)
            return Result(ids, sc, sc, False, retrieved, main.valid.sum(1), no_fresh)
        # Main candidates and the fresh pool in one ranker batch.
        ranked = main if f is None else _hcat(main, f)
        with step("item_features"):
            valid = ranked.valid
            flat = np.flatnonzero(valid.ravel())
            items = self.items.features(ranked.ids.ravel()[flat])
            rows_q = queries.take(flat // ranked.ids.shape[1])
        with step("rank"):
            logit = np.full(ranked.ids.shape, -np.inf, np.float32)
            got = self.models.logits(rows_q, items, ranked.scores.ravel()[flat])
            logit.ravel()[flat] = np.asarray(got, np.float32).reshape(-1)
        with step("order"):
            cols = self._order(main.ids, logit[:, :n], k, users, seed)
            ids, sc, ret = _take(cols, main.ids, logit[:, :n], main.scores)
            n_fresh = np.zeros(len(users), np.int64)
            if f is not None:
                ids, sc, ret, n_fresh = self._with_fresh(ids, sc, ret, f, logit[:, n:], users, seed)
        return Result(ids, sc, ret, True, retrieved, main.valid.sum(1), n_fresh)

    # fresh slots ------------------------------------------------------------------------------

    def _fresh_pool(self, q_emb: np.ndarray, size: int) -> Candidates:
        """(U, size) fresh items in pool order with their retrieval scores (before the filter)."""
        near = q_emb @ self.fresh_emb.T  # (U, F)
        year = np.broadcast_to(self.fresh_year, near.shape)
        none = np.zeros(near.shape, bool)
        pick = stages.fresh_pool(near, year, none, self.fresh.order, size)
        return Candidates(self.fresh_ids[pick], _rows(near, pick))

    def _with_fresh(
        self,
        ids: np.ndarray,
        sc: np.ndarray,
        ret: np.ndarray,
        f: Candidates,
        f_logit: np.ndarray,
        users: np.ndarray,
        seed: int | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The ranked top-k with the best fresh items in the reserved slots."""
        cfg = self.fresh
        valid = f.valid
        net = np.where(valid, f_logit - self.score_weight * np.where(valid, f.scores, 0.0), 0.0)
        pos = np.minimum(np.searchsorted(self.fresh_ids, f.ids), len(self.fresh_ids) - 1)
        year = np.where(valid, self.fresh_year[pos], np.nan)
        rngs = _rngs(users, seed) if cfg.order == "random" else None
        by = stages.fresh_order(valid, net, year, cfg.order, rngs)
        f_ids = _rows(np.where(valid, f.ids, -1), by)
        f_sc = _rows(np.where(valid, f_logit, -np.inf), by)
        f_ret = _rows(np.where(valid, f.scores, -np.inf), by)
        take = stages.interleave_fresh(ids, f_ids, cfg.start, cfg.every)
        k = ids.shape[1]
        empty = take < 0
        at = np.maximum(take, 0)

        def pick(a: np.ndarray, b: np.ndarray, pad: float) -> np.ndarray:
            return np.where(empty, pad, _rows(np.concatenate([a, b], 1), at))

        out_sc = pick(sc, f_sc.astype(np.float32), -np.inf).astype(np.float32)
        out_ret = pick(ret, f_ret.astype(np.float32), -np.inf).astype(np.float32)
        return pick(ids, f_ids, -1).astype(np.int64), out_sc, out_ret, (take >= k).sum(1)

    # order ------------------------------------------------------------------------------------

    def _order(
        self, ids: np.ndarray, scores: np.ndarray, k: int, users: np.ndarray, seed: int | None
    ) -> np.ndarray:
        """(U, k) column indices of the final list, best first (-1 = empty), diversified when
        configured."""
        div = self.diversity
        if div.type == "none":
            # Best first, ties by position (as a stable sort); empty slots read -1. Few NumPy
            # calls on purpose: after inference each call runs on cold caches (~3-5 us each).
            valid = ids >= 0
            full = bool(valid.all())
            s = scores if full else np.where(valid, scores, -np.inf)
            if s.shape[1] > k:
                part = np.argpartition(-s, k - 1, axis=1)[:, :k]
                top = _rows(part, np.lexsort((part, -_rows(s, part)), axis=-1))
            else:
                top = np.argsort(-s, axis=1, kind="stable")
            if not full:
                top = np.where(_rows(s, top) > -np.inf, top, -1)
            if top.shape[1] < k:
                top = np.pad(top, ((0, 0), (0, k - top.shape[1])), constant_values=-1)
            return top
        u = ids.shape[0]
        out = np.full((u, k), -1, np.int64)
        rngs = _rngs(users, seed) if div.type == "sample" else None
        for r in range(u):  # U is one request or a chunk; each row's work is vectorised
            cols = np.flatnonzero(ids[r] >= 0)
            if not len(cols):
                continue
            s = scores[r, cols]
            if len(cols) <= 1:
                pick = top_k(s, k)
            elif div.type == "genre_cap":
                pick = genre_capped(s, self.items.genre(ids[r, cols]), k, div.genre_cap)
            else:
                assert rngs is not None
                pick = sampled(s, k, div, logits=True, rng=rngs[r])
            out[r, : len(pick)] = cols[pick]
        return out


# --- helpers ------------------------------------------------------------------------------------


def _rngs(users: np.ndarray, seed: int | None) -> list[np.random.Generator]:
    """One generator per user, repeatable from (seed, user id) (module docstring)."""
    if seed is None:
        return [np.random.default_rng() for _ in users]
    return [np.random.default_rng((int(seed), int(u) + 1)) for u in users]


def _rows(a: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """`take_along_axis(a, cols, 1)` by plain fancy indexing (a fraction of its per-call cost,
    which counts on a request path of ~20 such calls)."""
    return a[np.arange(a.shape[0])[:, None], cols]


def _hcat(a: Candidates, b: Candidates) -> Candidates:
    return Candidates(np.concatenate([a.ids, b.ids], 1), np.concatenate([a.scores, b.scores], 1))


def _compact(c: Candidates, n: int) -> Candidates:
    """The first `n` valid slots of each row, in their order (-1 / -inf pad)."""
    order = np.argsort(~c.valid, axis=1, kind="stable")[:, :n]
    ids = _rows(c.ids, order)
    sc = _rows(c.scores, order).astype(np.float32)
    if ids.shape[1] < n:
        pad = n - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        sc = np.pad(sc, ((0, 0), (0, pad)), constant_values=-np.inf)
    return Candidates(ids, np.where(ids >= 0, sc, -np.inf).astype(np.float32))


def _take(cols: np.ndarray, ids: np.ndarray, *scores: np.ndarray) -> tuple[np.ndarray, ...]:
    """Ids (int64, -1 pads) and each score array (float32, -inf pads) at column indices `cols`
    (U, k), where -1 marks an empty slot."""
    r = np.arange(cols.shape[0])[:, None]
    if bool((cols >= 0).all()):  # the usual case: a full list
        return (ids[r, cols].astype(np.int64, copy=False),
                *(sc[r, cols].astype(np.float32, copy=False) for sc in scores))  # fmt: skip
    empty = cols < 0
    at = np.maximum(cols, 0)
    out = [np.where(empty, -1, ids[r, at]).astype(np.int64)]
    out += [np.where(empty, -np.inf, sc[r, at]).astype(np.float32) for sc in scores]
    return tuple(out)
