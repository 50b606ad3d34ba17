"""Point-in-time SQL of the offline store: binds the DuckDB views the feature definitions
(`strata.features.definitions`) read, for the latest features of every user/item as of a cut
(each entity probed once at the cut, so its own row never counts) and for training sets (each
event a point whose features use only the events strictly before it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from strata.features import definitions as defs
from strata.features.definitions import FeatureParams
from strata.features.parquet_files import scalar
from strata.features.schema import ITEM_FEATURE_COLUMNS, user_feature_columns

if TYPE_CHECKING:
    import duckdb


def feature_views(con: duckdb.DuckDBPyConnection, p: FeatureParams) -> None:
    """Bind the static feature views (user demographics, item metadata)."""
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW user_demographics AS {defs.USER_DEMOGRAPHICS.render(p)}"
    )
    con.execute(f"CREATE OR REPLACE TEMP VIEW item_metadata AS {defs.ITEM_METADATA.render(p)}")


def latest_sql(
    con: duckdb.DuckDBPyConnection, params: FeatureParams, entity: str, as_of: int | None
) -> str:
    """SQL for one row per user/item with features as of `as_of` (views already bound)."""
    if as_of is None:
        max_ts = scalar(con, "SELECT max(ts) FROM all_events")
        as_of = int(max_ts) + 1 if max_ts is not None else 0
    feature_views(con, params)
    key = "user_id" if entity == "user" else "item_id"
    table = "users" if entity == "user" else "items"
    probe_user = "user_id" if entity == "user" else "NULL::BIGINT"
    probe_item = "item_id" if entity == "item" else "NULL::BIGINT"
    # Probes: one per entity at `as_of`, event fields NULL so they never count themselves.
    con.execute(
        "CREATE OR REPLACE TEMP VIEW history AS "
        "SELECT NULL::VARCHAR AS point_id, user_id, item_id, event_type, value, ts, event_id "
        f"FROM all_events WHERE ts < {int(as_of)} UNION ALL "
        f"SELECT CAST({key} AS VARCHAR), {probe_user}, {probe_item}, NULL::VARCHAR, "
        f"NULL::FLOAT, {int(as_of)}::BIGINT, NULL::VARCHAR FROM {table}"
    )
    if entity == "user":
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW behaviour AS {defs.USER_BEHAVIOUR.render(params)}"
        )
        static = "user_demographics"
        cols = user_feature_columns(params.event_types, params.item_attrs)
    else:
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW behaviour AS {defs.ITEM_POPULARITY.render(params)}"
        )
        static = "item_metadata"
        cols = ITEM_FEATURE_COLUMNS
    return (
        f"SELECT {', '.join(cols)} FROM {static} AS s "
        f"JOIN behaviour AS b ON b.point_id = CAST(s.{key} AS VARCHAR) ORDER BY {key}"
    )


def training_sql(
    con: duckdb.DuckDBPyConnection, params: FeatureParams, until: int | None, since: int | None
) -> str:
    """Bind training-set views: history = events before `until`, points = events >= since."""
    feature_views(con, params)
    point = "event_id" if since is None else f"CASE WHEN ts >= {int(since)} THEN event_id END"
    con.execute(
        "CREATE OR REPLACE TEMP VIEW history AS "
        f"SELECT {point} AS point_id, user_id, item_id, event_type, value, ts, event_id "
        "FROM all_events"
    )
    where = f"WHERE ts >= {int(since)}" if since is not None else ""
    con.execute(f"CREATE OR REPLACE TEMP VIEW events AS SELECT * FROM all_events {where}")
    for d in (defs.CONTEXT, defs.USER_BEHAVIOUR, defs.ITEM_POPULARITY):
        con.execute(f"CREATE OR REPLACE TEMP VIEW {d.name} AS {d.render(params)}")
    return defs.TRAINING_SET.render(params)
