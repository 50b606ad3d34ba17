"""Array-backed parts for `Engine` tests: query inputs that are the query vectors, a ranker
whose logit is minus the retrieval score (a known order), items keyed by id. The engine and
its stages are the real ones; the trained models are exercised in test_one_engine.py."""

from __future__ import annotations

import numpy as np

from strata.config import DiversityConfig, FreshConfig
from strata.engine.recommend import Engine, FreshItems
from strata.engine.stages import PairSetFilter, Retriever


class Queries:
    """Query inputs that are the query vectors themselves (what `Models.encode` returns)."""

    def __init__(self, vec: np.ndarray) -> None:
        self.vec = vec

    def take(self, rows: np.ndarray) -> Queries:
        return Queries(self.vec[rows])


class _ReverseRanker:
    """A ranker whose logit is minus the retrieval score: the order it gives is known."""

    def encode(self, queries: Queries) -> np.ndarray:
        return queries.vec

    def logits(self, queries: Queries, items: object, retrieval: np.ndarray) -> np.ndarray:
        return -retrieval


class _Items:
    def features(self, item_ids: np.ndarray) -> np.ndarray:
        return item_ids

    def genre(self, item_ids: np.ndarray) -> np.ndarray:
        return item_ids % 3


def array_engine(index: Retriever, seen: PairSetFilter | None = None) -> Engine:
    """An engine over `index` whose ranker reverses the retrieval order (no fresh slots)."""
    none = FreshItems(np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4), np.float32))
    history = seen if seen is not None else PairSetFilter(np.zeros(0), np.zeros(0))
    return Engine(
        _ReverseRanker(), index, _Items(), history, none, 0.0,  # type: ignore[arg-type]
        FreshConfig(enabled=False), DiversityConfig(),
    )  # fmt: skip
