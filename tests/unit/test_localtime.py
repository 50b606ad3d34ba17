"""The context's hour / day of week in a dataset's declared time zone: NumPy and SQL agree with
the IANA database (daylight saving included) and with each other."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import duckdb
import numpy as np
import pytest

from strata.errors import ValidationError
from strata.features import definitions as defs
from strata.features.definitions import FeatureParams, context_features_np
from strata.features.localtime import local_seconds, local_seconds_sql

ZONES = ("Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "UTC")


def _expected(ts: np.ndarray, zone: str) -> np.ndarray:
    z = ZoneInfo(zone)
    out = []
    for t in ts.tolist():
        off = datetime.fromtimestamp(t, UTC).astimezone(z).utcoffset()
        assert off is not None
        out.append(t + int(off.total_seconds()))
    return np.asarray(out, np.int64)


@pytest.mark.parametrize("zone", ZONES)
def test_local_seconds_follow_the_zone_database(zone: str) -> None:
    rng = np.random.default_rng(1)
    ts = rng.integers(0, 3_000_000_000, 400)
    # Both sides of the 2024 European and US spring-forward instants, to the second.
    edges = np.array([1711846799, 1711846800, 1710054000 - 1, 1710054000], np.int64)
    ts = np.concatenate([ts, edges])
    np.testing.assert_array_equal(local_seconds(ts, zone), _expected(ts, zone))
    con = duckdb.connect()
    sql = local_seconds_sql(zone, "t")
    got = con.execute(f"SELECT {sql} FROM (SELECT unnest(?) AS t)", [ts.tolist()]).fetchall()
    np.testing.assert_array_equal(np.array([r[0] for r in got]), _expected(ts, zone))


def test_context_definition_and_request_path_agree_in_a_declared_zone() -> None:
    ts = np.array([1711846799, 1711846800, 1_700_000_000, 1_720_000_000], np.int64)
    con = duckdb.connect()
    con.execute("CREATE TABLE events (event_id VARCHAR, ts BIGINT, device VARCHAR)")
    con.executemany("INSERT INTO events VALUES (?, ?, 'tv')",
                    [(str(i), int(t)) for i, t in enumerate(ts)])  # fmt: skip
    params = FeatureParams(timezone="Europe/Berlin")
    sql = con.execute(defs.CONTEXT.render(params) + " ORDER BY CAST(event_id AS INT)").df()
    py = context_features_np(ts, "tv", "Europe/Berlin")
    for col in ("ctx_hour_sin", "ctx_hour_cos", "ctx_dow_sin", "ctx_dow_cos"):
        np.testing.assert_allclose(sql[col].to_numpy(), py[col], atol=1e-12)
    # 2024-03-31 00:59:59 UTC is 01:59:59 in Berlin; one second later the clocks say 03:00.
    hours = (local_seconds(ts[:2], "Europe/Berlin") % 86400) / 3600
    np.testing.assert_allclose(hours, [1 + 3599 / 3600, 3.0])
    utc = context_features_np(ts, "tv")
    assert not np.allclose(utc["ctx_hour_sin"], py["ctx_hour_sin"])


def test_an_unknown_zone_is_named() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        FeatureParams(timezone="Mars/Olympus")
