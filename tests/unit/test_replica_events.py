"""Replicas on one shared events folder (embedded store here; tests/cluster runs real processes):
each writes its own log and outbox, landing reads every replica's log once, and the outbox of a
replica that is gone (its owner lock free) is drained by a live one."""

from __future__ import annotations

from pathlib import Path

from strata.config import Settings
from strata.features.event_files import event_logs, land_events
from strata.features.event_log import EventLog, OwnerLock
from strata.features.events import EventIngestor
from strata.features.online.memory import MemoryOnlineStore


def _ev(i: int, user: int = 1) -> dict:
    return {"event_id": f"r{i}", "user_id": user, "item_id": 10 + i, "type": "click",
            "ts": 1_700_000_000 + i}  # fmt: skip


def _replica(home: Path, name: str, store: MemoryOnlineStore) -> EventIngestor:
    s = Settings(home=home)
    s = s.model_copy(update={"events": s.events.model_copy(update={"replica": name})})
    return EventIngestor(s, store=store)


def test_each_replica_writes_its_own_log_and_landing_reads_all(tmp_path: Path) -> None:
    from strata.datasets.synthetic import recsys_world
    from strata.features.offline import OfflineStore

    store = MemoryOnlineStore()
    a, b = _replica(tmp_path, "a", store), _replica(tmp_path, "b", store)
    a.ingest([_ev(1), _ev(2)])
    b.ingest([_ev(3), _ev(2)])  # r2 again, on the other replica: applied once
    assert a.log.path.name == "events.a.jsonl" and b.log.path.name == "events.b.jsonl"
    assert [p.name for p in event_logs(a.settings)] == ["events.a.jsonl", "events.b.jsonl"]
    world = recsys_world(n_users=5, n_items=40, n_events=50, seed=2)
    ds = world.to_dataset()
    OfflineStore(a.settings).ingest("toy", ds.users, ds.items, [ds.interactions])
    before = len(OfflineStore(a.settings).events("toy"))
    assert land_events(a.settings, "toy") == 4  # r2 handed over twice, stored once
    assert land_events(a.settings, "toy") == 0
    events = OfflineStore(a.settings).events("toy")
    assert len(events) == before + 3 and {"r1", "r2", "r3"} <= set(events["event_id"])


def test_the_outbox_of_a_gone_replica_is_taken_over(tmp_path: Path) -> None:
    store = MemoryOnlineStore()
    live = _replica(tmp_path, "live", store)
    folder = live.outbox.path.parent
    # a replica that died with two deferred (acknowledged) events, and one that is alive
    EventLog(folder / "events.gone.outbox.jsonl").append([{**_ev(5), "_at": 1.0},
                                                          {**_ev(6), "_at": 2.0}])  # fmt: skip
    EventLog(folder / "events.busy.outbox.jsonl").append([{**_ev(7), "_at": 3.0}])
    busy = OwnerLock(folder / "events.busy.lock")
    assert busy.acquire()
    try:
        assert live.adopt_orphans() == 2
    finally:
        busy.release()
    logged = [r["event_id"] for r in live.log.read()[0]]
    assert logged == ["r5", "r6"]
    assert (folder / "events.gone.outbox.jsonl").stat().st_size == 0
    assert (folder / "events.busy.outbox.jsonl").stat().st_size > 0  # its owner drains it
    assert live.adopt_orphans() == 1  # the owner is gone now too
    assert live.adopt_orphans() == 0
    # a single process (no replica name) never takes anything over
    assert EventIngestor(Settings(home=tmp_path / "solo"), store=store).adopt_orphans() == 0
