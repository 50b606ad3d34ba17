"""Stage functions retrieve -> filter -> rank -> order on NumPy arrays."""

from __future__ import annotations

import numpy as np

from strata.engine import stages
from strata.engine.stages import Candidates, ExactIndex, PairSetFilter


def test_exact_index_matches_full_sort() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    ids = np.arange(100, 150)
    q = rng.normal(size=(3, 8)).astype(np.float32)
    got_ids, got_sc = ExactIndex(ids, emb).search(q, 5)
    full = q @ emb.T
    want = np.argsort(-full, axis=1)[:, :5]
    assert np.array_equal(got_ids, ids[want])
    assert np.allclose(got_sc, np.take_along_axis(full, want, 1))
    assert ExactIndex(ids, emb).search(q, 500)[0].shape == (3, 50)


def test_seen_filter_and_counts() -> None:
    f = PairSetFilter(np.array([1, 1, 2]), np.array([10, 11, 10]))
    seen = f.seen(np.array([1, 2, 3]), np.array([[10, 12], [11, 10], [10, 11]]))
    assert seen.tolist() == [[True, False], [False, True], [False, False]]
    assert f.count(np.array([1, 2, 3])).tolist() == [2, 1, 0]
    c = Candidates(np.array([[10, 12, 11]]), np.array([[3.0, 2.0, 1.0]], np.float32))
    out = stages.filter_seen(c, np.array([1]), f)
    assert out.ids.tolist() == [[-1, 12, -1]] and np.isinf(out.scores[0, 0])


class _ReverseScorer:
    def score(self, user_ids: np.ndarray, cands: Candidates) -> np.ndarray:
        return -cands.scores


def test_rank_and_order_with_padding() -> None:
    c = Candidates(np.array([[5, 6, -1]]), np.array([[0.9, 0.5, -np.inf]], np.float32))
    ranked = stages.rank(c, np.array([1]), _ReverseScorer())
    ids, sc = stages.order(ranked, 4)
    assert ids.tolist() == [[6, 5, -1, -1]]
    assert sc[0, 0] > sc[0, 1] and np.isinf(sc[0, 2])
    ids2, _ = stages.order(stages.rank(c, np.array([1]), None), 2)
    assert ids2.tolist() == [[5, 6]]


def test_run_never_returns_seen_items() -> None:
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(20, 4)).astype(np.float32)
    index = ExactIndex(np.arange(20), emb)
    users = np.array([0, 1])
    q = rng.normal(size=(2, 4)).astype(np.float32)
    top = index.search(q, 3)[0]
    seen = PairSetFilter(np.repeat(users, 3), top.ravel())
    ids, _ = stages.run(users, q, index, k=5, n=20, seen=seen)
    for u in range(2):
        assert not set(ids[u]) & set(top[u]) and len(set(ids[u])) == 5
