"""`strata ctr demo` at a small scale: the teacher shift drops the rolling AUC and triggers a
retrain, while the PSI of the chosen features stays flat (concept drift, not covariate shift);
the retrained versions bring the AUC back up."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from strata.config import DriftConfig, Settings
from strata.ctr.demo import PSI_FEATURES, demo_config, run_ctr_demo


def test_demo_reports_auc_story_and_feature_psi(tmp_path: Path) -> None:
    base = demo_config()
    cfg = base.model_copy(
        update={
            "train": base.train.model_copy(update={"epochs": 2, "max_threads": 1}),
            "drift": DriftConfig(
                window=300, auc_threshold=0.6, relative_drop=0.1, cooldown_s=0.0,
                cooldown_labels=900,
            ),
        }
    )  # fmt: skip
    settings = Settings(home=tmp_path / "home")
    report = run_ctr_demo(
        settings, tmp_path / "out", n_train=6000, n_before=1500, n_after=4500, cfg=cfg,
        psi_rows=1500,
    )  # fmt: skip
    assert report.triggers >= 1 and report.auc_min_after_drift < report.auc_before_drift
    # Recovery. Drifted: the rolling AUC (300-row windows) over the first 900 rows after the
    # window is all post-shift; recovered: over the last 1500 rows, after the retrains. Seeds
    # 0-19 of this configuration gave drifted 0.37-0.47, recovered 0.61-0.67, a gap of
    # 0.15-0.33 (seed 0, run here: 0.37 -> 0.66): a 0.1 margin leaves room for noise and still
    # fails when the AUC does not come back.
    tl = report.timeline
    drifted = [t["auc"] for t in tl if 1800 <= t["rows"] <= 2700 and t["auc"] is not None]
    recovered = [t["auc"] for t in tl if t["rows"] > 4500 and t["auc"] is not None]
    assert len(drifted) >= 5 and len(recovered) >= 10
    assert np.mean(drifted) < 0.5 < np.mean(recovered)  # worse than chance, then better
    assert np.mean(recovered) >= np.mean(drifted) + 0.1
    at_shift = next(t["version"] for t in tl if t["rows"] == 1500)
    assert report.promotions >= 1 and tl[-1]["version"] != at_shift  # recovered by a new version
    segs = report.feature_drift
    assert [(s["rows_from"], s["rows_to"]) for s in segs] == [
        (0, 1500), (1500, 3000), (3000, 4500), (4500, 6000),
    ]  # fmt: skip
    for s in segs:
        assert set(s["psi"]) == set(PSI_FEATURES)
        assert all(0 <= v < 0.2 for v in s["psi"].values()) and s["alerts"] == []
    # The inputs did not move while the AUC fell: the report calls it concept drift.
    assert report.drift_kind == "concept"
    assert report.max_psi_after_drift == max(max(s["psi"].values()) for s in segs[1:])
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["drift_kind"] == "concept" and len(saved["feature_drift"]) == 4
    png = (tmp_path / "out" / "rolling_auc.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
