"""Serving replicas act as one service: 3 `strata serve` processes behind a round-robin balancer,
one shared home, one Valkey (`conftest.py`). Under continuous load: a reload on one replica moves
all of them, a pointer moved without any reload call is followed too, an event through the
balancer takes effect on every replica, one event posted to two replicas counts once, a frozen
store leaves every replica ready (degraded) and they recover by themselves, and a SIGKILLed
replica loses no acknowledged event."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from strata.registry import Registry
from tests.integration.test_serving_valkey import _wait_until
from tests.unit.serving_support import DATASET, TOKEN, copy_version

from .conftest import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.multiprocess]


@contextmanager
def load(url: str, path: Callable[[int], str], rate_hz: float = 40.0) -> Iterator[list[int]]:
    """GET `path(i)` through `url` at about `rate_hz` on a new connection each time (so the
    balancer spreads them); yields the list of status codes (599 = transport error)."""
    statuses: list[int] = []
    stop = threading.Event()

    def run() -> None:
        i = 0
        fresh = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=url, timeout=10, limits=fresh) as c:
            while not stop.is_set():
                try:
                    statuses.append(c.get(path(i)).status_code)
                except httpx.HTTPError:
                    statuses.append(599)
                i += 1
                stop.wait(1.0 / rate_hz)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        yield statuses
    finally:
        stop.set()
        worker.join(15)


def test_reload_on_one_replica_moves_every_replica(cluster: Cluster) -> None:
    reg = Registry(cluster.settings.registry_dir, DATASET)
    assert {r.version() for r in cluster.replicas} == {"v0001"}
    with load(cluster.lb.url, lambda i: f"/recommend?user_id={1 + i % 20}&k=5") as statuses:
        # traffic before, across and after both switches: counted in requests, not seconds (a
        # loaded machine sends fewer per second)
        assert _wait_until(lambda: len(statuses) >= 10, 30) < 30
        before = len(statuses)
        reg.promote(copy_version(cluster.settings, "v0001", "v0002"))
        t0 = time.monotonic()
        r = httpx.post(cluster.replicas[0].url + "/admin/reload",
                       headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)  # fmt: skip
        assert r.status_code == 200 and r.json()["version"] == "v0002", r.text
        waited = _wait_until(lambda: {x.version() for x in cluster.replicas} == {"v0002"}, 10)
        took = time.monotonic() - t0
        # The pointer alone (a pipeline that only promotes): followed by polling.
        reg.promote(copy_version(cluster.settings, "v0001", "v0003"))
        polled = _wait_until(lambda: {x.version() for x in cluster.replicas} == {"v0003"}, 10)
        switched = len(statuses)
        assert _wait_until(lambda: len(statuses) >= switched + 10, 30) < 30
    print(
        f"reload fan-out: all replicas on v0002 {took:.2f} s after the reload call; "
        f"pointer-only promotion followed in {polled:.2f} s; {len(statuses)} requests"
    )
    assert waited < 5 and took < 5
    assert polled < 5
    assert switched > before and set(statuses) == {200}, sorted(set(statuses))
    body = httpx.get(cluster.lb.url + "/recommend", params={"user_id": 3}).json()
    assert body["model_version"] == "v0003"


def test_every_replica_shows_what_every_replica_serves(cluster: Cluster) -> None:
    """GET /replicas on any replica lists all of them with the version each one serves (their
    beats through Valkey, at most 5 s old), so the operations page sees past the balancer."""
    names = sorted(r.name for r in cluster.replicas)
    served = {r.name: r.version() for r in cluster.replicas}

    def roster(url: str) -> dict[str, str]:
        body = httpx.get(url + "/replicas", timeout=5).json()
        assert body["error"] is None
        return {m["replica"]: m["model_version"] for m in body["replicas"]}

    for rep in cluster.replicas:
        assert _wait_until(lambda rep=rep: roster(rep.url) == served, 12) < float("inf"), rep.name
        body = httpx.get(rep.url + "/replicas", timeout=5).json()
        assert body["self"] == rep.name and sorted(served) == names
        assert all(not m["degraded"] and time.time() - m["ts"] < 15 for m in body["replicas"])


def test_an_event_through_the_balancer_reaches_every_replica(cluster: Cluster) -> None:
    user = 7
    top = httpx.get(cluster.lb.url + "/recommend", params={"user_id": user, "k": 10}).json()
    item = top["items"][0]["item_id"]
    event = {"event_id": "cl-click-1", "user_id": user, "item_id": item, "type": "click",
             "ts": int(time.time())}  # fmt: skip
    r = httpx.post(cluster.lb.url + "/events", json=event, timeout=10)
    assert r.status_code == 200 and r.json()["new"] == 1, r.text
    t_ack = time.monotonic()
    worst = 0.0
    for rep in cluster.replicas:

        def gone(rep=rep) -> bool:
            body = httpx.get(rep.url + "/recommend", params={"user_id": user, "k": 10}).json()
            return item not in [i["item_id"] for i in body["items"]]

        assert _wait_until(gone, 5) < float("inf"), rep.name
        worst = max(worst, time.monotonic() - t_ack)
    print(f"event-to-effect, worst of 3 replicas (checked in turn): {worst * 1000:.0f} ms")
    assert worst < 2.0


def test_one_event_posted_to_two_replicas_counts_once(cluster: Cluster) -> None:
    event = {"event_id": "cl-dup-1", "user_id": 9, "item_id": 3, "type": "view",
             "ts": int(time.time())}  # fmt: skip
    a = httpx.post(cluster.replicas[0].url + "/events", json=event, timeout=10).json()
    b = httpx.post(cluster.replicas[1].url + "/events", json=event, timeout=10).json()
    assert (a["new"], b["new"]) == (1, 0) and b["duplicates"] == 1
    # each replica wrote its own log (never one file appended by two processes)
    events_dir = cluster.settings.events_dir
    for name in ("r0", "r1"):
        ids = [json.loads(x)["event_id"] for x in (events_dir / f"events.{name}.jsonl").open()]
        assert "cl-dup-1" in ids
    assert not (events_dir / "events.jsonl").exists()


def test_a_frozen_store_leaves_every_replica_ready_and_degraded(cluster: Cluster) -> None:
    with load(cluster.lb.url, lambda i: f"/recommend?user_id={1 + i % 20}&k=5") as statuses:
        cluster.valkey.signal(signal.SIGSTOP)
        try:
            time.sleep(1.0)
            for rep in cluster.replicas:
                ready = httpx.get(rep.url + "/readyz", timeout=5)
                assert ready.status_code == 200, ready.text
                assert ready.json()["degraded"] is True
                rec = httpx.get(rep.url + "/recommend", params={"user_id": 4}, timeout=5)
                assert rec.status_code == 200 and rec.json()["degraded"] is True
            time.sleep(4.0)
        finally:
            cluster.valkey.signal(signal.SIGCONT)
        for rep in cluster.replicas:

            def healthy(rep=rep) -> bool:
                body = httpx.get(rep.url + "/recommend", params={"user_id": 4}, timeout=5).json()
                return body["degraded"] is False

            assert _wait_until(healthy, 5) < float("inf"), rep.name
    assert set(statuses) == {200}, sorted(set(statuses))


def test_sigkill_of_a_replica_loses_no_acknowledged_event(cluster: Cluster) -> None:
    acked: list[str] = []
    stop = threading.Event()

    def post() -> None:
        i = 0
        with httpx.Client(base_url=cluster.lb.url, timeout=10,
                          limits=httpx.Limits(max_keepalive_connections=0)) as c:  # fmt: skip
            while not stop.is_set():
                ev = {"event_id": f"cl-kill-{i}", "user_id": 1 + i % 20, "item_id": 1 + i % 30,
                      "type": "view", "ts": int(time.time())}  # fmt: skip
                try:
                    r = c.post("/events", json=ev)
                    if r.status_code in (200, 202):
                        acked.append(ev["event_id"])
                except httpx.HTTPError:
                    pass  # not acknowledged: the client would retry
                i += 1

    worker = threading.Thread(target=post, daemon=True)
    worker.start()
    time.sleep(1.5)
    cluster.replicas[2].kill()
    time.sleep(1.5)
    stop.set()
    worker.join(15)
    logged: set[str] = set()
    for path in cluster.settings.events_dir.glob("events.*.jsonl"):
        logged |= {json.loads(x)["event_id"] for x in path.open() if x.strip()}
    print(f"SIGKILL under load: {len(acked)} acknowledged events, all logged")
    assert len(acked) > 20
    assert set(acked) <= logged, sorted(set(acked) - logged)[:5]
