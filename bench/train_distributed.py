"""Data-parallel training throughput: samples/s of the two-tower and the DCN-v2 ranker with 1
and N ranks (torch.distributed, gloo on CPU / NCCL on CUDA), synthetic ML-100K-sized batches.

Usage: .venv/bin/python bench/train_distributed.py [--ranks 1,2] [--batch 512] [--steps 40]
                                                   [--repeats 3] [--device cpu|cuda|auto]
`--batch` is the per-rank batch (global = ranks x batch, as `strata train --nproc N` runs it);
each rank gets cores / ranks threads. Every configuration runs `--repeats` times in fresh process
groups; the table shows the median and the min-max spread. Writes
bench/results/train_distributed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import tempfile
from pathlib import Path

import numpy as np


def _dims(content: bool) -> object:
    from strata.models.inputs import FeatureDims

    return FeatureDims(
        n_users=944, n_items=1683, hist_len=10, item_num_dim=3,
        text_dim=384 if content else 1, image_dim=1280 if content else 1,
    )  # fmt: skip


def _rank(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    """One rank: warm up, then time `--steps` steps of each model; rank 0 writes samples/s."""
    import time

    import torch

    from strata.models.batch import synthetic_batches, synthetic_items, synthetic_rank_batches
    from strata.models.dcn import DCNConfig, DCNRanker
    from strata.models.two_tower import TwoTower, TwoTowerConfig
    from strata.training.distributed import Dist, resolve_device
    from strata.training.loops import Negatives, ranker_loop, seed_everything, two_tower_loop

    threads = max(1, (os.cpu_count() or 1) // world) if args.device == "cpu" else 1
    seed_everything(0, threads)
    device = resolve_device(args.device, rank)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        backend = "nccl" if device.startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend, rank=rank, world_size=world)
    d = Dist(rank, world, device)
    dims = _dims(args.content)
    g = args.batch * world

    def negatives(rng: np.random.Generator, b: object) -> Negatives:
        ids = rng.integers(1, dims.n_items, 256)  # type: ignore[attr-defined]
        return Negatives(synthetic_items(dims, ids), ids)  # type: ignore[arg-type]

    res: dict[str, float] = {}
    tb = list(synthetic_batches(dims, g, args.steps + 3, seed=1))  # type: ignore[arg-type]
    tt = TwoTower(dims, TwoTowerConfig())  # type: ignore[arg-type]
    kw = {"negatives": negatives, "n_items": dims.n_items, "dist": d}  # type: ignore[attr-defined]
    two_tower_loop(tt, lambda e, r: tb[:3], 1, **kw)  # type: ignore[arg-type]
    d.barrier()
    t0 = time.perf_counter()
    two_tower_loop(tt, lambda e, r: tb[3:], 1, p_user=0.15, p_item=0.1, **kw)  # type: ignore[arg-type]
    res["two-tower"] = g * args.steps / (time.perf_counter() - t0)
    rb = list(synthetic_rank_batches(dims, g, args.steps + 3, seed=2))  # type: ignore[arg-type]
    rk = DCNRanker(dims, DCNConfig())  # type: ignore[arg-type]
    ranker_loop(rk, lambda e, r: rb[:3], 1, dist=d)
    d.barrier()
    t0 = time.perf_counter()
    ranker_loop(rk, lambda e, r: rb[3:], 1, dist=d)
    res["dcn-v2 ranker"] = g * args.steps / (time.perf_counter() - t0)
    if rank == 0:
        Path(out).write_text(json.dumps(res))
    if world > 1:
        torch.distributed.destroy_process_group()


def _once(world: int, args: argparse.Namespace) -> dict[str, float]:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/res.json"
        mp.spawn(_rank, args=(world, port, args, out), nprocs=world, join=True)
        return dict(json.loads(Path(out).read_text()))


def main() -> None:
    """Measure and print samples/s per model and rank count (median of repeats, spread)."""
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--batch", type=int, default=512, help="per-rank batch")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--content", action="store_true", help="384-d text + 1280-d image inputs")
    args = ap.parse_args()
    rows = []
    for world in (int(x) for x in args.ranks.split(",")):
        runs = [_once(world, args) for _ in range(args.repeats)]
        for model in runs[0]:
            v = [r[model] for r in runs]
            rows.append({
                "model": model, "ranks": world, "global_batch": args.batch * world,
                "samples_per_s": statistics.median(v), "min": min(v), "max": max(v), "runs": v,
            })  # fmt: skip
    print(f"{'model':14s} {'ranks':>5s} {'batch':>6s} {'samples/s (median)':>19s} {'spread':>17s}")
    for r in rows:
        spread = f"{r['min']:,.0f}-{r['max']:,.0f}"
        print(f"{r['model']:14s} {r['ranks']:5d} {r['global_batch']:6d} "
              f"{r['samples_per_s']:19,.0f} {spread:>17s}")  # fmt: skip
    out = Path(__file__).parent / "results" / "train_distributed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "device": args.device,
        "per_rank_batch": args.batch,
        "steps": args.steps,
        "repeats": args.repeats,
        "torch": torch.__version__,
    }
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
