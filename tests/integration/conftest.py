"""A real Valkey for integration tests: `$STRATA_TEST_VALKEY_URL` (CI), else one started here.

In CI (`CI=true`) a missing URL is a failure, not a skip: the online layer must be tested against
a real server. Locally a session fixture starts `valkey-server` (or `redis-server`) on a free port
without persistence when the binary exists, and skips otherwise.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.config import ValkeyOnlineConfig
from strata.errors import StoreUnavailableError
from strata.features.online.valkey import ValkeyOnlineStore
from tests.ci import in_ci

URL_ENV = "STRATA_TEST_VALKEY_URL"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(
    url: str, timeout_s: float = 10.0, config: ValkeyOnlineConfig | None = None
) -> None:
    """Wait until the server at `url` answers (through `config` when given: TLS, password)."""
    store = ValkeyOnlineStore(config or ValkeyOnlineConfig(url=url, timeout_ms=500))
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                store.health()
                return
            except StoreUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        store.close()


@pytest.fixture(scope="session")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a running Valkey/Redis (never persisted)."""
    url = os.environ.get(URL_ENV)
    if url:
        _wait_ready(url)
        yield url
        return
    if in_ci():
        pytest.fail(f"{URL_ENV} is not set: CI must provide a Valkey server (.ci/run starts one)")
    binary = shutil.which("valkey-server") or shutil.which("redis-server")
    if binary is None:
        pytest.skip("no valkey-server/redis-server binary and no $STRATA_TEST_VALKEY_URL")
    port = _free_port()
    workdir: Path = tmp_path_factory.mktemp("valkey")
    proc = subprocess.Popen(
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        _wait_ready(url)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def valkey_config(valkey_url: str) -> Iterator[ValkeyOnlineConfig]:
    """A config with a fresh key prefix, so tests never see each other's keys; cleaned after."""
    cfg = ValkeyOnlineConfig(
        url=valkey_url, key_prefix=f"t{uuid.uuid4().hex[:10]}", timeout_ms=5000
    )
    yield cfg
    store = ValkeyOnlineStore(cfg)
    keys = list(store.bulk.scan_iter(match=f"{cfg.key_prefix}:*", count=1000))
    if keys:
        store.bulk.unlink(*keys)
    store.close()


class PrivateValkey:
    """A valkey-server of one test on a fixed port: it can be frozen (SIGSTOP), killed and
    restarted empty in place; the shared session server must never be disturbed. With `tls`
    (CA, server certificate, key: PEM files) it listens for TLS only (`rediss://`); with
    `password` it requires AUTH."""

    def __init__(
        self,
        workdir: Path,
        *,
        tls: tuple[Path, Path, Path] | None = None,
        password: str | None = None,
    ) -> None:
        binary = shutil.which("valkey-server") or shutil.which("redis-server")
        if binary is None:
            pytest.skip("no valkey-server/redis-server binary")
        self.binary = binary
        self.port = _free_port()
        self.tls, self.password = tls, password
        self.url = f"{'rediss' if tls else 'redis'}://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self, **changes: object) -> ValkeyOnlineConfig:
        """A client config that reaches this server (its CA and password), with `changes`."""
        base: dict[str, object] = {"url": self.url, "timeout_ms": 500}
        if self.tls is not None:
            base["tls_ca_file"] = self.tls[0]
        if self.password is not None:
            base["password"] = self.password
        return ValkeyOnlineConfig.model_validate({**base, **changes})

    def start(self) -> None:
        """Start (or restart, empty) on the same port and wait until it answers."""
        port = ["--port", str(self.port)]
        if self.tls is not None:
            ca, cert, key = self.tls
            port = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert),
                    "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
                    "--tls-auth-clients", "no"]  # fmt: skip
        auth = ["--requirepass", self.password] if self.password is not None else []
        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", *port, *auth, "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_ready(self.url, config=self.config())

    def signal(self, sig: int) -> None:
        """Send `sig` (SIGSTOP freezes: connections are accepted, never answered)."""
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        """Kill the server (its data is gone: no persistence)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def private_valkey(tmp_path: Path) -> Iterator[PrivateValkey]:
    """A started private server, resumed and killed after the test."""
    import signal

    v = PrivateValkey(tmp_path)
    v.start()
    try:
        yield v
    finally:
        if v.proc is not None:
            v.signal(signal.SIGCONT)
        v.stop()
