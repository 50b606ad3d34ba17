"""What the hashed-LR baseline (`strata.ctr.baseline`, the CTR promotion gate's yardstick) costs
per training row and epoch, and its test AUC on criteo_8k; optionally against the implementation
at another git revision, run in the same process so the machine's load hits both alike.

    .venv/bin/python bench/ctr_baseline_cost.py --rows 30000,300000 --against 74fae2e

Cost: `fit_hashed_lr` (one learning rate) and the two-learning-rate grid `strata ctr train` fits,
on synthetic Criteo rows (validation: a tenth as many rows, scored every epoch), in 8,192-row
chunks, every epoch run (no early stop): the median over `--repeats` of seconds / (rows x
epochs). "re-hashed" sets the hashed-id cache to 0, as for data too large to keep hashed (above
~860k rows). The old implementation runs 1 epoch (it is slow), 2 learning rates only up to 30k
rows. AUC: bench/ctr_small_data.py's split of criteo_8k (train 6k, valid 1k, test 1k), the full
`evaluate_hashed_lr_baseline` per seed.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch  # noqa: F401  (the old fit imports it; imported up front, not part of its cost)

from strata.ctr import baseline as current
from strata.ctr.data import CtrSource, temporal_split
from strata.datasets.criteo_synthetic import criteo_like

sys.path.insert(0, str(Path(__file__).parent))
from ctr_vs_peers import load_criteo_8k  # the same reading of the shared sample

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 8192


def load_revision(rev: str, tmp: Path) -> ModuleType:
    """`strata/ctr/baseline.py` as it was at git revision `rev`, as a module."""
    src = subprocess.run(
        ["git", "show", f"{rev}:src/strata/ctr/baseline.py"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    path = tmp / "baseline_at_rev.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("baseline_at_rev", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def cost(mod: ModuleType, n: int, lrs: tuple[float, ...], epochs: int) -> float:
    """Microseconds per training row and epoch of fitting `lrs` on n synthetic rows."""
    train = criteo_like(n, seed=0).drop(columns=["p_true"])
    valid = criteo_like(n // 10, seed=1).drop(columns=["p_true"])

    def chunks() -> object:
        return (train.iloc[i : i + CHUNK] for i in range(0, n, CHUNK))

    cfgs = [mod.HashedLRConfig(lr=lr, epochs=epochs, patience=epochs) for lr in lrs]
    t = time.perf_counter()
    if hasattr(mod, "fit_hashed_lrs"):
        mod.fit_hashed_lrs(chunks, valid, cfgs)
    else:
        for cfg in cfgs:
            mod.fit_hashed_lr(chunks, valid, cfg)
    return (time.perf_counter() - t) / (n * epochs) * 1e6


def rehashed(n: int, lrs: tuple[float, ...], epochs: int) -> float:
    """`cost` of the current implementation with its hashed-id cache off."""
    saved, current._CACHE_TOKENS = current._CACHE_TOKENS, 0
    try:
        return cost(current, n, lrs, epochs)
    finally:
        current._CACHE_TOKENS = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="30000,300000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--against", default=None, help="a git revision to compare with")
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        mods = {"new": current}
        if args.against:
            mods["old"] = load_revision(args.against, tmp)
        grid = (0.01, 0.003)
        for n in (int(x) for x in args.rows.split(",")):
            runs: dict[str, list[float]] = {}
            for _ in range(args.repeats):  # interleaved: the load hits every variant alike
                for name, mod in mods.items():
                    e = args.epochs if mod is current else 1
                    runs.setdefault(f"{name} 1 lr", []).append(cost(mod, n, grid[1:], e))
                    if mod is current or n <= 30_000:
                        runs.setdefault(f"{name} 2 lrs", []).append(cost(mod, n, grid, e))
                    if mod is current:
                        runs.setdefault(f"{name} 2 lrs re-hashed", []).append(rehashed(n, grid, e))
            for k, v in runs.items():
                print(f"{n:>9} rows  {k:20s} {statistics.median(v):8.1f} us/row/epoch  "
                      f"runs {[round(x, 1) for x in v]}", flush=True)  # fmt: skip
        pq = tmp / "criteo_8k.parquet"
        load_criteo_8k().to_parquet(pq, index=False)
        src = CtrSource(pq)
        split = temporal_split(src.rows, 0.125, 0.125)
        for name, mod in mods.items():
            aucs = []
            for seed in (int(s) for s in args.seeds.split(",")):
                t = time.perf_counter()
                r = mod.evaluate_hashed_lr_baseline(src, split, CHUNK, seed=seed)
                aucs.append(r["auc"])
                print(f"criteo_8k {name} seed {seed}: test AUC {r['auc']:.4f} valid "
                      f"{r['valid_auc']:.4f} lr {r['lr']} ({time.perf_counter() - t:.1f} s)",
                      flush=True)  # fmt: skip
            print(f"criteo_8k {name}: median test AUC {statistics.median(aucs):.4f}", flush=True)


if __name__ == "__main__":
    main()
