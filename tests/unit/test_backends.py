"""Inference backends and the Triton model-repository export (structural; no Triton server)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from strata.config import OnnxRuntimeConfig, Settings, TritonBackendConfig, TritonExportConfig
from strata.errors import DataError, MissingExtraError, NotFoundError, ValidationError
from strata.serving.backends import (
    TRITON_TO_NUMPY,
    VERSION_PARAM,
    InferenceBackend,
    InferenceUnavailableError,
    OnnxRuntimeBackend,
    TritonBackend,
    create_backend,
)
from strata.serving.triton import (
    check_repository,
    export_triton,
    parse_pbtxt,
    read_model_config,
)

from .backend_support import Version, random_inputs, register_small_models, torch_outputs


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory) -> Version:
    return register_small_models(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def repo(version: Version, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("triton") / "repo"
    export_triton(version.settings, version.dataset, out)
    return out


# --- pbtxt parser ----------------------------------------------------------------------------


def test_parse_pbtxt_nested_lists_comments_and_strings() -> None:
    text = """
    # a comment
    name: "m\\"x"  max_batch_size: 8
    input [ { name: "a" dims: [ 1, -1 ] reshape: { shape: [ ] } }, { name: "b" dims: [3] } ]
    parameters { key: "k" value: { string_value: "v" } }
    parameters { key: "j" value: { string_value: "w" } }
    dynamic_batching { max_queue_delay_microseconds: 100 }
    """
    cfg = parse_pbtxt(text)
    assert cfg["name"] == ['m"x'] and cfg["max_batch_size"] == [8]
    assert [i["name"][0] for i in cfg["input"]] == ["a", "b"]
    assert cfg["input"][0]["dims"] == [1, -1] and cfg["input"][0]["reshape"] == [{"shape": []}]
    assert [p["key"][0] for p in cfg["parameters"]] == ["k", "j"]
    assert cfg["dynamic_batching"][0]["max_queue_delay_microseconds"] == [100]


@pytest.mark.parametrize("bad", ['name: "x" input [ { name: "a" ', "name: : 3", "{ }", "a: 1 }"])
def test_parse_pbtxt_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_pbtxt(bad)


# --- export ----------------------------------------------------------------------------------


def _onnx_io(path: Path) -> dict[str, list[tuple[str, str, list[int]]]]:
    """Names, NumPy dtypes and shapes as ONNX Runtime loads the model: the view Triton's
    onnxruntime backend checks a config against (independent of strata.triton)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np_types = {"tensor(float)": "float32", "tensor(int64)": "int64"}

    def one(a: ort.NodeArg) -> tuple[str, str, list[int]]:
        return a.name, np_types[a.type], [d if isinstance(d, int) else -1 for d in a.shape]

    return {
        "input": [one(a) for a in sess.get_inputs()],
        "output": [one(a) for a in sess.get_outputs()],
    }


@pytest.mark.parametrize("model", ["query_tower", "ranker"])
def test_exported_config_matches_onnx_graph(version: Version, repo: Path, model: str) -> None:
    src = version.settings.registry_dir / version.dataset / version.version / f"{model}.onnx"
    assert (repo / model / "1" / "model.onnx").read_bytes() == src.read_bytes()
    cfg = read_model_config(repo / model)
    assert cfg["name"] == [model] and cfg["platform"] == ["onnxruntime_onnx"]
    assert cfg["max_batch_size"] == [512]
    db = cfg["dynamic_batching"][0]
    assert db["preferred_batch_size"] == [16, 128] and db["max_queue_delay_microseconds"] == [200]
    assert cfg["instance_group"] == [{"count": [2], "kind": ["KIND_CPU"]}]
    params = {p["key"][0]: p["value"][0]["string_value"][0] for p in cfg["parameters"]}
    assert params["strata_version"] == version.version and params["strata_dataset"] == "tiny"
    graph = _onnx_io(src)
    for kind in ("input", "output"):
        entries = cfg[kind]
        assert [e["name"][0] for e in entries] == [n for n, _, _ in graph[kind]]
        for e, (name, dtype, shape) in zip(entries, graph[kind], strict=True):
            assert TRITON_TO_NUMPY[e["data_type"][0]] == dtype, name
            assert shape[0] == -1  # dynamic batch axis, left out of Triton dims
            if len(shape) == 1:  # per-sample scalar: [1] reshaped to []
                assert e["dims"] == [1] and e["reshape"] == [{"shape": []}], name
            else:
                assert e["dims"] == shape[1:] and "reshape" not in e, name


