"""Pipeline steps as plain library functions: storage URI + JSON-able parameters -> JSON-able dict.

Each step opens the workspace at the storage URI and calls the same library function the CLI
calls (ingest, feature build, content encoders, train, ANN index, fine-tune, materialize, CTR
incremental training). The Kubeflow components in `components.py` only forward their arguments
here, so a pipeline run on a cluster, the local runner and a plain Python call do the same work.
Decisions (gate passed or not, and why) are appended to the registry's `decisions.jsonl`.
Integer parameters use 0 and strings use "" for "not set": KFP parameters are not optional.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec

from strata.errors import StrataError
from strata.pipelines.storage import workspace

if TYPE_CHECKING:
    from strata.registry import Registry

log = logging.getLogger(__name__)
P = ParamSpec("P")


class PublishError(StrataError):
    """An accepted version cannot be published (its ANN index is missing)."""


def _drop_none(value: Any) -> Any:
    """KFP passes step outputs as protobuf Structs, whose SDK rejects None: leave such keys out."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_drop_none(v) for v in value if v is not None]
    return value


def step(fn: Callable[P, dict[str, Any]]) -> Callable[P, dict[str, Any]]:
    """Mark a pipeline step: its output dict becomes KFP-safe JSON (no None values)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> dict[str, Any]:
        return _drop_none(fn(*args, **kwargs))

    return wrapper


def _opt_path(value: str) -> Path | None:
    return Path(value).expanduser() if value else None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _finite(metrics: dict[str, Any]) -> dict[str, float]:
    """Metrics as plain floats, NaN/inf dropped (they are not valid JSON for KFP outputs)."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, int | float) and math.isfinite(float(v)):
            out[k] = float(v)
    return out


# --- initial --------------------------------------------------------------------------------


@step
def ingest(storage_uri: str, dataset: str, data_path: str = "", until: int = 0) -> dict[str, Any]:
    """Load `dataset` and ingest users, items and events (those before `until`, when set)."""
    from strata.datasets import load
    from strata.features.offline import OfflineStore

    with workspace(storage_uri) as s:
        ds = load(dataset, path=_opt_path(data_path), settings=s)
        events = ds.interactions
        if until:
            # The history up to the cut; later events arrive through the event log.
            events = events[events["ts"] < until]
        counts = OfflineStore(s).ingest(dataset, ds.users, ds.items, [events], ds.declared())
    return {"dataset": dataset, "until": until or None, **counts}


@step
def build_features(storage_uri: str, dataset: str, until: int = 0) -> dict[str, Any]:
    """Build the offline feature tables of `dataset` (point in time up to `until`, when set)."""
    from strata.features.offline import OfflineStore

    with workspace(storage_uri) as s:
        return OfflineStore(s).build(dataset, until=until or None)


@step
def encode_content(
    storage_uri: str, dataset: str, data_path: str = "", images: str = "", enabled: bool = True
) -> dict[str, Any]:
    """Embed item text and posters into the store's `item_content` (skipped when disabled)."""
    if not enabled:
        return {"dataset": dataset, "skipped": True}
    from strata.training.content import encode_and_store

    with workspace(storage_uri) as s:
        return encode_and_store(s, dataset, images=_opt_path(images), path=_opt_path(data_path))


def _stage_dir(settings: Any, dataset: str) -> Path:
    """The two-tower staging folder of `dataset` inside the storage workspace (one per dataset:
    the initial pipeline holds a per-pipeline lock, so runs do not share it concurrently)."""
    return Path(settings.home) / "pipelines" / "stage" / dataset


@step
def train_two_tower(
    storage_uri: str, dataset: str, until: int = 0, epochs: int = 0, images: str = ""
) -> dict[str, Any]:
    """Fit the feature space and the two-tower into the workspace's staging folder."""
    import shutil

    from strata.training.train import train_two_tower as fit

    with workspace(storage_uri) as s:
        if s.pipelines.training_job:
            return _train_as_job(s, dataset, until, epochs, images)
        stage = _stage_dir(s, dataset)
        # A fresh folder: an index or files left by an earlier run must not leak into this one.
        shutil.rmtree(stage, ignore_errors=True)
        fit(s, dataset, until=until or None, images=_opt_path(images), epochs=epochs or None,
            stage_dir=stage)  # fmt: skip
        stage_rel = str(stage.relative_to(s.home))
    return {"dataset": dataset, "stage": stage_rel}


