"""CTR models and training: shapes, streaming pieces, training + export + registry, incremental,
the hashed-LR baseline, and the `strata ctr` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from strata.config import CtrModelConfig, Settings
from strata.ctr.artifacts import ctr_registry, load_version_model, publish
from strata.ctr.data import CtrSource, Reservoir, _block_shuffled, temporal_split
from strata.ctr.model import CtrModel
from strata.ctr.preprocess import CtrBatch
from strata.ctr.train import incremental_train, predict_proba, train_ctr
from strata.errors import DataError
from strata.models.layers import CrossNet, CrossNetV2
from tests.unit.ctr_support import synthetic_frame, synthetic_parquet, tiny_cfg


def test_classic_dcn_and_dcnv2_are_built_from_shared_layers() -> None:
    classic = CtrModel(26, [10] * 26, CtrModelConfig())
    assert isinstance(classic.cross, CrossNet) and len(classic.cross.w) == 6
    linears = [m for m in classic.deep.modules() if isinstance(m, torch.nn.Linear)]
    drops = [m for m in classic.deep.modules() if isinstance(m, torch.nn.Dropout)]
    assert [m.out_features for m in linears] == [1024, 1024] and drops[0].p == 0.5
    assert classic.emb.embedding_dim == 16 and classic.in_dim == 26 + 26 * 16
    v2 = CtrModel(
        26, [10] * 26, CtrModelConfig(type="dcnv2", deep=(8,), cross_layers=2, low_rank=4)
    )
    assert isinstance(v2.cross, CrossNetV2)
    stacked = CtrModel(26, [5] * 26, CtrModelConfig(deep=(8,), structure="stacked", emb_dim=4))
    for m in (v2, stacked):
        out = m(torch.randn(3, 26), torch.randint(0, 5, (3, 26)))
        assert out.shape == (3,) and torch.isfinite(out).all()


def test_split_reservoir_and_shuffle() -> None:
    s = temporal_split(1000, 0.1, 0.1)
    assert s.train == (0, 800) and s.valid == (800, 900) and s.test == (900, 1000)
    with pytest.raises(DataError):
        temporal_split(2, 0.4, 0.4)
    rng = np.random.default_rng(0)
    chunks = [
        CtrBatch(
            np.full((n, 1), i, np.float32), np.arange(o, o + n)[:, None], np.zeros(n, np.float32)
        )
        for i, (o, n) in enumerate([(0, 70), (70, 55), (125, 90)])
    ]
    got = np.concatenate([b.cats[:, 0] for b in _block_shuffled(chunks, 100, 32, rng)])
    assert sorted(got.tolist()) == list(range(215)) and got.tolist() != list(range(215))
    res = Reservoir(50, seed=1)
    for b in chunks:
        res.add(b)
    sample = res.sample()
    assert sample is not None and len(sample) == 50 and len(set(sample.cats[:, 0])) == 50
    assert (sample.cats[:, 0] >= 125).any()  # later chunks get a chance too


def test_source_reads_ranges_in_order(tmp_path: Path) -> None:
    src = CtrSource(synthetic_parquet(tmp_path, 500, seed=3))
    parts = list(src.iter_range(120, 410, 100))
    assert sum(len(p) for p in parts) == 290 and max(len(p) for p in parts) <= 100
    with pytest.raises(DataError):
        CtrSource(tmp_path / "missing.parquet")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("ctr-train")
    settings = Settings(home=tmp / "home", ctr=tiny_cfg())
    src = CtrSource(synthetic_parquet(tmp, 6000, seed=1))
    result = train_ctr(src, settings.ctr, seed=0)
    registry = ctr_registry(settings)
    version = publish(result, registry)
    return settings, result, registry, version


def test_training_learns_and_exports(trained) -> None:
    _settings, result, registry, version = trained
    m = result.metrics
    assert m["test"]["rows"] == 600 and m["test"]["auc"] > 0.6  # random would be 0.5
    assert registry.serving() == version and registry.manifest()["kind"] == "ctr"
    registry.verify(version)
    from strata.ctr.service import ServedModel

    served = ServedModel.load(registry.path(version))
    model, prep, _meta = load_version_model(registry.path(version))
    batch = prep.transform(synthetic_frame(200, seed=9))
    assert np.abs(served.predict(batch) - predict_proba(model, batch)).max() < 1e-4
    assert served.reference_auc == pytest.approx(m["test"]["auc"])


def test_incremental_gate(trained) -> None:
    settings, _result, registry, version = trained
    recent = registry_prep(registry, version).transform(synthetic_frame(600, seed=7, drift=True))
    out = incremental_train(registry.path(version), recent, settings.ctr, seed=0)
    assert out.rows_holdout == 120 and out.rows_recent == 480 and out.rows_replay > 0
    assert out.promoted == (out.new_auc >= out.old_auc)
    assert (out.result is not None) == out.promoted
    strict = settings.ctr.model_copy(
        update={"incremental": settings.ctr.incremental.model_copy(update={"min_gain": 0.5})}
    )
    assert not incremental_train(registry.path(version), recent, strict, seed=0).promoted
    with pytest.raises(DataError):
        incremental_train(registry.path(version), recent.take(slice(0, 5)), settings.ctr)


def registry_prep(registry, version):
    return load_version_model(registry.path(version))[1]


def test_hashed_lr_baseline_learns(tmp_path: Path) -> None:
    from strata.ctr.baseline import HashedLRConfig, fit_hashed_lr, hash_features
    from strata.training.metrics import auc

    df = synthetic_frame(6000, seed=2)
    ids = hash_features(df.iloc[:10], 12)
    assert ids.shape == (10, 39) and ids.min() >= 0 and ids.max() < 4096
    train, valid, test = df.iloc[:5000], df.iloc[5000:5500], df.iloc[5500:]
    lr, valid_auc = fit_hashed_lr(lambda: [train], valid, HashedLRConfig(n_bits=16, epochs=3))
    assert valid_auc > 0.6
    assert auc(test["label"].to_numpy(), lr.predict(test)) > 0.6


def test_hashed_lr_is_deterministic_and_its_grid_fits_in_one_pass(monkeypatch) -> None:
    from strata.ctr import baseline
    from strata.ctr.baseline import HashedLRConfig, fit_hashed_lr, fit_hashed_lrs, hash_features

    df = synthetic_frame(2500, seed=3)
    train, valid = df.iloc[:2000], df.iloc[2000:]
    ids = hash_features(df, 16)
    assert ids.dtype == np.int32 and (hash_features(df.iloc[::-1], 16)[::-1] == ids).all()
    # Tokens are per field: equal values in two fields, or a value and its field's missing
    # token, hash apart; "" and a null are the same missing token.
    twin = df.iloc[:3].copy()
    twin["C2"], twin.loc[twin.index[0], "C1"], twin.loc[twin.index[1], "C1"] = twin["C1"], "", None
    tw = hash_features(twin, 16)
    assert (tw[:, 13] != tw[:, 14])[2] and tw[0, 13] == tw[1, 13] != tw[2, 13]
    with pytest.raises(ValueError, match="n_bits"):
        hash_features(df, 32)
    cfgs = [HashedLRConfig(n_bits=16, lr=lr, epochs=3, seed=1) for lr in (0.01, 0.003)]
    chunks = lambda: (train.iloc[i : i + 700] for i in range(0, len(train), 700))  # noqa: E731
    together = fit_hashed_lrs(chunks, valid, cfgs)
    for cfg, (lr, valid_auc) in zip(cfgs, together, strict=True):
        alone, alone_auc = fit_hashed_lr(chunks, valid, cfg)  # same seed: the same model
        assert alone_auc == valid_auc and np.array_equal(alone.weights, lr.weights)
    # Re-hashing every epoch (data too large to keep hashed) gives the same model too.
    monkeypatch.setattr(baseline, "_CACHE_TOKENS", 0)
    streamed, streamed_auc = fit_hashed_lr(chunks, valid, cfgs[0])
    assert streamed_auc == together[0][1]
    assert np.array_equal(streamed.weights, together[0][0].weights)
    with pytest.raises(ValueError, match="share"):
        fit_hashed_lrs(chunks, valid, [cfgs[0], HashedLRConfig(n_bits=16, seed=2)])


def test_cli_train_evaluate_and_errors(tmp_path: Path, strata_home: Path, monkeypatch) -> None:
    from strata.cli import app, main
    from strata.datasets.criteo_synthetic import write_criteo_tsv

    tsv = tmp_path / "small.tsv"
    write_criteo_tsv(synthetic_frame(1500, seed=4), tsv)
    # Small layers through the environment, exactly as a user would configure them.
    monkeypatch.setenv("STRATA_CTR__MODEL__DEEP", "[16]")
    monkeypatch.setenv("STRATA_CTR__MODEL__CROSS_LAYERS", "2")
    monkeypatch.setenv("STRATA_CTR__MODEL__EMB_DIM", "4")
    monkeypatch.setenv("STRATA_CTR__PREPROCESS__MIN_COUNT", "2")
    runner = CliRunner()
    r = runner.invoke(
        app, ["ctr", "train", "--data", str(tsv), "--model", "dcnv2", "--epochs", "1"]
    )
    assert r.exit_code == 0, r.output
    trained = json.loads(r.stdout)
    assert trained["version"] == "v0001" and trained["model"] == "dcnv2"
    r = runner.invoke(app, ["ctr", "evaluate", "--data", str(tsv), "--json"])
    assert r.exit_code == 0, r.output
    ev = json.loads(r.stdout)
    assert ev["rows"] == 1500 and 0.5 < ev["auc"] <= 1.0 and ev["logloss"] > 0
    # Domain errors: exit code 2 and one line.
    monkeypatch.setattr(
        "sys.argv", ["strata", "ctr", "evaluate", "--data", str(tmp_path / "no.tsv")]
    )
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    monkeypatch.setattr(
        "sys.argv", ["strata", "ctr", "train", "--data", str(tsv), "--model", "xgb"]
    )
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2


def test_criteo_8k_beats_hashed_lr(criteo_8k: Path, tmp_path: Path) -> None:
    """On the real 8k rows, a small regularised DCN is not worse than hashed LR (same split)."""
    from strata.ctr.baseline import evaluate_hashed_lr_baseline
    from strata.ctr.data import resolve_source

    cfg = tiny_cfg()
    cfg = cfg.model_copy(
        update={
            "preprocess": cfg.preprocess.model_copy(update={"min_count": 10}),
            "model": cfg.model.model_copy(update={"deep": (64, 32), "emb_dim": 8}),
            "train": cfg.train.model_copy(
                update={"epochs": 3, "read_rows": 8192, "shuffle_buffer": 8192}
            ),
        }
    )
    src = resolve_source(criteo_8k, Settings(home=tmp_path))
    res = train_ctr(src, cfg, seed=0)
    split = temporal_split(src.rows, cfg.train.valid_fraction, cfg.train.test_fraction)
    base = evaluate_hashed_lr_baseline(src, split, 8192)
    assert res.metrics["test"]["rows"] == base["rows"] == 800
    assert res.metrics["test"]["auc"] >= base["auc"] - 0.01
