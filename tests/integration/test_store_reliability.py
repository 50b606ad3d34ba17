"""Reliability of the online layer against a real Valkey: restarts, lost consumer groups, hung
store calls on the serving path, and idempotent re-delivery and landing.

A "hung" store is either a frozen server (SIGSTOP, see test_serving_valkey.py) or, where one
command in the middle of a call must hang, a real TCP path that stops forwarding once a chosen
command goes through it (`FreezingProxy`): the server behind it is a real valkey-server.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from strata.config import Settings, ValkeyOnlineConfig
from strata.errors import StoreUnavailableError
from strata.features.events import EventIngestor
from strata.features.online.valkey import ValkeyOnlineStore

from .conftest import PrivateValkey

pytestmark = pytest.mark.integration


class FreezingProxy:
    """Loopback TCP proxy to a real server that stops forwarding in both directions (a hung
    network path) from the moment a client sends a command containing `freeze_on`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.freeze_on: bytes | None = None
        self.frozen = threading.Event()
        self.closed = threading.Event()
        self.closed_by: list[OSError] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if upstream and self.freeze_on is not None and self.freeze_on in data:
                    self.frozen.set()
                while self.frozen.is_set() and not self.closed.is_set():
                    time.sleep(0.005)  # hold the bytes: the peer sees a silent connection
                dst.sendall(data)
        except OSError as exc:  # one side closed: record it, close both ends below
            self.closed_by.append(exc)
        finally:
            src.close()
            dst.close()

    def thaw(self) -> None:
        """Forward again (held bytes go through) and stop watching for the trigger."""
        self.freeze_on = None
        self.frozen.clear()

    def close(self) -> None:
        """Stop accepting and release every held connection."""
        self.closed.set()
        self.listener.close()


@pytest.fixture
def proxy(valkey_url: str) -> Iterator[FreezingProxy]:
    port = int(valkey_url.rsplit(":", 1)[1].split("/")[0])
    p = FreezingProxy(port)
    yield p
    p.close()


def test_first_read_after_a_version_switch_is_bounded_by_the_serving_timeout(
    valkey_config: ValkeyOnlineConfig, proxy: FreezingProxy
) -> None:
    """The read that follows a switch loads the new version's metadata: with the store hanging
    at exactly that command it must fail within the serving timeout, not the bulk one."""
    admin = ValkeyOnlineStore(valkey_config)
    ids = np.arange(10, dtype=np.int64)
    admin.write("user", ids, {"a": ids.astype(np.float32)}, version="v1")
    admin.activate("user", "v1")
    via = valkey_config.model_copy(
        update={"url": f"redis://127.0.0.1:{proxy.port}/0", "timeout_ms": 250,
                "bulk_timeout_ms": 10_000}
    )  # fmt: skip
    serving = ValkeyOnlineStore(via)
    try:
        assert serving.read("user", ids[:3], ["a"]).version == "v1"
        admin.write("user", ids, {"a": ids.astype(np.float32) + 100}, version="v2")
        admin.activate("user", "v2")
        proxy.freeze_on = b"HGETALL"  # the metadata load of the new version hangs
        t0 = time.perf_counter()
        with pytest.raises(StoreUnavailableError):
            serving.read("user", ids[:3], ["a"])
        elapsed = time.perf_counter() - t0
        assert proxy.frozen.is_set()
        # Bounded by the serving timeout: far below the bulk client's 10 s.
        assert elapsed < 0.1 * via.bulk_timeout_ms / 1000
        proxy.thaw()
        rows = serving.read("user", ids[:3], ["a"])
        assert rows.version == "v2" and rows.values["a"].tolist() == [100.0, 101.0, 102.0]
    finally:
        serving.close()
        admin.close()


def ev(i: int, user: int = 1, item: int | None = None) -> dict:
    return {"event_id": f"r{i}", "user_id": user, "item_id": 700 + i if item is None else item,
            "type": "click", "ts": 1_700_000_000 + i}  # fmt: skip


