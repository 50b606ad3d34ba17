"""`make stress-test`: run the multi-process tests (torchrun ranks, gloo jobs, serving replicas,
Spark, tritonserver; the `multiprocess` marker) many times while every core is kept busy, and
report each run. A flake that shows up once in a full suite on a loaded CI machine shows up here.

    python tests/stress.py [--runs 20] [--busy N] [--keep DIR] [pytest args: -m multiprocess]

Each run is a fresh pytest process; the busy loops are plain Python spinning at full speed, one
per core by default. Exits 1 if any run failed; every run's log is kept in --keep.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPIN = "while True: pass"


def _summary(log: str) -> str:
    """pytest's closing line ('3 passed, 1 failed in 12.3s'), or the last line of the log."""
    lines = [x.strip("= ") for x in log.strip().splitlines() if x.strip()]
    found = [x for x in lines if re.search(r"\d+ (passed|failed|error)", x)]
    return (found or lines or ["(no output)"])[-1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="busy-loop processes")
    ap.add_argument("--keep", type=Path, default=ROOT / "tests" / "stress-logs")
    args, pytest_args = ap.parse_known_args(argv)
    pytest_args = pytest_args or ["-m", "multiprocess"]  # anything else goes to pytest
    args.keep.mkdir(parents=True, exist_ok=True)
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(args.busy)]
    failed: list[int] = []
    try:
        for i in range(1, args.runs + 1):
            t0 = time.monotonic()
            cmd = [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-rf",
                "--durations=10",
            ]
            proc = subprocess.run(
                [*cmd, *pytest_args], cwd=ROOT, capture_output=True, text=True, check=False
            )
            log = proc.stdout + proc.stderr
            ok = proc.returncode == 0
            (args.keep / f"run-{i:02d}.log").write_text(log)
            if not ok:
                failed.append(i)
            verdict = "ok  " if ok else "FAIL"
            print(
                f"run {i:2d}/{args.runs} {verdict} {time.monotonic() - t0:6.0f} s  {_summary(log)}"
            )
            for line in log.splitlines():
                if line.startswith("FAILED "):
                    print(f"          {line}")
            sys.stdout.flush()
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    good = args.runs - len(failed)
    print(f"stress-test: {good} of {args.runs} runs green under {args.busy} busy loops", end="")
    print(f"; failed runs {failed}" if failed else "", f"(logs in {args.keep})")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
