"""Where the feature SQL runs: `strata features build --engine duckdb|spark|athena`.

The store's files, ingest and readers are the same for every engine (`strata.features.offline`);
only the feature computation moves: DuckDB in-process (the default), Spark over the same Parquet
files (`strata.features.spark`), or Athena over the `s3://` layout (`strata.features.athena`).
Each runs the same point-in-time views (`strata.features.pit`) of the same portable SQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from strata.config import Settings
from strata.errors import ValidationError
from strata.features.offline import OfflineStore, ingest_dataset

ENGINES = ("duckdb", "spark", "athena")


def check_engine(engine: str | None, settings: Settings) -> str:
    """`engine` (default: `offline.engine`), validated against ENGINES."""
    name = engine or settings.offline.engine
    if name not in ENGINES:
        raise ValidationError("--engine", f"expected one of {', '.join(ENGINES)}, got {name!r}")
    return name


def build_features(
    store: OfflineStore,
    name: str,
    engine: str = "duckdb",
    until: int | None = None,
    training_set: str | None = None,
) -> dict[str, Any]:
    """Build the latest feature tables of dataset `name` on `engine`; with `training_set`, also
    the point-in-time training set (a Parquet file; athena: a table under that s3:// prefix)."""
    if engine == "duckdb":
        manifest = store.build(name, until=until)
        if training_set is not None:
            manifest["training_rows"] = store.export_training_set(name, training_set, until)
    elif engine == "spark":
        from strata.features.spark import SparkEngine

        spark = SparkEngine(store)
        try:
            manifest = spark.build(name, until=until)
            if training_set is not None:
                manifest["training_rows"] = spark.export_training_set(name, training_set, until)
        finally:
            spark.close()
    else:
        from strata.features.athena import AthenaEngine

        manifest = AthenaEngine(store).build(name, until=until, training=training_set)
    return {**manifest, "engine": engine}


def build_dataset(
    settings: Settings,
    name: str,
    until: int | None = None,
    path: Path | None = None,
    engine: str | None = None,
    training_set: str | None = None,
) -> dict[str, Any]:
    """Load dataset `name`, ingest it and build its feature tables (what the CLI runs)."""
    from strata.datasets import load

    engine = check_engine(engine, settings)  # before any loading or writing
    ds = load(name, path=path, settings=settings)
    store = OfflineStore(settings)
    counts = ingest_dataset(store, ds, name)
    manifest = build_features(store, name, engine, until, training_set)
    return {**manifest, "users": counts["users"], "items": counts["items"]}
