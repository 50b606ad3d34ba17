"""Point-in-time correctness of the training set: no feature ever sees its own or a later event."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from strata.config import Settings
from strata.errors import ValidationError
from strata.features.definitions import FeatureParams
from strata.features.offline import OfflineStore
from strata.features.schema import TRAINING_SET_COLUMNS, USER_FEATURE_COLUMNS
from tests.unit.test_offline_store import make_events, make_items, make_users


def _store(tmp_path: Path, **params: int) -> OfflineStore:
    return OfflineStore(Settings(home=tmp_path / "home"), FeatureParams(**params))


def test_crafted_history_has_no_leak(tmp_path: Path) -> None:
    """The label event, a simultaneous event and later events would all change these values."""
    store = _store(tmp_path)
    items = make_items()  # 10: Action|Drama, 20: Drama, 30: Horror, 40: Comedy
    events = make_events(
        [
            ("past", 1, 10, "rating", 5.0, 1_000),
            ("other-user", 2, 20, "rating", 2.0, 1_500),
            ("label", 1, 20, "rating", 1.0, 2_000),
            ("same-second", 1, 30, "view", 1.0, 2_000),  # simultaneous: must not count either
            ("later-1", 1, 30, "rating", 4.0, 3_000),
            ("later-2", 2, 20, "rating", 4.0, 3_500),
            ("later-3", 1, 30, "purchase", 100.0, 4_000),
        ]
    )
    store.ingest("pit", make_users(), items, [events])
    ts = store.training_set("pit").set_index("event_id")
    row = ts.loc["label"]
    assert row["user_n_events"] == 1
    assert row["user_n_rating"] == 1 and row["user_n_view"] == 0 and row["user_n_purchase"] == 0
    assert row["user_mean_value"] == pytest.approx(5.0)  # the label's own 1.0 would give 3.0
    assert list(row["user_recent_items"]) == [10]  # not 20 (itself) nor 30 (same second)
    # Action and Drama tie (item 10); the tie goes to the first by name, never to Horror (later).
    assert row["user_top_genre"] == "Action"
    assert row["user_top_category"] == "Action"
    assert row["user_days_since_last"] == pytest.approx(1_000 / 86400)
    assert row["item_n_events"] == 1 and row["item_n_users"] == 1
    assert row["item_mean_value"] == pytest.approx(2.0)  # later-2's 4.0 would give 3.0
    # The very first events see nothing at all.
    first = ts.loc["past"]
    assert first["user_n_events"] == 0 and list(first["user_recent_items"]) == []
    assert first["user_days_since_last"] == -1.0 and first["user_top_genre"] == ""
    # The simultaneous event sees the same past as the label, not the label itself.
    same = ts.loc["same-second"]
    assert same["user_n_events"] == 1 and list(same["user_recent_items"]) == [10]
    assert list(ts.reset_index().columns) == list(TRAINING_SET_COLUMNS)


def test_window_excludes_old_events_but_recency_uses_all(tmp_path: Path) -> None:
    store = _store(tmp_path, user_window_s=100, item_window_s=100)
    events = make_events(
        [
            ("a", 1, 10, "rating", 1.0, 0),
            ("b", 1, 20, "rating", 3.0, 50),
            ("c", 1, 30, "rating", 5.0, 120),  # window [20, 119]: only b counts
        ]
    )
    store.ingest("win", make_users(), make_items(), [events])
    row = store.training_set("win").set_index("event_id").loc["c"]
    assert row["user_n_events"] == 1
    assert row["user_mean_value"] == pytest.approx(3.0)
    assert list(row["user_recent_items"]) == [10, 20]  # recent items are not windowed
    assert row["user_days_since_last"] == pytest.approx(70 / 86400)


def _reference(events: pd.DataFrame, items: pd.DataFrame, p: FeatureParams) -> pd.DataFrame:
    """Slow, obviously-correct features per event from strictly earlier events (pandas)."""
    cat = dict(zip(items["item_id"], items["category"], strict=True))
    genres = dict(zip(items["item_id"], items["genres"], strict=True))
    rows = []
    ev = events.sort_values(["ts", "event_id"])
    for e in ev.itertuples():
        past = ev[(ev.user_id == e.user_id) & (ev.ts < e.ts)]
        win = past[past.ts >= e.ts - p.user_window_s]
        ipast = ev[(ev.item_id == e.item_id) & (ev.ts < e.ts) & (ev.ts >= e.ts - p.item_window_s)]
        g = Counter(x for i in win.item_id for x in genres[i])
        c = Counter(cat[i] for i in win.item_id if cat[i])
        rows.append(
            {
                "event_id": e.event_id,
                "user_n_events": len(win),
                "user_n_rating": int((win.event_type == "rating").sum()),
                "user_n_click": int((win.event_type == "click").sum()),
                "user_mean_value": float(win.value.mean()) if len(win) else 0.0,
                "user_recent_items": list(past.item_id)[-p.recent_n :],
                "user_days_since_last": (e.ts - past.ts.max()) / 86400 if len(past) else -1.0,
                "item_n_events": len(ipast),
                "item_n_users": ipast.user_id.nunique(),
                "item_mean_value": float(ipast.value.mean()) if len(ipast) else 0.0,
                "genre_counts": g,
                "cat_counts": c,
            }
        )
    return pd.DataFrame(rows).set_index("event_id")


def _top(counts: Counter) -> str:
    """The most frequent value; ties go to the first by name (the definitions' MODE ORDER BY)."""
    if not counts:
        return ""
    best = max(counts.values())
    return min(v for v, c in counts.items() if c == best)


def tie_records(seed: int, n: int) -> list[tuple[str, int, int, str, float, int]]:
    """Random events over 3 users and 4 items at few distinct timestamps, so that many share a
    second (the hard case for leakage) and windows start and end often."""
    rng = np.random.default_rng(seed)
    return [
        (
            f"e{i:04d}",
            int(rng.integers(1, 4)),
            int(rng.choice([10, 20, 30, 40])),
            str(rng.choice(["rating", "click", "view"])),
            float(rng.integers(1, 6)),
            int(rng.integers(0, 60)) * 50,
        )
        for i in range(n)
    ]


def test_matches_reference_on_random_history_with_ties(tmp_path: Path) -> None:
    n = 300
    records = tie_records(7, n)
    params = FeatureParams(user_window_s=400, item_window_s=300, recent_n=4, tie_slack=16)
    store = _store(tmp_path, user_window_s=400, item_window_s=300, recent_n=4, tie_slack=16)
    events = make_events(records)
    items = make_items()
    store.ingest("rand", make_users(), items, [events])
    got = store.training_set("rand").set_index("event_id")
    stored_items = store.items("rand")
    ref = _reference(store.events("rand"), stored_items, params)
    assert len(got) == n
    for col in ("user_n_events", "user_n_rating", "user_n_click", "item_n_events", "item_n_users"):
        assert (got[col].to_numpy() == ref.loc[got.index, col].to_numpy()).all(), col
    for col in ("user_mean_value", "user_days_since_last", "item_mean_value"):
        np.testing.assert_allclose(got[col].to_numpy(), ref.loc[got.index, col].to_numpy(), 1e-6)
    for eid in got.index:
        # Simultaneous events beyond `tie_slack` may only shorten the list, never leak.
        want = ref.at[eid, "user_recent_items"]
        assert list(got.at[eid, "user_recent_items"]) == want, eid
        assert got.at[eid, "user_top_genre"] == _top(ref.at[eid, "genre_counts"]), eid
        assert got.at[eid, "user_top_category"] == _top(ref.at[eid, "cat_counts"]), eid
    ties = sum(
        1 for eid in got.index if len(set(Counter(ref.at[eid, "genre_counts"]).values())) == 1
        and len(ref.at[eid, "genre_counts"]) > 1
    )  # fmt: skip
    assert ties > 0  # the data really exercises the tie-break


def test_latest_features_equal_training_features_at_same_time(tmp_path: Path) -> None:
    """Serving (latest as of t) and training (point at t) use one definition: same numbers."""
    store = _store(tmp_path)
    records = [
        (f"e{i}", 1 + i % 3, [10, 20, 30, 40][i % 4], "rating", float(1 + i % 5), 1000 * i)
        for i in range(40)
    ]
    store.ingest("same", make_users(), make_items(), [make_events(records)])
    train = store.training_set("same").set_index("event_id")
    for eid in ("e17", "e31", "e39"):
        row = train.loc[eid]
        latest = store.latest_user_features("same", as_of=int(row["ts"])).set_index("user_id")
        lrow = latest.loc[row["user_id"]]
        for col in USER_FEATURE_COLUMNS[1:]:
            a, b = lrow[col], row[col]
            if isinstance(a, float):
                assert a == pytest.approx(b), col
            else:
                assert list(np.atleast_1d(a)) == list(np.atleast_1d(b)), col
        items = store.latest_item_features("same", as_of=int(row["ts"])).set_index("item_id")
        irow = items.loc[row["item_id"]]
        assert irow["item_n_events"] == row["item_n_events"]
        assert irow["item_mean_value"] == pytest.approx(row["item_mean_value"])


def test_item_popularity_at_many_times_equals_latest_at_each(tmp_path: Path) -> None:
    """One probe per (item, time) in one query gives what one `latest_item_features` per time
    gives: the window (short here, so events fall out of it) and the strict before both hold,
    including at a time equal to an event's second."""
    store = _store(tmp_path, item_window_s=5_000)
    records = [
        (f"e{i}", 1 + i % 3, [10, 20, 30, 40][i % 4], "rating", float(1 + i % 5), 1000 * i)
        for i in range(40)
    ]
    store.ingest("pop", make_users(), make_items(), [make_events(records)])
    times = [0, 7_000, 17_000, 17_500, 39_000, 60_000]
    many = store.item_popularity_at("pop", [39_000, *times])  # duplicates and order don't matter
    assert sorted(set(many["as_of"])) == times and len(many) == len(times) * 4
    cols = ["item_n_events", "item_n_users", "item_mean_value"]
    for t in times:
        got = many[many["as_of"] == t].set_index("item_id")[cols]
        want = store.latest_item_features("pop", as_of=t).set_index("item_id")[cols]
        pd.testing.assert_frame_equal(got, want, check_dtype=False)
    # The window really cut: item 20 had events at 1000, 5000, 9000, ...; at 17000 only 13000
    # (and not 17000 itself) is within 5000 s before.
    at = many[(many["as_of"] == 17_000)].set_index("item_id")
    assert at.at[20, "item_n_events"] == 1
    with pytest.raises(ValueError, match="at least one"):
        store.item_popularity_at("pop", [])


def test_until_and_since_cut_rows_but_keep_history(tmp_path: Path) -> None:
    store = _store(tmp_path)
    records = [(f"e{i}", 1, 10 * (1 + i % 4), "rating", float(i % 5), 86400 * i) for i in range(10)]
    store.ingest("cut", make_users(), make_items(), [make_events(records)])
    full = store.training_set("cut").set_index("event_id")
    part = store.training_set("cut", since=86400 * 3, until=86400 * 7).set_index("event_id")
    assert list(part.index) == ["e3", "e4", "e5", "e6"]
    # Rows inside the cut still see the history before `since`.
    assert part.at["e3", "user_n_events"] == 3
    pd.testing.assert_frame_equal(part, full.loc[part.index])
    with pytest.raises(ValidationError, match="since"):
        store.training_set("cut", since=10, until=10)
