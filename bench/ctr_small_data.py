"""Small data must not hurt: DCN / DCN-v2 with and without the wide part against hashed LR.

The only Criteo rows available are `../shared/data/criteo/criteo_8k.tsv` (the first 8,000 rows of
the Kaggle DAC train file), so the held-out rows are its tail: in file (time) order, the first
6,000 rows train, the next 1,000 drive early stopping and every choice made on validation, the
last 1,000 are the test, never looked at while tuning. Every system trains on the same rows; each
cell is the median test AUC over the seeds with the min-max spread.

Systems: hashed LR (`strata.ctr.baseline`, its learning rate picked on validation); DCN and
DCN-v2 without and with the wide part; `linear`, the servable first-order model (a `CtrModel` with
no cross or deep layers: the wide part plus a linear head over dense inputs and embeddings); and
`<model>+select`, per seed the better of `<model>+wide` and `linear` by validation AUC (what a
trainer choosing on validation would serve; both are the same artifact kind).

    .venv/bin/python bench/ctr_small_data.py --seeds 0,1,2
    .venv/bin/python bench/ctr_small_data.py --seeds 0,1,2 --split 80-10-10   # train_ctr's default
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from strata.config import CtrConfig, CtrModelConfig, CtrPreprocessConfig, CtrTrainConfig
from strata.ctr.baseline import evaluate_hashed_lr_baseline
from strata.ctr.data import CtrSource, temporal_split
from strata.ctr.train import train_ctr

sys.path.insert(0, str(Path(__file__).parent))
from ctr_vs_peers import load_criteo_8k  # the same reading of the shared sample

ROOT = Path(__file__).resolve().parents[1]
CRITEO_8K = ROOT.parent / "shared" / "data" / "criteo" / "criteo_8k.tsv"
RESULTS = ROOT / "bench" / "results"
SPLITS = {"6k-1k-1k": (0.125, 0.125), "80-10-10": (0.1, 0.1)}  # (valid, test) fractions
# The classic configurations of bench/ctr_vs_peers.py (DCN: 6 cross layers; DCN-v2: 3 full-rank).
CROSS = {"dcn": 6, "dcnv2": 3}


def ctr_config(model: str, wide: bool, args: argparse.Namespace) -> CtrConfig:
    """The classic DCN / DCN-v2 layers on the bench split, wide part on or off; `linear` = the
    wide part and a linear head alone (no cross or deep layers)."""
    valid, test = SPLITS[args.split]
    linear = model == "linear"
    return CtrConfig(
        preprocess=CtrPreprocessConfig(min_count=args.min_count),
        model=CtrModelConfig(
            type="dcn" if linear else model, emb_dim=16, cross_layers=0 if linear else CROSS[model],
            deep=() if linear else (1024, 1024), dropout=0.5, wide=wide,
            wide_int_buckets=args.int_buckets, wide_cross_buckets=args.cross_buckets,
        ),
        train=CtrTrainConfig(
            batch_size=512, epochs=args.epochs, patience=args.patience, valid_fraction=valid,
            test_fraction=test, read_rows=8192, shuffle_buffer=8192, max_threads=2,
        ),
    )  # fmt: skip


def _train(
    src: CtrSource, model: str, wide: bool, seed: int, args: argparse.Namespace
) -> dict[str, Any]:
    t0 = time.perf_counter()
    m = train_ctr(src, ctr_config(model, wide, args), seed=seed).metrics
    name = "linear" if model == "linear" else f"{model}{'+wide' if wide else ''}"
    return {
        "system": name, "seed": seed, "valid_auc": m["valid_auc"], "test_auc": m["test"]["auc"],
        "epochs_run": len(m["history"]), "seconds": time.perf_counter() - t0,
    }  # fmt: skip


def run(args: argparse.Namespace, parquet: Path) -> list[dict[str, Any]]:
    """One row per (system, seed): valid and test AUC."""
    src = CtrSource(parquet)
    split = temporal_split(src.rows, *SPLITS[args.split])
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        lr = evaluate_hashed_lr_baseline(src, split, 8192, seed=seed)
        rows.append({"system": "hashed_lr", "seed": seed, "valid_auc": lr["valid_auc"],
                     "test_auc": lr["auc"], "seconds": time.perf_counter() - t0})  # fmt: skip
        _say(rows[-1])
        linear = _train(src, "linear", True, seed, args)
        rows.append(linear)
        _say(linear)
        for model in args.models:
            for wide in args.wide:
                rows.append(_train(src, model, wide, seed, args))
                _say(rows[-1])
                if wide:  # choose on validation only; the test AUC is read after the choice
                    pick = max((rows[-1], linear), key=lambda r: r["valid_auc"])
                    rows.append({**pick, "system": f"{model}+select", "picked": pick["system"]})
                    _say(rows[-1])
    return rows


def _say(r: dict[str, Any]) -> None:
    print(f"seed {r['seed']} {r['system']:12s} valid {r['valid_auc']:.4f} test "
          f"{r['test_auc']:.4f} ({r['seconds']:.0f} s)", file=sys.stderr)  # fmt: skip


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Median and min-max of valid and test AUC per system, and the test gap to hashed LR."""
    lr_test = {r["seed"]: r["test_auc"] for r in rows if r["system"] == "hashed_lr"}
    out: dict[str, dict[str, Any]] = {}
    for system in dict.fromkeys(r["system"] for r in rows):
        rs = [r for r in rows if r["system"] == system]
        entry: dict[str, Any] = {}
        for key, vals in (
            ("valid_auc", [r["valid_auc"] for r in rs]),
            ("test_auc", [r["test_auc"] for r in rs]),
            ("test_minus_lr", [r["test_auc"] - lr_test[r["seed"]] for r in rs]),
        ):
            entry[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
        entry["seeds"] = len(rs)
        out[system] = entry
    return out


def print_table(summary: dict[str, dict[str, Any]]) -> None:
    """Median (min-max) per system."""
    print(f"{'system':12s} {'valid AUC':>22s} {'test AUC':>22s} {'test - LR':>25s}")
    for system, e in summary.items():
        cells = [
            f"{e[k]['median']:+.4f} ({e[k]['min']:+.4f}..{e[k]['max']:+.4f})"
            if k == "test_minus_lr"
            else f"{e[k]['median']:.4f} ({e[k]['min']:.4f}-{e[k]['max']:.4f})"
            for k in ("valid_auc", "test_auc", "test_minus_lr")
        ]
        print(f"{system:12s} {cells[0]:>22s} {cells[1]:>22s} {cells[2]:>25s}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    ap.add_argument("--models", type=lambda s: s.split(","), default=["dcn", "dcnv2"])
    ap.add_argument("--wide", type=lambda s: [x == "on" for x in s.split(",")],
                    default=[False, True], help="off,on")  # fmt: skip
    ap.add_argument("--split", choices=sorted(SPLITS), default="6k-1k-1k")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--patience", type=int, default=2)
    ap.add_argument("--min-count", type=int, default=10)
    ap.add_argument("--int-buckets", type=int, default=CtrModelConfig().wide_int_buckets)
    ap.add_argument("--cross-buckets", type=int, default=CtrModelConfig().wide_cross_buckets)
    args = ap.parse_args()
    if not CRITEO_8K.exists():
        raise SystemExit(f"{CRITEO_8K} absent: this benchmark needs the shared Criteo sample")
    with tempfile.TemporaryDirectory(prefix="ctr-small-") as tmp:
        parquet = Path(tmp) / "criteo_8k.parquet"
        load_criteo_8k().to_parquet(parquet, index=False)
        rows = run(args, parquet)
    summary = summarise(rows)
    print_table(summary)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"ctr_small_data_{args.split}.json"
    report = {
        "benchmark": "ctr_small_data",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_1m": os.getloadavg()[0],
        },
        "split": args.split,
        "args": {k: v for k, v in vars(args).items()},
        "summary": summary,
        "runs": rows,
    }
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
