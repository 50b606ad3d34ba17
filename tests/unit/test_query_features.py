"""Serving-side query features: online-store rows -> `QueryFeatures` equal what training feeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from strata.config import Settings
from strata.errors import ValidationError
from strata.features.materialize import materialize_frame
from strata.features.offline import OfflineStore, ingest_dataset
from strata.features.online.memory import MemoryOnlineStore
from strata.models.batch import QueryFeatures
from strata.models.space import (
    USER_INPUT_FEATURES,
    FeatureSpace,
    query_features_from_frame,
    query_features_from_rows,
)

from .tiny_world import tiny_dataset


def _equal(a: QueryFeatures, b: QueryFeatures) -> None:
    for name in a.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6, err_msg=name)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[OfflineStore, FeatureSpace, object]:
    home = tmp_path_factory.mktemp("home")
    ds = tiny_dataset(n_users=40, n_items=30, n_events=1200)
    store = OfflineStore(Settings(home=home))
    ingest_dataset(store, ds, "tiny")
    ts = np.sort(ds.interactions["ts"].to_numpy())
    until = int(ts[int(len(ts) * 0.7)])
    train = store.training_set("tiny", until=until)
    space = FeatureSpace.fit(store.users("tiny"), store.items("tiny"), train)
    return store, space, train


def test_online_rows_match_training_features(world: tuple, tmp_path: Path) -> None:
    store, space, train = world
    # Events with some history: pick rows from the later half of the training window.
    picks = train.iloc[len(train) // 2 :: 23].reset_index(drop=True)
    assert len(picks) >= 5 and (picks["user_n_events"] > 0).any()
    expected = query_features_from_frame(space, picks)  # what training feeds the model
    for i, row in picks.iterrows():
        t = int(row["ts"])
        # Serving path: latest features as of the event's time, materialized to the online store.
        online = MemoryOnlineStore()
        materialize_frame(online, "user", store.latest_user_features("tiny", as_of=t), "user_id")
        ids = np.array([row["user_id"]], np.int64)
        got = online.read("user", ids, USER_INPUT_FEATURES)
        assert got.found.all()
        q = query_features_from_rows(
            space, got.values, got.found, np.array([t]), np.array([row["device"]]), user_ids=ids
        )
        _equal(q, expected.take(np.array([i])))


def test_unknown_users_get_masked_defaults(world: tuple) -> None:
    store, space, train = world
    snap = store.latest_user_features("tiny", as_of=int(train["ts"].max()) + 1)
    online = MemoryOnlineStore()
    materialize_frame(online, "user", snap, "user_id")
    ids = np.array([int(snap["user_id"].iloc[0]), 987654], np.int64)
    got = online.read("user", ids, USER_INPUT_FEATURES)
    assert got.found.tolist() == [True, False]
    ts = np.array([1_000_000_000, 1_000_000_000])
    q = query_features_from_rows(space, got.values, got.found, ts, np.array(["tv", "tv"]), ids)
    assert q.user[1] == 0 and q.age[1] == 0 and q.gender[1] == 0 and q.occupation[1] == 0
    assert (q.hist[1] == 0).all() and q.top_genre[1] == 0 and (q.user_num[1] == 0).all()
    assert q.user[0] > 0 and q.gender[0] > 0
    # Context is the request's, found or not.
    np.testing.assert_array_equal(q.ctx[0], q.ctx[1])
    assert q.device[0] == q.device[1] > 0
    # No rows at all (every user new) works too; a missing user id is a domain error.
    none = query_features_from_rows(space, {}, np.zeros(2, bool), ts, np.array(["tv", "tv"]), ids)
    _equal(none.take(np.array([1])), q.take(np.array([1])))
    with pytest.raises(ValidationError, match="user_ids"):
        query_features_from_rows(space, got.values, got.found, ts, np.array(["tv", "tv"]))


def test_recent_items_keep_the_newest_and_ignore_unknown_items(world: tuple) -> None:
    _, space, _ = world
    n = int(space.meta["hist_len"])
    known = space.item_ids[:3]
    # Oldest first, -1 padded, longer than the model's history: the newest n survive.
    long = np.r_[np.repeat(known[0], 5), np.repeat(known[1], n - 1), known[2], 424242]
    rows = {
        "user_age": np.array([25]),
        "user_gender": np.array(["M"], dtype=object),
        "user_occupation": np.array(["occ1"], dtype=object),
        "user_n_events": np.array([7]),
        "user_mean_value": np.array([3.0]),
        "user_top_genre": np.array(["Drama"], dtype=object),
        "user_recent_items": np.r_[long, [-1, -1]][None, :],
    }
    q = query_features_from_rows(space, rows, np.array([True]), np.array([0]), ["mobile"], [1])
    idx = space.t["item_idx"][space.item_rows(known)[0]]
    # The last n entries are known[1] x (n - 2), known[2], then the unknown id (-> 0).
    assert q.hist.shape == (1, n)
    assert q.hist[0, -1] == 0 and q.hist[0, -2] == idx[2]
    assert (q.hist[0, :-2] == idx[1]).all()
