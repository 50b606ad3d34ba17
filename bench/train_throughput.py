"""Two-tower and DCN-v2 ranker training throughput (samples/s) on this CPU, synthetic batches.

Usage: .venv/bin/python bench/train_throughput.py [--steps 30] [--threads 2] [--device cpu]
                                                  [--time-groups 1,24] [--content]
The two-tower runs once per --time-groups value G: its 256 random negatives are embedded as of G
points in time per batch (training uses up to `training.popularity_snapshots` = 24; 1 = one
shared copy). Prints a table and writes bench/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np


def main() -> None:
    """Measure steady-state training samples/s for both models at a few batch sizes."""
    import torch

    from strata.models.batch import (
        synthetic_batches,
        synthetic_items,
        synthetic_rank_batches,
    )
    from strata.models.dcn import DCNConfig, DCNRanker
    from strata.models.inputs import FeatureDims
    from strata.models.two_tower import TwoTower, TwoTowerConfig
    from strata.training.loops import Negatives, ranker_loop, seed_everything, two_tower_loop

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--content", action="store_true", help="384-d text + 1280-d image inputs")
    ap.add_argument("--time-groups", default="1,24", help="negative time groups per batch")
    args = ap.parse_args()
    seed_everything(0, args.threads)
    # ML-100K-sized vocabularies; content widths as produced by the encoders when --content.
    dims = FeatureDims(
        n_users=944, n_items=1683, hist_len=10, item_num_dim=3,
        text_dim=384 if args.content else 1, image_dim=1280 if args.content else 1,
    )  # fmt: skip

    def sampler(groups: int) -> object:
        def negatives(rng: np.random.Generator, b: object) -> Negatives:
            ids = rng.integers(1, dims.n_items, 256)
            one = synthetic_items(dims, ids)
            if groups == 1:
                return Negatives(one, one.item)
            # Numeric features once per time group (training: popularity and age then).
            group = rng.integers(0, groups, len(b))  # type: ignore[arg-type]
            num = np.repeat(one.item_num[None], groups, axis=0)
            return Negatives(one, one.item, group, num)

        return negatives

    rows = []
    for bs in (256, 512, 1024):
        batches = list(synthetic_batches(dims, bs, args.steps + 3, seed=1))
        for g in (int(x) for x in args.time_groups.split(",")):
            tt = TwoTower(dims, TwoTowerConfig())
            kw = {"negatives": sampler(g), "n_items": dims.n_items, "device": args.device}
            two_tower_loop(tt, lambda e, r, b=batches: b[:3], 1, **kw)  # warm-up
            t0 = time.perf_counter()
            two_tower_loop(tt, lambda e, r, b=batches: b[3:], 1, p_user=0.15, p_item=0.1, **kw)
            dt = time.perf_counter() - t0
            rows.append({"model": f"two-tower G={g}", "batch": bs,
                         "samples_per_s": bs * args.steps / dt})  # fmt: skip

        rk = DCNRanker(dims, DCNConfig())
        rb = list(synthetic_rank_batches(dims, bs, args.steps + 3, seed=2))
        ranker_loop(rk, lambda e, r, b=rb: b[:3], 1, device=args.device)
        t0 = time.perf_counter()
        ranker_loop(rk, lambda e, r, b=rb: b[3:], 1, device=args.device)
        dt = time.perf_counter() - t0
        rows.append({"model": "dcn-v2 ranker", "batch": bs, "samples_per_s": bs * args.steps / dt})

    print(f"{'model':16s} {'batch':>6s} {'samples/s':>12s}")
    for r in rows:
        print(f"{r['model']:16s} {r['batch']:6d} {r['samples_per_s']:12,.0f}")
    out = Path(__file__).parent / "results" / "train_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "device": args.device,
        "content_inputs": args.content,
        "steps": args.steps,
        "torch": torch.__version__,
    }
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
