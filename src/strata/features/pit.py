"""Point-in-time SQL of the offline store: the views the feature definitions
(`strata.features.definitions`) read, for the latest features of every user/item as of a cut
(each entity probed once at the cut, so its own row never counts) and for training sets (each
event a point whose features use only the events strictly before it).

The views are engine-neutral: an ordered list of (name, SELECT) in the portable SQL of the
definitions, over the base relations `users`, `items` and `all_events` that each engine binds to
the dataset's Parquet files. DuckDB runs them as temp views (`bind`), Spark registers them as
temp views (`strata.features.spark`), Athena inlines them as one `WITH` query (`compose`).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from strata.features import definitions as defs
from strata.features.definitions import FeatureParams
from strata.features.parquet_files import scalar
from strata.features.schema import ITEM_FEATURE_COLUMNS, user_feature_columns

if TYPE_CHECKING:
    import duckdb

View = tuple[str, str]  # (name, SELECT); the last view of a list is the result


def static_views(p: FeatureParams) -> list[View]:
    """The static feature views (user demographics, item metadata)."""
    return [
        (defs.USER_DEMOGRAPHICS.name, defs.USER_DEMOGRAPHICS.render(p)),
        (defs.ITEM_METADATA.name, defs.ITEM_METADATA.render(p)),
    ]


def latest_views(p: FeatureParams, entity: str, as_of: int) -> list[View]:
    """Views ending in one row per user/item with features as of `as_of` (ordered by key)."""
    key = "user_id" if entity == "user" else "item_id"
    table = "users" if entity == "user" else "items"
    probe_user = "user_id" if entity == "user" else "CAST(NULL AS BIGINT)"
    probe_item = "item_id" if entity == "item" else "CAST(NULL AS BIGINT)"
    # Probes: one per entity at `as_of`, event fields NULL so they never count themselves.
    history = (
        "SELECT CAST(NULL AS VARCHAR) AS point_id, user_id, item_id, event_type, value, ts, "
        f"event_id FROM all_events WHERE ts < {int(as_of)} UNION ALL "
        f"SELECT CAST({key} AS VARCHAR), {probe_user}, {probe_item}, CAST(NULL AS VARCHAR), "
        f"CAST(NULL AS FLOAT), CAST({int(as_of)} AS BIGINT), CAST(NULL AS VARCHAR) FROM {table}"
    )
    if entity == "user":
        behaviour = defs.USER_BEHAVIOUR.render(p)
        static = defs.USER_DEMOGRAPHICS.name
        cols = user_feature_columns(p.event_types, p.item_attrs)
    else:
        behaviour = defs.ITEM_POPULARITY.render(p)
        static = defs.ITEM_METADATA.name
        cols = ITEM_FEATURE_COLUMNS
    result = (
        f"SELECT {', '.join(cols)} FROM {static} AS s "
        f"JOIN behaviour AS b ON b.point_id = CAST(s.{key} AS VARCHAR) ORDER BY {key}"
    )
    return [
        *static_views(p),
        ("history", history),
        ("behaviour", behaviour),
        (f"{entity}_features", result),
    ]


def popularity_views(p: FeatureParams, times: list[int]) -> list[View]:
    """Views ending in the item behaviour features of every item at each of `times`: one probe
    per (item, time), each seeing only the events before its own time (the window ends 1 s
    before the probe, and probes carry no event, so they never count themselves or each other).
    One pass over the events replaces one `latest_views` query per time."""
    values = ", ".join(f"({int(t)})" for t in times)
    probes = (
        "SELECT item_id, CAST(t.ts AS BIGINT) AS as_of, "
        "CAST(item_id AS VARCHAR) || '@' || CAST(t.ts AS VARCHAR) AS point_id "
        f"FROM items CROSS JOIN (VALUES {values}) AS t(ts)"
    )
    history = (
        "SELECT CAST(NULL AS VARCHAR) AS point_id, user_id, item_id, event_type, value, ts, "
        "event_id FROM all_events UNION ALL "
        "SELECT point_id, CAST(NULL AS BIGINT), item_id, CAST(NULL AS VARCHAR), "
        "CAST(NULL AS FLOAT), as_of, CAST(NULL AS VARCHAR) FROM probes"
    )
    result = (
        "SELECT pr.item_id, pr.as_of, b.item_n_events, b.item_n_users, b.item_mean_value "
        "FROM probes AS pr JOIN behaviour AS b ON b.point_id = pr.point_id "
        "ORDER BY pr.as_of, pr.item_id"
    )
    return [
        ("probes", probes),
        ("history", history),
        ("behaviour", defs.ITEM_POPULARITY.render(p)),
        ("item_popularity_at", result),
    ]


def training_views(p: FeatureParams, since: int | None) -> list[View]:
    """Views ending in the training set: history = every bound event, points = events >= since
    (the bound `all_events` already stops at the cut `until`)."""
    point = "event_id" if since is None else f"CASE WHEN ts >= {int(since)} THEN event_id END"
    where = f" WHERE ts >= {int(since)}" if since is not None else ""
    return [
        *static_views(p),
        (
            "history",
            f"SELECT {point} AS point_id, user_id, item_id, event_type, value, ts, event_id "
            "FROM all_events",
        ),
        ("events", f"SELECT * FROM all_events{where}"),
        *((d.name, d.render(p)) for d in (defs.CONTEXT, defs.USER_BEHAVIOUR, defs.ITEM_POPULARITY)),
        (defs.TRAINING_SET.name, defs.TRAINING_SET.render(p)),
    ]


def compose(views: list[View]) -> str:
    """One query: every view but the last as a CTE, then the last (for engines without temp
    views, e.g. Athena). Each definition's own WITH stays nested inside its CTE."""
    *ctes, (_, last) = views
    if not ctes:
        return last
    return "WITH " + ",\n".join(f"{name} AS (\n{sql}\n)" for name, sql in ctes) + "\n" + last


