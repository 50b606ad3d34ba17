"""Inference backends for the exported models: ONNX Runtime in process (default) or NVIDIA Triton.

Both take and return named NumPy arrays with exactly the ONNX graph's names, dtypes and shapes, so
the pipeline never knows where a model runs. Inputs are checked up front and a bad one raises
`ValidationError` naming the tensor, instead of an opaque runtime error deep inside a session.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from strata.errors import (
    DataError,
    MissingExtraError,
    NotFoundError,
    StrataError,
    ValidationError,
)
from strata.models.inputs import ITEM_INPUTS, QUERY_INPUTS

if TYPE_CHECKING:
    from strata.config import OnnxRuntimeConfig, Settings, TritonBackendConfig
    from strata.models.batch import ItemFeatures, QueryFeatures

log = logging.getLogger(__name__)

# The Triton model-config parameter naming the registry version (written by strata.serving.triton).
VERSION_PARAM = "strata_version"
# Triton data types -> NumPy dtype names (the client backend checks and converts with these).
TRITON_TO_NUMPY = {
    "TYPE_FP32": "float32",
    "TYPE_UINT8": "uint8",
    "TYPE_INT8": "int8",
    "TYPE_UINT16": "uint16",
    "TYPE_INT16": "int16",
    "TYPE_INT32": "int32",
    "TYPE_INT64": "int64",
    "TYPE_STRING": "object",
    "TYPE_BOOL": "bool",
    "TYPE_FP16": "float16",
    "TYPE_FP64": "float64",
    "TYPE_UINT32": "uint32",
    "TYPE_UINT64": "uint64",
}
# The registry files that serve online, by model name (also the Triton model names).
MODEL_FILES = {"query_tower": "query_tower.onnx", "ranker": "ranker.onnx"}


class InferenceUnavailableError(StrataError):
    """The inference server cannot be reached, timed out, or failed the request."""


@dataclass(frozen=True)
class BackendHealth:
    """Whether a backend can serve now, with a one-line reason."""

    ok: bool
    detail: str


@dataclass(frozen=True)
class IOSpec:
    """One model input/output as the backend presents it: name, NumPy dtype, shape (-1 = any)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]


