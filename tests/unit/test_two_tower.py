"""Query/item towers and two-tower training on synthetic batches."""

from __future__ import annotations

import numpy as np
import torch

from strata.models.batch import synthetic_batches, synthetic_items, synthetic_queries
from strata.models.infer import embed_items, embed_queries
from strata.models.inputs import FeatureDims
from strata.models.layers import MLPConfig
from strata.models.two_tower import TwoTower, TwoTowerConfig
from strata.training.loops import seed_everything, two_tower_loop
from strata.training.masking import mask_query

DIMS = FeatureDims(n_users=40, n_items=60, text_dim=8, image_dim=6, hist_len=5)


def test_towers_output_unit_vectors() -> None:
    seed_everything(0)
    m = TwoTower(DIMS, TwoTowerConfig(out_dim=16))
    rng = np.random.default_rng(0)
    q = embed_queries(m, synthetic_queries(DIMS, 7, rng))
    i = embed_items(m, synthetic_items(DIMS, rng.integers(0, 60, 9)))
    assert q.shape == (7, 16) and i.shape == (9, 16)
    assert np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    assert np.allclose(np.linalg.norm(i, axis=1), 1.0, atol=1e-5)


def test_item_tower_scores_the_same_items_as_of_several_times_at_once() -> None:
    seed_everything(0)
    m = TwoTower(DIMS, TwoTowerConfig(out_dim=8))
    it = synthetic_items(DIMS, np.random.default_rng(2).integers(1, 60, 5))
    g = np.random.default_rng(3).normal(size=(3, 5, it.item_num.shape[1])).astype(np.float32)
    feats = list(it.tensors())
    feats[2] = torch.from_numpy(g)  # item_num: (G, M, Ni)
    with torch.no_grad():
        grouped = m.item_tower(*feats)  # (G, M, D)
        one_by_one = []
        for k in range(3):
            feats[2] = torch.from_numpy(g[k])
            one_by_one.append(m.item_tower(*feats))
    assert grouped.shape == (3, 5, 8)
    assert torch.allclose(grouped, torch.stack(one_by_one), atol=1e-6)
    assert not torch.allclose(grouped[0], grouped[1])  # the times really differ


def test_masked_users_depend_only_on_demographics_and_context() -> None:
    seed_everything(0)
    m = TwoTower(DIMS, TwoTowerConfig(out_dim=8))
    rng = np.random.default_rng(1)
    q = synthetic_queries(DIMS, 2, rng)
    q = q.take(np.array([0, 0]))
    q = type(q)(**{**q.__dict__, "user": np.array([3, 9]), "hist": np.array([[1] * 5, [2] * 5])})
    masked = mask_query(q, 1.0, rng)
    e = embed_queries(m, masked)
    assert np.allclose(e[0], e[1])
    assert not np.allclose(embed_queries(m, q)[0], embed_queries(m, q)[1])


def test_training_learns_planted_preferences_deterministically() -> None:
    def run() -> tuple[list[float], np.ndarray]:
        seed_everything(0)
        cfg = TwoTowerConfig(out_dim=16, learn_temperature=True, mlp=MLPConfig(hidden=(32,)))
        m = TwoTower(DIMS, cfg)
        batches = list(synthetic_batches(DIMS, 64, 12, seed=3))
        hist = two_tower_loop(m, lambda e, rng: batches, 3, lr=1e-2, p_user=0.1, p_item=0.1)
        return hist, embed_items(m, synthetic_items(DIMS, np.arange(60)))

    h1, e1 = run()
    h2, e2 = run()
    assert h1[-1] < h1[0] - 0.15
    assert h1 == h2 and np.array_equal(e1, e2)


def test_frozen_item_tower_does_not_move() -> None:
    seed_everything(0)
    m = TwoTower(DIMS, TwoTowerConfig(out_dim=8))
    before = {k: v.clone() for k, v in m.item_tower.state_dict().items()}
    q_before = m.query_tower.mlp.net[0].weight.clone()
    batches = list(synthetic_batches(DIMS, 32, 5, seed=1))
    two_tower_loop(m, lambda e, rng: batches, 1, freeze_items=True)
    for k, v in m.item_tower.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(m.query_tower.mlp.net[0].weight, q_before)
    assert all(p.requires_grad for p in m.item_tower.parameters())
