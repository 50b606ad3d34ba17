"""Figures for the documentation's benchmarks page, drawn from the benchmarks' JSON.

    .venv/bin/python bench/plots.py [--out docs/img/bench] [--published]

Each figure reads what its script writes to `bench/results/` (`serve_load.json`, the newest
`online_store-*.json`, `ctr_small_data_6k-1k-1k.json`). Where a run's file is absent (results are
not committed), it reads `bench/published/`: the published figures, transcribed into the same
layout with a `source` note saying where they come from. `--published` always uses those. Every
figure names the file it was drawn from in its corner.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PUBLISHED = ROOT / "bench" / "published"


def load(pattern: str, published: bool) -> tuple[Any, Path]:
    """The newest `bench/results/<pattern>` (unless `published`), else `bench/published/`'s."""
    runs = [] if published else sorted(RESULTS.glob(pattern), key=lambda p: p.stat().st_mtime)
    path = runs[-1] if runs else next(PUBLISHED.glob(pattern))
    return json.loads(path.read_text()), path


def _finish(fig: Any, path: Path, out: Path) -> Path:
    """Label the figure with its data file, save it without a version stamp, close it."""
    fig.text(0.99, 0.01, f"data: {path.relative_to(ROOT)}", ha="right", va="bottom", fontsize=7,
             color="0.4")  # fmt: skip
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(out, dpi=110, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return out


def _err(stat: dict[str, float]) -> tuple[list[float], list[float]]:
    """Matplotlib's asymmetric error bar (below, above) for one median / min / max record."""
    return [stat["median"] - stat["min"]], [stat["max"] - stat["median"]]


def serve_load(out: Path, published: bool) -> Path:
    """p50 / p99 / p99.9 of `/recommend` against the open-loop rate, per catalogue."""
    import matplotlib.pyplot as plt

    data, path = load("serve_load.json", published)
    sizes = data["results"] if isinstance(data, dict) else data
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.6 * len(sizes), 3.6), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        rates = sorted(size["open_loop"], key=int)
        for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")):
            stats = [size["open_loop"][r][key] for r in rates]
            lo = [s["median"] - s["min"] for s in stats]
            hi = [s["max"] - s["median"] for s in stats]
            ax.errorbar([int(r) for r in rates], [s["median"] for s in stats], yerr=[lo, hi],
                        marker="o", capsize=3, label=label)  # fmt: skip
        ax.set_yscale("log")
        ax.set_xlabel("open-loop rate (requests/s)")
        ax.set_ylabel("latency (ms, log scale)")
        ax.set_title(f"/recommend, {size['size']} ({size.get('items', '?'):,} items)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    return _finish(fig, path, out / "serve_load.png")


def online_store(out: Path, published: bool) -> Path:
    """p50 and p99 of online-store reads: strata on Valkey against Feast on the same Valkey."""
    import matplotlib.pyplot as plt

    data, path = load("online_store*.json", published)
    measures = [("user_1", "1 user row"), ("items_300", "300 item rows")]
    backends = [b for b in ("valkey", "valkey_cluster_path", "feast_redis") if b in data["reads"]]
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    width = 0.8 / (2 * len(backends))
    for m, (key, _label) in enumerate(measures):
        for b, backend in enumerate(backends):
            res = data["reads"][backend].get(key)
            if not isinstance(res, dict) or "p50_ms" not in res:
                continue
            for q, quantile in enumerate(("p50_ms", "p99_ms")):
                x = m + (2 * b + q - len(backends) + 0.5) * width
                ax.bar(x, res[quantile], width, color=f"C{b}", alpha=1.0 if q else 0.55,
                       label=f"{backend} {quantile[:3]}")  # fmt: skip
                ax.annotate(f"{res[quantile]:g}", (x, res[quantile]), ha="center", va="bottom",
                            fontsize=7)  # fmt: skip
    ax.set_xticks(range(len(measures)), [label for _, label in measures])
    ax.set_yscale("log")
    ax.set_ylabel("latency per call (ms, log scale)")
    ax.set_title("Online-store reads: strata vs Feast (same Valkey)")
    handles, labels = ax.get_legend_handles_labels()
    seen = dict(zip(labels, handles, strict=True))
    ax.legend(seen.values(), seen.keys(), fontsize=8)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    return _finish(fig, path, out / "online_store.png")


def ctr_small_data(out: Path, published: bool) -> Path:
    """Test AUC per system on criteo_8k's tail: median with the min-max over seeds."""
    import matplotlib.pyplot as plt

    data, path = load("ctr_small_data_6k-1k-1k.json", published)
    systems = [s for s in data["summary"] if "test_auc" in data["summary"][s]]
    fig, ax = plt.subplots(figsize=(7.0, 3.6))
    for i, system in enumerate(systems):
        stat = data["summary"][system]["test_auc"]
        ax.errorbar(i, stat["median"], yerr=_err(stat), fmt="o", capsize=4,
                    color="C3" if system == "hashed_lr" else "C0")  # fmt: skip
    lr = data["summary"].get("hashed_lr", {}).get("test_auc")
    if lr:
        ax.axhline(lr["median"], color="C3", linestyle="--", linewidth=1, label="hashed LR median")
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(systems)), systems, rotation=15)
    ax.set_ylabel("test AUC (1,000 rows)")
    ax.set_title("CTR on small data (criteo_8k, 6k/1k/1k): median and min-max of 3 seeds")
    ax.grid(True, axis="y", alpha=0.3)
    return _finish(fig, path, out / "ctr_small_data.png")


FIGURES = (serve_load, online_store, ctr_small_data)


def main(argv: list[str] | None = None) -> list[Path]:
    """Draw every figure; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "bench")
    ap.add_argument("--published", action="store_true", help="only bench/published/ figures")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    written = [figure(args.out, args.published) for figure in FIGURES]
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
