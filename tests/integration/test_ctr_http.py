"""The CTR HTTP API on a real uvicorn server: predict -> feedback -> metrics, 422s naming the
field, and drift -> trigger -> incremental retrain -> hot reload while a client keeps sending
requests (none may fail). Also `strata ctr serve` as a subprocess."""

from __future__ import annotations

import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, generate_latest

from strata.config import CtrServeConfig, Settings
from strata.ctr.artifacts import ctr_registry, publish
from strata.ctr.data import CtrSource
from strata.ctr.train import train_ctr
from strata.serving.ctr_api import create_ctr_app, install_ctr
from strata.serving.ctr_runtime import LATENCY_BUCKETS
from tests.unit.ctr_support import synthetic_frame, synthetic_parquet, tiny_cfg

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _trained(
    tmp: Path, serve: CtrServeConfig | None = None, rows: int = 3000, **drift: Any
) -> Settings:
    """Settings whose CTR registry serves a tiny model trained on pre-drift synthetic rows."""
    cfg = tiny_cfg(**drift).model_copy(
        update={"buffer_size": 20_000, "serve": serve or CtrServeConfig()}
    )
    s = Settings(home=tmp / "home", ctr=cfg)
    result = train_ctr(CtrSource(synthetic_parquet(tmp, rows, seed=11)), cfg, seed=0)
    publish(result, ctr_registry(s))
    return s


