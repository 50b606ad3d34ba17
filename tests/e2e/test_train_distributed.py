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
from safetensors.torch import load_file

from strata.artifacts import ITEM_EMBEDDINGS_FILE, ITEM_IDS_FILE, SEEN_FILE
from strata.features.offline import OfflineStore, ingest_dataset
from strata.registry import Registry
from strata.training.recommender import load_recommender
from tests.unit.tiny_world import fast_settings, tiny_dataset

pytestmark = pytest.mark.multiprocess

STRATA = Path(sys.executable).parent / "strata"


def _run(
    home: Path, *args: str, batch_x: int = 1, shard: bool = False
) -> subprocess.CompletedProcess[str]:
    if not STRATA.exists():
        pytest.skip(f"console script {STRATA} is not installed")
    t = fast_settings(home).training
    t = t.model_copy(
        update={
            "batch_size": t.batch_size * batch_x,
            "ranker_batch_size": t.ranker_batch_size * batch_x,
            "shard_input": shard,
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


def test_two_ranks_on_sharded_input_each_read_their_users_and_register_one_version(
    tmp_path: Path,
) -> None:
    """`training.shard_input`: each rank reads only its shard; the version is still whole (its
    metrics count every row, its seen filter holds every pair) and the models learned."""
    home = tmp_path / "home"
    until = _world(home)
    res = _run(home, "--until", str(until), "--nproc", "2", "--json", shard=True)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    path = Registry(fast_settings(home).registry_dir, "tiny").path("v0001")
    data_range = json.loads((path / "manifest.json").read_text())["data_range"]
    n_rows = len(OfflineStore(fast_settings(home)).training_set("tiny", until=until))
    shards = data_range["shard_rows"]
    assert len(shards) == 2 and sum(shards) == n_rows == data_range["events"]
    assert all(0 < k < n_rows for k in shards)  # neither rank read every row
    m = out["metrics"]
    assert m["train_events"] == n_rows
    assert m["holdout_recall@10_full"] > 0.0, m
    # The world's users like the genre (user_id - 1) % 4: the two-tower learned it from both
    # shards' users (a random model puts 1 in 4 of a user's top 5 in its genre).
    rec = load_recommender(fast_settings(home), "tiny")
    emb, ids = np.load(path / ITEM_EMBEDDINGS_FILE), np.load(path / ITEM_IDS_FILE)
    users = np.arange(1, 61)
    top = ids[np.argsort(-(rec.query_embeddings(users) @ emb.T), axis=1)[:, :5]]
    assert ((top - 1) % 4 == ((users - 1) % 4)[:, None]).mean() > 0.6
    seen = load_file(str(path / SEEN_FILE))
    assert len(seen["user"]) == n_rows  # every shard's pairs, not rank 0's alone
    assert not list((home / "offline").rglob("training_sets/*.parquet"))  # export removed


def test_a_shard_smaller_than_a_batch_is_a_one_line_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    res = _run(home, "--until", str(_world(home)), "--nproc", "2", batch_x=8, shard=True)
    assert res.returncode == 2, res.stderr[-3000:]
    assert res.stderr.strip().count("\n") == 0 and "training.shard_input" in res.stderr, res.stderr
    assert Registry(fast_settings(home).registry_dir, "tiny").versions() == []
    assert not list((home / "offline").rglob("training_sets/*.parquet"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_is_a_one_line_error(tmp_path: Path) -> None:
    res = _run(tmp_path, "--device", "cuda", "--nproc", "2")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "training.device" in res.stderr, res.stderr
