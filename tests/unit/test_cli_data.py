"""`strata data ...` as a user runs it: the installed console script in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

STRATA = Path(sys.executable).parent / "strata"


def run(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    if not STRATA.exists():
        pytest.skip(f"console script {STRATA} is not installed")
    env = {**os.environ, "STRATA_HOME": str(home)}
    return subprocess.run(
        [str(STRATA), "data", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_fetch_then_info_from_cache(ml100k_dir: Path, posters_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    res = run("fetch", "movielens-100k", "--path", str(ml100k_dir), "--images", str(posters_dir),
              home=home)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "943 users, 1682 items, 100000 interactions" in res.stdout
    assert (home / "datasets" / "movielens-100k" / "u.data").is_file()

    res = run("info", "movielens-100k", "--json", home=home)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert {k: info[k] for k in ("users", "items", "interactions")} == {
        "users": 943,
        "items": 1682,
        "interactions": 100000,
    }
    assert info["event_types"] == {"rating": 100000}


def test_bad_input_exits_2_with_one_line(ml100k_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    res = run("info", "movielens-1b", home=home)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "unknown dataset 'movielens-1b'" in res.stderr

    res = run("fetch", "movielens-100k", "--path", str(tmp_path / "nowhere"), home=home)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "nowhere" in res.stderr and "does not exist" in res.stderr

    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("u.data", "u.user", "u.item"):
        (broken / name).write_bytes((ml100k_dir / name).read_bytes())
    (broken / "u.user").write_text("1|24|M\n")
    res = run("fetch", "movielens-100k", "--path", str(broken), home=home)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "u.user" in res.stderr and "expected 5 columns" in res.stderr
    assert not (home / "datasets" / "movielens-100k").exists()


def test_criteo_parquet_command(criteo_8k: Path, tmp_path: Path) -> None:
    out = tmp_path / "pq"
    res = run("criteo-parquet", str(criteo_8k), str(out), "--chunk-rows", "3000", home=tmp_path)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert (summary["rows"], summary["parts"]) == (8000, 3)
    assert len(list(out.glob("part-*.parquet"))) == 3

    bad = tmp_path / "bad.tsv"
    lines = criteo_8k.read_text().splitlines(keepends=True)
    bad.write_text("".join(lines[:41]) + "0\t1\n" + "".join(lines[41:60]))
    res = run("criteo-parquet", str(bad), str(tmp_path / "pq2"), home=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "bad.tsv" in res.stderr and "line 42" in res.stderr
    assert not (tmp_path / "pq2").exists()
