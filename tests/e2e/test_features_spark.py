"""`--engine spark`: the same feature SQL on PySpark (local[2], a real JVM) gives the same
training set and feature tables as DuckDB, row by row, on the synthetic world, on a declared
dataset (its own event types, an item attribute, a non-UTC time zone) and on a random history
dense with simultaneous events and window edges (ties in every top-value feature).

Floats are compared to 1e-12 relative (the JVM's sin/cos may differ from C's in the last bit);
everything else exactly. Skips without pyspark or Java, unless STRATA_TEST_SPARK is set (CI).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from strata.config import OfflineStoreConfig, Settings
from strata.features.definitions import FeatureParams
from strata.features.engines import build_features
from strata.features.offline import OfflineStore, ingest_dataset

pytestmark = [pytest.mark.e2e, pytest.mark.multiprocess]


def _need_spark() -> None:
    reason = None
    try:
        import pyspark  # noqa: F401
    except ImportError:
        reason = "pyspark is not installed (the 'spark' extra)"
    if reason is None and shutil.which("java") is None:
        reason = "no java on PATH (Debian: openjdk-17-jre-headless)"
    if reason is not None:
        if os.environ.get("STRATA_TEST_SPARK"):
            pytest.fail(f"STRATA_TEST_SPARK is set but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module", autouse=True)
def _stop_spark() -> Iterator[None]:
    """One JVM for the module, stopped after it (it would hold cores and memory otherwise)."""
    yield
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        return
    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()


def assert_same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Same columns, dtypes, row order and values (floats to 1e-12 relative)."""
    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b) and len(a) > 0
    for c in a.columns:
        x, y = a[c], b[c]
        assert x.dtype == y.dtype, (c, x.dtype, y.dtype)
        if pd.api.types.is_float_dtype(x.dtype):
            np.testing.assert_allclose(x.to_numpy(), y.to_numpy(), rtol=1e-12, atol=1e-12)
        elif len(x) and isinstance(x.iloc[0], list | np.ndarray):
            bad = [i for i, (p, q) in enumerate(zip(x, y, strict=True)) if list(p) != list(q)]
            assert not bad, (c, bad[:5])
        else:
            assert (x.astype(str).to_numpy() == y.astype(str).to_numpy()).all(), c


def _store(tmp_path: Path, params: FeatureParams | None = None) -> OfflineStore:
    s = Settings(home=tmp_path / "home", offline=OfflineStoreConfig(spark_shuffle_partitions=4))
    return OfflineStore(s, params)


def _compare(store: OfflineStore, name: str, tmp_path: Path, until: int | None = None) -> None:
    duck_ts, spark_ts = tmp_path / "duck.parquet", tmp_path / "spark.parquet"
    duck = build_features(store, name, "duckdb", until, str(duck_ts))
    duck_users = store.built_features(name, "user")
    duck_items = store.built_features(name, "item")
    spark = build_features(store, name, "spark", until, str(spark_ts))
    assert spark["engine"] == "spark" and duck["engine"] == "duckdb"
    for k in ("as_of", "events", "min_ts", "max_ts", "user_rows", "item_rows", "training_rows"):
        assert spark[k] == duck[k], k
    assert_same_rows(pd.read_parquet(duck_ts), pd.read_parquet(spark_ts))
    # the tables Spark swapped in are the ones DuckDB had written
    assert_same_rows(duck_users, store.built_features(name, "user"))
    assert_same_rows(duck_items, store.built_features(name, "item"))


def test_no_jvm_is_one_clear_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Java (or pyspark) the engine says what is missing, no JVM trace. First in the
    module: a session started by a later test would be reused."""
    spark_sql = pytest.importorskip("pyspark.sql", reason="pyspark is not installed")
    from strata.errors import ConfigError
    from strata.features.spark import SparkEngine

    if spark_sql.SparkSession.getActiveSession() is not None:
        pytest.skip("a Spark session is already running in this process")
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-java"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="Java 17"):
        SparkEngine(_store(tmp_path))


def test_synthetic_world_same_on_duckdb_and_spark(tmp_path: Path) -> None:
    _need_spark()
    from strata.datasets.synthetic import recsys_world

    store = _store(tmp_path)
    world = recsys_world(200, 100, 5_000, seed=3)
    store.ingest("synthetic", world.users, world.items, world.iter_events())
    _compare(store, "synthetic", tmp_path)


def test_declared_dataset_same_on_duckdb_and_spark(tmp_path: Path) -> None:
    _need_spark()
    from strata.datasets import load
    from strata.datasets.shop import write_shop
    from strata.datasets.spec import register_spec

    spec = write_shop(tmp_path / "files", n_users=60, n_items=40, n_events=1500, images=False)
    spec.write_text(spec.read_text().replace("timezone: UTC", "timezone: America/New_York"))
    store = _store(tmp_path)
    register_spec(store.settings, "shop", spec)
    ingest_dataset(store, load("shop", settings=store.settings), "shop")
    assert store.params_for("shop").item_attrs  # the attribute path is exercised
    cut = int(store.events("shop")["ts"].quantile(0.9))
    _compare(store, "shop", tmp_path, until=cut)


def test_ties_and_window_edges_same_on_duckdb_and_spark(tmp_path: Path) -> None:
    _need_spark()
    from tests.unit.test_offline_store import make_events, make_items, make_users
    from tests.unit.test_point_in_time import tie_records

    records = tie_records(11, 400)
    params = FeatureParams(user_window_s=400, item_window_s=300, recent_n=4)
    store = _store(tmp_path, params)
    store.ingest("rand", make_users(), make_items(), [make_events(records)])
    _compare(store, "rand", tmp_path)
