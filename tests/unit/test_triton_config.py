"""The exported Triton repository, checked as written against the models as ONNX Runtime loads them.

No test here can run Triton's onnxruntime backend (the pip-installable tritonserver has none, see
tests/integration/test_triton.py), so each exported `config.pbtxt` is parsed as written and
compared with `InferenceSession.get_inputs()/get_outputs()` of its `1/model.onnx`, the view that
backend validates a config against: once directly here with a type table of this file's own, and
once through `check_repository`, which the export itself runs and which must reject every
mutation below.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from strata.config import TritonExportConfig
from strata.errors import DataError
from strata.serving.backends import MODEL_FILES
from strata.serving.triton import (
    check_repository,
    export_triton,
    model_config_problems,
    parse_pbtxt,
    write_model_repository,
)

from .backend_support import Version, register_small_models

# ONNX Runtime's type strings -> the Triton data types a config must name (spelled out here, not
# imported, so a wrong entry in strata.serving.triton cannot hide).
ORT_TO_TRITON = {
    "tensor(float)": "TYPE_FP32",
    "tensor(double)": "TYPE_FP64",
    "tensor(int64)": "TYPE_INT64",
    "tensor(int32)": "TYPE_INT32",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(bool)": "TYPE_BOOL",
}


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory) -> Version:
    return register_small_models(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def repo(version: Version, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("triton") / "repo"
    export_triton(version.settings, version.dataset, out)
    return out


def _config(folder: Path) -> dict:
    return parse_pbtxt((folder / "config.pbtxt").read_text())


def _assert_matches_onnx_runtime(folder: Path) -> None:
    """The config as written declares exactly the model's tensors as ONNX Runtime reports them."""
    cfg = _config(folder)
    sess = ort.InferenceSession(
        str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    batched = cfg["max_batch_size"][0] > 0
    for kind, args in (("input", sess.get_inputs()), ("output", sess.get_outputs())):
        entries = cfg[kind]
        assert [e["name"][0] for e in entries] == [a.name for a in args], kind
        for e, a in zip(entries, args, strict=True):
            assert e["data_type"] == [ORT_TO_TRITON[a.type]], a.name
            shape = [d if isinstance(d, int) else -1 for d in a.shape]
            if batched:
                assert shape[0] == -1, a.name  # the batch axis Triton adds back
                shape = shape[1:]
            declared = e["reshape"][0]["shape"] if "reshape" in e else e["dims"]
            assert declared == shape, a.name
            assert np.prod(e["dims"]) == np.prod(declared) and e["dims"], a.name


def test_the_repository_holds_every_model_the_exporter_writes(version: Version, repo: Path) -> None:
    assert sorted(p.name for p in repo.iterdir()) == sorted(MODEL_FILES)
    assert check_repository(repo) == sorted(MODEL_FILES)
    registry = version.settings.registry_dir / version.dataset / version.version
    for name, fname in MODEL_FILES.items():
        # the file name Triton's onnxruntime backend loads: <version>/model.onnx
        assert (repo / name / "1" / "model.onnx").read_bytes() == (registry / fname).read_bytes()
        cfg = _config(repo / name)
        assert cfg["name"] == [name] and cfg["platform"] == ["onnxruntime_onnx"]
        assert "backend" not in cfg and "default_model_filename" not in cfg


@pytest.mark.parametrize("model", list(MODEL_FILES))
def test_exported_config_as_written_matches_onnx_runtime(repo: Path, model: str) -> None:
    cfg = _config(repo / model)
    assert cfg["max_batch_size"] == [512]
    sizes = cfg["dynamic_batching"][0]["preferred_batch_size"]
    assert sizes and all(1 <= s <= 512 for s in sizes)
    _assert_matches_onnx_runtime(repo / model)
    assert model_config_problems(repo / model) == []


def test_the_query_embedding_width_is_declared_as_onnx_runtime_infers_it(repo: Path) -> None:
    # The ONNX graph declares the output as [batch, <symbol>]; ONNX Runtime infers [batch, 16],
    # and Triton compares outputs exactly, so the config must say 16, not -1.
    graph_out = onnx.load(str(repo / "query_tower" / "1" / "model.onnx")).graph.output[0]
    assert graph_out.type.tensor_type.shape.dim[1].dim_param  # symbolic in the graph
    out = _config(repo / "query_tower")["output"][0]
    assert out["name"] == ["query_embedding"] and out["dims"] == [16]


def _edit(model: str, old: str, new: str) -> Callable[[Path], None]:
    def apply(repo: Path) -> None:
        path = repo / model / "config.pbtxt"
        text = path.read_text()
        assert old in text, old
        path.write_text(text.replace(old, new, 1))

    return apply


def _move(src: str, dst: str) -> Callable[[Path], None]:
    return lambda repo: (repo / src).rename(repo / dst)


def _swap_models(repo: Path) -> None:
    shutil.copyfile(repo / "query_tower" / "1" / "model.onnx", repo / "ranker" / "1" / "model.onnx")


MUTATIONS = {
    "float input as double": (
        _edit(
            "ranker",
            'name: "ctx"\n    data_type: TYPE_FP32',
            'name: "ctx"\n    data_type: TYPE_FP64',
        ),
        r"input 'ctx': data_type TYPE_FP64, the model's is tensor\(float\)",
    ),
    "int64 input as int32": (
        _edit(
            "query_tower",
            'name: "user"\n    data_type: TYPE_INT64',
            'name: "user"\n    data_type: TYPE_INT32',
        ),
        r"input 'user': data_type TYPE_INT32, the model's is tensor\(int64\)",
    ),
    "output dtype": (
        _edit(
            "query_tower",
            "data_type: TYPE_FP32\n    dims: [ 16 ]",
            "data_type: TYPE_FP16\n    dims: [ 16 ]",
        ),
        r"output 'query_embedding': data_type TYPE_FP16, the model's is tensor\(float\)",
    ),
    "input width": (
        _edit(
            "ranker",
            'name: "hist"\n    data_type: TYPE_INT64\n    dims: [ 4 ]',
            'name: "hist"\n    data_type: TYPE_INT64\n    dims: [ 5 ]',
        ),
        r"input 'hist': the config declares shape \[-1, 5\], the model's is \[-1, 4\]",
    ),
    "input rank": (
        _edit("ranker", "dims: [ 19 ]", "dims: [ 19, 1 ]"),
        r"input 'genres': the config declares shape \[-1, 19, 1\], the model's is \[-1, 19\]",
    ),
    "output width left dynamic (as the ONNX graph declares it)": (
        _edit("query_tower", "dims: [ 16 ]", "dims: [ -1 ]"),
        r"output 'query_embedding': the config declares shape \[-1, -1\], "
        r"the model's is \[-1, 16\]",
    ),
    "scalar output without its reshape": (
        _edit(
            "ranker",
            "dims: [ 1 ]\n    reshape: { shape: [ ] }\n  }\n]\ndynamic",
            "dims: [ 1 ]\n  }\n]\ndynamic",
        ),
        r"output 'logit': the config declares shape \[-1, 1\], the model's is \[-1\]",
    ),
    "reshape of another size": (
        _edit(
            "query_tower",
            'name: "age"\n    data_type: TYPE_INT64\n    dims: [ 1 ]',
            'name: "age"\n    data_type: TYPE_INT64\n    dims: [ 2 ]',
        ),
        r"input 'age': reshape \[\] is not the size of \[2\]",
    ),
    "renamed input": (
        _edit("ranker", 'name: "hist"', 'name: "history"'),
        r"inputs do not match the ONNX model: config has \['history'\] not in the model, "
        r"the model has \['hist'\] not in the config",
    ),
    "the transport tests' platform swap": (
        _edit("ranker", 'platform: "onnxruntime_onnx"', 'backend: "python"'),
        r"ranker: platform None / backend 'python': expected 'onnxruntime_onnx'",
    ),
    "no batching": (
        _edit("ranker", "max_batch_size: 512", "max_batch_size: 0"),
        r"dynamic_batching preferred sizes \[16, 128\] need 1 <= size <= max_batch_size 0",
    ),
    "preferred batch over the maximum": (
        _edit("ranker", "preferred_batch_size: [ 16, 128 ]", "preferred_batch_size: [ 16, 1024 ]"),
        r"preferred sizes \[16, 1024\] need 1 <= size <= max_batch_size 512",
    ),
    "name not the folder's": (
        _edit("ranker", 'name: "ranker"', 'name: "rank"'),
        r"ranker: name 'rank' is not the folder's 'ranker'",
    ),
    "model file not named model.onnx": (
        _move("ranker/1/model.onnx", "ranker/1/ranker.onnx"),
        r"ranker: 1/model.onnx: ONNX file does not exist",
    ),
    "no numeric version folder": (
        _move("ranker/1", "ranker/v1"),
        r"ranker: no version folder",
    ),
    "another model's file": (_swap_models, r"ranker: inputs do not match the ONNX model"),
    "unparsable config": (
        _edit("ranker", "max_batch_size: 512", "max_batch_size: [ 512"),
        r"ranker: malformed config",
    ),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_check_repository_rejects_a_wrong_config(repo: Path, tmp_path: Path, mutation: str) -> None:
    bad = tmp_path / "repo"
    shutil.copytree(repo, bad)
    assert check_repository(bad) == sorted(MODEL_FILES)  # the unchanged copy passes
    mutate, message = MUTATIONS[mutation]
    mutate(bad)
    with pytest.raises(DataError, match=message):
        check_repository(bad)


def test_export_refuses_to_publish_a_config_that_does_not_match(
    version: Version, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import strata.serving.triton as triton

    real = triton.model_config_text
    monkeypatch.setattr(
        triton,
        "model_config_text",
        lambda *a, **k: real(*a, **k).replace("TYPE_INT64", "TYPE_INT32"),
    )
    with pytest.raises(DataError, match=r"data_type TYPE_INT32, the model's is tensor\(int64\)"):
        export_triton(version.settings, version.dataset, tmp_path / "repo")


def _fixed_shape_model(path: Path) -> Path:
    """A model without a batch axis: several dtypes, each input passed through to an output."""
    kinds = [
        ("f", TensorProto.FLOAT, [3, 2]),
        ("d", TensorProto.DOUBLE, [4]),
        ("i", TensorProto.INT32, [2, 2, 2]),
        ("u", TensorProto.UINT8, [5]),
        ("b", TensorProto.BOOL, [1]),
    ]
    graph = helper.make_graph(
        [helper.make_node("Identity", [n], [f"{n}_out"]) for n, _, _ in kinds],
        "fixed",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in kinds],
        [helper.make_tensor_value_info(f"{n}_out", t, s) for n, t, s in kinds],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_model_without_batch_axis_is_exported_unbatched_and_checked(tmp_path: Path) -> None:
    src = _fixed_shape_model(tmp_path / "fixed.onnx")
    out = tmp_path / "repo"
    write_model_repository({"fixed": src}, out, TritonExportConfig())
    assert check_repository(out, {"fixed": src}) == ["fixed"]
    cfg = _config(out / "fixed")
    assert cfg["max_batch_size"] == [0] and "dynamic_batching" not in cfg
    assert [e["data_type"][0] for e in cfg["input"]] == [
        "TYPE_FP32",
        "TYPE_FP64",
        "TYPE_INT32",
        "TYPE_UINT8",
        "TYPE_BOOL",
    ]
    _assert_matches_onnx_runtime(out / "fixed")
    # same element count, wrong shape: no batch axis to hide behind
    path = out / "fixed" / "config.pbtxt"
    path.write_text(path.read_text().replace("dims: [ 3, 2 ]", "dims: [ 2, 3 ]", 1))
    with pytest.raises(DataError, match=r"input 'f': the config declares shape \[2, 3\]"):
        check_repository(out, {"fixed": src})
    # a copy that is not the registry's file
    write_model_repository({"fixed": src}, out, TritonExportConfig())
    other = _fixed_shape_model(tmp_path / "other.onnx")
    other.write_bytes(other.read_bytes() + b"\n")
    with pytest.raises(DataError, match=r"fixed: 1/model.onnx differs from"):
        check_repository(out, {"fixed": other})
