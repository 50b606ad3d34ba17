"""A tiny planted-preference RecDataset for training tests (no shared data needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from strata.config import Settings, TrainingConfig
from strata.datasets.base import RecDataset, validate

GENRES = ["Action", "Comedy", "Drama", "Horror"]


def tiny_dataset(
    n_users: int = 60, n_items: int = 80, n_events: int = 3000, seed: int = 0
) -> RecDataset:
    """Users prefer the genre given by (user_id mod 4); items have one genre each."""
    rng = np.random.default_rng(seed)
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, n_users + 1, dtype=np.int64),
            "age": rng.integers(18, 60, n_users).astype(np.int16),
            "gender": np.where(np.arange(n_users) % 2 == 0, "M", "F"),
            "occupation": [f"occ{i % 4}" for i in range(n_users)],
            "zip": ["00000"] * n_users,
        }
    )
    item_genre = np.arange(n_items) % 4
    items = pd.DataFrame(
        {
            "item_id": np.arange(1, n_items + 1, dtype=np.int64),
            "title": [f"item {i}" for i in range(n_items)],
            "year": pd.array(1990 + np.arange(n_items) % 10, dtype="Int16"),
            "genres": [[GENRES[g]] for g in item_genre],
            "description": [""] * n_items,
            "image_path": [None] * n_items,
        }
    )
    u = rng.integers(1, n_users + 1, n_events)
    liked = rng.random(n_events) < 0.85
    # Liked: an item of the user's genre (occupation index = genre, a learnable demographic link).
    g = (u - 1) % 4
    same = rng.integers(0, n_items // 4, n_events) * 4 + g
    other = rng.integers(0, n_items, n_events)
    it = np.where(liked, same, other) + 1
    ts = np.sort(rng.integers(1_000_000_000, 1_000_000_000 + 86400 * 60, n_events))
    inter = pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(n_events)],
            "user_id": u.astype(np.int64),
            "item_id": it.astype(np.int64),
            "event_type": "rating",
            "value": rng.integers(1, 6, n_events).astype(np.float32),
            "ts": ts.astype(np.int64),
            "device": rng.choice(["mobile", "desktop", "tv"], n_events),
        }
    ).drop_duplicates(["user_id", "item_id"])
    return validate(RecDataset("tiny", users, items, inter.reset_index(drop=True)))


def fast_settings(home: object) -> Settings:
    """Settings with tiny epochs/batches so training tests take seconds."""
    return Settings(
        home=home,
        training=TrainingConfig(
            epochs=3,
            batch_size=128,
            random_negatives=32,
            ranker_epochs=2,
            ranker_batch_size=256,
            ranker_max_positives=1500,
            candidates=30,
            finetune_epochs=1,
            # Items here are equally popular by construction, so a popularity prior (chosen on
            # ML-100K) is pure noise: tiny-world tests check the models they train without it.
            ranker_popularity_prior=0.0,
        ),
    )


def fresh_tables(n_fresh: int = 6) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, int]:
    """The tiny world plus `n_fresh` (<= 6) items that occur in no event (years 2001, 2005,
    2003, 2005, 1980, unknown): users, items, events and a cut-off at 60% of the events."""
    ds = tiny_dataset()
    n = len(ds.items)
    extra = pd.DataFrame(
        {
            "item_id": np.arange(n + 1, n + n_fresh + 1, dtype=np.int64),
            "title": [f"new {i}" for i in range(n_fresh)],
            "year": pd.array([2001, 2005, 2003, 2005, 1980, None][:n_fresh], dtype="Int16"),
            "genres": [["Action"], ["Comedy"], ["Drama"], ["Horror"], ["Action"], ["Drama"]][
                :n_fresh
            ],
            "description": [""] * n_fresh,
            "image_path": [None] * n_fresh,
        }
    )
    items = pd.concat([ds.items, extra], ignore_index=True)
    ts = np.sort(ds.interactions["ts"].to_numpy())
    return ds.users, items, ds.interactions, int(ts[int(len(ts) * 0.6)])
