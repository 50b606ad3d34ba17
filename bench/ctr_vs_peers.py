"""CTR benchmark: our DCN / DCN-v2 against FuxiCTR's, side by side on the same machine, and the
serving latency of `/ctr/predict`.

Training: same rows, same temporal split (first 80% train, next 10% validation for early
stopping, last 10% test), same embedding size, cross layers, MLP, dropout, batch size, learning
rate, epochs and minimum category count. Throughput is training samples per second over the
fit (training plus per-epoch validation, as both trainers report it); AUC / logloss on the test
rows. FuxiCTR runs in its own environment (bench/.venv-fuxictr, see
bench/requirements-fuxictr.txt) through bench/fuxictr_peer.py.

Serving: `strata ctr serve` in a subprocess with the classic DCN trained on criteo_8k, a
loopback httpx client sending a bounded number of sequential requests of 1 and 256 rows, on
`--serving-reps` freshly started servers (median and min-max reported, with the GC collections
each server made during the measurement, from its /metrics).

    .venv/bin/python bench/ctr_vs_peers.py [--synthetic-rows 100000] [--epochs-8k 5]
        [--epochs-synthetic 1] [--no-fuxictr] [--requests 3000] [--serving-reps 3]

Prints a table and writes bench/results/ctr_vs_peers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from strata.config import (
    CtrConfig,
    CtrModelConfig,
    CtrPreprocessConfig,
    CtrTrainConfig,
    Settings,
)
from strata.ctr.artifacts import publish
from strata.ctr.data import CtrSource, temporal_split
from strata.ctr.preprocess import CAT_COLUMNS, INT_COLUMNS, LABEL
from strata.ctr.train import train_ctr
from strata.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
FUXI_PY = ROOT / "bench" / ".venv-fuxictr" / "bin" / "python"
CRITEO_8K = ROOT.parent / "shared" / "data" / "criteo" / "criteo_8k.tsv"
RESULTS = ROOT / "bench" / "results"

# The classic DCN configuration (Wang et al. 2017) for both systems; DCN-v2 uses 3 full-rank
# cross layers, as in the DCN-v2 paper's Criteo runs.
EMB, HIDDEN, DROPOUT, BATCH, LR, MIN_COUNT, EMB_L2 = 16, (1024, 1024), 0.5, 512, 1e-3, 10, 1e-5
CROSS = {"dcn": 6, "dcnv2": 3}
VALID, TEST = 0.1, 0.1


def load_criteo_8k() -> pd.DataFrame:
    """The shared 8k-row Criteo sample as a raw frame (label, I1..I13, C1..C26)."""
    names = [LABEL, *INT_COLUMNS, *CAT_COLUMNS]
    df = pd.read_csv(
        CRITEO_8K, sep="\t", header=None, names=names, dtype={c: str for c in CAT_COLUMNS}
    )
    for c in INT_COLUMNS:
        df[c] = pd.to_numeric(df[c]).astype("Int64")
    return df


def load_synthetic(n: int) -> pd.DataFrame:
    """`criteo_like` rows without the teacher's probability."""
    from strata.datasets.criteo_synthetic import criteo_like

    return criteo_like(n, seed=2024).drop(columns=["p_true"])


def write_inputs(df: pd.DataFrame, out: Path) -> tuple[Path, Path]:
    """Our input (one Parquet of all rows), FuxiCTR's (train/valid/test CSVs, same split)."""
    out.mkdir(parents=True, exist_ok=True)
    parquet = out / "all.parquet"
    df.to_parquet(parquet, index=False)
    split = temporal_split(len(df), VALID, TEST)
    csv_dir = out / "csv"
    csv_dir.mkdir(exist_ok=True)
    for name, (lo, hi) in (("train", split.train), ("valid", split.valid), ("test", split.test)):
        df.iloc[lo:hi].to_csv(csv_dir / f"{name}.csv", index=False)
    return parquet, csv_dir


def ours(parquet: Path, model: str, epochs: int, patience: int) -> dict[str, Any]:
    """Train our DCN / DCN-v2 in process; metrics from the trainer."""
    cfg = CtrConfig(
        preprocess=CtrPreprocessConfig(min_count=MIN_COUNT),
        model=CtrModelConfig(
            type=model, emb_dim=EMB, cross_layers=CROSS[model], deep=HIDDEN, dropout=DROPOUT,
            wide=False,  # the peers run DCN / DCN-v2 without a wide part: like for like
        ),
        train=CtrTrainConfig(
            batch_size=BATCH, epochs=epochs, lr=LR, emb_l2=EMB_L2, patience=patience,
            valid_fraction=VALID, test_fraction=TEST, max_threads=2,
        ),
    )  # fmt: skip
    t0 = time.perf_counter()
    res = train_ctr(CtrSource(parquet), cfg, seed=42)
    wall = time.perf_counter() - t0
    m = res.metrics
    return {
        "system": "strata",
        "model": model,
        "auc": m["test"]["auc"],
        "logloss": m["test"]["logloss"],
        "train_rows": m["split"]["train"][1] - m["split"]["train"][0],
        "epochs_run": len(m["history"]),
        "fit_seconds": m["train_seconds"],
        "samples_per_s": m["samples_per_s"],
        "wall_seconds": wall,
        "params": sum(p.numel() for p in res.model.parameters()),
        "_result": res,
    }


