"""A fresh install: `strata serve` and `strata ctr serve` with `wait_for_model` start without a
model version, are live (/healthz) and unready (/readyz 503 naming why), answer requests with
503, and serve the first version as soon as it is promoted, with no restart."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest

from strata.config import CtrServeConfig
from strata.ctr.artifacts import ctr_registry, publish
from strata.ctr.data import CtrSource
from strata.ctr.train import train_ctr
from strata.serving.app import create_app
from strata.serving.ctr_api import create_ctr_app
from tests.integration.test_ctr_http import _records
from tests.integration.test_serving_valkey import _wait_until
from tests.unit.ctr_support import synthetic_parquet, tiny_cfg
from tests.unit.serving_support import DATASET, LiveServer, serving_settings

pytestmark = pytest.mark.integration


def test_serving_waits_for_its_first_version(tmp_path: Path) -> None:
    s = serving_settings(tmp_path, wait_for_model=True, follow_poll_s=0.2)
    trained = tmp_path / "trained"
    shutil.move(s.registry_dir / DATASET, trained)  # a fresh install: no version yet
    with LiveServer(create_app(s)) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        assert c.get("/healthz").status_code == 200
        ready = c.get("/readyz")
        assert ready.status_code == 503
        assert "waiting for the first promotion" in ready.json()["reasons"][0]
        assert c.get("/recommend", params={"user_id": 3}).status_code == 503
        shutil.move(trained, s.registry_dir / DATASET)  # the initial pipeline published v0001
        t0 = time.monotonic()
        assert _wait_until(lambda: c.get("/readyz").status_code == 200, 30) < 30
        print(f"first version served {time.monotonic() - t0:.2f} s after it was promoted")
        body = c.get("/recommend", params={"user_id": 3})
        assert body.status_code == 200 and body.json()["model_version"] == "v0001"


def test_ctr_waits_for_its_first_version(tmp_path: Path) -> None:
    cfg = tiny_cfg().model_copy(update={"serve": CtrServeConfig(wait_for_model=True)})
    s = serving_settings(tmp_path, follow_poll_s=0.2).model_copy(update={"ctr": cfg})
    rows, _ = _records(5, seed=1)
    with LiveServer(create_ctr_app(s)) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        assert c.get("/healthz").status_code == 200
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "strata ctr train" in ready.json()["reasons"][0]
        assert c.post("/ctr/predict", json={"rows": rows}).status_code == 503
        result = train_ctr(CtrSource(synthetic_parquet(tmp_path, 1500, seed=3)), cfg, seed=0)
        publish(result, ctr_registry(s))
        assert _wait_until(lambda: c.get("/readyz").status_code == 200, 30) < 30
        pred = c.post("/ctr/predict", json={"rows": rows})
        assert pred.status_code == 200 and pred.json()["version"] == "v0001"