class InferenceBackend(Protocol):
    """Runs exported models: named NumPy inputs in, named NumPy outputs out (ONNX names/shapes)."""

    @property
    def model_version(self) -> str:
        """Registry version of the models served (e.g. `v0003`)."""
        ...

    def infer(self, model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run `model` on one batch; every graph input must be given with its exact dtype."""
        ...

    def health(self) -> BackendHealth:
        """Can the backend serve every model now?"""
        ...

    def close(self) -> None:
        """Release sessions or connections."""
        ...


def inputs_ok(specs: Sequence[IOSpec], inputs: Mapping[str, np.ndarray]) -> bool:
    """True when `inputs` match `specs` exactly (names, dtypes, ranks, fixed dimensions, one
    batch size): the per-request fast path, with no message building; `check_inputs` says
    what is wrong when it is False."""
    if len(inputs) != len(specs):
        return False
    batch = -1
    for s in specs:
        a = inputs.get(s.name)
        if a is None or a.__class__ is not np.ndarray or a.dtype != s.dtype:
            return False
        shape = a.shape
        if len(shape) != len(s.shape):
            return False
        for g, w in zip(shape, s.shape, strict=True):
            if w >= 0 and g != w:
                return False
        if s.shape and s.shape[0] == -1:
            if batch >= 0 and shape[0] != batch:
                return False
            batch = shape[0]
    return True


def check_inputs(model: str, specs: Sequence[IOSpec], inputs: Mapping[str, np.ndarray]) -> None:
    """ValidationError naming the first missing, unexpected, mistyped or misshapen input."""
    if inputs_ok(specs, inputs):
        return
    want = {s.name for s in specs}
    for name in inputs:
        if name not in want:
            raise ValidationError(f"{model}.{name}", f"not an input of {model}: {sorted(want)}")
    batch = None
    for s in specs:
        field = f"{model}.{s.name}"
        if s.name not in inputs:
            raise ValidationError(field, "missing input")
        a = inputs[s.name]
        if not isinstance(a, np.ndarray) or a.dtype != s.dtype:
            got = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
            raise ValidationError(field, f"expected a {s.dtype} array, got {got}")
        if a.ndim != len(s.shape) or any(
            w >= 0 and g != w for g, w in zip(a.shape, s.shape, strict=True)
        ):
            raise ValidationError(field, f"expected shape {s.shape} (-1 = any), got {a.shape}")
        if s.shape and s.shape[0] == -1:
            if batch is not None and a.shape[0] != batch:
                raise ValidationError(field, f"batch size {a.shape[0]} != {batch} of other inputs")
            batch = a.shape[0]


# --- ONNX Runtime (in process) ---------------------------------------------------------------

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _ort_spec(arg: Any) -> IOSpec:
    if arg.type not in _ORT_TYPES:
        raise ValidationError(arg.name, f"unsupported ONNX tensor type {arg.type}")
    shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
    return IOSpec(arg.name, np.dtype(_ORT_TYPES[arg.type]), shape)


class OnnxRuntimeBackend:
    """ONNX Runtime sessions created once per model and shared by all requests (thread-safe)."""

    def __init__(
        self,
        models: Mapping[str, Path],
        version: str = "",
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
    ) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = inter_op_threads
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle pool threads would otherwise spin and steal the other core from the server.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._sessions: dict[str, Any] = {}
        self._inputs: dict[str, tuple[IOSpec, ...]] = {}
        self._outputs: dict[str, tuple[IOSpec, ...]] = {}
        for name, path in models.items():
            if not Path(path).is_file():
                raise NotFoundError(f"model {name!r}: ONNX file {path} does not exist")
            try:
                sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            except Exception as exc:  # ORT's own classes (InvalidProtobuf, Fail, ...) derive
                # from Exception only: a truncated or corrupt graph is a data error, named here
                why = f"model {name!r} is not a loadable ONNX graph: {exc}"
                raise DataError(path, why) from None
            self._sessions[name] = sess
            self._inputs[name] = tuple(_ort_spec(a) for a in sess.get_inputs())
            self._outputs[name] = tuple(_ort_spec(a) for a in sess.get_outputs())
        self._version = version

    @classmethod
    def from_registry(
        cls,
        settings: Settings,
        dataset: str,
        version: str | None = None,
        cfg: OnnxRuntimeConfig | None = None,
    ) -> OnnxRuntimeBackend:
        """Sessions for the online models of a registry version (default: the serving one)."""
        from strata.config import OnnxRuntimeConfig
        from strata.registry import Registry

        cfg = cfg or OnnxRuntimeConfig()
        path = Registry(settings.registry_dir, dataset).path(version)
        files = {name: path / f for name, f in MODEL_FILES.items()}
        return cls(files, path.name, cfg.intra_op_threads, cfg.inter_op_threads)

    @property
    def model_version(self) -> str:
        """Registry version the sessions were loaded from."""
        return self._version

    def models(self) -> tuple[str, ...]:
        """Names of the loaded models."""
        return tuple(self._sessions)

    def inputs(self, model: str) -> tuple[IOSpec, ...]:
        """Input specs of `model` in graph order."""
        self._session(model)
        return self._inputs[model]

    def outputs(self, model: str) -> tuple[IOSpec, ...]:
        """Output specs of `model` in graph order."""
        self._session(model)
        return self._outputs[model]

    def _session(self, model: str) -> Any:
        try:
            return self._sessions[model]
        except KeyError:
            raise NotFoundError(
                f"unknown model {model!r}; loaded: {sorted(self._sessions)}"
            ) from None

    def infer(self, model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch through the in-process session."""
        sess = self._session(model)
        check_inputs(model, self._inputs[model], inputs)
        outs = sess.run(None, dict(inputs))
        return {s.name: o for s, o in zip(self._outputs[model], outs, strict=True)}

    def health(self) -> BackendHealth:
        """Always serving once constructed: sessions live in this process."""
        return BackendHealth(True, f"onnxruntime: {', '.join(self._sessions)} loaded")

    def close(self) -> None:
        """Drop the sessions."""
        self._sessions.clear()


# --- Triton (client) -------------------------------------------------------------------------


@dataclass(frozen=True)
class _TritonIO:
    inputs: tuple[IOSpec, ...]  # model (ONNX) shapes
    wire_inputs: tuple[tuple[int, ...], ...]  # per-sample shapes Triton expects on the wire
    outputs: tuple[IOSpec, ...]
    params: dict[str, str]


def _triton_io(cfg: dict[str, Any]) -> _TritonIO:
    """Specs from a Triton model config (HTTP JSON), `reshape` applied."""
    batched = int(cfg.get("max_batch_size", 0) or 0) > 0
    lead = (-1,) if batched else ()

    def one(t: dict[str, Any]) -> tuple[IOSpec, tuple[int, ...]]:
        wire = tuple(int(d) for d in t.get("dims", []))
        model = wire
        if t.get("reshape") is not None:
            model = tuple(int(d) for d in t["reshape"].get("shape", []))
        dtype = np.dtype(TRITON_TO_NUMPY[t["data_type"]])
        return IOSpec(t["name"], dtype, lead + model), wire

    ins = [one(t) for t in cfg.get("input", [])]
    outs = [one(t)[0] for t in cfg.get("output", [])]
    params = {k: str(v.get("string_value", "")) for k, v in (cfg.get("parameters") or {}).items()}
    return _TritonIO(tuple(s for s, _ in ins), tuple(w for _, w in ins), tuple(outs), params)


class TritonBackend:
    """Client of a Triton server over HTTP/REST (`http://host:8000` or `https://`).

    gRPC is not offered: tritonclient's gRPC extra needs protobuf<7, which conflicts with the
    protobuf that onnx pins here. Model configs are fetched once per model, so shapes are checked
    and Triton's `[1]`-reshaped scalars are converted without a round trip per request. The
    underlying gevent HTTP client must not cross threads, so each thread gets its own."""

    def __init__(
        self,
        url: str,
        models: Sequence[str] = tuple(MODEL_FILES),
        timeout_s: float = 2.0,
        model_version: str = "",
    ) -> None:
        scheme, _, host = url.partition("://")
        if not host or scheme not in ("http", "https"):
            raise ValidationError("url", f"expected http:// or https://host:port, got {url!r}")
        try:
            import tritonclient.http as client
        except ImportError:
            raise MissingExtraError("tritonclient[http]", "triton") from None
        self._mod = client
        self._host, self._ssl, self._timeout = host, scheme == "https", timeout_s
        self.url = url
        self._models = tuple(models)
        self._triton_version = model_version
        self._io: dict[str, _TritonIO] = {}
        self._lock = threading.RLock()  # _model_io holds it while _client may take it
        self._local = threading.local()
        self._clients: list[Any] = []

    @property
    def _client(self) -> Any:
        """This thread's HTTP client (created on first use)."""
        c = getattr(self._local, "client", None)
        if c is None:
            c = self._mod.InferenceServerClient(
                url=self._host,
                ssl=self._ssl,
                connection_timeout=self._timeout,
                network_timeout=self._timeout,
            )
            self._local.client = c
            with self._lock:
                self._clients.append(c)
        return c

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except StrataError:
            raise
        except Exception as exc:  # tritonclient/gevent/grpc errors: one domain error for callers
            raise InferenceUnavailableError(f"triton {self.url}: {what} failed: {exc}") from exc

    def _model_io(self, model: str) -> _TritonIO:
        if model not in self._models:
            raise NotFoundError(f"unknown model {model!r}; configured: {list(self._models)}")
        io = self._io.get(model)
        if io is None:
            with self._lock:
                raw = self._call(
                    "get_model_config", self._client.get_model_config, model, self._triton_version
                )
                io = self._io[model] = _triton_io(raw)
        return io

    @property
    def model_version(self) -> str:
        """The registry version recorded in the served config (`strata_version`), else Triton's."""
        try:
            params = self._model_io(self._models[0]).params
        except InferenceUnavailableError:
            return ""
        return params.get(VERSION_PARAM) or f"triton:{self._triton_version or 'latest'}"

    def inputs(self, model: str) -> tuple[IOSpec, ...]:
        """Input specs of `model` (ONNX shapes) as configured on the server."""
        return self._model_io(model).inputs

    def infer(self, model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Send one batch to Triton (binary tensors) and return outputs with the ONNX shapes."""
        io = self._model_io(model)
        check_inputs(model, io.inputs, inputs)
        reqs = []
        for spec, wire in zip(io.inputs, io.wire_inputs, strict=True):
            a = np.ascontiguousarray(inputs[spec.name])
            shape = (a.shape[0], *wire) if spec.shape[:1] == (-1,) else wire
            shape = tuple(a.shape[i] if d == -1 else d for i, d in enumerate(shape))
            a = a.reshape(shape)
            t = self._mod.InferInput(spec.name, list(a.shape), _np_to_triton(a.dtype))
            t.set_data_from_numpy(a, binary_data=True)  # raw bytes, no JSON number lists
            reqs.append(t)
        outs = [self._mod.InferRequestedOutput(s.name, binary_data=True) for s in io.outputs]
        res = self._call(
            "infer",
            self._client.infer,
            model,
            reqs,
            model_version=self._triton_version,
            outputs=outs,
        )
        result = {}
        for s in io.outputs:
            a = res.as_numpy(s.name)
            if a is None:
                raise InferenceUnavailableError(f"triton {self.url}: {model} returned no {s.name}")
            lead = (a.shape[0],) if s.shape[:1] == (-1,) else ()
            result[s.name] = a.reshape(
                lead + tuple(-1 if d < 0 else d for d in s.shape[len(lead) :])
            )
        return result

    def health(self) -> BackendHealth:
        """Server live and ready and every configured model ready."""
        try:
            if not self._client.is_server_ready():
                return BackendHealth(False, f"triton {self.url}: server not ready")
            for m in self._models:
                if not self._client.is_model_ready(m, self._triton_version):
                    return BackendHealth(False, f"triton {self.url}: model {m} not ready")
        except Exception as exc:  # connection refused / timeout: report, callers decide
            return BackendHealth(False, f"triton {self.url}: {type(exc).__name__}: {exc}")
        return BackendHealth(True, f"triton {self.url}: {', '.join(self._models)} ready")

    def close(self) -> None:
        """Close every thread's client connections."""
        with self._lock:
            clients, self._clients = self._clients, []
        for c in clients:
            c.close()
        self._local = threading.local()


def _np_to_triton(dtype: np.dtype) -> str:
    names = {
        "float32": "FP32",
        "float64": "FP64",
        "float16": "FP16",
        "int64": "INT64",
        "int32": "INT32",
        "int16": "INT16",
        "int8": "INT8",
        "uint8": "UINT8",
        "bool": "BOOL",
    }
    if dtype.name not in names:
        raise ValidationError("dtype", f"no Triton type for {dtype}")
    return names[dtype.name]


def create_backend(
    settings: Settings, dataset: str, version: str | None = None
) -> OnnxRuntimeBackend | TritonBackend:
    """The backend `settings.inference` selects: ONNX Runtime over the registry, or Triton."""
    cfg = settings.inference
    if cfg.type == "onnxruntime":
        return OnnxRuntimeBackend.from_registry(settings, dataset, version, cfg)
    return _triton(cfg)


def _triton(cfg: TritonBackendConfig) -> TritonBackend:
    return TritonBackend(cfg.url, timeout_s=cfg.timeout_s, model_version=cfg.model_version)


class BackendModels:
    """The engine's `Models` part over an `InferenceBackend`: the exported query tower and
    ranker (ONNX Runtime in process, or Triton)."""

    def __init__(self, backend: InferenceBackend) -> None:
        self.backend = backend

    def encode(self, queries: QueryFeatures) -> np.ndarray:
        inputs = {n: np.ascontiguousarray(getattr(queries, n)) for n in QUERY_INPUTS}
        return np.asarray(self.backend.infer("query_tower", inputs)["query_embedding"], np.float32)

    def logits(
        self, queries: QueryFeatures, items: ItemFeatures, retrieval: np.ndarray
    ) -> np.ndarray:
        inputs = {n: np.ascontiguousarray(getattr(queries, n)) for n in QUERY_INPUTS}
        for n in ITEM_INPUTS:
            inputs[n] = np.ascontiguousarray(getattr(items, n))
        inputs["retrieval_score"] = np.ascontiguousarray(retrieval, dtype=np.float32)
        return self.backend.infer("ranker", inputs)["logit"].reshape(len(retrieval))
