"""The CTR serving core: predict, feedback, monitor and hot reload as plain library calls.

The HTTP layer (`/ctr/predict`, `/ctr/feedback`, metrics) is a thin wrapper over `CtrService`.
Predictions get increasing integer ids; a fixed-size ring buffer maps an id to the features and
probability it was served with, so feedback (the true label) can be joined without a database.
Labelled rows feed the rolling-AUC monitor and a bounded buffer of recent training rows.
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
from strata.errors import DataError, ValidationError
from strata.monitoring.drift import DriftDecision, RollingAucMonitor

if TYPE_CHECKING:
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
        session = ort.InferenceSession(
            str(path / MODEL_ONNX), sess_options=opts, providers=["CPUExecutionProvider"]
        )
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


class CtrService:
    """Holds the served model, the prediction ring buffer, recent labelled rows and the monitor."""

    def __init__(
        self,
        served: ServedModel,
        cfg: CtrConfig,
        on_decision: Callable[[DriftDecision], object] | None = None,
    ) -> None:
        self.cfg = cfg
        self._served = served
        self._on_decision = on_decision
        self._lock = threading.Lock()
        cap = cfg.buffer_size
        n_dense = served.preprocessor.n_dense
        n_cat = len(served.preprocessor.cardinalities)
        self._ids = np.full(cap, -1, dtype=np.int64)
        self._dense = np.zeros((cap, n_dense), dtype=np.float32)
        self._cats = np.zeros((cap, n_cat), dtype=np.int64)
        self._probs = np.zeros(cap, dtype=np.float32)
        self._labelled = np.zeros(cap, dtype=bool)
        self._next_id = 0
        # Recent labelled rows for incremental training (a ring of `recent_rows`).
        rc = cfg.incremental.recent_rows
        self._r_dense = np.zeros((rc, n_dense), dtype=np.float32)
        self._r_cats = np.zeros((rc, n_cat), dtype=np.int64)
        self._r_labels = np.zeros(rc, dtype=np.float32)
        self._r_pos = 0
        self._r_n = 0
        self.monitor = RollingAucMonitor(cfg.drift, served.reference_auc)
        self.counters = {"predictions": 0, "feedback": 0, "unknown_feedback": 0, "reloads": 0}

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
        n = len(batch)
        cap = self.cfg.buffer_size
        with self._lock:
            ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
            self._next_id += n
            keep = slice(max(0, n - cap), n)  # a batch bigger than the buffer keeps its tail
            slots = ids[keep] % cap
            self._ids[slots] = ids[keep]
            self._dense[slots] = batch.dense[keep]
            self._cats[slots] = batch.cats[keep]
            self._probs[slots] = probs[keep]
            self._labelled[slots] = False
            self.counters["predictions"] += n
        return Prediction(ids, probs, served.version)

    def feedback(
        self, ids: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray
    ) -> FeedbackResult:
        """Join true labels to earlier predictions; feed the monitor and the recent-rows buffer."""
        ids_a = np.asarray(ids, dtype=np.int64).reshape(-1)
        y = np.asarray(labels, dtype=np.float32).reshape(-1)
        if ids_a.shape != y.shape:
            raise ValidationError("labels", f"{y.size} labels for {ids_a.size} ids")
        if y.size and not np.isin(y, (0.0, 1.0)).all():
            raise ValidationError("labels", "labels must be 0 or 1")
        cap = self.cfg.buffer_size
        with self._lock:
            slots = ids_a % cap
            known = (ids_a >= 0) & (self._ids[slots] == ids_a)
            dup = known & self._labelled[slots]
            # The same id twice in one request counts once.
            _, first = np.unique(ids_a, return_index=True)
            once = np.zeros(ids_a.size, dtype=bool)
            once[first] = True
            ok = known & ~dup & once
            s = slots[ok]
            self._labelled[s] = True
            self.monitor.add(y[ok], self._probs[s])
            self._push_recent(self._dense[s], self._cats[s], y[ok])
            self.counters["feedback"] += int(ok.sum())
            self.counters["unknown_feedback"] += int((~known).sum())
            decision = self.monitor.check()
        if self._on_decision is not None:
            self._on_decision(decision)
        return FeedbackResult(
            accepted=int(ok.sum()),
            unknown=[int(i) for i in ids_a[~known]],
            duplicate=[int(i) for i in ids_a[known & ~(ok)]],
            decision=decision,
        )

    def _push_recent(self, dense: np.ndarray, cats: np.ndarray, y: np.ndarray) -> None:
        rc = self.cfg.incremental.recent_rows
        n = len(y)
        if n == 0:
            return
        if n > rc:
            dense, cats, y, n = dense[-rc:], cats[-rc:], y[-rc:], rc
        idx = (self._r_pos + np.arange(n)) % rc
        self._r_dense[idx], self._r_cats[idx], self._r_labels[idx] = dense, cats, y
        self._r_pos = int((self._r_pos + n) % rc)
        self._r_n = min(self._r_n + n, rc)

    def recent_labelled(self) -> CtrBatch:
        """Recent labelled rows, oldest first (a copy)."""
        with self._lock:
            rc = self.cfg.incremental.recent_rows
            order = np.arange(self._r_n) if self._r_n < rc else (self._r_pos + np.arange(rc)) % rc
            return CtrBatch(
                self._r_dense[order].copy(),
                self._r_cats[order].copy(),
                self._r_labels[order].copy(),
            )

    def reload(self, served: ServedModel) -> None:
        """Swap in a new version without dropping requests; the monitor restarts its window."""
        old = self._served
        same_prep = served.preprocessor.to_dict() == old.preprocessor.to_dict()
        with self._lock:
            self._served = served
            if not same_prep:
                # Buffered features were encoded by the old preprocessing: they cannot be reused.
                self._ids[:] = -1
                self._r_n = self._r_pos = 0
            self.monitor.reset(served.reference_auc)
            self.counters["reloads"] += 1
        log.info(
            "ctr: serving %s (was %s), reference auc %s",
            served.version,
            old.version,
            served.reference_auc,
        )

    def stats(self) -> dict[str, Any]:
        """Counters, the rolling AUC and the served version (for metrics endpoints)."""
        with self._lock:
            return {
                **self.counters,
                "version": self._served.version,
                "rolling_auc": self.monitor.rolling_auc(),
                "window_n": self.monitor.n,
                "reference_auc": self.monitor.reference_auc,
                "recent_rows": self._r_n,
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
