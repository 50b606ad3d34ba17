"""Fault-injection support: small real disks (tmpfs), filling them, and the real CLI as a process.

A full disk is a real tmpfs of a few hundred KiB mounted over the folder under test (root only:
CI runs as root; elsewhere the tests skip, saying why), never a patched `open`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from strata.registry import Registry
from tests.ci import in_ci
from tests.unit.serving_support import DATASET, tiny_world, trained_registry

#: Training as small as `tests.unit.tiny_world.fast_settings`, one epoch: for CLI processes.
FAST_TRAINING = {
    "STRATA_TRAINING__EPOCHS": "1",
    "STRATA_TRAINING__BATCH_SIZE": "128",
    "STRATA_TRAINING__RANDOM_NEGATIVES": "32",
    "STRATA_TRAINING__RANKER_EPOCHS": "1",
    "STRATA_TRAINING__RANKER_BATCH_SIZE": "256",
    "STRATA_TRAINING__RANKER_MAX_POSITIVES": "1500",
    "STRATA_TRAINING__CANDIDATES": "30",
    "STRATA_TRAINING__FINETUNE_EPOCHS": "1",
    "STRATA_TRAINING__RANKER_POPULARITY_PRIOR": "0.0",
}


def _mount(path: Path, size_kib: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "tmpfs", str(path)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        why = f"cannot mount a tmpfs ({res.stderr.strip() or res.returncode})"
        if in_ci():
            pytest.fail(f"{why}: CI runs as root and must run the disk-full tests")
        pytest.skip(why)


class Disks:
    """Small tmpfs disks mounted over folders of one test; `close` unmounts them all."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            if in_ci():
                pytest.fail("the disk-full tests need root to mount a tmpfs, and CI runs as root")
            pytest.skip("not root: a small tmpfs (mount -t tmpfs) cannot be mounted")
        self.mounted: list[Path] = []

    def mount(self, path: Path, size_kib: int) -> Path:
        """A fresh tmpfs of `size_kib` KiB over `path` (created if needed)."""
        _mount(path, size_kib)
        self.mounted.append(path)
        return path

    def close(self) -> None:
        for path in reversed(self.mounted):
            res = subprocess.run(["umount", str(path)], capture_output=True, text=True)
            if res.returncode != 0:  # something still holds it open: detach it lazily
                subprocess.run(["umount", "-l", str(path)], check=True)
        self.mounted.clear()


def remount(path: Path, size_kib: int) -> None:
    """Grow (or shrink) a mounted tmpfs in place; its files stay."""
    subprocess.run(["mount", "-o", f"remount,size={size_kib}k", str(path)], check=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(folder: Path, leave: int = 0) -> Path:
    """A filler file that takes all but about `leave` bytes of the disk holding `folder`."""
    filler = folder / "filler.bin"
    size = free_bytes(folder) - leave
    assert size > 0, f"{folder} has only {free_bytes(folder)} bytes free"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)
    return filler


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a `strata` process on `home` with tiny training settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
    return {**env, **FAST_TRAINING, "STRATA_HOME": str(home), **extra}


def cli_args(*args: str) -> list[str]:
    """argv of the real command line (`python -m strata.cli ...`)."""
    return [sys.executable, "-m", "strata.cli", *args]


def run_cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run one `strata` command to its end."""
    return subprocess.run(cli_args(*args), env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a folder's contents into `dst` (which may be a mount point that already exists)."""
    shutil.copytree(src, dst, dirs_exist_ok=True)


def offline_event_counts(offline: Path, dataset: str) -> dict[str, int]:
    """event_id -> number of rows in the offline store's event partitions (DuckDB)."""
    import duckdb

    files = sorted((offline / dataset / "events").glob("date=*/part-*.parquet"))
    if not files:
        return {}
    con = duckdb.connect()
    try:
        rows = con.execute(
            "SELECT event_id, count(*) FROM read_parquet(?) GROUP BY event_id",
            [[str(f) for f in files]],
        ).fetchall()
    finally:
        con.close()
    return {str(e): int(n) for e, n in rows}


#: A named moment to SIGKILL a command at: `arm()` is called as the command starts and returns
#: the trigger (polled until it holds), so a trigger can compare with the state at the start.
KillPoint = tuple[str, Callable[[], Callable[[], bool]]]


