"""The offline store's feature SQL on Spark: the same portable definitions, transpiled by sqlglot
to Spark SQL, over the same Parquet layout (`strata features build --engine spark`).

`users`, `items` and `all_events` become temp views over the dataset's Parquet files (events
cast to the contract types and cut at `until`); the point-in-time views of `strata.features.pit`
are registered on top, and the result is written as one Parquet file per table, committed the
way the DuckDB engine commits (temp name, then rename), so the readers of the offline store see
the same files whichever engine built them. The session runs on `offline.spark_master`:
`local[N]` in-process, or a cluster master (spark://, k8s://, yarn) whose executors see the same
filesystem path (a shared volume). `s3://` roots are for the athena engine.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from strata.errors import ConfigError, DataError, ValidationError
from strata.features import pit
from strata.features.normalize import EVENT_SQL_TYPES
from strata.features.parquet_files import first_line
from strata.features.pit import build_manifest

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from strata.config import Settings
    from strata.features.offline import OfflineStore

log = logging.getLogger(__name__)


def to_spark(sql: str) -> str:
    """A definition (portable DuckDB-dialect SQL) in Spark SQL."""
    import sqlglot

    return str(sqlglot.transpile(sql, read="duckdb", write="spark")[0])


def session(settings: Settings) -> SparkSession:
    """The Spark session of `offline.spark_master` (created once per process, UTC clock)."""
    from pyspark.sql import SparkSession

    cfg = settings.offline
    spark = (
        SparkSession.builder.master(cfg.spark_master)
        .appName("strata-features")
        .config("spark.driver.memory", cfg.spark_driver_memory)
        .config("spark.sql.shuffle.partitions", str(cfg.spark_shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.local.dir", str(settings.home / "tmp" / "spark"))
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


class SparkEngine:
    """Runs the point-in-time views of one offline store on Spark."""

    def __init__(self, store: OfflineStore) -> None:
        if store.root.startswith("s3://"):
            raise ValidationError(
                "offline.engine",
                "spark runs over a local or shared filesystem root; use athena for s3://",
            )
        self.store = store
        self._bound: tuple[str, int | None] | None = None  # what `all_events` holds now
        self._cached: list[DataFrame] = []  # released by close()
        try:
            self.spark = session(store.settings)
        except ImportError:
            msg = "the spark engine needs pyspark: pip install 'strata[spark]'"
            raise ConfigError(msg) from None
        except Exception as exc:  # no JVM, a bad master: the one line that says which
            raise ConfigError(
                f"spark engine: no session on {store.settings.offline.spark_master!r} "
                f"({first_line(exc)}); it needs Java 17+ (Debian: openjdk-17-jre-headless)"
            ) from None

    def bind(self, dataset_name: str, until: int | None) -> None:
        """Temp views `users`, `items`, `all_events` (ts < until) over the dataset's files
        (kept while the same cut is asked for again: build, then the training set)."""
        if self._bound == (dataset_name, until):
            return
        self.close()
        base = self.store.dataset_uri(dataset_name)
        with self.store._connect() as con:  # the file list and its checks are the store's
            files = self.store._event_files(con, dataset_name, until=until)
        read = self.spark.read.parquet
        read(f"{base}/users.parquet").createOrReplaceTempView("users")
        read(f"{base}/items.parquet").createOrReplaceTempView("items")
        typed = ", ".join(f"CAST({c} AS {t}) AS {c}" for c, t in EVENT_SQL_TYPES.items())
        if files:
            read(*files).createOrReplaceTempView("raw_events")
            where = f" WHERE ts < {int(until)}" if until is not None else ""
            body = f"SELECT {typed} FROM raw_events{where}"
        else:
            nulls = ", ".join(f"NULL AS {c}" for c in EVENT_SQL_TYPES)
            body = f"SELECT {typed} FROM (SELECT {nulls}) AS e WHERE 1 = 0"
        # Cached: every definition reads the log several times (Spark re-reads a plain view).
        self._cache(self.spark.sql(to_spark(body))).createOrReplaceTempView("all_events")
        self._bound = (dataset_name, until)

    def _cache(self, df: DataFrame) -> DataFrame:
        self._cached.append(df.cache())
        return df

    def close(self) -> None:
        """Release the cached relations (the session stays for the next engine)."""
        for df in self._cached:
            df.unpersist()
        self._cached.clear()
        self._bound = None

    def run(self, views: list[pit.View]) -> DataFrame:
        """Register all but the last view; the last one's DataFrame."""
        *ctes, (_, last) = views
        for name, sql in ctes:
            df = self.spark.sql(to_spark(sql))
            if name == "history":  # read by every behaviour CTE: computed once per result
                df = self._cache(df)
            df.createOrReplaceTempView(name)
        return self.spark.sql(to_spark(last))

    def write(self, df: DataFrame, dest: str) -> tuple[str, int]:
        """Write `df` as one Parquet file (row order kept) to a temp name beside `dest`, for
        the store's `_commit`; returns (temp name, rows)."""
        tmp = f"{dest}.tmp-{uuid.uuid4().hex}"
        parts = f"{tmp}.parts"
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        try:
            df.coalesce(1).write.option("compression", "zstd").parquet(parts)
            (part,) = glob.glob(f"{parts}/part-*.parquet")
            os.replace(part, tmp)
        finally:
            shutil.rmtree(parts, ignore_errors=True)
        import pyarrow.parquet as pq

        return tmp, int(pq.ParquetFile(tmp).metadata.num_rows)

    def _guard(self, what: str, dataset_name: str, fn: Any) -> Any:
        """Spark's SQL and IO errors become a DataError naming the dataset (no JVM trace)."""
        from py4j.protocol import Py4JJavaError
        from pyspark.errors import PySparkException

        try:
            return fn()
        except (PySparkException, Py4JJavaError) as exc:
            uri = self.store.dataset_uri(dataset_name)
            raise DataError(uri, f"{what} on spark failed: {first_line(exc)}") from None

    def export_training_set(
        self, dataset_name: str, dest: str, until: int | None = None, since: int | None = None
    ) -> int:
        """The point-in-time training set (as `OfflineStore.export_training_set`) to `dest`."""

        def go() -> int:
            self.bind(dataset_name, until)
            views = pit.training_views(self.store.params_for(dataset_name), since)
            tmp, n = self.write(self.run(views), dest)
            self.store._commit(tmp, dest)
            return n

        return int(self._guard("training set export", dataset_name, go))

    def build(self, dataset_name: str, until: int | None = None) -> dict[str, Any]:
        """The latest user/item feature tables as of `until` (as `OfflineStore.build`), swapped
        in together only once every table is written."""
        out = f"{self.store.dataset_uri(dataset_name)}/features"
        params = self.store.params_for(dataset_name)
        staged: dict[str, str] = {}

        def go() -> dict[str, Any]:
            t0 = time.perf_counter()
            self.bind(dataset_name, until)
            row = self.spark.sql("SELECT count(*), min(ts), max(ts) FROM all_events").first()
            n_events, min_ts, max_ts = (row[0], row[1], row[2]) if row else (0, None, None)
            as_of = until if until is not None else (0 if max_ts is None else int(max_ts) + 1)
            counts = {}
            for entity in ("user", "item"):
                dest = f"{out}/{entity}_features.parquet"
                df = self.run(pit.latest_views(params, entity, as_of))
                staged[dest], counts[entity] = self.write(df, dest)
            log.info("spark built %s in %.1fs", dataset_name, time.perf_counter() - t0)
            stats = (n_events, min_ts, max_ts)
            return build_manifest(dataset_name, until, as_of, stats, counts, params, out)

        try:
            manifest: dict[str, Any] = self._guard("feature build", dataset_name, go)
            mf = f"{out}/manifest.json"
            staged[mf] = self.store._stage_json(mf, manifest)
            for dest, tmp in staged.items():
                self.store._commit(tmp, dest)
        except BaseException:
            self.store._discard(staged.values())
            raise
        return manifest
