"""`strata ctr train` end to end: train, gate against the hashed-LR baseline, publish.

The quality rule: a version serves only if it beats the simple baseline fitted in the same run.
For the CTR ranker that is the hashed logistic regression of `strata.ctr.baseline`, trained on
the same training rows and early-stopped on the same validation window as the network; the two
validation AUCs decide (the held-out test tail is reported, never used to choose). A refused
version is still committed to the registry, its manifest holding both AUCs, the decision and the
reason, and the registry's decision log gets a line; the serving pointer moves only if the gate
passed or the caller forced it (recorded as forced).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from strata.config import CtrConfig, CtrModelConfig, Settings
from strata.ctr.artifacts import CtrTrainResult, ctr_registry, publish
from strata.training.gates import ctr_baseline_gate

if TYPE_CHECKING:
    from strata.registry import Registry
    from strata.training.distributed import Dist

log = logging.getLogger(__name__)

PROMOTION = "promotion"  # the gate's record in a version's metrics
MODEL_NAMES = {"dcn": "DCN", "dcnv2": "DCN-v2"}


def baseline_decision(
    metrics: dict[str, Any], cfg: CtrConfig, force: bool = False
) -> dict[str, Any]:
    """The gate's record for a trained version's metrics (`valid_auc` and `baseline_hashed_lr`):
    both validation AUCs, the minimum gain, accepted or not and why, forced, promoted."""
    model_auc = float(metrics["valid_auc"])
    baseline_auc = float(metrics["baseline_hashed_lr"]["valid_auc"])
    gain = cfg.train.baseline_min_gain
    name = MODEL_NAMES.get(cfg.model.type, cfg.model.type)
    verdict = ctr_baseline_gate(model_auc, baseline_auc, gain, name)
    return {
        "gate": "hashed_lr_baseline",
        "window": "valid",
        "model": cfg.model.type,
        "model_valid_auc": model_auc,
        "baseline_valid_auc": baseline_auc,
        "min_gain": gain,
        "accepted": verdict.accepted,
        "reasons": verdict.reasons,
        "forced": force and not verdict.accepted,
        "promoted": verdict.accepted or force,
    }


def publish_gated(
    result: CtrTrainResult, registry: Registry, force: bool = False
) -> tuple[str, dict[str, Any]]:
    """Gate `result` against its baseline, commit it with the decision in its metrics, and serve
    it only if it passed (or `force`); one line in the registry's decision log either way."""
    decision = baseline_decision(result.metrics, result.config, force)
    result = dataclasses.replace(result, metrics={**result.metrics, PROMOTION: decision})
    before = registry.serving()
    version = publish(result, registry, promote=decision["promoted"])
    registry.append_log(
        {"kind": "ctr_train", "version": version, "serving_before": before, **decision}
    )
    if not decision["accepted"]:
        log.warning(
            "ctr: %s %s by the baseline gate: %s",
            version, "forced past" if force else "not promoted", "; ".join(decision["reasons"]),
        )  # fmt: skip
    return version, decision


def refusal_line(summary: dict[str, Any]) -> str:
    """The one line `strata ctr train` prints when its version was not promoted."""
    d = summary["promotion"]
    serving = summary["serving"] or "nothing"
    return (
        f"not promoted: {'; '.join(d['reasons'])}; {summary['version']} recorded, "
        f"still serving {serving} (--force serves it anyway)"
    )


def run_ctr_train(
    settings: Settings,
    data: Path,
    model_type: str | None = None,
    epochs: int | None = None,
    force: bool = False,
    dist: Dist | None = None,
) -> dict[str, Any] | None:
    """`strata ctr train`: train on a Criteo TSV or Parquet with the hashed-LR baseline on the
    same rows, publish the version and serve it if it beats the baseline on the validation
    window (or `force`); the summary's `promoted` says which. As one rank of a data-parallel
    job (`dist`), this leaves the process group after training; then only the main rank fits
    the baseline, publishes and returns the summary; the others return None."""
    from strata.ctr.data import resolve_source
    from strata.ctr.train import train_ctr_rank, with_baseline
    from strata.training.distributed import leaving_group

    cfg = settings.ctr
    if model_type is not None:
        cfg = cfg.model_copy(
            update={"model": CtrModelConfig(**{**cfg.model.model_dump(), "type": model_type})}
        )
    if epochs is not None:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": epochs})})
    with leaving_group():  # every rank leaves together once the network is trained and tested
        source = resolve_source(data, settings)
        result = train_ctr_rank(source, cfg, settings.seed, dist)
    if result is None:
        return None
    # the main rank alone, outside the group: no rank waits in a collective while the LR fits
    result = with_baseline(result, source, settings.seed)
    registry = ctr_registry(settings)
    version, decision = publish_gated(result, registry, force)
    m = result.metrics
    return {
        "version": version,
        "promoted": decision["promoted"],
        "serving": registry.serving(),
        "model": cfg.model.type,
        "test": m["test"],
        "valid_auc": m["valid_auc"],
        "baseline_hashed_lr": m["baseline_hashed_lr"],
        "promotion": decision,
        "best_epoch": m["best_epoch"],
        "samples_per_s": m["samples_per_s"],
        "rows_seen": m["rows_seen"],
        "ranks": m["ranks"],
        "device": m["device"],
    }
