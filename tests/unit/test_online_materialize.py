"""Materialization offline -> online (memory backend): column mapping, versions, idempotency."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from strata.config import MemoryOnlineConfig, Settings
from strata.errors import ConfigError, DataError
from strata.features.materialize import materialize, materialize_frame, online_columns
from strata.features.online import OnlineStore, open_online_store
from strata.features.online.memory import MemoryOnlineStore


def _users(n: int = 6, bump: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": np.arange(n, dtype=np.int64) + 1,
            "user_age": np.arange(n, dtype=np.int16) + 20 + bump,
            "user_gender": ["M", "F"] * (n // 2),
            "user_n_click": np.arange(n, dtype=np.int64),
            "user_mean_value": np.linspace(0, 1, n),
            "user_recent_items": [list(range(i)) for i in range(n)],
        }
    )


def _items(n: int = 4) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": np.arange(n, dtype=np.int64) * 10,
            "item_year": pd.array([1990, None, 2001, 1975][:n], dtype="Int16"),
            "item_genres": [["Drama", "War"], ["Comedy"], [], ["Drama"]][:n],
            "has_text": [True, False, True, True][:n],
            "text_emb": [np.full(3, i, dtype=np.float32) for i in range(n)],
        }
    )


def test_online_columns_map_offline_types() -> None:
    ids, cols = online_columns(_items(), "item_id")
    np.testing.assert_array_equal(ids, [0, 10, 20, 30])
    np.testing.assert_array_equal(cols["item_year"], [1990, 0, 2001, 1975])
    assert list(cols["item_genres"]) == ["Drama|War", "Comedy", "", "Drama"]
    assert cols["text_emb"].shape == (4, 3) and cols["text_emb"].dtype == np.float32
    _, ucols = online_columns(_users(), "user_id")
    assert ucols["user_recent_items"].shape == (6, 5)
    np.testing.assert_array_equal(ucols["user_recent_items"][2], [0, 1, -1, -1, -1])
    with pytest.raises(DataError, match="user_id"):
        online_columns(_items(), "user_id")


def test_materialize_switches_versions_and_is_idempotent(strata_home) -> None:
    store = MemoryOnlineStore()
    settings = Settings()
    first = materialize(settings, "toy", store=store, users=_users(), items=_items())
    assert not first["user"]["skipped"] and first["user"]["rows"] == 6
    rows = store.read("user", np.array([2, 99]), ["user_age", "user_gender", "user_recent_items"])
    np.testing.assert_array_equal(rows.found, [True, False])
    assert rows.values["user_age"][0] == 21 and rows.values["user_gender"][0] == "F"
    again = materialize(settings, "toy", store=store, users=_users(), items=_items())
    assert again["user"]["skipped"] and again["user"]["version"] == first["user"]["version"]
    changed = materialize(settings, "toy", store=store, users=_users(bump=5), items=_items())
    assert changed["user"]["version"] != first["user"]["version"]
    assert changed["item"]["skipped"]
    assert store.read("user", np.array([2]), ["user_age"]).values["user_age"][0] == 26
    assert store.versions("user") == [first["user"]["version"], changed["user"]["version"]]


class _ObservingStore(MemoryOnlineStore):
    """A real memory store that reads the active version after every batch write."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[float] = []

    def write(self, entity, ids, columns, version=None):  # type: ignore[no-untyped-def]
        n = super().write(entity, ids, columns, version)
        if self.active_version(entity):
            rows = self.read(entity, np.arange(1, 11), ["user_mean_value"])
            self.seen.append(float(rows.values["user_mean_value"].sum()))
        return n


def test_readers_never_see_a_half_written_version() -> None:
    store = _ObservingStore()
    old = _users(10).assign(user_mean_value=1.0)
    new = _users(10).assign(user_mean_value=2.0)
    materialize_frame(store, "user", old, "user_id", batch_rows=3)
    materialize_frame(store, "user", new, "user_id", batch_rows=3)
    # Every read during the second run saw all of v1 (10 x 1.0) and never a mix.
    assert store.seen[-4:] == [10.0, 10.0, 10.0, 10.0]
    assert store.read("user", np.arange(1, 11), ["user_mean_value"]).values[
        "user_mean_value"
    ].sum() == pytest.approx(20.0)


def test_registry_builds_backends() -> None:
    store = open_online_store(MemoryOnlineConfig())
    assert isinstance(store, OnlineStore) and isinstance(store, MemoryOnlineStore)

    bad = MemoryOnlineConfig.model_construct(type="cassandra")  # bypasses validation on purpose
    with pytest.raises(ConfigError, match="cassandra"):
        open_online_store(bad)
