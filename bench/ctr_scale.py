"""CTR training at Criteo scale: `strata ctr train` on N rows of the Criteo-format synthetic
generator, as a user runs it, with 1 and N ranks: samples/s, peak memory of the whole process
tree (launcher + torchrun + ranks), held-out AUC, wall time.

Usage: .venv/bin/python bench/ctr_scale.py [--rows 20000000] [--ranks 1,2] [--repeats 1]
                                           [--epochs 1] [--batch B] [--deep 256,256]
                                           [--device cpu|cuda|auto] [--data-dir DIR]
The rows are generated once into `--data-dir` (a Criteo Parquet folder, 1M-row parts, the
layout `strata` converts a day file into), then reused. Every run trains a fresh version in a
fresh STRATA_HOME with the shipped CTR config (DCN, batch 512 per rank) except `--epochs`;
`--batch` overrides the per-rank batch and `--deep` the deep tower's widths. Peak RSS is
sampled every 0.2 s over the process tree. `strata ctr train` also fits its hashed-LR baseline
(the promotion gate's yardstick) on the same rows, inside the wall time; the runs pass `--force`
(this measures training, not the choice) and record the gate's numbers.
Writes bench/results/ctr_scale.json (every run) and prints the median and min-max spread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

PART_ROWS = 1_000_000
STRATA = Path(sys.executable).parent / "strata"


def generate(out: Path, rows: int) -> Path:
    """`rows` synthetic Criteo rows as a Criteo Parquet folder with its manifest (idempotent)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from strata.datasets.criteo import (
        CRITEO_COLUMNS,
        MANIFEST,
        CriteoParquetInfo,
        criteo_schema,
        read_manifest,
    )
    from strata.datasets.criteo_synthetic import criteo_like

    if (out / MANIFEST).is_file() and read_manifest(out).rows == rows:
        return out
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part-*.parquet"):
        old.unlink()
    positives, t0 = 0, time.perf_counter()
    for part, start in enumerate(range(0, rows, PART_ROWS)):
        df = criteo_like(min(PART_ROWS, rows - start), seed=part)
        positives += int(df["label"].sum())
        table = pa.Table.from_pandas(df[list(CRITEO_COLUMNS)], schema=criteo_schema())
        pq.write_table(table, out / f"part-{part:05d}.parquet", compression="zstd")
        print(f"  generated part {part} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    parts = (rows + PART_ROWS - 1) // PART_ROWS
    info = CriteoParquetInfo("criteo_like", str(out), rows, positives, parts, PART_ROWS)
    (out / MANIFEST).write_text(json.dumps(asdict(info), indent=2))
    return out


class PeakRss:
    """Peak RSS of a process and all its descendants, sampled on a thread: `peak` of their sum,
    and `peaks` of each descendant whose command line holds `match` (none without it)."""

    def __init__(self, pid: int, every_s: float = 0.2, match: str | None = None) -> None:
        import psutil

        self._root = psutil.Process(pid)
        self._every = every_s
        self._match = match
        self.peak = 0
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            try:
                procs = [self._root, *self._root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    if self._match is not None and self._match in p.cmdline():
                        self.peaks[p.pid] = max(self.peaks.get(p.pid, 0), rss)
                except psutil.NoSuchProcess:
                    continue  # a child that ended between listing and reading
                total += rss
            self.peak = max(self.peak, total)
            self._stop.wait(self._every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def measured(
    cmd: list[str], env: dict[str, str], match: str | None = None
) -> tuple[subprocess.CompletedProcess[bytes], PeakRss, float]:
    """Run `cmd` to the end, sampling its memory (`PeakRss`); (result, sampler, wall seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    rss = PeakRss(proc.pid, match=match)
    stdout, stderr = proc.communicate()
    rss.stop()
    wall = time.perf_counter() - t0
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr), rss, wall


def run_once(
    data: Path, ranks: int, epochs: int, batch: int | None, deep: str | None, device: str = "cpu"
) -> dict[str, object]:
    """One `strata ctr train` in a fresh home; its JSON plus wall time and peak RSS."""
    with tempfile.TemporaryDirectory(prefix="strata-ctr-scale-") as home:
        env = {**os.environ, "STRATA_HOME": home}
        if batch is not None:
            env["STRATA_CTR__TRAIN__BATCH_SIZE"] = str(batch)
        if deep is not None:
            env["STRATA_CTR__MODEL__DEEP"] = json.dumps([int(w) for w in deep.split(",")])
        cmd = [str(STRATA), "ctr", "train", "--data", str(data), "--epochs", str(epochs)]
        cmd += ["--nproc", str(ranks), "--device", device, "--force"]
        proc, rss, wall = measured(cmd, env)
        peak = rss.peak
    if proc.returncode != 0:
        tail = proc.stderr.decode()[-3000:]
        raise SystemExit(f"strata ctr train failed ({proc.returncode}):\n{tail}")
    out = json.loads(proc.stdout)
    return {
        "ranks": ranks,
        "samples_per_s": out["samples_per_s"],
        "rows_seen": out["rows_seen"],
        "test_auc": out["test"]["auc"],
        "test_rows": out["test"]["rows"],
        "valid_auc": out["valid_auc"],
        "baseline_valid_auc": out["promotion"]["baseline_valid_auc"],
        "gate_accepted": out["promotion"]["accepted"],
        "peak_rss_gb": peak / 2**30,
        "wall_s": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000_000)
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=None, help="per-rank batch (default: config)")
    ap.add_argument("--deep", default=None, help="deep layer widths, e.g. 256,256 (config)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "strata-ctr")
    args = ap.parse_args()
    data = generate(args.data_dir / f"rows-{args.rows}", args.rows)
    runs = []
    for ranks in (int(r) for r in args.ranks.split(",")):
        for i in range(args.repeats):
            r = run_once(data, ranks, args.epochs, args.batch, args.deep, args.device)
            runs.append(r)
            print(json.dumps({"run": i, **r}), file=sys.stderr)
    print(
        f"\n{args.rows:,} rows, {args.epochs} epoch(s), batch {args.batch or 'config'} per rank, "
        f"deep {args.deep or 'config'}; median (min-max) of {args.repeats}"
    )
    print("ranks  samples/s                 peak RSS GB        test AUC   wall s")
    for ranks in sorted({int(r["ranks"]) for r in runs}):  # type: ignore[call-overload]
        mine = [r for r in runs if r["ranks"] == ranks]

        def col(key: str, fmt: str, rs: list[dict[str, object]] = mine) -> str:
            vals = [float(r[key]) for r in rs]  # type: ignore[arg-type]
            med = format(statistics.median(vals), fmt)
            return f"{med} ({format(min(vals), fmt)}-{format(max(vals), fmt)})"

        print(
            f"{ranks:<6} {col('samples_per_s', ',.0f'):25s} {col('peak_rss_gb', '.2f'):18s} "
            f"{col('test_auc', '.4f')}  {col('wall_s', '.0f')}"
        )
    res = Path(__file__).parent / "results"
    res.mkdir(exist_ok=True)
    meta = {"rows": args.rows, "epochs": args.epochs, "batch": args.batch, "deep": args.deep}
    meta["device"] = args.device
    meta |= {"cpus": os.cpu_count(), "machine": platform.processor() or platform.machine()}
    (res / "ctr_scale.json").write_text(json.dumps({**meta, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
