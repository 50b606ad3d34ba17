"""Offline store: layout, atomic idempotent ingest, feature tables, bad input, failed builds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from strata.cli.common import parse_ts
from strata.config import Settings
from strata.errors import DataError, NotFoundError, StrataError, ValidationError
from strata.features.offline import OfflineStore
from strata.features.schema import (
    ITEM_CONTENT_COLUMNS,
    ITEM_FEATURE_COLUMNS,
    USER_FEATURE_COLUMNS,
)

Record = tuple[str, int, int, str, float, int]


def make_users() -> pd.DataFrame:
    """Three users following the datasets/base.py contract."""
    return pd.DataFrame(
        {
            "user_id": [1, 2, 3],
            "age": [25, 40, 31],
            "gender": ["F", "M", "F"],
            "occupation": ["artist", "doctor", "writer"],
            "zip": ["10001", "94110", "60601"],
        }
    )


def make_items() -> pd.DataFrame:
    """Four items (10: Action|Drama, 20: Drama, 30: Horror, 40: Comedy), contract columns."""
    return pd.DataFrame(
        {
            "item_id": [10, 20, 30, 40],
            "title": ["Heat", "Fargo", "Alien", "Clue"],
            "year": pd.array([1995, 1996, None, 1985], dtype="Int16"),
            "genres": [["Action", "Drama"], ["Drama"], ["Horror"], ["Comedy"]],
            "description": ["", "a film", "", ""],
            "image_path": [None, None, None, None],
        }
    )


def make_events(records: list[Record], device: str = "mobile") -> pd.DataFrame:
    """Interactions from (event_id, user_id, item_id, event_type, value, ts) tuples."""
    df = pd.DataFrame(
        records, columns=["event_id", "user_id", "item_id", "event_type", "value", "ts"]
    )
    df["value"] = df["value"].astype(np.float32)
    df["device"] = device
    return df


DAY = 86400
BASIC: list[Record] = [
    ("e1", 1, 10, "rating", 5.0, DAY + 10),
    ("e2", 1, 20, "view", 1.0, DAY + 20),
    ("e3", 2, 10, "click", 1.0, 2 * DAY + 5),
    ("e4", 1, 30, "rating", 3.0, 2 * DAY + 7),
    ("e5", 2, 40, "purchase", 1.0, 3 * DAY),
]


@pytest.fixture
def store(tmp_path: Path) -> OfflineStore:
    return OfflineStore(Settings(home=tmp_path / "home"))


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_ingest_layout_and_reads(store: OfflineStore) -> None:
    counts = store.ingest("toy", make_users(), make_items(), [make_events(BASIC)])
    assert counts == {"users": 3, "items": 4, "new_events": 5}
    root = Path(store.dataset_uri("toy"))
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*.parquet")) == [
        "events/date=1970-01-02/part-0.parquet",
        "events/date=1970-01-03/part-0.parquet",
        "events/date=1970-01-04/part-0.parquet",
        "items.parquet",
        "users.parquet",
    ]
    items = store.items("toy")
    assert list(items["category"]) == ["Action", "Drama", "Horror", "Comedy"]
    assert list(items["genres"].iloc[0]) == ["Action", "Drama"]
    ev = store.events("toy")
    assert list(ev["event_id"]) == ["e1", "e2", "e3", "e4", "e5"]
    assert ev["ts"].dtype == np.int64 and ev["value"].dtype == np.float32
    assert list(store.events("toy", until=2 * DAY + 7)["event_id"]) == ["e1", "e2", "e3"]
    assert list(store.events("toy", since=2 * DAY)["event_id"]) == ["e3", "e4", "e5"]
    assert list(store.users("toy")["user_id"]) == [1, 2, 3]


def test_ingest_is_idempotent_and_dedupes(store: OfflineStore) -> None:
    store.ingest("toy", make_users(), make_items(), [make_events(BASIC)])
    root = Path(store.dataset_uri("toy"))
    before = _tree(root)
    again = store.ingest("toy", make_users(), make_items(), [make_events(BASIC)])
    assert again["new_events"] == 0
    assert _tree(root) == before  # byte-identical files, no temp files left
    # Replayed and duplicated events are dropped; the first write of an event_id wins.
    dup = make_events([("e1", 1, 10, "rating", 1.0, DAY + 10), ("e6", 3, 20, "view", 1.0, DAY)])
    added = store.append_events("toy", pd.concat([dup, dup]))
    assert added == 1
    ev = store.events("toy")
    assert len(ev) == 6 and ev["event_id"].is_unique
    assert ev.set_index("event_id").at["e1", "value"] == 5.0


def test_chunks_split_across_days_merge(store: OfflineStore) -> None:
    chunks = [make_events(BASIC[:3]), make_events(BASIC[2:])]  # e3 is in both chunks
    counts = store.ingest("toy", make_users(), make_items(), chunks)
    assert counts["new_events"] == 5
    assert list(store.events("toy")["event_id"]) == ["e1", "e2", "e3", "e4", "e5"]


def test_build_writes_feature_tables(store: OfflineStore) -> None:
    store.ingest("toy", make_users(), make_items(), [make_events(BASIC)])
    manifest = store.build("toy", until=2 * DAY + 7)  # e4, e5 are ignored
    assert manifest["events"] == 3 and manifest["as_of"] == 2 * DAY + 7
    users = store.built_features("toy", "user").set_index("user_id")
    assert list(users.reset_index().columns) == list(USER_FEATURE_COLUMNS)
    assert users.at[1, "user_n_events"] == 2 and users.at[1, "user_n_view"] == 1
    assert users.at[1, "user_mean_value"] == pytest.approx(3.0)
    assert list(users.at[1, "user_recent_items"]) == [10, 20]
    assert users.at[3, "user_n_events"] == 0 and users.at[3, "user_days_since_last"] == -1.0
    items = store.built_features("toy", "item").set_index("item_id")
    assert list(items.reset_index().columns) == list(ITEM_FEATURE_COLUMNS)
    assert items.at[10, "item_n_events"] == 2 and items.at[10, "item_n_users"] == 2
    assert items.at[30, "item_n_events"] == 0  # e4 is at the cut, so it is excluded
    assert items.at[30, "item_year"] == 0  # unknown year -> 0
    # The same numbers come from the on-the-fly API.
    latest = store.latest_item_features("toy", as_of=2 * DAY + 7).set_index("item_id")
    pd.testing.assert_frame_equal(latest, items)


def test_failed_build_keeps_previous_state(store: OfflineStore) -> None:
    store.ingest("toy", make_users(), make_items(), [make_events(BASIC)])
    store.build("toy")
    features = Path(store.dataset_uri("toy")) / "features"
    before = _tree(features)
    part = Path(store.dataset_uri("toy")) / "events" / "date=1970-01-03" / "part-0.parquet"
    part.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="date=1970-01-03"):
        store.build("toy")
    assert _tree(features) == before


def test_failed_ingest_leaves_store_untouched(store: OfflineStore) -> None:
    store.ingest("toy", make_users(), make_items(), [make_events(BASIC[:2])])
    root = Path(store.dataset_uri("toy"))
    before = _tree(root)
    bad = make_events([("x9", 1, 10, "like", 1.0, 9 * DAY)])  # unknown event type
    with pytest.raises(DataError, match=r"events\[1\].*event_type"):
        store.ingest("toy", make_users(), make_items(), [make_events(BASIC[2:]), bad])
    assert _tree(root) == before  # the good first chunk was not committed either


@pytest.mark.parametrize(
    ("table", "drop", "field"),
    [("users", "age", "toy:users"), ("items", "genres", "toy:items"), ("events", "ts", "events")],
)
def test_wrong_columns_name_the_table(
    store: OfflineStore, table: str, drop: str, field: str
) -> None:
    frames = {"users": make_users(), "items": make_items(), "events": make_events(BASIC)}
    frames[table] = frames[table].drop(columns=[drop])
    with pytest.raises(DataError, match=f"{field}.*{drop}"):
        store.ingest("toy", frames["users"], frames["items"], [frames["events"]])


def test_missing_and_corrupt_files(store: OfflineStore) -> None:
    with pytest.raises(NotFoundError, match="nope"):
        store.training_set("nope")
    store.ingest("toy", make_users(), make_items(), [make_events(BASIC)])
    users = Path(store.dataset_uri("toy")) / "users.parquet"
    pd.DataFrame({"user_id": [1]}).to_parquet(users)
    with pytest.raises(DataError, match=r"users\.parquet.*missing columns"):
        store.latest_user_features("toy")
    users.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"users\.parquet.*corrupt"):
        store.users("toy")
    with pytest.raises(ValidationError, match="dataset"):
        store.dataset_uri("../etc")


def test_parse_ts() -> None:
    assert parse_ts("86400") == 86400
    assert parse_ts("1970-01-02") == 86400
    assert parse_ts("1970-01-02T01:00:00+01:00") == 86400
    assert parse_ts(None) is None
    for bad in ("yesterday", "-5", "2024-13-01"):
        with pytest.raises(StrataError, match="--until"):
            parse_ts(bad)


def test_item_content_roundtrip(store: OfflineStore) -> None:
    store.ingest("toy", make_users(), make_items(), [make_events(BASIC)])
    df = pd.DataFrame(
        {
            "item_id": [20, 10],
            "text_emb": [np.ones(3, np.float32), np.zeros(3, np.float32)],
            "image_emb": [np.full(2, 0.5, np.float32), None],
            "has_text": [True, True],
            "has_image": [True, False],
        }
    )
    assert store.write_item_content("toy", df) == 2
    back = store.item_content("toy")
    assert list(back.columns) == list(ITEM_CONTENT_COLUMNS)
    assert list(back["item_id"]) == [10, 20]
    np.testing.assert_allclose(back.at[1, "text_emb"], [1, 1, 1])
    bad = df.assign(text_emb=[np.ones(3, np.float32), np.ones(4, np.float32)])
    with pytest.raises(DataError, match="mixed lengths"):
        store.write_item_content("toy", bad)
