"""The CTR serving core: predict, feedback, monitor and hot reload as plain library calls.

The HTTP layer (`/ctr/predict`, `/ctr/feedback`, metrics) is a thin wrapper over `CtrService`.
Predictions get increasing integer ids; the live state (`strata.ctr.state`: the process's own
rings, or the cluster's in the online store) maps an id to the features and probability it was
served with, so feedback (the true label) can be joined, on any replica in a cluster. Labelled
rows feed the rolling-AUC window and a bounded buffer of recent training rows.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from strata.config import CtrConfig, Settings
from strata.ctr.artifacts import CTR_META, MODEL_ONNX, PREPROCESS, reference_auc
from strata.ctr.preprocess import CtrBatch, CtrPreprocessor
from strata.errors import DataError, StoreUnavailableError, ValidationError
from strata.monitoring.drift import DriftDecision, RollingAucMonitor

if TYPE_CHECKING:
    from strata.ctr.state import CtrState
    from strata.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """One loaded version: ONNX session, preprocessing and metadata (swapped as a whole)."""

    version: str
    path: Path
    session: Any
    preprocessor: CtrPreprocessor
    reference_auc: float | None
    meta: dict[str, Any]

    @classmethod
    def load(cls, path: Path, version: str | None = None, threads: int = 1) -> ServedModel:
        """Load `model.onnx`, `preprocess.json` and `ctr.json` from a version folder."""
        import onnxruntime as ort

        path = Path(path)
        for name in (MODEL_ONNX, PREPROCESS, CTR_META):
            if not (path / name).is_file():
                raise DataError(path, f"not a CTR model version ({name} missing)")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(
                str(path / MODEL_ONNX), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT's classes (InvalidProtobuf, Fail) derive from Exception
            raise DataError(path / MODEL_ONNX, f"not a loadable ONNX graph: {exc}") from None
        meta = json.loads((path / CTR_META).read_text(encoding="utf-8"))
        prep = CtrPreprocessor.load(path / PREPROCESS)
        ref = meta.get("reference_auc")
        if ref is None:
            ref = reference_auc(meta.get("metrics", {}))
        return cls(version or path.name, path, session, prep, ref, meta)

    def predict(self, batch: CtrBatch) -> np.ndarray:
        """Probabilities (B,) float32 from the ONNX session."""
        if len(batch) == 0:
            return np.empty(0, dtype=np.float32)
        out = self.session.run(None, {"dense": batch.dense, "cats": batch.cats})[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)


@dataclass(frozen=True)
class Prediction:
    """Prediction ids and probabilities for one request, and the version that served it."""

    ids: np.ndarray  # (B,) int64
    probs: np.ndarray  # (B,) float32
    version: str


@dataclass(frozen=True)
class FeedbackResult:
    """How many labels were joined, which ids were unknown or expired, and the monitor's verdict."""

    accepted: int
    unknown: list[int]
    duplicate: list[int]
    decision: DriftDecision


#: First id of a cluster replica's own predictions while the online store is away (below 2^53,
#: so JSON clients keep them exact; the store's ids count up from 1 and never get there).
LOCAL_IDS = 1 << 52


