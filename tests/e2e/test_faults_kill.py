"""SIGKILL during `strata train`, `strata finetune` and `strata events land`, then a rerun.

Each command runs as a real process on the tiny world and is killed when a marker of its progress
appears on disk (a staging folder, a committed version folder, a landing mark) or
after a delay; afterwards the registry and the stores must be consistent: the serving pointer names
a complete version whose files match its manifest's hashes, nothing half-written is listed, the
next run sweeps what the killed one left, and the offline store holds every event once.
(`strata features materialize` into Valkey: tests/integration/test_faults_kill_valkey.py.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from strata.config import Settings
from strata.features.event_files import event_logs
from strata.features.event_log import EventLog
from strata.registry import Registry
from tests.fault_support import after, cut, kill_when, offline_event_counts, run_cli, tiny_home
from tests.unit.serving_support import DATASET

pytestmark = pytest.mark.e2e


def _consistent(reg: Registry) -> str:
    """The registry after a kill: the pointer names a complete, verified version; every listed
    version is complete (its manifest's files hash right). Returns the serving version."""
    serving = reg.serving()
    assert serving is not None and serving in reg.versions()
    for v in reg.versions():
        reg.verify(v)  # DataError on a missing file or a hash mismatch
    return serving


def test_kill_train_at_its_writes_then_rerun(tmp_path: Path) -> None:
    _, env, reg = tiny_home(tmp_path)
    args = ["train", "--dataset", DATASET, "--until", str(cut())]

    def staging() -> list[Path]:
        return [p for p in reg.dir.glob(".staging-*") if p.is_dir()]

    points: dict[str, Callable[[list[str]], Callable[[], bool]]] = {
        "staging folder exists": lambda known: lambda: bool(staging()),
        "new version committed": lambda known: lambda: len(reg.versions()) > len(known),
    }
    outcomes = {}
    for name, point in points.items():
        outcomes[name] = kill_when(env, args, point(reg.versions()), tmp_path / "train.err")
        serving = _consistent(reg)
        assert serving == "v0001" or outcomes[name] == "finished"
        if name == "staging folder exists" and outcomes[name] == "killed":
            assert staging()  # left by the killed writer, its lock now free: swept next run
    res = run_cli(env, *args, "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    new = json.loads(res.stdout)["version"]
    assert _consistent(reg) == new
    assert not staging()
    print(f"\n[kill train] {outcomes}; versions {reg.versions()}, serving {new}")


def test_kill_finetune_then_rerun(tmp_path: Path) -> None:
    _, env, reg = tiny_home(tmp_path)
    env["STRATA_TRAINING__GATE_TOLERANCE"] = "1.0"  # accept, so the run writes a version
    args = ["finetune", "--dataset", DATASET, "--since", str(cut())]
    outcomes = {}
    for name, trigger in {
        "after 2 s": after(2.0),
        "staging folder exists": lambda: any(p.is_dir() for p in reg.dir.glob(".staging-*")),
    }.items():
        outcomes[name] = kill_when(env, args, trigger, tmp_path / "finetune.err")
        _consistent(reg)
        assert reg.serving() == "v0001" or outcomes[name] == "finished"
    res = run_cli(env, *args)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert out["accepted"] and _consistent(reg) == out["new_version"]
    assert not [p for p in reg.dir.glob(".staging-*") if p.is_dir()]
    decisions = reg.decisions()
    assert decisions and decisions[-1]["accepted"]  # a torn line of a killed run is skipped
    print(f"\n[kill finetune] {outcomes}; versions {reg.versions()}, serving {reg.serving()}")


def test_kill_land_then_rerun(tmp_path: Path) -> None:
    home, env, _ = tiny_home(tmp_path)
    s = Settings(home=home)
    logged: list[str] = []
    for r in range(6):  # six replicas' logs: land works through them one by one
        events = [{"event_id": f"k-{r}-{i}", "user_id": 1 + i % 60, "item_id": 1 + (i * 7) % 80,
                   "type": "click", "ts": 1_004_000_000 + i * 900, "_at": 1.0}
                  for i in range(400)]  # fmt: skip
        EventLog(s.events_dir / f"events.r{r}.jsonl").append(events)
        logged += [e["event_id"] for e in events]
    assert len(event_logs(s)) == 6

    def marks() -> int:
        return len(list(s.events_dir.glob("*.landed-*")))

    args = ["events", "land", "--dataset", DATASET]
    outcomes = {
        "first log landed": kill_when(env, args, lambda: marks() >= 1, tmp_path / "l.err"),
        "third log landed": kill_when(env, args, lambda: marks() >= 3, tmp_path / "l.err"),
    }
    counts = offline_event_counts(home / "offline", DATASET)
    assert max(counts.values()) == 1  # a kill never leaves an event twice
    res = run_cli(env, *args)
    assert res.returncode == 0, res.stderr[-3000:]
    counts = offline_event_counts(home / "offline", DATASET)
    assert all(counts.get(e) == 1 for e in logged) and max(counts.values()) == 1
    assert json.loads(run_cli(env, *args).stdout)["landed"] == 0
    print(f"\n[kill land] {outcomes}; {len(logged)} logged, all landed once")
