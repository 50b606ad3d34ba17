"""Retrieval quality on MovieLens-100K: the trained pipeline against baselines, temporal splits.

    .venv/bin/python bench/retrieval_quality.py                     # train at the split, evaluate
    .venv/bin/python bench/retrieval_quality.py --quantiles 0.7,0.8,0.9 --validation
    .venv/bin/python bench/retrieval_quality.py --no-train          # baselines (+ existing model)
    .venv/bin/python bench/retrieval_quality.py --until 889237269 --home /tmp/strata-bench

Splits the interactions globally at `--until` (default: the 80% quantile of timestamps; with
`--quantiles` one split per quantile), trains a model on the events before it (`strata train`
with posters when available) unless `--no-train`, then runs the evaluation harness (`strata
evaluate`): the two-tower retrieval stage, the full pipeline (also without its fresh-item
slots, and with them ordered by the ranker alone or at random), popularity, item-KNN and ALS,
sliced into warm users, cold users and cold items.
`--validation` adds the split that hyperparameters are chosen on: only the events before the
80% split, themselves split at their own 80% quantile (the test side is never read).
Prints a table per split and a summary, and writes bench/results/retrieval_quality.json (the
harness reports + PNGs go to `<home>/reports/<dataset>/eval-<until>/`).
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SUMMARY = (
    ("warm_users", "ndcg@10"),
    ("cold_users", "ndcg@10"),
    ("cold_items", "recall@50"),
)


def main() -> int:
    """Run the benchmark; returns the process exit code."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dataset", default="movielens-100k")
    ap.add_argument("--path", type=Path, default=None, help="dataset folder (else cache/fetch)")
    ap.add_argument("--images", type=Path, default=None, help="poster folder")
    ap.add_argument("--until", type=int, default=None, help="split ts (default: 80%% quantile)")
    ap.add_argument("--quantiles", default=None, help="comma list of split quantiles, e.g. 0.7,0.9")
    ap.add_argument("--validation", action="store_true", help="also the inner validation split")
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
    from strata.training.evaluate import format_table, quantile_ts

    settings = Settings()
    ds = load(args.dataset, path=path, images=images, settings=settings)
    if args.quantiles:
        cuts = [("test", quantile_ts(ds, float(q))) for q in args.quantiles.split(",")]
    else:
        cuts = [("test", args.until or quantile_ts(ds, 0.8))]
    if args.validation:
        cuts.insert(0, ("validation", quantile_ts(ds, 0.8)))
    timings: dict[str, float] = {}
    if not args.no_train:
        from strata.features.offline import OfflineStore, ingest_dataset

        t0 = time.perf_counter()
        ingest_dataset(OfflineStore(settings), ds, args.dataset)
        if images is not None:
            from strata.features.content import encode_and_store

            encode_and_store(settings, args.dataset, images=images, path=path)
        timings["ingest_encode_s"] = time.perf_counter() - t0
    runs = []
    for kind, until in cuts:
        t0 = time.perf_counter()
        report = run_split(settings, args.dataset, ds, until, images, kind, not args.no_train)
        report["timings"] = {**timings, "split_s": time.perf_counter() - t0}
        runs.append(report)
        sys.stdout.write(f"\n== {kind} split at {report['split']['until']} ({report['dataset']})\n")
        sys.stdout.write(format_table(report) + "\n")
    sys.stdout.write("\n" + summary_table(runs) + "\n")
    out = {
        "runs": runs,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    dest = args.out / "retrieval_quality.json"
    tmp = dest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2, default=str))
    os.replace(tmp, dest)
    sys.stdout.write(f"wrote {dest}\n")
    return 0


def run_split(
    settings: Any, dataset: str, ds: Any, cut: int, images: Path | None, kind: str, fit: bool
) -> dict[str, Any]:
    """Train (if `fit`) and evaluate one split. "test": split `ds` at `cut`; "validation":
    keep only events before `cut` and split those at their own 80% quantile."""
    from strata.config import FreshConfig
    from strata.datasets.base import RecDataset
    from strata.training.evaluate import (
        System,
        evaluate,
        fit_baselines,
        model_systems,
        quantile_ts,
        temporal_split,
        write_report,
    )

    name, until = dataset, cut
    tables = None
    if kind == "validation":
        from strata.features.offline import OfflineStore
        from strata.training.train import Tables

        inter = ds.interactions[ds.interactions["ts"] < cut].reset_index(drop=True)
        ds = RecDataset(f"{dataset}-validation", ds.users, ds.items, inter)
        name, until = ds.name, quantile_ts(ds, 0.8)
        content = None
        store = OfflineStore(settings)
        if (Path(store.dataset_uri(dataset)) / "item_content.parquet").exists():
            content = store.item_content(dataset)
        tables = Tables(ds.users, ds.items, inter, content)
    train_metrics: dict[str, float] = {}
    if fit:
        from strata.training.train import train

        res = train(settings, name, until=until, images=images, tables=tables)
        train_metrics = dict(res.metrics)
    split = temporal_split(ds, until)
    systems, note = model_systems(settings, name, until)
    if systems:
        from strata.training.recommender import load_recommender

        # The same version with the fresh-item slots off, and filled by the other orders.
        for label, fresh in (
            ("no-fresh", FreshConfig(enabled=False)),
            ("fresh-ranker", FreshConfig(order="ranker")),
            ("fresh-random", FreshConfig(order="random")),
        ):
            serve = settings.serve.model_copy(update={"fresh": fresh})
            rec = load_recommender(settings.model_copy(update={"serve": serve}), name)
            systems.append(System(f"model-full-{label}", rec, "full"))
    systems += fit_baselines(split, seed=settings.seed)
    report = evaluate(split, systems, show_progress=True)
    report["dataset"] = name
    report["kind"] = kind
    report["train_metrics"] = train_metrics
    if note:
        report["model_note"] = note
    write_report(report, settings.home / "reports" / name / f"eval-{until}")
    return report


def summary_table(runs: list[dict[str, Any]]) -> str:
    """One line per system: NDCG@10 of warm/cold users and cold-item recall@50 per split."""
    heads = [f"{r['kind'][:3]}@{r['split']['until']}" for r in runs]
    cols = [f"{sl.split('_')[0]}-{sl.split('_')[1][:4]} {m}" for sl, m in SUMMARY]
    names = list(runs[0]["systems"])
    w = max(len(n) for n in names) + 2
    lines = [f"{'system':<{w}}" + "  ".join(f"{h:>36}" for h in heads)]
    lines.append(" " * w + "  ".join(f"{' / '.join(c.split()[0] for c in cols):>36}"
                                     for _ in runs))  # fmt: skip
    for n in names:
        cells = []
        for r in runs:
            sl = r["systems"].get(n, {}).get("slices", {})
            vals = [sl.get(s, {}).get(m) for s, m in SUMMARY]
            cells.append(" / ".join("-" if v is None else f"{v:.3f}" for v in vals))
        lines.append(f"{n:<{w}}" + "  ".join(f"{c:>36}" for c in cells))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