def fuxictr(csv_dir: Path, work: Path, model: str, epochs: int, patience: int) -> dict[str, Any]:
    """Train FuxiCTR's DCN / DCNv2 in its own environment on the same split."""
    out = work / f"fuxictr-{model}.json"
    cmd = [
        str(FUXI_PY), str(ROOT / "bench" / "fuxictr_peer.py"),
        "--data", str(csv_dir), "--work", str(work / f"fuxi-{model}"),
        "--model", "DCN" if model == "dcn" else "DCNv2",
        "--emb", str(EMB), "--cross", str(CROSS[model]),
        "--hidden", ",".join(map(str, HIDDEN)), "--dropout", str(DROPOUT),
        "--batch", str(BATCH), "--lr", str(LR), "--epochs", str(epochs),
        # FuxiCTR stops after `patience` evaluations without improvement, ours after patience+1.
        "--patience", str(patience + 1), "--min-count", str(MIN_COUNT),
        "--emb-reg", str(EMB_L2), "--threads", "2", "--out", str(out),
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"FuxiCTR run failed:\n{proc.stderr[-4000:]}")
    res = json.loads(out.read_text())
    res["wall_seconds"] = wall
    res["model"] = model
    return res


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serving_latency(home: Path, rows: pd.DataFrame, requests: int, reps: int) -> dict[str, Any]:
    """p50/p99/p99.9 of /ctr/predict (batches of 1 and 256), median and min-max over `reps`
    freshly started `strata ctr serve` processes, with the server's GC pauses per run."""
    runs = [_serving_run(home, rows, requests) for _ in range(reps)]
    out: dict[str, Any] = {}
    for key in runs[0]:
        vals = {m: [r[key][m] for r in runs] for m in ("p50_ms", "p99_ms", "p999_ms", "rows_per_s")}
        out[key] = {
            "requests": runs[0][key]["requests"],
            "reps": reps,
            **{m: float(np.median(v)) for m, v in vals.items()},
            "spread": {m: [float(min(v)), float(max(v))] for m, v in vals.items()},
            "gc_collections_per_rep": [r[key]["gc"] for r in runs],
        }
    return out


def _gc_counts(c: Any) -> dict[str, int]:
    """Collections so far per generation, from the server's `strata_gc_pause_seconds_count`."""
    counts = {}
    for line in c.get("/metrics").text.splitlines():
        if line.startswith("strata_gc_pause_seconds_count"):
            gen = line.split('generation="')[1].split('"')[0]
            counts[gen] = int(float(line.rsplit(" ", 1)[1]))
    return counts


