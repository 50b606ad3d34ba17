"""`strata features materialize` from a real offline store into a real Valkey, via the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from strata.cli import app
from strata.config import Settings
from strata.features.online.valkey import ValkeyOnlineStore

pytestmark = pytest.mark.integration


def test_materialize_cli_into_valkey(strata_home: Path, valkey_config, monkeypatch) -> None:
    from strata.datasets.synthetic import recsys_world
    from strata.features.offline import OfflineStore

    ds = recsys_world(n_users=25, n_items=30, n_events=300, seed=4).to_dataset()
    offline = OfflineStore(Settings())
    offline.ingest("toy", ds.users, ds.items, [ds.interactions])
    offline.build("toy")
    monkeypatch.setenv("STRATA_ONLINE__TYPE", "valkey")
    monkeypatch.setenv("STRATA_ONLINE__KEY_PREFIX", valkey_config.key_prefix)
    url = valkey_config.url.replace("redis://", "valkey://")
    runner = CliRunner()
    res = runner.invoke(app, ["features", "materialize", "--dataset", "toy", "--online", url])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["user"]["rows"] == 25 and out["item"]["rows"] == 30
    again = json.loads(
        runner.invoke(app, ["features", "materialize", "--dataset", "toy", "--online", url]).stdout
    )
    assert again["user"]["skipped"] and again["item"]["skipped"]

    store = ValkeyOnlineStore(valkey_config)
    latest = offline.latest_user_features("toy")
    rows = store.read("user", latest["user_id"].to_numpy(), ["user_n_events", "user_gender"])
    assert rows.found.all() and rows.version == out["user"]["version"]
    np.testing.assert_array_equal(rows.values["user_n_events"], latest["user_n_events"])
    assert list(rows.values["user_gender"]) == latest["user_gender"].tolist()
    store.close()


def test_materialize_unknown_dataset_exits_2(strata_home: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from strata.cli import main; main()",
            "features",
            "materialize",
            "--dataset",
            "nope",
            "--online",
            "memory",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "STRATA_HOME": str(strata_home)},
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
