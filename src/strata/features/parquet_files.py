"""The offline store's files: a local folder or an `s3://` prefix of Parquet files read and
written through DuckDB (httpfs for S3), with temp-name-then-rename commits locally (an S3 PUT is
atomic by itself) and a validity check of every Parquet file before it is read."""

from __future__ import annotations

import glob
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from strata.atomic import atomic_path, atomic_write_text, writing
from strata.config import Settings
from strata.datasets.base import (
    INTERACTION_COLUMNS,
)
from strata.duckio import load_httpfs
from strata.errors import DataError, NotFoundError, ValidationError

if TYPE_CHECKING:
    import duckdb


def scalar(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    row = con.execute(sql).fetchone()
    return None if row is None else row[0]


#: Local Parquet files already validated by `_check_parquet`: (uri, required) -> stat stamp.
_CHECKED: dict[tuple[str, tuple[str, ...]], tuple[int, int, int]] = {}
_CHECKED_MAX = 100_000


def _is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def sql_quote(text: str) -> str:
    """Quote a string literal for SQL (paths go into COPY/read_parquet, which take no params)."""
    return "'" + text.replace("'", "''") + "'"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def day_of(ts: int) -> str:
    return datetime.fromtimestamp(int(ts) // 86400 * 86400, tz=UTC).strftime("%Y-%m-%d")


class ParquetFiles:
    """Paths, DuckDB connections and atomic Parquet/JSON writes under `settings.offline_uri`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
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
            con.execute(f"SET temp_directory = {sql_quote(str(spill))}")
            con.execute("SET preserve_insertion_order = true")
            # Progress is reported through strata.progress; DuckDB's own bar would garble stderr.
            con.execute("SET enable_progress_bar = false")
            if self._s3:
                load_httpfs(con, self.root)
                if cfg.s3_region:
                    con.execute(f"SET s3_region = {sql_quote(cfg.s3_region)}")
                if cfg.s3_endpoint:
                    con.execute(f"SET s3_endpoint = {sql_quote(cfg.s3_endpoint)}")
            yield con
        finally:
            con.close()

    def _exists(self, con: duckdb.DuckDBPyConnection, uri: str) -> bool:
        if not self._s3:
            return Path(uri).exists()
        return bool(scalar(con, f"SELECT count(*) FROM glob({sql_quote(uri)})"))

    def _glob(self, con: duckdb.DuckDBPyConnection, pattern: str) -> list[str]:
        if not self._s3:
            return sorted(glob.glob(pattern))
        return sorted(
            r[0] for r in con.execute(f"SELECT file FROM glob({sql_quote(pattern)})").fetchall()
        )

    def _copy(self, con: duckdb.DuckDBPyConnection, select_sql: str, dest: str) -> tuple[str, int]:
        """Write a query result as Parquet to a temp name beside `dest`; return (name, rows).

        Locally the caller renames it into place with `_commit`; on S3 the object PUT is
        already atomic, so the query is written to `dest` directly.
        """
        target = dest if self._s3 else f"{dest}.tmp-{uuid.uuid4().hex}"
        if self._s3:
            return target, self._copy_to(con, select_sql, target)
        # A full disk fails here, before any rename: a StorageError, the store as it was.
        with writing(Path(target).parent, "offline store"):
            try:
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                return target, self._copy_to(con, select_sql, target)
            except BaseException:
                Path(target).unlink(missing_ok=True)  # a partial file would hold the space
                raise

    def _copy_to(self, con: duckdb.DuckDBPyConnection, select_sql: str, target: str) -> int:
        rows = scalar(
            con,
            f"COPY ({select_sql}) TO {sql_quote(target)} (FORMAT parquet, COMPRESSION zstd, "
            "ROW_GROUP_SIZE 122880)",
        )
        return int(rows)

    def _stage_json(self, dest: str, obj: dict[str, Any]) -> str:
        """Write JSON to a temp name beside `dest` for `_commit` (S3: to `dest`, atomic)."""
        if self._s3:
            self._write_json(dest, obj)
            return dest
        tmp = f"{dest}.tmp-{uuid.uuid4().hex}"
        text = json.dumps(obj, indent=2, sort_keys=True, default=str)
        with writing(Path(dest).parent, "offline store"), atomic_path(Path(tmp)) as part:
            part.write_text(text, encoding="utf-8")
        return tmp

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
        """Raise DataError naming `uri` if it is missing, unreadable, or lacks `required`.

        A local file that passed is not read again while its inode, size and modification time
        stay the same (the store replaces files by renaming, which changes all of them): a
        training run binds the store dozens of times over the same event partitions."""
        key = (uri, tuple(required))
        absent = "missing (run `strata features build` or ingest first)"
        stamp = None
        if not self._s3:
            try:
                st = os.stat(uri)
            except (FileNotFoundError, NotADirectoryError):  # what Path.exists() says False to
                raise DataError(uri, absent) from None
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if _CHECKED.get(key) == stamp:
                return
        elif not self._exists(con, uri):
            raise DataError(uri, absent)
        import duckdb

        try:
            desc = con.execute(f"DESCRIBE SELECT * FROM read_parquet({sql_quote(uri)})").fetchall()
            cols = [r[0] for r in desc]
        except duckdb.Error as exc:
            raise DataError(uri, f"corrupt or unreadable Parquet ({first_line(exc)})") from None
        missing = [c for c in key[1] if c not in cols]
        if missing:
            raise DataError(uri, f"missing columns {missing}")
        if stamp is not None:
            if len(_CHECKED) >= _CHECKED_MAX:
                _CHECKED.clear()
            _CHECKED[key] = stamp

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
        lo = day_of(since) if since is not None else None
        hi = day_of(until - 1) if until is not None else None
        keep = []
        for f in files:
            day = f.rsplit("date=", 1)[1].split("/", 1)[0]
            if (lo is None or day >= lo) and (hi is None or day <= hi):
                keep.append(f)
        for f in keep:
            self._check_parquet(con, f, INTERACTION_COLUMNS)
        return keep

    def _read_json(self, uri: str) -> dict[str, Any] | None:
        """A JSON object written by `_write_json`; None when the file does not exist."""
        if not self._s3:
            return json.loads(Path(uri).read_text()) if Path(uri).is_file() else None
        with self._connect() as con:
            if not self._exists(con, uri):
                return None
            return json.loads(str(scalar(con, f"SELECT content FROM read_text({sql_quote(uri)})")))

    def _write_json(self, dest: str, obj: dict[str, Any]) -> None:
        text = json.dumps(obj, indent=2, sort_keys=True, default=str)
        if not self._s3:
            atomic_write_text(Path(dest), text)
            return
        # One CSV "cell" with quoting off and a delimiter JSON never contains: the raw text.
        with self._connect() as con:
            con.execute(
                f"COPY (SELECT {sql_quote(text)} AS manifest) TO {sql_quote(dest)} "
                "(FORMAT csv, HEADER false, QUOTE '', ESCAPE '', DELIMITER '\x1f')"
            )
