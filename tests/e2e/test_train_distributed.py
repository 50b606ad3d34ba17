"""`strata train --nproc 2` as a user runs it: torchrun starts two gloo ranks on this machine,
rank 0 registers the one version and prints it; `--no-promote` registers without serving (the
pipelines' PyTorchJob runs it so); a device the machine lacks is a one-line error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from strata.features.offline import OfflineStore, ingest_dataset
from strata.registry import Registry
from tests.unit.tiny_world import fast_settings, tiny_dataset

STRATA = Path(sys.executable).parent / "strata"


def _run(home: Path, *args: str, batch_x: int = 1) -> subprocess.CompletedProcess[str]:
    if not STRATA.exists():
        pytest.skip(f"console script {STRATA} is not installed")
    t = fast_settings(home).training
    t = t.model_copy(
        update={
            "batch_size": t.batch_size * batch_x,
            "ranker_batch_size": t.ranker_batch_size * batch_x,
        }
    )
    env = {**os.environ, "STRATA_HOME": str(home), "STRATA_TRAINING": t.model_dump_json()}
    return subprocess.run(
        [str(STRATA), "train", "--dataset", "tiny", *args],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip


def _world(home: Path) -> int:
    ds = tiny_dataset()
    ingest_dataset(OfflineStore(fast_settings(home)), ds)
    return int(np.sort(ds.interactions["ts"].to_numpy())[int(len(ds.interactions) * 0.8)])


def test_two_ranks_register_the_version_one_rank_with_twice_the_batch_would(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    until = _world(home)
    res = _run(home, "--until", str(until), "--nproc", "2", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)  # one document: only rank 0 printed
    assert out["version"] == "v0001"
    reg = Registry(fast_settings(home).registry_dir, "tiny")
    assert reg.serving() == "v0001" and reg.versions() == ["v0001"]
    assert not list((home / "checkpoints" / "tiny").glob("*.json"))  # finished: none left
    # one process with the global batch (2 x the per-rank batch) trains the same models
    one = tmp_path / "one"
    ref = _run(one, "--until", str(_world(one)), "--json", "--no-promote", batch_x=2)
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_reg = Registry(fast_settings(one).registry_dir, "tiny")
    assert ref_reg.versions() == ["v0001"] and ref_reg.serving() is None  # --no-promote
    m, m_ref = out["metrics"], json.loads(ref.stdout)["metrics"]
    for name in ("two_tower_loss", "ranker_loss", "ranker_auc_valid", "holdout_recall@10_full"):
        assert abs(m[name] - m_ref[name]) < 2e-3, (name, m[name], m_ref[name])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_is_a_one_line_error(tmp_path: Path) -> None:
    res = _run(tmp_path, "--device", "cuda", "--nproc", "2")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "training.device" in res.stderr, res.stderr
