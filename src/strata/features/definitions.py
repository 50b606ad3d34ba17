"""Feature definitions as SQL, in one place: a portable subset that DuckDB runs as written and
that sqlglot transpiles (read="duckdb") to Spark SQL and Trino/Athena with the same meaning.

Each definition is a SELECT over named input relations, so the same text runs on DuckDB here
(the offline store binds the names to temp views over Parquet), on Spark (temp views over the
same Parquet files, `features.spark`) and on Athena/Trino over S3 (`features.athena`):

- `users`, `items`: entity tables (`items.category` is filled at ingest);
- `events`: the event log (contract columns of `strata.datasets.base`);
- `history`: events plus *query points*. Columns: point_id (NULL for pure history), user_id,
  item_id, event_type, value, ts, event_id. A point asks "what were the features at `ts`?".
  In a training set every event is its own point (point_id = event_id); for the latest features
  there is one probe row per entity at the as-of time with NULL event fields.

Point-in-time correctness comes from the window frames: aggregates use
`RANGE BETWEEN <window> PRECEDING AND 1 PRECEDING` on integer-second `ts`, so only events strictly
before the point's timestamp count (never the point's own event or a simultaneous one), and
probes carry NULL event fields so they never count themselves.

The portable subset: plain window aggregates (COUNT, SUM, AVG, MAX, ROW_NUMBER, FIRST_VALUE,
LAG/LEAD, windowed ARRAY_AGG), joins, GROUP BY, `CROSS JOIN UNNEST`, CAST with explicit DOUBLE
for every division (Trino divides integers as integers and reads `1.0` as a DECIMAL). No
DuckDB-only functions (`FORBIDDEN`): the most frequent value of a window is counted per
(point, value) with a windowed SUM (`top_ctes`), distinct users of an item window come from run
boundaries (`ITEM_POPULARITY`), the recent items are one windowed ARRAY_AGG that ends before the
first event of the point's second.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from strata.datasets.base import EVENT_TYPE_PATTERN
from strata.errors import ValidationError
from strata.features.localtime import local_seconds, local_seconds_sql
from strata.features.schema import (
    DEFAULT_ITEM_WINDOW_S,
    DEFAULT_USER_WINDOW_S,
    EVENT_TYPES,
    RECENT_ITEMS_N,
)

DIALECTS = ("duckdb", "spark", "trino", "athena")
#: DuckDB-only spellings that must not appear in any rendered definition (tests/unit).
FORBIDDEN = (
    "MODE",
    "LIST_SLICE",
    "HISTOGRAM",
    "MAP_ENTRIES",
    "LIST_TRANSFORM",
    "LIST_SORT",
    "LEN",
    "LIST",
    "SPLIT_PART",
)


@dataclass(frozen=True)
class FeatureParams:
    """Parameters the definitions are rendered with (windows in seconds)."""

    user_window_s: int = DEFAULT_USER_WINDOW_S
    item_window_s: int = DEFAULT_ITEM_WINDOW_S
    recent_n: int = RECENT_ITEMS_N
    # Kept for settings written before the portable SQL: the recent items no longer look back
    # extra rows past simultaneous events (they end before the point's second), so it is unused.
    tie_slack: int = 16
    #: Event types counted per user (`user_n_<type>`): the dataset's declared types.
    event_types: tuple[str, ...] = EVENT_TYPES
    #: IANA time zone of the hour / day-of-week context (the dataset's declared one).
    timezone: str = "UTC"
    #: Declared item attributes (tags `attr=value` in items.genres): one `user_pref_<attr>` each.
    item_attrs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("user_window_s", "item_window_s", "recent_n", "tie_slack"):
            if int(getattr(self, name)) < 1:
                raise ValidationError(name, f"must be >= 1, got {getattr(self, name)}")
        local_seconds_sql(self.timezone)  # an unknown zone fails here, naming itself
        bad = [t for t in self.event_types if not re.match(EVENT_TYPE_PATTERN, str(t))]
        if bad or not self.event_types:
            raise ValidationError(
                "event_types", f"need 1+ names matching {EVENT_TYPE_PATTERN}, got {bad or '[]'}"
            )
        bad = [a for a in self.item_attrs if not re.match(EVENT_TYPE_PATTERN, str(a))]
        if bad:
            raise ValidationError("item_attrs", f"names must match {EVENT_TYPE_PATTERN}: {bad}")

    def with_meta(self, meta: dict[str, Any]) -> FeatureParams:
        """These parameters with a dataset's declarations (its `dataset.json`): event types,
        item attributes, time zone."""
        return replace(
            self,
            event_types=tuple(meta.get("event_types", EVENT_TYPES)),
            timezone=meta.get("timezone", "UTC"),
            item_attrs=tuple(meta.get("item_attributes", ())),
        )


@dataclass(frozen=True)
class Definition:
    """One SQL feature definition: its inputs, output key and the SELECT template."""

    name: str
    inputs: tuple[str, ...]
    key: str
    template: str

    def render(self, params: FeatureParams | None = None) -> str:
        """The SQL text with windows/limits substituted (DuckDB dialect)."""
        p = params or FeatureParams()
        types = p.event_types
        return self.template.format(
            user_window_s=int(p.user_window_s),
            item_window_s=int(p.item_window_s),
            recent_n=int(p.recent_n),
            item_window_end=int(p.item_window_s) + 1,
            # one count per event type: types match EVENT_TYPE_PATTERN, so they are safe in SQL
            type_counts=",\n".join(
                f"    SUM(CASE WHEN event_type = '{t}' THEN 1 ELSE 0 END) OVER uw AS n_{t}"
                for t in types
            ),
            type_cols=",\n".join(
                f"  CAST(COALESCE(w.n_{t}, 0) AS BIGINT) AS user_n_{t}" for t in types
            ),
            ub_type_cols="".join(f" ub.user_n_{t}," for t in types),
            local_ts=local_seconds_sql(p.timezone),
            top_ctes=top_ctes(
                "cat",
                "SELECT user_id, '' AS k, category AS v, ts FROM h "
                "WHERE event_type IS NOT NULL AND category IS NOT NULL",
                int(p.user_window_s),
            )
            + top_ctes(
                "gen",
                "SELECT h.user_id, '' AS k, t.genre AS v, h.ts "
                "FROM h CROSS JOIN UNNEST(h.genres) AS t(genre) WHERE h.event_type IS NOT NULL",
                int(p.user_window_s),
            ),
            **_attr_sql(p.item_attrs, int(p.user_window_s)),
        ).strip()


def top_ctes(name: str, values_sql: str, window_s: int) -> str:
    """CTEs `<name>_top` (point_id, k, v): per point and key `k`, the most frequent value `v` of
    `values_sql` (rows user_id, k, v, ts of past events) in the user window, ties to the first
    value by name (deterministic); no row when the window holds none.

    Portable form of a windowed mode: a value's past events in the window are counted by a
    windowed SUM over (user, k, v), evaluated at one probe row per (point, value) that the window
    can hold. Those pairs come from runs of the value's events (consecutive events at most a
    window apart): a run covers the points in (first ts, last ts + window], so the interval join
    adds exactly the values present in each point's window. Windowed `MODE(x ORDER BY x)`
    (DuckDB only) recomputes every frame: 8x slower on a 300k-event log."""
    w = int(window_s)
    return f""",
{name}_e AS ({values_sql}),
{name}_g AS (
  SELECT user_id, k, v, ts, SUM(fresh) OVER (
    PARTITION BY user_id, k, v ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
  ) AS run
  FROM (
    SELECT user_id, k, v, ts, CASE WHEN ts - LAG(ts) OVER (
      PARTITION BY user_id, k, v ORDER BY ts) <= {w} THEN 0 ELSE 1 END AS fresh
    FROM {name}_e
  ) AS gaps
),
{name}_r AS (
  SELECT user_id, k, v, MIN(ts) AS first_ts, MAX(ts) + {w} AS last_ts
  FROM {name}_g GROUP BY user_id, k, v, run
),
{name}_x AS (
  SELECT CAST(NULL AS VARCHAR) AS point_id, user_id, k, v, ts, 1 AS hit FROM {name}_e
  UNION ALL
  SELECT p.point_id, p.user_id, r.k, r.v, p.ts, 0 AS hit
  FROM h AS p
  JOIN {name}_r AS r ON r.user_id = p.user_id AND p.ts > r.first_ts AND p.ts <= r.last_ts
  WHERE p.point_id IS NOT NULL
),
{name}_n AS (
  SELECT point_id, k, v, SUM(hit) OVER (
    PARTITION BY user_id, k, v ORDER BY ts RANGE BETWEEN {w} PRECEDING AND 1 PRECEDING
  ) AS n
  FROM {name}_x
),
{name}_top AS (
  SELECT point_id, k, v FROM (
    SELECT point_id, k, v, ROW_NUMBER() OVER (PARTITION BY point_id, k ORDER BY n DESC, v) AS r
    FROM {name}_n
    WHERE point_id IS NOT NULL AND n > 0
  ) AS ranked
  WHERE r = 1
)"""


def _attr_sql(attrs: tuple[str, ...], window_s: int) -> dict[str, str]:
    """The pieces of `user_behaviour` and `training_set` for `user_pref_<attr>` of each declared
    item attribute: the most frequent value of that attribute over the user window (the
    attribute's tags `attr=value` in items.genres; ties to the first by name)."""
    if not attrs:
        return {"attr_ctes": "", "attr_select": "", "attr_join": "", "ub_attr_cols": ""}
    # names match EVENT_TYPE_PATTERN, so they are safe in SQL; `attr=` cannot prefix another's
    attr_of = " ".join(f"WHEN SUBSTR(t.tag, 1, {len(a) + 1}) = '{a}=' THEN '{a}'" for a in attrs)
    tops = ", ".join(f"MAX(CASE WHEN k = '{a}' THEN v END) AS top_{a}" for a in attrs)
    values = (
        f"SELECT user_id, k, v, ts FROM (SELECT h.user_id, CASE {attr_of} END AS k, t.tag AS v, "
        "h.ts FROM h CROSS JOIN UNNEST(h.genres) AS t(tag) WHERE h.event_type IS NOT NULL) AS tg "
        "WHERE k IS NOT NULL"
    )
    ctes = (
        top_ctes("att", values, window_s)
        + f",\natop AS (SELECT point_id, {tops} FROM att_top GROUP BY point_id)"
    )
    select = "".join(
        f"\n  COALESCE(SUBSTR(atop.top_{a}, {len(a) + 2}), '') AS user_pref_{a}," for a in attrs
    )
    return {
        "attr_ctes": ctes,
        "attr_select": select,
        "attr_join": "LEFT JOIN atop ON w.point_id = atop.point_id",
        "ub_attr_cols": "".join(f" ub.user_pref_{a}," for a in attrs),
    }


USER_DEMOGRAPHICS = Definition(
    "user_demographics",
    ("users",),
    "user_id",
    """
SELECT
  user_id,
  CAST(COALESCE(age, 0) AS SMALLINT) AS user_age,
  COALESCE(CAST(gender AS VARCHAR), '') AS user_gender,
  COALESCE(CAST(occupation AS VARCHAR), '') AS user_occupation
FROM users
""",
)

ITEM_METADATA = Definition(
    "item_metadata",
    ("items",),
    "item_id",
    """
SELECT
  item_id,
  CAST(COALESCE(year, 0) AS SMALLINT) AS item_year,
  COALESCE(category, '') AS item_category,
  COALESCE(genres, CAST([] AS VARCHAR[])) AS item_genres
FROM items
""",
)

CONTEXT = Definition(
    "context",
    ("events",),
    "event_id",
    """
SELECT
  event_id,
  SIN(2 * PI() * CAST(lts % 86400 AS DOUBLE) / 86400) AS ctx_hour_sin,
  COS(2 * PI() * CAST(lts % 86400 AS DOUBLE) / 86400) AS ctx_hour_cos,
  -- 1970-01-01 was a Thursday: +3 makes Monday day 0
  SIN(2 * PI() * CAST((CAST(FLOOR(CAST(lts AS DOUBLE) / 86400) AS BIGINT) + 3) % 7 AS DOUBLE) / 7)
    AS ctx_dow_sin,
  COS(2 * PI() * CAST((CAST(FLOOR(CAST(lts AS DOUBLE) / 86400) AS BIGINT) + 3) % 7 AS DOUBLE) / 7)
    AS ctx_dow_cos,
  COALESCE(device, 'unknown') AS ctx_device
-- lts: wall-clock seconds in the dataset's time zone (`localtime`)
FROM (SELECT event_id, device, {local_ts} AS lts FROM events) AS e
""",
)

USER_BEHAVIOUR = Definition(
    "user_behaviour",
    ("history", "items"),
    "point_id",
    """
WITH h AS (
  SELECT hi.point_id, hi.user_id, hi.item_id, hi.event_type, hi.value, hi.ts, hi.event_id,
         NULLIF(it.category, '') AS category, it.genres
  FROM history AS hi
  LEFT JOIN items AS it ON hi.item_id = it.item_id
),
w AS (
  SELECT
    point_id,
    user_id,
    ts,
    event_id,
    COUNT(event_type) OVER uw AS n_events,
{type_counts},
    AVG(value) OVER uw AS mean_value,
    MAX(CASE WHEN event_type IS NOT NULL THEN ts END) OVER (
      PARTITION BY user_id ORDER BY ts RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
    ) AS last_ts,
    -- the last rows before this one in (ts, event_id) order; the first row of each second
    -- holds exactly the events strictly before it, and its peers take that list (below)
    ARRAY_AGG(item_id) OVER (
      PARTITION BY user_id ORDER BY ts, event_id
      ROWS BETWEEN {recent_n} PRECEDING AND 1 PRECEDING
    ) AS tail
  FROM h
  WINDOW uw AS (
    PARTITION BY user_id ORDER BY ts RANGE BETWEEN {user_window_s} PRECEDING AND 1 PRECEDING
  )
),
wr AS (
  SELECT w.*,
         FIRST_VALUE(tail) OVER (PARTITION BY user_id, ts ORDER BY event_id) AS recent
  FROM w
  WHERE point_id IS NOT NULL
){top_ctes}{attr_ctes}
SELECT
  w.point_id,
  CAST(COALESCE(w.n_events, 0) AS BIGINT) AS user_n_events,
{type_cols},
  CAST(COALESCE(w.mean_value, 0) AS DOUBLE) AS user_mean_value,
  COALESCE(gen_top.v, '') AS user_top_genre,
  COALESCE(cat_top.v, '') AS user_top_category,{attr_select}
  COALESCE(w.recent, CAST([] AS BIGINT[])) AS user_recent_items,
  CASE WHEN w.last_ts IS NULL THEN CAST(-1 AS DOUBLE)
       ELSE CAST(w.ts - w.last_ts AS DOUBLE) / 86400 END AS user_days_since_last
FROM wr AS w
LEFT JOIN gen_top ON w.point_id = gen_top.point_id
LEFT JOIN cat_top ON w.point_id = cat_top.point_id
{attr_join}
""",
)

ITEM_POPULARITY = Definition(
    "item_popularity",
    ("history",),
    "point_id",
    """
WITH r AS (
  -- Distinct users of an item window without COUNT(DISTINCT) OVER (DuckDB only): a user's
  -- events on the item cover the points (ts, ts + window]; a run of them starts at an event
  -- whose previous one is more than a window before and ends at one whose next is more than a
  -- window after. Users covering a point = runs started before it - runs whose cover ended.
  SELECT
    point_id, item_id, event_type, value, ts,
    CASE WHEN event_type IS NOT NULL AND user_id IS NOT NULL AND (prev_ts IS NULL
         OR ts - prev_ts > {item_window_s}) THEN 1 ELSE 0 END AS run_start,
    CASE WHEN event_type IS NOT NULL AND user_id IS NOT NULL AND (next_ts IS NULL
         OR next_ts - ts > {item_window_s}) THEN 1 ELSE 0 END AS run_end
  FROM (
    SELECT *,
      LAG(ts) OVER (PARTITION BY item_id, user_id, event_type IS NULL ORDER BY ts) AS prev_ts,
      LEAD(ts) OVER (PARTITION BY item_id, user_id, event_type IS NULL ORDER BY ts) AS next_ts
    FROM history
  ) AS hp
),
w AS (
  SELECT
    point_id,
    COUNT(event_type) OVER iw AS n_events,
    COALESCE(SUM(run_start) OVER (
      PARTITION BY item_id ORDER BY ts RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
    ), 0) - COALESCE(SUM(run_end) OVER (
      PARTITION BY item_id ORDER BY ts
      RANGE BETWEEN UNBOUNDED PRECEDING AND {item_window_end} PRECEDING
    ), 0) AS n_users,
    AVG(value) OVER iw AS mean_value
  FROM r
  WINDOW iw AS (
    PARTITION BY item_id ORDER BY ts RANGE BETWEEN {item_window_s} PRECEDING AND 1 PRECEDING
  )
)
SELECT
  point_id,
  CAST(COALESCE(n_events, 0) AS BIGINT) AS item_n_events,
  CAST(COALESCE(n_users, 0) AS BIGINT) AS item_n_users,
  CAST(COALESCE(mean_value, 0) AS DOUBLE) AS item_mean_value
FROM w
WHERE point_id IS NOT NULL
""",
)

#: The point-in-time training set: every event of `events` joined with its context and with the
#: user/item features computed at its own timestamp (the views above, named after definitions).
TRAINING_SET = Definition(
    "training_set",
    (
        "events",
        "context",
        "user_demographics",
        "user_behaviour",
        "item_metadata",
        "item_popularity",
    ),
    "event_id",
    """
SELECT
  e.event_id, e.user_id, e.item_id, e.event_type, e.value, e.ts, e.device,
  c.ctx_hour_sin, c.ctx_hour_cos, c.ctx_dow_sin, c.ctx_dow_cos, c.ctx_device,
  COALESCE(ud.user_age, CAST(0 AS SMALLINT)) AS user_age,
  COALESCE(ud.user_gender, '') AS user_gender,
  COALESCE(ud.user_occupation, '') AS user_occupation,
  ub.user_n_events,{ub_type_cols}
  ub.user_mean_value, ub.user_top_genre, ub.user_top_category,{ub_attr_cols} ub.user_recent_items,
  ub.user_days_since_last,
  COALESCE(im.item_year, CAST(0 AS SMALLINT)) AS item_year,
  COALESCE(im.item_category, '') AS item_category,
  COALESCE(im.item_genres, CAST([] AS VARCHAR[])) AS item_genres,
  ip.item_n_events, ip.item_n_users, ip.item_mean_value
FROM events AS e
JOIN context AS c ON c.event_id = e.event_id
JOIN user_behaviour AS ub ON ub.point_id = e.event_id
JOIN item_popularity AS ip ON ip.point_id = e.event_id
LEFT JOIN user_demographics AS ud ON ud.user_id = e.user_id
LEFT JOIN item_metadata AS im ON im.item_id = e.item_id
ORDER BY e.ts, e.event_id
""",
)

DEFINITIONS: tuple[Definition, ...] = (
    USER_DEMOGRAPHICS,
    ITEM_METADATA,
    CONTEXT,
    USER_BEHAVIOUR,
    ITEM_POPULARITY,
    TRAINING_SET,
)


def render_all(dialect: str = "duckdb", params: FeatureParams | None = None) -> dict[str, str]:
    """Every definition rendered and transpiled to `dialect` (duckdb | spark | trino | athena)."""
    if dialect not in DIALECTS:
        raise ValidationError(
            "--dialect", f"expected one of {', '.join(DIALECTS)}, got {dialect!r}"
        )
    out: dict[str, str] = {}
    for d in DEFINITIONS:
        sql = d.render(params)
        if dialect != "duckdb":
            import sqlglot

            sql = sqlglot.transpile(sql, read="duckdb", write=dialect, pretty=True)[0]
        out[d.name] = sql
    return out


def context_features_np(
    ts: object, device: object = None, timezone: str = "UTC"
) -> dict[str, object]:
    """The `context` definition in NumPy, for the request path (must match the SQL exactly)."""
    t = local_seconds(np.asarray(ts, dtype=np.int64), timezone)
    day_angle = 2 * math.pi * (t % 86400) / 86400.0
    dow = (np.floor_divide(t, 86400) + 3) % 7
    dow_angle = 2 * math.pi * dow / 7.0
    return {
        "ctx_hour_sin": np.sin(day_angle),
        "ctx_hour_cos": np.cos(day_angle),
        "ctx_dow_sin": np.sin(dow_angle),
        "ctx_dow_cos": np.cos(dow_angle),
        "ctx_device": device if device is not None else "unknown",
    }
