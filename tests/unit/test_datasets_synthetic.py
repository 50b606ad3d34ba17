"""Synthetic data: the world follows its hidden truth; the Criteo teacher and its drift."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from strata.config import Settings
from strata.datasets import RecDataset, load
from strata.datasets.base import INTERACTION_COLUMNS, ITEM_COLUMNS, USER_COLUMNS
from strata.datasets.criteo import CAT_COLUMNS, CRITEO_COLUMNS, INT_COLUMNS
from strata.datasets.criteo_synthetic import criteo_like, criteo_teacher_proba
from strata.datasets.synthetic import (
    CATEGORIES,
    CATEGORY_WORDS,
    EVENT_DEVICES,
    SyntheticWorld,
    recsys_world,
)
from strata.errors import ConfigError


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    """Rank AUC (Mann-Whitney U); the scores here are continuous, so ties do not matter."""
    ranks = np.empty(len(p))
    ranks[np.argsort(p)] = np.arange(1, len(p) + 1)
    pos = y == 1
    n1, n0 = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return recsys_world(n_users=300, n_items=600, n_events=30_000, seed=5, chunk_size=7_000)


@pytest.fixture(scope="module")
def events(world: SyntheticWorld) -> pd.DataFrame:
    return pd.concat(list(world.iter_events()), ignore_index=True)


def test_chunks_are_bounded_ordered_and_reproducible(world: SyntheticWorld, events) -> None:
    chunks = list(world.iter_events())
    assert [len(c) for c in chunks] == [7000, 7000, 7000, 7000, 2000]
    assert (np.diff(events["ts"].to_numpy()) >= 0).all()
    assert events["event_id"].is_unique
    again = pd.concat(list(world.iter_events()), ignore_index=True)
    pd.testing.assert_frame_equal(events, again)
    twin = recsys_world(300, 600, 30_000, seed=5, chunk_size=7_000)
    pd.testing.assert_frame_equal(twin.items, world.items)
    other = recsys_world(300, 600, 7_000, seed=6)
    assert not next(other.iter_events())["item_id"].equals(chunks[0]["item_id"])


def test_tables_follow_the_contract(world: SyntheticWorld) -> None:
    ds = world.to_dataset()
    assert isinstance(ds, RecDataset) and ds.summary() == {
        "users": 300,
        "items": 600,
        "interactions": 30_000,
    }
    assert set(USER_COLUMNS) | {"device_habit"} <= set(ds.users.columns)
    assert set(ITEM_COLUMNS) | {"category", "price"} <= set(ds.items.columns)
    assert list(ds.interactions.columns) == list(INTERACTION_COLUMNS)
    inter = ds.interactions
    assert inter["value"].dtype == np.float32 and inter["ts"].dtype == np.int64
    assert set(inter["event_type"]) == {"view", "click", "purchase"}
    shares = inter["event_type"].value_counts(normalize=True)
    assert shares["view"] > shares["click"] > shares["purchase"] > 0.005
    assert set(inter["device"]) <= set(EVENT_DEVICES)
    assert ds.users["age"].between(16, 80).all() and ds.users["zip"].str.len().eq(5).all()
    assert (ds.items["price"] > 0).all()
    assert (ds.items["genres"].map(len) == 1).all()
    assert (ds.items["genres"].str[0] == ds.items["category"]).all()


def test_descriptions_carry_their_category(world: SyntheticWorld) -> None:
    items = world.items
    own = [
        sum(w in CATEGORY_WORDS[c] for w in d.split()) / len(d.split())
        for c, d in zip(items["category"], items["description"], strict=True)
    ]
    assert min(own) >= 0.5
    assert items["category"].tolist() == [CATEGORIES[c] for c in world.item_category]


def test_popularity_is_skewed(world: SyntheticWorld, events: pd.DataFrame) -> None:
    counts = events["item_id"].value_counts()
    top = counts.iloc[: len(world.items) // 10].sum() / len(events)
    assert top > 0.35  # the top 10% of items get far more than 10% of events
    # Observed item frequencies follow the hidden popularity (rank correlation).
    freq = np.bincount(events["item_id"] - 1, minlength=world.n_items)
    r = np.corrcoef(np.argsort(np.argsort(freq)), np.argsort(np.argsort(world.item_popularity)))
    assert r[0, 1] > 0.5


def test_choices_follow_hidden_preferences(world: SyntheticWorld, events: pd.DataFrame) -> None:
    u = events["user_id"].to_numpy() - 1
    i = events["item_id"].to_numpy() - 1
    chosen = np.einsum("bd,bd->b", world.user_factors[u], world.item_factors[i])
    rng = np.random.default_rng(0)
    rand = rng.choice(world.n_items, size=len(u), p=world.item_popularity)
    baseline = np.einsum("bd,bd->b", world.user_factors[u], world.item_factors[rand])
    assert chosen.mean() > baseline.mean() + 0.3
    # The oracle score ranks the chosen item high among all items.
    sample = rng.choice(len(events), 300, replace=False)
    all_items = np.tile(np.arange(1, world.n_items + 1), (300, 1))
    ev = events.iloc[sample]
    scores = np.stack(
        [
            world.true_scores(
                np.array([row.user_id]), all_items[:1], row.device, row.ts // 3600 % 24
            )[0]
            for row in ev.itertuples()
        ]
    )
    chosen_score = scores[np.arange(300), ev["item_id"].to_numpy() - 1]
    percentile = (scores < chosen_score[:, None]).mean(axis=1)
    assert percentile.mean() > 0.8


def test_category_mix_matches_the_context_model(world: SyntheticWorld, events) -> None:
    """Per device and per part of day, the observed category mix equals the one the hidden
    model predicts, and the devices' mixes differ from each other."""
    u = events["user_id"].to_numpy() - 1
    dev = events["device"].map(EVENT_DEVICES.index).to_numpy()
    hour = (events["ts"].to_numpy() // 3600) % 24
    logits = world.category_logits(u, dev, hour)
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    cat = world.item_category[events["item_id"].to_numpy() - 1]
    n_cat = len(CATEGORIES)
    mixes = []
    for group in [dev == d for d in range(3)] + [hour < 12, hour >= 12]:
        observed = np.bincount(cat[group], minlength=n_cat) / group.sum()
        expected = prob[group].mean(0)
        assert 0.5 * np.abs(observed - expected).sum() < 0.05
        mixes.append(observed)
    assert 0.5 * np.abs(mixes[0] - mixes[1]).sum() > 0.1


def test_load_synthetic_and_limits() -> None:
    a = load("synthetic", settings=Settings(seed=1))
    b = load("synthetic", settings=Settings(seed=1))
    assert a.name == "synthetic" and a.summary()["interactions"] == 50_000
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    with pytest.raises(ConfigError, match="iter_events"):
        recsys_world(10, 10, 6_000_000).to_dataset()
    with pytest.raises(ConfigError, match="n_items"):
        recsys_world(10, 0, 10)


def test_criteo_like_teacher_and_drift() -> None:
    before = criteo_like(20_000, seed=1)
    assert list(before.columns) == [*CRITEO_COLUMNS, "p_true"]
    assert 0.17 < before["label"].mean() < 0.27
    assert (
        before[list(INT_COLUMNS)].isna().any().any()
        and before[list(CAT_COLUMNS)].isna().any().any()
    )
    hashes = before["C1"].dropna()
    assert hashes.str.fullmatch(r"[0-9a-f]{8}").all()
    pd.testing.assert_frame_equal(before, criteo_like(20_000, seed=1))
    y = before["label"].to_numpy()
    auc_before = _auc(y, before["p_true"].to_numpy())
    assert auc_before > 0.7
    # The teacher can be re-applied to raw rows (hashes decoded back to values).
    np.testing.assert_allclose(criteo_teacher_proba(before), before["p_true"], rtol=1e-9)

    after = criteo_like(20_000, seed=2, drift=True)
    y2 = after["label"].to_numpy()
    auc_new = _auc(y2, after["p_true"].to_numpy())
    auc_old = _auc(y2, criteo_teacher_proba(after, drift=False))
    assert auc_new > 0.7
    assert auc_old < auc_new - 0.1
