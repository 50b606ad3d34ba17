"""The offline store's feature SQL on Athena: the same portable definitions, transpiled by sqlglot
to Athena's (Trino) SQL and submitted through boto3, over the store's `s3://` Parquet layout
(`strata features build --engine athena`).

Athena reads tables of a Glue database, not files, so the build first declares the dataset's
files as external tables (re-declared on every build, so they follow the store):

- `<ds>_events`: the `events/date=YYYY-MM-DD/` partitions, by partition projection (no crawler,
  no `MSCK REPAIR`: a new day is visible at once);
- `<ds>_users`, `<ds>_items`: single Parquet files, declared through a symlink manifest (one line
  naming the file) written beside them, the documented way Athena reads a chosen file list.

Each output is a CTAS (`CREATE TABLE ... WITH (format = 'PARQUET', external_location = ...) AS`)
of the point-in-time views composed into one WITH query, under
`<ds>/features/athena/<run>/<table>/` (Athena writes a folder of Parquet parts). Queries are
polled to the end; a failed one is a DataError carrying Athena's reason.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any

from strata.errors import DataError, ValidationError
from strata.features import pit
from strata.features.definitions import FeatureParams
from strata.features.normalize import EVENT_SQL_TYPES, ITEM_SQL_TYPES, USER_SQL_TYPES
from strata.features.offline import DATASET_META

if TYPE_CHECKING:
    from strata.features.offline import OfflineStore

#: DuckDB column types of the stored Parquet files -> Hive DDL types (what Athena's DDL takes).
HIVE_TYPES = {
    "BIGINT": "bigint",
    "INTEGER": "int",
    "SMALLINT": "smallint",
    "TINYINT": "tinyint",
    "DOUBLE": "double",
    "FLOAT": "float",
    "BOOLEAN": "boolean",
    "VARCHAR": "string",
    "DATE": "date",
    "TIMESTAMP": "timestamp",
    "TIMESTAMP WITH TIME ZONE": "timestamp",
}
SYMLINK_INPUT = "org.apache.hadoop.hive.ql.io.SymlinkTextInputFormat"
PARQUET_SERDE = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


def to_athena(sql: str) -> str:
    """A definition (portable DuckDB-dialect SQL) in Athena's SQL."""
    import sqlglot

    return str(sqlglot.transpile(sql, read="duckdb", write="athena")[0])


def hive_type(duck: str) -> str:
    """A DuckDB column type as a Hive DDL type (lists become array<...>)."""
    t = duck.upper()
    if t.endswith("[]"):
        return f"array<{hive_type(t[:-2])}>"
    if t.startswith("DECIMAL"):
        return t.lower()
    if t not in HIVE_TYPES:
        raise DataError("athena", f"no Athena type for a stored column of type {duck}")
    return HIVE_TYPES[t]


def table_prefix(dataset_name: str) -> str:
    """Glue table names take [a-z0-9_]: `movielens-100k` -> `movielens_100k`."""
    return "".join(c if c.isalnum() else "_" for c in dataset_name.lower())


