"""Online feature stores: the `OnlineStore` protocol, its registry and the shared row types.

Two backends implement the same small protocol and pass the same contract tests:
`memory` (in-process, the embedded default) and `valkey` (Valkey/Redis through redis-py, in
`valkey.py`, the only module that imports the client library). Both store, per entity type
("user", "item", ...), immutable *feature versions*: a version is written beside the active one
and then switched atomically with `activate`, so readers never see a half-written set.

Values are scalars (`float32`, `float64`, `int32`, `int64`, UTF-8 `string`) and
fixed-dimension vectors (`float32` embeddings, `int64` id lists padded with -1). Reads are
vectorised and return NumPy arrays in the requested feature order with a boolean `found` mask
for missing entities (never an exception per entity).

A second protocol, `ActivityStore`, holds the live per-user state that event ingestion updates
(idempotency marks, behavioural counters, a capped recent-items list); see `strata.features.events`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from strata.errors import ConfigError, ValidationError

if TYPE_CHECKING:
    from strata.config import MemoryOnlineConfig, ValkeyOnlineConfig

SCALAR_DTYPES = ("float32", "float64", "int32", "int64", "string")
VECTOR_DTYPES = ("float32", "int64")


@dataclass(frozen=True)
class FeatureSpec:
    """Storage type of one online feature: a scalar dtype, or a vector dtype with `dim` > 1."""

    dtype: str
    dim: int = 1

    @property
    def width(self) -> int:
        """Bytes per stored value (0 for variable-width strings)."""
        if self.dtype == "string":
            return 0
        return np.dtype(self.dtype).itemsize * self.dim


@dataclass
class FeatureRows:
    """Rows read from an online store: `values[name]` is (N,) or (N, D); `found` is (N,) bool."""

    ids: np.ndarray
    found: np.ndarray
    values: dict[str, np.ndarray] = field(default_factory=dict)
    version: str | None = None

    def matrix(self, names: Sequence[str] | None = None) -> np.ndarray:
        """Stack features (vectors flattened) into one float32 (N, F) matrix in `names` order."""
        cols = [self.values[n].reshape(len(self.ids), -1) for n in (names or list(self.values))]
        if not cols:
            return np.zeros((len(self.ids), 0), dtype=np.float32)
        return np.concatenate(cols, axis=1).astype(np.float32, copy=False)


@dataclass(frozen=True)
class ActivityEvents:
    """A columnar batch of validated events, as applied to an `ActivityStore`."""

    event_id: np.ndarray  # (N,) object[str]
    user_id: np.ndarray  # (N,) int64
    item_id: np.ndarray  # (N,) int64
    type: np.ndarray  # (N,) object[str]
    ts: np.ndarray  # (N,) int64
    category: np.ndarray | None = None  # (N,) int64, -1 = unknown


@runtime_checkable
class OnlineStore(Protocol):
    """Feature serving: versioned write, vectorised read, delete, atomic switch, health."""

    def write(
        self,
        entity: str,
        ids: np.ndarray,
        columns: Mapping[str, np.ndarray],
        version: str | None = None,
    ) -> int:
        """Upsert rows of `entity` into `version` (default: the active one); return rows written."""
        ...

    def read(self, entity: str, ids: np.ndarray, features: Sequence[str]) -> FeatureRows:
        """Read `features` of `ids` from the active version in one round trip."""
        ...

    def delete(self, entity: str, ids: np.ndarray) -> int:
        """Delete rows of `ids` from the active version; return how many existed."""
        ...

    def activate(self, entity: str, version: str, keep: int = 2) -> None:
        """Atomically point readers at `version`; drop versions beyond the newest `keep`."""
        ...

    def active_version(self, entity: str) -> str | None:
        """The version readers currently see, or None before the first `activate`."""
        ...

    def health(self) -> None:
        """Raise `StoreUnavailableError` when the store cannot serve."""
        ...


@runtime_checkable
class ActivityStore(Protocol):
    """Live per-user state fed by events: idempotent apply, counters, recent items."""

    def apply_events(self, events: ActivityEvents, recent_cap: int, window_s: int) -> np.ndarray:
        """Apply events idempotently by event_id; return the (N,) mask of events that were new."""
        ...

    def activity(self, user_ids: np.ndarray) -> FeatureRows:
        """Behavioural counters per user (`n_<type>`, `n_events`, `last_ts`, `top_category`)."""
        ...

    def recent_items(self, user_id: int, n: int) -> np.ndarray:
        """The user's most recent item ids, newest first (at most `n`)."""
        ...


# Entity type names become key parts; keep them simple so keys stay unambiguous.
def check_entity(entity: str) -> str:
    """Reject entity names that would break the key layout."""
    if not entity or not entity.replace("_", "").isalnum():
        raise ValidationError("entity", f"must be alphanumeric/underscore, got {entity!r}")
    return entity


def check_version(version: str) -> str:
    """Reject version names that would break the key layout."""
    if not version or not all(c.isalnum() or c in "-_." for c in version):
        raise ValidationError("version", f"must match [A-Za-z0-9._-]+, got {version!r}")
    return version


def as_ids(ids: Any) -> np.ndarray:
    """Entity ids as a 1-d int64 array (ValidationError naming `ids` otherwise)."""
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ValidationError("ids", f"expected a 1-d integer array, got {arr.dtype}{arr.shape}")
    return arr.astype(np.int64, copy=False)


