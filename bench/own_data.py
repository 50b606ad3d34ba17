"""Bring your own data: a declared shop end to end, and MovieLens-100K through the declared path.

    .venv/bin/python bench/own_data.py                      # both parts, seeds 0,1,2
    .venv/bin/python bench/own_data.py --part shop --events 300000 --seeds 0

Part `shop`: `strata data generate` worlds (string SKU/customer ids, ms timestamps, view /
add-to-cart / purchase with weights 0.2 / 0.6 / 1.0, brand, two-level category, price, images)
registered with `data add`, built, encoded, trained at the 80% split and evaluated against the
baselines on the held-out positives. One world per seed (the world and the training seed move
together); reports wall time per step and NDCG@10 / recall@10 per system.

Part `movielens`: the GroupLens files of ../shared/data/ml-100k written as RecBole atomic files
and registered with `data add --recbole` (every feature then comes from the declarations:
tags, numerics, dense ids), against the shipped movielens-100k spec on the same split and
training seed, text content only. Prints medians with the min-max spread over seeds and writes
bench/results/own_data.json (a run of one part keeps the other's results there).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"
SYSTEMS = ("model-full", "model-retrieval", "popularity", "popularity-30d", "item-knn", "als")


def _eval(settings: Any, dataset: str, until: int, path: Path | None = None) -> dict[str, Any]:
    from strata.training.evaluate import run_evaluation

    report = run_evaluation(settings, dataset, until, path=path, ks=(10, 50))
    return {
        name: {sl: {m: float(res["slices"][sl][m]) for m in ("ndcg@10", "recall@10")}
               for sl in ("all", "warm_users", "cold_users") if res["slices"][sl]["n_users"]}
        for name, res in report["systems"].items()
    }  # fmt: skip


def _shop_run(args: argparse.Namespace, seed: int, root: Path) -> dict[str, Any]:
    import pandas as pd

    from strata.config import Settings
    from strata.datasets.shop import write_shop
    from strata.datasets.spec import register_spec
    from strata.features.engines import build_dataset
    from strata.training.content import encode_and_store
    from strata.training.train import train

    s = Settings(home=root / f"home-{seed}", seed=seed)
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    spec = write_shop(root / f"shop-{seed}", args.users, args.items, args.events, seed=seed,
                      zipf_a=args.zipf)  # fmt: skip
    t["generate_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    register_spec(s, "shop", spec)
    t["data_add_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    build_dataset(s, "shop")
    t["features_build_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    encode_and_store(s, "shop")
    t["encode_s"] = time.perf_counter() - t0
    events = pd.read_json(spec.parent / "events.jsonl", lines=True)
    until = int(events["ts_ms"].quantile(0.8) // 1000)
    t0 = time.perf_counter()
    train(s, "shop", until=until)
    t["train_s"] = time.perf_counter() - t0
    return {"timings": t, "metrics": _eval(s, "shop", until)}


def _atomic_from_grouplens(dest: Path) -> Path:
    """ML-100K's GroupLens files rewritten in RecBole's atomic format (a temp folder)."""
    from strata.datasets.movielens import read_movielens_100k

    ds = read_movielens_100k(ML100K)
    dest.mkdir(parents=True, exist_ok=True)
    i = ds.interactions
    with (dest / "ml.inter").open("w") as f:
        f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for u, it, v, ts in zip(i["user_id"], i["item_id"], i["value"], i["ts"], strict=True):
            f.write(f"{u}\t{it}\t{v:g}\t{ts}\n")
    with (dest / "ml.item").open("w") as f:
        f.write("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n")
        for r in ds.items.itertuples():
            year = "" if r.year is None or str(r.year) == "<NA>" else str(r.year)
            f.write(f"{r.item_id}\t{r.title}\t{year}\t{' '.join(r.genres)}\n")
    with (dest / "ml.user").open("w") as f:
        f.write("user_id:token\tage:token\tgender:token\toccupation:token\n")
        for r in ds.users.itertuples():
            f.write(f"{r.user_id}\t{r.age}\t{r.gender}\t{r.occupation}\n")
    return dest / "ml"


def _movielens_run(seed: int, root: Path, atomic: Path) -> dict[str, Any]:
    from strata.config import Settings
    from strata.datasets import fetch, load
    from strata.datasets.recbole import register_recbole
    from strata.training.content import encode_and_store
    from strata.training.data import prepare_store
    from strata.training.evaluate import quantile_ts
    from strata.training.train import train

    out: dict[str, Any] = {}
    until = quantile_ts(load("movielens-100k", path=ML100K), 0.8)
    for kind, name in (("shipped spec", "movielens-100k"), ("declared (RecBole)", "ml-rb")):
        s = Settings(home=root / f"ml-{seed}-{name}", seed=seed)
        path = ML100K if name == "movielens-100k" else None
        if name == "ml-rb":
            register_recbole(s, name, atomic)
        else:
            fetch("movielens-100k", ML100K, s)  # acquire into this home's cache
        prepare_store(s, name)
        encode_and_store(s, name, path=path)
        train(s, name, until=until)
        out[kind] = _eval(s, name, until, path)
    return out


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> int:
    """Run the benchmark; returns the process exit code."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--part", choices=("shop", "movielens", "both"), default="both")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--users", type=int, default=5_000)
    ap.add_argument("--items", type=int, default=3_000)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--zipf", type=float, default=0.6)
    args = ap.parse_args()
    seeds = [int(x) for x in args.seeds.split(",")]
    result: dict[str, Any] = {"machine": platform.platform(), "seeds": seeds, "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="strata-own-data-") as tmp:
        root = Path(tmp)
        if args.part in ("shop", "both"):
            runs = [_shop_run(args, s, root) for s in seeds]
            result["shop"] = {
                "timings": {k: _summary([r["timings"][k] for r in runs])
                            for k in runs[0]["timings"]},
                "ndcg@10": {n: _summary([r["metrics"][n]["all"]["ndcg@10"] for r in runs])
                            for n in SYSTEMS},
                "recall@10": {n: _summary([r["metrics"][n]["all"]["recall@10"] for r in runs])
                              for n in SYSTEMS},
            }  # fmt: skip
            print(f"shop {args.users} customers x {args.items} products x {args.events} events, "
                  f"seeds {seeds}: median (min-max)")  # fmt: skip
            for k, v in result["shop"]["timings"].items():
                print(f"  {k:18s} {v['median']:8.1f} s ({v['min']:.1f}-{v['max']:.1f})")
            for n in SYSTEMS:
                nd, rc = result["shop"]["ndcg@10"][n], result["shop"]["recall@10"][n]
                print(
                    f"  {n:16s} ndcg@10 {nd['median']:.4f} ({nd['min']:.4f}-{nd['max']:.4f})"
                    f"  recall@10 {rc['median']:.4f} ({rc['min']:.4f}-{rc['max']:.4f})"
                )
        if args.part in ("movielens", "both"):
            if not ML100K.is_dir():
                print(f"skipping movielens: {ML100K} is absent")
            else:
                atomic = _atomic_from_grouplens(root / "atomic")
                runs = [_movielens_run(s, root, atomic) for s in seeds]
                result["movielens"] = {
                    kind: {sl: _summary([r[kind]["model-full"][sl]["ndcg@10"] for r in runs])
                           for sl in ("warm_users", "cold_users")}
                    for kind in runs[0]
                }  # fmt: skip
                print(f"ML-100K at the 80% split, model-full NDCG@10, seeds {seeds}")
                for kind, sl in result["movielens"].items():
                    print(f"  {kind:20s} " + "  ".join(
                        f"{k} {v['median']:.4f} ({v['min']:.4f}-{v['max']:.4f})"
                        for k, v in sl.items()))  # fmt: skip
    out = ROOT / "bench" / "results" / "own_data.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    # a run of one part keeps the other part's last results
    old = json.loads(out.read_text()) if out.is_file() else {}
    out.write_text(json.dumps({**old, **result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
