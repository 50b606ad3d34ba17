"""SIGKILL during `strata features materialize` into a real Valkey, then a rerun.

The process is killed at several delays; after each kill readers see one whole version (the one
before, or the new one once switched), never a mix, and the rerun switches to the new version
with every row present. (The registry and offline-store kills: tests/e2e/test_faults_kill.py.)
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from strata.config import Settings, ValkeyOnlineConfig
from strata.features.materialize import materialize_frame, table_version
from strata.features.offline import OfflineStore
from strata.features.online.valkey import ValkeyOnlineStore
from tests.fault_support import after, cut, kill_when, run_cli, tiny_home
from tests.unit.serving_support import DATASET

pytestmark = pytest.mark.integration


def test_kill_materialize_then_rerun(valkey_url: str, tmp_path: Path) -> None:
    home, env, _ = tiny_home(tmp_path)
    prefix = f"t{uuid.uuid4().hex[:10]}"
    s = Settings(home=home)
    offline = OfflineStore(s)
    old_users = offline.latest_user_features(DATASET, as_of=cut())
    new_users = offline.latest_user_features(DATASET)
    cfg = ValkeyOnlineConfig(url=valkey_url, key_prefix=prefix, timeout_ms=5000)
    store = ValkeyOnlineStore(cfg)
    try:
        old = materialize_frame(store, "user", old_users, "user_id")["version"]
        new = table_version(new_users)
        assert old != new
        env.update(STRATA_ONLINE__TYPE="valkey", STRATA_ONLINE__KEY_PREFIX=prefix)
        args = ["features", "materialize", "--dataset", DATASET,
                "--online", valkey_url.replace("redis://", "valkey://")]  # fmt: skip
        ids = new_users["user_id"].to_numpy(np.int64)
        first_row = store.row_key("user", int(ids[0]), new)
        points = {
            "after 1 s (starting up)": after(1.0),
            "first row of the new version written": lambda: bool(store.bulk.exists(first_row)),
        }
        outcomes = {}
        for name, point in points.items():
            outcomes[name] = kill_when(env, args, point, tmp_path / "mat.err")
            active = store.active_version("user")
            assert active in (old, new)  # never a version without all its rows
            rows = store.read("user", ids, ["user_n_events"])
            assert rows.found.all() and rows.version == active
            outcomes[name] += f", user features then at {'new' if active == new else 'old'}"
        res = run_cli(env, *args)
        assert res.returncode == 0, res.stderr[-3000:]
        assert json.loads(res.stdout)["user"]["version"] == new == store.active_version("user")
        assert store.read("user", ids, ["user_n_events"]).found.all()
    finally:
        keys = list(store.bulk.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            store.bulk.unlink(*keys)
        store.close()
    print(f"\n[kill materialize] {outcomes}; active {new}")
