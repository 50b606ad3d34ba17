"""Training data, train -> registry -> recommend (library + CLI), gated incremental fine-tuning."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from strata.config import Settings
from strata.errors import ValidationError
from strata.models.infer import embed_items
from strata.registry import Registry
from strata.training import gates
from strata.training.data import Tables
from strata.training.finetune import finetune
from strata.training.recommender import load_recommender
from strata.training.train import train

from .tiny_world import fast_settings, tiny_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Tables, int]:
    home = tmp_path_factory.mktemp("home")
    ds = tiny_dataset()
    tables = Tables(ds.users, ds.items, ds.interactions, None)
    ts = np.sort(ds.interactions["ts"].to_numpy())
    until = int(ts[int(len(ts) * 0.6)])
    s = fast_settings(home)
    train(s, "tiny", until=until, tables=tables)
    return s, tables, until


def test_train_registers_serving_version_with_manifest(trained: tuple) -> None:
    s, _, until = trained
    reg = Registry(s.registry_dir, "tiny")
    m = reg.manifest()
    assert reg.serving() == "v0001" and m["data_range"]["until"] == until
    assert m["onnx_max_abs_diff"]["query_tower"] <= 1e-4
    assert m["onnx_max_abs_diff"]["ranker"] <= 1e-4
    for name in ("query_tower.onnx", "ranker.onnx", "item_embeddings.npy", "feature_space.json"):
        assert name in m["files"]
    reg.verify()
    assert 0.5 < m["metrics"]["ranker_auc_valid"] <= 1.0


def test_recommend_excludes_seen_and_serves_cold_users(trained: tuple) -> None:
    s, tables, until = trained
    rec = load_recommender(s, "tiny")
    ev = tables.events
    before = ev[ev["ts"] < until]
    users = tables.users["user_id"].to_numpy()
    for stage in ("retrieval", "full"):
        ids, scores = rec.recommend(users, 10, stage=stage)  # type: ignore[arg-type]
        assert ids.shape == (len(users), 10) and ids.dtype == np.int64
        assert scores.dtype == np.float32 and (np.diff(scores, axis=1) <= 1e-6).all()
        seen = before.groupby("user_id")["item_id"].apply(set)
        for u, row in zip(users, ids, strict=True):
            assert not set(row.tolist()) & seen.get(u, set())
    extra = {int(users[0]): {int(ids[0, 0])}}
    ids2, _ = rec.recommend(users[:1], 10, exclude=extra)
    assert int(ids[0, 0]) not in ids2[0]
    with pytest.raises(ValidationError, match="999999"):
        rec.recommend(np.array([999999]), 5)


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"STRATA_HOME": str(home), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "strata.cli", *args], capture_output=True, text=True, env=env
    )


def test_cli_recommend_jsonl_and_unknown_user(trained: tuple, tmp_path: Path) -> None:
    s = trained[0]
    users = tmp_path / "users.txt"
    users.write_text("1\n2\n\n60\n")
    out = tmp_path / "recs.jsonl"
    r = _cli(
        "recommend", "--dataset", "tiny", "--users-file", str(users), "--k", "5",
        "--out", str(out), "--stage", "retrieval", home=s.home,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["user_id"] for x in lines] == [1, 2, 60]
    assert all(len(x["items"]) == 5 == len(x["scores"]) for x in lines)
    users.write_text("1\n424242\n")
    r = _cli("recommend", "--dataset", "tiny", "--users-file", str(users), "--out", str(out),
             home=s.home)  # fmt: skip
    assert r.returncode == 2 and "424242" in r.stderr and len(r.stderr.splitlines()) == 1


def _home_copy(trained: tuple, tmp_path: Path, **training: object) -> Settings:
    """Settings on a copy of the trained home (each fine-tune test starts from v0001 alone)."""
    home = tmp_path / "home"
    shutil.copytree(trained[0].home, home)
    s = fast_settings(home)
    return s.model_copy(update={"training": s.training.model_copy(update=training)})


def test_finetune_accepted_keeps_the_item_tower_frozen(trained: tuple, tmp_path: Path) -> None:
    # A tolerance of 1 accepts any candidate whose metrics (all in [0, 1]) are numbers: the
    # accept branch is known, so its claims are asserted unconditionally.
    _, tables, until = trained
    s = _home_copy(trained, tmp_path, gate_tolerance=1.0)
    reg = Registry(s.registry_dir, "tiny")
    old = load_recommender(s, "tiny")
    res = finetune(s, "tiny", since=until, tables=tables)
    assert set(res.metrics_serving) == set(res.metrics_candidate) == {"hit_rate@50", "ranker_auc"}
    assert res.accepted and res.reasons == []
    assert reg.serving() == res.new_version == "v0002" and reg.versions() == ["v0001", "v0002"]
    assert reg.decisions()[-1]["accepted"] is True
    m = reg.manifest()
    assert m["parent"] == "v0001" and m["finetune"]["metrics_serving"] == res.metrics_serving
    reg.verify()
    new = load_recommender(s, "tiny")
    # The item tower was frozen: the new version's item tower embeds the catalog exactly as
    # v0001's did, so the index built from v0001 stays valid...
    old_items = old.two_tower.item_tower.state_dict()
    for name, value in new.two_tower.item_tower.state_dict().items():
        assert torch.equal(value, old_items[name]), name
    rebuilt = embed_items(new.two_tower, new.space.all_items())
    np.testing.assert_allclose(rebuilt, old.model_version.item_embeddings, atol=1e-5)
    # ...while the query tower did train (else "frozen" would say nothing).
    old_query = old.two_tower.query_tower.state_dict()
    assert any(
        not torch.equal(v, old_query[k]) for k, v in new.two_tower.query_tower.state_dict().items()
    )
    with pytest.raises(ValidationError):
        finetune(s, "tiny", since=10**12, tables=tables)


def test_finetune_rejected_keeps_the_serving_version(
    trained: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The gate is forced to reject (the real one still runs on the same metrics and its verdict
    # is checked against the rule), so the reject branch is known.
    _, tables, until = trained
    s = _home_copy(trained, tmp_path)
    reg = Registry(s.registry_dir, "tiny")
    real_gate, real = gates.finetune_gate, []

    def reject(serving: dict, candidate: dict, tolerance: float) -> gates.GateDecision:
        real.append(real_gate(serving, candidate, tolerance))
        return gates.GateDecision(False, ["forced by the test"])

    monkeypatch.setattr(gates, "finetune_gate", reject)
    res = finetune(s, "tiny", since=until, tables=tables)
    assert not res.accepted and res.reasons == ["forced by the test"]
    assert res.new_version is None and reg.serving() == "v0001" and reg.versions() == ["v0001"]
    assert not [p for p in reg.dir.glob(".staging-*")]
    last = reg.decisions()[-1]
    assert last["accepted"] is False and last["reasons"] == ["forced by the test"]
    assert last["metrics_candidate"] == res.metrics_candidate
    # The real gate's verdict on these metrics follows its rule (tolerance 0 here).
    tol = s.training.gate_tolerance
    better = all(
        res.metrics_candidate[m] >= res.metrics_serving[m] - tol for m in res.metrics_serving
    )
    assert len(real) == 1 and real[0].accepted == better
