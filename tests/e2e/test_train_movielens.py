"""End to end on ML-100K: offline store -> text content -> train on the first 80% of time ->
the evaluation harness against the baselines (skips without the shared data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from strata.config import Settings, TrainingConfig
from strata.training.content import encode_and_store
from strata.training.data import prepare_store
from strata.training.evaluate import format_table, quantile_ts, run_evaluation
from strata.training.recommender import load_recommender
from strata.training.train import train

pytestmark = pytest.mark.e2e

DATASET = "movielens-100k"


def test_train_beats_baselines_on_warm_users(ml100k_dir: Path, tmp_path: Path) -> None:
    s = Settings(home=tmp_path, training=TrainingConfig(epochs=3))
    prepare_store(s, DATASET)  # ingests from the loader: the store is the only feature source
    # Text content only (posters would add minutes); cold items then rely on titles/genres.
    encode_and_store(s, DATASET, path=ml100k_dir)
    from strata.datasets import load

    until = quantile_ts(load(DATASET, path=ml100k_dir, settings=s), 0.8)
    res = train(s, DATASET, until=until)
    report = run_evaluation(s, DATASET, until, path=ml100k_dir, ks=(10, 50))
    print(format_table(report))
    systems = report["systems"]

    def ndcg(name: str, sl: str) -> float:
        return float(systems[name]["slices"][sl]["ndcg@10"])

    # The aims at NDCG@10: the full pipeline beats every baseline on warm users (0.232
    # vs ALS 0.166 measured at these 3 epochs without posters) and popularity on cold users
    # (0.518 vs 0.451: the popularity prior, DCNConfig.prior_weight), not with one global list.
    for base in ("popularity", "item-knn", "als"):
        assert ndcg("model-full", "warm_users") > ndcg(base, "warm_users"), base
    assert ndcg("model-full", "cold_users") > ndcg("popularity", "cold_users")
    assert all(systems[n]["seen_violations"] == 0 for n in systems)
    # Fresh-item slots put items without training interactions in front of users: the full
    # pipeline finds held-out interactions with them (0.47 measured), retrieval alone does not.
    cold_r50 = {n: float(systems[n]["slices"]["cold_items"]["recall@50"]) for n in systems}
    assert cold_r50["model-full"] > 0.1 and cold_r50["model-full"] > 5 * cold_r50["model-retrieval"]
    rec = load_recommender(s, DATASET, res.version)
    cold_users = np.array(sorted(set(rec.space.user_ids.tolist())
                                 - set(rec.seen.keys >> 32)))[:50]  # fmt: skip
    cold_recs, _ = rec.recommend(cold_users, 10)
    assert (cold_recs >= 0).all() and len({tuple(r) for r in cold_recs.tolist()}) > 1
    # Items never seen in training get the unknown id, so their vectors come from content and
    # metadata alone: distinct per item, spread like the warm items'. (Whether content then ranks
    # them well is measured, not asserted: near random among fresh items, see README.)
    from strata.models.infer import embed_items
    from strata.training.evaluate import temporal_split

    split = temporal_split(load(DATASET, path=ml100k_dir, settings=s), until)
    is_cold = np.isin(rec.space.item_ids, split.cold_items)
    assert (rec.space.all_items().item[is_cold] == 0).all()
    emb = embed_items(rec.two_tower, rec.space.all_items())
    spread = emb.std(axis=0).sum()
    assert emb[is_cold].std(axis=0).sum() > 0.3 * spread
    # (ML-100K lists a few titles twice: identical content, identical vector.)
    assert len(np.unique(emb[is_cold].round(4), axis=0)) >= 0.9 * is_cold.sum()
