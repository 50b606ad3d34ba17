"""TritonBackend against a real `tritonserver` (the one bundled in the nvidia-pytriton wheel, CPU).

That wheel pins numpy<2 and is ~450 MB, so it lives in its own environment: `.ci/run` builds it
in the machine's cache and points STRATA_TRITON_VENV at it (in CI a missing one fails the run);
locally create it with
    python3.11 -m venv bench/.venv-triton
    bench/.venv-triton/bin/pip install -r tests/integration/requirements-triton.txt
(or point STRATA_TRITON_VENV at another one), else this file skips. The wheel has no ONNX
Runtime backend, so each model of our exported repository is served by Triton's Python backend
running the same `model.onnx` with ONNX Runtime (`triton_python_model.py`) under our generated
`config.pbtxt` with only the platform line swapped: Triton parses our config, applies its
reshapes, batches dynamically and answers real HTTP requests, and the client must return what the
in-process backend returns.
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
from strata.serving.triton import export_triton

from ..unit.backend_support import Version, random_inputs, register_small_models, torch_outputs

pytestmark = pytest.mark.integration

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


def python_backend_repository(exported: Path, out: Path) -> None:
    """Copy an exported repository, serving each `model.onnx` via the Python backend instead."""
    for name in MODEL_FILES:
        (out / name / "1").mkdir(parents=True)
        cfg = (exported / name / "config.pbtxt").read_text()
        assert 'platform: "onnxruntime_onnx"' in cfg
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


@dataclass
class Served:
    """A running Triton with our exported models, the version behind it and both backends."""

    version: Version
    triton: TritonBackend
    local: OnnxRuntimeBackend


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    pytest.importorskip("tritonclient.http", reason="needs the 'triton' extra: strata[triton]")
    dist = find_triton()
    if dist is None:
        how = ("python3.11 -m venv bench/.venv-triton && bench/.venv-triton/bin/pip install -r "
               "tests/integration/requirements-triton.txt")  # fmt: skip
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"no Triton env at {VENV}: .ci/run builds one ({how})")
        pytest.skip(f"no Triton env at {VENV}: {how}")
    work = tmp_path_factory.mktemp("triton")
    v = register_small_models(work / "home")
    export_triton(v.settings, v.dataset, work / "exported")
    python_backend_repository(work / "exported", work / "repo")
    proc, port = start_tritonserver(dist, work / "repo", work)
    client = TritonBackend(f"http://127.0.0.1:{port}", timeout_s=5.0)
    try:
        deadline = time.monotonic() + 120
        while not client.health().ok:
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (work / "tritonserver.log").read_text()[-3000:]
                pytest.fail(f"tritonserver did not become ready:\n{log}")
            time.sleep(0.5)
        local = OnnxRuntimeBackend.from_registry(v.settings, v.dataset)
        yield Served(v, client, local)
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
def test_triton_returns_the_in_process_numbers(served: Served, model: str, batch: int) -> None:
    x = random_inputs(served.local.inputs(model), batch, seed=batch + 7)
    got = served.triton.infer(model, x)
    want = served.local.infer(model, x)
    assert set(got) == set(want)
    for name, w in want.items():
        assert got[name].shape == w.shape and got[name].dtype == w.dtype
        assert float(np.abs(got[name] - w).max()) <= 1e-6
        # ... and both are the torch model's numbers.
        assert float(np.abs(got[name] - torch_outputs(served.version, model, x)).max()) <= 1e-4


def test_triton_serves_the_registry_version_and_is_healthy(served: Served) -> None:
    h = served.triton.health()
    assert h.ok and "ready" in h.detail
    assert served.triton.model_version == served.version.version == served.local.model_version
    # The server holds the shapes of our config: history width and scalars reshaped to [].
    specs = {s.name: s.shape for s in served.triton.inputs("ranker")}
    assert specs["user"] == (-1,) and specs["hist"] == (-1, 4)


def test_concurrent_requests_through_dynamic_batching(served: Served) -> None:
    inputs = [random_inputs(served.local.inputs("ranker"), 1 + i % 5, seed=i) for i in range(24)]

    def call(x: dict[str, np.ndarray]) -> np.ndarray:
        return served.triton.infer("ranker", x)["logit"]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(call, inputs))
    for x, got in zip(inputs, results, strict=True):
        assert np.abs(got - served.local.infer("ranker", x)["logit"]).max() <= 1e-6


def test_bad_requests_fail_before_the_round_trip(served: Served) -> None:
    x = random_inputs(served.local.inputs("query_tower"), 3)
    with pytest.raises(ValidationError) as exc:
        served.triton.infer("query_tower", {**x, "ctx": x["ctx"].astype(np.float64)})
    assert exc.value.field == "query_tower.ctx"
    with pytest.raises(NotFoundError):
        served.triton.infer("item_tower", x)
