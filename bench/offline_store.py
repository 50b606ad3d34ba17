"""Benchmark the offline store on the synthetic world: ingest, feature build, training set.

    .venv/bin/python bench/offline_store.py --sizes 1m          # or: --sizes 1m,10m
    .venv/bin/python bench/offline_store.py --sizes 200k --memory-limit 1GB

For each size it generates `recsys_world` (streamed in chunks, never whole in memory), ingests it
into a fresh offline store, builds the latest user/item feature tables, and writes the
point-in-time training set straight to Parquet (DuckDB, bounded by `--memory-limit`). It reports
rows/s per phase and the peak RSS of this process (sampled by psutil every 50 ms; DuckDB runs
in-process so its memory is included), prints a table and writes bench/results/offline_store.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

SIZES = {
    "100k": (2_000, 1_000, 100_000),
    "200k": (5_000, 2_000, 200_000),
    "1m": (20_000, 10_000, 1_000_000),
    "10m": (200_000, 100_000, 10_000_000),
}  # events label -> (n_users, n_items, n_events)


class PeakRss:
    """Sample this process's RSS in a background thread; `peak` is the max seen (bytes)."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.proc = psutil.Process(os.getpid())
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRss:
        self.peak = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def timed(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    """Run fn; return (result, seconds, peak RSS bytes during the call)."""
    with PeakRss() as mem:
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
    return out, dt, mem.peak


def run_size(label: str, workdir: Path, memory_limit: str, threads: int) -> list[dict[str, Any]]:
    """All phases for one size; returns one result row per phase."""
    from strata.config import OfflineStoreConfig, Settings
    from strata.datasets.synthetic import recsys_world
    from strata.features.offline import OfflineStore

    n_users, n_items, n_events = SIZES[label]
    home = workdir / label
    shutil.rmtree(home, ignore_errors=True)
    settings = Settings(
        home=home,
        offline=OfflineStoreConfig(duckdb_memory_limit=memory_limit, duckdb_threads=threads),
    )
    store = OfflineStore(settings)
    world, gen_s, gen_peak = timed(lambda: recsys_world(n_users, n_items, n_events, seed=0))
    rows: list[dict[str, Any]] = []

    def row(phase: str, n: int, seconds: float, peak: int) -> None:
        rows.append(
            {
                "size": label,
                "phase": phase,
                "rows": n,
                "seconds": round(seconds, 2),
                "rows_per_s": round(n / seconds) if seconds > 0 else None,
                "peak_rss_mb": round(peak / 2**20),
            }
        )

    row("world setup", n_users + n_items, gen_s, gen_peak)
    gen_time = [0.0]

    def timed_events() -> Any:
        # Time spent inside the generator is the synthetic world's, not the store's.
        it = world.iter_events()
        while True:
            t0 = time.perf_counter()
            chunk = next(it, None)
            gen_time[0] += time.perf_counter() - t0
            if chunk is None:
                return
            yield chunk

    counts, s, peak = timed(
        lambda: store.ingest("synthetic", world.users, world.items, timed_events())
    )
    row("generate events", n_events, gen_time[0], peak)
    row("ingest (write, dedup)", counts["new_events"], s - gen_time[0], peak)
    manifest, s, peak = timed(lambda: store.build("synthetic"))
    row("build features", manifest["events"], s, peak)
    dest = home / "training_set.parquet"
    n, s, peak = timed(lambda: store.export_training_set("synthetic", dest))
    row("point-in-time training set", n, s, peak)
    disk = sum(p.stat().st_size for p in home.rglob("*.parquet"))
    rows[-1]["store_mb"] = round(disk / 2**20)
    shutil.rmtree(home, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run the chosen sizes, print the table and write the JSON results."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="1m", help=f"comma list of {','.join(SIZES)}")
    ap.add_argument("--memory-limit", default="2GB", help="DuckDB memory_limit")
    ap.add_argument("--threads", type=int, default=2, help="DuckDB threads")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/strata-bench-offline"))
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "offline_store.json"
    )
    args = ap.parse_args(argv)
    labels = [s.strip().lower() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in labels if s not in SIZES]
    if unknown:
        ap.error(f"unknown sizes {unknown}; choose from {list(SIZES)}")
    results: list[dict[str, Any]] = []
    for label in labels:
        results.extend(run_size(label, args.workdir, args.memory_limit, args.threads))
    header = f"{'size':>5} {'phase':<28} {'rows':>11} {'s':>8} {'rows/s':>10} {'peak RSS MB':>12}"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r['size']:>5} {r['phase']:<28} {r['rows']:>11,} {r['seconds']:>8.2f} "
            f"{r['rows_per_s'] or 0:>10,} {r['peak_rss_mb']:>12,}"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": "offline_store",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "duckdb_memory_limit": args.memory_limit,
        "duckdb_threads": args.threads,
        "results": results,
    }
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(args.out)
    sys.stdout.write(f"wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