def kill_at(env: dict[str, str], args: list[str], points: Sequence[KillPoint], log: Path, *,
            state: Callable[[], Callable[[], None]] | None = None,
            done: Callable[[], bool] | None = None, timeout_s: float = 120) -> str:  # fmt: skip
    """Run `strata args` and SIGKILL it at the first of `points` whose kill lands: the points
    go from the one the test means to earlier ones. A try comes too late when the command
    exited before the trigger held, or when `done()` says its work was already complete as the
    kill landed (it was only exiting); the state is then put back and the next point is tried.
    `state()` is called before each try and returns what restores the state of that moment.
    Returns the name of the point the kill landed at; fails the test when no kill landed."""
    late = []
    for name, arm in points:
        restore = state() if state is not None else None
        if _kill_once(env, args, arm, log, done, timeout_s):
            return name
        late.append(name)
        if restore is not None:
            restore()
    pytest.fail(f"strata {' '.join(args)} came to its end before every kill: {late}")


def _kill_once(env: dict[str, str], args: list[str], arm: Callable[[], Callable[[], bool]],
               log: Path, done: Callable[[], bool] | None, timeout_s: float) -> bool:  # fmt: skip
    """One try of `kill_at`: True when the SIGKILL landed before the command's end."""
    with log.open("wb") as err:
        proc = subprocess.Popen(cli_args(*args), env=env, stdout=subprocess.DEVNULL, stderr=err)
        trigger = arm()
        deadline = time.monotonic() + timeout_s
        try:
            while proc.poll() is None:
                if trigger():
                    proc.send_signal(signal.SIGKILL)
                    break
                assert time.monotonic() < deadline, f"{args} neither ended nor reached its point"
                time.sleep(0.001)
            rc = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if rc == -signal.SIGKILL:
        return done is None or not done()
    assert rc == 0, log.read_text()[-3000:]
    return False


def saved(scratch: Path, *folders: Path) -> Callable[[], Callable[[], None]]:
    """A `state` for `kill_at`: copies `folders` under `scratch` before a try; the restore puts
    them back exactly as they were."""

    def save() -> Callable[[], None]:
        scratch.mkdir(parents=True, exist_ok=True)
        keep = Path(tempfile.mkdtemp(prefix="try-", dir=scratch))
        for i, folder in enumerate(folders):
            shutil.copytree(folder, keep / str(i), symlinks=True)

        def restore() -> None:
            for i, folder in enumerate(folders):
                shutil.rmtree(folder)
                shutil.copytree(keep / str(i), folder, symlinks=True)

        return restore

    return save


def after(seconds: float) -> Callable[[], bool]:
    """A trigger that holds `seconds` after it was made."""
    t0 = time.monotonic()
    return lambda: time.monotonic() - t0 >= seconds


def tiny_home(tmp_path: Path) -> tuple[Path, dict[str, str], Registry]:
    """A home with the tiny world's offline store and its trained, serving v0001; its CLI env."""
    home = tmp_path / "home"
    copy_tree(trained_registry().parent / "offline", home / "offline")
    copy_tree(trained_registry(), home / "registry")
    return home, cli_env(home), Registry(home / "registry", DATASET)


def cut() -> int:
    """The time the tiny registry's v0001 was trained up to (60% of the events)."""
    ts = np.sort(tiny_world().interactions["ts"].to_numpy())
    return int(ts[int(len(ts) * 0.6)])


def wait_until(check: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


class ClientLoad:
    """Two clients sending one request in a loop while a fault is injected; every answer is kept
    as (status, body), the body empty unless the status is 200."""

    def __init__(self, url: str, send: Callable[[httpx.Client], httpx.Response]) -> None:
        self.url, self.send = url, send
        self.log: list[tuple[int, dict[str, Any]]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(2)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while not self.stop.is_set():
                r = self.send(c)
                self.log.append((r.status_code, r.json() if r.status_code == 200 else {}))
                time.sleep(0.002)

    @property
    def statuses(self) -> list[int]:
        return [status for status, _ in self.log]

    @property
    def versions(self) -> list[str]:
        """The model version of each 200 answer, in order."""
        return [b.get("model_version") or b.get("version") for s, b in self.log if s == 200]

    def since(self, n: int) -> list[dict[str, Any]]:
        """Bodies of the answers after the first `n`."""
        return [b for _, b in self.log[n:]]

    def more(self, count: int) -> None:
        """Wait until `count` more answers came in."""
        n = len(self.log)
        assert wait_until(lambda: len(self.log) >= n + count)

    def latest(self) -> dict[str, Any]:
        """The body of an answer to a request sent from now on."""
        self.more(3)
        return self.log[-1][1]

    @contextmanager
    def running(self) -> Iterator[ClientLoad]:
        for t in self.threads:
            t.start()
        try:
            assert wait_until(lambda: len(self.log) >= 5)
            yield self
        finally:
            self.stop.set()
            for t in self.threads:
                t.join()
