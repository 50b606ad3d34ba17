"""The CTR serving core: predict ids, feedback join, ring-buffer expiry, monitor, hot reload and
the trigger -> incremental retrain -> promote -> reload loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from strata.config import Settings
from strata.ctr.artifacts import ctr_registry, publish
from strata.ctr.data import CtrSource
from strata.ctr.service import CtrService, ServedModel, load_service, make_retrain
from strata.ctr.train import train_ctr
from strata.errors import NotFoundError, ValidationError
from strata.monitoring.trigger import RetrainTrigger
from tests.unit.ctr_support import synthetic_frame, synthetic_parquet, tiny_cfg


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    tmp = tmp_path_factory.mktemp("ctr-service")
    s = Settings(home=tmp / "home", ctr=tiny_cfg(auc_threshold=0.99, relative_drop=None))
    result = train_ctr(CtrSource(synthetic_parquet(tmp, 2500, seed=11)), s.ctr, seed=0)
    publish(result, ctr_registry(s))
    return s


def rows(n: int, seed: int) -> tuple[list[dict], np.ndarray]:
    df = synthetic_frame(n, seed=seed)
    y = df.pop("label").to_numpy()
    recs = [
        {k: (None if v is None or v != v else v) for k, v in r.items()}
        for r in df.astype(object).to_dict("records")
    ]
    return recs, y


def test_predict_and_feedback(settings: Settings) -> None:
    svc = load_service(settings)
    recs, y = rows(60, seed=1)
    recs[0]["C1"] = "zzzz-unseen"  # OOV, never an error
    a = svc.predict(recs[:30])
    b = svc.predict(recs[30:])
    assert a.ids.tolist() == list(range(30)) and b.ids.tolist() == list(range(30, 60))
    assert a.probs.shape == (30,) and ((a.probs > 0) & (a.probs < 1)).all()
    assert a.version == "v0001"
    fb = svc.feedback(np.concatenate([a.ids, [999_999]]), np.concatenate([y[:30], [1]]))
    assert fb.accepted == 30 and fb.unknown == [999_999]
    assert fb.decision.kind == "insufficient" and fb.decision.n == 30
    again = svc.feedback(a.ids[:5], y[:5])
    assert again.accepted == 0 and again.duplicate == a.ids[:5].tolist()
    fb = svc.feedback(b.ids, y[30:])
    assert fb.decision.kind == "triggered" and fb.decision.n == 60  # 0.99 is unreachable
    recent = svc.recent_labelled()
    assert len(recent) == 60 and np.array_equal(recent.labels, y.astype(np.float32))
    assert svc.stats()["feedback"] == 60 and svc.stats()["unknown_feedback"] == 1
    with pytest.raises(ValidationError):
        svc.feedback([1, 2], [1])
    with pytest.raises(ValidationError):
        svc.feedback([1], [3])
    with pytest.raises(ValidationError):
        svc.predict([{"I1": "many"}])


def test_ring_buffer_expires_old_ids(settings: Settings) -> None:
    cfg = settings.ctr.model_copy(update={"buffer_size": 50})
    served = load_service(settings).served
    svc = CtrService(served, cfg)
    recs, y = rows(80, seed=2)
    p = svc.predict(recs)
    fb = svc.feedback(p.ids, y)
    assert fb.accepted == 50 and fb.unknown == list(range(30))


def test_hot_reload_and_missing_version(settings: Settings, tmp_path: Path) -> None:
    svc = load_service(settings)
    recs, y = rows(20, seed=3)
    before = svc.predict(recs)
    svc.feedback(before.ids, y)
    served2 = ServedModel.load(svc.served.path, "v-copy")
    svc.reload(served2)
    after = svc.predict(recs)
    assert after.version == "v-copy" and svc.monitor.n == 0
    assert np.allclose(before.probs, after.probs)  # same weights, same answers
    with pytest.raises(NotFoundError):
        load_service(settings, version="v0099")


@pytest.mark.parametrize(("min_gain", "promotes"), [(-1.0, True), (1.0, False)])
def test_trigger_retrains_and_the_gate_decides_promotion(
    settings: Settings, min_gain: float, promotes: bool
) -> None:
    # AUCs lie in [0, 1]: a min_gain of -1 lets every retrain through the gate and +1 none, so
    # each branch is known and asserted unconditionally.
    incremental = settings.ctr.incremental.model_copy(update={"min_gain": min_gain})
    cfg = settings.ctr.model_copy(update={"incremental": incremental})
    registry = ctr_registry(settings)
    svc = load_service(settings)
    serving_before, versions_before = registry.serving(), registry.versions()
    assert svc.served.version == serving_before
    log_file = registry.dir / "decisions.jsonl"
    log_before = log_file.read_text().splitlines() if log_file.exists() else []
    trigger = RetrainTrigger(make_retrain(svc, registry, cfg, seed=0))
    svc_events = []
    df = synthetic_frame(600, seed=21, drift=True)
    y = df.pop("label").to_numpy()
    batch = svc.served.preprocessor.transform(df)
    for s in range(0, 600, 100):
        pred = svc.predict_batch(batch.take(slice(s, s + 100)))
        fb = svc.feedback(pred.ids, y[s : s + 100])
        svc_events.append(trigger.handle(fb.decision).action)
    # The threshold (0.99) is unreachable, so the first full-enough window triggers.
    assert "started" in svc_events and trigger.runs >= 1
    outcomes = [r for r in trigger.records if r["event"] == "retrain"]
    assert len(outcomes) == trigger.runs
    for o in outcomes:
        assert o["ok"] is True and {"old_auc", "new_auc", "promoted"} <= o.keys()
        assert o["promoted"] is promotes == (o["new_auc"] >= o["old_auc"] + min_gain)
    new_versions = [v for v in registry.versions() if v not in versions_before]
    if promotes:  # every retrain published, the last one served by the registry and service
        assert new_versions == [o["version"] for o in outcomes]
        assert registry.serving() == new_versions[-1] == svc.served.version != serving_before
    else:  # nothing published; the service kept its model
        assert new_versions == [] and "version" not in outcomes[-1]
        assert registry.serving() == serving_before == svc.served.version
    logged = log_file.read_text().splitlines()[len(log_before) :]
    assert sum('"ctr_incremental"' in line for line in logged) == trigger.runs