@step
def train_ranker(storage_uri: str, dataset: str, staged: dict[str, Any]) -> dict[str, Any]:
    """Train the ranker on the staged two-tower and register a candidate version (not yet
    serving) holding the staged ANN index; the staging folder is removed afterwards.
    `staged` is the build-index output: it orders the steps and is reported back."""
    import shutil

    from strata.training.train import train_ranker as fit

    if staged.get("version") and not staged.get("stage"):  # trained as a PyTorchJob
        from strata.registry import Registry

        with workspace(storage_uri) as s:
            m = Registry(s.registry_dir, dataset).manifest(staged["version"]).get("metrics", {})
        return {**staged, "metrics": _finite(m)}
    with workspace(storage_uri) as s:
        stage = _stage_dir(s, dataset)
        res = fit(s, dataset, stage, promote=False)
        shutil.rmtree(stage)
    return {
        "dataset": dataset,
        "version": res.version,
        "metrics": _finite(res.metrics),
        "index": staged.get("index"),
    }


def _train_as_job(s: Any, dataset: str, until: int, epochs: int, images: str) -> dict[str, Any]:
    """The whole training as the chart's PyTorchJob on the shared volume; the version its rank
    0 registered (unpromoted) goes on to the index, the gate and publish."""
    from strata.errors import ValidationError
    from strata.pipelines.pytorchjob import TrainingJobError, run_training_job
    from strata.registry import Registry

    if not s.pipelines.pvc:
        raise ValidationError("pipelines.training_job", "needs pipelines.pvc (a shared volume)")
    reg = Registry(s.registry_dir, dataset)
    before = set(reg.versions())
    args = ["--dataset", dataset, "--no-promote"]
    args += ["--until", str(until)] if until else []
    args += ["--epochs", str(epochs)] if epochs else []
    args += ["--images", images] if images else []
    job = run_training_job(s, args)
    new = sorted(set(reg.versions()) - before)
    if not new:
        raise TrainingJobError(f"PyTorchJob {job} succeeded but registered no version")
    return {"dataset": dataset, "version": new[-1], "job": job}


@step
def build_index(storage_uri: str, dataset: str, candidate: dict[str, Any], kind: str = "") -> dict:
    """Build the ANN index of the staged two-tower (initial pipeline: `candidate` names a
    `stage`) or of the candidate version (incremental; nothing to do when there is none)."""
    if candidate.get("stage"):
        from strata.training.index_build import build_staged_index

        with workspace(storage_uri) as s:
            info = build_staged_index(s, _stage_dir(s, dataset), kind or None)
        return {**candidate, "index": info}
    version = candidate.get("version")
    if not version:
        return {"dataset": dataset, "version": None, "skipped": True}
    from strata.training.index_build import build_version_index

    with workspace(storage_uri) as s:
        info = build_version_index(s, dataset, version, kind or None)
    return {"dataset": dataset, "version": version, "index": info}


@step
def gate(storage_uri: str, dataset: str, candidate: dict[str, Any]) -> dict[str, Any]:
    """The initial gate (`strata.training.gates.initial_gate`) on the candidate, recorded in the
    registry's decision log."""
    from strata.registry import Registry
    from strata.training.gates import initial_gate

    version = candidate["version"]
    with workspace(storage_uri) as s:
        reg = Registry(s.registry_dir, dataset)
        cand = reg.manifest(version)
        m = cand.get("metrics", {})
        serving = reg.serving()
        old = reg.manifest(serving) if serving is not None else None
        verdict = initial_gate(cand, old, s.pipelines.min_ranker_auc, s.training.gate_tolerance)
        reasons = verdict.reasons
        decision = {
            "kind": "initial_gate",
            "dataset": dataset,
            "version": version,
            "serving_version": serving,
            "accepted": not reasons,
            "reasons": reasons,
            "metrics": _finite(m),
            "created": _now(),
        }
        reg.append_log(decision)
    return decision


@step
def materialize_online(storage_uri: str, dataset: str) -> dict[str, Any]:
    """Copy the latest user and item features to the configured online store."""
    from strata.features.materialize import materialize

    with workspace(storage_uri) as s:
        return materialize(s, dataset)


@step
def publish(storage_uri: str, dataset: str, decision: dict[str, Any]) -> dict[str, Any]:
    """Point the registry's `serving` at the accepted version once its ANN index exists; a
    rejected one stays unpublished."""
    from strata.artifacts import INDEX_DIR
    from strata.registry import Registry

    version = decision.get("version")
    if not decision.get("accepted") or not version:
        return {**decision, "published": False}
    with workspace(storage_uri) as s:
        reg = Registry(s.registry_dir, dataset)
        if not (reg.path(version) / INDEX_DIR).is_dir():
            # Serving loads the version's index at reload: never point it at one without.
            raise PublishError(f"{dataset} {version} has no ANN index; build it before publishing")
        reg.promote(version)
    return {**decision, "published": True}