def bind(con: duckdb.DuckDBPyConnection, views: list[View]) -> str:
    """Create DuckDB temp views for all but the last view; return the last one's SQL."""
    *ctes, (_, last) = views
    for name, sql in ctes:
        con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {sql}")
    return last


def default_as_of(con: duckdb.DuckDBPyConnection) -> int:
    """One second past the newest bound event (0 when there is none)."""
    max_ts = scalar(con, "SELECT max(ts) FROM all_events")
    return int(max_ts) + 1 if max_ts is not None else 0


def latest_sql(
    con: duckdb.DuckDBPyConnection, params: FeatureParams, entity: str, as_of: int | None
) -> str:
    """SQL for one row per user/item with features as of `as_of` (DuckDB views bound)."""
    return bind(con, latest_views(params, entity, default_as_of(con) if as_of is None else as_of))


def training_sql(con: duckdb.DuckDBPyConnection, params: FeatureParams, since: int | None) -> str:
    """Bind training-set views (DuckDB) over the bound `all_events` (already cut at `until` by
    OfflineStore._bind): points are the events >= since."""
    return bind(con, training_views(params, since))


def build_manifest(
    dataset_name: str,
    until: int | None,
    as_of: int,
    stats: tuple[Any, Any, Any],
    counts: dict[str, int],
    params: FeatureParams,
    out: str,
) -> dict[str, Any]:
    """The `features/manifest.json` of a build, whichever engine ran it; `stats` is
    (events, min ts, max ts) of the bound log."""
    n_events, min_ts, max_ts = stats
    return {
        "dataset": dataset_name,
        "until": until,
        "as_of": as_of,
        "events": int(n_events),
        "min_ts": None if min_ts is None else int(min_ts),
        "max_ts": None if max_ts is None else int(max_ts),
        "user_rows": counts["user"],
        "item_rows": counts["item"],
        "params": asdict(params),
        "path": out,
    }
