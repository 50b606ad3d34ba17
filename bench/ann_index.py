"""ANN index benchmark: build time, memory, recall@100 vs exact and single-query latency.

Catalogue: `--n` clustered unit vectors (default 1M x 64, `strata.engine.index.
synthetic_embeddings`: Zipf-sized clusters with a decaying spectrum, like trained item
embeddings). Each kind is built through `build_index` exactly as `strata index build` does (so the
approximate kinds tune their knob to recall@100 >= 0.95 on their own tuning queries), then
measured on a separate set of evaluation queries against exact search:

    .venv/bin/python bench/ann_index.py [--n 1000000] [--kinds flat,ivf] [--reps 2000]

HNSW is opt-in (`--kinds flat,ivf,hnsw`): at 1M its build takes minutes on this machine.

Latency is one query per call (top-100, through `FaissIndex.search`, which runs single queries on
one thread), after a warm-up. The machine is shared, so p99 includes scheduler noise; the load
average at the start and end is recorded. Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import psutil

from strata.engine.index import FaissIndex, load_index
from strata.errors import DataError
from strata.training.index_build import (
    build_index,
    recall_at_k,
    synthetic_embeddings,
    synthetic_queries,
)

ROOT = Path(__file__).resolve().parents[1]
K = 100


def latency_ms(index: FaissIndex, queries: np.ndarray, reps: int) -> dict[str, float]:
    """p50/p99/mean milliseconds of single-query top-K searches, cycling through `queries`."""
    for i in range(min(50, reps)):
        index.search(queries[i % len(queries)][None], K)
    samples = np.empty(reps)
    for r in range(reps):
        q = queries[r % len(queries)][None]
        t = time.perf_counter()
        index.search(q, K)
        samples[r] = time.perf_counter() - t
    ms = samples * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def rss_mb() -> float:
    """Resident set size of this process in MiB."""
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def bench_kind(
    kind: str,
    ids: np.ndarray,
    x: np.ndarray,
    q: np.ndarray,
    truth: np.ndarray,
    args: argparse.Namespace,
) -> tuple[dict[str, object], FaissIndex]:
    """Build, save/load and measure one index kind."""
    before = rss_mb()
    t = time.perf_counter()
    index = build_index(ids, x, kind, seed=args.seed)
    build_s = time.perf_counter() - t
    mem = rss_mb() - before
    folder = Path(args.workdir) / kind
    t = time.perf_counter()
    index.save(folder)
    save_s = time.perf_counter() - t
    t = time.perf_counter()
    index = load_index(folder, dim=x.shape[1])
    load_s = time.perf_counter() - t
    found = index.search(q, K)[0]  # batch: all threads
    reps = args.flat_reps if kind == "flat" else args.reps
    row: dict[str, object] = {
        "kind": kind,
        "params": index.params,
        "build_s": round(build_s, 2),
        "save_s": round(save_s, 2),
        "load_s": round(load_s, 2),
        "rss_delta_mb": round(mem, 1),
        "file_mb": round(sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 2**20, 1),
        "recall_tuning": index.info["recall_at_k"],
        "recall_eval": round(recall_at_k(found, truth), 4),
        "latency": latency_ms(index, q, reps),
        "tuning": index.info.get("tuning"),
    }
    knob = {"ivf": "nprobe", "hnsw": "efSearch"}.get(kind)
    if knob is not None:
        # Where the tuned point sits on the curve: half and double the tuned knob.
        tuned = int(index.params[knob])
        curve = []
        for v in sorted({max(1, tuned // 2), tuned, tuned * 2}):
            index.set_param(knob, v)
            r = recall_at_k(index.search(q, K)[0], truth)
            curve.append({knob: v, "recall": round(r, 4), **latency_ms(index, q, args.reps // 4)})
        index.set_param(knob, tuned)
        row["curve"] = curve
    return row, index


def main() -> None:
    """Run the benchmark and write bench/results/ann_index-<time>.json."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--kinds", default="flat,ivf", help="any of flat,ivf,hnsw")
    ap.add_argument("--queries", type=int, default=1000, help="evaluation queries")
    ap.add_argument("--reps", type=int, default=2000, help="single-query latency samples")
    ap.add_argument("--flat-reps", type=int, default=200, help="latency samples for flat")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="where index folders go (default: temp)")
    args = ap.parse_args()

    import tempfile

    tmp = tempfile.TemporaryDirectory(prefix="ann-bench-")
    args.workdir = args.workdir or tmp.name
    load0 = os.getloadavg()
    t = time.perf_counter()
    x = synthetic_embeddings(args.n, args.dim, n_clusters=args.clusters, seed=args.seed)
    ids = np.arange(args.n, dtype=np.int64)
    # Evaluation queries use a different seed from the tuning queries inside build_index.
    q = synthetic_queries(x, args.queries, seed=args.seed + 1000)
    gen_s = time.perf_counter() - t

    import faiss

    exact = faiss.IndexFlatIP(args.dim)
    exact.add(x)
    t = time.perf_counter()
    truth = exact.search(q, K)[1].astype(np.int64)
    truth_s = time.perf_counter() - t
    del exact

    rows: list[dict[str, object]] = []
    failed: list[dict[str, str]] = []
    for kind in [k.strip() for k in args.kinds.split(",") if k.strip()]:
        try:
            row, index = bench_kind(kind, ids, x, q, truth, args)
        except DataError as exc:  # e.g. HNSW cannot reach the recall target: report, go on
            print(f"  {kind}: failed: {exc}", flush=True)
            failed.append({"kind": kind, "error": str(exc)})
            continue
        rows.append(row)
        del index
        gc.collect()
        lat = row["latency"]
        assert isinstance(lat, dict)
        print(
            f"  {kind}: built in {row['build_s']}s, recall {row['recall_eval']}, "
            f"p50 {lat['p50_ms']:.3f} ms",
            flush=True,
        )

    header = (
        f"{'kind':6s} {'params':44s} {'build s':>8s} {'RSS MB':>7s} {'file MB':>8s} "
        f"{'recall@100':>10s} {'p50 ms':>7s} {'p99 ms':>7s}"
    )
    print(f"\n{args.n:,} x {args.dim} clustered vectors, {args.queries} eval queries, top-{K}")
    print(header)
    print("-" * len(header))
    for r in rows:
        lat = r["latency"]
        assert isinstance(lat, dict)
        print(
            f"{r['kind']:6s} {json.dumps(r['params']):44s} {r['build_s']:8.1f} "
            f"{r['rss_delta_mb']:7.0f} {r['file_mb']:8.0f} {r['recall_eval']:10.4f} "
            f"{lat['p50_ms']:7.3f} {lat['p99_ms']:7.3f}"
        )
    for r in rows:
        curve = r.get("curve") or []
        assert isinstance(curve, list)
        for c in curve:
            knob = next(k for k in c if k in ("nprobe", "efSearch"))
            print(
                f"  {r['kind']} {knob}={c[knob]:<5d} recall {c['recall']:.4f} "
                f"p50 {c['p50_ms']:.3f} ms p99 {c['p99_ms']:.3f} ms"
            )
    load1 = os.getloadavg()
    print(f"load average start {load0[0]:.2f}, end {load1[0]:.2f} on {os.cpu_count()} CPUs")

    out = {
        "benchmark": "ann_index",
        "n": args.n,
        "dim": args.dim,
        "clusters": args.clusters,
        "eval_queries": args.queries,
        "k": K,
        "gen_s": round(gen_s, 2),
        "exact_truth_batch_s": round(truth_s, 2),
        "results": rows,
        "failed": failed,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "faiss": faiss.__version__,
            "loadavg_start": load0,
            "loadavg_end": load1,
        },
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    res_dir = ROOT / "bench" / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    path = res_dir / f"ann_index-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
