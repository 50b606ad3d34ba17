"""DuckDB vs Spark on the same feature SQL: build time of the synthetic world's feature tables
and point-in-time training set.

    .venv/bin/python bench/offline_engines.py --size 1m --repeats 3
    .venv/bin/python bench/offline_engines.py --size 200k --engines duckdb,spark --master local[2]

Generates `recsys_world` once (sizes as bench/offline_store.py), ingests it, then for each
engine and repeat runs `build_features(..., training_set=...)` (latest user/item tables + the
training set, the work of `strata features build --engine E --training-set F`), and checks the
two engines wrote the same training set. Spark's session start (JVM) is timed apart, once.
Prints median and min-max per engine and writes bench/results/offline_engines.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from offline_store import SIZES


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run the engines, print the table and write the JSON results."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="1m", choices=list(SIZES))
    ap.add_argument("--engines", default="duckdb,spark")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--master", default="local[2]", help="Spark master")
    ap.add_argument("--threads", type=int, default=2, help="DuckDB threads")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/strata-bench-engines"))
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "offline_engines.json"
    )
    args = ap.parse_args(argv)

    import pandas as pd

    from strata.config import OfflineStoreConfig, Settings
    from strata.datasets.synthetic import recsys_world
    from strata.features.engines import build_features
    from strata.features.offline import OfflineStore

    n_users, n_items, n_events = SIZES[args.size]
    shutil.rmtree(args.workdir, ignore_errors=True)
    offline = OfflineStoreConfig(
        duckdb_threads=args.threads, duckdb_memory_limit="4GB", spark_master=args.master
    )
    store = OfflineStore(Settings(home=args.workdir / "home", offline=offline))
    world = recsys_world(n_users, n_items, n_events, seed=0)
    store.ingest("synthetic", world.users, world.items, world.iter_events())
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    spark_start = None
    if "spark" in engines:
        from strata.features.spark import session

        t0 = time.perf_counter()
        session(store.settings)
        spark_start = time.perf_counter() - t0
    results: dict[str, list[float]] = {}
    outputs: dict[str, Path] = {}
    for engine in engines:
        for r in range(args.repeats):
            dest = args.workdir / f"training_set_{engine}.parquet"
            t0 = time.perf_counter()
            manifest = build_features(store, "synthetic", engine, None, str(dest))
            results.setdefault(engine, []).append(time.perf_counter() - t0)
            outputs[engine] = dest
            sys.stdout.write(
                f"{engine} run {r + 1}: {results[engine][-1]:.1f}s "
                f"({manifest['training_rows']:,} training rows)\n"
            )
    same = None
    if len(outputs) == 2:
        a, b = (pd.read_parquet(p) for p in outputs.values())
        same = bool(a.shape == b.shape and (a["event_id"].to_numpy() == b["event_id"]).all())
    rows = []
    for engine, times in results.items():
        rows.append(
            {
                "engine": engine,
                "events": n_events,
                "median_s": round(statistics.median(times), 1),
                "min_s": round(min(times), 1),
                "max_s": round(max(times), 1),
                "runs": [round(t, 1) for t in times],
                "events_per_s": round(n_events / statistics.median(times)),
            }
        )
        sys.stdout.write(
            f"{engine:>7}: median {rows[-1]['median_s']}s ({rows[-1]['min_s']}-"
            f"{rows[-1]['max_s']}) over {len(times)} runs, {rows[-1]['events_per_s']:,} events/s\n"
        )
    if spark_start is not None:
        sys.stdout.write(f"spark session start: {spark_start:.1f}s (not in the times above)\n")
    if same is not None:
        sys.stdout.write(f"same training set rows (event ids, order): {same}\n")
    doc: dict[str, Any] = {
        "benchmark": "offline_engines",
        "size": args.size,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "spark_master": args.master,
        "duckdb_threads": args.threads,
        "spark_session_start_s": None if spark_start is None else round(spark_start, 1),
        "same_training_set": same,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
