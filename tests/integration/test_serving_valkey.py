"""Serving against a real Valkey: online features, events through the stream, and outages.

The outage test owns a private valkey-server (the shared session server must not be stopped), on a
fixed port so it can be restarted in place. Under steady load it freezes the server (SIGSTOP: a
hung store, every call must time out quickly), then kills it and starts it again, and checks that
every request is answered 200, flagged `degraded` while the store is away, and that the service
is back to normal within 2 s of the store's return.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from strata.config import Settings, ValkeyOnlineConfig
from strata.features.materialize import materialize_frame
from strata.features.online.valkey import ValkeyOnlineStore
from strata.serving.app import create_app
from tests.unit.serving_support import DATASET, LiveServer, free_port, serving_settings

from .conftest import _wait_ready

pytestmark = pytest.mark.integration
RECOVERY_S = 2.0


def _settings(home: Path, url: str) -> Settings:
    s = serving_settings(home)
    online = ValkeyOnlineConfig(url=url, key_prefix=f"t{uuid.uuid4().hex[:10]}", timeout_ms=50)
    return s.model_copy(update={"online": online})


def _materialize_users(s: Settings) -> None:
    assert isinstance(s.online, ValkeyOnlineConfig)
    store = ValkeyOnlineStore(s.online.model_copy(update={"timeout_ms": 5000}))
    snap = pd.read_parquet(s.registry_dir / DATASET / "v0001" / "user_features.parquet")
    materialize_frame(store, "user", snap, "user_id")
    store.close()


def test_online_features_and_events_through_valkey(valkey_url: str, tmp_path: Path) -> None:
    s = _settings(tmp_path, valkey_url)
    _materialize_users(s)
    with LiveServer(create_app(s)) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        body = c.get("/recommend", params={"user_id": 4, "k": 10}).json()
        assert body["user_features"] == "online" and body["degraded"] is False
        assert body["feature_versions"]["user"] is not None
        top = body["items"][0]["item_id"]
        ev = {"event_id": "vk-1", "user_id": 4, "item_id": top, "type": "click", "ts": 10**9}
        assert c.post("/events", json=ev).json()["new"] == 1
        after = c.get("/recommend", params={"user_id": 4, "k": 10}).json()
        assert top not in [i["item_id"] for i in after["items"]]
        assert c.get("/readyz").json()["ready"] is True


class _Valkey:
    """A private valkey-server on a fixed port that can be frozen, killed and restarted."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("valkey-server") or shutil.which("redis-server")
        if binary is None:
            pytest.skip("no valkey-server/redis-server binary")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_ready(self.url)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def private_valkey(tmp_path: Path) -> Iterator[_Valkey]:
    v = _Valkey(tmp_path)
    v.start()
    try:
        yield v
    finally:
        if v.proc is not None:
            v.signal(signal.SIGCONT)
        v.stop()


def test_store_outage_degrades_and_recovers(private_valkey: _Valkey, tmp_path: Path) -> None:
    s = _settings(tmp_path, private_valkey.url)
    _materialize_users(s)
    log: list[tuple[float, int, bool, str]] = []  # (time, status, degraded, user_features)
    stop = threading.Event()

    def load(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            while not stop.is_set():
                r = c.get("/recommend", params={"user_id": 4, "k": 10})
                ok = r.status_code == 200
                b = r.json() if ok else {}
                log.append((time.monotonic(), r.status_code, bool(b.get("degraded")),
                            str(b.get("user_features"))))  # fmt: skip
                time.sleep(0.005)

    def recovered_after(t0: float) -> float:
        """Seconds from t0 to the first non-degraded answer after it (waits up to 5 s)."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            done = [t for t, _, d, _ in list(log) if t > t0 and not d]
            if done:
                return done[0] - t0
            time.sleep(0.02)
        return float("inf")

    with LiveServer(create_app(s)) as live:
        worker = threading.Thread(target=load, args=(live.url,))
        worker.start()
        try:
            time.sleep(0.5)
            assert log and not any(d for _, _, d, _ in log)
            assert log[-1][3] == "online"

            # 1. hung store: frozen process, connections accepted but never answered
            t_freeze = time.monotonic()
            private_valkey.signal(signal.SIGSTOP)
            time.sleep(1.0)
            private_valkey.signal(signal.SIGCONT)
            t_back = time.monotonic()
            hung = [e for e in log if t_freeze + 0.2 < e[0] < t_back]
            assert hung and all(d for _, _, d, _ in hung)
            assert all(src == "snapshot" for *_, src in hung)  # cached features of the version
            assert recovered_after(t_back) <= RECOVERY_S

            # 2. store process gone (connection refused), then restarted empty on the same port
            private_valkey.stop()
            t_down = time.monotonic()
            time.sleep(1.0)
            down = [e for e in log if t_down + 0.2 < e[0]]
            assert down and all(d for _, _, d, _ in down)
            private_valkey.start()
            t_up = time.monotonic()
            assert recovered_after(t_up) <= RECOVERY_S
        finally:
            stop.set()
            worker.join()
        with httpx.Client(base_url=live.url, timeout=30) as c:
            assert c.get("/readyz").json()["ready"] is True
            assert "strata_recommend_degraded_total" in c.get("/metrics").text
    assert {status for _, status, _, _ in log} == {200}
    # While the store was away requests kept flowing (not one hung request per timeout chain).
    assert len([e for e in log if t_freeze < e[0] < t_back]) >= 10
