"""The pipelines on a cluster share nothing but their storage URI: here `s3://` on a local S3
server (moto), with every step in its own empty home (the KFP SubprocessRunner runs each step as
its own process, mirroring the storage into a fresh scratch folder and pushing back only on
success) and the runner's STRATA_HOME an empty folder that must stay empty. ML-100K: initial on
the history before a cut produces a version that a real server serves from a copy of the bucket;
events after the cut reach the bucket's event log; incremental then lands them and promotes (or
rejects, with its reasons) on top of it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_pipelines_movielens import SMALL, STRATA

pytestmark = pytest.mark.e2e

DATASET = "movielens-100k"
BUCKET = "strata-e2e"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(env: dict[str, str], *args: str) -> dict:
    res = subprocess.run([str(STRATA), *args], capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


def test_initial_then_incremental_through_s3_only(
    ml100k_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("s3fs", reason="needs the 'pipelines' extra (s3fs)")
    moto_server = pytest.importorskip("moto.server", reason="needs moto (dev extra)")
    if not STRATA.exists():
        pytest.skip(f"console script {STRATA} is not installed")
    import fsspec

    from strata.datasets.movielens import read_movielens_100k
    from strata.features.event_files import ingest_file
    from strata.pipelines.storage import serving_version, workspace
    from strata.training.evaluate import quantile_ts

    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    aws = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
    }
    for k, v in aws.items():
        monkeypatch.setenv(k, v)
    try:
        fsspec.filesystem("s3", skip_instance_cache=True).mkdir(BUCKET)
        uri = f"s3://{BUCKET}/strata"
        home = tmp_path / "runner-home"  # the steps' shared disk would be here: stays empty
        home.mkdir()
        env = {**os.environ, **SMALL, **aws, "STRATA_HOME": str(home)}
        env["TMPDIR"] = str(tmp_path / "scratch")  # each step's scratch home lives here
        Path(env["TMPDIR"]).mkdir()
        ds = read_movielens_100k(ml100k_dir)
        cut = quantile_ts(ds, 0.8)

        t0 = time.monotonic()
        out = _run(env, "pipeline", "run", "initial", "--local", "--storage", uri,
                   "--data-path", str(ml100k_dir), "--until", str(cut), "--epochs", "1",
                   "--no-encode")  # fmt: skip
        first = out["decision"]
        t_initial = time.monotonic() - t0
        assert first["accepted"] and first["published"], first
        fsspec.filesystem("s3").invalidate_cache()
        assert serving_version(uri, DATASET) == first["version"] == "v0001"
        assert list(home.iterdir()) == []  # nothing went through the local home
        # every step's scratch home was removed after it pushed: only KFP's local root is left
        leftover = [p.name for p in Path(env["TMPDIR"]).iterdir()]
        assert not [n for n in leftover if n.startswith("strata-ws-")], leftover

        # a bootstrap rerun is a no-op once the dataset serves
        again = _run(env, "pipeline", "run", "initial", "--local", "--storage", uri,
                     "--dataset", DATASET, "--unless-serving")  # fmt: skip
        assert again["skipped"] is True and again["serving"] == "v0001"

        # servable: a real server on a copy of the bucket answers /recommend with that version
        copy = tmp_path / "copy"
        fsspec.filesystem("s3").get(f"{BUCKET}/strata/", str(copy) + "/", recursive=True)
        serve_env = {**env, "STRATA_HOME": str(copy)}
        sport = _free_port()
        proc = subprocess.Popen(
            [str(STRATA), "serve", "--port", str(sport)], env=serve_env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, "server exited"
                try:
                    r = httpx.get(f"http://127.0.0.1:{sport}/recommend",
                                  params={"user_id": 1, "k": 5}, timeout=5)  # fmt: skip
                    if r.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass  # not listening yet
                assert time.monotonic() < deadline, "server did not answer"
                time.sleep(0.5)
            assert r.json()["model_version"] == "v0001" and len(r.json()["items"]) == 5
        finally:
            proc.terminate()
            proc.wait(30)

        # events after the cut land in the bucket's event log (what the serving replicas write)
        after = ds.interactions[ds.interactions["ts"] >= cut].sort_values("ts").head(2000)
        lines = [
            json.dumps({"event_id": f"ml-{r.event_id}", "user_id": int(r.user_id),
                        "item_id": int(r.item_id), "type": "rating", "ts": int(r.ts),
                        "value": float(r.value), "context": {"device": str(r.device)}})
            for r in after.itertuples()
        ]  # fmt: skip
        (tmp_path / "after.jsonl").write_text("\n".join(lines) + "\n")
        monkeypatch.setenv("STRATA_HOME", str(tmp_path / "ingest-home"))
        with workspace(uri) as s:
            assert ingest_file(s, tmp_path / "after.jsonl")["new"] == len(lines)

        t0 = time.monotonic()
        out = _run(env, "pipeline", "run", "incremental", "--local", "--storage", uri)
        t_incremental = time.monotonic() - t0
        dec = out["decision"]
        assert dec["new_events"] == len(lines) and dec["since"] == cut
        fsspec.filesystem("s3").invalidate_cache()
        if dec["accepted"]:
            assert serving_version(uri, DATASET) == dec["version"] == "v0002"
        else:
            assert dec["reasons"] and serving_version(uri, DATASET) == "v0001"
        print(f"s3 pipelines: initial {t_initial:.1f} s, incremental {t_incremental:.1f} s, "
              f"incremental accepted={dec['accepted']}", file=sys.stderr)  # fmt: skip
        assert list(home.iterdir()) == []
    finally:
        server.stop()
