"""Replicated vs sharded recommender input (`training.shard_input`) with `strata train --nproc
2`: peak RSS of each rank, wall time and quality, on a synthetic world in the offline store.

Usage: .venv/bin/python bench/train_sharded.py [--size 1m] [--ranks 2] [--repeats 3]
                                               [--epochs 1] [--workdir DIR]
The world is generated and ingested once (`--size` as bench/offline_store.py's SIZES); every
run then trains on the events before the 90% time quantile in a copy of that home, so each
starts from the same store. Per-rank RSS is sampled every 0.2 s from the rank processes
(`python -m strata.cli` under torchrun); the table shows the median and the min-max spread of
`--repeats` runs. Writes bench/results/train_sharded.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ctr_scale import measured
from offline_store import SIZES

STRATA = Path(sys.executable).parent / "strata"


def prepare(workdir: Path, size: str) -> tuple[Path, int]:
    """A home holding the synthetic world; the `--until` of the runs (90% time quantile)."""
    import numpy as np

    from strata.config import Settings
    from strata.datasets.synthetic import recsys_world
    from strata.features.offline import OfflineStore

    home = workdir / "base"
    shutil.rmtree(workdir, ignore_errors=True)
    n_users, n_items, n_events = SIZES[size]
    world = recsys_world(n_users, n_items, n_events, seed=0)
    store = OfflineStore(Settings(home=home))
    store.ingest("synthetic", world.users, world.items, world.iter_events())
    ts = store.events("synthetic")["ts"].to_numpy()
    return home, int(np.quantile(ts, 0.9))


def run_once(base: Path, until: int, ranks: int, shard: bool, epochs: int) -> dict[str, object]:
    home = base.parent / "run"
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(base, home)
    env = {
        **os.environ,
        "STRATA_HOME": str(home),
        "STRATA_TRAINING__EPOCHS": str(epochs),
        "STRATA_TRAINING__SHARD_INPUT": "true" if shard else "false",
    }
    cmd = [str(STRATA), "train", "--dataset", "synthetic", "--until", str(until)]
    cmd += ["--nproc", str(ranks), "--json", "--no-promote"]
    # the ranks run `python -m strata.cli` (torchrun's own process names it as an argument)
    proc, sampler, wall = measured(cmd, env, match="strata.cli")
    rss = sorted(sampler.peaks.values())
    if proc.returncode != 0:
        tail = proc.stderr.decode()[-3000:]
        raise SystemExit(f"strata train failed ({proc.returncode}):\n{tail}")
    m = json.loads(proc.stdout)["metrics"]
    return {
        "shard_input": shard,
        "rank_peak_rss_gb": [r / 2**30 for r in rss],
        "max_rank_rss_gb": max(rss) / 2**30,
        "wall_s": wall,
        "train_events": m["train_events"],
        "holdout_recall@10_full": m.get("holdout_recall@10_full"),
        "ranker_auc_valid": m["ranker_auc_valid"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="1m", choices=list(SIZES))
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/strata-bench-sharded"))
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "train_sharded.json"
    )
    args = ap.parse_args(argv)
    base, until = prepare(args.workdir, args.size)
    runs = [
        run_once(base, until, args.ranks, shard, args.epochs)
        for _ in range(args.repeats)
        for shard in (False, True)
    ]

    def col(rs: list[dict[str, object]], key: str, fmt: str) -> str:
        xs = [float(r[key]) for r in rs if r[key] is not None]  # type: ignore[arg-type]
        return f"{statistics.median(xs):{fmt}} ({min(xs):{fmt}}-{max(xs):{fmt}})"

    print(f"{args.size} events, {args.ranks} ranks, {args.epochs} epoch(s), {args.repeats} runs")
    print(f"{'input':<11} {'max rank RSS GB':22s} {'wall s':22s} {'recall@10':26s} ranker AUC")
    for shard in (False, True):
        rs = [r for r in runs if r["shard_input"] is shard]
        print(
            f"{'sharded' if shard else 'replicated':<11} {col(rs, 'max_rank_rss_gb', '.2f'):22s} "
            f"{col(rs, 'wall_s', '.0f'):22s} {col(rs, 'holdout_recall@10_full', '.4f'):26s} "
            f"{col(rs, 'ranker_auc_valid', '.4f')}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"size": args.size, "ranks": args.ranks, "epochs": args.epochs, "until": until}
    meta |= {"machine": platform.platform(), "cpus": os.cpu_count()}
    args.out.write_text(json.dumps({**meta, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
