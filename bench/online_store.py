"""Online layer benchmark: feature reads, Bloom checks and event ingest, side by side with Feast.

Measures p50/p99 of reading 1 user row and 300 item rows (memory and Valkey backends), a Bloom
check of 300 candidates, the event ingest rate, and the same reads through Feast's
`get_online_features` with its Redis online store on the same features and the same Valkey (Feast
runs from the separate environment bench/.venv-peers; see bench/requirements-peers.txt).

    .venv/bin/python bench/online_store.py [--url redis://127.0.0.1:6379/0] [--reps 3000]
        [--runs 3] [--no-feast]

Each measure is timed `--reps` times per run, in `--runs` runs (median and min-max reported),
with this process's garbage collector set as a serving process sets it (`strata.serving.pauses`).

Without --url a private valkey-server (or redis-server) is started on a free port and stopped
at the end. Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from strata.config import BloomConfig, Settings, ValkeyOnlineConfig
from strata.features.bloom import BloomFilter, MemoryBloom, ValkeyBloom, bloom_params
from strata.features.events import EventIngestor
from strata.features.online import OnlineStore
from strata.features.online.memory import MemoryOnlineStore
from strata.features.online.valkey import ValkeyOnlineStore

ROOT = Path(__file__).resolve().parents[1]
PEERS_PY = ROOT / "bench" / ".venv-peers" / "bin" / "python"


def pcts(fn: Callable[[], object], reps: int, warmup: int = 10) -> dict[str, float]:
    """p50/p99 in milliseconds of `fn` over `reps` calls after a warm-up."""
    for _ in range(warmup):
        fn()
    samples = np.empty(reps)
    for r in range(reps):
        t = time.perf_counter()
        fn()
        samples[r] = time.perf_counter() - t
    ms = samples * 1000.0
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


@contextmanager
def valkey_server(url: str | None) -> Iterator[str]:
    """Yield a server URL: the given one, or a private non-persistent server started here."""
    if url:
        yield url
        return
    binary = shutil.which("valkey-server") or shutil.which("redis-server")
    if binary is None:
        raise SystemExit("no valkey-server/redis-server: pass --url")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="bench-valkey-")
    proc = subprocess.Popen(
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        probe = ValkeyOnlineStore(ValkeyOnlineConfig(url=url, timeout_ms=500))
        for _ in range(100):
            try:
                probe.health()
                break
            except Exception:  # not up yet; retried, and the bench fails below if it never is
                time.sleep(0.05)
        probe.close()
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def make_features(n_users: int, n_items: int, dim: int, seed: int = 0) -> tuple[pd.DataFrame, ...]:
    """Synthetic user/item feature tables: 8 float scalars each, plus an item embedding."""
    rng = np.random.default_rng(seed)
    users = pd.DataFrame({"user_id": np.arange(n_users, dtype=np.int64)})
    for j in range(8):
        users[f"user_f{j}"] = rng.random(n_users)
    items = pd.DataFrame({"item_id": np.arange(n_items, dtype=np.int64)})
    for j in range(8):
        items[f"item_f{j}"] = rng.random(n_items)
    items["item_emb"] = list(rng.standard_normal((n_items, dim)).astype(np.float32))
    return users, items


def load(store: OnlineStore, users: pd.DataFrame, items: pd.DataFrame) -> float:
    """Write both tables as version `bench` and activate it; returns seconds."""
    from strata.features.materialize import materialize_frame

    t = time.perf_counter()
    materialize_frame(store, "user", users, "user_id", version="bench")
    materialize_frame(store, "item", items, "item_id", version="bench")
    return time.perf_counter() - t


def read_bench(store: OnlineStore, users: pd.DataFrame, items: pd.DataFrame, reps: int) -> dict:
    """p50/p99 of 1 user row and 300 item rows (random ids each call)."""
    rng = np.random.default_rng(1)
    u_feats = [c for c in users.columns if c != "user_id"]
    i_feats = [c for c in items.columns if c != "item_id"]
    n_u, n_i = len(users), len(items)
    got = store.read("item", np.arange(3), i_feats)
    assert got.found.all() and got.values["item_emb"].shape[1] > 1
    return {
        "user_1": pcts(lambda: store.read("user", rng.integers(0, n_u, 1), u_feats), reps),
        "items_300": pcts(
            lambda: store.read("item", rng.choice(n_i, 300, replace=False), i_feats), reps
        ),
    }


def bloom_bench(bloom: BloomFilter, reps: int) -> dict:
    """Fill 200 users to capacity (1,000 items), then time checks of 300 candidates."""
    rng = np.random.default_rng(2)
    for u in range(200):
        bloom.add_many(np.full(1000, u), rng.integers(0, 10**7, 1000))
    return pcts(
        lambda: bloom.contains(int(rng.integers(0, 200)), rng.integers(0, 10**7, 300)), reps
    )


def ingest_bench(settings: Settings, store: OnlineStore, n: int, batch: int) -> dict:
    """Events/s through `EventIngestor.ingest` in batches (validation, fsync'd log, effects)."""
    ing = EventIngestor(settings, store=store, log_name=f"bench-{uuid.uuid4().hex[:6]}")
    rng = np.random.default_rng(3)
    tag = uuid.uuid4().hex[:6]
    events = [
        {
            "event_id": f"{tag}-{i}",
            "user_id": int(rng.integers(0, 10_000)),
            "item_id": int(rng.integers(0, 100_000)),
            "type": "click",
            "ts": 1_700_000_000 + i,
        }
        for i in range(n)
    ]
    t = time.perf_counter()
    for s in range(0, n, batch):
        ing.ingest(events[s : s + batch])
    dt = time.perf_counter() - t
    t1 = time.perf_counter()
    for e in events[:batch]:
        ing.ingest([{**e, "event_id": e["event_id"] + "-single"}])
    single = (time.perf_counter() - t1) / batch
    return {"events_per_s": n / dt, "batch": batch, "single_event_ms": single * 1000}


def feast_bench(url: str, users: pd.DataFrame, items: pd.DataFrame, reps: int) -> dict:
    """Run bench/feast_peer.py in the peers venv on the same data and Valkey (db 1)."""
    if not PEERS_PY.exists():
        return {
            "error": f"{PEERS_PY} missing: python3.11 -m venv bench/.venv-peers && "
            "bench/.venv-peers/bin/pip install -r bench/requirements-peers.txt"
        }
    data = Path(tempfile.mkdtemp(prefix="feast-data-"))
    ts = pd.Timestamp("2024-01-01", tz="UTC")
    users.assign(event_timestamp=ts).to_parquet(data / "users.parquet")
    items.assign(event_timestamp=ts).to_parquet(data / "items.parquet")
    host_port = url.split("://", 1)[1].split("/", 1)[0]
    proc = subprocess.run(
        [str(PEERS_PY), str(ROOT / "bench" / "feast_peer.py"), str(data), host_port, str(reps)],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "FEAST_USAGE": "False"},
    )
    shutil.rmtree(data, ignore_errors=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median(runs: list[dict]) -> dict:
    """Median and min-max of p50/p99 over runs (nested dicts of {p50_ms, p99_ms} leaves)."""
    first = runs[0]
    if "p50_ms" in first:
        out = {}
        for m in ("p50_ms", "p99_ms"):
            vals = [r[m] for r in runs]
            out[m] = float(np.median(vals))
            out[m.replace("_ms", "_range_ms")] = [float(min(vals)), float(max(vals))]
        return out
    return {  # nested measures; plain values (versions, skipped/error markers) from run 1
        k: _median([r[k] for r in runs]) if isinstance(v, dict) else v for k, v in first.items()
    }


def main() -> None:
    """Run everything `--runs` times, print the medians with the spread, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=None, help="Valkey/Redis URL (default: start a private one)")
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=32, help="item embedding dimension")
    ap.add_argument("--reps", type=int, default=3000, help="timed calls per measure and run")
    ap.add_argument("--runs", type=int, default=3, help="repetitions (median and spread)")
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--no-feast", action="store_true")
    args = ap.parse_args()

    from strata.config import GcConfig
    from strata.serving.pauses import settle

    users, items = make_features(args.users, args.items, args.dim)
    results: dict = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_avg_1m": os.getloadavg()[0]},
        "params": vars(args),
    }  # fmt: skip
    home = Path(tempfile.mkdtemp(prefix="bench-home-"))
    settings = Settings(home=home)
    with valkey_server(args.url) as url:
        mem = MemoryOnlineStore()
        cfg = ValkeyOnlineConfig(
            url=url, key_prefix=f"bench{uuid.uuid4().hex[:6]}", timeout_ms=1000
        )
        val = ValkeyOnlineStore(cfg)
        cluster = ValkeyOnlineStore(cfg.model_copy(update={"cluster": True}))
        results["load_s"] = {"memory": load(mem, users, items), "valkey": load(val, users, items)}
        params = bloom_params(BloomConfig())
        blooms = {"memory": MemoryBloom(params), "valkey": ValkeyBloom(params, val)}
        # The serving process's collector policy (strata.serving.pauses): what a read costs there.
        settle(GcConfig())
        runs = []
        for r in range(args.runs):
            one = {
                "reads": {
                    "memory": read_bench(mem, users, items, args.reps),
                    "valkey": read_bench(val, users, items, args.reps),
                    "valkey_cluster_path": read_bench(cluster, users, items, args.reps),
                    "feast_redis": (
                        {"skipped": True} if args.no_feast
                        else feast_bench(url, users, items, args.reps)
                    ),
                },
                "bloom_300": {b: bloom_bench(f, args.reps) for b, f in blooms.items()},
            }  # fmt: skip
            runs.append(one)
            v = one["reads"]["valkey"]["items_300"]
            print(f"run {r + 1}/{args.runs}: valkey 300 items p50 {v['p50_ms']:.3f} "
                  f"p99 {v['p99_ms']:.3f} ms", flush=True)  # fmt: skip
        results["runs"] = runs
        results["reads"] = _median([x["reads"] for x in runs])
        results["bloom_300"] = _median([x["bloom_300"] for x in runs])
        results["ingest"] = {
            "memory": ingest_bench(settings, MemoryOnlineStore(), args.events, 1000),
            "valkey": ingest_bench(
                settings.model_copy(update={"online": cfg}), val, args.events, 1000
            ),
        }
        keys = list(val.bulk.scan_iter(match=f"{cfg.key_prefix}:*", count=5000))
        for s in range(0, len(keys), 5000):
            val.bulk.unlink(*keys[s : s + 5000])
        val.close()
        cluster.close()
    shutil.rmtree(home, ignore_errors=True)

    def cell(res: dict, m: str) -> str:
        lo, hi = res[m.replace("_ms", "_range_ms")]
        return f"{res[m]:.3f} ({lo:.3f}-{hi:.3f})"

    print(f"median (min-max) of {args.runs} runs x {args.reps} calls")
    print(f"{'measure':28} {'backend':20} {'p50 ms':>22} {'p99 ms':>22}")
    rows = [("read 1 user row", "user_1"), ("read 300 item rows", "items_300")]
    for label, key in rows:
        for backend, res in results["reads"].items():
            if key in res:
                print(f"{label:28} {backend:20} {cell(res[key], 'p50_ms'):>22} "
                      f"{cell(res[key], 'p99_ms'):>22}")  # fmt: skip
            else:
                print(f"{label:28} {backend:20} {'n/a':>22} {'n/a':>22}  {res}")
    for backend, res in results["bloom_300"].items():
        label = "Bloom check 300 candidates"
        print(f"{label:28} {backend:20} {cell(res, 'p50_ms'):>22} {cell(res, 'p99_ms'):>22}")
    for backend, res in results["ingest"].items():
        print(
            f"{'event ingest':28} {backend:20} {res['events_per_s']:9.0f} events/s "
            f"(batches of {res['batch']}; single event {res['single_event_ms']:.2f} ms)"
        )
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"online_store-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
