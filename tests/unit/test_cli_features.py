"""`strata features build|sql`: output, and one-line errors with exit code 2 on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlglot

from strata import cli


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """Run the real entry point (`main`, with its error mapping) in process; return exit code."""
    monkeypatch.setattr("sys.argv", ["strata", *args])
    try:
        cli.main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _needs_loader() -> None:
    import strata.datasets

    if not hasattr(strata.datasets, "load"):
        pytest.skip("strata.datasets.load is not available yet")


def test_sql_athena_prints_every_definition(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["features", "sql", "--dialect", "athena"], monkeypatch) == 0
    out = capsys.readouterr().out
    blocks = [b for b in out.split("-- ") if b.strip()]
    names = [b.splitlines()[0] for b in blocks]
    assert names == [
        "user_demographics", "item_metadata", "context", "user_behaviour", "item_popularity",
        "training_set",
    ]  # fmt: skip
    for block in blocks:
        sql = block.split("\n", 1)[1].strip().rstrip(";")
        sqlglot.parse_one(sql, read="athena")


def test_sql_bad_dialect_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["features", "sql", "--dialect", "oracle"], monkeypatch) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--dialect" in err and "oracle" in err


def test_build_bad_until_exit_2(
    strata_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_cli(["features", "build", "--dataset", "synthetic", "--until", "soon"], monkeypatch)
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--until" in err and "soon" in err
    assert not (strata_home / "offline").exists()  # nothing was written


def test_build_unknown_dataset_exit_2(
    strata_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _needs_loader()
    assert run_cli(["features", "build", "--dataset", "no-such-set"], monkeypatch) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no-such-set" in err


def test_build_synthetic_with_until(
    strata_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _needs_loader()
    from strata.config import Settings
    from strata.features.offline import OfflineStore

    assert run_cli(["features", "build", "--dataset", "synthetic"], monkeypatch) == 0
    full = json.loads(capsys.readouterr().out)
    cut = (full["min_ts"] + full["max_ts"]) // 2
    assert (
        run_cli(["features", "build", "--dataset", "synthetic", "--until", str(cut)], monkeypatch)
        == 0
    )
    part = json.loads(capsys.readouterr().out)
    assert part["as_of"] == cut and 0 < part["events"] < full["events"]
    assert part["max_ts"] < cut
    users = OfflineStore(Settings()).built_features("synthetic", "user")
    assert len(users) == full["users"]
    assert users["user_n_events"].sum() <= part["events"]
