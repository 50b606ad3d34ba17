"""`strata ctr demo`: drift, detection, retrain and recovery on synthetic Criteo-format traffic.

A model is trained on pre-drift rows of the synthetic teacher; then traffic is served in small
batches through `CtrService` with immediate feedback. Half-way the teacher changes (concept drift:
same features, new response). The rolling AUC drops, the monitor triggers, the trigger runs
warm-start retraining, the gate promotes and the service hot-reloads. A PNG shows it all, with
the AUC the teacher itself reaches on the same window as the ceiling.

Alongside, feature drift: the PSI of a few chosen features of each served segment against the
training rows. Rolling AUC down with PSI flat means concept drift (the response changed, the
inputs did not: what this teacher shift is); PSI alerts would point at covariate shift instead.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from strata.atomic import atomic_write_text
from strata.config import (
    CtrConfig,
    CtrModelConfig,
    CtrPreprocessConfig,
    CtrTrainConfig,
    DriftConfig,
    IncrementalConfig,
    Settings,
)
from strata.errors import ConfigError

log = logging.getLogger(__name__)

# A mix of heavy-tailed integers and categoricals of small to large vocabulary.
PSI_FEATURES: tuple[str, ...] = ("I1", "I5", "I11", "C1", "C6", "C14", "C17")


@dataclass
class DemoReport:
    """Numbers of one demo run and where its plot and decision log are."""

    auc_before_drift: float
    auc_min_after_drift: float
    auc_final: float
    oracle_auc_final: float
    triggers: int
    promotions: int
    versions: list[str]
    plot: str
    decision_log: str
    timeline: list[dict[str, Any]] = field(default_factory=list)
    feature_drift: list[dict[str, Any]] = field(default_factory=list)  # PSI per served segment
    max_psi_before_drift: float = float("nan")
    max_psi_after_drift: float = float("nan")
    drift_kind: str = "none"  # none | concept | covariate
    first_gate: dict[str, Any] = field(default_factory=dict)  # v1 against the hashed LR

    def to_dict(self, with_timeline: bool = False) -> dict[str, Any]:
        """A JSON-friendly dict (the per-batch timeline only on request)."""
        d = asdict(self)
        if not with_timeline:
            d.pop("timeline")
        return d


def demo_config() -> CtrConfig:
    """A small, fast configuration for the demo (the classic big DCN is the `train` default)."""
    return CtrConfig(
        preprocess=CtrPreprocessConfig(min_count=3),
        model=CtrModelConfig(
            type="dcnv2", cross_layers=2, deep=(128, 64), dropout=0.1, low_rank=32
        ),
        train=CtrTrainConfig(epochs=4, batch_size=256, patience=1, replay_rows=10_000),
        drift=DriftConfig(
            window=500, auc_threshold=0.6, relative_drop=0.1, cooldown_s=0.0, cooldown_labels=1500
        ),
        incremental=IncrementalConfig(recent_rows=3000, replay_ratio=0.25, epochs=3, lr=1e-3),
        registry_name="ctr-demo",
    )


def run_ctr_demo(
    settings: Settings,
    out_dir: Path,
    n_train: int = 30_000,
    n_before: int = 5_000,
    n_after: int = 15_000,
    batch: int = 100,
    cfg: CtrConfig | None = None,
    seed: int = 0,
    psi_rows: int = 2_500,
    psi_features: tuple[str, ...] = PSI_FEATURES,
) -> DemoReport:
    """Run the whole story and write `rolling_auc.png`, `decisions.jsonl` and `report.json`."""
    import pandas as pd

    from strata.ctr.data import CtrSource
    from strata.ctr.drift import FeatureDriftReference
    from strata.ctr.promote import publish_gated
    from strata.ctr.service import CtrService, ServedModel, make_retrain
    from strata.ctr.train import train_ctr
    from strata.datasets.criteo_synthetic import criteo_like
    from strata.monitoring.trigger import RetrainTrigger
    from strata.registry import Registry
    from strata.training.metrics import auc

    cfg = cfg or demo_config()
    out_dir.mkdir(parents=True, exist_ok=True)
    registry = Registry(settings.registry_dir, cfg.registry_name)
    train_df = criteo_like(n_train, seed=seed * 10 + 1).drop(columns=["p_true"])
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        path = Path(tmp) / "train.parquet"
        train_df.to_parquet(path, index=False)
        result = train_ctr(CtrSource(path), cfg, seed=seed, baseline=True)
    # the same gate as `strata ctr train`: the story needs v1 to beat the hashed LR
    v1, first_gate = publish_gated(result, registry)
    if not first_gate["promoted"]:
        raise ConfigError(
            f"ctr demo: v1 not promoted ({'; '.join(first_gate['reasons'])}): "
            "train on more rows (--rows) or more epochs"
        )
    served = ServedModel.load(registry.path(v1), v1)
    log_path = out_dir / "decisions.jsonl"
    log_path.unlink(missing_ok=True)
    service = CtrService(served, cfg)
    trigger = RetrainTrigger(make_retrain(service, registry, cfg, seed), log_path=log_path)

    stream = pd.concat(
        [
            criteo_like(n_before, seed=seed * 10 + 2, drift=False),
            criteo_like(n_after, seed=seed * 10 + 3, drift=True),
        ],
        ignore_index=True,
    )
    p_true = stream.pop("p_true").to_numpy()
    labels = stream["label"].to_numpy(dtype=np.float32)
    prep = served.preprocessor  # incremental versions keep the preprocessing
    encoded = prep.transform(stream.drop(columns=["label"]))
    reference = FeatureDriftReference.fit(
        prep.transform(train_df.drop(columns=["label"])),
        features=psi_features,
        psi_alert=cfg.drift.psi_alert,
    )
    segments = _feature_drift(reference, encoded, n_before, psi_rows)
    timeline: list[dict[str, Any]] = []
    w = cfg.drift.window
    for s in range(0, len(stream), batch):
        e = min(s + batch, len(stream))
        pred = service.predict_batch(encoded.take(slice(s, e)))
        fb = service.feedback(pred.ids, labels[s:e])
        event = trigger.handle(fb.decision)
        lo = max(0, e - w)
        oracle = float(auc(labels[lo:e], p_true[lo:e])) if e - lo >= w // 2 else None
        timeline.append(
            {
                "rows": e,
                "auc": fb.decision.auc,
                "oracle_auc": oracle,
                "floor": fb.decision.floor,
                "kind": fb.decision.kind,
                "action": event.action,
                "version": service.served.version,
            }
        )
    report = _summarise(timeline, n_before, registry.versions(), out_dir, log_path)
    report.first_gate = first_gate
    _add_feature_drift(report, segments, n_before)
    _plot(timeline, n_before, batch, out_dir / "rolling_auc.png", segments, cfg.drift.psi_alert)
    report_json = json.dumps(report.to_dict(with_timeline=True), indent=2)
    atomic_write_text(out_dir / "report.json", report_json)
    return report


def _feature_drift(
    reference: Any, encoded: Any, n_before: int, psi_rows: int
) -> list[dict[str, Any]]:
    """PSI of each served segment (the pre-shift rows, then `psi_rows` at a time) vs training."""
    bounds = [(0, n_before)] if n_before > 0 else []
    bounds += [
        (s, min(s + psi_rows, len(encoded))) for s in range(n_before, len(encoded), psi_rows)
    ]
    out = []
    for lo, hi in bounds:
        rep = reference.compare(encoded.take(slice(lo, hi)))
        out.append({"rows_from": lo, "rows_to": hi, "psi": rep.psi, "alerts": rep.alerts})
        log.info("ctr demo: PSI rows %d-%d %s alerts=%s", lo, hi, rep.psi, rep.alerts)
    return out


def _add_feature_drift(report: DemoReport, segments: list[dict[str, Any]], n_before: int) -> None:
    """Attach the PSI segments and say which kind of drift the numbers show."""
    report.feature_drift = segments

    def worst(segs: list[dict[str, Any]]) -> float:
        return max((max(s["psi"].values()) for s in segs), default=float("nan"))

    before = [s for s in segments if s["rows_to"] <= n_before]
    after = [s for s in segments if s["rows_from"] >= n_before]
    report.max_psi_before_drift = worst(before)
    report.max_psi_after_drift = worst(after)
    if any(s["alerts"] for s in after):
        report.drift_kind = "covariate"
    elif report.triggers > 0:
        report.drift_kind = "concept"


def _summarise(
    timeline: list[dict[str, Any]],
    n_before: int,
    versions: list[str],
    out_dir: Path,
    log_path: Path,
) -> DemoReport:
    before = [t["auc"] for t in timeline if t["rows"] <= n_before and t["auc"] is not None]
    after = [t for t in timeline if t["rows"] > n_before]
    after_aucs = [t["auc"] for t in after if t["auc"] is not None]
    last = next((t for t in reversed(timeline) if t["auc"] is not None), timeline[-1])
    promotions = sum(1 for a, b in itertools.pairwise(timeline) if a["version"] != b["version"])
    return DemoReport(
        auc_before_drift=float(np.mean(before)) if before else float("nan"),
        auc_min_after_drift=float(min(after_aucs)) if after_aucs else float("nan"),
        auc_final=float(last["auc"]) if last["auc"] is not None else float("nan"),
        oracle_auc_final=float(last["oracle_auc"]) if last["oracle_auc"] else float("nan"),
        triggers=sum(1 for t in timeline if t["action"] == "started"),
        promotions=promotions,
        versions=versions,
        plot=str(out_dir / "rolling_auc.png"),
        decision_log=str(log_path),
        timeline=timeline,
    )


def _plot(
    timeline: list[dict[str, Any]],
    n_before: int,
    batch_rows: int,
    path: Path,
    segments: list[dict[str, Any]] | None = None,
    psi_alert: float = 0.2,
) -> None:
    """Rolling AUC over served rows with the floor, the drift point, triggers and reloads; below
    it, the PSI of the chosen features per segment with the alert level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.array([t["rows"] for t in timeline])
    y = np.array([np.nan if t["auc"] is None else t["auc"] for t in timeline])
    o = np.array([np.nan if t["oracle_auc"] is None else t["oracle_auc"] for t in timeline])
    floor = np.array([np.nan if t["floor"] is None else t["floor"] for t in timeline])
    segments = segments or []
    fig, axes = plt.subplots(
        2 if segments else 1,
        1,
        figsize=(10, 6.5 if segments else 4.5),
        sharex=True,
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 1.4]} if segments else None,
    )
    ax = axes[0, 0]
    ax.plot(x, y, label="rolling AUC (served model)", color="tab:blue")
    ax.plot(x, o, label="teacher AUC (ceiling)", color="tab:gray", linestyle=":")
    ax.step(x, floor, where="post", label="trigger threshold", color="tab:orange", linestyle="--")
    ax.axvline(n_before, color="black", linewidth=1, label="teacher shift")
    trig = [t["rows"] for t in timeline if t["action"] == "started"]
    for i, r in enumerate(trig):
        ax.axvline(
            r, color="tab:red", linestyle="-.", linewidth=1, label="trigger" if i == 0 else None
        )
    reloads = [b["rows"] for a, b in itertools.pairwise(timeline) if a["version"] != b["version"]]
    for i, r in enumerate(reloads):
        ax.axvline(
            r, color="tab:green", linewidth=1, label="new version served" if i == 0 else None
        )
    ax.set_ylabel("AUC over last window")
    ax.set_title("CTR drift monitor: rolling AUC, trigger and recovery")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    if segments:
        bx = axes[1, 0]
        names = list(segments[0]["psi"])
        edges = [s["rows_from"] for s in segments] + [segments[-1]["rows_to"]]
        for name in names:
            vals = [s["psi"][name] for s in segments]
            bx.stairs(vals, edges, label=name, linewidth=1.2)
        bx.axhline(psi_alert, color="tab:red", linestyle="--", linewidth=1, label="PSI alert")
        bx.axvline(n_before, color="black", linewidth=1)
        bx.set_ylabel("feature PSI")
        bx.set_ylim(0, max(psi_alert * 1.5, max(max(s["psi"].values()) for s in segments) * 1.1))
        bx.legend(loc="upper left", fontsize=7, ncol=len(names) + 1)
        bx.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("labelled predictions")
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png.tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
