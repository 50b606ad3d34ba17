"""Contract 4: `load_recommender(settings, dataset, version)` -> `Recommender.recommend(...)`.

The engine (`strata.engine.recommend.Engine`) configured as serving runs it: the version's
retriever (its saved ANN index, else exact search), the serving depth `serve.candidates`, the
same fresh-item and diversity settings, here with the version's torch modules and its item
table, for users as of the version's cut-off: query features come from the version's
user snapshot through `query_features_from_rows`, the function serving applies to online-store
rows, with the cut-off as request time and device unknown. Users without history before the
cut-off have no snapshot row: masked cold-start inputs (what training-time masking showed).
Used by evaluation, fine-tune gating and index tuning, so what they measure is what is served.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from strata.engine.recommend import Engine, FreshItems, Stage, TorchModels, VersionItems
from strata.engine.stages import PairSetFilter
from strata.engine.version import ModelVersion
from strata.errors import ValidationError

if TYPE_CHECKING:
    from strata.config import Settings
    from strata.models.batch import QueryFeatures

_CHUNK = 64  # users per engine call: bounds (users x candidates) feature memory


class Recommender:
    """One loaded model version: top-k items for users (retrieval-only or full)."""

    def __init__(self, mv: ModelVersion, n_candidates: int, seed: int = 0) -> None:
        s = mv.settings
        self.model_version = mv
        self.version = mv.version
        self.as_of = mv.as_of
        self.space = mv.space
        self.two_tower, self.ranker = mv.torch_models()
        self.n_candidates = n_candidates
        self.seed = seed
        self.fresh_rows = self.space.fresh_rows()  # catalog rows without training interactions
        self.index, _ = mv.index()  # as served (its FAISS index), exact when none was built
        self.engine = Engine(
            TorchModels(self.two_tower, self.ranker), self.index, VersionItems(self.space),
            mv.history, FreshItems.of(self.space, mv.item_ids, mv.item_embeddings), mv.score_weight,
            s.serve.fresh, s.serve.diversity,
        )  # fmt: skip
        self.seen = mv.history
        self.snapshot = mv.snapshot

    def queries(self, user_ids: np.ndarray) -> QueryFeatures:
        """Query features of users as of the version's cut-off (ValidationError naming unknowns)."""
        from strata.models.space import query_features_from_rows

        ids = np.asarray(user_ids, np.int64).reshape(-1)
        known = np.isin(ids, self.space.user_ids)
        if not known.all():
            bad = ids[~known][:5].tolist()
            raise ValidationError("user_id", f"unknown user id(s) {bad} (not in the users table)")
        rows, found = self.snapshot.rows(ids)
        ts, device = np.array([self.as_of], np.int64), np.array(["unknown"], dtype=object)
        return query_features_from_rows(self.space, rows, found, ts, device, ids)

    def query_embeddings(self, user_ids: np.ndarray) -> np.ndarray:
        """Query-tower vectors (U, D)."""
        return self.engine.models.encode(self.queries(user_ids))

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
        user_ids = np.asarray(user_ids, dtype=np.int64).reshape(-1)
        q = self.queries(user_ids)
        extra = _pairs(exclude)
        out_ids = np.full((len(user_ids), k), -1, np.int64)
        out_sc = np.full((len(user_ids), k), -np.inf, np.float32)
        for s in range(0, len(user_ids), _CHUNK):
            sl = slice(s, s + _CHUNK)
            rows = np.arange(s, min(s + _CHUNK, len(user_ids)))
            res = self.engine.run(
                user_ids[sl], q.take(rows), k, self.n_candidates, stage, exclude=extra,
                seed=self.seed,
            )  # fmt: skip
            out_ids[sl], out_sc[sl] = res.ids, res.scores
        return out_ids, out_sc


def _pairs(exclude: dict[int, set[int]] | None) -> PairSetFilter | None:
    """`exclude` as an exact pair filter (None when empty)."""
    if not exclude:
        return None
    eu = np.array([u for u, items in exclude.items() for _ in items], np.int64)
    ei = np.array([i for items in exclude.values() for i in items], np.int64)
    return PairSetFilter(eu, ei)


def load_recommender(settings: Settings, dataset: str, version: str | None = None) -> Recommender:
    """Load `version` (default: serving) of `dataset` from the registry, as it is served."""
    return Recommender(ModelVersion.open(settings, dataset, version), settings.serve.candidates)
