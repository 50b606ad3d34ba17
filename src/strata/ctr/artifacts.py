"""A CTR model version on disk: writing its artifacts (weights, ONNX, preprocessor, metrics), the
CTR registry, publishing and promoting a version, and loading one back."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from strata.atomic import atomic_write_text
from strata.config import CtrConfig, CtrModelConfig, Settings
from strata.ctr.preprocess import CtrBatch, CtrPreprocessor
from strata.errors import DataError

if TYPE_CHECKING:
    from strata.ctr.drift import FeatureDriftReference
    from strata.ctr.model import CtrModel
    from strata.registry import Registry

log = logging.getLogger(__name__)

# Files of a CTR version.
MODEL_ONNX = "model.onnx"
MODEL_WEIGHTS = "model.safetensors"
PREPROCESS = "preprocess.json"
REPLAY = "replay.npz"
DRIFT_REF = "drift_reference.json"
CTR_META = "ctr.json"


@dataclass
class CtrTrainResult:
    """Everything a trained version consists of, before it is written to the registry."""

    model: CtrModel
    preprocessor: CtrPreprocessor
    config: CtrConfig
    metrics: dict[str, Any]
    replay: CtrBatch | None
    drift_reference: FeatureDriftReference | None
    data: dict[str, Any] = field(default_factory=dict)


def write_artifacts(result: CtrTrainResult, out_dir: Path) -> dict[str, Any]:
    """Write weights, ONNX (checked against torch), preprocessing, replay and metadata."""
    import torch

    from strata.ctr.model import ProbModel
    from strata.models.weights import save_state
    from strata.training.export import export_onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    model = result.model.eval()
    save_state(model, out_dir / MODEL_WEIGHTS)
    prep = result.preprocessor
    rng = np.random.default_rng(0)
    dense = torch.from_numpy(rng.standard_normal((8, prep.n_dense)).astype(np.float32))
    cats = torch.from_numpy(
        np.stack([rng.integers(0, c, 8) for c in prep.cardinalities], axis=1).astype(np.int64)
    )
    diff = export_onnx(
        ProbModel(model), (dense, cats), ("dense", "cats"), out_dir / MODEL_ONNX, "prob"
    )
    model.eval()  # the exporter restores the wrapper's (training) mode on the way out
    prep.save(out_dir / PREPROCESS)
    if result.replay is not None:
        result.replay.to_npz(out_dir / REPLAY)
    if result.drift_reference is not None:
        atomic_write_text(out_dir / DRIFT_REF, json.dumps(result.drift_reference.to_dict()))
    meta = {
        "kind": "ctr",
        "model": result.config.model.model_dump(mode="json"),
        "cardinalities": result.model.cardinalities,
        "n_dense": result.model.n_dense,
        "metrics": result.metrics,
        "data": result.data,
        "reference_auc": reference_auc(result.metrics),
        "onnx_max_abs_diff": diff,
        "torch": torch.__version__,
    }
    atomic_write_text(out_dir / CTR_META, json.dumps(meta, indent=2, default=_json_default))
    return meta


def ctr_registry(settings: Settings) -> Registry:
    """The registry of CTR versions: `<registry_dir>/<ctr.registry_name>/`."""
    from strata.registry import Registry

    return Registry(settings.registry_dir, settings.ctr.registry_name)


def publish(result: CtrTrainResult, registry: Registry, promote: bool = True) -> str:
    """Write a version into the registry (staged, hashed, renamed) and optionally serve it."""
    with registry.stage() as tmp:
        meta = write_artifacts(result, tmp)
        manifest = {
            "kind": "ctr",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": meta["model"],
            "metrics": json.loads(json.dumps(result.metrics, default=_json_default)),
            "data": result.data,
        }
        version = registry.commit(tmp, manifest)
    if promote:
        registry.promote(version)
    log.info("ctr: wrote version %s (serving: %s)", version, promote)
    return version


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def reference_auc(metrics: dict[str, Any]) -> float | None:
    """The AUC the drift monitor compares against: held-out test, else the gate holdout."""
    if "test" in metrics:
        return float(metrics["test"]["auc"])
    if "gate" in metrics:
        return float(metrics["gate"]["new_auc"])
    return None


def load_version_model(version_dir: Path) -> tuple[CtrModel, CtrPreprocessor, dict[str, Any]]:
    """Torch model (for warm start), preprocessing and metadata of a written version."""
    from strata.ctr.model import CtrModel
    from strata.models.weights import load_state

    meta_path = version_dir / CTR_META
    if not meta_path.exists():
        raise DataError(version_dir, "not a CTR model version (no ctr.json)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    # Versions written before the wide part existed have no `wide` key: they were networks alone.
    meta["model"] = {"wide": False, **meta["model"]}
    prep = CtrPreprocessor.load(version_dir / PREPROCESS)
    model = CtrModel(
        int(meta["n_dense"]), list(meta["cardinalities"]), CtrModelConfig(**meta["model"])
    )
    load_state(model, version_dir / MODEL_WEIGHTS)
    model.eval()
    return model, prep, meta