def test_export_shapes_cover_every_tensor_kind(repo: Path) -> None:
    # The ranker has scalars, (B, L) int64 history and (B, D) float features; the query tower a
    # 2-d float output: the structural test above must have exercised each case.
    cfg = read_model_config(repo / "ranker")
    kinds = {(e["data_type"][0], "reshape" in e) for e in cfg["input"]}
    assert kinds >= {("TYPE_INT64", True), ("TYPE_INT64", False), ("TYPE_FP32", False)}
    assert read_model_config(repo / "query_tower")["output"][0]["dims"][0] in (16, -1)


def test_check_repository_catches_a_config_that_drifted(repo: Path, tmp_path: Path) -> None:
    import shutil

    check_repository(repo)  # the export itself passes
    bad = tmp_path / "repo"
    shutil.copytree(repo, bad)
    cfg = bad / "ranker" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace('name: "hist"', 'name: "history"', 1))
    with pytest.raises(DataError, match="do not match"):
        check_repository(bad)
    cfg.write_text("name: [")
    with pytest.raises(DataError, match="malformed"):
        check_repository(bad)


def test_reexport_replaces_models_and_keeps_others(version: Version, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    (out / "other_model").mkdir(parents=True)
    (out / "other_model" / "config.pbtxt").write_text('name: "other_model"\n')
    export_triton(version.settings, version.dataset, out)
    first = (out / "ranker" / "config.pbtxt").read_text()
    export_triton(version.settings, version.dataset, out, version=version.version)
    assert (out / "ranker" / "config.pbtxt").read_text() == first
    assert (out / "other_model" / "config.pbtxt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["other_model", "query_tower", "ranker"]


def test_export_refuses_tampered_registry_files(version: Version, tmp_path: Path) -> None:
    import shutil

    home = tmp_path / "home"
    shutil.copytree(version.settings.home, home)
    s = version.settings.model_copy(update={"home": home})
    f = s.registry_dir / version.dataset / version.version / "ranker.onnx"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(DataError, match="hash mismatch"):
        export_triton(s, version.dataset, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"STRATA_HOME": str(home), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "strata.cli", *args], capture_output=True, text=True, env=env
    )


def test_cli_export_triton(version: Version, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    r = _cli("export", "triton", "--dataset", "tiny", "--out", str(out), "--instances", "3",
             home=version.settings.home)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert read_model_config(out / "query_tower")["instance_group"][0]["count"] == [3]
    check_repository(out)
    r = _cli("export", "triton", "--dataset", "tiny", "--out", str(out), "--version", "v0042",
             home=version.settings.home)  # fmt: skip
    assert r.returncode == 2 and "v0042" in r.stderr and len(r.stderr.splitlines()) == 1
    r = _cli("export", "triton", "--dataset", "tiny", "--out", str(out), "--max-batch-size", "8",
             home=version.settings.home)  # fmt: skip
    assert r.returncode == 2 and "preferred_batch_sizes" in r.stderr
    r = _cli("export", "triton", "--dataset", "tiny", "--out", str(out), "--follow", "1",
             "--version", "v0001", home=version.settings.home)  # fmt: skip
    assert r.returncode == 2 and "--follow" in r.stderr and len(r.stderr.splitlines()) == 1


def test_follow_exports_waits_for_a_version_and_tracks_promotions(tmp_path: Path) -> None:
    """The Triton sidecar's loop: nothing before the first promotion, then each promoted version
    once; a version whose files no longer match their hashes is skipped (the last good export
    stays) and the next good promotion is exported."""
    import threading

    from strata.registry import Registry
    from strata.serving.triton import follow_exports

    home = tmp_path / "home"
    out = tmp_path / "repo"
    settings = Settings(home=home, triton_export=TritonExportConfig(instance_kind="KIND_GPU"))
    stop = threading.Event()
    t = threading.Thread(target=follow_exports, args=(settings, "tiny", out, 0.05, stop))
    t.start()

    def wait_for(version: str) -> None:
        deadline = time.monotonic() + 30
        while _version_of(out) != version:
            assert time.monotonic() < deadline, f"{version} was not exported"
            time.sleep(0.05)

    try:
        time.sleep(0.3)
        assert not out.exists() or not any(out.iterdir())  # no version yet: nothing exported
        first = register_small_models(home)
        wait_for(first.version)
        group = read_model_config(out / "ranker")["instance_group"][0]
        assert group["kind"] == ["KIND_GPU"]
        second = register_small_models(home)
        wait_for(second.version)
        # a corrupt promotion is skipped; the previous export stays in place
        third = register_small_models(home)
        reg = Registry(settings.registry_dir, "tiny")
        reg.promote(second.version)
        wait_for(second.version)  # (third may have been exported before it was corrupted)
        f = reg.path(third.version) / "ranker.onnx"
        f.write_bytes(f.read_bytes()[:-10])
        reg.promote(third.version)
        time.sleep(0.5)
        assert _version_of(out) == second.version
        fourth = register_small_models(home)
        wait_for(fourth.version)
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()


def _version_of(repo: Path) -> str:
    """The registry version recorded in an exported ranker's config ("" before any export)."""
    if not (repo / "ranker" / "config.pbtxt").is_file():
        return ""
    params = read_model_config(repo / "ranker").get("parameters", [])
    by_key = {p["key"][0]: p["value"][0]["string_value"][0] for p in params}
    return str(by_key.get(VERSION_PARAM, ""))


# --- ONNX Runtime backend --------------------------------------------------------------------


@pytest.mark.parametrize("model", ["query_tower", "ranker"])
@pytest.mark.parametrize("batch", [1, 37])
def test_onnxruntime_backend_on_exported_repo_matches_torch(
    version: Version, repo: Path, model: str, batch: int
) -> None:
    b = OnnxRuntimeBackend({model: repo / model / "1" / "model.onnx"}, version.version)
    x = random_inputs(b.inputs(model), batch, seed=batch)
    (name,) = [s.name for s in b.outputs(model)]
    got = b.infer(model, x)[name]
    want = torch_outputs(version, model, x)
    assert got.shape == want.shape and got.shape[0] == batch
    assert float(np.abs(got - want).max()) <= 1e-4


def test_create_backend_defaults_to_onnxruntime_on_serving_version(version: Version) -> None:
    b = create_backend(version.settings, version.dataset)
    assert isinstance(b, OnnxRuntimeBackend)
    backend: InferenceBackend = b  # satisfies the protocol
    assert backend.model_version == version.version
    assert backend.health().ok and b.models() == ("query_tower", "ranker")
    sess = b._session("ranker")
    assert sess.get_session_options().intra_op_num_threads == 1
    two = OnnxRuntimeBackend.from_registry(
        version.settings, "tiny", cfg=OnnxRuntimeConfig(intra_op_threads=2)
    )
    assert two._session("ranker").get_session_options().intra_op_num_threads == 2


def test_onnxruntime_backend_rejects_bad_inputs_naming_them(version: Version) -> None:
    b = create_backend(version.settings, version.dataset)
    assert isinstance(b, OnnxRuntimeBackend)
    good = random_inputs(b.inputs("ranker"), 4)
    cases = {
        "ranker.hist": {**good, "hist": good["hist"].astype(np.int32)},  # wrong dtype
        "ranker.ctx": {**good, "ctx": good["ctx"][:, :3]},  # wrong width
        "ranker.user": {k: v for k, v in good.items() if k != "user"},  # missing
        "ranker.bogus": {**good, "bogus": good["user"]},  # unexpected
        "ranker.item": {**good, "item": good["item"][:3]},  # batch mismatch
    }
    for field, inputs in cases.items():
        with pytest.raises(ValidationError) as exc:
            b.infer("ranker", inputs)
        assert exc.value.field == field
    with pytest.raises(NotFoundError, match="nope"):
        b.infer("nope", good)
    assert b.infer("ranker", good)["logit"].shape == (4,)


def test_missing_model_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        OnnxRuntimeBackend({"ranker": tmp_path / "absent.onnx"})


# --- Triton client backend (no server) -------------------------------------------------------


def test_settings_select_triton_by_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATA_INFERENCE__TYPE", "triton")
    monkeypatch.setenv("STRATA_INFERENCE__URL", "http://10.1.2.3:8000")
    s = Settings()
    assert isinstance(s.inference, TritonBackendConfig) and s.inference.url.endswith(":8000")
    with pytest.raises(ValueError, match="preferred_batch_sizes"):
        TritonExportConfig(max_batch_size=32, preferred_batch_sizes=(64,))


def test_triton_backend_without_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import fail exactly as if the package were absent.
    monkeypatch.setitem(sys.modules, "tritonclient", None)
    monkeypatch.setitem(sys.modules, "tritonclient.http", None)
    with pytest.raises(MissingExtraError, match=r"strata\[triton\]"):
        TritonBackend("http://127.0.0.1:8000")


def test_triton_backend_bad_url() -> None:
    with pytest.raises(ValidationError, match="url"):
        TritonBackend("grpc://127.0.0.1:8001")


def test_triton_backend_unreachable_server_is_reported(tmp_path: Path) -> None:
    pytest.importorskip("tritonclient.http", reason="needs the 'triton' extra")
    import socket

    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    b = TritonBackend(f"http://127.0.0.1:{port}", timeout_s=0.5)
    h = b.health()
    assert not h.ok and str(port) in h.detail
    with pytest.raises(InferenceUnavailableError, match="get_model_config"):
        b.infer("ranker", {})
    assert b.model_version == ""
    b.close()
