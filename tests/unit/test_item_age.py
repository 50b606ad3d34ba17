"""Item freshness: years since release as of the event (training) or the cut-off (serving)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from strata.models.space import AGE_COL, POP_COL, FeatureSpace

YEAR_S = 365.2425 * 86400


def _space() -> FeatureSpace:
    users = pd.DataFrame({"user_id": [1, 2], "age": [20, 30], "gender": ["F", "M"],
                          "occupation": ["a", "b"]})  # fmt: skip
    items = pd.DataFrame({"item_id": [10, 11, 12], "genres": [["x"], ["y"], []],
                          "year": pd.array([1990, 1998, None], dtype="Int64")})  # fmt: skip
    events = pd.DataFrame({"user_id": [1, 2], "item_id": [10, 11], "value": [4.0, 5.0]})
    return FeatureSpace.fit(users, items, events)


def test_age_at_event_time_and_as_of_cut(tmp_path: Path) -> None:
    space = _space()
    t1998 = int((1998.5 - 1970) * YEAR_S)
    rows = np.array([1, 2, 3])
    it = space.items(rows, np.array([5, 0, 1]), np.full(3, t1998))
    age = it.item_num[:, AGE_COL]
    # Half a year old in mid-1998 vs 8.5 years; no year -> 0 (the has-year flag says why).
    assert np.allclose(age, np.log1p([8.5, 0.5, 0.0]), atol=1e-3)
    assert it.item_num[0, POP_COL] > 0  # popularity and age are independent columns
    # Older at a later time; the table copy is untouched by point-in-time rows.
    later = space.items(rows, None, np.full(3, t1998 + int(2 * YEAR_S))).item_num[:, AGE_COL]
    assert (later[:2] > age[:2]).all() and (space.t["item_num"][1:, AGE_COL] == 0).all()
    space.set_as_of(t1998)
    assert np.allclose(space.all_items().item_num[:, AGE_COL], age)
    # Saved and loaded spaces keep the year table, so serving computes the same ages.
    space.save(tmp_path)
    back = FeatureSpace.load(tmp_path)
    assert np.allclose(back.items(rows, None, np.full(3, t1998)).item_num[:, AGE_COL], age)


def test_space_without_age_column_is_unchanged() -> None:
    space = _space()
    # A version written before the age column existed: point-in-time ts changes nothing.
    space.meta.pop("age_col")
    before = space.items(np.array([1, 2])).item_num.copy()
    after = space.items(np.array([1, 2]), None, np.array([0, 10**9])).item_num
    assert np.array_equal(before, after)


def test_random_negatives_are_featurised_as_of_each_querys_time() -> None:
    from strata.models.batch import RetrievalBatch, synthetic_queries
    from strata.models.space import log_count
    from strata.training.data import PopularitySnapshots, random_negatives

    space = _space()
    t0, t1 = int((1995.0 - 1970) * YEAR_S), int((1998.5 - 1970) * YEAR_S)
    # Counts by item-table row (0 = unknown): row 2 (a 1998 item) has no events at t0, 9 at t1.
    counts = np.array([[0.0, 3.0, 0.0, 0.0], [0.0, 4.0, 9.0, 1.0]])
    sample = random_negatives(space, 6, PopularitySnapshots(np.array([t0, t1]), counts))
    q = synthetic_queries(space.dims(), 3, np.random.default_rng(0))
    ts = np.array([t1 + 10, t0 - 5, t0 + 1])  # a time before the first snapshot reads the first
    b = RetrievalBatch(q, space.items(np.array([1, 2, 3])), np.zeros(3, np.float32),
                       np.ones(3, np.float32), ts)  # fmt: skip
    neg = sample(np.random.default_rng(1), b)
    rows = np.random.default_rng(1).integers(1, 4, 6)  # the sampler's draw
    assert neg.group is not None and neg.group.tolist() == [1, 0, 0]
    assert np.array_equal(neg.ids, space.t["item_idx"][rows])
    # Id, metadata and content once; numeric features once per time group.
    assert np.array_equal(neg.items.item, neg.ids) and np.array_equal(
        neg.items.text, space.items(rows).text
    )
    assert neg.item_num is not None and neg.item_num.shape == (2, 6, space.dims().item_num_dim)
    for k, t in enumerate((t0, t1)):
        got = neg.item_num[k]
        # Popularity is the snapshot's and age is as of its time: never the cut-off's future.
        assert np.allclose(got[:, POP_COL], log_count(counts[k, rows]))
        assert np.allclose(got, space.items(rows, counts[k, rows], np.full(6, t)).item_num)
    young = rows == 2
    assert young.any()  # the 1998 item: unreleased (age 0) at t0, half a year old at t1
    assert np.allclose(neg.item_num[0][young, AGE_COL], 0.0)
    assert np.allclose(neg.item_num[1][young, AGE_COL], np.log1p(0.5), atol=1e-3)
    # Without event times the negatives fall back to the table (as of the cut-off).
    plain = sample(np.random.default_rng(1), RetrievalBatch(q, b.item, b.log_q, b.weight))
    assert plain.group is None and plain.item_num is None
    assert np.array_equal(plain.items.item_num, space.items(rows).item_num)
