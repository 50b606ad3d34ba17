"""Every promotion gate in one place: whether a new model version may replace the serving one,
and the reasons when it may not. Pipelines, the CLI and the CTR monitor only forward these.

- `initial_gate`: a freshly trained recommender version (initial pipeline). Its ranker must beat
  an AUC floor on its validation rows and, when the serving version was trained on the same
  cut-off (so the holdout is the same), its holdout NDCG@10 must not be worse than serving's by
  more than the tolerance.
- `finetune_gate`: a fine-tuned recommender version (`strata finetune`, incremental pipeline).
  Every gate metric measured on the newest held-out events must stay within the tolerance of
  the serving version's on the same events.
- `ctr_retrain_gate`: a warm-started CTR model (monitor, `ctr-retrain` pipeline). Its AUC on the
  recent holdout must reach the serving model's plus a minimum gain.
- `ctr_baseline_gate`: a CTR model trained from scratch (`strata ctr train`). Its AUC on the
  validation window must exceed the hashed logistic regression's, fitted and early-stopped on the
  same rows in the same run, by more than a minimum gain (a tie is refused).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class GateDecision:
    """Accepted or not, with one human-readable reason per failed condition."""

    accepted: bool
    reasons: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, reasons: list[str]) -> GateDecision:
        return cls(not reasons, reasons)


HOLDOUT_KEY = "holdout_ndcg@10_full"


def initial_gate(
    candidate: Mapping[str, Any],
    serving: Mapping[str, Any] | None,
    min_ranker_auc: float,
    tolerance: float,
) -> GateDecision:
    """Gate a trained version's manifest against the serving version's (None: nothing serves)."""
    m = candidate.get("metrics", {})
    reasons: list[str] = []
    auc = m.get("ranker_auc_valid")
    if auc is None or not math.isfinite(float(auc)) or float(auc) < min_ranker_auc:
        reasons.append(f"ranker_auc_valid {auc} < floor {min_ranker_auc}")
    if serving is not None:
        until = candidate.get("data_range", {}).get("until")
        same_cut = serving.get("data_range", {}).get("until") == until
        a, b = m.get(HOLDOUT_KEY), serving.get("metrics", {}).get(HOLDOUT_KEY)
        if same_cut and a is not None and b is not None and float(a) < float(b) - tolerance:
            name = serving.get("version", "serving")
            reasons.append(f"{HOLDOUT_KEY} {a:.4f} < serving {name} {b:.4f} - {tolerance}")
    return GateDecision.of(reasons)


def finetune_gate(
    serving: Mapping[str, float], candidate: Mapping[str, float], tolerance: float
) -> GateDecision:
    """Gate fine-tuned metrics against the serving version's on the same held-out events."""
    return GateDecision.of(
        [
            f"{k} {candidate.get(k, math.nan):.4f} < serving {v:.4f} - {tolerance}"
            for k, v in serving.items()
            if not candidate.get(k, -math.inf) >= v - tolerance
        ]
    )


def ctr_retrain_gate(old_auc: float, new_auc: float, min_gain: float) -> GateDecision:
    """Gate a retrained CTR model's holdout AUC against the serving model's plus `min_gain`."""
    if new_auc >= old_auc + min_gain:
        return GateDecision(True)
    return GateDecision(False, [f"new auc {new_auc:.4f} < old auc {old_auc:.4f} + {min_gain}"])


def ctr_baseline_gate(
    model_auc: float, baseline_auc: float, min_gain: float, model: str = "DCN"
) -> GateDecision:
    """Gate a CTR model's validation AUC against the hashed-LR baseline's on the same window:
    accepted only if strictly above the baseline's plus `min_gain` (NaN is refused)."""
    if model_auc > baseline_auc + min_gain:  # False for NaN on either side
        return GateDecision(True)
    why = f"{model} validation AUC {model_auc:.4f} <= hashed LR {baseline_auc:.4f}"
    return GateDecision(False, [f"{why} + min gain {min_gain}"])
