"""Triton model repository: export a registry version's ONNX models with a `config.pbtxt` each.

Every tensor name, dtype and shape in a config is read from the model as ONNX Runtime loads it
(never typed by hand; the same view Triton's onnxruntime backend checks a config against), so the
repository cannot drift from what training exported. Rank-1 tensors (`[batch]`,
e.g. ids and the ranker's logit) are declared as `dims: [1]` with `reshape: { shape: [] }`, the
Triton idiom for per-sample scalars in a batching model. `check_repository` reads what was written
back (a tiny protobuf-text parser: Triton's protobuf classes are not needed) and checks it against
each model by the rules Triton's onnxruntime backend applies when it loads one; the export runs it
on every repository it writes.
"""

from __future__ import annotations

import filecmp
import logging
import math
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
MODEL_FILE = "model.onnx"  # what Triton's onnxruntime backend loads from <version>/
PLATFORM = "onnxruntime_onnx"
DATASET_PARAM = "strata_dataset"

# Triton data types <-> ONNX Runtime's tensor type strings (TYPE_STRING is tensor(string)).
_TRITON_TO_ORT = {
    "TYPE_FP32": "tensor(float)",
    "TYPE_FP64": "tensor(double)",
    "TYPE_FP16": "tensor(float16)",
    "TYPE_BF16": "tensor(bfloat16)",
    "TYPE_INT64": "tensor(int64)",
    "TYPE_INT32": "tensor(int32)",
    "TYPE_INT16": "tensor(int16)",
    "TYPE_INT8": "tensor(int8)",
    "TYPE_UINT64": "tensor(uint64)",
    "TYPE_UINT32": "tensor(uint32)",
    "TYPE_UINT16": "tensor(uint16)",
    "TYPE_UINT8": "tensor(uint8)",
    "TYPE_BOOL": "tensor(bool)",
    "TYPE_STRING": "tensor(string)",
}
_ORT_TO_TRITON = {v: k for k, v in _TRITON_TO_ORT.items()}


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
    """Input/output names, Triton dtypes and shapes of an ONNX file as ONNX Runtime loads it.

    That is the view Triton's onnxruntime backend compares a config against, and it can be more
    specific than the shapes the graph declares: ONNX Runtime's shape inference resolves e.g.
    the query tower's output `[batch, Div..._dim_1]` to `[batch, 16]`, and Triton then requires
    `dims: [ 16 ]` (outputs are compared exactly). Overridable initializers are not inputs."""
    import onnxruntime as ort

    if not Path(path).is_file():
        raise DataError(path, "ONNX file does not exist")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # I/O only
    opts.intra_op_num_threads = 1
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... classes
        raise DataError(path, f"ONNX Runtime cannot load it: {exc}") from None

    def spec(arg: Any) -> TensorSpec:
        if arg.type not in _ORT_TO_TRITON:
            raise DataError(path, f"tensor {arg.name!r}: unsupported type {arg.type}")
        dims = tuple(d if isinstance(d, int) else -1 for d in arg.shape)  # symbolic/None: -1
        return TensorSpec(arg.name, _ORT_TO_TRITON[arg.type], dims)

    inputs = tuple(spec(a) for a in sess.get_inputs())
    outputs = tuple(spec(a) for a in sess.get_outputs())
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
        f'platform: "{PLATFORM}"',
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
            shutil.copyfile(path, folder / "1" / MODEL_FILE)
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


# --- checking a repository as written -----------------------------------------------------------


def _size(dims: list[Any]) -> tuple[int, int]:
    """(number of -1 axes, product of the fixed ones): equal for a valid `reshape`."""
    fixed = [d for d in dims if d != -1]
    return len(dims) - len(fixed), math.prod(fixed)


