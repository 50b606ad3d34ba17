"""Damaged model versions under load: a truncated ONNX graph, a file changed after its manifest
was written, a corrupt ANN index file, and the same for a CTR version.

Each damaged version is promoted while clients keep sending requests: the server refuses to load
it (`POST /admin/reload` answers 409 naming the version and the file; the pointer follower skips
it and tries again only after `RETRY_FAILED_S`, not every poll), keeps serving the version it has
with no failed request, and `/readyz` plus the logs say which version and file were refused. A
server that starts on a damaged serving version with `wait_for_model` stays up, unready (503
naming the reason), and serves the next loadable promotion without a restart.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from strata.atomic import sha256_file
from strata.config import CtrServeConfig, Settings
from strata.registry import Registry
from strata.serving.app import create_app
from tests.fault_support import ClientLoad, wait_until
from tests.unit.serving_support import (
    DATASET,
    TOKEN,
    LiveServer,
    copy_version,
    serving_settings,
    trained_registry,
)

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _rehash(vdir: Path, name: str) -> None:
    """Record `name`'s current hash in the manifest: the file was already damaged when the
    version was committed (an export that wrote half a graph), so only its loader can tell."""
    m = json.loads((vdir / "manifest.json").read_text())
    m["files"][name] = sha256_file(vdir / name)
    (vdir / "manifest.json").write_text(json.dumps(m))


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _failed_reloads(c: httpx.Client) -> float:
    m = re.search(r'strata_model_reloads_total\{outcome="failed"\} (\S+)', c.get("/metrics").text)
    return float(m.group(1)) if m else 0.0


def _damages(s: Settings) -> list[tuple[str, str, str]]:
    """Three damaged versions of the served one: (version, the damaged file, the expected
    problem). v0002: a truncated ONNX graph whose manifest hash matches (caught by ONNX
    Runtime); v0003: a valid-looking embeddings file replaced after the commit (caught by the
    manifest hash); v0004: an ANN index whose FAISS file was overwritten in place."""
    from strata.training.index_build import build_version_index

    reg = s.registry_dir / DATASET
    v2 = copy_version(s, "v0001", "v0002")
    _truncate(reg / v2 / "query_tower.onnx")
    _rehash(reg / v2, "query_tower.onnx")
    v3 = copy_version(s, "v0001", "v0003")
    emb = np.load(reg / v3 / "item_embeddings.npy")
    np.save(reg / v3 / "item_embeddings.npy", np.roll(emb, 1, axis=0))  # same shape and dtype
    v4 = copy_version(s, "v0001", "v0004")
    build_version_index(s, DATASET, v4, kind="flat")
    (faiss_file,) = (reg / v4 / "index").glob("index-*.faiss")
    blob = bytearray(faiss_file.read_bytes())
    blob[len(blob) // 2 :] = bytes(len(blob) - len(blob) // 2)  # zeroed second half, same size
    faiss_file.write_bytes(bytes(blob))
    return [
        (v2, "query_tower.onnx", "not a loadable ONNX graph"),
        (v3, "item_embeddings.npy", "hash mismatch with the manifest"),
        (v4, faiss_file.name, "unusable ANN index"),
    ]


def test_damaged_versions_are_refused_while_the_served_one_keeps_answering(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = serving_settings(tmp_path, follow_poll_s=0.1)
    damaged = _damages(s)
    reg = Registry(s.registry_dir, DATASET)
    caplog.set_level(logging.WARNING, logger="strata.serving.state")
    with LiveServer(create_app(s)) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        load = ClientLoad(live.url, lambda lc: lc.get("/recommend", params={"user_id": 5, "k": 5}))
        with load.running():
            for version, name, problem in damaged:
                reg.promote(version)
                r = c.post("/admin/reload", headers=AUTH)
                assert r.status_code == 409, r.text
                msg = r.json()["detail"][0]["msg"]
                assert "still serving v0001" in msg and version in msg and name in msg
                assert problem in msg
                ready = c.get("/readyz")
                body = ready.json()
                assert ready.status_code == 200 and body["ready"] is True
                assert body["model_version"] == "v0001"
                assert version in body["refused"] and name in body["refused"]
                assert any(name in reason for reason in body["reasons"])
                logged = [r.getMessage() for r in caplog.records]
                assert any(version in m and name in m for m in logged), logged
            # The follower polls every 0.1 s but tries a refused version again only after
            # RETRY_FAILED_S: no new failures while the pointer stays on it.
            failed = _failed_reloads(c)
            time.sleep(1.0)
            assert _failed_reloads(c) == failed
            good = copy_version(s, "v0001", "v0005")
            reg.promote(good)  # a new promotion is loaded by the follower at once
            assert wait_until(lambda: c.get("/readyz").json()["model_version"] == good)
            assert wait_until(lambda: load.versions[-1] == good)
            assert c.get("/readyz").json()["refused"] is None
    sent, ok = len(load.statuses), load.statuses.count(200)
    print(f"\nartifacts: {sent} requests sent, {ok} answered 200, 3 damaged versions refused")
    assert sent == ok and set(load.versions) == {"v0001", good}


def test_a_server_starting_on_a_damaged_version_is_unready_with_the_reason(tmp_path: Path) -> None:
    """`wait_for_model`: no crash loop; /readyz 503 names the version and file, then the next
    loadable promotion is served without a restart."""
    s = serving_settings(tmp_path, wait_for_model=True, follow_poll_s=0.1)
    reg = s.registry_dir / DATASET
    ranker = reg / "v0001" / "ranker.onnx"
    ranker.write_bytes(ranker.read_bytes() + b"\0")  # changed after the manifest was written
    with LiveServer(create_app(s)) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        assert c.get("/healthz").status_code == 200
        ready = c.get("/readyz")
        assert ready.status_code == 503, ready.text
        (why,) = ready.json()["reasons"]
        assert "v0001" in why and "ranker.onnx" in why and "hash mismatch" in why
        assert c.get("/recommend", params={"user_id": 3}).status_code == 503
        shutil.copytree(trained_registry() / DATASET / "v0001", reg / "v0002")  # intact
        manifest = json.loads((reg / "v0002" / "manifest.json").read_text())
        (reg / "v0002" / "manifest.json").write_text(json.dumps({**manifest, "version": "v0002"}))
        Registry(s.registry_dir, DATASET).promote("v0002")
        assert wait_until(lambda: c.get("/readyz").status_code == 200)
        body = c.get("/recommend", params={"user_id": 3})
        assert body.status_code == 200 and body.json()["model_version"] == "v0002"


def _ctr_copy(s: Settings, src: str, dst: str) -> Path:
    from strata.ctr.artifacts import ctr_registry

    reg = ctr_registry(s).dir
    shutil.copytree(reg / src, reg / dst)
    m = json.loads((reg / dst / "manifest.json").read_text())
    (reg / dst / "manifest.json").write_text(json.dumps({**m, "version": dst}))
    return reg / dst


def test_damaged_ctr_versions_are_refused_at_start_and_while_following(tmp_path: Path) -> None:
    """The CTR service: started on a truncated `model.onnx` (manifest hash mismatch) it is
    unready naming it, serves the next good promotion, then refuses a graph ONNX Runtime cannot
    read (manifest consistent) while /ctr/predict keeps answering from the good version."""
    from strata.ctr.artifacts import ctr_registry, publish
    from strata.ctr.data import CtrSource
    from strata.ctr.train import train_ctr
    from strata.serving.ctr_api import create_ctr_app
    from tests.integration.test_ctr_http import _records
    from tests.unit.ctr_support import synthetic_parquet, tiny_cfg

    cfg = tiny_cfg().model_copy(update={"serve": CtrServeConfig(wait_for_model=True)})
    s = serving_settings(tmp_path, follow_poll_s=0.1).model_copy(update={"ctr": cfg})
    result = train_ctr(CtrSource(synthetic_parquet(tmp_path, 1500, seed=3)), cfg, seed=0)
    publish(result, ctr_registry(s))
    good = _ctr_copy(s, "v0001", "v0002")  # kept intact, promoted later
    _truncate(ctr_registry(s).dir / "v0001" / "model.onnx")
    rows, _ = _records(5, seed=1)
    with LiveServer(create_ctr_app(s)) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503, ready.text
        (why,) = ready.json()["reasons"]
        assert "v0001" in why and "model.onnx" in why
        assert c.post("/ctr/predict", json={"rows": rows}).status_code == 503
        ctr_registry(s).promote(good.name)
        assert wait_until(lambda: c.get("/readyz").status_code == 200)
        load = ClientLoad(live.url, lambda lc: lc.post("/ctr/predict", json={"rows": rows}))
        with load.running():
            bad = _ctr_copy(s, "v0002", "v0003")
            _truncate(bad / "model.onnx")
            _rehash(bad, "model.onnx")
            ctr_registry(s).promote(bad.name)
            assert wait_until(lambda: bool(c.get("/readyz").json()["refused"]))
            body = c.get("/readyz").json()
            assert body["ready"] is True and body["version"] == "v0002"
            assert "v0003" in body["refused"] and "model.onnx" in body["refused"]
            assert "not a loadable ONNX graph" in body["refused"]
            n = len(load.statuses)
            assert wait_until(lambda: len(load.statuses) > n + 10)
    sent, ok = len(load.statuses), load.statuses.count(200)
    print(f"\nctr: {sent} predictions sent, {ok} answered 200, v0003 refused")
    assert sent == ok and set(load.versions) == {"v0002"}
