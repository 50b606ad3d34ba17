"""`strata demo --no-serve`: the main job runs end to end on embedded defaults as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_pipelines_movielens import SMALL

STRATA = Path(sys.executable).with_name("strata")


@pytest.mark.e2e
def test_demo_no_serve_runs_the_offline_path(ml100k_dir: Path, tmp_path: Path) -> None:
    # The demo's defaults except a smaller training (what is checked is that every step runs)
    env = {**os.environ, **SMALL, "STRATA_HOME": str(tmp_path / "home")}
    env["STRATA_TRAINING__EPOCHS"] = "1"
    fetch = subprocess.run(
        [str(STRATA), "data", "fetch", "movielens-100k", "--path", str(ml100k_dir)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert fetch.returncode == 0, fetch.stderr
    run = subprocess.run(
        [str(STRATA), "demo", "--no-serve"],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    for step in ("offline store: features", "train two-tower", "ANN index", "materialize"):
        assert step in out
    assert "(cold start)" in out and "(warm)" in out
    version = tmp_path / "home" / "registry" / "movielens-100k" / "v0001"
    assert (version / "index" / "manifest.json").is_file()
    assert (tmp_path / "home" / "registry" / "movielens-100k" / "serving").read_text().strip() == (
        "v0001"
    )