def _io_problems(
    kind: str, entries: list[Any], model: tuple[TensorSpec, ...], max_batch: int
) -> list[str]:
    """What keeps the `input` or `output` entries of a config from matching the model's tensors,
    by the rules of Triton's onnxruntime backend: names, data types, and the shape the entry
    declares (a -1 batch axis when max_batch_size > 0, then `reshape.shape` if given, else
    `dims`) against the model's, where a dynamic (-1) model axis takes any input size but an
    output must be declared exactly as the model has it."""
    specs = {t.name: t for t in model}
    problems = []
    names = [e.get("name", [None])[0] for e in entries]
    extra = [n for n in names if n not in specs]
    missing = [n for n in specs if n not in names]
    if extra or missing:
        problems.append(
            f"{kind}s do not match the ONNX model: config has {extra} not in the model, "
            f"the model has {missing} not in the config"
        )
    if len(set(names)) != len(names):
        problems.append(f"{kind} names repeat: {names}")
    for e, name in zip(entries, names, strict=True):
        if name not in specs:
            continue
        spec = specs[name]
        dtype = e.get("data_type", [None])[0]
        if dtype != spec.dtype:
            ort_type = _TRITON_TO_ORT[spec.dtype]
            problems.append(f"{kind} {name!r}: data_type {dtype}, the model's is {ort_type}")
        dims = e.get("dims", [])
        declared = e["reshape"][0].get("shape", []) if e.get("reshape") else dims
        if not dims or any(not isinstance(d, int) or d == 0 or d < -1 for d in dims + declared):
            problems.append(f"{kind} {name!r}: dims {dims} (reshape {declared}): each -1 or > 0")
            continue
        if _size(declared) != _size(dims):
            problems.append(f"{kind} {name!r}: reshape {declared} is not the size of {dims}")
        full = ([-1] if max_batch else []) + declared
        model_shape = list(spec.shape)
        if max_batch and model_shape[:1] != [-1]:
            problems.append(
                f"{kind} {name!r}: max_batch_size {max_batch} needs a dynamic first axis, "
                f"the model's shape is {model_shape}"
            )
        elif len(full) != len(model_shape) or any(
            m != c and (kind == "output" or m != -1) for m, c in zip(model_shape, full, strict=True)
        ):
            problems.append(
                f"{kind} {name!r}: the config declares shape {full}, the model's is "
                f"{model_shape} (-1 = dynamic)"
            )
    return problems


def model_config_problems(folder: Path) -> list[str]:
    """Why Triton's ONNX Runtime backend would not load `folder` as written (empty: it would).

    Checks `config.pbtxt` as written against each version's model file as ONNX Runtime reads it:
    name = folder, platform `onnxruntime_onnx`, `<version>/model.onnx` (or the config's
    `default_model_filename`) in every numeric version folder, max_batch_size and
    dynamic batching coherent, and every input and output (names, data types, dims with the
    batch axis and any reshape) equal to the model's, as Triton's backend compares them."""
    folder = Path(folder)
    try:
        cfg = parse_pbtxt((folder / CONFIG).read_text())
    except FileNotFoundError:
        return ["config.pbtxt is missing"]
    except ValueError as exc:
        return [f"malformed config: {exc}"]

    def one(key: str, default: Any = None) -> Any:
        return cfg.get(key, [default])[0]

    problems = []
    if one("name") != folder.name:
        problems.append(f"name {one('name')!r} is not the folder's {folder.name!r}")
    if one("platform") != PLATFORM or one("backend", "onnxruntime") != "onnxruntime":
        problems.append(
            f"platform {one('platform')!r} / backend {one('backend')!r}: expected {PLATFORM!r}"
        )
    max_batch = one("max_batch_size", 0)
    if not isinstance(max_batch, int) or max_batch < 0:
        problems.append(f"max_batch_size {max_batch!r} must be an integer >= 0")
        max_batch = 0
    batching = one("dynamic_batching")
    if batching is not None:
        sizes = batching.get("preferred_batch_size", [])
        if not max_batch or any(not (isinstance(s, int) and 1 <= s <= max_batch) for s in sizes):
            problems.append(
                f"dynamic_batching preferred sizes {sizes} need 1 <= size <= "
                f"max_batch_size {max_batch}"
            )
    filename = one("default_model_filename", MODEL_FILE)
    versions = sorted(
        (p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    )
    if not versions:
        problems.append(f"no version folder (<number>/{filename})")
    for v in versions:
        try:
            sig = onnx_signature(v / filename)
        except DataError as exc:
            problems.append(f"{v.name}/{filename}: {exc.problem}")
            continue
        problems += _io_problems("input", cfg.get("input", []), sig.inputs, max_batch)
        problems += _io_problems("output", cfg.get("output", []), sig.outputs, max_batch)
    return problems


def check_repository(out: Path, models: dict[str, Path] | None = None) -> list[str]:
    """Check a model repository as written: every model folder (those of `models` when given)
    passes `model_config_problems`, and holds a byte copy of `models[name]`; DataError naming
    every problem, else the model names checked."""
    out = Path(out)
    if models is not None:
        names = list(models)
    else:
        names = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(out, "no model folders")
    problems = []
    for name in names:
        problems += [f"{name}: {p}" for p in model_config_problems(out / name)]
        copy = out / name / "1" / MODEL_FILE
        if models and copy.is_file() and not filecmp.cmp(copy, models[name], shallow=False):
            problems.append(f"{name}: 1/{MODEL_FILE} differs from {models[name]}")
    if problems:
        raise DataError(out, "; ".join(problems))
    return names
