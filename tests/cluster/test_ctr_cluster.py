"""CTR replicas act as one service: 2 `strata ctr serve` processes on one shared home and one
Valkey. Feedback sent to the other replica than the prediction is joined; both report the same
rolling AUC; drift (the teacher shift of `strata ctr demo`) starts exactly one retrain for the
cluster, held by a lease, and both replicas serve the promoted version; when the lease holder is
SIGKILLed during its retrain, the other replica takes the retrain over once the lease expires."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from strata.config import CtrServeConfig, Settings
from strata.ctr.artifacts import ctr_registry, publish
from strata.ctr.data import CtrSource
from strata.ctr.train import train_ctr
from tests.integration.conftest import PrivateValkey
from tests.integration.test_ctr_http import _records
from tests.integration.test_serving_valkey import _wait_until
from tests.unit.ctr_support import synthetic_parquet, tiny_cfg

from .conftest import Replica

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.multiprocess]

LEASE_S = 3.0


def _flatten(prefix: str, value: Any) -> dict[str, str]:
    """A config as STRATA_ environment variables (nested keys joined by __)."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out |= _flatten(f"{prefix}__{k.upper()}", v)
        return out
    if value is None:
        return {}
    return {prefix: json.dumps(value) if isinstance(value, list | tuple) else str(value)}


class CtrCluster:
    def __init__(self, settings: Settings, valkey: PrivateValkey, replicas: list[Replica]):
        self.settings, self.valkey, self.replicas = settings, valkey, replicas

    def versions(self) -> set[str]:
        return {r.version() for r in self.replicas if r.proc and r.proc.poll() is None}


def _start(tmp: Path, epochs: int) -> CtrCluster:
    # The drift test of tests/integration/test_ctr_http.py, over two processes: the relative rule
    # only (the rolling AUC 25% below the model's test AUC; threshold 0 never fires), a
    # 400-label window.
    cfg = tiny_cfg(auc_threshold=0.0, relative_drop=0.25, window=400, cooldown_labels=400)
    cfg = cfg.model_copy(update={
        "buffer_size": 20_000,
        "serve": CtrServeConfig(lease_s=LEASE_S, min_drift_rows=10**6),
        "incremental": cfg.incremental.model_copy(update={"epochs": epochs}),
    })  # fmt: skip
    home = tmp / "shared"
    s = Settings(home=home, ctr=cfg)
    publish(train_ctr(CtrSource(synthetic_parquet(tmp, 15_000, seed=11)), cfg, seed=0),
            ctr_registry(s))  # fmt: skip
    (tmp / "vk").mkdir()
    valkey = PrivateValkey(tmp / "vk")
    valkey.start()
    env = _flatten("STRATA_CTR", cfg.model_dump(mode="json"))
    replicas = [Replica(f"c{i}", home, valkey.url, tmp, ctr=True, env=env) for i in range(2)]
    for r in replicas:
        r.start()
    for r in replicas:
        r.wait_ready()
    return CtrCluster(s, valkey, replicas)


def _stop(c: CtrCluster) -> None:
    for r in c.replicas:
        r.stop()
    c.valkey.stop()


@pytest.fixture
def ctr_cluster(tmp_path: Path) -> Iterator[CtrCluster]:
    c = _start(tmp_path, epochs=1)
    try:
        yield c
    finally:
        _stop(c)


def _predict_elsewhere(c: CtrCluster, rows: list[dict], labels: np.ndarray, k: int) -> dict:
    """Predict on replica k, send the labels to the other one; the feedback answer."""
    a, b = c.replicas[k % 2].url, c.replicas[(k + 1) % 2].url
    pred = httpx.post(a + "/ctr/predict", json={"rows": rows}, timeout=30).json()
    fb = httpx.post(b + "/ctr/feedback", json={"ids": pred["ids"], "labels": labels.tolist()},
                    timeout=30)  # fmt: skip
    assert fb.status_code == 200, fb.text
    return fb.json()


