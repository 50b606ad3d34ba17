"""Rolling-AUC monitor decisions, PSI feature drift, and the retrain trigger's lock and log."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from strata.config import DriftConfig
from strata.ctr.drift import FeatureDriftReference
from strata.ctr.preprocess import CtrBatch
from strata.errors import ValidationError
from strata.monitoring.drift import RollingAucMonitor, psi
from strata.monitoring.trigger import RetrainTrigger


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def scores(n: int, quality: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores whose AUC grows with `quality` (0 = random)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.float32)
    p = quality * y + rng.random(n)
    return y, p.astype(np.float32)


def test_insufficient_until_half_window() -> None:
    m = RollingAucMonitor(DriftConfig(window=100), reference_auc=0.8)
    y, p = scores(49, 1.0)
    m.add(y, p)
    d = m.check()
    assert d.kind == "insufficient" and d.auc is None and d.n == 49
    m.add(*scores(1, 1.0, seed=1))
    assert m.check().kind != "insufficient"


def test_healthy_then_absolute_trigger_and_cooldown() -> None:
    clock = Clock()
    cfg = DriftConfig(
        window=200, auc_threshold=0.7, relative_drop=None, cooldown_s=10, cooldown_labels=100
    )
    m = RollingAucMonitor(cfg, reference_auc=0.9, clock=clock)
    m.add(*scores(200, 2.0))
    d = m.check()
    assert d.kind == "healthy" and d.auc > 0.9
    m.add(*scores(200, 0.0, seed=2))  # the window is now random guessing
    d = m.check()
    assert d.kind == "triggered" and d.reasons == ("absolute",) and d.auc < 0.7
    m.add(*scores(150, 0.0, seed=3))
    clock.t = 5.0
    assert m.check().kind == "cooldown"  # too soon
    clock.t = 20.0
    assert m.check().kind == "triggered"  # 150 labels and 20 s later


def test_relative_drop_from_reference() -> None:
    cfg = DriftConfig(
        window=300, auc_threshold=None, relative_drop=0.05, cooldown_labels=0, cooldown_s=0
    )
    y, p = scores(300, 0.6, seed=4)
    from strata.training.metrics import auc

    level = auc(y, p)
    m = RollingAucMonitor(cfg, reference_auc=level / 0.9)  # a 10% drop
    m.add(y, p)
    d = m.check()
    assert d.kind == "triggered" and d.reasons == ("relative",)
    assert d.floor == pytest.approx(level / 0.9 * 0.95)
    m2 = RollingAucMonitor(cfg, reference_auc=level / 0.99)  # a 1% drop
    m2.add(y, p)
    assert m2.check().kind == "healthy"


def test_window_rolls_and_reset_clears() -> None:
    m = RollingAucMonitor(
        DriftConfig(window=100, auc_threshold=0.7, cooldown_labels=0, cooldown_s=0)
    )
    m.add(*scores(100, 0.0, seed=5))
    assert m.check().kind == "triggered"
    m.add(*scores(100, 3.0, seed=6))  # fully replaces the bad rows
    assert m.check().kind == "healthy" and m.labels_seen == 200
    m.reset(reference_auc=0.75)
    assert m.n == 0 and m.check().kind == "insufficient" and m.reference_auc == 0.75
    with pytest.raises(ValidationError):
        m.add(np.zeros(3), np.zeros(2))


def test_single_class_window_is_insufficient() -> None:
    m = RollingAucMonitor(DriftConfig(window=10))
    m.add(np.zeros(10), np.linspace(0, 1, 10))
    assert m.check().kind == "insufficient"


def _batch(rng: np.random.Generator, n: int, shift: float = 0.0, cat_shift: int = 0) -> CtrBatch:
    dense = np.zeros((n, 26), dtype=np.float32)
    dense[:, :13] = rng.normal(shift, 1.0, (n, 13))
    dense[:, 13:] = rng.random((n, 13)) < 0.1
    cats = rng.integers(2, 12, (n, 26)) + cat_shift
    return CtrBatch(dense, cats.astype(np.int64), None)


def test_psi_small_for_same_large_for_shift(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ref = FeatureDriftReference.fit(_batch(rng, 5000), features=["I1", "I2", "C1"])
    same = ref.compare(_batch(rng, 5000))
    assert max(same.psi.values()) < 0.05 and same.alerts == []
    moved = ref.compare(_batch(rng, 5000, shift=1.0, cat_shift=5))
    assert moved.psi["I1"] > 0.2 and moved.psi["C1"] > 0.2 and "I1" in moved.alerts
    again = FeatureDriftReference.from_dict(json.loads(json.dumps(ref.to_dict())))
    assert again.compare(_batch(rng, 100)).psi.keys() == same.psi.keys()
    assert psi(np.array([1, 1]), np.array([1, 1])) == pytest.approx(0.0)
    with pytest.raises(ValidationError):
        FeatureDriftReference.fit(_batch(rng, 10), features=["Z9"])


def _triggered():
    m = RollingAucMonitor(
        DriftConfig(window=10, auc_threshold=0.9, cooldown_labels=0, cooldown_s=0)
    )
    m.add(np.array([0, 1] * 5), np.array([1, 0] * 5))
    d = m.check()
    assert d.kind == "triggered"
    return d


def test_trigger_runs_once_at_a_time_and_logs(tmp_path: Path) -> None:
    release = threading.Event()
    started = threading.Event()

    def retrain() -> dict:
        started.set()
        release.wait(10)
        return {"promoted": True, "new_auc": 0.8}

    log = tmp_path / "decisions.jsonl"
    trig = RetrainTrigger(retrain, log_path=log, background=True)
    d = _triggered()
    assert trig.handle(d).action == "started"
    started.wait(10)
    assert trig.running
    assert trig.handle(d).action == "busy"  # never two at once
    release.set()
    trig.wait(10)
    assert not trig.running and trig.runs == 1
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r.get("action", r["event"]) for r in lines] == ["started", "busy", "retrain"]
    assert lines[0]["auc"] == d.auc and lines[0]["floor"] == 0.9
    assert lines[2]["ok"] is True and lines[2]["new_auc"] == 0.8


def test_failed_retrain_is_logged_and_releases_lock(tmp_path: Path) -> None:
    def boom() -> dict:
        raise RuntimeError("disk full")

    trig = RetrainTrigger(boom, log_path=tmp_path / "log.jsonl")
    d = _triggered()
    assert trig.handle(d).action == "started"
    assert not trig.running
    last = trig.records[-1]
    assert last["ok"] is False and "disk full" in last["error"]
    healthy = RollingAucMonitor(DriftConfig(window=10)).check()
    assert trig.handle(healthy).action == "none"
    assert trig.records[-1]["kind"] == "insufficient"
