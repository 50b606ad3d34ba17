"""The CTR baseline gate: `strata ctr train` fits a hashed LR on the same rows and serves the DCN
only if its validation AUC beats the LR's; a refused version is recorded (both AUCs, decision,
reason), not served, and the command exits 3 with one line; `--force` serves it and says so."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from strata.config import CtrConfig, Settings
from strata.ctr.artifacts import ctr_registry
from strata.errors import EXIT_NOT_PROMOTED
from strata.training.gates import ctr_baseline_gate
from tests.unit.ctr_support import linear_world, synthetic_frame, tiny_cfg


def test_gate_needs_strictly_more_than_the_baseline_plus_the_gain() -> None:
    assert ctr_baseline_gate(0.71, 0.70, 0.0).accepted
    tie = ctr_baseline_gate(0.70, 0.70, 0.0)
    assert not tie.accepted
    assert tie.reasons == ["DCN validation AUC 0.7000 <= hashed LR 0.7000 + min gain 0.0"]
    assert not ctr_baseline_gate(0.69, 0.70, 0.0).accepted
    assert not ctr_baseline_gate(0.705, 0.70, 0.01).accepted  # better, but not by the gain
    assert ctr_baseline_gate(0.695, 0.70, -0.01).accepted  # a tolerated deficit
    assert not ctr_baseline_gate(math.nan, 0.70, 0.0).accepted
    assert not ctr_baseline_gate(0.70, math.nan, -1.0).accepted
    named = ctr_baseline_gate(0.60, 0.65, 0.0, "DCN-v2").reasons[0]
    assert named.startswith("DCN-v2 validation AUC 0.6000 <= hashed LR 0.6500")


def test_min_gain_is_a_bounded_setting() -> None:
    assert CtrConfig().train.baseline_min_gain == 0.0
    with pytest.raises(ValueError):
        CtrConfig.model_validate({"train": {"baseline_min_gain": 2.0}})


def _train(runner: CliRunner, data: Path, cfg: CtrConfig, monkeypatch, *args: str):
    from strata.cli import app

    monkeypatch.setenv("STRATA_CTR", cfg.model_dump_json())
    return runner.invoke(app, ["ctr", "train", "--data", str(data), *args])


def test_cli_promotes_refuses_and_forces(tmp_path: Path, strata_home: Path, monkeypatch) -> None:
    runner = CliRunner()
    cfg = tiny_cfg()
    registry = ctr_registry(Settings(home=strata_home, ctr=cfg))

    # A normal tiny world (the synthetic teacher has pairwise interactions a linear model
    # misses): the DCN beats the LR on validation, is served, both AUCs recorded. At 3,000
    # rows the LR won instead (0.672 vs 0.629): small data is where the gate bites.
    normal = tmp_path / "normal.parquet"
    synthetic_frame(6000, seed=1).to_parquet(normal, index=False)
    r = _train(runner, normal, cfg, monkeypatch)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["version"] == "v0001" and out["promoted"] is True and out["serving"] == "v0001"
    rec = registry.manifest("v0001")["metrics"]["promotion"]
    assert rec["accepted"] is True and rec["forced"] is False and rec["reasons"] == []
    assert rec["model_valid_auc"] == out["valid_auc"] > rec["baseline_valid_auc"]
    assert rec["baseline_valid_auc"] == out["baseline_hashed_lr"]["valid_auc"]
    assert registry.serving() == "v0001"

    # A world a linear model over the tokens solves, and a DCN that sees no category (every
    # value rarer than min_count goes to the OOV bucket): refused, recorded, v0001 still serves.
    linear = tmp_path / "linear.parquet"
    linear_world(3000, seed=2).to_parquet(linear, index=False)
    blind = cfg.model_copy(
        update={"preprocess": cfg.preprocess.model_copy(update={"min_count": 10**6})}
    )
    r = _train(runner, linear, blind, monkeypatch)
    assert r.exit_code == EXIT_NOT_PROMOTED == 3, r.output
    out = json.loads(r.stdout)
    rec = out["promotion"]
    assert out["version"] == "v0002" and out["promoted"] is False and out["serving"] == "v0001"
    assert rec["baseline_valid_auc"] > 0.8 and rec["model_valid_auc"] < 0.6  # blind: chance
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(
        f"not promoted: DCN validation AUC {rec['model_valid_auc']:.4f} <= hashed LR "
        f"{rec['baseline_valid_auc']:.4f} + min gain 0.0; v0002 recorded, still serving v0001"
    )
    assert registry.serving() == "v0001" and registry.versions() == ["v0001", "v0002"]
    stored = registry.manifest("v0002")["metrics"]["promotion"]
    assert stored == rec and stored["accepted"] is False and stored["forced"] is False
    registry.verify("v0002")  # a complete version, only not served

    # --force serves the same kind of version anyway and records that it was forced.
    r = _train(runner, linear, blind, monkeypatch, "--force")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["version"] == "v0003" and out["promoted"] is True and out["serving"] == "v0003"
    stored = registry.manifest("v0003")["metrics"]["promotion"]
    assert stored["accepted"] is False and stored["forced"] is True and stored["promoted"]
    assert registry.serving() == "v0003"
    from fastapi.testclient import TestClient

    from strata.serving.ctr_api import create_ctr_app

    with TestClient(create_ctr_app(Settings(home=strata_home, ctr=cfg))) as client:
        shown = client.get("/ctr/status").json()
    assert shown["version"] == "v0003" and shown["promotion"] == stored  # forced, both AUCs

    # One decision line per run, in order.
    log = [d for d in registry.decisions() if d["kind"] == "ctr_train"]
    assert [(d["version"], d["accepted"], d["forced"], d["serving_before"]) for d in log] == [
        ("v0001", True, False, None),
        ("v0002", False, False, "v0001"),
        ("v0003", False, True, "v0001"),
    ]
    assert np.isfinite([d["baseline_valid_auc"] for d in log]).all()
