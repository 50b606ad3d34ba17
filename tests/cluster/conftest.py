"""A real cluster on loopback: one private Valkey, `strata serve` replicas as separate processes
sharing one STRATA_HOME (the shared volume) and the online store, and a round-robin TCP balancer
in front (`bench.balancer.Balancer`, shared with `bench/cluster_load.py`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from bench.balancer import Balancer

from tests.integration.conftest import PrivateValkey
from tests.unit.serving_support import DATASET, TOKEN, free_port, serving_settings

START_TIMEOUT_S = 180.0


class Replica:
    """One `strata serve` (or, `ctr=True`, `strata ctr serve`) process; `env` adds settings."""

    def __init__(
        self,
        name: str,
        home: Path,
        valkey_url: str,
        log_dir: Path,
        ctr: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.ctr = ctr
        self.extra_env = env or {}
        self.home = home
        self.valkey_url = valkey_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "STRATA_HOME": str(self.home),
            "STRATA_SERVE__ADMIN_TOKEN": TOKEN,
            "STRATA_SERVE__CANDIDATES": "50",
            "STRATA_SERVE__FOLLOW_POLL_S": "1.0",
            "STRATA_EVENTS__REPLICA": self.name,
            **self.extra_env,
        }
        if self.ctr:
            env |= {"STRATA_ONLINE__TYPE": "valkey", "STRATA_ONLINE__URL": self.valkey_url}
            cmd = [sys.executable, "-m", "strata.cli", "ctr", "serve", "--port", str(self.port)]
        else:
            cmd = [sys.executable, "-m", "strata.cli", "serve", "--dataset", DATASET,
                   "--port", str(self.port), "--online", self.valkey_url]  # fmt: skip
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                probe = "/ctr/status" if self.ctr else "/readyz"
                if httpx.get(self.url + probe, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready: {self.log.read_text()[-2000:]}")

    def version(self) -> str:
        if self.ctr:
            return str(httpx.get(self.url + "/ctr/status", timeout=5).json()["version"])
        return str(httpx.get(self.url + "/readyz", timeout=5).json()["model_version"])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


class Cluster:
    def __init__(self, home: Path, valkey: PrivateValkey, replicas: list[Replica], lb: Balancer):
        self.home, self.valkey, self.replicas, self.lb = home, valkey, replicas, lb

    @property
    def settings(self):
        return serving_settings(self.home)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """3 serving replicas behind the balancer, on one shared home and one Valkey."""
    with running_cluster(tmp_path_factory.mktemp("cluster"), 3, "r") as c:
        yield c


@contextmanager
def running_cluster(root: Path, n: int, prefix: str) -> Iterator[Cluster]:
    """`n` serving replicas of the trained `tiny` registry on `root/shared`, one private Valkey
    and a balancer; everything stopped on exit."""
    home = root / "shared"
    serving_settings(home)  # the trained `tiny` registry copied onto the shared volume
    (root / "vk").mkdir()
    valkey = PrivateValkey(root / "vk")
    valkey.start()
    replicas = [Replica(f"{prefix}{i}", home, valkey.url, root) for i in range(n)]
    try:
        for r in replicas:
            r.start()
        for r in replicas:
            r.wait_ready()
        with Balancer([r.port for r in replicas]) as lb:
            yield Cluster(home, valkey, replicas, lb)
    finally:
        for r in replicas:
            r.stop()
        if valkey.proc is not None:
            valkey.signal(signal.SIGCONT)
        valkey.stop()
