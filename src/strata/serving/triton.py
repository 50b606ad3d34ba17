"""Triton model repository: export a registry version's ONNX models with a `config.pbtxt` each.

Every tensor name, dtype and shape in a config is read from the ONNX graph itself (never typed by
hand), so the repository cannot drift from what training exported. Rank-1 tensors (`[batch]`,
e.g. ids and the ranker's logit) are declared as `dims: [1]` with `reshape: { shape: [] }`, the
Triton idiom for per-sample scalars in a batching model. A tiny protobuf-text parser reads the
configs back for structural checks without needing Triton's protobuf classes.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from strata.errors import DataError, NotFoundError
from strata.serving.backends import MODEL_FILES, VERSION_PARAM

if TYPE_CHECKING:
    from strata.config import Settings, TritonExportConfig

log = logging.getLogger(__name__)

CONFIG = "config.pbtxt"
DATASET_PARAM = "strata_dataset"

# onnx.TensorProto element types -> Triton data types (ints so onnx is imported lazily).
_ONNX_TO_TRITON = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    4: "TYPE_UINT16",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    8: "TYPE_STRING",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    12: "TYPE_UINT32",
    13: "TYPE_UINT64",
    16: "TYPE_BF16",
}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input/output: name, Triton dtype and full ONNX shape (-1 = dynamic)."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelSignature:
    """Inputs and outputs of an ONNX graph, in graph order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def batched(self) -> bool:
        """True when every tensor has a dynamic leading axis (Triton may batch requests)."""
        return all(t.shape and t.shape[0] == -1 for t in (*self.inputs, *self.outputs))


@dataclass(frozen=True)
class TritonExport:
    """What `export_triton` wrote: the repository root, model names and the registry version."""

    out: Path
    models: tuple[str, ...]
    dataset: str
    version: str


def onnx_signature(path: Path) -> ModelSignature:
    """Read input/output names, dtypes and shapes from an ONNX file (weights not needed)."""
    import onnx

    if not Path(path).is_file():
        raise DataError(path, "ONNX file does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends; report them as bad data
        raise DataError(path, f"not a readable ONNX model: {exc}") from None
    # Initializers may be listed as graph inputs in old exports; they are not request tensors.
    weights = {i.name for i in model.graph.initializer}

    def spec(v: Any) -> TensorSpec:
        tt = v.type.tensor_type
        if tt.elem_type not in _ONNX_TO_TRITON:
            raise DataError(
                path, f"tensor {v.name!r}: unsupported ONNX element type {tt.elem_type}"
            )
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        return TensorSpec(v.name, _ONNX_TO_TRITON[tt.elem_type], dims)

    inputs = tuple(spec(v) for v in model.graph.input if v.name not in weights)
    outputs = tuple(spec(v) for v in model.graph.output)
    return ModelSignature(inputs, outputs)


def _tensor_block(t: TensorSpec, batched: bool) -> str:
    dims = t.shape[1:] if batched else t.shape
    lines = [f'    name: "{t.name}"', f"    data_type: {t.dtype}"]
    if batched and not dims:
        # A [batch] tensor: Triton needs a non-empty per-sample shape, so [1] reshaped to [].
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    else:
        lines.append(f"    dims: [ {', '.join(str(d) for d in dims)} ]")
    return "  {\n" + "\n".join(lines) + "\n  }"


def _param(key: str, value: str) -> str:
    return f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}'


def model_config_text(
    name: str,
    sig: ModelSignature,
    cfg: TritonExportConfig,
    dataset: str = "",
    version: str = "",
) -> str:
    """The `config.pbtxt` of one ONNX model: I/O from its signature, batching, instance groups."""
    batched = sig.batched
    parts = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {cfg.max_batch_size if batched else 0}",
        "input [\n" + ",\n".join(_tensor_block(t, batched) for t in sig.inputs) + "\n]",
        "output [\n" + ",\n".join(_tensor_block(t, batched) for t in sig.outputs) + "\n]",
    ]
    if batched:
        sizes = ", ".join(str(s) for s in cfg.preferred_batch_sizes)
        parts.append(
            "dynamic_batching {\n"
            f"  preferred_batch_size: [ {sizes} ]\n"
            f"  max_queue_delay_microseconds: {cfg.max_queue_delay_us}\n"
            "}"
        )
    group = f"    count: {cfg.instances}\n    kind: {cfg.instance_kind}"
    parts.append(f"instance_group [\n  {{\n{group}\n  }}\n]")
    # Read by Triton's ONNX Runtime backend: keep each instance to its share of the cores.
    parts.append(_param("intra_op_thread_count", str(cfg.intra_op_threads)))
    if dataset:
        parts.append(_param(DATASET_PARAM, dataset))
    if version:
        parts.append(_param(VERSION_PARAM, version))
    return "\n".join(parts) + "\n"


