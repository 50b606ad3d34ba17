"""Event ingestion through a real Valkey: stream + consumer group, durability, recovery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from strata.config import Settings, ValkeyOnlineConfig
from strata.features.events import Event, EventIngestor
from strata.features.online.valkey import ValkeyOnlineStore
from strata.features.online.valkey_stream import ValkeyEventStream

pytestmark = pytest.mark.integration


def ev(i: int, user: int = 1) -> dict:
    return {"event_id": f"v{i}", "user_id": user, "item_id": 500 + i, "type": "click", "ts": 10 + i}


def _settings(cfg: ValkeyOnlineConfig) -> Settings:
    return Settings(online=cfg)


def test_stream_ingest_applies_logs_and_acks(strata_home: Path, valkey_config) -> None:
    ing = EventIngestor(_settings(valkey_config))
    report = ing.ingest([ev(1), ev(2), ev(3, user=2), {**ev(4), "type": "??"}])
    assert (report.accepted, report.new, report.rejected) == (3, 3, 1)
    assert {r["event_id"] for r in ing.log.read()[0]} == {"v1", "v2", "v3"}
    assert ing.bloom.contains(1, np.array([501, 502, 503])).tolist() == [True, True, False]
    rows = ing.activity.activity(np.array([1, 2]))
    np.testing.assert_array_equal(rows.values["n_click"], [2, 1])
    store = ing.store
    assert isinstance(store, ValkeyOnlineStore)
    pending = store.bulk.xpending(f"{valkey_config.key_prefix}:events", "strata-ingest")
    assert pending["pending"] == 0
    assert ing.ingest([ev(1), ev(2)]).new == 0  # idempotent by event_id


def test_unprocessed_stream_entries_are_recovered(strata_home: Path, valkey_config) -> None:
    settings = _settings(valkey_config)
    store = ValkeyOnlineStore(valkey_config)
    stream = store.event_stream("events", "strata-ingest")
    assert isinstance(stream, ValkeyEventStream)
    stream.ensure_group()
    # A producer added events and a consumer read them, then died before the durable write.
    stream.add([Event.model_validate(ev(i)).model_dump_json() for i in range(5)])
    assert len(stream.read("worker-a", ">", 10, None)) == 5
    ing = EventIngestor(settings, consumer="worker-a")
    assert ing.consume() == 5
    assert len(ing.log.read()[0]) == 5
    assert stream.pending() == 0
    store.close()


_WORKER = textwrap.dedent(
    """
    import sys
    from strata.config import Settings, ValkeyOnlineConfig
    from strata.features.events import EventIngestor

    cfg = ValkeyOnlineConfig.model_validate_json(sys.argv[1])
    ing = EventIngestor(Settings(online=cfg), consumer="w1")
    i = 0
    while True:
        ing.ingest([{"event_id": f"k{i}", "user_id": i % 5, "item_id": i, "type": "view",
                     "ts": 1_700_000_000 + i}])
        sys.stdout.write(f"ack k{i}\\n")
        sys.stdout.flush()
        i += 1
    """
)


def test_acknowledged_events_survive_sigkill(strata_home: Path, valkey_config) -> None:
    env = {**os.environ, "STRATA_HOME": str(strata_home)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WORKER, valkey_config.model_dump_json()],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    acked = []
    assert proc.stdout is not None
    while len(acked) < 100:
        line = proc.stdout.readline()
        assert line, "worker exited early"
        acked.append(line.split()[1])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    ing = EventIngestor(_settings(valkey_config), consumer="w1")
    ing.consume()  # whatever was added but not yet logged is taken over now
    logged = [json.loads(x)["event_id"] for x in ing.log.path.read_text().splitlines()]
    assert set(acked) <= set(logged)
    counts = ing.activity.activity(np.arange(5)).values["n_view"]
    assert counts.sum() == len(set(logged))


def test_entries_left_by_a_replica_that_died_are_taken_over(
    strata_home: Path, valkey_config
) -> None:
    """Replicas share the consumer group: entries a replaced pod read and never logged are
    claimed, once idle for `events.claim_idle_s`, by the next replica that consumes (its own
    log), not left pending under a name that never comes back."""
    store = ValkeyOnlineStore(valkey_config)
    stream = store.event_stream("events", "strata-ingest")
    stream.ensure_group()
    stream.add([Event.model_validate(ev(i)).model_dump_json() for i in range(4)])
    assert len(stream.read("pod-gone", ">", 10, None)) == 4  # read, then the pod died
    base = _settings(valkey_config)
    quick = base.model_copy(
        update={"events": base.events.model_copy(update={"replica": "b", "claim_idle_s": 0.2})}
    )
    ing = EventIngestor(quick)
    assert ing.consume() == 0 and stream.pending() == 4  # not idle long enough yet
    time.sleep(0.3)  # idle now, and the next look (at most every claim_idle_s / 2) is due
    assert ing.consume() == 4
    assert ing.log.path.name == "events.b.jsonl"
    assert sorted(r["event_id"] for r in ing.log.read()[0]) == ["v0", "v1", "v2", "v3"]
    assert stream.pending() == 0
    store.close()