def _serving_run(home: Path, rows: pd.DataFrame, requests: int) -> dict[str, Any]:
    """One fresh server: sequential requests of 1 and 256 rows on a keep-alive connection."""
    import httpx

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
    env.update({"STRATA_HOME": str(home), "STRATA_CTR__REGISTRY_NAME": "ctr-bench"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "strata.cli", "ctr", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    recs = [
        {k: (None if v is None or v != v else v) for k, v in r.items()}
        for r in rows.drop(columns=[LABEL]).astype(object).to_dict("records")
    ]
    url = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("strata ctr serve did not start")
            time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=30) as c:
            for size in (1, 256):
                n = requests if size == 1 else max(50, requests // 4)
                rng = np.random.default_rng(size)
                bodies = [
                    {"rows": [recs[i] for i in rng.integers(0, len(recs), size)]}
                    for _ in range(n + 50)
                ]
                lat = []
                gc0 = None
                for i, body in enumerate(bodies):
                    if i == 50:  # warm-up excluded
                        gc0 = _gc_counts(c)
                    t = time.perf_counter()
                    r = c.post("/ctr/predict", json=body)
                    dt = time.perf_counter() - t
                    if r.status_code != 200:
                        raise SystemExit(f"/ctr/predict answered {r.status_code}: {r.text[:200]}")
                    if i >= 50:
                        lat.append(dt * 1000)
                gc1 = _gc_counts(c)
                a = np.asarray(lat)
                out[f"batch_{size}"] = {
                    "requests": int(a.size),
                    "p50_ms": float(np.percentile(a, 50)),
                    "p99_ms": float(np.percentile(a, 99)),
                    "p999_ms": float(np.percentile(a, 99.9)),
                    "rows_per_s": float(size * a.size / (a.sum() / 1000)),
                    "gc": {g: gc1[g] - (gc0 or {}).get(g, 0) for g in gc1},
                }
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--synthetic-rows", type=int, default=100_000)
    ap.add_argument("--epochs-8k", type=int, default=5)
    ap.add_argument("--epochs-synthetic", type=int, default=1)
    ap.add_argument("--patience", type=int, default=1)
    ap.add_argument("--no-fuxictr", action="store_true")
    ap.add_argument("--requests", type=int, default=3000, help="batch-1 requests per run")
    ap.add_argument("--serving-reps", type=int, default=3, help="fresh servers to measure")
    ap.add_argument("--datasets", default="criteo_8k,synthetic")
    args = ap.parse_args()
    if not args.no_fuxictr and not FUXI_PY.exists():
        raise SystemExit(f"{FUXI_PY} missing: see bench/requirements-fuxictr.txt (or --no-fuxictr)")

    rows: list[dict[str, Any]] = []
    serving: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ctr-bench-") as tmp_s:
        tmp = Path(tmp_s)
        for ds in args.datasets.split(","):
            if ds == "criteo_8k":
                if not CRITEO_8K.exists():
                    print(f"skip criteo_8k: {CRITEO_8K} absent", file=sys.stderr)
                    continue
                df, epochs = load_criteo_8k(), args.epochs_8k
            else:
                df, epochs = load_synthetic(args.synthetic_rows), args.epochs_synthetic
            name = ds if ds == "criteo_8k" else f"synthetic_{len(df)}"
            parquet, csv_dir = write_inputs(df, tmp / name)
            for model in ("dcn", "dcnv2"):
                r = ours(parquet, model, epochs, args.patience)
                result = r.pop("_result")
                rows.append({"dataset": name, **r})
                print(f"{name} strata {model}: {r['samples_per_s']:.0f}/s auc {r['auc']:.4f}",
                      file=sys.stderr)  # fmt: skip
                if ds == "criteo_8k" and model == "dcn":
                    publish(result, Registry(Settings(home=tmp / "serve-home").registry_dir,
                                             "ctr-bench"))  # fmt: skip
                    serving = serving_latency(
                        tmp / "serve-home", df, args.requests, args.serving_reps
                    )
                if not args.no_fuxictr:
                    f = fuxictr(csv_dir, tmp / name, model, epochs, args.patience)
                    rows.append({"dataset": name, **f})
                    print(f"{name} fuxictr {model}: {f['samples_per_s']:.0f}/s auc {f['auc']:.4f}",
                          file=sys.stderr)  # fmt: skip

    print_table(rows, serving)
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "ctr_vs_peers",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_1m": os.getloadavg()[0],
        },
        "config": {
            "emb": EMB,
            "hidden": HIDDEN,
            "dropout": DROPOUT,
            "batch": BATCH,
            "lr": LR,
            "cross": CROSS,
            "min_count": MIN_COUNT,
            "emb_l2": EMB_L2,
            "split": {"valid": VALID, "test": TEST},
            "epochs_8k": args.epochs_8k,
            "epochs_synthetic": args.epochs_synthetic,
            "synthetic_rows": args.synthetic_rows,
        },
        "training": rows,
        "serving": serving,
    }
    out = RESULTS / "ctr_vs_peers.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {out}")


def print_table(rows: list[dict[str, Any]], serving: dict[str, Any]) -> None:
    """One line per (dataset, model, system) and the speed-up over FuxiCTR."""
    print(f"{'dataset':18s} {'model':6s} {'system':8s} {'samples/s':>10s} {'x fuxi':>7s} "
          f"{'AUC':>7s} {'logloss':>8s} {'epochs':>6s} {'wall s':>7s}")  # fmt: skip
    peer = {(r["dataset"], r["model"]): r for r in rows if r["system"] == "fuxictr"}
    for r in rows:
        p = peer.get((r["dataset"], r["model"]))
        ratio = f"{r['samples_per_s'] / p['samples_per_s']:.2f}" if p else "-"
        print(f"{r['dataset']:18s} {r['model']:6s} {r['system']:8s} {r['samples_per_s']:10.0f} "
              f"{ratio:>7s} {r['auc']:7.4f} {r['logloss']:8.4f} {r['epochs_run']:6d} "
              f"{r['wall_seconds']:7.1f}")  # fmt: skip
    for k, v in serving.items():
        sp = v["spread"]
        print(f"serving /ctr/predict {k}: median of {v['reps']} servers: p50 {v['p50_ms']:.2f} "
              f"p99 {v['p99_ms']:.2f} ({sp['p99_ms'][0]:.2f}-{sp['p99_ms'][1]:.2f}) p99.9 "
              f"{v['p999_ms']:.2f} ms ({v['requests']} requests each, {v['rows_per_s']:.0f} rows/s;"
              f" gc per run {v['gc_collections_per_rep']})")  # fmt: skip


if __name__ == "__main__":
    main()
