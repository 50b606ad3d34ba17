"""Contract 4: `load_recommender(settings, dataset, version)` -> `Recommender.recommend(...)`.

Runs the in-process pipeline (exact retrieval -> seen filter -> DCN-v2 ranking -> top-k) from one
registry version. Query features come from the version's user snapshot (the offline store's
`latest_user_features` as of the cut-off) through `query_features_from_rows`, the function serving
applies to online-store rows; users without history before the cut-off have an unknown id and empty
behaviour there (the cold-start path the masking trained).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from strata.artifacts import ITEM_EMBEDDINGS_FILE
from strata.engine import stages
from strata.engine.stages import Candidates, ExactIndex, PairSetFilter
from strata.errors import DataError, ValidationError
from strata.training.batch import QueryFeatures, RankBatch
from strata.training.data import FeatureSpace

if TYPE_CHECKING:
    from strata.config import FreshConfig, Settings
    from strata.models.dcn import DCNRanker
    from strata.models.two_tower import TwoTower

Stage = Literal["retrieval", "full"]
_CHUNK = 64  # users per ranking chunk: bounds (users x candidates) feature memory


class _RankerScorer:
    """`stages.Scorer` over the DCN-v2 ranker for one chunk of users' query features (scores
    are logits: the order is the same as by probability, without float32 saturation ties)."""

    def __init__(self, rec: Recommender, queries: QueryFeatures) -> None:
        self.rec = rec
        self.queries = queries

    def score(self, user_ids: np.ndarray, cands: Candidates) -> np.ndarray:
        from strata.training.loops import score_ranker

        u, n = cands.ids.shape
        ids = np.where(cands.valid, cands.ids, self.rec.space.item_ids[0]).ravel()
        rows, _ = self.rec.space.item_rows(ids)
        batch = RankBatch(
            self.queries.take(np.repeat(np.arange(u), n)),
            self.rec.space.items(rows),
            np.where(cands.valid, cands.scores, 0.0).ravel().astype(np.float32),
            np.zeros(u * n, np.float32),
        )
        return score_ranker(self.rec.ranker, batch, logits=True).reshape(u, n)


class Recommender:
    """One loaded model version: recommend top-k items for users (retrieval-only or full)."""

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        space: FeatureSpace,
        two_tower: TwoTower,
        ranker: DCNRanker,
        item_emb: np.ndarray,
        user_queries: QueryFeatures,
        seen: PairSetFilter,
        n_candidates: int,
        fresh: FreshConfig | None = None,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.version: str = manifest["version"]
        self.space = space
        self.two_tower = two_tower
        self.ranker = ranker
        self.index = ExactIndex(space.item_ids, item_emb)
        self.user_queries = user_queries  # (len(space.user_ids),) as of the cut-off
        self.seen = seen
        self.n_candidates = n_candidates
        self.as_of = int(manifest["data_range"]["until"])
        self.fresh = fresh
        self.fresh_rows = space.fresh_rows()  # catalog rows without training interactions
        self._fresh_rng = np.random.default_rng(0)  # order "random": repeatable evaluations

    def queries(self, user_ids: np.ndarray) -> QueryFeatures:
        """Query features of users as of the version's cut-off (ValidationError naming unknowns)."""
        pos = np.searchsorted(self.space.user_ids, np.asarray(user_ids, np.int64))
        pos = np.clip(pos, 0, max(len(self.space.user_ids) - 1, 0))
        found = self.space.user_ids[pos] == np.asarray(user_ids, np.int64)
        if not found.all():
            bad = np.asarray(user_ids)[~found][:5].tolist()
            raise ValidationError("user_id", f"unknown user id(s) {bad} (not in the users table)")
        return self.user_queries.take(pos)

    def query_embeddings(self, user_ids: np.ndarray) -> np.ndarray:
        """Query-tower vectors (U, D)."""
        from strata.training.loops import embed_queries

        return embed_queries(self.two_tower, self.queries(user_ids))

    def recommend(
        self,
        user_ids: np.ndarray,
        k: int,
        stage: Stage = "full",
        exclude: dict[int, set[int]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` item ids (U, k) int64 and scores (U, k) float32; never items seen before the
        cut-off nor those in `exclude`. Slots beyond the available items hold -1 / -inf."""
        if k < 1:
            raise ValidationError("k", f"must be >= 1, got {k}")
        if stage not in ("retrieval", "full"):
            raise ValidationError("stage", f"expected 'retrieval' or 'full', got {stage!r}")
        user_ids = np.asarray(user_ids, dtype=np.int64).reshape(-1)
        q = self.queries(user_ids)
        seen = self._seen(exclude)
        out_ids = np.full((len(user_ids), k), -1, np.int64)
        out_sc = np.full((len(user_ids), k), -np.inf, np.float32)
        for s in range(0, len(user_ids), _CHUNK):
            sl = slice(s, s + _CHUNK)
            u, qc = user_ids[sl], q.take(np.arange(s, min(s + _CHUNK, len(user_ids))))
            from strata.training.loops import embed_queries

            q_emb = embed_queries(self.two_tower, qc)
            # Exact search: fetch enough that k (or N) unseen items survive the filter.
            depth = max(self.n_candidates, k) + int(self._seen_counts(seen, u).max(initial=0))
            cands = stages.filter_seen(stages.retrieve(self.index, q_emb, depth), u, seen)
            if stage == "retrieval":
                ids, sc = stages.order(cands, k)
            else:
                n = max(self.n_candidates, k)
                top_ids, top_sc = stages.order(cands, n)
                scorer = _RankerScorer(self, qc)
                ranked = stages.rank(Candidates(top_ids, top_sc), u, scorer)
                ids, sc = stages.order(ranked, k)
                fresh = self.fresh
                if fresh is not None and fresh.enabled and k > fresh.start and len(self.fresh_rows):
                    ids, sc = self._with_fresh(u, q_emb, ids, sc, seen, scorer)
            out_ids[sl], out_sc[sl] = ids, sc
        return out_ids, out_sc

    def _with_fresh(
        self,
        users: np.ndarray,
        q_emb: np.ndarray,
        ids: np.ndarray,
        sc: np.ndarray,
        seen: PairSetFilter,
        scorer: _RankerScorer,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ranked top-k (U, k) with fresh items in the reserved slots (`FreshConfig`): a
        pool of unseen fresh items (the newest, or the nearest by retrieval score) ordered by
        `FreshConfig.order` with the ranker minus its retrieval part (fresh retrieval scores
        carry no interaction signal, so they would only add noise; the popularity prior is
        zero for them as of the cut-off); scores stay fused logits."""
        assert self.fresh is not None
        cfg, rows = self.fresh, self.fresh_rows
        f_ids = np.broadcast_to(self.space.item_ids[rows - 1], (len(users), len(rows)))
        year = np.broadcast_to(self.space.t["year"][rows].astype(np.float64), f_ids.shape)
        r_sc = q_emb @ self.index.emb[rows - 1].T  # (U, F)
        drop = seen.seen(users, f_ids)
        pick = stages.fresh_pool(r_sc, year, drop, cfg.order, cfg.pool)
        p_ids = np.where(np.take_along_axis(drop, pick, 1), -1, np.take_along_axis(f_ids, pick, 1))
        p_sc = np.take_along_axis(r_sc, pick, 1).astype(np.float32)
        valid = p_ids >= 0
        fused = scorer.score(users, Candidates(p_ids, p_sc))  # (U, P) logits
        net = fused - self.ranker.cfg.score_weight * p_sc
        year_p = np.take_along_axis(year, pick, 1)
        by = stages.fresh_order(valid, net, year_p, cfg.order, self._fresh_rng)
        f_best = np.take_along_axis(np.where(valid, p_ids, -1), by, axis=1)
        f_fused = np.take_along_axis(np.where(valid, fused, -np.inf), by, axis=1)
        take = stages.interleave_fresh(ids, f_best, cfg.start, cfg.every)
        all_ids = np.concatenate([ids, f_best], axis=1)
        all_sc = np.concatenate([sc, f_fused.astype(np.float32)], axis=1)
        empty = take < 0
        out_ids = np.where(empty, -1, np.take_along_axis(all_ids, np.maximum(take, 0), axis=1))
        out_sc = np.where(empty, -np.inf, np.take_along_axis(all_sc, np.maximum(take, 0), axis=1))
        return out_ids, out_sc.astype(np.float32)

    def _seen(self, exclude: dict[int, set[int]] | None) -> PairSetFilter:
        if not exclude:
            return self.seen
        eu = np.array([u for u, items in exclude.items() for _ in items], np.int64)
        ei = np.array([i for items in exclude.values() for i in items], np.int64)
        keys = self.seen.keys
        both = PairSetFilter(eu, ei)
        both.keys = np.union1d(keys, both.keys)
        return both

    @staticmethod
    def _seen_counts(seen: PairSetFilter, users: np.ndarray) -> np.ndarray:
        return seen.count(users)


def load_recommender(settings: Settings, dataset: str, version: str | None = None) -> Recommender:
    """Load `version` (default: serving) of `dataset` from the registry."""
    import pandas as pd
    from safetensors.numpy import load_file

    from strata.artifacts import SEEN_FILE, USER_FEATURES_FILE
    from strata.models.dcn import DCNConfig, DCNRanker
    from strata.models.two_tower import TwoTower, TwoTowerConfig
    from strata.registry import Registry
    from strata.training.data import query_features_from_frame
    from strata.training.export import load_state

    reg = Registry(settings.registry_dir, dataset)
    path = reg.path(version)
    manifest = reg.manifest(path.name)
    space = FeatureSpace.load(path)
    dims = space.dims()
    tt = TwoTower(dims, TwoTowerConfig(**manifest["models"]["two_tower"]))
    load_state(tt, path / "two_tower.safetensors")
    rk = DCNRanker(dims, DCNConfig(**manifest["models"]["ranker"]))
    load_state(rk, path / "ranker.safetensors")
    tt.eval()
    rk.eval()
    seen = load_file(str(path / SEEN_FILE))
    snap = pd.read_parquet(path / USER_FEATURES_FILE)
    # Every catalog user as of the cut-off (request context = the cut-off, device unknown).
    by_user = pd.DataFrame({"user_id": space.user_ids}).merge(snap, on="user_id", how="left")
    if by_user.drop(columns="user_id").isna().any(axis=None):
        raise DataError(path / USER_FEATURES_FILE, "snapshot lacks users of the feature space")
    as_of = int(manifest["data_range"]["until"])
    queries = query_features_from_frame(space, by_user, np.full(len(by_user), as_of), "unknown")
    emb = np.load(path / ITEM_EMBEDDINGS_FILE, allow_pickle=False)
    return Recommender(
        path, manifest, space, tt, rk, emb, queries,
        PairSetFilter(seen["user"], seen["item"]), settings.training.candidates,
        settings.serve.fresh,
    )  # fmt: skip
