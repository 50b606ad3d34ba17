"""DuckDB's S3 support (the httpfs extension) for every place that reads or writes `s3://`.

DuckDB does not bundle httpfs in its wheel: `INSTALL httpfs` fetches it from
extensions.duckdb.org the first time, into `~/.duckdb/extensions`. Where that host cannot be
reached (an air-gapped cluster, this project's CI), the download fails deep inside DuckDB; this
turns that into one ConfigError saying what to do, instead of a traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from strata.errors import ConfigError

if TYPE_CHECKING:
    import duckdb


def load_httpfs(con: duckdb.DuckDBPyConnection, uri: str) -> None:
    """Load httpfs into `con` for `uri` (an s3:// location), installing it first if needed."""
    import duckdb

    try:
        con.execute("INSTALL httpfs")
        con.execute("LOAD httpfs")
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(
            f"{uri}: DuckDB's httpfs extension (needed for s3://) is not installed and could not"
            f" be fetched ({first}); install it once where extensions.duckdb.org is reachable"
            " (python -c \"import duckdb; duckdb.install_extension('httpfs')\") and ship"
            " ~/.duckdb/extensions with the image, or use a local or mounted path"
        ) from None
