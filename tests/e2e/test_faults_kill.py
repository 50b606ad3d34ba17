"""SIGKILL during `strata train`, `strata finetune` and `strata events land`, then a rerun.

Each command runs as a real process on the tiny world and is killed when a marker of its progress
appears on disk (a staging folder, a committed version folder, a landing mark) or after a delay.
Every kill must land before the command's end (`kill_at`: a try that came too late is undone
and retried at an earlier point; no landed kill fails the test). Afterwards the registry and the
stores must be consistent: the serving pointer names a complete version whose files match its
manifest's hashes, nothing half-written is listed, the next run sweeps what the killed one left,
and the offline store holds every event once.
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
from tests.fault_support import (
    KillPoint,
    after,
    cut,
    kill_at,
    offline_event_counts,
    run_cli,
    saved,
    tiny_home,
)
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


def _staging(reg: Registry) -> list[Path]:
    return [p for p in reg.dir.glob(".staging-*") if p.is_dir()]


def _new_staging(reg: Registry) -> Callable[[], bool]:
    """Armed as a try starts: a staging folder of this try exists (not one a killed run left)."""
    before = set(_staging(reg))
    return lambda: bool(set(_staging(reg)) - before)


def _serving_moved(reg: Registry) -> Callable[[], bool]:
    """`done` of a command that promotes last: the pointer left v0001."""
    return lambda: reg.serving() != "v0001"


def test_kill_train_at_its_writes_then_rerun(tmp_path: Path) -> None:
    home, env, reg = tiny_home(tmp_path)
    args = ["train", "--dataset", DATASET, "--until", str(cut())]

    def committed() -> Callable[[], bool]:
        known = len(reg.versions())
        return lambda: len(reg.versions()) > known

    # A staging folder lives ~0.5 s of a ~15 s run and nothing earlier leaves one, so a missed
    # one is retried as it is; a kill after the commit falls back to the staging before it.
    staged: KillPoint = ("staging folder exists", lambda: _new_staging(reg))
    state, done = saved(tmp_path / "saved", home), _serving_moved(reg)
    log = tmp_path / "train.err"
    landed = {"staging": kill_at(env, args, [staged, staged], log, state=state, done=done)}
    assert _consistent(reg) == "v0001"  # killed before the promotion
    assert _staging(reg)  # left by the killed writer, its lock now free: swept next run
    ladder = [("new version committed", committed), staged]
    landed["commit"] = kill_at(env, args, ladder, log, state=state, done=done)
    assert _consistent(reg) == "v0001"
    res = run_cli(env, *args, "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    new = json.loads(res.stdout)["version"]
    assert _consistent(reg) == new
    assert not _staging(reg)
    print(f"\n[kill train] landed at {landed}; versions {reg.versions()}, serving {new}")


def test_kill_finetune_then_rerun(tmp_path: Path) -> None:
    home, env, reg = tiny_home(tmp_path)
    env["STRATA_TRAINING__GATE_TOLERANCE"] = "1.0"  # accept, so the run writes a version
    args = ["finetune", "--dataset", DATASET, "--since", str(cut())]

    def decision_logged() -> Callable[[], bool]:
        """The gate's decision appended (the step before staging the accepted version)."""
        log = reg.dir / "decisions.jsonl"
        size = log.stat().st_size if log.exists() else 0
        return lambda: log.exists() and log.stat().st_size > size

    points: dict[str, list[KillPoint]] = {
        "after 2 s": [(f"after {s:g} s", lambda s=s: after(s)) for s in (2.0, 1.0, 0.5)],
        "staging folder exists": [
            ("staging folder exists", lambda: _new_staging(reg)),
            ("gate decision logged", decision_logged),
        ],
    }
    state, done = saved(tmp_path / "saved", home), _serving_moved(reg)
    landed = {}
    for name, ladder in points.items():
        landed[name] = kill_at(env, args, ladder, tmp_path / "ft.err", state=state, done=done)
        assert _consistent(reg) == "v0001"  # killed before the promotion
    res = run_cli(env, *args)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    new = out["new_version"]
    assert out["accepted"] and _consistent(reg) == new
    assert not _staging(reg)
    decisions = reg.decisions()
    assert decisions and decisions[-1]["accepted"]  # a torn line of a killed run is skipped
    print(f"\n[kill finetune] landed at {landed}; versions {reg.versions()}, serving {new}")


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

    def parts() -> dict[Path, tuple[int, int]]:
        """The offline store's event partition files and their (inode, mtime): a merged
        partition is written under a temporary name and renamed over the old file."""
        files = (home / "offline" / DATASET / "events").rglob("*.parquet")
        return {f: (st.st_ino, st.st_mtime_ns) for f in files if (st := f.stat())}

    def at_least(n: int) -> Callable[[], Callable[[], bool]]:
        return lambda: lambda: marks() >= n

    def changed(state: Callable[[], object]) -> Callable[[], bool]:
        """Armed as a try starts: `state()` changed during this try."""
        start = state()
        return lambda: state() != start

    points: dict[str, list[KillPoint]] = {
        # Earlier than the first mark: the first partition of the first log's events renamed
        # into the offline store (its mark follows; a kill before it makes the rerun re-send
        # those events, which must still land once).
        "first log landed": [
            ("first log landed", at_least(1)),
            ("first events merged into the offline store", lambda: changed(parts)),
        ],
        "third log landed": [
            ("third log landed", at_least(3)),
            ("second log landed", at_least(2)),
            ("a log landed in this run", lambda: changed(marks)),
        ],
    }
    args = ["events", "land", "--dataset", DATASET]
    state = saved(tmp_path / "saved", home)
    landed = {}
    for name, ladder in points.items():
        landed[name] = kill_at(env, args, ladder, tmp_path / "land.err", state=state,
                               done=lambda: marks() == 6)  # fmt: skip
        counts = offline_event_counts(home / "offline", DATASET)
        assert max(counts.values()) == 1  # a kill never leaves an event twice
    res = run_cli(env, *args)
    assert res.returncode == 0, res.stderr[-3000:]
    counts = offline_event_counts(home / "offline", DATASET)
    assert all(counts.get(e) == 1 for e in logged) and max(counts.values()) == 1
    assert json.loads(run_cli(env, *args).stdout)["landed"] == 0
    print(f"\n[kill land] landed at {landed}; {len(logged)} logged, all landed once")
