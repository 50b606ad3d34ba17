"""The engine's building blocks on NumPy arrays, and `Engine.run` over them with array-backed
parts (the real models are in test_one_engine.py)."""

from __future__ import annotations

import numpy as np

from strata.engine import stages
from strata.engine.stages import Candidates, ExactIndex, PairSetFilter

from .engine_support import Queries, array_engine


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


def test_engine_ranks_n_unseen_candidates_and_never_returns_seen_items() -> None:
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(20, 4)).astype(np.float32)
    index = ExactIndex(np.arange(20), emb)
    users = np.array([0, 1])
    q = rng.normal(size=(2, 4)).astype(np.float32)
    top = index.search(q, 3)[0]
    seen = PairSetFilter(np.repeat(users, 3), top.ravel())
    eng = array_engine(index, seen)
    res = eng.run(users, Queries(q), k=5, n=6)  # type: ignore[arg-type]
    for u in range(2):
        assert not set(res.ids[u]) & set(top[u]) and len(set(res.ids[u])) == 5
    # Depth grows by the seen count: 6 unseen candidates ranked, not 6 minus the 3 seen.
    assert res.after_filter.tolist() == [6, 6] and res.retrieved.tolist() == [9, 9]
    # The reversing ranker puts the 6th-nearest unseen item first; scores are its logits.
    ret_ids, _ = index.search(q, 20)
    for u in range(2):
        unseen = [i for i in ret_ids[u] if i not in set(top[u])][:6]
        assert res.ids[u].tolist() == unseen[::-1][:5]
        assert np.all(np.diff(res.scores[u]) <= 0) and res.ranked
    # Stage retrieval orders by the retrieval score; an anonymous user (-1) filters nothing.
    r = eng.run(users, Queries(q), k=5, n=6, stage="retrieval")  # type: ignore[arg-type]
    assert r.ids[0].tolist() == [i for i in ret_ids[0] if i not in set(top[0])][:5]
    anon = eng.run(np.array([-1]), Queries(q[:1]), k=3, n=3)  # type: ignore[arg-type]
    assert (
        anon.after_filter.tolist() == [3] and anon.ids[0].tolist() == ret_ids[0][:3][::-1].tolist()
    )