class _Server:
    """A real uvicorn server (default: `create_ctr_app(settings)`) on a free port, in a thread."""

    def __init__(self, settings: Settings, app: FastAPI | None = None) -> None:
        self.port = _free_port()
        config = uvicorn.Config(
            app or create_ctr_app(settings), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def _records(n: int, seed: int, drift: bool = False) -> tuple[list[dict[str, Any]], np.ndarray]:
    """JSON rows (None for missing values) and their labels."""
    df = synthetic_frame(n, seed=seed, drift=drift)
    y = df.pop("label").to_numpy()
    recs = [
        {k: (None if v is None or v != v else v) for k, v in r.items()}
        for r in df.astype(object).to_dict("records")
    ]
    return recs, y


def _metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in Prometheus text format (fails when absent)."""
    pattern = re.escape(name + (("{" + labels + "}") if labels else "")) + r" (\S+)"
    m = re.search("^" + pattern + "$", text, flags=re.MULTILINE)
    assert m is not None, f"{name}{{{labels}}} not in /metrics"
    return float(m.group(1))


def _buckets(text: str, name: str, **labels: str) -> dict[float, float]:
    """`le` -> cumulative count of one labelled histogram series, in exposition order (the
    label order of a sample line is not assumed)."""
    out: dict[float, float] = {}
    pattern = "^" + re.escape(name) + r"_bucket\{([^}]*)\} (\S+)$"
    for m in re.finditer(pattern, text, flags=re.MULTILINE):
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if {k: found.get(k) for k in labels} == labels:
            out[float(found["le"])] = float(m.group(2))
    return out


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """No trigger possible (threshold 0, no relative rule); small request limits."""
    serve = CtrServeConfig(max_batch_rows=500, max_feedback_ids=1000, min_drift_rows=300)
    return _trained(
        tmp_path_factory.mktemp("ctr-http"), serve, auc_threshold=0.0, relative_drop=None
    )


@pytest.fixture
def base_url(healthy: Settings) -> Iterator[str]:
    with _Server(healthy) as url:
        yield url


def test_predict_feedback_and_rolling_auc_gauge(base_url: str) -> None:
    recs, y = _records(300, seed=5)
    recs[0]["C3"] = "never-seen-before"  # out of vocabulary: scored, not rejected
    with httpx.Client(base_url=base_url, timeout=30) as c:
        r = c.post("/ctr/predict", json={"rows": recs})
        assert r.status_code == 200, r.text
        body = r.json()
        ids, probs = body["ids"], np.asarray(body["probabilities"])
        assert len(ids) == len(set(ids)) == 300 and probs.shape == (300,)
        assert ((probs > 0) & (probs < 1)).all() and body["version"] == "v0001"
        fb = c.post("/ctr/feedback", json={"ids": ids, "labels": y.tolist()}).json()
        assert fb["accepted"] == 300 and fb["unknown"] == [] and fb["duplicate"] == []
        decision = fb["decision"]
        assert decision["kind"] == "healthy" and decision["n"] == 100  # window of tiny_cfg
        again = c.post("/ctr/feedback", json={"ids": [ids[0], 10**12], "labels": [1, 0]}).json()
        assert again["accepted"] == 0 and again["duplicate"] == [ids[0]]
        assert again["unknown"] == [10**12]

        metrics = c.get("/metrics").text
        assert _metric(metrics, "strata_ctr_rolling_auc") == pytest.approx(decision["auc"])
        assert _metric(metrics, "strata_ctr_predictions_total") == 300
        assert _metric(metrics, "strata_ctr_feedback_total", 'outcome="accepted"') == 300
        assert _metric(metrics, "strata_ctr_feedback_total", 'outcome="unknown"') == 1
        assert _metric(metrics, "strata_ctr_feedback_total", 'outcome="duplicate"') == 1
        assert _metric(metrics, "strata_ctr_drift_decisions_total", 'kind="healthy"') == 2
        n_pred = _metric(
            metrics, "strata_ctr_request_seconds_count", 'endpoint="predict",status="2xx"'
        )
        assert n_pred == 1
        # The latency histogram of that request: every configured bucket, cumulative, the one
        # observation counted in +Inf (what the HPA's histogram_quantile reads).
        buckets = _buckets(metrics, "strata_ctr_request_seconds", endpoint="predict", status="2xx")
        assert list(buckets) == [*LATENCY_BUCKETS, math.inf]
        counts = list(buckets.values())
        assert counts == sorted(counts) and set(counts) <= {0, 1} and counts[-1] == n_pred

        status = c.get("/ctr/status").json()
        assert status["version"] == "v0001" and status["predictions"] == 300
        assert status["rolling_auc"] == pytest.approx(decision["auc"])
        assert status["retrains"] == 0 and status["retraining"] is False
        # 300 labelled rows >= min_drift_rows: PSI against the training reference is reported.
        fd = status["feature_drift"]
        assert fd is not None and fd["rows"] == 300 and len(fd["psi"]) == 39
        assert all(v >= 0 and math.isfinite(v) for v in fd["psi"].values())
        assert set(fd["alerts"]) == {k for k, v in fd["psi"].items() if v > 0.2}
        assert c.get("/healthz").json() == {"ok": True, "version": "v0001"}


@pytest.mark.parametrize(
    ("path", "payload", "field", "loc"),
    [
        ("/ctr/predict", "bad_int", "rows[3].I5", ["body", "rows", 3, "I5"]),
        ("/ctr/predict", "unknown_key", "rows[1].X9", ["body", "rows", 1, "X9"]),
        ("/ctr/predict", "bad_cat", "rows[0].C2", ["body", "rows", 0, "C2"]),
        ("/ctr/predict", "too_many", "rows", ["body", "rows"]),
        ("/ctr/feedback", "mismatch", "labels", ["body", "labels"]),
        ("/ctr/feedback", "bad_label", "labels[1]", ["body", "labels", 1]),
    ],
)
def test_bad_input_is_422_naming_the_field(
    base_url: str, path: str, payload: str, field: str, loc: list[Any]
) -> None:
    recs, _ = _records(5, seed=6)
    bodies: dict[str, Any] = {
        "bad_int": {"rows": [*recs[:3], {**recs[3], "I5": "abc"}, recs[4]]},
        "unknown_key": {"rows": [recs[0], {**recs[1], "X9": 1}]},
        "bad_cat": {"rows": [{**recs[0], "C2": [1, 2]}]},
        "too_many": {"rows": recs * 101},  # 505 > max_batch_rows=500
        "mismatch": {"ids": [0, 1, 2], "labels": [1, 0]},
        "bad_label": {"ids": [0, 1], "labels": [1, 2]},
    }
    with httpx.Client(base_url=base_url, timeout=30) as c:
        r = c.post(path, json=bodies[payload])
        assert r.status_code == 422, r.text
        detail = r.json()["detail"][0]
        assert detail["field"] == field and detail["loc"] == loc and detail["msg"]
        metrics = c.get("/metrics").text
        endpoint = path.rsplit("/", 1)[1]
        assert (
            _metric(
                metrics, "strata_ctr_request_seconds_count", f'endpoint="{endpoint}",status="4xx"'
            )
            == 1
        )


def test_malformed_bodies_are_422_from_the_schema(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as c:
        empty = c.post("/ctr/predict", json={"rows": []})
        assert empty.status_code == 422 and empty.json()["detail"][0]["loc"] == ["body", "rows"]
        not_list = c.post("/ctr/predict", json={"rows": {"I1": 1}})
        assert not_list.status_code == 422
        assert not_list.json()["detail"][0]["loc"][:2] == ["body", "rows"]
        bad_ids = c.post("/ctr/feedback", json={"ids": ["x"], "labels": [1]})
        assert bad_ids.status_code == 422
        assert bad_ids.json()["detail"][0]["loc"] == ["body", "ids", 0]
        assert bad_ids.json()["detail"][0]["field"] == "ids[0]"
        no_body = c.post("/ctr/predict", json={})
        assert no_body.status_code == 422 and no_body.json()["detail"][0]["field"] == "rows"


def test_drift_triggers_retrain_and_hot_reload_without_failed_requests(tmp_path: Path) -> None:
    # Relative rule only: the rolling AUC must fall 25% below the model's held-out test AUC
    # (about 0.71 -> floor 0.53). Before the shift 400-row windows stay within ~0.62-0.76; after
    # it the old model scores ~0.4, so neither side is a coin flip.
    settings = _trained(
        tmp_path, rows=15_000, auc_threshold=None, relative_drop=0.25, window=400,
        cooldown_labels=400,
    )  # fmt: skip
    client_rows, _ = _records(16, seed=40)
    stop = threading.Event()
    seen: dict[str, Any] = {"ok": 0, "errors": [], "versions": set()}

    def hammer(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            while not stop.is_set():
                try:
                    r = c.post("/ctr/predict", json={"rows": client_rows})
                except httpx.HTTPError as exc:  # a dropped connection is a failure
                    seen["errors"].append(repr(exc))
                    continue
                if r.status_code != 200:
                    seen["errors"].append(r.status_code)
                else:
                    seen["ok"] += 1
                    seen["versions"].add(r.json()["version"])

    with _Server(settings) as url, httpx.Client(base_url=url, timeout=60) as c:
        client = threading.Thread(target=hammer, args=(url,), daemon=True)
        client.start()
        try:
            pre, y_pre = _records(600, seed=31)
            post, y_post = _records(8000, seed=32, drift=True)
            rows, labels = pre + post, np.concatenate([y_pre, y_post])
            actions, kinds = [], []
            for s in range(0, len(rows), 100):
                pred = c.post("/ctr/predict", json={"rows": rows[s : s + 100]}).json()
                fb = c.post(
                    "/ctr/feedback",
                    json={"ids": pred["ids"], "labels": labels[s : s + 100].tolist()},
                ).json()
                actions.append(fb["action"])
                kinds.append(fb["decision"]["kind"])
                if fb["version"] != "v0001":
                    break
                time.sleep(0.01)  # let a background retrain get CPU time on small machines
            else:
                n_started = actions.count("started")
                pytest.fail(f"no promoted retrain after {len(rows)} rows ({n_started} triggers)")
            # Requests keep flowing for a moment on the new version.
            deadline = time.monotonic() + 5
            while len(seen["versions"]) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            client.join(timeout=60)
        assert kinds[5] == "healthy"  # before the teacher shift (600 rows, window 200)
        assert "started" in actions
        assert seen["errors"] == [] and seen["ok"] > 10
        assert seen["versions"] == {"v0001", "v0002"}  # the client crossed the hot reload
        status = c.get("/ctr/status").json()
        assert status["version"] == "v0002" and status["reloads"] == 1
        assert status["last_retrain"]["promoted"] is True
        assert status["last_retrain"]["new_auc"] >= status["last_retrain"]["old_auc"]
        metrics = c.get("/metrics").text
        assert _metric(metrics, "strata_ctr_retrains_total", 'outcome="promoted"') == 1
        assert _metric(metrics, "strata_ctr_drift_decisions_total", 'kind="triggered"') >= 1
        assert (
            math.isnan(_metric(metrics, "strata_ctr_rolling_auc"))
            or 0 < _metric(metrics, "strata_ctr_rolling_auc") < 1
        )
    assert ctr_registry(settings).serving() == "v0002"
    log = (settings.home / "logs" / "ctr-test-drift.jsonl").read_text().splitlines()
    assert any('"action": "started"' in line for line in log)
    assert any('"event": "retrain"' in line and '"promoted": true' in line for line in log)


def _cli_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
    env["STRATA_HOME"] = str(home)
    env["STRATA_CTR__REGISTRY_NAME"] = "ctr-test"
    return env


def test_cli_serve_without_model_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "strata.cli", "ctr", "serve", "--port", str(_free_port())],
        env=_cli_env(tmp_path / "empty-home"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "no serving model" in lines[0]


def test_cli_serve_answers_predictions(healthy: Settings) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "strata.cli", "ctr", "serve", "--port", str(port)],
        env=_cli_env(healthy.home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "strata ctr serve did not come up"
            time.sleep(0.2)
        recs, _ = _records(3, seed=9)
        r = httpx.post(url + "/ctr/predict", json={"rows": recs}, timeout=30)
        assert r.status_code == 200 and len(r.json()["probabilities"]) == 3
        assert "strata_ctr_predictions_total 3.0" in httpx.get(url + "/metrics").text
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _host_app(settings: Settings, registry: CollectorRegistry, events: list[str]) -> FastAPI:
    """Another team's app with its own lifespan, into which the CTR routes are installed."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        events.append("start")
        yield
        events.append("stop")

    app = FastAPI(lifespan=lifespan)
    install_ctr(app, settings, registry)
    return app


def test_install_ctr_into_an_existing_app(healthy: Settings, tmp_path: Path) -> None:
    events: list[str] = []
    registry = CollectorRegistry()
    with _Server(healthy, _host_app(healthy, registry, events)) as url:
        recs, _ = _records(4, seed=8)
        r = httpx.post(url + "/ctr/predict", json={"rows": recs}, timeout=30)
        assert r.status_code == 200 and r.json()["version"] == "v0001"
        assert events == ["start"]
    assert events == ["start", "stop"]
    text = generate_latest(registry).decode()
    assert _metric(text, "strata_ctr_predictions_total") == 4  # on the host's registry
    # Without a CTR model the host app still starts; /ctr/* answers 503 with the reason.
    empty = Settings(home=tmp_path / "no-ctr", ctr=healthy.ctr)
    with _Server(empty, _host_app(empty, CollectorRegistry(), [])) as url:
        r = httpx.get(url + "/ctr/status", timeout=30)
        assert r.status_code == 503 and "strata ctr train" in r.json()["detail"]


def test_standalone_server_freezes_the_loaded_model_and_exports_gc_pauses(
    healthy: Settings,
) -> None:
    import gc

    app = create_ctr_app(healthy)
    with _Server(healthy, app) as url, httpx.Client(base_url=url, timeout=30) as c:
        served = app.state.ctr.service.served
        cfg = healthy.gc
        assert gc.get_threshold() == (cfg.threshold0, cfg.threshold1, cfg.threshold2)
        assert gc.is_tracked(served) and gc.get_freeze_count() > 10_000
        assert id(served) not in {id(o) for o in gc.get_objects()}  # frozen, never walked
        text = c.get("/metrics").text
        assert _metric(text, "strata_gc_pause_seconds_count", 'generation="2"') >= 1
