"""ONNX export of the query tower and ranker, checked against torch; item embeddings files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
import pytest
import torch

from strata.errors import DataError
from strata.models.batch import RankBatch, synthetic_items, synthetic_queries
from strata.models.dcn import DCNConfig, DCNRanker
from strata.models.infer import rank_inputs
from strata.models.inputs import QUERY_INPUTS, FeatureDims
from strata.models.two_tower import TwoTower, TwoTowerConfig
from strata.models.weights import load_state, save_state
from strata.training.export import RANKER_INPUTS, export_onnx, write_item_embeddings

DIMS = FeatureDims(n_users=20, n_items=30, text_dim=8, image_dim=6, hist_len=4)


def test_query_tower_onnx_matches_torch_and_has_dynamic_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tower = TwoTower(DIMS, TwoTowerConfig(out_dim=16)).query_tower
    rng = np.random.default_rng(0)
    q = synthetic_queries(DIMS, 8, rng)
    diff = export_onnx(tower, q.tensors(), QUERY_INPUTS, tmp_path / "q.onnx", "query_embedding")
    assert diff <= 1e-4
    # A different batch size runs through the same graph and still matches.
    q3 = synthetic_queries(DIMS, 3, rng)
    sess = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {n: t.numpy() for n, t in zip(QUERY_INPUTS, q3.tensors(), strict=True)})
    with torch.no_grad():
        want = tower(*q3.tensors()).numpy()
    assert got[0].shape == (3, 16) and np.abs(got[0] - want).max() <= 1e-4


def _rank_batch() -> RankBatch:
    rng = np.random.default_rng(1)
    return RankBatch(
        synthetic_queries(DIMS, 8, rng),
        synthetic_items(DIMS, rng.integers(0, 30, 8)),
        rng.normal(size=8).astype(np.float32),
        np.zeros(8, np.float32),
    )


def test_ranker_onnx_matches_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ranker = DCNRanker(DIMS, DCNConfig())
    b = _rank_batch()
    assert export_onnx(ranker, rank_inputs(b), RANKER_INPUTS, tmp_path / "r.onnx", "logit") <= 1e-4


def test_ranker_onnx_carries_fusion_and_popularity_prior(tmp_path: Path) -> None:
    """The served graph holds all three experts: network + retrieval logit + log-prior."""
    torch.manual_seed(0)
    cfg = DCNConfig(score_weight=20.0, prior_weight=40.0, prior_col=1)
    ranker, plain = DCNRanker(DIMS, cfg), DCNRanker(DIMS, DCNConfig())
    plain.load_state_dict(ranker.state_dict())
    b = _rank_batch()
    path = tmp_path / "r.onnx"
    assert export_onnx(ranker, rank_inputs(b), RANKER_INPUTS, path, "logit") <= 1e-4
    feeds = {n: t.numpy() for n, t in zip(RANKER_INPUTS, rank_inputs(b), strict=True)}
    got = ort.InferenceSession(str(path)).run(None, feeds)[0]
    with torch.no_grad():
        net = plain.eval()(*rank_inputs(b)).numpy()
    want = net + 20.0 * b.retrieval_score + 40.0 * b.item.item_num[:, 1]
    assert np.abs(got - want).max() <= 1e-3


def test_weights_roundtrip_and_missing_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    a, b = TwoTower(DIMS, TwoTowerConfig()), TwoTower(DIMS, TwoTowerConfig())
    save_state(a, tmp_path / "w.safetensors")
    load_state(b, tmp_path / "w.safetensors")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    with pytest.raises(DataError):
        load_state(b, tmp_path / "absent.safetensors")


def test_item_embeddings_npy_and_parquet(tmp_path: Path) -> None:
    emb = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    ids = np.array([10, 11, 12, 13, 14])
    write_item_embeddings(tmp_path, ids, emb)
    assert np.array_equal(np.load(tmp_path / "item_embeddings.npy"), emb)
    t = pq.read_table(tmp_path / "item_embeddings.parquet").to_pydict()
    assert t["item_id"] == ids.tolist()
    assert np.allclose(np.array(t["embedding"], dtype=np.float32), emb)
