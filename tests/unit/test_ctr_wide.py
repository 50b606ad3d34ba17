"""The wide (first-order) part of the CTR model: built and zero at start, trained, exported to the
same ONNX inputs with parity, older versions without it still load, and where the signal is
linear in the ids it does at least as well as the networks alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from strata.config import CtrConfig, CtrModelConfig
from strata.ctr.artifacts import CTR_META, CtrTrainResult, load_version_model, write_artifacts
from strata.ctr.data import CtrSource
from strata.ctr.model import CtrModel, WideLinear
from strata.ctr.preprocess import fit_preprocessor
from strata.ctr.train import build_model, predict_proba, train_ctr
from tests.unit.ctr_support import synthetic_frame, tiny_cfg


def _with_model(cfg: CtrConfig, **update: object) -> CtrConfig:
    return cfg.model_copy(update={"model": cfg.model.model_copy(update=update)})


def test_wide_part_is_configurable_and_starts_at_zero() -> None:
    cards = [7] * 26
    on = CtrModel(26, cards, CtrModelConfig(deep=(8,), cross_layers=1, wide_cross_buckets=101))
    assert isinstance(on.wide, WideLinear)
    assert on.wide.ids.num_embeddings == sum(cards)
    assert on.wide.buckets is not None and on.wide.buckets.num_embeddings == 26 * 16
    assert on.wide.cross is not None and len(on.wide.cross_i) == 26 * 25 // 2
    assert all(bool((p == 0).all()) for p in on.wide.parameters())
    off = CtrModel(26, cards, CtrModelConfig(deep=(8,), cross_layers=1, wide=False))
    assert off.wide is None
    # Zero at start: the same network weights give the same logits with or without the wide part.
    off.load_state_dict({k: v for k, v in on.state_dict().items() if not k.startswith("wide.")})
    dense, cats = torch.randn(5, 26), torch.randint(0, 7, (5, 26))
    on.eval(), off.eval()
    assert torch.allclose(on(dense, cats), off(dense, cats))
    # Each term moves the logit once it has weight.
    with torch.no_grad():
        on.wide.ids.weight.fill_(0.1)
    assert torch.allclose(on(dense, cats), off(dense, cats) + 26 * 0.1, atol=1e-5)
    with pytest.raises(ValueError):
        CtrModelConfig(wide_int_buckets=-1)


def test_wide_exports_with_parity_and_old_versions_load(tmp_path: Path) -> None:
    from strata.ctr.service import ServedModel

    cfg = _with_model(tiny_cfg(), wide_cross_buckets=997)
    frame = synthetic_frame(600, seed=5)
    prep = fit_preprocessor([frame], cfg.preprocess)
    model = build_model(prep, cfg.model)
    assert model.wide is not None
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # trained-looking weights so the parity check means something
        for p in model.wide.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    result = CtrTrainResult(model, prep, cfg, {}, None, None)
    meta = write_artifacts(result, tmp_path / "v")
    assert meta["onnx_max_abs_diff"] < 1e-4 and meta["model"]["wide"] is True
    batch = prep.transform(synthetic_frame(300, seed=6))
    served = ServedModel.load(tmp_path / "v")
    torch_p = predict_proba(model, batch)
    assert np.abs(served.predict(batch) - torch_p).max() < 1e-4
    loaded, _prep, _meta = load_version_model(tmp_path / "v")
    assert np.abs(predict_proba(loaded, batch) - torch_p).max() < 1e-6

    # A version written before the wide part existed: its ctr.json has no wide keys.
    old_cfg = _with_model(tiny_cfg(), wide=False)
    write_artifacts(CtrTrainResult(build_model(prep, old_cfg.model), prep, old_cfg, {}, None, None),
                    tmp_path / "old")  # fmt: skip
    meta_path = tmp_path / "old" / CTR_META
    old_meta = json.loads(meta_path.read_text())
    old_meta["model"] = {k: v for k, v in old_meta["model"].items() if not k.startswith("wide")}
    meta_path.write_text(json.dumps(old_meta))
    old_model, _, _ = load_version_model(tmp_path / "old")
    assert old_model.wide is None


def _linear_world(n: int, seed: int) -> pd.DataFrame:
    """Synthetic Criteo rows relabelled by a first-order truth: an effect per value of four
    categorical columns plus a slope in one integer, nothing else."""
    df = synthetic_frame(n, seed=seed)
    rng = np.random.default_rng(seed)
    logit = np.full(n, -1.3)
    for col in ("C2", "C3", "C4", "C6"):
        codes, uniques = pd.factorize(df[col].fillna("<na>"))
        logit += rng.normal(0.0, 1.2, len(uniques))[codes]
    i1 = np.log1p(df["I1"].astype("float64").fillna(0.0).clip(lower=0.0).to_numpy())
    logit += 0.6 * (i1 - i1.mean())
    df["label"] = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)
    return df


def test_wide_is_trained_and_not_worse_where_the_signal_is_linear(tmp_path: Path) -> None:
    path = tmp_path / "linear.parquet"
    _linear_world(6000, seed=3).to_parquet(path, index=False)
    src = CtrSource(path)
    base = tiny_cfg()
    base = base.model_copy(update={"train": base.train.model_copy(update={"epochs": 3})})
    aucs = {}
    for wide in (False, True):
        res = train_ctr(src, _with_model(base, wide=wide), seed=0)
        aucs[wide] = res.metrics["test"]["auc"]
        if wide:
            assert res.model.wide is not None
            w = res.model.wide.ids.weight.detach()
            assert float(w.abs().max()) > 0.01  # trained away from its zero start
    # The wide part holds the per-id effects directly: at least as good as the networks alone.
    # (0.670 vs 0.648 when written.)
    assert aucs[True] >= aucs[False], aucs
    assert aucs[True] > 0.62, aucs


def test_table_sizes_follow_the_preprocess_settings() -> None:
    """Rows per column: min(max_vocab, values seen >= min_count) + 2, or hash_buckets + 2 once a
    column passes hash_threshold distinct values; the wide part shares the same row space."""
    from strata.config import CtrPreprocessConfig
    from strata.ctr.preprocess import CAT_COLUMNS

    frame = synthetic_frame(2000, seed=8)
    cfg = CtrPreprocessConfig(min_count=2, max_vocab=5, hash_threshold=400, hash_buckets=31)
    prep = fit_preprocessor([frame], cfg)
    expected = []
    for c in CAT_COLUMNS:
        counts = frame[c].dropna().value_counts()
        if len(counts) > cfg.hash_threshold:
            expected.append(cfg.hash_buckets + 2)
        else:
            expected.append(min(cfg.max_vocab, int((counts >= cfg.min_count).sum())) + 2)
    assert prep.cardinalities == expected
    assert cfg.hash_buckets + 2 in expected and cfg.max_vocab + 2 in expected
    model = build_model(prep, CtrModelConfig(deep=(8,), cross_layers=1, emb_dim=4))
    assert model.emb.num_embeddings == sum(expected)
    assert model.wide is not None and model.wide.ids.num_embeddings == sum(expected)
