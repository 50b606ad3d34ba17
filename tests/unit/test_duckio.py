"""An s3:// location without DuckDB's httpfs extension at hand is one named ConfigError."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from strata.duckio import load_httpfs
from strata.errors import ConfigError


def test_missing_httpfs_is_a_config_error_naming_the_uri(tmp_path: Path) -> None:
    # An empty extension folder and a repository nobody listens on: the install cannot succeed,
    # whatever network this machine has.
    con = duckdb.connect(config={"extension_directory": str(tmp_path / "ext"),
                                 "custom_extension_repository": "http://127.0.0.1:9"})  # fmt: skip
    try:
        with pytest.raises(ConfigError) as err:
            load_httpfs(con, "s3://bucket/strata")
    finally:
        con.close()
    msg = str(err.value)
    assert msg.startswith("s3://bucket/strata: ")
    assert "httpfs" in msg and "\n" not in msg
