"""Offline feature store: Parquet files queried with DuckDB, point-in-time-correct training sets.

Layout under `<offline_uri>/<dataset>/`:

    users.parquet, items.parquet               entity tables (sorted by key)
    dataset.json                               the log's event types and the positives' weights
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

import logging
import shutil
from collections.abc import Iterable, Sequence
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
from strata.features.definitions import FeatureParams
from strata.features.normalize import (
    EVENT_SQL_TYPES,
    ITEM_SQL_TYPES,
    USER_SQL_TYPES,
    items_arrow,
    normalize_events,
    normalize_items,
    normalize_users,
    typed_select,
)
from strata.features.parquet_files import ParquetFiles, day_of, first_line, scalar, sql_quote
from strata.features.pit import (
    bind,
    build_manifest,
    latest_sql,
    popularity_views,
    training_sql,
)
from strata.features.schema import (
    ITEM_CONTENT_COLUMNS,
    ITEM_FEATURE_COLUMNS,
    user_feature_columns,
)

if TYPE_CHECKING:
    import duckdb
    import pandas as pd

log = logging.getLogger(__name__)
#: What a dataset declares about its log, written at ingest (see `OfflineStore.dataset_meta`).
DATASET_META = "dataset.json"


class OfflineStore(ParquetFiles):
    """Parquet + DuckDB offline store for one `offline_uri` (local folder or s3://)."""

    def __init__(self, settings: Settings, params: FeatureParams | None = None) -> None:
        super().__init__(settings)
        self.params = params or FeatureParams()

    # --- what a dataset declares ----------------------------------------------------------------

    def dataset_meta(self, dataset_name: str) -> dict[str, Any]:
        """`dataset.json` written at ingest: event types and positives' weights (or {})."""
        return self._read_json(f"{self.dataset_uri(dataset_name)}/{DATASET_META}") or {}

    def event_types(self, dataset_name: str) -> tuple[str, ...]:
        """The event types of a dataset's log (per-user count features are made for each)."""
        return self.params_for(dataset_name).event_types

    def params_for(self, dataset_name: str) -> FeatureParams:
        """The store's feature parameters with the dataset's own event types and time zone."""
        return self.params.with_meta(self.dataset_meta(dataset_name))

    # --- ingest -------------------------------------------------------------------------------

    def ingest(
        self,
        dataset_name: str,
        users: pd.DataFrame,
        items: pd.DataFrame,
        event_chunks: Iterable[pd.DataFrame],
        declared: dict[str, Any] | None = None,
    ) -> dict[str, int]:
        """Write users/items and merge event chunks into the log; atomic and idempotent.

        Everything is staged first and renamed into place only when every chunk validated, so
        a bad chunk leaves the store as it was. What the dataset `declared`
        (`RecDataset.declared`: event types, positives, time zone) is kept in `dataset.json`.
        Returns row counts (new events only).
        """
        from strata.progress import track

        base = self.dataset_uri(dataset_name)
        types = tuple((declared or {}).get("event_types", EVENT_TYPES))
        users_df = normalize_users(users, f"{dataset_name}:users")
        items_df = normalize_items(items, f"{dataset_name}:items")
        staged: dict[str, str] = {}  # final uri -> temp uri
        new_events = 0
        try:
            with self._connect() as con:
                con.register("users_in", users_df)
                con.register("items_in", items_arrow(items_df))
                staged[f"{base}/users.parquet"], _ = self._copy(
                    con,
                    typed_select("users_in", USER_SQL_TYPES, "user_id"),
                    f"{base}/users.parquet",
                )
                staged[f"{base}/items.parquet"], _ = self._copy(
                    con,
                    typed_select("items_in", ITEM_SQL_TYPES, "item_id"),
                    f"{base}/items.parquet",
                )
                con.unregister("users_in")
                con.unregister("items_in")
                for i, chunk in enumerate(track(event_chunks, "ingest events")):
                    new_events += self._stage_events(
                        con,
                        base,
                        normalize_events(chunk, f"{dataset_name}:events[{i}]", types),
                        staged,
                    )
            for dest, tmp in staged.items():
                self._commit(tmp, dest)
            self._write_json(f"{base}/{DATASET_META}", declared or {})
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
        events = normalize_events(df, f"{dataset_name}:events", self.event_types(dataset_name))
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
            date = day_of(int(day) * 86400)
            dest = f"{base}/events/date={date}/part-0.parquet"
            con.register("new_part", part)
            sources = ["SELECT " + cols + ", 1 AS src FROM new_part"]
            existing = staged.get(dest) or (dest if self._exists(con, dest) else None)
            if existing is not None:
                self._check_parquet(con, existing, INTERACTION_COLUMNS)
                sources.insert(
                    0, f"SELECT {cols}, 0 AS src FROM read_parquet({sql_quote(existing)})"
                )
                n_before = int(
                    scalar(con, f"SELECT count(*) FROM read_parquet({sql_quote(existing)})")
                )
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
            f"read_parquet({sql_quote(base + '/users.parquet')})"
        )
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW items AS SELECT * FROM "
            f"read_parquet({sql_quote(base + '/items.parquet')})"
        )
        typed = ", ".join(f"CAST({c} AS {t}) AS {c}" for c, t in EVENT_SQL_TYPES.items())
        if files:
            src = f"read_parquet([{', '.join(sql_quote(f) for f in files)}])"
            where = f"WHERE ts < {int(until)}" if until is not None else ""
            body = f"SELECT {typed} FROM {src} {where}"
        else:
            nulls = ", ".join(f"NULL AS {c}" for c in EVENT_SQL_TYPES)
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
                    self.dataset_uri(dataset_name), f"{what} failed: {first_line(exc)}"
                ) from None

    def users(self, dataset_name: str) -> pd.DataFrame:
        """The stored users table."""
        uri = f"{self.dataset_uri(dataset_name)}/users.parquet"

        def run(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
            self._check_parquet(con, uri, USER_COLUMNS)
            return con.execute(f"SELECT * FROM read_parquet({sql_quote(uri)})").df()

        return self._query(run, dataset_name, "reading users")

    def items(self, dataset_name: str) -> pd.DataFrame:
        """The stored items table (with the derived `category` column)."""
        uri = f"{self.dataset_uri(dataset_name)}/items.parquet"

        def run(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
            self._check_parquet(con, uri, ITEM_COLUMNS)
            return con.execute(f"SELECT * FROM read_parquet({sql_quote(uri)})").df()

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

    def latest_user_features(self, dataset_name: str, as_of: int | None = None) -> pd.DataFrame:
        """One row per user with features from events strictly before `as_of` (default: all)."""
        return self._latest(dataset_name, "user", as_of)

    def latest_item_features(self, dataset_name: str, as_of: int | None = None) -> pd.DataFrame:
        """One row per item with features from events strictly before `as_of` (default: all)."""
        return self._latest(dataset_name, "item", as_of)

    def _latest(self, dataset_name: str, entity: str, as_of: int | None) -> pd.DataFrame:
        def run(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
            self._bind(con, dataset_name, as_of)
            return con.execute(latest_sql(con, self.params_for(dataset_name), entity, as_of)).df()

        return self._query(run, dataset_name, f"{entity} features")

    def item_popularity_at(self, dataset_name: str, times: Sequence[int]) -> pd.DataFrame:
        """Item behaviour features of every item at each of `times` (each from the events
        strictly before it, as `latest_item_features(as_of=t)`) in one query: columns item_id,
        as_of, item_n_events, item_n_users, item_mean_value, ordered by (as_of, item_id)."""
        ts = sorted({int(t) for t in times})
        if not ts:
            raise ValueError("item_popularity_at needs at least one time")

        def run(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
            self._bind(con, dataset_name, ts[-1])
            return con.execute(bind(con, popularity_views(self.params_for(dataset_name), ts))).df()

        return self._query(run, dataset_name, "item popularity")

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
            return con.execute(training_sql(con, self.params_for(dataset_name), since)).df()

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
            sql = training_sql(con, self.params_for(dataset_name), since)
            tmp, n = self._copy(con, sql, dest)
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
        params = self.params_for(dataset_name)

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
                        con, latest_sql(con, params, entity, as_of), dest
                    )
                    prog.advance(t)
            return build_manifest(dataset_name, until, as_of, (n_events, min_ts, max_ts), counts,
                                  params, out)  # fmt: skip

        try:
            manifest = self._query(run, dataset_name, "feature build")
            # staged too, so a full disk fails before any table is replaced
            staged[f"{out}/manifest.json"] = self._stage_json(f"{out}/manifest.json", manifest)
            for dest, tmp in staged.items():
                self._commit(tmp, dest)
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
        p = self.params_for(dataset_name)
        user = user_feature_columns(p.event_types, p.item_attrs)
        cols = user if entity == "user" else ITEM_FEATURE_COLUMNS

        def run(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
            self._check_parquet(con, uri, cols)
            return con.execute(f"SELECT * FROM read_parquet({sql_quote(uri)})").df()

        return self._query(run, dataset_name, f"reading {entity} features")

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
            return con.execute(f"SELECT * FROM read_parquet({sql_quote(uri)})").df()

        return self._query(run, dataset_name, "reading item_content")

    def delete_dataset(self, dataset_name: str) -> None:
        """Remove a local dataset folder (tests, re-ingest from scratch)."""
        if self._s3:
            raise ValidationError("offline.uri", "delete_dataset is local-only")
        shutil.rmtree(self.dataset_uri(dataset_name), ignore_errors=False)


# --- helpers ------------------------------------------------------------------------------------


def ingest_dataset(store: OfflineStore, ds: Any, name: str | None = None) -> dict[str, int]:
    """Ingest a `RecDataset` (users, items, interactions) under `name` (default `ds.name`)."""
    return store.ingest(name or ds.name, ds.users, ds.items, [ds.interactions], ds.declared())


def _check_cut(until: int | None, since: int | None) -> None:
    if until is not None and since is not None and since >= until:
        raise ValidationError("since", f"must be < until ({since} >= {until})")


__all__ = ["OfflineStore", "ingest_dataset"]
