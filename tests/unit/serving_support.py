"""Serving test support: one tiny trained registry version per session, fresh homes, a live server.

Training takes seconds, so it runs once per test session (cached here) and every test copies the
small registry into its own home: reloads, event logs and promotions never leak between tests.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from strata.config import ServeConfig, Settings

from .tiny_world import fast_settings, tiny_dataset

DATASET = "tiny"
TOKEN = "s3cret-token"
_CACHE: dict[str, Any] = {}


def trained_registry() -> Path:
    """Registry folder holding a trained, promoted `tiny` v0001 (trained once per session)."""
    if "registry" not in _CACHE:
        from strata.training.data import Tables
        from strata.training.train import train

        home = Path(tempfile.mkdtemp(prefix="strata-serving-"))
        ds = tiny_dataset()
        tables = Tables(ds.users, ds.items, ds.interactions, None)
        ts = np.sort(ds.interactions["ts"].to_numpy())
        until = int(ts[int(len(ts) * 0.6)])
        train(fast_settings(home), DATASET, until=until, tables=tables)
        _CACHE["registry"] = home / "registry"
        _CACHE["dataset"] = ds
    registry: Path = _CACHE["registry"]
    return registry


def tiny_world() -> Any:
    """The `RecDataset` the registry was trained on."""
    trained_registry()
    return _CACHE["dataset"]


def serving_settings(home: Path, **serve: Any) -> Settings:
    """Settings over a private copy of the trained registry in `home`."""
    if not (home / "registry").exists():
        shutil.copytree(trained_registry(), home / "registry")
    base = fast_settings(home)
    cfg = {"dataset": DATASET, "candidates": 50, "admin_token": TOKEN, **serve}
    return base.model_copy(update={"serve": ServeConfig(**cfg)})


def copy_version(settings: Settings, src: str = "v0001", dst: str = "v0002") -> str:
    """A second committed version (same models, new name) so a reload has something to swap to."""
    import json

    reg = settings.registry_dir / DATASET
    shutil.copytree(reg / src, reg / dst)
    m = json.loads((reg / dst / "manifest.json").read_text())
    m["version"] = dst
    (reg / dst / "manifest.json").write_text(json.dumps(m))
    return dst


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """uvicorn serving `app` on a free loopback port in a background thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("server thread died during startup")
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
