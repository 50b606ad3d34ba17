"""Feature definitions: one SQL source that runs on DuckDB and transpiles to Trino/Athena."""

from __future__ import annotations

import math

import duckdb
import numpy as np
import pytest
import sqlglot

from strata.errors import ValidationError
from strata.features import definitions as defs
from strata.features.definitions import FeatureParams, context_features_np, render_all
from strata.features.schema import (
    CONTEXT_FEATURES,
    ITEM_FEATURES,
    TRAINING_SET_COLUMNS,
    USER_FEATURES,
    features_in,
)


@pytest.mark.parametrize("dialect", ["spark", "trino", "athena"])
def test_every_definition_transpiles_and_parses(dialect: str) -> None:
    rendered = render_all(dialect, FeatureParams(user_window_s=7 * 86400))
    assert set(rendered) == {d.name for d in defs.DEFINITIONS}
    for name, sql in rendered.items():
        tree = sqlglot.parse_one(sql, read=dialect)
        assert isinstance(tree, sqlglot.exp.Query), name
    assert "604800" in rendered["user_behaviour"]  # the window parameter is substituted
    # DuckDB list syntax must not survive: Trino spells lists ARRAY_AGG, Spark COLLECT_LIST.
    assert "LIST(" not in rendered["user_behaviour"].upper().replace("COLLECT_LIST(", "")
    agg = "COLLECT_LIST(" if dialect == "spark" else "ARRAY_AGG("
    assert agg in rendered["user_behaviour"]


@pytest.mark.parametrize("attrs", [(), ("brand", "size")])
def test_definitions_use_only_the_portable_subset(attrs: tuple[str, ...]) -> None:
    """No DuckDB-only function or cast syntax in any definition (what Spark/Athena reject)."""
    import re

    params = FeatureParams(item_attrs=attrs, timezone="Europe/Paris")
    for name, text in render_all("duckdb", params).items():
        sql = re.sub(r"--[^\n]*", "", text)  # comments may say anything
        for fn in defs.FORBIDDEN:
            assert not re.search(rf"\b{fn}\s*\(", sql, re.IGNORECASE), (name, fn)
        assert "::" not in sql and "lambda" not in sql.lower(), name
        assert not re.search(r"COUNT\s*\(\s*DISTINCT[^)]*\)\s*OVER", sql, re.I), name


def _toy(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        "CREATE TABLE users AS SELECT * FROM (VALUES (1, 30, 'F', 'artist', '1'), "
        "(2, NULL, 'M', 'doctor', '2')) t(user_id, age, gender, occupation, zip)"
    )
    con.execute(
        "CREATE TABLE items AS SELECT * FROM (VALUES (10, 1990::SMALLINT, ['Drama'], 'Drama'), "
        "(20, NULL, ['Horror', 'Drama'], 'Horror')) t(item_id, year, genres, category)"
    )
    con.execute(
        "CREATE TABLE events AS SELECT * FROM (VALUES "
        "('a', 1, 10, 'rating', 4.0::FLOAT, 100::BIGINT, 'tv'), "
        "('b', 1, 20, 'view', 1.0::FLOAT, 200::BIGINT, 'mobile'), "
        "('c', 2, 20, 'click', 1.0::FLOAT, 300::BIGINT, NULL)) "
        "t(event_id, user_id, item_id, event_type, value, ts, device)"
    )
    con.execute(
        "CREATE TABLE history AS SELECT event_id AS point_id, user_id, item_id, event_type, "
        "value, ts, event_id FROM events"
    )


def test_every_definition_runs_on_duckdb_with_schema_columns() -> None:
    con = duckdb.connect()
    _toy(con)
    groups = {
        "user_demographics": features_in("user_demographics"),
        "item_metadata": features_in("item_metadata"),
        "context": CONTEXT_FEATURES,
        "user_behaviour": features_in("user_behaviour"),
        "item_popularity": features_in("item_popularity"),
    }
    for d in defs.DEFINITIONS:
        sql = d.render()
        if d.name != "training_set":
            con.execute(f"CREATE VIEW {d.name} AS {sql}")
            cols = [r[0] for r in con.execute(f"DESCRIBE {d.name}").fetchall()]
            assert cols == [d.key, *(f.name for f in groups[d.name])], d.name
    out = con.execute(defs.TRAINING_SET.render()).df()
    assert list(out.columns) == list(TRAINING_SET_COLUMNS)
    assert len(out) == 3
    row = out.set_index("event_id").loc["b"]
    assert row["user_n_events"] == 1 and row["user_top_genre"] == "Drama"
    assert out.set_index("event_id").at["c", "ctx_device"] == "unknown"
    assert out.set_index("event_id").at["c", "user_age"] == 0
    # Every declared user/item feature is produced (schema and SQL agree).
    assert {f.name for f in (*USER_FEATURES, *ITEM_FEATURES)} <= set(out.columns)


def test_context_numpy_matches_sql() -> None:
    ts = np.array([0, 3600, 86399, 86400 * 4 + 7200, 1_700_000_000], dtype=np.int64)
    con = duckdb.connect()
    con.execute("CREATE TABLE events (event_id VARCHAR, ts BIGINT, device VARCHAR)")
    con.executemany(
        "INSERT INTO events VALUES (?, ?, 'tv')", [(str(i), int(t)) for i, t in enumerate(ts)]
    )
    sql = con.execute(defs.CONTEXT.render() + " ORDER BY CAST(event_id AS INT)").df()
    py = context_features_np(ts, "tv")
    for col in ("ctx_hour_sin", "ctx_hour_cos", "ctx_dow_sin", "ctx_dow_cos"):
        np.testing.assert_allclose(sql[col].to_numpy(), py[col], atol=1e-12)
    # 2023-11-14 22:13:20 UTC was a Tuesday: dow 1 with Monday = 0.
    assert py["ctx_dow_sin"][4] == pytest.approx(math.sin(2 * math.pi / 7))
    assert py["ctx_hour_cos"][0] == 1.0


def test_bad_dialect_and_params() -> None:
    with pytest.raises(ValidationError, match="--dialect"):
        render_all("postgres")
    with pytest.raises(ValidationError, match="recent_n"):
        FeatureParams(recent_n=0)