def write_model_repository(
    models: dict[str, Path],
    out: Path,
    cfg: TritonExportConfig,
    dataset: str = "",
    version: str = "",
) -> list[Path]:
    """Write `<out>/<name>/config.pbtxt` and `<out>/<name>/1/model.onnx` for each model.

    Each model folder is built in a staging folder inside `out` and swapped in by rename, so a
    Triton server polling the repository never sees a half-written model; other models already in
    `out` are left alone."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sigs = {name: onnx_signature(path) for name, path in models.items()}
    written = []
    stage = Path(tempfile.mkdtemp(dir=out, prefix=".staging-"))
    try:
        for name, path in models.items():
            folder = stage / name
            (folder / "1").mkdir(parents=True)
            shutil.copyfile(path, folder / "1" / "model.onnx")
            text = model_config_text(name, sigs[name], cfg, dataset, version)
            (folder / CONFIG).write_text(text)
        for name in models:
            target = out / name
            old = stage / f".old-{name}"
            if target.exists():
                os.rename(target, old)
            os.rename(stage / name, target)
            written.append(target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return written


def export_triton(
    settings: Settings, dataset: str, out: Path, version: str | None = None
) -> TritonExport:
    """Export a registry version (default: serving) of `dataset` as a Triton model repository."""
    from strata.registry import Registry

    reg = Registry(settings.registry_dir, dataset)
    path = reg.path(version)
    reg.verify(path.name)  # never publish files that no longer match their manifest hashes
    files = {name: path / fname for name, fname in MODEL_FILES.items()}
    write_model_repository(files, out, settings.triton_export, dataset, path.name)
    check_repository(out, files)
    log.info("exported %s %s to Triton repository %s", dataset, path.name, out)
    return TritonExport(Path(out), tuple(files), dataset, path.name)


def follow_exports(
    settings: Settings,
    dataset: str,
    out: Path,
    interval_s: float,
    stop: threading.Event | None = None,
) -> None:
    """Keep `out` serving what the registry serves: export the serving version of `dataset` as
    soon as there is one, then again each time the pointer moves (polled every `interval_s`),
    until `stop` is set. Models are swapped in by rename, so a Triton server polling `out` loads
    whole models only. A version that cannot be exported (files that no longer match their
    hashes) is logged once and skipped until the pointer moves again (versions are immutable);
    the last good export stays in place meanwhile."""
    from strata.registry import Registry

    reg = Registry(settings.registry_dir, dataset)
    stop = stop or threading.Event()
    last: str | None = None
    failed: str | None = None
    while not stop.is_set():
        current = reg.serving()
        if current is not None and current not in (last, failed):
            try:
                export_triton(settings, dataset, out, current)
                last, failed = current, None
            except (DataError, NotFoundError) as exc:
                failed = current
                log.warning("cannot export %s %s (keeping %s): %s", dataset, current, last, exc)
        stop.wait(interval_s)


# --- reading configs back --------------------------------------------------------------------

_TOKEN = re.compile(
    r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([{}\[\]:,])|([A-Za-z_][\w.]*)|([-+]?[\d.]+(?:[eE][-+]?\d+)?))'
)


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise ValueError(f"unexpected character at offset {pos}: {text[pos : pos + 20]!r}")
        pos = m.end()
        comment, *rest = m.groups()
        tok = next((t for t in rest if t is not None), None)
        if comment is None and tok is not None:
            out.append(tok)
    return out


def _scalar(tok: str) -> Any:
    if tok.startswith('"'):
        return bytes(tok[1:-1], "utf-8").decode("unicode_escape")
    if re.fullmatch(r"[-+]?\d+", tok):
        return int(tok)
    try:
        return float(tok)
    except ValueError:
        return tok  # an enum or identifier (TYPE_FP32, KIND_CPU, true)


def parse_pbtxt(text: str) -> dict[str, list[Any]]:
    """Parse protobuf text format into {field: [values]}: messages become dicts, every field a
    list (text format does not say which fields are repeated). ValueError on malformed text."""
    toks = _tokens(text)
    pos = 0

    def peek() -> str | None:
        return toks[pos] if pos < len(toks) else None

    def take(expected: str | None = None) -> str:
        nonlocal pos
        if pos >= len(toks):
            raise ValueError("unexpected end of text")
        tok = toks[pos]
        if expected is not None and tok != expected:
            raise ValueError(f"expected {expected!r}, got {tok!r}")
        pos += 1
        return tok

    def value() -> Any:
        if peek() == "{":
            take("{")
            msg = message("}")
            take("}")
            return msg
        tok = take()
        if tok in "{}[]:,":
            raise ValueError(f"expected a value, got {tok!r}")
        return _scalar(tok)

    def message(end: str | None) -> dict[str, list[Any]]:
        msg: dict[str, list[Any]] = {}
        while peek() is not None and peek() != end:
            name = take()
            if not re.fullmatch(r"[A-Za-z_]\w*", name):
                raise ValueError(f"expected a field name, got {name!r}")
            if peek() == ":":
                take(":")
            items = msg.setdefault(name, [])
            if peek() == "[":
                take("[")
                while peek() != "]":
                    items.append(value())
                    if peek() == ",":
                        take(",")
                take("]")
            else:
                items.append(value())
            if peek() in (",", ";"):
                take()
        return msg

    result = message(None)
    if pos != len(toks):
        raise ValueError(f"trailing tokens from {toks[pos]!r}")
    return result


def read_model_config(folder: Path) -> dict[str, list[Any]]:
    """Parse `<folder>/config.pbtxt`; DataError when it is missing or malformed."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise DataError(path, "config.pbtxt is missing")
    try:
        return parse_pbtxt(path.read_text())
    except ValueError as exc:
        raise DataError(path, f"malformed config: {exc}") from None