class CtrService:
    """Serves the model and keeps its live state (`CtrState`): predictions awaiting labels,
    the rolling-AUC window, recent labelled rows. `state` defaults to the process's own
    (`MemoryCtrState`); a cluster passes the shared one (`ValkeyCtrState`), and while that store
    cannot be reached predictions are still answered, their ids taken from a local state
    (`LOCAL_IDS` on) that feedback reaching this replica can join."""

    def __init__(
        self,
        served: ServedModel,
        cfg: CtrConfig,
        on_decision: Callable[[DriftDecision], object] | None = None,
        state: CtrState | None = None,
    ) -> None:
        from strata.ctr.state import MemoryCtrState

        self.cfg = cfg
        self._served = served
        self._on_decision = on_decision
        self._lock = threading.Lock()
        shape = (served.preprocessor.n_dense, len(served.preprocessor.cardinalities))
        sizes = (cfg.buffer_size, cfg.drift.window, cfg.incremental.recent_rows)
        self.shared = state is not None
        self.state: CtrState = state if state is not None else MemoryCtrState(*shape, *sizes)
        self._local = MemoryCtrState(*shape, *sizes, first_id=LOCAL_IDS) if self.shared else None
        self.monitor = RollingAucMonitor(cfg.drift, served.reference_auc)
        self.counters = {"predictions": 0, "feedback": 0, "unknown_feedback": 0, "reloads": 0,
                         "store_fallbacks": 0}  # fmt: skip

    @property
    def served(self) -> ServedModel:
        """The version currently answering requests."""
        return self._served

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> Prediction:
        """Raw Criteo rows (JSON dicts) -> ids and probabilities; unseen categories go to OOV."""
        served = self._served  # one read: a concurrent reload never mixes two versions
        return self._predict(served, served.preprocessor.transform_records(rows))

    def predict_batch(self, batch: CtrBatch) -> Prediction:
        """Already preprocessed rows (same preprocessing as the served version) -> ids and probs."""
        return self._predict(self._served, batch)

    def _predict(self, served: ServedModel, batch: CtrBatch) -> Prediction:
        probs = served.predict(batch)
        try:
            ids = self.state.record(probs, batch)
        except StoreUnavailableError as exc:
            if self._local is None:
                raise
            # The answer matters more than its later label: kept here until the store is back.
            log.warning("ctr: shared state unavailable, ids kept locally: %s", exc)
            ids = self._local.record(probs, batch)
            with self._lock:
                self.counters["store_fallbacks"] += 1
        with self._lock:
            self.counters["predictions"] += len(batch)
        return Prediction(ids, probs, served.version)

    def feedback(
        self, ids: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray
    ) -> FeedbackResult:
        """Join true labels to earlier predictions (on any replica, in a cluster); the state
        feeds the window and the recent rows; the monitor decides on the window."""
        ids_a = np.asarray(ids, dtype=np.int64).reshape(-1)
        y = np.asarray(labels, dtype=np.float32).reshape(-1)
        if ids_a.shape != y.shape:
            raise ValidationError("labels", f"{y.size} labels for {ids_a.size} ids")
        if y.size and not np.isin(y, (0.0, 1.0)).all():
            raise ValidationError("labels", "labels must be 0 or 1")
        found = np.zeros(ids_a.size, dtype=bool)
        dup = np.zeros(ids_a.size, dtype=bool)
        local = ids_a >= LOCAL_IDS if self._local is not None else np.zeros(ids_a.size, bool)
        if local.any() and self._local is not None:
            joined, _ = self._local.label(ids_a[local], y[local])
            found[local], dup[local] = joined.found, joined.duplicate
            self._local.reset(forget_recent=False)  # its window is not the cluster's
        joined, window = self.state.label(ids_a[~local], y[~local])
        found[~local], dup[~local] = joined.found, joined.duplicate
        with self._lock:
            self.monitor.load(window.labels, window.probs, window.seen)
            self.counters["feedback"] += int(found.sum())
            self.counters["unknown_feedback"] += int((~found & ~dup).sum())
            decision = self.monitor.check()
        if self._on_decision is not None:
            self._on_decision(decision)
        return FeedbackResult(
            accepted=int(found.sum()),
            unknown=[int(i) for i in ids_a[~found & ~dup]],
            duplicate=[int(i) for i in ids_a[dup]],
            decision=decision,
        )

    def recent_labelled(self) -> CtrBatch:
        """Recent labelled rows, oldest first (every replica's, in a cluster)."""
        return self.state.recent()

    def reload(self, served: ServedModel, reset_state: bool = True) -> None:
        """Swap in a new version without dropping requests. `reset_state`: start a fresh window
        (and, if the preprocessing changed, forget rows encoded by the old one); in a cluster
        only the replica that promoted does that, the others just follow."""
        old = self._served
        same_prep = served.preprocessor.to_dict() == old.preprocessor.to_dict()
        with self._lock:
            self._served = served
            self.monitor.reset(served.reference_auc)
            self.counters["reloads"] += 1
        if reset_state:
            self.state.reset(forget_recent=not same_prep)
        if self._local is not None:
            self._local.reset(forget_recent=not same_prep)
        log.info("ctr: serving %s (was %s), reference auc %s", served.version, old.version,
                 served.reference_auc)  # fmt: skip

    def stats(self) -> dict[str, Any]:
        """Counters, the rolling AUC (the cluster's, in a cluster) and the served version."""
        window = self.state.window()
        with self._lock:
            self.monitor.load(window.labels, window.probs, window.seen)
            return {
                **self.counters,
                "version": self._served.version,
                "rolling_auc": self.monitor.rolling_auc(),
                "window_n": self.monitor.n,
                "labels_seen": window.seen,
                "reference_auc": self.monitor.reference_auc,
                "recent_rows": window.recent,
            }


def load_service(
    settings: Settings,
    version: str | None = None,
    on_decision: Callable[[DriftDecision], object] | None = None,
) -> CtrService:
    """A `CtrService` over the registry's serving (or the given) CTR version."""
    from strata.ctr.artifacts import ctr_registry

    registry = ctr_registry(settings)
    path = registry.path(version)
    return CtrService(ServedModel.load(path, path.name), settings.ctr, on_decision)


def make_retrain(
    service: CtrService, registry: Registry, cfg: CtrConfig, seed: int = 42
) -> Callable[[], dict[str, Any]]:
    """The trigger's job: warm-start retrain from the served version, publish and hot-reload if
    the gate passes; the gate decision is appended to the registry's decision log."""
    from strata.ctr.artifacts import publish
    from strata.ctr.train import incremental_train

    def retrain() -> dict[str, Any]:
        served = service.served
        res = incremental_train(served.path, service.recent_labelled(), cfg, seed)
        out: dict[str, Any] = {"parent": served.version, **res.to_dict()}
        if res.promoted and res.result is not None:
            version = publish(res.result, registry, promote=True)
            service.reload(ServedModel.load(registry.path(version), version))
            out["version"] = version
        registry.append_log({"kind": "ctr_incremental", **out})
        return out

    return retrain


def evaluate_data(
    settings: Settings, data: Path, version: str | None = None, chunk_rows: int = 65_536
) -> dict[str, Any]:
    """AUC, logloss and rows of the serving (or given) version's ONNX model over a whole file."""
    from strata.ctr.artifacts import ctr_registry
    from strata.ctr.data import resolve_source
    from strata.ctr.train import evaluate_probs

    registry = ctr_registry(settings)
    path = registry.path(version)
    served = ServedModel.load(path, path.name)
    source = resolve_source(data, settings)
    ys, ps = [], []
    for df in source.iter_range(0, source.rows, chunk_rows):
        batch = served.preprocessor.transform(df, require_label=True)
        assert batch.labels is not None
        ys.append(batch.labels)
        ps.append(served.predict(batch))
    out = evaluate_probs(np.concatenate(ys), np.concatenate(ps))
    return {**out, "version": served.version}