@step
def deploy(published: dict[str, Any], serving_url: str = "") -> dict[str, Any]:
    """Ask the serving app to load the published version (`strata.pipelines.deploy`), with the
    step's settings from the environment."""
    from strata.config import Settings
    from strata.pipelines.deploy import deploy_version

    return deploy_version(Settings(), published, serving_url)


# --- incremental -----------------------------------------------------------------------------


@step
def land(storage_uri: str, dataset: str) -> dict[str, Any]:
    """Append logged events that are not yet in the offline store (idempotent)."""
    from strata.features.event_files import land_events

    with workspace(storage_uri) as s:
        return {"dataset": dataset, "landed": land_events(s, dataset)}


def watermark(registry: Registry) -> int:
    """First timestamp the serving version has not trained on (its data range's `until`)."""
    return int(registry.manifest()["data_range"]["until"])


@step
def finetune_serving(storage_uri: str, dataset: str) -> dict[str, Any]:
    """Fine-tune the serving version on events since its watermark; the library's gate decides,
    an accepted version is written unpromoted (publish promotes it once its index exists). Too
    few new events is a recorded skip, not a failure (schedules run often)."""
    from strata.features.offline import OfflineStore
    from strata.registry import Registry
    from strata.training.finetune import finetune

    with workspace(storage_uri) as s:
        reg = Registry(s.registry_dir, dataset)
        serving = reg.serving()
        since = watermark(reg)
        n_new = len(OfflineStore(s).events(dataset, since=since))
        if n_new < s.pipelines.min_new_events:
            decision = {
                "kind": "incremental",
                "accepted": False,
                "version": None,
                "serving_version": serving,
                "since": since,
                "new_events": n_new,
                "reasons": [f"{n_new} new events since {since} < {s.pipelines.min_new_events}"],
                "created": _now(),
            }
            reg.append_log(decision)
            return decision
        # Not promoted here: the index step builds the new version's ANN index first, then
        # the publish step moves the pointer, so serving never loads a version without one.
        r = finetune(s, dataset, since, promote=False)
    return {
        "kind": "incremental",
        "accepted": r.accepted,
        "version": r.new_version,
        "serving_version": r.serving_version,
        "since": since,
        "new_events": n_new,
        "reasons": r.reasons,
        "metrics_serving": _finite(r.metrics_serving),
        "metrics_candidate": _finite(r.metrics_candidate),
    }


# --- ctr-retrain -----------------------------------------------------------------------------


@step
def ctr_retrain(storage_uri: str, recent_uri: str) -> dict[str, Any]:
    """Warm-start the serving CTR model on recent labelled rows, gate, publish if better.

    `recent_uri` is a `.npz` batch already in the serving preprocessor's encoding (what the
    drift monitor writes) or raw labelled Criteo rows (TSV or Parquet).
    """
    from strata.ctr.artifacts import ctr_registry
    from strata.ctr.data import resolve_source
    from strata.ctr.preprocess import CtrBatch
    from strata.ctr.service import ServedModel
    from strata.ctr.train import incremental_train
    from strata.pipelines.storage import fetched

    with workspace(storage_uri) as s, fetched(recent_uri) as recent_path:
        reg = ctr_registry(s)
        path = reg.path()
        if recent_path.suffix == ".npz":
            recent = CtrBatch.from_npz(recent_path)
        else:
            served = ServedModel.load(path, path.name)
            src = resolve_source(recent_path, s)
            batches = [
                served.preprocessor.transform(df, require_label=True)
                for df in src.iter_range(0, src.rows, s.ctr.train.read_rows)
            ]
            recent = CtrBatch.concat(batches)
        res = incremental_train(path, recent, s.ctr, s.seed)
        out: dict[str, Any] = {
            "kind": "ctr_incremental",
            "parent": path.name,
            "accepted": res.promoted,
            "published": False,
            "version": None,
            **res.to_dict(),
        }
        if res.promoted and res.result is not None:
            from strata.ctr.artifacts import publish as publish_ctr

            out["version"] = publish_ctr(res.result, reg, promote=True)
            out["published"] = True

        reg.append_log({**out, "source": recent_uri, "rows": len(recent), "created": _now()})
    return out
