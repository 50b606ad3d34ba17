"""Item freshness: years since release as of the event (training) or the cut-off (serving)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from strata.training.data import AGE_COL, POP_COL, FeatureSpace

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
