"""A Valkey that requires a password (the manifests' Secret, an ElastiCache auth token): the
online store and the replicas' signals authenticate with `online.password`, kept out of the URL;
without it every call is a clear StoreUnavailableError, never a crash."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.config import ValkeyOnlineConfig
from strata.errors import StoreUnavailableError
from strata.features.online.signals import ValkeySignals
from strata.features.online.valkey import ValkeyOnlineStore

from .conftest import _free_port

pytestmark = pytest.mark.integration
PASSWORD = "s3cret/with@odd:chars"  # needs no URL encoding: it never goes into the URL


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("valkey-server") or shutil.which("redis-server")
    if binary is None:
        pytest.skip("no valkey-server/redis-server binary")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path), "--requirepass", PASSWORD],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        store = ValkeyOnlineStore(ValkeyOnlineConfig(url=url, password=PASSWORD, timeout_ms=500))
        for _ in range(100):
            try:
                store.health()
                break
            except StoreUnavailableError:
                threading.Event().wait(0.05)
        store.close()
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_store_and_the_signals_authenticate(guarded: str) -> None:
    cfg = ValkeyOnlineConfig(url=guarded, password=PASSWORD, timeout_ms=500)
    store = ValkeyOnlineStore(cfg)
    store.health()
    assert store.client.set("k", "v") and store.client.get("k") == b"v"
    store.close()

    signals = ValkeySignals(cfg)
    got: list[tuple[str, str]] = []
    arrived = threading.Event()
    stop = threading.Event()

    def on_message(name: str, message: str) -> None:
        got.append((name, message))
        arrived.set()

    signals.listen(["serving:x"], on_message, stop)
    for _ in range(100):  # the listener subscribes on its own thread
        if signals.publish("serving:x", "v0002") > 0:
            break
        threading.Event().wait(0.05)
    assert arrived.wait(5) and got == [("serving:x", "v0002")]
    stop.set()
    signals.close()


def test_without_the_password_calls_fail_cleanly(guarded: str) -> None:
    store = ValkeyOnlineStore(ValkeyOnlineConfig(url=guarded, timeout_ms=500))
    with pytest.raises(StoreUnavailableError, match="online store"):
        store.health()
    store.close()
    with pytest.raises(StoreUnavailableError, match="signal"):
        ValkeySignals(ValkeyOnlineConfig(url=guarded, timeout_ms=500)).publish("serving:x", "v")
