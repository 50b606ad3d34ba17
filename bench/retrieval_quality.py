"""Retrieval quality on MovieLens-100K: the trained pipeline against baselines, one temporal split.

    .venv/bin/python bench/retrieval_quality.py                     # train at the split, evaluate
    .venv/bin/python bench/retrieval_quality.py --no-train          # baselines (+ existing model)
    .venv/bin/python bench/retrieval_quality.py --until 889237269 --home /tmp/strata-bench

Splits the interactions globally at `--until` (default: the 80% quantile of timestamps), trains
a model on the events before it (`strata train` with posters when available) unless `--no-train`,
then runs the evaluation harness (`strata evaluate`): the two-tower retrieval stage, the full
pipeline, popularity, item-KNN and ALS, sliced into warm users, cold users and cold items.
Prints a table and writes bench/results/retrieval_quality.json (the harness report + PNG go to
`<home>/reports/<dataset>/eval-<until>/`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def main() -> int:
    """Run the benchmark; returns the process exit code."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dataset", default="movielens-100k")
    ap.add_argument("--path", type=Path, default=None, help="dataset folder (else cache/fetch)")
    ap.add_argument("--images", type=Path, default=None, help="poster folder")
    ap.add_argument("--until", type=int, default=None, help="split ts (default: 80%% quantile)")
    ap.add_argument("--home", type=Path, default=None, help="STRATA_HOME (default: a temp dir)")
    ap.add_argument("--no-train", action="store_true", help="evaluate what is already there")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()

    home = args.home or Path(tempfile.mkdtemp(prefix="strata-bench-"))
    os.environ["STRATA_HOME"] = str(home)
    images = args.images
    if (
        images is None
        and args.dataset == "movielens-100k"
        and (SHARED / "ml-100k-posters").is_dir()
    ):
        images = SHARED / "ml-100k-posters"
    path = args.path
    if path is None and args.dataset == "movielens-100k" and (SHARED / "ml-100k").is_dir():
        path = SHARED / "ml-100k"

    from strata.config import Settings
    from strata.datasets import load
    from strata.training.evaluate import format_table, quantile_ts, run_evaluation

    settings = Settings()
    ds = load(args.dataset, path=path, images=images, settings=settings)
    until = args.until or quantile_ts(ds, 0.8)
    timings: dict[str, float] = {}
    train_metrics: dict[str, float] = {}
    if not args.no_train:
        from strata.features.offline import OfflineStore, ingest_dataset
        from strata.training.train import train

        t0 = time.perf_counter()
        store = OfflineStore(settings)
        ingest_dataset(store, ds, args.dataset)
        if images is not None:
            from strata.features.content import encode_and_store

            encode_and_store(settings, args.dataset, images=images, path=path)
        timings["ingest_encode_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = train(settings, args.dataset, until=until, images=images)
        timings["train_s"] = time.perf_counter() - t0
        train_metrics = dict(res.metrics)

    t0 = time.perf_counter()
    report = run_evaluation(settings, args.dataset, until, path=path)  # files under home/reports
    timings["evaluate_s"] = time.perf_counter() - t0
    report["train_metrics"] = train_metrics
    report["timings"] = timings
    report["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count()}

    sys.stdout.write(format_table(report) + "\n")
    if train_metrics:
        sys.stdout.write(
            "train metrics: "
            + ", ".join(f"{k}={v:.4f}" for k, v in train_metrics.items() if isinstance(v, float))
            + "\n"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    dest = args.out / "retrieval_quality.json"
    tmp = dest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    os.replace(tmp, dest)
    sys.stdout.write(f"wrote {dest}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
