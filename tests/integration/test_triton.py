"""Triton tests with the real `tritonserver` bundled in the nvidia-pytriton wheel (CPU).

That wheel pins numpy<2 and is ~450 MB, so it lives in its own environment: `.ci/run` builds it
in the machine's cache and points STRATA_TRITON_VENV at it (in CI a missing one fails the run);
locally create it with
    python3.11 -m venv bench/.venv-triton
    bench/.venv-triton/bin/pip install -r tests/integration/requirements-triton.txt
(or point STRATA_TRITON_VENV at another one), else this file skips.

What runs here, honestly: the bundled server has no ONNX Runtime backend (its backends folder
holds `python/` only), so it cannot serve our exported repository as exported.
`test_bundled_tritonserver_parses_the_export_unchanged_but_has_no_onnxruntime_backend` starts it
on the repository exactly as `export_triton` wrote it and shows how far it gets: Triton's own
protobuf parser and repository checks accept every `config.pbtxt`, and each model then fails for
the missing backend alone. Whether each config matches its model the way that backend would check
it is tested without a server, against ONNX Runtime (tests/unit/test_triton_config.py, and
`check_repository`, which every export runs). The `test_triton_transport_python_backend_*` tests
then exercise the transport only: the same repository with the `platform` line swapped for
Triton's Python backend, which runs the same `model.onnx` with ONNX Runtime
(`triton_python_model.py`): Triton applies our reshapes, batches dynamically and answers real
HTTP requests, and our client must return what the in-process backend returns.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from strata.errors import NotFoundError, ValidationError
from strata.serving.backends import MODEL_FILES, OnnxRuntimeBackend, TritonBackend
from strata.serving.triton import check_repository, export_triton
from tests.ci import missing

from ..unit.backend_support import Version, random_inputs, register_small_models, torch_outputs

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess]

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("STRATA_TRITON_VENV", ROOT / "bench" / ".venv-triton"))
MODEL_PY = Path(__file__).with_name("triton_python_model.py")


@dataclass(frozen=True)
class TritonDist:
    """Where the bundled server, backends, Python stub and libpython of the Triton env are."""

    venv: Path
    server: Path
    backends: Path
    stub: Path
    libs: tuple[Path, ...]


def find_triton() -> TritonDist | None:
    """The tritonserver distribution inside the separate env, or None when it is not installed."""
    sites = sorted(VENV.glob("lib/python3.*/site-packages"))
    cfg = VENV / "pyvenv.cfg"
    if not sites or not cfg.is_file():
        return None
    dist = sites[0] / "pytriton" / "tritonserver"
    pyver = sites[0].parent.name.removeprefix("python")
    stub = dist / "python_backend_stubs" / pyver / "triton_python_backend_stub"
    if not (dist / "bin" / "tritonserver").is_file() or not stub.is_file():
        return None
    home = next(
        (ln.split("=", 1)[1].strip() for ln in cfg.read_text().splitlines() if "home" in ln), ""
    )
    # The Python backend stub links libpython (base interpreter's lib/) and the wheel's CUDA shim
    # libraries (nvidia_pytriton.libs, found via an RPATH relative to the stub's original place).
    libs = (Path(home).parent / "lib", sites[0] / "nvidia_pytriton.libs")
    return TritonDist(VENV, dist / "bin" / "tritonserver", dist / "backends", stub, libs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def transport_repository(exported: Path, out: Path) -> None:
    """Copy an exported repository for the transport tests: each model's exported config with its
    `platform: "onnxruntime_onnx"` line swapped for `backend: "python"` (the bundled server has no
    onnxruntime backend), and `triton_python_model.py` next to the same `model.onnx`."""
    for name in MODEL_FILES:
        (out / name / "1").mkdir(parents=True)
        cfg = (exported / name / "config.pbtxt").read_text()
        assert cfg.count('platform: "onnxruntime_onnx"') == 1
        swapped = cfg.replace('platform: "onnxruntime_onnx"', 'backend: "python"')
        (out / name / "config.pbtxt").write_text(swapped)
        shutil.copyfile(exported / name / "1" / "model.onnx", out / name / "1" / "model.onnx")
        shutil.copyfile(MODEL_PY, out / name / "1" / "model.py")


def start_tritonserver(
    dist: TritonDist, repo: Path, work: Path, extra_args: tuple[str, ...] = ()
) -> tuple[subprocess.Popen, int]:
    """Start tritonserver on free loopback ports; return the process and its HTTP port."""
    backends = work / "backends"
    # The stub must sit in backends/python; the rest of the backend folder is reused as is.
    shutil.copytree(dist.backends, backends, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(dist.stub, backends / "python" / "triton_python_backend_stub")
    http, grpc, metrics = _free_port(), _free_port(), _free_port()
    env = {
        **os.environ,
        # The stub embeds CPython and finds its site-packages through the first python3 on PATH.
        "PATH": f"{dist.venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "LD_LIBRARY_PATH": ":".join(str(p) for p in dist.libs),
    }
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    log = (work / "tritonserver.log").open("w")
    proc = subprocess.Popen(
        [
            str(dist.server),
            f"--model-repository={repo}",
            f"--backend-directory={backends}",
            f"--http-port={http}",
            f"--grpc-port={grpc}",
            f"--metrics-port={metrics}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--exit-timeout-secs=5",
            *extra_args,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return proc, http


def _require_triton() -> TritonDist:
    """The Triton env, or skip (fail in CI) with how to build it."""
    pytest.importorskip("tritonclient.http", reason="needs the 'triton' extra: strata[triton]")
    dist = find_triton()
    if dist is None:
        how = ("python3.11 -m venv bench/.venv-triton && bench/.venv-triton/bin/pip install -r "
               "tests/integration/requirements-triton.txt")  # fmt: skip
        missing(f"no Triton env at {VENV} (.ci/run builds one): {how}")
    return dist


@dataclass(frozen=True)
class Exported:
    """A registered version and its Triton repository exactly as `export_triton` wrote it."""

    version: Version
    repo: Path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    work = tmp_path_factory.mktemp("export")
    v = register_small_models(work / "home")
    export_triton(v.settings, v.dataset, work / "exported")
    return Exported(v, work / "exported")


def _run_to_exit(dist: TritonDist, repo: Path, work: Path) -> str:
    """Start tritonserver on `repo` (it exits when a model fails to load); return its log."""
    work.mkdir()
    proc, _ = start_tritonserver(dist, repo, work)
    try:
        rc = proc.wait(timeout=60)
    finally:
        stop_process(proc)
    assert rc != 0, "tritonserver started: the repository loaded"
    return (work / "tritonserver.log").read_text()


def test_bundled_tritonserver_parses_the_export_unchanged_but_has_no_onnxruntime_backend(
    exported: Exported, tmp_path: Path
) -> None:
    """The real server on the exported repository, not a byte changed: it reads every config with
    Triton's own ModelConfig protobuf parser and repository checks, then fails each model for the
    missing onnxruntime backend alone. (The configs' match with the models is checked against
    ONNX Runtime in tests/unit/test_triton_config.py; a server with that backend is not pip-able.)
    """
    dist = _require_triton()
    backends = sorted(p.name for p in dist.backends.iterdir() if p.is_dir())
    if "onnxruntime" in backends:
        pytest.fail(
            f"{dist.backends} now has an onnxruntime backend: serve the exported repository "
            "unchanged in the test_triton_transport_* tests instead of the Python-backend copy"
        )
    assert backends == ["python"]
    assert check_repository(exported.repo) == sorted(MODEL_FILES)
    log = _run_to_exit(dist, exported.repo, tmp_path / "as-exported")
    for name in MODEL_FILES:
        assert (
            f"failed to load '{name}' version 1: Invalid argument: unable to find backend "
            "library for backend 'onnxruntime'"
        ) in log, log[-3000:]
    assert "Poll failed" not in log and "failed to read text proto" not in log, log[-3000:]

    # ... and the server does reject a config it cannot parse, before any backend is looked up
    bad = tmp_path / "bad"
    shutil.copytree(exported.repo, bad)
    cfg = bad / "ranker" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("data_type: TYPE_FP32", "data_type: TYPE_FLOAT32", 1))
    log = _run_to_exit(dist, bad, tmp_path / "bad-config")
    assert "Poll failed for model directory 'ranker': failed to read text proto" in log


@dataclass
class Transport:
    """A running Triton serving the exported models through its Python backend (the platform
    line swapped), the version behind it, and both client backends."""

    version: Version
    triton: TritonBackend
    local: OnnxRuntimeBackend


@pytest.fixture(scope="module")
def transport(exported: Exported, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Transport]:
    dist = _require_triton()
    work = tmp_path_factory.mktemp("triton")
    transport_repository(exported.repo, work / "repo")
    proc, port = start_tritonserver(dist, work / "repo", work)
    client = TritonBackend(f"http://127.0.0.1:{port}", timeout_s=5.0)
    v = exported.version
    try:
        deadline = time.monotonic() + 120
        while not client.health().ok:
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (work / "tritonserver.log").read_text()[-3000:]
                pytest.fail(f"tritonserver did not become ready:\n{log}")
            time.sleep(0.5)
        local = OnnxRuntimeBackend.from_registry(v.settings, v.dataset)
        yield Transport(v, client, local)
    finally:
        client.close()
        stop_process(proc)


def stop_process(proc: subprocess.Popen) -> None:
    """Terminate, then kill if it has not exited within 20 s."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("model", list(MODEL_FILES))
