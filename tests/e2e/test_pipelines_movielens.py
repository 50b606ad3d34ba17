"""End to end on ML-100K through the Kubeflow pipelines run locally (KFP SubprocessRunner):
initial on the history before a cut -> a real server starts -> events after the cut arrive over
HTTP -> incremental lands them, fine-tunes, gates and reloads the server while a client keeps
requesting; no request fails and the server ends on the registry's serving version."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from strata.registry import Registry

pytestmark = pytest.mark.e2e

STRATA = Path(sys.executable).parent / "strata"
DATASET = "movielens-100k"
TOKEN = "e2e-admin-token"
# Small training so the whole story stays around a minute or two on a shared 2-core CPU.
SMALL = {
    "STRATA_TRAINING__BATCH_SIZE": "1024",
    "STRATA_TRAINING__RANDOM_NEGATIVES": "64",
    "STRATA_TRAINING__RANKER_EPOCHS": "1",
    "STRATA_TRAINING__RANKER_MAX_POSITIVES": "3000",
    "STRATA_TRAINING__CANDIDATES": "50",
    "STRATA_TRAINING__FINETUNE_EPOCHS": "1",
    "STRATA_TRAINING__REPLAY_RATIO": "0.5",
    "STRATA_SERVE__ADMIN_TOKEN": TOKEN,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pipeline(env: dict[str, str], *args: str) -> dict:
    res = subprocess.run(
        [str(STRATA), "pipeline", "run", *args, "--local"],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)  # stdout is the result JSON only; step logs go to stderr


def _wait_ready(url: str, proc: subprocess.Popen[str]) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "server exited"
        try:
            r = httpx.get(url + "/readyz", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.5)
    raise AssertionError("server did not become ready")


def test_initial_then_incremental_with_live_reload(ml100k_dir: Path, tmp_path: Path) -> None:
    if not STRATA.exists():
        pytest.skip(f"console script {STRATA} is not installed")
    from strata.datasets.movielens import read_movielens_100k
    from strata.training.evaluate import quantile_ts

    storage = tmp_path / "storage"
    env = {**os.environ, **SMALL, "STRATA_HOME": str(storage)}
    ds = read_movielens_100k(ml100k_dir)
    cut = quantile_ts(ds, 0.8)

    # 1. initial: history before the cut (content encoders off here: covered by their tests).
    out = _pipeline(env, "initial", "--storage", str(storage), "--data-path", str(ml100k_dir),
                    "--until", str(cut), "--epochs", "1", "--no-encode")  # fmt: skip
    first = out["decision"]
    assert first["accepted"] and first["published"], first
    reg = Registry(storage / "registry", DATASET)
    assert reg.serving() == first["version"] == "v0001"
    assert reg.manifest()["data_range"]["until"] == cut
    assert (reg.path() / "index").is_dir()

    # 2. a real server on that version.
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(STRATA), "serve", "--port", str(port)], env=env, text=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert _wait_ready(url, server)["model_version"] == "v0001"

        # 3. events after the cut arrive over HTTP (durable log in the storage).
        after = ds.interactions[ds.interactions["ts"] >= cut].sort_values("ts").head(2000)
        events = [
            {"event_id": f"ml-{r.event_id}", "user_id": int(r.user_id),
             "item_id": int(r.item_id), "type": "rating", "ts": int(r.ts),
             "value": float(r.value), "context": {"device": str(r.device)}}
            for r in after.itertuples()
        ]  # fmt: skip
        for i in range(0, len(events), 1000):
            r = httpx.post(url + "/events", json=events[i : i + 1000], timeout=60)
            assert r.status_code == 200, r.text
            assert r.json()["new"] == len(events[i : i + 1000])

        # 4. incremental while a client keeps asking for recommendations.
        users = ds.users["user_id"].to_numpy()[:50]
        seen: list[tuple[int, str | None]] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(base_url=url, timeout=30) as c:
                i = 0
                while not stop.is_set():
                    r = c.get("/recommend", params={"user_id": int(users[i % 50]), "k": 10})
                    seen.append((r.status_code, r.json().get("model_version")))
                    i += 1

        t = threading.Thread(target=client, daemon=True)
        t.start()
        out = _pipeline(env, "incremental", "--storage", str(storage), "--serving-url", url)
        time.sleep(1.0)  # a few requests after the reload
        stop.set()
        t.join(30)

        dec = out["decision"]
        assert dec["new_events"] == len(events) and dec["since"] == cut
        assert seen and all(code == 200 for code, _ in seen), [s for s in seen if s[0] != 200]
        logged = [json.loads(x) for x in (reg.dir / "decisions.jsonl").read_text().splitlines()]
        if dec["accepted"]:
            assert reg.serving() == dec["version"] == "v0002"
            assert out["deployed"] and out["response"]["version"] == "v0002"
            assert seen[-1][1] == "v0002" and seen[0][1] == "v0001"
            versions = [v for _, v in seen]
            # Monotone switch: once the new version answers, the old one never comes back.
            assert versions[versions.index("v0002") :].count("v0001") == 0
        else:
            assert dec["reasons"] and not out["deployed"], out
            assert reg.serving() == "v0001" and seen[-1][1] == "v0001"
            assert logged[-1]["accepted"] is False
        print(f"incremental: accepted={dec['accepted']} serving={dec.get('metrics_serving')} "
              f"candidate={dec.get('metrics_candidate')} requests={len(seen)}")  # fmt: skip
        assert np.isfinite(list(dec["metrics_candidate"].values())).all()
    finally:
        server.terminate()
        server.wait(30)