def test_stream_and_group_are_recreated_after_a_restart(
    strata_home: Path, private_valkey: PrivateValkey
) -> None:
    cfg = ValkeyOnlineConfig(url=private_valkey.url, key_prefix="rs", timeout_ms=200)
    ing = EventIngestor(Settings(online=cfg), consumer="c1")
    assert ing.ingest([ev(1), ev(2)]).new == 2
    private_valkey.stop()
    private_valkey.start()  # empty: the stream and its consumer group are gone
    report = ing.ingest([ev(3)])  # NOGROUP must not escape: recreate and carry on
    assert (report.accepted, report.new) == (1, 1)
    logged = [r["event_id"] for r in ing.log.read()[0]]
    assert logged == ["r1", "r2", "r3"]
    assert ing.bloom.contains(1, np.array([703])).tolist() == [True]
    assert ing.activity.activity(np.array([1])).values["n_click"].tolist() == [1]
    store = ing.store
    assert isinstance(store, ValkeyOnlineStore)
    assert store.bulk.xpending("rs:events", "strata-ingest")["pending"] == 0


def test_redelivery_after_a_lost_group_stays_idempotent(
    strata_home: Path, valkey_config: ValkeyOnlineConfig
) -> None:
    """A group lost while the stream survives is recreated from the stream's start: old entries
    come again, are logged again, but counted once live and landed once offline."""
    from strata.datasets.synthetic import recsys_world
    from strata.features.event_files import land_events
    from strata.features.offline import OfflineStore

    world = recsys_world(n_users=20, n_items=30, n_events=200, seed=1)
    ds = world.to_dataset()
    settings = Settings(online=valkey_config)
    offline = OfflineStore(settings)
    offline.ingest("toy", ds.users, ds.items, [ds.interactions])
    before = len(offline.events("toy"))
    user, item = int(ds.users["user_id"].iloc[0]), int(ds.items["item_id"].iloc[0])
    ing = EventIngestor(settings, consumer="c1")
    assert ing.ingest([ev(i, user=user, item=item) for i in range(3)]).new == 3
    store = ing.store
    assert isinstance(store, ValkeyOnlineStore)
    key = f"{valkey_config.key_prefix}:events"
    assert store.bulk.xgroup_destroy(key, "strata-ingest") == 1
    report = ing.ingest([ev(3, user=user, item=item)])
    assert report.new == 1  # the re-delivered r0..r2 are not new
    logged = [r["event_id"] for r in ing.log.read()[0]]
    assert sorted(logged) == ["r0", "r0", "r1", "r1", "r2", "r2", "r3"]
    assert ing.activity.activity(np.array([user])).values["n_click"].tolist() == [4]
    assert land_events(settings, "toy") == 7  # handed over with the duplicates ...
    events = offline.events("toy")
    assert len(events) == before + 4  # ... which the offline store ignores
    assert store.bulk.xpending(key, "strata-ingest")["pending"] == 0


def test_a_malformed_stream_entry_does_not_block_ingest(
    strata_home: Path, valkey_config: ValkeyOnlineConfig
) -> None:
    ing = EventIngestor(Settings(online=valkey_config), consumer="c1")
    assert ing.ingest([ev(1)]).new == 1
    store = ing.store
    assert isinstance(store, ValkeyOnlineStore)
    key = f"{valkey_config.key_prefix}:events"
    store.bulk.xadd(key, {"e": b'{"event_id": "bad", "user_id": -3}'})  # a foreign producer
    report = ing.ingest([ev(2)])
    assert (report.accepted, report.new) == (1, 1)
    assert [r["event_id"] for r in ing.log.read()[0]] == ["r1", "r2"]
    assert store.bulk.xpending(key, "strata-ingest")["pending"] == 0
    assert ing.ingest([ev(3)]).new == 1  # and the next call is not stuck on it either