@pytest.mark.parametrize("batch", [1, 50])
def test_triton_transport_python_backend_returns_the_in_process_numbers(
    transport: Transport, model: str, batch: int
) -> None:
    x = random_inputs(transport.local.inputs(model), batch, seed=batch + 7)
    got = transport.triton.infer(model, x)
    want = transport.local.infer(model, x)
    assert set(got) == set(want)
    for name, w in want.items():
        assert got[name].shape == w.shape and got[name].dtype == w.dtype
        assert float(np.abs(got[name] - w).max()) <= 1e-6
        # ... and both are the torch model's numbers.
        assert float(np.abs(got[name] - torch_outputs(transport.version, model, x)).max()) <= 1e-4


def test_triton_transport_python_backend_serves_the_registry_version(
    transport: Transport,
) -> None:
    h = transport.triton.health()
    assert h.ok and "ready" in h.detail
    v = transport.version.version
    assert transport.triton.model_version == v == transport.local.model_version
    # The server holds the shapes of our config: history width and scalars reshaped to [].
    specs = {s.name: s.shape for s in transport.triton.inputs("ranker")}
    assert specs["user"] == (-1,) and specs["hist"] == (-1, 4)


def test_triton_transport_python_backend_dynamic_batching_under_concurrency(
    transport: Transport,
) -> None:
    local = transport.local
    inputs = [random_inputs(local.inputs("ranker"), 1 + i % 5, seed=i) for i in range(24)]

    def call(x: dict[str, np.ndarray]) -> np.ndarray:
        return transport.triton.infer("ranker", x)["logit"]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(call, inputs))
    for x, got in zip(inputs, results, strict=True):
        assert np.abs(got - local.infer("ranker", x)["logit"]).max() <= 1e-6


def test_triton_transport_bad_requests_fail_before_the_round_trip(transport: Transport) -> None:
    x = random_inputs(transport.local.inputs("query_tower"), 3)
    with pytest.raises(ValidationError) as exc:
        transport.triton.infer("query_tower", {**x, "ctx": x["ctx"].astype(np.float64)})
    assert exc.value.field == "query_tower.ctx"
    with pytest.raises(NotFoundError):
        transport.triton.infer("item_tower", x)
