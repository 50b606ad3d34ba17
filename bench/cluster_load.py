"""Cluster mode under load: `strata serve` replicas behind a round-robin balancer, at ML-100K size.

Five set-ups on the same trained ML-100K version, each started fresh per repetition:

- `embedded`: one process, the in-process online store (the single-process mode);
- `valkey-1`: one process on the Valkey online store, not a replica (no replica name, the
  registry pointer polled once an hour): the online store's own cost;
- `cluster-1`: one replica in cluster mode (its own event log, following the registry pointer
  through Valkey pub/sub and a 2 s poll), requests sent to it directly;
- `cluster-1-lb` .. `cluster-N-lb` (`--replicas N`, default 2): 1..N such replicas behind the
  balancer (`bench/balancer.py`, a Python asyncio TCP proxy on the same cores).

Each runs an open loop at 100 rps for `--duration` seconds (latency from the scheduled send, so
queueing counts) and a closed loop of 8 connections for `--duration` seconds (max rps). The
coordination cost on `/recommend` is `cluster-1` p99 minus `valkey-1` p99 at 100 rps (cluster
mode adds no work to a request: the follower and the signal listener run in the background); the
balancer hop is `cluster-1-lb` minus `cluster-1`. The load generator, Valkey, the balancer and
the replicas share the machine's cores, so on 2 cores the max rps of `cluster-2-lb` is what a
second replica adds under that contention. Median (min-max) over `--reps` repetitions.

    .venv/bin/python bench/cluster_load.py                 # 3 reps x 20 s steps, ~13 min
    .venv/bin/python bench/serve_load.py --replicas 2      # the same (serve_load's entry point)
    .venv/bin/python bench/cluster_load.py --duration 5 --reps 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench.balancer import Balancer  # noqa: E402

from serve_harness import (  # noqa: E402
    closed_loop,
    free_port,
    materialize_users,
    open_loop,
    prepare_ml100k,
    start_server,
    start_valkey,
    summarize,
    without_client_gc,
)

# name -> (replicas, online store, cluster mode, through the balancer)
SETUPS: dict[str, tuple[int, str, bool, bool]] = {
    "embedded": (1, "memory", False, False),
    "valkey-1": (1, "valkey", False, False),
    "cluster-1": (1, "valkey", True, False),
}


def setups(max_replicas: int) -> list[str]:
    """The set-ups to run: the three single-process ones, then 1..N replicas behind the
    balancer (`cluster-<n>-lb`)."""
    for n in range(1, max_replicas + 1):
        SETUPS[f"cluster-{n}-lb"] = (n, "valkey", True, True)
    return list(SETUPS)


def run_setup(setup: str, s: Any, ds_name: str, url: str, users: np.ndarray, duration: float):
    """Start the set-up's servers (and balancer), measure 100 rps and the closed loop, stop."""
    n, online, cluster, balanced = SETUPS[setup]
    procs, ports = [], []
    for i in range(n):
        port = free_port()
        env = {"STRATA_EVENTS__REPLICA": f"b{i}"} if cluster else {}
        if online == "valkey" and not cluster:
            env["STRATA_SERVE__FOLLOW_POLL_S"] = "3600"
        procs.append(start_server(s, ds_name, url if online == "valkey" else "memory", port, env))
        ports.append(port)
    lb = Balancer(ports) if balanced else None
    try:
        if lb is not None:
            lb.__enter__()
        port = lb.port if lb is not None else ports[0]
        without_client_gc(open_loop(port, users, 20, 3.0))  # warm-up
        out = without_client_gc(open_loop(port, users, 100, duration))
        rate = summarize(out)
        rate["errors"] = sum(1 for o in out if o[1] != 200)
        closed, elapsed = without_client_gc(closed_loop(port, users, 8, duration))
        rate["max_rps"] = summarize(closed, elapsed)["rps"]
        return rate
    finally:
        if lb is not None:
            lb.__exit__()
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(30)


def _med(values: list[float]) -> dict[str, float]:
    return {"median": float(np.median(values)), "min": float(min(values)),
            "max": float(max(values))}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=2, help="up to this many behind the balancer")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per load step")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/strata-bench-cluster"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cluster_load.json")
    args = ap.parse_args(argv)
    names = setups(args.replicas)
    args.work.mkdir(parents=True, exist_ok=True)
    s, ds_name = prepare_ml100k(args.work / "home")
    vk_dir = args.work / "valkey"
    vk_dir.mkdir(exist_ok=True)
    valkey, url = start_valkey(vk_dir)
    try:
        materialize_users(s, ds_name, url)
        import pandas as pd

        from strata.artifacts import USER_FEATURES_FILE
        from strata.registry import Registry

        snap = pd.read_parquet(Registry(s.registry_dir, ds_name).path() / USER_FEATURES_FILE)
        users = snap["user_id"].to_numpy(np.int64)
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in names}
        for rep in range(args.reps):
            for setup in names:
                t0 = time.perf_counter()
                res = run_setup(setup, s, ds_name, url, users, args.duration)
                runs[setup].append(res)
                took = time.perf_counter() - t0
                print(f"[rep {rep + 1}] {setup}: p50 {res['p50_ms']:.2f} ms, p99 "
                      f"{res['p99_ms']:.2f} ms at 100 rps ({res['errors']} errors); max "
                      f"{res['max_rps']:.0f} rps ({took:.0f} s)", flush=True)  # fmt: skip
    finally:
        valkey.terminate()
        valkey.wait(10)
    summary = {
        k: {m: _med([r[m] for r in v]) for m in ("p50_ms", "p99_ms", "max_rps", "errors")}
        for k, v in runs.items()
    }

    def diff(a: str, b: str) -> dict[str, float]:
        return _med([x["p99_ms"] - y["p99_ms"] for x, y in zip(runs[a], runs[b], strict=True)])

    summary["coordination_p99_ms"] = diff("cluster-1", "valkey-1")
    summary["balancer_hop_p99_ms"] = diff("cluster-1-lb", "cluster-1")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "runs": runs, "duration_s": args.duration,
                                    "reps": args.reps}, indent=2))  # fmt: skip
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
