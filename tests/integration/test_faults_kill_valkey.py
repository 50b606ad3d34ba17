"""SIGKILL during `strata features materialize` into a real Valkey, then a rerun.

The process is killed at a delay (while it starts up) and as it writes the new version's rows;
each kill must land before the command's end (`kill_at`: a try that came too late starts again
from the old version and is killed at an earlier point; no landed kill fails the test). After
each kill readers see one whole version (the one before, or the new one once switched), never a
mix, and the rerun switches to the new version with every row present.
(The registry and offline-store kills: tests/e2e/test_faults_kill.py.)
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from strata.config import Settings, ValkeyOnlineConfig
from strata.features.materialize import materialize_frame, table_version
from strata.features.offline import OfflineStore
from strata.features.online.valkey import ValkeyOnlineStore
from tests.fault_support import KillPoint, after, cut, kill_at, run_cli, tiny_home
from tests.unit.serving_support import DATASET

pytestmark = pytest.mark.integration


def test_kill_materialize_then_rerun(valkey_url: str, tmp_path: Path) -> None:
    home, env, _ = tiny_home(tmp_path)
    prefix = f"t{uuid.uuid4().hex[:10]}"
    s = Settings(home=home)
    offline = OfflineStore(s)
    old_users = offline.latest_user_features(DATASET, as_of=cut())
    new_users = offline.latest_user_features(DATASET)
    new_items = table_version(offline.latest_item_features(DATASET))
    cfg = ValkeyOnlineConfig(url=valkey_url, key_prefix=prefix, timeout_ms=5000)
    store = ValkeyOnlineStore(cfg)

    def old_version_only() -> str:
        """The store as before any run: the old user features active, nothing else."""
        keys = list(store.bulk.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            store.bulk.unlink(*keys)
        return str(materialize_frame(store, "user", old_users, "user_id")["version"])

    def fresh() -> Callable[[], None]:
        """`state` of `kill_at`: every try starts from the old version alone."""
        old_version_only()
        return old_version_only

    def exists(key: str) -> Callable[[], Callable[[], bool]]:
        return lambda: lambda: bool(store.bulk.exists(key))

    try:
        old = old_version_only()
        new = table_version(new_users)
        assert old != new
        env.update(STRATA_ONLINE__TYPE="valkey", STRATA_ONLINE__KEY_PREFIX=prefix)
        args = ["features", "materialize", "--dataset", DATASET,
                "--online", valkey_url.replace("redis://", "valkey://")]  # fmt: skip
        ids = new_users["user_id"].to_numpy(np.int64)
        points: dict[str, list[KillPoint]] = {
            # the whole run takes about a second: a kill while it imports and reads
            "starting up": [(f"after {t:g} s", lambda t=t: after(t)) for t in (1.0, 0.5, 0.25)],
            "writing the new version": [
                ("first row of the new version written",
                 exists(store.row_key("user", int(ids[0]), new))),
                # earlier: the new version's row layout, stored just before its rows
                ("new version's layout stored", exists(f"{prefix}:meta:user:{new}")),
            ],
        }  # fmt: skip

        def done() -> bool:  # the command's last step: the new item features switched on
            return store.active_version("item") == new_items

        landed = {}
        for name, ladder in points.items():
            at = kill_at(env, args, ladder, tmp_path / "mat.err", state=fresh, done=done)
            active = store.active_version("user")
            assert active in (old, new)  # never a version without all its rows
            rows = store.read("user", ids, ["user_n_events"])
            assert rows.found.all() and rows.version == active
            landed[name] = f"{at}, user features then at {'new' if active == new else 'old'}"
        res = run_cli(env, *args)
        assert res.returncode == 0, res.stderr[-3000:]
        out = json.loads(res.stdout)
        assert out["user"]["version"] == new == store.active_version("user")
        assert out["item"]["version"] == new_items == store.active_version("item")
        assert store.read("user", ids, ["user_n_events"]).found.all()
    finally:
        keys = list(store.bulk.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            store.bulk.unlink(*keys)
        store.close()
    print(f"\n[kill materialize] landed at {landed}; active {new}")