def config_tensors(cfg: dict[str, list[Any]], kind: str) -> list[TensorSpec]:
    """The `input` or `output` entries of a parsed config as specs with the *model* shape (the
    batch axis added back and `reshape` applied), comparable to `onnx_signature`."""
    batched = cfg.get("max_batch_size", [0])[0] > 0
    specs = []
    for t in cfg.get(kind, []):
        dims = tuple(t.get("dims", []))
        if t.get("reshape"):
            dims = tuple(t["reshape"][0].get("shape", []))
        specs.append(TensorSpec(t["name"][0], t["data_type"][0], ((-1,) if batched else ()) + dims))
    return specs


def check_repository(out: Path, models: dict[str, Path] | None = None) -> None:
    """Structural check of a repository: each model folder has a parsable config whose I/O names,
    dtypes and shapes equal its `1/model.onnx` (and `models[name]` when given); DataError if not."""
    out = Path(out)
    names = list(models) if models else sorted(p.name for p in out.iterdir() if p.is_dir())
    for name in names:
        if name.startswith("."):
            continue
        folder = out / name
        cfg = read_model_config(folder)
        if cfg.get("name", [None])[0] != name:
            raise DataError(folder / CONFIG, f"name {cfg.get('name')} != folder {name!r}")
        onnx_file = folder / "1" / "model.onnx"
        sig = onnx_signature(onnx_file)
        if models and onnx_signature(models[name]) != sig:
            raise DataError(onnx_file, f"differs from the registry's {models[name]}")
        for kind, want in (("input", sig.inputs), ("output", sig.outputs)):
            got = config_tensors(cfg, kind)
            if got != list(want):
                raise DataError(folder / CONFIG, f"{kind}s {got} do not match the ONNX {want}")
