"""DCN-v2 ranker: shapes for every structure/cross kind and learning a planted signal."""

from __future__ import annotations

import numpy as np
import pytest

from strata.models.batch import synthetic_rank_batches
from strata.models.dcn import DCNConfig, DCNRanker
from strata.models.infer import rank_inputs, score_ranker
from strata.models.inputs import FeatureDims
from strata.models.layers import CrossNetConfig, MLPConfig
from strata.training.loops import ranker_loop, seed_everything
from strata.training.metrics import auc

DIMS = FeatureDims(n_users=30, n_items=40, text_dim=4, image_dim=4, hist_len=4)


@pytest.mark.parametrize("structure", ["stacked", "parallel"])
@pytest.mark.parametrize("kind", ["full", "low_rank", "mixture"])
def test_shapes(structure: str, kind: str) -> None:
    cfg = DCNConfig(structure=structure, cross=CrossNetConfig(kind=kind, rank=4))  # type: ignore[arg-type]
    m = DCNRanker(DIMS, cfg)
    b = next(synthetic_rank_batches(DIMS, 6, 1))
    assert m(*rank_inputs(b)).shape == (6,)


def test_ranker_learns_interaction_signal() -> None:
    seed_everything(0)
    small = DCNConfig(deep=MLPConfig(hidden=(32,)), cross=CrossNetConfig(kind="low_rank", rank=8))
    m = DCNRanker(DIMS, small)
    train = list(synthetic_rank_batches(DIMS, 256, 20, seed=1))
    test = next(synthetic_rank_batches(DIMS, 2000, 1, seed=2))
    before = auc(test.label, score_ranker(m, test))
    ranker_loop(m, lambda e, rng: train, 4, lr=1e-2)
    after = auc(test.label, score_ranker(m, test))
    # The label depends on the retrieval score and on (user, item) parity: both learnable.
    assert after > 0.75 and after > before + 0.1
    assert np.isfinite(score_ranker(m, test)).all()


def test_fusion_adds_retrieval_logit_only_when_scoring() -> None:
    seed_everything(0)
    b = next(synthetic_rank_batches(DIMS, 16, 1))
    plain = DCNRanker(DIMS, DCNConfig())
    fused = DCNRanker(DIMS, DCNConfig(score_weight=20.0))
    fused.load_state_dict(plain.state_dict())  # same network, only the fusion differs
    plain.eval()
    fused.train()  # training fits the network alone
    assert np.allclose(fused(*rank_inputs(b)).detach(), plain(*rank_inputs(b)).detach())
    fused.eval()  # scoring/export/serving: network logit + weight * retrieval score
    want = plain(*rank_inputs(b)).detach().numpy() + 20.0 * b.retrieval_score
    assert np.allclose(fused(*rank_inputs(b)).detach().numpy(), want, atol=1e-5)


def test_popularity_prior_adds_item_column_only_when_scoring() -> None:
    seed_everything(0)
    b = next(synthetic_rank_batches(DIMS, 16, 1))
    col = 1
    plain = DCNRanker(DIMS, DCNConfig(score_weight=3.0))
    prior = DCNRanker(DIMS, DCNConfig(score_weight=3.0, prior_weight=7.5, prior_col=col))
    prior.load_state_dict(plain.state_dict())
    plain.train()
    prior.train()  # the network is fitted without the prior
    assert np.allclose(prior(*rank_inputs(b)).detach(), plain(*rank_inputs(b)).detach())
    plain.eval()
    prior.eval()
    want = plain(*rank_inputs(b)).detach().numpy() + 7.5 * b.item.item_num[:, col]
    assert np.allclose(prior(*rank_inputs(b)).detach().numpy(), want, atol=1e-5)
    # The prior reorders items by that column alone: a large weight sorts by it.
    strong = DCNRanker(DIMS, DCNConfig(prior_weight=1e4, prior_col=col))
    strong.load_state_dict(plain.state_dict())
    strong.eval()
    order = np.argsort(-strong(*rank_inputs(b)).detach().numpy())
    assert (np.diff(b.item.item_num[order, col]) <= 1e-3).all()


def test_popularity_prior_column_must_exist() -> None:
    with pytest.raises(ValueError, match="prior_col"):
        DCNRanker(DIMS, DCNConfig(prior_weight=1.0, prior_col=DIMS.item_num_dim))
