"""Live catalogue: time from `POST /items` to retrievable, with and without an image, on
MovieLens-100K trained with text and poster content (../shared/data).

    .venv/bin/python bench/live_items.py                 # ~6 min: encode + train + 3 x 20 adds
    .venv/bin/python bench/live_items.py --home /tmp/lb  # reuse a trained home

Trains once (`features encode --images`, `train`, 3 epochs) unless the home already serves,
then per repetition starts a fresh `strata serve` (memory store) and adds `--n` items with a
poster and `--n` without, each a copy of a real movie's title, genres and year under a new id.
`POST /items` answers after the serving replica swapped its pipeline, so the request's wall
time is the time to retrievable there (each add is then read back with `GET /items`). Every
repetition starts from an empty live catalogue, so the last add of a repetition rebuilds
2 x n + 1 live items. The first add of a server loads the item tower and the encoders and is
reported apart. Prints median and p90 with the min-max of the medians over repetitions; writes
bench/results/live_items.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
STRATA = [sys.executable, "-m", "strata.cli"]
TOKEN = "bench-token"


def _run(env: dict[str, str], *args: str) -> None:
    res = subprocess.run([*STRATA, *args], env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"strata {' '.join(args)} failed:\n{res.stderr[-2000:]}")


def _serve(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([*STRATA, "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("server did not become ready")


def shared_movielens() -> tuple[Path, Path] | None:
    """The shared ML-100K folder and its posters (None, with the reason printed, if absent)."""
    ml, posters = SHARED / "ml-100k", SHARED / "ml-100k-posters"
    if ml.is_dir() and posters.is_dir():
        return ml, posters
    print(f"needs {ml} and {posters}", file=sys.stderr)
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--home", type=Path, default=None)
    ap.add_argument("--n", type=int, default=20, help="adds with and without image per rep")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    found = shared_movielens()
    if found is None:
        return 2
    ml, posters = found
    home = args.home or Path(tempfile.mkdtemp(prefix="strata-live-bench-"))
    env = {**os.environ, "STRATA_HOME": str(home), "STRATA_SERVE__ADMIN_TOKEN": TOKEN}
    if not (home / "registry" / "movielens-100k" / "serving").exists():
        t0 = time.monotonic()
        _run(env, "features", "encode", "--dataset", "movielens-100k", "--path", str(ml),
             "--images", str(posters))  # fmt: skip
        _run(env, "train", "--dataset", "movielens-100k", "--images",
             str(posters), "--epochs", "3")  # fmt: skip
        print(f"trained in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    from strata.datasets.movielens import read_movielens_100k

    items = read_movielens_100k(ml).items.sort_values("item_id").reset_index(drop=True)
    with_img = [r for r in items.itertuples() if (posters / f"{r.item_id}.jpg").is_file()]
    runs: list[dict[str, list[float]]] = []
    next_id = 100_000
    for rep in range(args.reps):
        port = 18000 + rep
        import shutil

        shutil.rmtree(home / "catalog", ignore_errors=True)  # each repetition starts empty
        proc = _serve(env, port)
        url = f"http://127.0.0.1:{port}"
        got: dict[str, list[float]] = {"first": [], "image": [], "no_image": []}
        try:
            with httpx.Client(base_url=url, timeout=120,
                              headers={"Authorization": f"Bearer {TOKEN}"}) as c:  # fmt: skip
                for i in range(2 * args.n + 1):
                    src = with_img[(rep * 97 + i) % len(with_img)]
                    body = {"item_id": next_id, "title": f"{src.title} (live)",
                            "genres": list(src.genres), "year": None if src.year is None
                            or src.year != src.year else int(src.year)}  # fmt: skip
                    kind = "first" if i == 0 else ("image" if i % 2 else "no_image")
                    if kind != "no_image":
                        data = (posters / f"{src.item_id}.jpg").read_bytes()
                        body["image_base64"] = base64.b64encode(data).decode()
                    t0 = time.perf_counter()
                    r = c.post("/items", json=body)
                    took = time.perf_counter() - t0
                    if r.status_code != 201:
                        raise SystemExit(f"POST /items: {r.status_code} {r.text}")
                    assert c.get(f"/items/{next_id}").json()["live"]["title"] == body["title"]
                    got[kind].append(took * 1000.0)
                    next_id += 1
        finally:
            proc.terminate()
            proc.wait(30)
        runs.append(got)
        print(f"rep {rep}: first {got['first'][0]:.0f} ms; with image median "
              f"{statistics.median(got['image']):.0f} ms; without "
              f"{statistics.median(got['no_image']):.0f} ms", file=sys.stderr)  # fmt: skip

    def summary(kind: str) -> dict[str, float]:
        meds = [statistics.median(r[kind]) for r in runs]
        p90s = [statistics.quantiles(r[kind], n=10)[-1] if len(r[kind]) > 1 else r[kind][0]
                for r in runs]  # fmt: skip
        return {"median_ms": statistics.median(meds), "median_min": min(meds),
                "median_max": max(meds), "p90_ms": statistics.median(p90s)}  # fmt: skip

    out = {k: summary(k) for k in ("first", "image", "no_image")}
    out["live_items_at_end"] = 2 * args.n + 1
    print(json.dumps(out, indent=2))
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "live_items.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
