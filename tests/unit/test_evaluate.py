"""The evaluation harness and its baselines: a hand-built case with known answers, and ML-100K."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from strata.datasets.base import RecDataset
from strata.errors import ValidationError
from strata.training.baselines import ALSRecommender, ItemKNNRecommender, PopularityRecommender
from strata.training.evaluate import (
    System,
    evaluate,
    fit_baselines,
    format_table,
    quantile_ts,
    temporal_split,
    write_report,
)

UNTIL = 100


def _dataset(rows: list[tuple[int, int, int]]) -> RecDataset:
    users = pd.DataFrame(
        {
            "user_id": np.array([10, 11, 12, 13], np.int64),
            "age": np.array([20, 30, 40, 50], np.int16),
            "gender": ["M", "F", "M", "F"],
            "occupation": ["x"] * 4,
            "zip": ["0"] * 4,
        }
    )
    items = pd.DataFrame(
        {
            "item_id": np.arange(1, 7, dtype=np.int64),
            "title": [f"item {i}" for i in range(1, 7)],
            "year": pd.array([2000] * 6, dtype="Int16"),
            "genres": [["Drama"]] * 6,
            "description": [""] * 6,
            "image_path": [None] * 6,
        }
    )
    inter = pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(len(rows))],
            "user_id": np.array([r[0] for r in rows], np.int64),
            "item_id": np.array([r[1] for r in rows], np.int64),
            "event_type": ["rating"] * len(rows),
            "value": np.ones(len(rows), np.float32),
            "ts": np.array([r[2] for r in rows], np.int64),
            "device": ["unknown"] * len(rows),
        }
    )
    return RecDataset("tiny", users, items, inter)


@pytest.fixture
def tiny() -> RecDataset:
    """Before 100: item 1 x3, item 2 x2, item 3 x1. After: new items for users 10, 12, 13."""
    return _dataset(
        [
            (10, 1, 1),
            (10, 2, 2),
            (11, 1, 3),
            (11, 2, 4),
            (12, 1, 5),
            (12, 3, 6),
            (10, 3, 100),  # warm user, new item
            (10, 1, 101),  # a repeat of a seen item: not a target
            (12, 2, 102),
            (13, 1, 103),  # cold user
            (13, 6, 104),  # cold item (no interactions before 100)
        ]
    )


def test_split_targets_and_slices(tiny: RecDataset) -> None:
    split = temporal_split(tiny, UNTIL)
    assert split.eval_users.tolist() == [10, 12, 13]
    assert [r.tolist() for r in split.relevant] == [[3], [2], [1, 6]]
    assert split.warm.tolist() == [True, True, False]
    assert split.cold_items.tolist() == [4, 5, 6]
    assert split.seen[10] == {1, 2}
    s = split.summary()
    assert (s["train_interactions"], s["test_interactions"], s["cold_item_users"]) == (6, 5, 1)


def test_popularity_known_answer(tiny: RecDataset) -> None:
    split = temporal_split(tiny, UNTIL)
    pop = PopularityRecommender(split.train, split.item_ids)
    ids, scores = pop.recommend(np.array([10, 13]), 3, exclude={10: {1, 2}})
    assert ids.tolist() == [[3, 4, 5], [1, 2, 3]]  # zero-popularity ties by item id
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    assert scores[1, 0] > scores[1, 1] > scores[1, 2]

    report = evaluate(split, [System("popularity", pop)], ks=(1, 5, 10))
    res = report["systems"]["popularity"]
    assert res["seen_violations"] == 0
    sl = res["slices"]
    # u10 -> 3 (hit), u12 -> 2 (hit), u13 -> 1 (one of two relevant).
    assert sl["all"]["recall@1"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert sl["warm_users"]["recall@1"] == pytest.approx(1.0)
    assert sl["cold_users"]["recall@1"] == pytest.approx(0.5)
    # Cold item 6 has zero popularity: rank 6 for user 13, so found at K=10 only.
    assert sl["cold_items"]["recall@5"] == 0.0
    assert sl["cold_items"]["recall@10"] == 1.0
    assert sl["warm_users"]["ndcg@10"] == pytest.approx(1.0)


def test_recent_popularity_counts_only_the_window_before_the_split(tiny: RecDataset) -> None:
    split = temporal_split(tiny, UNTIL)
    last = int(split.train["ts"].max())
    recent_items = set(split.train.loc[split.train["ts"] == last, "item_id"].tolist())
    trending = PopularityRecommender(split.train, split.item_ids, window_s=1)
    assert trending.name == "popularity-0d"
    ids, _ = trending.recommend(np.array([13]), len(recent_items))
    # A one-second window keeps only the last train timestamp's items; they lead the list.
    assert set(ids[0].tolist()) == recent_items
    everything = PopularityRecommender(split.train, split.item_ids, window_s=10**9)
    alltime = PopularityRecommender(split.train, split.item_ids)
    assert np.array_equal(everything.recommend(np.array([13]), 5)[0], alltime.recommend(
        np.array([13]), 5)[0])  # fmt: skip


def test_item_knn_follows_co_occurrence(tiny: RecDataset) -> None:
    split = temporal_split(tiny, UNTIL)
    knn = ItemKNNRecommender(split.train, split.item_ids)
    ids, scores = knn.recommend(np.array([10, 12]), 1, exclude={10: {1, 2}, 12: {1, 3}})
    # Item 3 co-occurs with 1 (user 12); item 2 with 1 twice (users 10, 11).
    assert ids[:, 0].tolist() == [3, 2]
    assert scores[0, 0] == pytest.approx(1 / np.sqrt(3), rel=1e-5)  # cos(1, 3) = 1/sqrt(3*1)
    assert scores[1, 0] == pytest.approx(2 / np.sqrt(6), rel=1e-5)  # cos(1, 2) = 2/sqrt(3*2)


def test_harness_counts_seen_items() -> None:
    class Careless:
        """Recommends item 1 to everyone and ignores `exclude`."""

        def recommend(self, user_ids, k, stage="full", exclude=None):  # type: ignore[no-untyped-def]
            ids = np.full((len(user_ids), k), -1, np.int64)
            ids[:, 0] = 1
            return ids, np.zeros((len(user_ids), k), np.float32)

    split = temporal_split(_tiny_rows(), UNTIL)
    res = evaluate(split, [System("careless", Careless())], ks=(1,))["systems"]["careless"]
    assert res["seen_violations"] == 2  # users 10 and 12 saw item 1 before the split


def _tiny_rows() -> RecDataset:
    return _dataset([(10, 1, 1), (12, 1, 2), (10, 2, 150), (12, 3, 160), (13, 1, 170)])


def test_split_rejects_empty_side(tiny: RecDataset) -> None:
    with pytest.raises(ValidationError, match="until"):
        temporal_split(tiny, 0)
    with pytest.raises(ValidationError, match="until"):
        temporal_split(tiny, 10_000)


@pytest.fixture(scope="module")
def ml100k(ml100k_dir: Path) -> RecDataset:
    from strata.datasets import load

    return load("movielens-100k", path=ml100k_dir)


def test_baselines_on_ml100k(ml100k: RecDataset, tmp_path: Path) -> None:
    split = temporal_split(ml100k, quantile_ts(ml100k, 0.8))
    systems = fit_baselines(split, seed=0)
    report = evaluate(split, systems, ks=(10, 50))
    n_items = len(split.item_ids)
    for name in ("popularity", "popularity-30d", "item-knn", "als"):
        res = report["systems"][name]
        assert res["seen_violations"] == 0
        # Far better than a random list (expected recall@50 = 50 / n_items).
        assert res["slices"]["all"]["recall@50"] > 3 * 50 / n_items
        assert 0 < res["slices"]["all"]["ndcg@10"] <= 1
        # Interaction-only baselines never reach items with no interactions before the split.
        assert res["slices"]["cold_items"]["recall@50"] == 0.0
    # More personalised lists cover more of the catalogue than one global list.
    cov = {
        n: report["systems"][n]["slices"]["warm_users"]["coverage@10"] for n in report["systems"]
    }
    assert cov["als"] > cov["popularity"] and cov["item-knn"] > cov["popularity"]

    report["dataset"] = "movielens-100k"
    json_path, png = write_report(report, tmp_path / "out")
    assert json.loads(json_path.read_text())["systems"]["als"]["slices"]["all"]["n_users"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "item-knn" in format_table(report)


def test_als_is_seeded(ml100k: RecDataset) -> None:
    split = temporal_split(ml100k, quantile_ts(ml100k, 0.9))
    users = split.eval_users[:50]
    a = ALSRecommender(split.train, split.item_ids, iterations=3, seed=7)
    b = ALSRecommender(split.train, split.item_ids, iterations=3, seed=7)
    assert np.array_equal(a.recommend(users, 10)[0], b.recommend(users, 10)[0])


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STRATA_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "strata.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_cli_evaluate(ml100k_dir: Path, strata_home: Path, ml100k: RecDataset) -> None:
    until = str(quantile_ts(ml100k, 0.8))
    out = strata_home / "report"
    args = ["evaluate", "--dataset", "movielens-100k", "--path", str(ml100k_dir)]
    proc = _cli(*args, "--until", until, "--json", "--out", str(out), home=strata_home)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert set(report["systems"]) >= {"popularity", "item-knn", "als"}
    assert "no serving model" in report["model_note"]  # empty home: baselines only
    assert (out / "report.json").is_file() and (out / "recall_at_k.png").is_file()

    bad = _cli(*args, "--until", "1", home=strata_home)
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("error: until:")
    assert len(bad.stderr.strip().splitlines()) == 1
