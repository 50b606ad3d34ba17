"""End to end on ML-100K: train on the first 80% of time, beat popularity on warm users, serve cold
users something personalised (skips without the shared data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from strata.config import Settings, TrainingConfig
from strata.datasets.movielens import read_movielens_100k
from strata.training.metrics import recall_at_k
from strata.training.recommender import load_recommender
from strata.training.train import Tables, train

pytestmark = pytest.mark.e2e


def _recall(recs: np.ndarray, users: np.ndarray, targets: dict[int, set[int]], k: int) -> float:
    return recall_at_k(recs, [targets[int(u)] for u in users], k)


def test_train_beats_popularity_on_warm_users(ml100k_dir: Path, tmp_path: Path) -> None:
    ds = read_movielens_100k(ml100k_dir)
    ev = ds.interactions
    until = int(np.quantile(ev["ts"].to_numpy(), 0.8))
    s = Settings(
        home=tmp_path,
        training=TrainingConfig(epochs=3),
    )
    res = train(s, "movielens-100k", until=until, tables=Tables(ds.users, ds.items, ev, None))
    rec = load_recommender(s, "movielens-100k", res.version)
    before, after = ev[ev["ts"] < until], ev[ev["ts"] >= until]
    targets = after.groupby("user_id")["item_id"].apply(lambda x: set(x.tolist())).to_dict()
    warm_mask = np.isin(np.array(list(targets)), before["user_id"].unique())
    users = np.array(list(targets), dtype=np.int64)
    warm, cold = users[warm_mask], users[~warm_mask]
    assert len(warm) > 50 and len(cold) > 50

    # Popularity baseline in the same protocol: most-rated items before `until`, minus seen.
    pop = before["item_id"].value_counts().index.to_numpy()
    seen = before.groupby("user_id")["item_id"].apply(set).to_dict()
    pop_recs = np.array([[i for i in pop if i not in seen.get(u, set())][:10] for u in warm])
    pop_recall = _recall(pop_recs, warm, targets, 10)

    full, _ = rec.recommend(warm, 10, stage="full")
    retr, _ = rec.recommend(warm, 10, stage="retrieval")
    full_recall = _recall(full, warm, targets, 10)
    print(f"warm recall@10 full={full_recall:.4f} retrieval={_recall(retr, warm, targets, 10):.4f}"
          f" popularity={pop_recall:.4f}")  # fmt: skip
    assert full_recall > pop_recall

    cold_recs, _ = rec.recommend(cold, 10, stage="full")
    cold_recall = _recall(cold_recs, cold, targets, 10)
    distinct = len({tuple(r) for r in cold_recs.tolist()})
    print(f"cold recall@10 full={cold_recall:.4f}; distinct lists {distinct}/{len(cold)}")
    # Cold users are served from demographics + context: useful and not one global list.
    assert cold_recall > 0.02 and distinct > 1
    assert (cold_recs >= 0).all()
