"""What the serving benchmarks share (`bench/serve_load.py`, `bench/cluster_load.py`): a quick
ML-100K version, a private valkey-server, `strata serve` as a subprocess, and the asyncio load
generator (raw HTTP/1.1 keep-alive; open loop timed from each request's scheduled send, so
queueing counts; closed loop for maximum throughput)."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from strata.config import Settings, TrainingConfig  # noqa: E402

T = TypeVar("T")
N_CANDIDATES = 300


# --- preparing a registry version ----------------------------------------------------------------


def prepare_ml100k(home: Path) -> tuple[Settings, str]:
    """Train a quick ML-100K version (reused when the home already has one)."""
    from strata.registry import Registry

    ds_name = "movielens-100k"
    s = Settings(home=home, training=TrainingConfig(epochs=2, ranker_epochs=1))
    if Registry(s.registry_dir, ds_name).serving() is None:
        from strata.datasets import load
        from strata.training.data import Tables
        from strata.training.evaluate import quantile_ts
        from strata.training.train import train

        ds = load(ds_name, path=ROOT.parent / "shared" / "data" / "ml-100k", settings=s)
        t0 = time.perf_counter()
        train(s, ds_name, until=quantile_ts(ds, 0.8),
              tables=Tables(ds.users, ds.items, ds.interactions, None))  # fmt: skip
        print(f"[ml100k] trained in {time.perf_counter() - t0:.0f}s", flush=True)
    return s, ds_name


# --- valkey + server ---------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_valkey(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("valkey-server") or shutil.which("redis-server")
    if binary is None:
        raise SystemExit("valkey-server not found")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)
    return proc, f"redis://127.0.0.1:{port}/0"


def materialize_users(s: Settings, ds_name: str, url: str) -> int:
    """The version's user snapshot into Valkey (what `features materialize` would write)."""
    import pandas as pd

    from strata.artifacts import USER_FEATURES_FILE
    from strata.config import ValkeyOnlineConfig
    from strata.features.materialize import materialize_frame
    from strata.features.online.valkey import ValkeyOnlineStore
    from strata.registry import Registry

    path = Registry(s.registry_dir, ds_name).path()
    snap = pd.read_parquet(path / USER_FEATURES_FILE)
    store = ValkeyOnlineStore(ValkeyOnlineConfig(url=url, timeout_ms=10_000))
    materialize_frame(store, "user", snap, "user_id")
    store.close()
    return len(snap)


def start_server(
    s: Settings, ds_name: str, url: str, port: int, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "STRATA_HOME": str(s.home), "STRATA_SERVE__CANDIDATES": str(N_CANDIDATES)}
    env |= extra_env or {}
    if s.training.epochs != TrainingConfig().epochs:
        env["STRATA_TRAINING__EPOCHS"] = str(s.training.epochs)
    proc = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "strata"), "serve", "--dataset", ds_name, "--port",
         str(port), "--online", url.replace("redis://", "valkey://")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    raise SystemExit("server did not become ready")


# --- load generation -----------------------------------------------------------------------------


class Conn:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer

    async def get(self, path: str) -> tuple[int, bytes]:
        self.w.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        status = int((await self.r.readline()).split()[1])
        length = 0
        while True:
            line = await self.r.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return status, await self.r.readexactly(length)


async def _pool(port: int, n: int) -> asyncio.Queue[Conn]:
    q: asyncio.Queue[Conn] = asyncio.Queue()
    for _ in range(n):
        q.put_nowait(Conn(*await asyncio.open_connection("127.0.0.1", port)))
    return q


def _paths(users: np.ndarray, n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    picks = rng.choice(users, n)
    return [f"/recommend?user_id={int(u)}&k=10&device=mobile" for u in picks]


async def _one(pool: asyncio.Queue[Conn], path: str, t_sched: float, out: list[Any]) -> None:
    conn = await pool.get()
    try:
        status, body = await conn.get(path)
    finally:
        pool.put_nowait(conn)
    t = time.perf_counter()
    out.append((t - t_sched, status, body))


async def open_loop(port: int, users: np.ndarray, rate: float, duration: float) -> list[Any]:
    pool = await _pool(port, 64)
    n = int(rate * duration)
    paths = _paths(users, n, seed=int(rate))
    out: list[Any] = []
    tasks = []
    start = time.perf_counter() + 0.05
    for i, path in enumerate(paths):
        t_sched = start + i / rate
        delay = t_sched - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_one(pool, path, t_sched, out)))
    await asyncio.gather(*tasks)
    return out


async def closed_loop(
    port: int, users: np.ndarray, conc: int, duration: float
) -> tuple[list, float]:
    pool = await _pool(port, conc)
    out: list[Any] = []
    paths = _paths(users, 200_000, seed=conc)
    stop = time.perf_counter() + duration
    counter = iter(range(len(paths)))

    async def worker() -> None:
        while time.perf_counter() < stop:
            await _one(pool, paths[next(counter)], time.perf_counter(), out)

    t0 = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(conc)])
    return out, time.perf_counter() - t0


def summarize(out: list[Any], elapsed: float | None = None) -> dict[str, Any]:
    lat = np.array([o[0] for o in out]) * 1e3
    ok = sum(1 for o in out if o[1] == 200)
    res = {
        "requests": len(out),
        "ok": ok,
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)),
        "p999_ms": float(np.percentile(lat, 99.9)),
        "max_ms": float(lat.max()),
    }
    if elapsed:
        res["rps"] = len(out) / elapsed
    return res


def without_client_gc(step: Coroutine[Any, Any, T]) -> T:
    """Run one load step with this process's collector off (collected before and after): the
    load generator keeps every response of the step, and a full collection of its own heap once
    stalled it for ~80 ms, which read as a server stall (latency counts from the scheduled send)."""
    gc.collect()
    gc.disable()
    try:
        return asyncio.run(step)
    finally:
        gc.enable()
        gc.collect()
