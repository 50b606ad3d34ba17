"""Fresh-item slots (item cold start exposure): the pure order-stage functions, the batch
recommender and the serving pipeline on a tiny trained version whose catalogue holds items that
never occur in training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from strata.config import FreshConfig, ServeConfig, Settings
from strata.engine.stages import fresh_order, fresh_pool, fresh_slots, interleave_fresh
from strata.features.online.memory import MemoryOnlineStore
from strata.serving.online import OnlineLink
from strata.serving.service import RecommendationPipeline

from .tiny_world import fast_settings, fresh_tables

DATASET = "tinyfresh"
N_FRESH = 6

# --- pure functions ----------------------------------------------------------------------------


def test_slots_start_after_the_protected_head() -> None:
    assert fresh_slots(30, 10, 10).tolist() == [10, 20]
    assert fresh_slots(10, 10, 10).tolist() == []  # k <= start: the list is untouched
    assert fresh_slots(7, 2, 3).tolist() == [2, 5]


def test_interleave_places_fresh_in_slots_and_keeps_main_order() -> None:
    main = np.array([[1, 2, 3, 4, 5, 6], [1, 2, -1, -1, -1, -1]])
    fresh = np.array([[2, 90, 91, -1], [90, -1, -1, -1]])  # 2 is already in the main list
    take = interleave_fresh(main, fresh, start=2, every=2)
    both = np.concatenate([main, fresh], axis=1)
    got = np.where(take >= 0, np.take_along_axis(both, np.maximum(take, 0), axis=1), -1)
    # Slots 2 and 4 get 90 and 91 (2 is skipped as a duplicate); main keeps its order.
    assert got[0].tolist() == [1, 2, 90, 3, 91, 4]
    # A short main list: the fresh item takes slot 2, empty slots move to the end.
    assert got[1].tolist() == [1, 2, 90, -1, -1, -1]
    # No fresh items: the main list as it was.
    none = interleave_fresh(main[:1], np.full((1, 3), -1), 2, 2)
    assert none[0].tolist() == list(range(6))


def test_fresh_order_newest_first_then_network() -> None:
    valid = np.array([[True, True, True, True, False]])
    net = np.array([[0.1, 0.9, 0.5, 3.0, 9.0]])
    year = np.array([[1990.0, 1998.0, 1998.0, np.nan, 2001.0]])
    # 1998 items first (network breaks the tie), then 1990, unknown year last, invalid after.
    assert fresh_order(valid, net, year, "newest")[0].tolist() == [1, 2, 0, 3, 4]
    assert fresh_order(valid, net, year, "ranker")[0].tolist() == [3, 1, 2, 0, 4]
    # "random": a permutation of the valid slots, invalid last, repeatable from the generator.
    r = fresh_order(valid, net, year, "random", np.random.default_rng(5))[0]
    assert sorted(r[:4].tolist()) == [0, 1, 2, 3] and r[4] == 4
    again = fresh_order(valid, net, year, "random", np.random.default_rng(5))[0]
    assert again.tolist() == r.tolist()


def test_fresh_pool_takes_newest_or_nearest_and_puts_seen_last() -> None:
    near = np.array([[0.9, 0.1, 0.5, 0.7]])
    year = np.array([[1990.0, 2001.0, 2001.0, np.nan]])
    seen = np.array([[False, False, False, True]])
    # Newest first (2001: nearer first), then 1990; the seen item last.
    assert fresh_pool(near, year, seen, "newest", 4)[0].tolist() == [2, 1, 0, 3]
    assert fresh_pool(near, year, seen, "ranker", 2)[0].tolist() == [0, 2]


# --- a trained version with never-seen items ---------------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from strata.training.data import Tables
    from strata.training.train import train

    path = tmp_path_factory.mktemp("fresh")
    users, items, events, until = fresh_tables(N_FRESH)
    train(fast_settings(path), DATASET, until=until, tables=Tables(users, items, events, None))
    return path


def _settings(home: Path, **fresh: object) -> Settings:
    base = fast_settings(home)
    serve = ServeConfig(dataset=DATASET, candidates=86, fresh=FreshConfig(**fresh))  # type: ignore[arg-type]
    return base.model_copy(update={"serve": serve})


def _fresh_ids(home: Path) -> set[int]:
    """Items 81..86 (years 2001, 2005, 2003, 2005, 1980, unknown): in no event at all."""
    _, items, _, _ = fresh_tables(N_FRESH)
    return set(items["item_id"].tail(N_FRESH).tolist())


def test_recommender_fills_reserved_slots_with_newest_fresh_items(home: Path) -> None:
    from strata.training.recommender import load_recommender

    fresh = _fresh_ids(home)
    users = np.arange(1, 21, dtype=np.int64)
    rec = load_recommender(_settings(home), DATASET)
    assert set(rec.space.item_ids[rec.fresh_rows - 1].tolist()) == fresh
    ids, scores = rec.recommend(users, 30, "full")
    plain = load_recommender(_settings(home, enabled=False), DATASET)
    base, _ = plain.recommend(users, 30, "full")
    # The head is untouched; slots 10 and 20 hold the two newest fresh items that the ranked
    # list does not already hold (years: 82 and 84 2005, 83 2003, 81 2001, 85 1980, 86 none).
    assert np.array_equal(ids[:, :10], base[:, :10])
    assert np.isfinite(scores[:, [10, 20]]).all()
    newest = [82, 84, 83, 81, 85, 86]
    for row, b in zip(ids, base, strict=True):
        want = [i for i in newest if i not in b.tolist()][:2]
        assert set(row[[10, 20]].tolist()) == set(want)
        # Everything else comes from the ranked list, in its order, without duplicates.
        rest = [i for j, i in enumerate(row.tolist()) if j not in (10, 20)]
        assert rest == [i for i in b.tolist() if i not in want][:28]
        assert len(set(row.tolist())) == 30
    assert {82, 84} <= set(ids[:, [10, 20]].ravel().tolist())
    # Retrieval-only lists never get fresh slots; k <= start leaves the list alone.
    r_ids, _ = rec.recommend(users, 30, "retrieval")
    assert np.array_equal(r_ids, plain.recommend(users, 30, "retrieval")[0])
    assert np.array_equal(rec.recommend(users, 10, "full")[0], base[:, :10])


def test_serving_pipeline_matches_the_batch_recommender(home: Path) -> None:
    from strata.training.recommender import load_recommender

    s = _settings(home)
    pipe = RecommendationPipeline.load(s, DATASET, link=OnlineLink.open(s, MemoryOnlineStore()))
    assert set(pipe.fresh_ids.tolist()) == _fresh_ids(home)
    rec = pipe.recommend(3, 30, ts=pipe.as_of, device="unknown")
    assert rec.candidates["fresh"] == 2
    assert set(rec.item_ids[[10, 20]].tolist()) <= _fresh_ids(home)
    off = _settings(home, enabled=False)
    plain = RecommendationPipeline.load(
        off, DATASET, link=OnlineLink.open(off, MemoryOnlineStore())
    ).recommend(3, 30, ts=pipe.as_of, device="unknown")
    assert plain.candidates["fresh"] == 0
    assert rec.item_ids[:10].tolist() == plain.item_ids[:10].tolist()
    assert len(set(rec.item_ids.tolist())) == 30
    # Scores are fused ranker logits (not probabilities that saturate at 1.0): finite, and
    # strictly ordered along the ranked head.
    assert rec.ranker_scores is not None and np.array_equal(rec.ranker_scores, rec.scores)
    assert np.isfinite(rec.scores).all() and np.all(np.diff(rec.scores[:10]) <= 0)
    assert rec.scores.max() > 1.0
    # "ranker" order: the network picks among all fresh items, the slots still hold fresh ones.
    by_net = _settings(home, order="ranker")
    pipe2 = RecommendationPipeline.load(
        by_net, DATASET, link=OnlineLink.open(by_net, MemoryOnlineStore())
    )
    got = pipe2.recommend(3, 30, ts=pipe.as_of, device="unknown").item_ids[[10, 20]]
    assert set(got.tolist()) <= _fresh_ids(home)
    # The batch recommender puts the same fresh items in the slots for the same user.
    batch, _ = load_recommender(s, DATASET).recommend(np.array([3]), 30, "full")
    assert set(batch[0, [10, 20]].tolist()) == set(rec.item_ids[[10, 20]].tolist())
