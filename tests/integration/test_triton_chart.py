"""The chart's Triton Deployment and what its `export` sidecar writes.

The sidecar's own command (from `helm template` with the gpu-triton profile) runs here against a
registry and fills the model repository; that repository, as written, passes `check_repository`
(each config against its model as ONNX Runtime loads it, by the rules of Triton's onnxruntime
backend). A real `tritonserver` started with the chart's repository options (poll mode) then
follows it: a promotion is re-exported by the same running sidecar and Triton picks it up
without a restart. That server is the one of the pytriton wheel, which has no onnxruntime
backend, so it serves a mirror of the repository with each `platform` line swapped for its
Python backend (see test_triton.py): this checks the chart's wiring and the reload transport,
not Triton's onnxruntime backend loading our configs. The serving pods of that profile are
pointed at the Triton Service.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from strata.serving.backends import MODEL_FILES, TritonBackend
from strata.serving.triton import check_repository
from tests.ci import missing
from tests.unit.backend_support import register_small_models
from tests.unit.test_pipelines_deploy import one

from .test_triton import (
    find_triton,
    start_tritonserver,
    stop_process,
    transport_repository,
)

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess]

POLL_S = 1


def _chart() -> list[dict[str, Any]]:
    from tests.k8s_tools import render_chart

    return render_chart("gpu-triton", sets=(f"triton.pollSeconds={POLL_S}",))


def _containers(dep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in dep["spec"]["template"]["spec"]["containers"]}


def _served_version(repo: Path) -> str:
    text = (repo / "ranker" / "config.pbtxt").read_text()
    m = re.search(r'key: "strata_version"\s*value: \{ string_value: "(\w+)" \}', text)
    return m.group(1) if m else ""


def _wait_for(cond: Any, what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def _mirror(exported: Path, repo: Path) -> None:
    """The transport copy of the sidecar's repository (platform swapped for the Python backend),
    each model swapped in by rename (as the sidecar swaps its own), so Triton's poll sees whole
    models only."""
    stage = repo.parent / f".stage-{time.monotonic_ns()}"
    transport_repository(exported, stage)
    repo.mkdir(exist_ok=True)
    for name in MODEL_FILES:
        old = repo.parent / f".old-{name}-{time.monotonic_ns()}"
        if (repo / name).exists():
            os.rename(repo / name, old)
        os.rename(stage / name, repo / name)
        shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(stage, ignore_errors=True)


def test_serving_pods_of_the_triton_profile_call_the_triton_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    chart = _chart()
    serving = _containers(one(chart, "Deployment", "strata-serving"))["serving"]
    env = {e["name"]: e.get("value") for e in serving["env"]}
    assert env["STRATA_INFERENCE__TYPE"] == "triton"
    svc = one(chart, "Service", "strata-triton")
    http = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "http")
    assert env["STRATA_INFERENCE__URL"] == f"http://strata-triton.strata.svc:{http}"
    # ... which the settings read as the Triton backend
    from strata.config import Settings

    monkeypatch.setenv("STRATA_INFERENCE__TYPE", "triton")
    monkeypatch.setenv("STRATA_INFERENCE__URL", env["STRATA_INFERENCE__URL"])
    inference = Settings().inference
    assert inference.type == "triton" and inference.url == env["STRATA_INFERENCE__URL"]
    triton = _containers(one(chart, "Deployment", "strata-triton"))["triton"]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_triton_chart_transport_python_backend_follows_the_export_sidecar(tmp_path: Path) -> None:
    """The sidecar's repository is checked as written; Triton (Python backend, platform line
    swapped: the bundled server has no onnxruntime backend) follows its re-exports in poll mode."""
    pytest.importorskip("tritonclient.http", reason="needs the 'triton' extra: strata[triton]")
    dep = one(_chart(), "Deployment", "strata-triton")
    pod = dep["spec"]["template"]["spec"]
    c = _containers(dep)
    export, triton = c["export"], c["triton"]
    # the sidecar writes where Triton reads: one emptyDir mounted in both
    mounts = {(m["name"], m["mountPath"]) for m in export["volumeMounts"]}
    out = export["command"][export["command"].index("--out") + 1]
    repo_arg = next(a for a in triton["command"] if a.startswith("--model-repository="))
    assert repo_arg == f"--model-repository={out}"
    assert ("models", out) in mounts
    assert {"name": "models", "mountPath": out, "readOnly": True} in triton["volumeMounts"]
    assert {"name": "models", "emptyDir": {}} in pod["volumes"]
    poll = [a for a in triton["command"] if a.startswith(("--model-control-mode", "--repository"))]
    assert poll == ["--model-control-mode=poll", f"--repository-poll-secs={POLL_S}"]
    env = {e["name"]: e.get("value") for e in export["env"]}
    assert env["STRATA_TRITON_EXPORT__INSTANCE_KIND"] == "KIND_GPU"  # the gpu profile

    dist = find_triton()
    if dist is None:
        missing("no Triton env (.ci/run builds one; see test_triton.py)")
    home = tmp_path / "home"
    dataset = export["command"][export["command"].index("--dataset") + 1]
    first = register_small_models(home, dataset)
    exported = tmp_path / "exported"
    argv = [sys.executable, "-m", "strata.cli", *export["command"][1:]]
    argv[argv.index("--out") + 1] = str(exported)
    env = {**os.environ, "STRATA_HOME": str(home), "HOME": str(tmp_path)}
    env["STRATA_TRITON_EXPORT__INSTANCE_KIND"] = "KIND_CPU"  # no GPU here
    log = (tmp_path / "sidecar.log").open("w")
    sidecar = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc = None
    try:
        _wait_for(lambda: (exported / "ranker" / "config.pbtxt").is_file(), "the first export")
        assert _served_version(exported) == first.version
        assert check_repository(exported) == sorted(MODEL_FILES)  # as the sidecar wrote it
        repo = tmp_path / "repo"
        _mirror(exported, repo)
        proc, port = start_tritonserver(dist, repo, tmp_path, tuple(poll))
        client = TritonBackend(f"http://127.0.0.1:{port}", timeout_s=5.0)
        _wait_for(lambda: client.health().ok, "tritonserver ready", timeout=120)
        assert client.model_version == first.version
        client.close()

        promoted_at = time.monotonic()
        second = register_small_models(home, dataset)  # promoted: the sidecar re-exports
        assert second.version != first.version
        _wait_for(lambda: _served_version(exported) == second.version, "the re-export")
        assert check_repository(exported) == sorted(MODEL_FILES)
        _mirror(exported, repo)

        def reloaded() -> bool:
            fresh = TritonBackend(f"http://127.0.0.1:{port}", timeout_s=5.0)
            try:
                return fresh.health().ok and fresh.model_version == second.version
            finally:
                fresh.close()

        _wait_for(reloaded, "Triton to load the promoted version (poll mode)", timeout=60)
        took = time.monotonic() - promoted_at
        print(f"promotion -> served by Triton: {took:.1f} s (poll {POLL_S} s)", file=sys.stderr)
        assert proc.poll() is None  # the same server, no restart
        assert sidecar.poll() is None  # the sidecar keeps following
    finally:
        stop_process(sidecar)
        log.close()
        if proc is not None:
            stop_process(proc)
