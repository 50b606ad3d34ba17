"""Settings from the environment that cannot be used: exit code 2 and one line naming the
variable to set, never pydantic's internals or a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

STRATA = Path(sys.executable).parent / "strata"


def land(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    if not STRATA.exists():
        pytest.skip(f"console script {STRATA} is not installed")
    base = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
    return subprocess.run(
        [str(STRATA), "events", "land", "--dataset", "synthetic"],
        capture_output=True,
        text=True,
        env={**base, "STRATA_HOME": str(tmp_path), **env},
        timeout=120,
    )


def test_an_online_setting_without_the_online_type_names_the_variable(tmp_path: Path) -> None:
    res = land(tmp_path, STRATA_ONLINE__PASSWORD="hunter2-secret")
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.splitlines()) == 1, res.stderr
    assert "STRATA_ONLINE__TYPE" in res.stderr
    assert "discriminator" not in res.stderr and "Traceback" not in res.stderr
    assert "hunter2-secret" not in res.stderr + res.stdout


def test_an_unknown_online_type_is_refused_in_one_line(tmp_path: Path) -> None:
    res = land(tmp_path, STRATA_ONLINE__TYPE="memcached")
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.splitlines()) == 1, res.stderr
    assert res.stderr.startswith("error: online") and "memcached" in res.stderr
