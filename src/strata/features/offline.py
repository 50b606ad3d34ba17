"""Offline feature store: Parquet files queried with DuckDB, point-in-time-correct training sets.

Layout under `<offline_uri>/<dataset>/`:

    users.parquet, items.parquet               entity tables (sorted by key)
    events/date=YYYY-MM-DD/part-0.parquet      event log, one file per UTC day, by (ts, event_id)
    features/user_features.parquet             latest user features as of the build's cut
    features/item_features.parquet             latest item features as of the build's cut
    features/manifest.json                     what the build used (cut, windows, row counts)
    item_content.parquet                       content embeddings written by the encoders

Every write goes to a temporary name and is renamed into place only after all of its inputs
validated, so a failed ingest or build leaves the previous good state untouched. Events are
deduplicated by `event_id` (first write wins), so re-running an ingest is idempotent.
`s3://` roots are read and written through DuckDB's httpfs (configured from `settings.offline`);
there each object PUT is atomic, which is the only guarantee S3 gives.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from strata.config import Settings
from strata.datasets.base import (
    EVENT_TYPES,
    INTERACTION_COLUMNS,
    ITEM_COLUMNS,
    USER_COLUMNS,
    check_columns,
)
from strata.errors import DataError, NotFoundError, StrataError, ValidationError
from strata.features import definitions as defs
from strata.features.definitions import FeatureParams
from strata.features.schema import (
    ITEM_CONTENT_COLUMNS,
    ITEM_FEATURE_COLUMNS,
    TRAINING_SET_COLUMNS,
    USER_FEATURE_COLUMNS,
)

if TYPE_CHECKING:
    import duckdb
    import pandas as pd

log = logging.getLogger(__name__)

_EVENT_SQL_TYPES = {
    "event_id": "VARCHAR",
    "user_id": "BIGINT",
    "item_id": "BIGINT",
    "event_type": "VARCHAR",
    "value": "FLOAT",
    "ts": "BIGINT",
    "device": "VARCHAR",
}


_USER_SQL_TYPES = {
    "user_id": "BIGINT",
    "age": "SMALLINT",
    "gender": "VARCHAR",
    "occupation": "VARCHAR",
    "zip": "VARCHAR",
}
_ITEM_SQL_TYPES = {
    "item_id": "BIGINT",
    "title": "VARCHAR",
    "year": "SMALLINT",
    "genres": "VARCHAR[]",
    "description": "VARCHAR",
    "image_path": "VARCHAR",
    "category": "VARCHAR",
}


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    row = con.execute(sql).fetchone()
    return None if row is None else row[0]


def _typed_select(relation: str, types: dict[str, str], key: str) -> str:
    """Contract columns cast to their SQL types, extra columns kept as they are, sorted by key."""
    typed = ", ".join(f"CAST({c} AS {t}) AS {c}" for c, t in types.items())
    return f"SELECT {typed}, * EXCLUDE ({', '.join(types)}) FROM {relation} ORDER BY {key}"


def _items_arrow(df: pd.DataFrame) -> Any:
    """Items as Arrow with `genres` typed list<string> (pandas object lists can be ambiguous)."""
    import pyarrow as pa

    table = pa.Table.from_pandas(df.drop(columns=["genres"]), preserve_index=False)
    return table.append_column("genres", pa.array(list(df["genres"]), type=pa.list_(pa.string())))


def parse_ts(value: str | int | None, field: str = "--until") -> int | None:
    """Unix seconds from an int, a digit string, or an ISO date/datetime (naive means UTC)."""
    if value is None:
        return None
    if isinstance(value, int):
        ts = value
    else:
        text = value.strip()
        if text.lstrip("-").isdigit():
            ts = int(text)
        else:
            try:
                dt = datetime.fromisoformat(text)
            except ValueError:
                raise ValidationError(
                    field, f"expected unix seconds or an ISO date, got {value!r}"
                ) from None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            ts = int(dt.timestamp())
    if ts < 0:
        raise ValidationError(field, f"must be >= 0, got {ts}")
    return ts


def _is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _q(text: str) -> str:
    """Quote a string literal for SQL (paths go into COPY/read_parquet, which take no params)."""
    return "'" + text.replace("'", "''") + "'"


class OfflineStore:
    """Parquet + DuckDB offline store for one `offline_uri` (local folder or s3://)."""

    def __init__(self, settings: Settings, params: FeatureParams | None = None) -> None:
        self.settings = settings
        self.params = params or FeatureParams()
        self.root = settings.offline_uri.rstrip("/")
        self._s3 = _is_s3(self.root)

    # --- paths and connections ---------------------------------------------------------------

    def dataset_uri(self, dataset_name: str) -> str:
        """`<offline_uri>/<dataset>`; the name must be a plain path component."""
        if not dataset_name or "/" in dataset_name or dataset_name.startswith("."):
            raise ValidationError("dataset", f"invalid dataset name {dataset_name!r}")
        return f"{self.root}/{dataset_name}"

    @contextmanager
    def _connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A DuckDB connection with bounded memory (and httpfs configured for s3:// roots)."""
        import duckdb

        cfg = self.settings.offline
        con = duckdb.connect(config={"memory_limit": cfg.duckdb_memory_limit})
        try:
            con.execute(f"SET threads = {int(cfg.duckdb_threads)}")
            # Spill to a folder we own so large builds degrade to disk instead of failing.
            spill = self.settings.home / "tmp" / "duckdb"
            spill.mkdir(parents=True, exist_ok=True)
            con.execute(f"SET temp_directory = {_q(str(spill))}")
            con.execute("SET preserve_insertion_order = true")
            # Progress is reported through strata.progress; DuckDB's own bar would garble stderr.
            con.execute("SET enable_progress_bar = false")
            if self._s3:
                con.execute("INSTALL httpfs")
                con.execute("LOAD httpfs")
                if cfg.s3_region:
                    con.execute(f"SET s3_region = {_q(cfg.s3_region)}")
                if cfg.s3_endpoint:
                    con.execute(f"SET s3_endpoint = {_q(cfg.s3_endpoint)}")
            yield con
        finally:
            con.close()

    def _exists(self, con: duckdb.DuckDBPyConnection, uri: str) -> bool:
        if not self._s3:
            return Path(uri).exists()
        return bool(_scalar(con, f"SELECT count(*) FROM glob({_q(uri)})"))

    def _glob(self, con: duckdb.DuckDBPyConnection, pattern: str) -> list[str]:
        if not self._s3:
            return sorted(glob.glob(pattern))
        return sorted(r[0] for r in con.execute(f"SELECT file FROM glob({_q(pattern)})").fetchall())

    def _copy(self, con: duckdb.DuckDBPyConnection, select_sql: str, dest: str) -> tuple[str, int]:
        """Write a query result as Parquet to a temp name beside `dest`; return (name, rows).

        Locally the caller renames it into place with `_commit`; on S3 the object PUT is
        already atomic, so the query is written to `dest` directly.
        """
        target = dest if self._s3 else f"{dest}.tmp-{uuid.uuid4().hex}"
        if not self._s3:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
        rows = _scalar(
            con,
            f"COPY ({select_sql}) TO {_q(target)} (FORMAT parquet, COMPRESSION zstd, "
            "ROW_GROUP_SIZE 122880)",
        )
        return target, int(rows)

    def _commit(self, tmp: str, dest: str) -> None:
        if tmp != dest:
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)

    def _discard(self, paths: Iterable[str]) -> None:
        for p in paths:
            if not self._s3 and Path(p).exists():
                Path(p).unlink()

    # --- validation ---------------------------------------------------------------------------

    def _check_parquet(
        self, con: duckdb.DuckDBPyConnection, uri: str, required: Iterable[str]
    ) -> None:
        """Raise DataError naming `uri` if it is missing, unreadable, or lacks `required`."""
        if not self._exists(con, uri):
            raise DataError(uri, "missing (run `strata features build` or ingest first)")
        import duckdb

        try:
            desc = con.execute(f"DESCRIBE SELECT * FROM read_parquet({_q(uri)})").fetchall()
            cols = [r[0] for r in desc]
        except duckdb.Error as exc:
            raise DataError(uri, f"corrupt or unreadable Parquet ({_first_line(exc)})") from None
        missing = [c for c in required if c not in cols]
        if missing:
            raise DataError(uri, f"missing columns {missing}")

    def _event_files(
        self,
        con: duckdb.DuckDBPyConnection,
        dataset_name: str,
        until: int | None = None,
        since: int | None = None,
    ) -> list[str]:
        """Event partition files whose day can hold events in [since, until), each validated."""
        base = self.dataset_uri(dataset_name)
        if not self._exists(con, f"{base}/users.parquet"):
            raise NotFoundError(f"dataset {dataset_name!r} is not in the offline store ({base})")
        files = self._glob(con, f"{base}/events/date=*/part-*.parquet")
        lo = _day(since) if since is not None else None
        hi = _day(until - 1) if until is not None else None
        keep = []
        for f in files:
            day = f.rsplit("date=", 1)[1].split("/", 1)[0]
            if (lo is None or day >= lo) and (hi is None or day <= hi):
                keep.append(f)
        for f in keep:
            self._check_parquet(con, f, INTERACTION_COLUMNS)
        return keep

    # --- ingest -------------------------------------------------------------------------------

    def ingest(
        self,
        dataset_name: str,
        users: pd.DataFrame,
        items: pd.DataFrame,
        event_chunks: Iterable[pd.DataFrame],
    ) -> dict[str, int]:
        """Write users/items and merge event chunks into the log; atomic and idempotent.

        Everything is staged first and renamed into place only when every chunk validated, so
        a bad chunk leaves the store as it was. Returns row counts (new events only).
        """
        from strata.progress import track

        base = self.dataset_uri(dataset_name)
        users_df = _normalize_users(users, f"{dataset_name}:users")
        items_df = _normalize_items(items, f"{dataset_name}:items")
        staged: dict[str, str] = {}  # final uri -> temp uri
        new_events = 0
        try:
            with self._connect() as con:
                con.register("users_in", users_df)
                con.register("items_in", _items_arrow(items_df))
                staged[f"{base}/users.parquet"], _ = self._copy(
                    con,
                    _typed_select("users_in", _USER_SQL_TYPES, "user_id"),
                    f"{base}/users.parquet",
                )
                staged[f"{base}/items.parquet"], _ = self._copy(
                    con,
                    _typed_select("items_in", _ITEM_SQL_TYPES, "item_id"),
                    f"{base}/items.parquet",
                )
                con.unregister("users_in")
                con.unregister("items_in")
                for i, chunk in enumerate(track(event_chunks, "ingest events")):
                    new_events += self._stage_events(
                        con, base, _normalize_events(chunk, f"{dataset_name}:events[{i}]"), staged
                    )
            for dest, tmp in staged.items():
                self._commit(tmp, dest)
        except BaseException:
            self._discard(staged.values())
            raise
        log.info(
            "ingested %s: %d users, %d items, %d new events",
            dataset_name,
            len(users_df),
            len(items_df),
            new_events,
        )
        return {"users": len(users_df), "items": len(items_df), "new_events": new_events}

    def append_events(self, dataset_name: str, df: pd.DataFrame) -> int:
        """Merge events into the date-partitioned log (dedup by event_id); returns rows added."""
        base = self.dataset_uri(dataset_name)
        events = _normalize_events(df, f"{dataset_name}:events")
        staged: dict[str, str] = {}
        try:
            with self._connect() as con:
                if not self._exists(con, f"{base}/users.parquet"):
                    raise NotFoundError(
                        f"dataset {dataset_name!r} is not in the offline store ({base})"
                    )
                added = self._stage_events(con, base, events, staged)
            for dest, tmp in staged.items():
                self._commit(tmp, dest)
        except BaseException:
            self._discard(staged.values())
            raise
        return added

    def _stage_events(
        self,
        con: duckdb.DuckDBPyConnection,
        base: str,
        events: pd.DataFrame,
        staged: dict[str, str],
    ) -> int:
        """Merge one normalized chunk into per-day partition files staged under temp names."""
        if events.empty:
            return 0
        days = events["ts"].to_numpy() // 86400
        added = 0
        cols = ", ".join(INTERACTION_COLUMNS)
        for day, part in events.groupby(days, sort=True):
            date = _day(int(day) * 86400)
            dest = f"{base}/events/date={date}/part-0.parquet"
            con.register("new_part", part)
            sources = ["SELECT " + cols + ", 1 AS src FROM new_part"]
            existing = staged.get(dest) or (dest if self._exists(con, dest) else None)
            if existing is not None:
                self._check_parquet(con, existing, INTERACTION_COLUMNS)
                sources.insert(0, f"SELECT {cols}, 0 AS src FROM read_parquet({_q(existing)})")
                n_before = int(_scalar(con, f"SELECT count(*) FROM read_parquet({_q(existing)})"))
            else:
                n_before = 0
            # First write of an event_id wins, so replaying a chunk changes nothing.
            merged = (
                f"SELECT {cols} FROM ({' UNION ALL '.join(sources)}) "
                "QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY src) = 1 "
                "ORDER BY ts, event_id"
            )
            tmp, n_after = self._copy(con, merged, dest)
            con.unregister("new_part")
            old = staged.get(dest)
            staged[dest] = tmp
            if old is not None and old != tmp:
                self._discard([old])
            added += n_after - n_before
        return added

    # --- reading ------------------------------------------------------------------------------

    def _bind(
        self,
        con: duckdb.DuckDBPyConnection,
        dataset_name: str,
        until: int | None,
    ) -> None:
        """Create temp views `users`, `items`, `all_events` (ts < until) over the dataset files."""
        base = self.dataset_uri(dataset_name)
        files = self._event_files(con, dataset_name, until=until)
        self._check_parquet(con, f"{base}/users.parquet", USER_COLUMNS)
        self._check_parquet(con, f"{base}/items.parquet", (*ITEM_COLUMNS, "category"))
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW users AS SELECT * FROM "
            f"read_parquet({_q(base + '/users.parquet')})"
        )
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW items AS SELECT * FROM "
            f"read_parquet({_q(base + '/items.parquet')})"
        )
        typed = ", ".join(f"CAST({c} AS {t}) AS {c}" for c, t in _EVENT_SQL_TYPES.items())
        if files:
            src = f"read_parquet([{', '.join(_q(f) for f in files)}])"
            where = f"WHERE ts < {int(until)}" if until is not None else ""
            body = f"SELECT {typed} FROM {src} {where}"
        else:
            nulls = ", ".join(f"NULL AS {c}" for c in _EVENT_SQL_TYPES)
            body = f"SELECT {typed} FROM (SELECT {nulls}) WHERE false"
        con.execute(f"CREATE OR REPLACE TEMP VIEW all_events AS {body}")

    def _query(self, fn: Any, dataset_name: str, what: str) -> Any:
        """Run `fn(con)`; DuckDB errors on stored files become a DataError naming the dataset."""
        import duckdb

        with self._connect() as con:
            try:
                return fn(con)
            except StrataError:
                raise
            except duckdb.Error as exc:
                raise DataError(
                    self.dataset_uri(dataset_name), f"{what} failed: {_first_line(exc)}"
                ) from None

    def users(self, dataset_name: str) -> pd.DataFrame:
        """The stored users table."""
        uri = f"{self.dataset_uri(dataset_name)}/users.parquet"

        def run(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
            self._check_parquet(con, uri, USER_COLUMNS)
            return con.execute(f"SELECT * FROM read_parquet({_q(uri)})").df()

        return self._query(run, dataset_name, "reading users")

    def items(self, dataset_name: str) -> pd.DataFrame:
        """The stored items table (with the derived `category` column)."""
        uri = f"{self.dataset_uri(dataset_name)}/items.parquet"

        def run(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
            self._check_parquet(con, uri, ITEM_COLUMNS)
            return con.execute(f"SELECT * FROM read_parquet({_q(uri)})").df()

        return self._query(run, dataset_name, "reading items")

    def events(
        self, dataset_name: str, until: int | None = None, since: int | None = None
    ) -> pd.DataFrame:
        """Events with since <= ts < until, ordered by (ts, event_id)."""

        def run(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
            self._bind(con, dataset_name, until)
            where = f"WHERE ts >= {int(since)}" if since is not None else ""
            return con.execute(f"SELECT * FROM all_events {where} ORDER BY ts, event_id").df()

        return self._query(run, dataset_name, "reading events")

    # --- features -----------------------------------------------------------------------------

    def _feature_views(self, con: duckdb.DuckDBPyConnection) -> None:
        p = self.params
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW user_demographics AS {defs.USER_DEMOGRAPHICS.render(p)}"
        )
        con.execute(f"CREATE OR REPLACE TEMP VIEW item_metadata AS {defs.ITEM_METADATA.render(p)}")

    def _latest_sql(self, con: duckdb.DuckDBPyConnection, entity: str, as_of: int | None) -> str:
        """SQL for one row per user/item with features as of `as_of` (views already bound)."""
        if as_of is None:
            max_ts = _scalar(con, "SELECT max(ts) FROM all_events")
            as_of = int(max_ts) + 1 if max_ts is not None else 0
        self._feature_views(con)
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
                f"CREATE OR REPLACE TEMP VIEW behaviour AS "
                f"{defs.USER_BEHAVIOUR.render(self.params)}"
            )
            static = "user_demographics"
            cols = USER_FEATURE_COLUMNS
        else:
            con.execute(
                f"CREATE OR REPLACE TEMP VIEW behaviour AS "
                f"{defs.ITEM_POPULARITY.render(self.params)}"
            )
            static = "item_metadata"
            cols = ITEM_FEATURE_COLUMNS
        return (
            f"SELECT {', '.join(cols)} FROM {static} AS s "
            f"JOIN behaviour AS b ON b.point_id = CAST(s.{key} AS VARCHAR) ORDER BY {key}"
        )

    def latest_user_features(self, dataset_name: str, as_of: int | None = None) -> pd.DataFrame:
        """One row per user with features from events strictly before `as_of` (default: all)."""

        def run(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
            self._bind(con, dataset_name, as_of)
            return con.execute(self._latest_sql(con, "user", as_of)).df()

        return self._query(run, dataset_name, "user features")

    def latest_item_features(self, dataset_name: str, as_of: int | None = None) -> pd.DataFrame:
        """One row per item with features from events strictly before `as_of` (default: all)."""

        def run(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
            self._bind(con, dataset_name, as_of)
            return con.execute(self._latest_sql(con, "item", as_of)).df()

        return self._query(run, dataset_name, "item features")

    def _training_sql(
        self, con: duckdb.DuckDBPyConnection, until: int | None, since: int | None
    ) -> str:
        """Bind training-set views: history = events before `until`, points = events >= since."""
        self._feature_views(con)
        point = "event_id" if since is None else f"CASE WHEN ts >= {int(since)} THEN event_id END"
        con.execute(
            "CREATE OR REPLACE TEMP VIEW history AS "
            f"SELECT {point} AS point_id, user_id, item_id, event_type, value, ts, event_id "
            "FROM all_events"
        )
        where = f"WHERE ts >= {int(since)}" if since is not None else ""
        con.execute(f"CREATE OR REPLACE TEMP VIEW events AS SELECT * FROM all_events {where}")
        for d in (defs.CONTEXT, defs.USER_BEHAVIOUR, defs.ITEM_POPULARITY):
            con.execute(f"CREATE OR REPLACE TEMP VIEW {d.name} AS {d.render(self.params)}")
        return defs.TRAINING_SET.render(self.params)

    def training_set(
        self, dataset_name: str, until: int | None = None, since: int | None = None
    ) -> pd.DataFrame:
        """One row per event in [since, until) with point-in-time features (TRAINING_SET_COLUMNS).

        User and item behavioural features of each row use only events strictly before that
        row's `ts`; the label columns are `event_type` and `value`.
        """
        _check_cut(until, since)

        def run(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
            self._bind(con, dataset_name, until)
            return con.execute(self._training_sql(con, until, since)).df()

        return self._query(run, dataset_name, "training set")

    def export_training_set(
        self,
        dataset_name: str,
        dest: str | Path,
        until: int | None = None,
        since: int | None = None,
    ) -> int:
        """Write the training set straight to one Parquet file (bounded memory); returns rows."""
        _check_cut(until, since)
        dest = str(dest)

        def run(con: duckdb.DuckDBPyConnection) -> int:
            self._bind(con, dataset_name, until)
            tmp, n = self._copy(con, self._training_sql(con, until, since), dest)
            self._commit(tmp, dest)
            return n

        return self._query(run, dataset_name, "training set export")

    def build(self, dataset_name: str, until: int | None = None) -> dict[str, Any]:
        """Compute the latest user/item feature tables as of `until` and swap them in atomically.

        Events at or after `until` are ignored. Nothing is replaced unless every table was
        written, so a failed build leaves the previous feature tables as they were.
        """
        from rich.progress import TaskID

        from strata.progress import task

        base = self.dataset_uri(dataset_name)
        out = f"{base}/features"
        staged: dict[str, str] = {}

        def run(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
            with task(f"build features {dataset_name}", total=3) as (prog, task_id):
                t = TaskID(task_id)
                self._bind(con, dataset_name, until)
                row = con.execute("SELECT count(*), min(ts), max(ts) FROM all_events").fetchone()
                n_events, min_ts, max_ts = row if row is not None else (0, None, None)
                as_of = until if until is not None else (0 if max_ts is None else int(max_ts) + 1)
                prog.advance(t)
                counts = {}
                for entity in ("user", "item"):
                    dest = f"{out}/{entity}_features.parquet"
                    staged[dest], counts[entity] = self._copy(
                        con, self._latest_sql(con, entity, as_of), dest
                    )
                    prog.advance(t)
            return {
                "dataset": dataset_name,
                "until": until,
                "as_of": as_of,
                "events": int(n_events),
                "min_ts": None if min_ts is None else int(min_ts),
                "max_ts": None if max_ts is None else int(max_ts),
                "user_rows": counts["user"],
                "item_rows": counts["item"],
                "params": asdict(self.params),
                "path": out,
            }

        try:
            manifest = self._query(run, dataset_name, "feature build")
            for dest, tmp in staged.items():
                self._commit(tmp, dest)
            self._write_json(f"{out}/manifest.json", manifest)
        except BaseException:
            self._discard(staged.values())
            raise
        log.info("built features for %s as of %s", dataset_name, manifest["as_of"])
        return manifest

    def built_features(self, dataset_name: str, entity: str) -> pd.DataFrame:
        """The feature table written by the last `build` (entity: user | item)."""
        if entity not in ("user", "item"):
            raise ValidationError("entity", f"expected user or item, got {entity!r}")
        uri = f"{self.dataset_uri(dataset_name)}/features/{entity}_features.parquet"
        cols = USER_FEATURE_COLUMNS if entity == "user" else ITEM_FEATURE_COLUMNS

        def run(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
            self._check_parquet(con, uri, cols)
            return con.execute(f"SELECT * FROM read_parquet({_q(uri)})").df()

        return self._query(run, dataset_name, f"reading {entity} features")

    def _write_json(self, dest: str, obj: dict[str, Any]) -> None:
        text = json.dumps(obj, indent=2, sort_keys=True, default=str)
        if self._s3:
            # One CSV "cell" with quoting off and a delimiter JSON never contains: the raw text.
            with self._connect() as con:
                con.execute(
                    f"COPY (SELECT {_q(text)} AS manifest) TO {_q(dest)} (FORMAT csv, "
                    "HEADER false, QUOTE '', ESCAPE '', DELIMITER '\x1f')"
                )
            return
        tmp = Path(f"{dest}.tmp-{uuid.uuid4().hex}")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, dest)

    # --- content embeddings -------------------------------------------------------------------

    def write_item_content(self, dataset_name: str, df: pd.DataFrame) -> int:
        """Store content embeddings (ITEM_CONTENT_COLUMNS), replacing the table atomically."""
        import numpy as np
        import pyarrow as pa

        source = f"{dataset_name}:item_content"
        check_columns(df, ITEM_CONTENT_COLUMNS, source)
        if df["item_id"].duplicated().any():
            raise DataError(source, "duplicate item_id")
        for col in ("text_emb", "image_emb"):
            lens = {len(v) for v in df[col] if v is not None}
            if len(lens) > 1:
                raise DataError(source, f"{col} has mixed lengths {sorted(lens)}")
        table = pa.table(
            {
                "item_id": pa.array(df["item_id"].to_numpy(np.int64)),
                "text_emb": pa.array(
                    [None if v is None else np.asarray(v, np.float32) for v in df["text_emb"]],
                    type=pa.list_(pa.float32()),
                ),
                "image_emb": pa.array(
                    [None if v is None else np.asarray(v, np.float32) for v in df["image_emb"]],
                    type=pa.list_(pa.float32()),
                ),
                "has_text": pa.array(df["has_text"].astype(bool)),
                "has_image": pa.array(df["has_image"].astype(bool)),
            }
        )
        dest = f"{self.dataset_uri(dataset_name)}/item_content.parquet"
        with self._connect() as con:
            con.register("content_in", table)
            tmp, _ = self._copy(con, "SELECT * FROM content_in ORDER BY item_id", dest)
        self._commit(tmp, dest)
        return table.num_rows

    def item_content(self, dataset_name: str) -> pd.DataFrame:
        """The stored content embeddings table."""
        uri = f"{self.dataset_uri(dataset_name)}/item_content.parquet"

        def run(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
            self._check_parquet(con, uri, ITEM_CONTENT_COLUMNS)
            return con.execute(f"SELECT * FROM read_parquet({_q(uri)})").df()

        return self._query(run, dataset_name, "reading item_content")

    def delete_dataset(self, dataset_name: str) -> None:
        """Remove a local dataset folder (tests, re-ingest from scratch)."""
        if self._s3:
            raise ValidationError("offline.uri", "delete_dataset is local-only")
        shutil.rmtree(self.dataset_uri(dataset_name), ignore_errors=False)


# --- helpers ------------------------------------------------------------------------------------


def ingest_dataset(store: OfflineStore, ds: Any, name: str | None = None) -> dict[str, int]:
    """Ingest a `RecDataset` (users, items, interactions) under `name` (default `ds.name`)."""
    return store.ingest(name or ds.name, ds.users, ds.items, [ds.interactions])


def build_dataset(
    settings: Settings, name: str, until: int | None = None, path: Path | None = None
) -> dict[str, Any]:
    """Load dataset `name`, ingest it and build its feature tables (what the CLI runs)."""
    from strata.datasets import load

    ds = load(name, path=path, settings=settings)
    store = OfflineStore(settings)
    counts = ingest_dataset(store, ds, name)
    manifest = store.build(name, until=until)
    return {**manifest, "users": counts["users"], "items": counts["items"]}


def _check_cut(until: int | None, since: int | None) -> None:
    if until is not None and since is not None and since >= until:
        raise ValidationError("since", f"must be < until ({since} >= {until})")


def _day(ts: int) -> str:
    return datetime.fromtimestamp(int(ts) // 86400 * 86400, tz=UTC).strftime("%Y-%m-%d")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _normalize_users(df: pd.DataFrame, source: str) -> pd.DataFrame:
    check_columns(df, USER_COLUMNS, source)
    out = df.copy()
    if out["user_id"].isna().any():
        raise DataError(source, "user_id has nulls")
    if out["user_id"].duplicated().any():
        raise DataError(source, "duplicate user_id")
    try:
        out["user_id"] = out["user_id"].astype("int64")
        out["age"] = out["age"].fillna(0).astype("int16")
    except (TypeError, ValueError) as exc:
        raise DataError(source, f"user_id/age are not integers ({exc})") from None
    for col in ("gender", "occupation", "zip"):
        out[col] = out[col].fillna("").astype(str)
    return out.reset_index(drop=True)


def _normalize_items(df: pd.DataFrame, source: str) -> pd.DataFrame:
    check_columns(df, ITEM_COLUMNS, source)
    out = df.copy()
    if out["item_id"].isna().any():
        raise DataError(source, "item_id has nulls")
    if out["item_id"].duplicated().any():
        raise DataError(source, "duplicate item_id")
    try:
        out["item_id"] = out["item_id"].astype("int64")
        out["year"] = out["year"].astype("Int16")
    except (TypeError, ValueError) as exc:
        raise DataError(source, f"item_id/year are not integers ({exc})") from None

    def as_list(v: object) -> list[str]:
        if v is None or (isinstance(v, float) and v != v):
            return []
        if isinstance(v, str):
            return [g for g in v.split("|") if g]
        try:
            return [str(g) for g in v]  # type: ignore[attr-defined]
        except TypeError:
            raise DataError(source, f"genres must be a list of strings, got {v!r}") from None

    out["genres"] = [as_list(v) for v in out["genres"]]
    if "category" not in out.columns:
        # One categorical per item for "top category": the first genre when none is given.
        out["category"] = [g[0] if g else "" for g in out["genres"]]
    out["category"] = out["category"].fillna("").astype(str)
    out["title"] = out["title"].fillna("").astype(str)
    out["description"] = out["description"].fillna("").astype(str)
    out["image_path"] = out["image_path"].astype(object).where(out["image_path"].notna(), None)
    return out.reset_index(drop=True)


def _normalize_events(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Contract columns only, canonical dtypes, valid values; duplicates within df dropped."""
    import numpy as np
    import pandas as pd

    check_columns(df, INTERACTION_COLUMNS, source)
    out = df.loc[:, list(INTERACTION_COLUMNS)].copy()
    for col in ("event_id", "user_id", "item_id", "ts", "event_type"):
        if out[col].isna().any():
            raise DataError(source, f"{col} has {int(out[col].isna().sum())} nulls")
    try:
        out["user_id"] = out["user_id"].astype(np.int64)
        out["item_id"] = out["item_id"].astype(np.int64)
        out["ts"] = out["ts"].astype(np.int64)
        out["value"] = out["value"].fillna(1.0).astype(np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(source, f"user_id/item_id/ts/value have bad types ({exc})") from None
    if (out["ts"] < 0).any():
        raise DataError(source, "ts has negative values")
    out["event_id"] = out["event_id"].astype(str)
    out["event_type"] = out["event_type"].astype(str)
    bad = ~out["event_type"].isin(EVENT_TYPES)
    if bad.any():
        raise DataError(
            source,
            f"event_type {sorted(set(out.loc[bad, 'event_type']))[:5]} not in {list(EVENT_TYPES)}",
        )
    out["device"] = out["device"].fillna("unknown").astype(str)
    out = out.drop_duplicates("event_id", keep="first")
    out = out.sort_values(["ts", "event_id"], kind="stable").reset_index(drop=True)
    return pd.DataFrame(out)


__all__ = [
    "TRAINING_SET_COLUMNS",
    "OfflineStore",
    "build_dataset",
    "ingest_dataset",
    "parse_ts",
]