def infer_specs(ids: np.ndarray, columns: Mapping[str, Any]) -> dict[str, tuple[FeatureSpec, Any]]:
    """Validate columns against `ids` and derive each one's `FeatureSpec` and normalised array."""
    out: dict[str, tuple[FeatureSpec, Any]] = {}
    n = len(ids)
    for name, col in columns.items():
        if not name or ":" in name:
            raise ValidationError(name or "feature", "feature names must be non-empty, no ':'")
        arr = np.asarray(col)
        if arr.dtype.kind in "OUS" and arr.ndim == 1:
            if n and all(isinstance(v, str) for v in arr.tolist()):
                out[name] = (FeatureSpec("string"), arr.astype(object))
                continue
            if arr.dtype.kind == "O" and n:
                # A column of equal-length lists (e.g. Parquet list<float>) -> (N, D) vectors.
                try:
                    arr = np.stack([np.asarray(v) for v in arr.tolist()])
                except (ValueError, TypeError) as exc:
                    raise ValidationError(name, f"cannot pack as a vector: {exc}") from None
        if arr.shape[:1] != (n,):
            raise ValidationError(name, f"has {arr.shape[0] if arr.ndim else 0} rows, ids has {n}")
        if arr.ndim == 2:
            if arr.dtype.kind not in "iuf":
                raise ValidationError(name, f"unsupported vector dtype {arr.dtype}")
            dt = "int64" if arr.dtype.kind in "iu" else "float32"
            spec = FeatureSpec(dt, int(arr.shape[1]))
            arr = np.ascontiguousarray(arr, dtype=dt)
        elif arr.ndim == 1:
            if arr.dtype.kind == "b":
                arr = arr.astype(np.int32)
            if arr.dtype.kind not in "iuf":
                raise ValidationError(name, f"unsupported dtype {arr.dtype}; numeric only")
            dt = {"i": "int64", "u": "int64", "f": "float32"}[arr.dtype.kind]
            if arr.dtype in (np.float64, np.int32):
                dt = str(arr.dtype)
            spec = FeatureSpec(dt)
            arr = np.ascontiguousarray(arr, dtype=dt)
        else:
            raise ValidationError(name, f"expected (N,) or (N, D), got shape {arr.shape}")
        out[name] = (spec, arr)
    return out


def empty_rows(ids: np.ndarray, specs: Mapping[str, FeatureSpec], features: Sequence[str]) -> dict:
    """Zero-filled value arrays for `features` (missing entities read as zeros under `found`)."""
    vals: dict[str, np.ndarray] = {}
    for name in features:
        s = specs[name]
        if s.dtype == "string":
            vals[name] = np.full(len(ids), "", dtype=object)
            continue
        shape = (len(ids),) if s.dim == 1 else (len(ids), s.dim)
        vals[name] = np.zeros(shape, dtype=s.dtype)
    return vals


class NoActiveVersionError(ValidationError):
    """Features were read from an entity with no active version: nothing was materialized, or
    the store lost it (a Valkey restarted empty or flushed). A `ValidationError` naming the
    first feature asked for, so callers that only know that class keep working."""


def check_features(
    entity: str, version: str | None, specs: Mapping[str, FeatureSpec], features: Sequence[str]
) -> None:
    """Raise ValidationError naming the first requested feature the version does not have
    (`NoActiveVersionError` when there is no version at all)."""
    for name in features:
        if name not in specs:
            if not version:
                problem = f"unknown feature for {entity} (no active version)"
                raise NoActiveVersionError(name, problem)
            raise ValidationError(name, f"unknown feature for {entity} version {version}")


# --- registry --------------------------------------------------------------------------------

_BACKENDS = {
    "memory": "strata.features.online.memory:MemoryOnlineStore",
    "valkey": "strata.features.online.valkey:ValkeyOnlineStore",
}


def open_online_store(config: MemoryOnlineConfig | ValkeyOnlineConfig) -> OnlineStore:
    """Build the backend named by `config.type`, importing only that backend's module."""
    target = _BACKENDS.get(config.type)
    if target is None:
        raise ConfigError(f"online.type: unknown backend {config.type!r}; known: {list(_BACKENDS)}")
    module, cls = target.split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        from strata.errors import MissingExtraError

        raise MissingExtraError(exc.name or "redis", "valkey") from exc
    store: OnlineStore = getattr(mod, cls).from_config(config)
    return store


def bulk_config(
    config: MemoryOnlineConfig | ValkeyOnlineConfig,
) -> MemoryOnlineConfig | ValkeyOnlineConfig:
    """`config` for batch jobs off the request path (file ingest): every Valkey call may take the
    patient `bulk_timeout_ms` instead of the serving `timeout_ms`."""
    if config.type == "valkey":
        return config.model_copy(
            update={"timeout_ms": max(config.timeout_ms, config.bulk_timeout_ms)}
        )
    return config


def open_activity_store(store: OnlineStore) -> ActivityStore:
    """The live-activity store that shares `store`'s backend (and connection)."""
    opener = getattr(store, "activity_store", None)
    if opener is None:
        raise ConfigError(f"{type(store).__name__} has no activity store")
    activity: ActivityStore = opener()
    return activity


__all__ = [
    "ActivityEvents",
    "ActivityStore",
    "FeatureRows",
    "FeatureSpec",
    "OnlineStore",
    "bulk_config",
    "open_activity_store",
    "open_online_store",
]