def test_feedback_joins_across_replicas_and_both_see_one_window(ctr_cluster: CtrCluster) -> None:
    c = ctr_cluster
    rows, y = _records(600, seed=31)
    for k, s in enumerate(range(0, 600, 100)):
        fb = _predict_elsewhere(c, rows[s : s + 100], y[s : s + 100], k)
        assert fb["accepted"] == 100 and fb["unknown"] == []
    # the same labels again, on either replica: duplicates
    ids = httpx.post(c.replicas[0].url + "/ctr/predict", json={"rows": rows[:3]}).json()["ids"]
    for url in (c.replicas[1].url, c.replicas[0].url):
        fb = httpx.post(url + "/ctr/feedback", json={"ids": ids, "labels": [1, 0, 1]}).json()
    assert fb["accepted"] == 0 and fb["duplicate"] == ids
    s0, s1 = (httpx.get(r.url + "/ctr/status").json() for r in c.replicas)
    assert s0["rolling_auc"] is not None and s0["rolling_auc"] == s1["rolling_auc"]
    assert s0["window_n"] == s1["window_n"] == 400 and s0["labels_seen"] == s1["labels_seen"] == 603


def _drive_drift(c: CtrCluster, until: Any, max_rows: int = 8000) -> list[dict]:
    """Pre-shift then shifted traffic, predictions and labels on alternating replicas, until
    `until()` holds; the feedback answers."""
    pre, y_pre = _records(600, seed=31)
    post, y_post = _records(max_rows, seed=32, drift=True)
    rows, labels = pre + post, np.concatenate([y_pre, y_post])
    answers = []
    for k, s in enumerate(range(0, len(rows), 100)):
        alive = [r for r in c.replicas if r.proc and r.proc.poll() is None]
        a, b = alive[k % len(alive)], alive[(k + 1) % len(alive)]
        pred = httpx.post(a.url + "/ctr/predict", json={"rows": rows[s : s + 100]}, timeout=30)
        fb = httpx.post(b.url + "/ctr/feedback",
                        json={"ids": pred.json()["ids"], "labels": labels[s : s + 100].tolist()},
                        timeout=30)  # fmt: skip
        answers.append(fb.json())
        if until():
            return answers
        time.sleep(0.02)
    pytest.fail(f"drift did not get there in {len(rows)} rows: {answers[-1]}")


def test_drift_starts_one_retrain_for_the_cluster_and_both_follow(ctr_cluster: CtrCluster) -> None:
    c = ctr_cluster
    reg = ctr_registry(c.settings)
    answers = _drive_drift(c, lambda: reg.serving() != "v0001")
    started = sum(a["action"] == "started" for a in answers)
    t0 = time.monotonic()
    assert _wait_until(lambda: c.versions() == {"v0002"}, 10) < 5
    took = time.monotonic() - t0
    print(f"ctr drift: {started} retrain started for the cluster; both replicas on v0002 "
          f"{took:.2f} s after the promotion was seen")  # fmt: skip
    assert started == 1
    assert reg.versions() == ["v0001", "v0002"]
    decisions = [a["action"] for a in answers]
    assert "busy" in decisions or decisions.count("started") == 1


def test_the_other_replica_takes_over_when_the_lease_holder_dies(tmp_path: Path) -> None:
    c = _start(tmp_path, epochs=400)  # a retrain long enough to be killed in the middle
    try:
        reg = ctr_registry(c.settings)
        client = redis.Redis.from_url(c.valkey.url)
        lease_key = f"strata:ctr:{c.settings.ctr.registry_name}:lease"
        _drive_drift(c, lambda: client.get(lease_key) is not None)
        holder = client.get(lease_key).decode()
        victim = next(r for r in c.replicas if r.name == holder)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(10)
        t_kill = time.monotonic()
        assert reg.serving() == "v0001"  # killed before it could promote
        # the survivor keeps receiving drifted traffic; the lease expires; it takes it and retrains
        survivor = next(r for r in c.replicas if r is not victim)
        _drive_drift(c, lambda: (client.get(lease_key) or b"").decode() == survivor.name)
        assert _wait_until(lambda: reg.serving() != "v0001", 120) < 120
        took = time.monotonic() - t_kill
        assert _wait_until(lambda: survivor.version() == reg.serving(), 10) < 5
        print(f"lease holder {holder} SIGKILLed mid-retrain; the other replica promoted "
              f"{reg.serving()} {took:.1f} s later (lease {LEASE_S} s)")  # fmt: skip
        assert took >= LEASE_S * 0.9  # not before the dead holder's lease expired
        assert (client.get(lease_key) or b"").decode() in ("", survivor.name)
        assert reg.versions() == ["v0001", "v0002"]
    finally:
        _stop(c)