class AthenaEngine:
    """Declares a dataset's files in Glue and runs the point-in-time views as Athena CTAS."""

    def __init__(self, store: OfflineStore, client: Any = None) -> None:
        if not store.root.startswith("s3://"):
            raise ValidationError(
                "offline.uri", "the athena engine reads an s3:// offline store root"
            )
        self.store = store
        self.cfg = store.settings.offline
        self.client = client if client is not None else self._client()
        self.submitted: list[str] = []  # every query id, in order
        self._s3_client: Any = None
        self.output = (self.cfg.athena_output or f"{store.root}/athena-results").rstrip("/") + "/"

    def _client(self, service: str = "athena") -> Any:
        """A boto3 client; endpoints follow the AWS environment (AWS_ENDPOINT_URL_ATHENA,
        AWS_ENDPOINT_URL_S3: a local moto server in the tests)."""
        import boto3

        return boto3.client(service, region_name=self.cfg.athena_region or self.cfg.s3_region)

    def _s3(self, uri: str, body: str | None = None) -> str | None:
        """PUT `body` at s3:// `uri`, or GET it (None when absent): boto3, like the queries."""
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if self._s3_client is None:
            self._s3_client = self._client("s3")
        s3 = self._s3_client
        if body is not None:
            s3.put_object(Bucket=bucket, Key=key, Body=body.encode())
            return body
        try:
            return str(s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode())
        except s3.exceptions.NoSuchKey:
            return None

    def params(self, dataset_name: str) -> FeatureParams:
        """The store's feature parameters with the dataset's declarations (its dataset.json)."""
        text = self._s3(f"{self.store.dataset_uri(dataset_name)}/{DATASET_META}")
        return self.store.params.with_meta(json.loads(text) if text else {})

    def source_ddl(self, dataset_name: str) -> list[str]:
        """DDL declaring `<ds>_users`, `<ds>_items` (symlink manifests) and `<ds>_events`."""
        base = self.store.dataset_uri(dataset_name)
        db, pre = self.cfg.athena_database, table_prefix(dataset_name)
        out = [f"CREATE DATABASE IF NOT EXISTS `{db}`"]
        # The contract columns (Parquet is read by name: a dataset's extra columns stay out).
        for table, types in (("users", USER_SQL_TYPES), ("items", ITEM_SQL_TYPES)):
            cols = ", ".join(f"`{c}` {hive_type(t)}" for c, t in types.items())
            link = f"{base}/_athena/{table}/"
            self._s3(f"{link}manifest", f"{base}/{table}.parquet\n")
            out += [
                f"DROP TABLE IF EXISTS `{db}`.`{pre}_{table}`",
                f"CREATE EXTERNAL TABLE `{db}`.`{pre}_{table}` ({cols}) "
                f"ROW FORMAT SERDE '{PARQUET_SERDE}' STORED AS INPUTFORMAT '{SYMLINK_INPUT}' "
                "OUTPUTFORMAT 'org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat' "
                f"LOCATION '{link}'",
            ]
        cols = ", ".join(f"`{c}` {hive_type(t)}" for c, t in EVENT_SQL_TYPES.items())
        events = f"{base}/events/"
        out += [
            f"DROP TABLE IF EXISTS `{db}`.`{pre}_events`",
            f"CREATE EXTERNAL TABLE `{db}`.`{pre}_events` ({cols}) PARTITIONED BY (`date` string) "
            f"STORED AS PARQUET LOCATION '{events}' TBLPROPERTIES ("
            "'projection.enabled' = 'true', 'projection.date.type' = 'date', "
            "'projection.date.format' = 'yyyy-MM-dd', 'projection.date.range' = '1970-01-01,NOW', "
            "'projection.date.interval' = '1', 'projection.date.interval.unit' = 'DAYS', "
            f"'storage.location.template' = '{events}date=${{date}}/')",
        ]
        return out

    def _sources(self, dataset_name: str, until: int) -> list[pit.View]:
        db, pre = self.cfg.athena_database, table_prefix(dataset_name)
        typed = ", ".join(f"CAST({c} AS {t}) AS {c}" for c, t in EVENT_SQL_TYPES.items())
        where = f" WHERE ts < {int(until)}"
        return [
            ("users", f'SELECT * FROM "{db}"."{pre}_users"'),
            ("items", f'SELECT * FROM "{db}"."{pre}_items"'),
            ("all_events", f'SELECT {typed} FROM "{db}"."{pre}_events"{where}'),
        ]

    def ctas(self, table: str, location: str, views: list[pit.View]) -> str:
        """`CREATE TABLE <table> ... AS` the composed views (Athena SQL)."""
        return (
            f'CREATE TABLE "{self.cfg.athena_database}"."{table}" WITH (format = \'PARQUET\', '
            f"write_compression = 'ZSTD', external_location = '{location}') AS\n"
            + to_athena(pit.compose(views))
        )

    def build_statements(
        self,
        dataset_name: str,
        until: int,
        run: str,
        training_since: int | None = None,
        training: str | None = None,
    ) -> list[tuple[str, str]]:
        """(table, CTAS) for the user/item features as of `until` (and the training set of the
        events before it, written under the s3:// prefix `training`)."""
        params = self.params(dataset_name)
        pre = table_prefix(dataset_name)
        base = f"{self.store.dataset_uri(dataset_name)}/features/athena/{run}"
        src = self._sources(dataset_name, until)
        out = []
        for entity in ("user", "item"):
            views = [*src, *pit.latest_views(params, entity, until)]
            name = f"{entity}_features"
            out.append((name, self.ctas(f"{pre}_{name}_{run}", f"{base}/{name}/", views)))
        if training is not None:
            views = [*src, *pit.training_views(params, training_since)]
            location = training.rstrip("/") + "/"
            out.append(("training_set", self.ctas(f"{pre}_training_set_{run}", location, views)))
        return out

    # --- running ------------------------------------------------------------------------------

    def execute(self, sql: str) -> dict[str, Any]:
        """Submit one query and poll it to a terminal state; its QueryExecution."""
        qid = self.client.start_query_execution(
            QueryString=sql,
            QueryExecutionContext={"Database": self.cfg.athena_database},
            ResultConfiguration={"OutputLocation": self.output},
            WorkGroup=self.cfg.athena_workgroup,
        )["QueryExecutionId"]
        self.submitted.append(qid)
        deadline = time.monotonic() + self.cfg.athena_timeout_s
        while True:
            qe: dict[str, Any] = self.client.get_query_execution(QueryExecutionId=qid)[
                "QueryExecution"
            ]
            state = qe["Status"]["State"]
            if state == "SUCCEEDED":
                return qe
            if state in TERMINAL:
                reason = qe["Status"].get("StateChangeReason", "no reason given")
                raise DataError(f"athena:{qid}", f"query {state.lower()}: {reason}")
            if time.monotonic() > deadline:
                self.client.stop_query_execution(QueryExecutionId=qid)
                raise DataError(f"athena:{qid}", f"query still {state} after the timeout")
            time.sleep(self.cfg.athena_poll_s)

    def newest_ts(self, dataset_name: str) -> int:
        """max(ts) of the dataset's events (-1 when it has none), by an Athena query."""
        db, pre = self.cfg.athena_database, table_prefix(dataset_name)
        qe = self.execute(f'SELECT max(ts) FROM "{db}"."{pre}_events"')
        rows = self.client.get_query_results(QueryExecutionId=qe["QueryExecutionId"])
        data = rows["ResultSet"]["Rows"]
        value = data[1]["Data"][0].get("VarCharValue") if len(data) > 1 else None
        return int(value) if value not in (None, "") else -1

    def build(
        self,
        dataset_name: str,
        until: int | None = None,
        training: str | None = None,
        since: int | None = None,
    ) -> dict[str, Any]:
        """Declare the sources, run every CTAS; a summary naming the tables and locations.
        `training`: an s3:// prefix (empty, as CTAS wants) for the point-in-time training set."""
        if training is not None and not training.startswith("s3://"):
            raise ValidationError("--training-set", "athena writes it under an s3:// prefix")
        first = len(self.submitted)
        for sql in self.source_ddl(dataset_name):
            self.execute(sql)
        if until is None:  # one second past the newest event, asked of Athena itself
            until = self.newest_ts(dataset_name) + 1
        run = f"r{int(time.time())}_{uuid.uuid4().hex[:6]}"
        tables = {}
        for name, sql in self.build_statements(dataset_name, until, run, since, training):
            self.execute(sql)
            tables[name] = f"{table_prefix(dataset_name)}_{name}_{run}"
        return {
            "dataset": dataset_name,
            "engine": "athena",
            "database": self.cfg.athena_database,
            "until": until,
            "as_of": until,
            "run": run,
            "tables": tables,
            "path": f"{self.store.dataset_uri(dataset_name)}/features/athena/{run}",
            "queries": self.submitted[first:],
        }
