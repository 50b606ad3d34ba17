"""The main job (`strata demo` / `make demo`): the whole offline path on embedded defaults.

acquire dataset -> offline store (ingest + features) -> content encoders -> train two-tower and
ranker (temporal cut at the 80% quantile, so the summary carries honest held-out metrics) -> ANN
index -> materialize online features -> sample recommendations from the serving pipeline (a warm
and a cold user) -> summary -> serve over HTTP (unless --no-serve).
Each step calls the same library function as its CLI command; nothing here holds logic of its own
beyond ordering the steps and reporting them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from rich.console import Console
from rich.table import Table

from strata.config import Settings

if TYPE_CHECKING:
    from strata.features.online import OnlineStore

log = logging.getLogger(__name__)
T = TypeVar("T")

# Progress and the report go to stderr/stdout through rich; the demo is a CLI-facing module.
_console = Console()


@dataclass
class DemoReport:
    """What the demo did: per-step wall times and the facts worth printing."""

    dataset: str
    timings: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)

    def step(self, name: str, fn: Callable[[], T]) -> T:
        """Run one step, time it and announce it."""
        _console.print(f"[bold cyan]>>[/] {name} ...")
        t0 = time.perf_counter()
        out = fn()
        self.timings[name] = time.perf_counter() - t0
        _console.print(f"   done in {self.timings[name]:.1f}s")
        return out


def run_demo(
    settings: Settings,
    dataset: str = "movielens-100k",
    serve: bool = True,
    images: Path | None = None,
    epochs: int | None = None,
) -> DemoReport:
    """Run the offline path end to end and print a summary; `serve` then starts the HTTP app."""
    from strata.datasets import load
    from strata.features.materialize import materialize
    from strata.features.offline import OfflineStore, ingest_dataset
    from strata.features.online import open_online_store
    from strata.training.content import encode_and_store
    from strata.training.evaluate import quantile_ts
    from strata.training.index_build import build_version_index
    from strata.training.train import train

    report = DemoReport(dataset)
    ds = report.step("acquire dataset", lambda: load(dataset, images=images, settings=settings))
    report.facts.update({f"data.{k}": v for k, v in ds.summary().items()})

    store = OfflineStore(settings)
    report.step("offline store: ingest", lambda: ingest_dataset(store, ds, dataset))
    cut = quantile_ts(ds, 0.8)
    built = report.step("offline store: features", lambda: store.build(dataset, until=cut))
    report.facts["features.until"] = cut
    report.facts["features.user_rows"] = built["user_rows"]
    report.facts["features.item_rows"] = built["item_rows"]

    content = report.step(
        "content encoders (text + image)",
        lambda: encode_and_store(settings, dataset, images=images),
    )
    report.facts["content.has_text"] = content["has_text"]
    report.facts["content.has_image"] = content["has_image"]

    result = report.step(
        "train two-tower + DCN-v2 ranker",
        lambda: train(settings, dataset, until=cut, epochs=epochs),
    )
    report.facts["model.version"] = result.version
    for key, value in sorted(result.metrics.items()):
        if key.startswith(("holdout_", "ranker_auc")):
            report.facts[f"metric.{key}"] = round(float(value), 4)

    index = report.step("ANN index", lambda: build_version_index(settings, dataset))
    report.facts["index.kind"] = index.get("kind")

    # One online store for the whole run: with the embedded backend it lives in this process, so
    # the store that is filled here is the one the samples and the server read.
    online_store = open_online_store(settings.online)
    online = report.step(
        "materialize online features",
        lambda: materialize(settings, dataset, store=online_store),
    )
    report.facts["online.user_version"] = online["user"]["version"]

    report.samples = report.step(
        "sample recommendations (serving pipeline)",
        lambda: _samples(settings, dataset, ds, cut, online_store),
    )
    _print_report(report)
    if serve:
        _serve(settings, dataset, report, online_store)
    return report


def _serve(settings: Settings, dataset: str, report: DemoReport, store: OnlineStore) -> None:
    """Serve the trained version on 127.0.0.1:8000 (blocks) after printing example requests."""
    from strata.serving.app import serve

    cfg = settings.serve.model_copy(update={"dataset": dataset})
    settings = settings.model_copy(update={"serve": cfg})
    user = report.samples[0]["user_id"] if report.samples else 1
    base = f"http://{cfg.host}:{cfg.port}"
    json_h = "-H 'content-type: application/json'"
    examples = [
        f"curl '{base}/recommend?user_id={user}&k=5&device=mobile'",
        f'curl -X POST {base}/recommend {json_h} -d \'{{"k": 5, "device": "tv"}}\'',
        f'curl -X POST {base}/events {json_h} -d \'{{"event_id": "demo-1", '
        f'"user_id": {user}, "item_id": 50, "type": "click", "ts": 893286638}}\'',
        f"curl {base}/items/50",
        f"curl {base}/readyz",
        f"curl {base}/metrics",
    ]
    _console.print(f"[bold green]serving {dataset} on {base}[/] (Ctrl-C to stop). Try:")
    for line in examples:
        # soft_wrap: a command wrapped at the terminal width could not be pasted back.
        _console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    serve(settings, cfg.host, cfg.port, store=store)


def _samples(
    settings: Settings, dataset: str, ds: Any, cut: int, store: OnlineStore
) -> list[dict[str, Any]]:
    """Top-5 from the serving pipeline (the object behind HTTP) for the most active user before
    the cut and for a user with no history then (cold start)."""
    import numpy as np

    from strata.serving.online import OnlineLink
    from strata.serving.service import RecommendationPipeline

    inter = ds.interactions
    before = inter[inter["ts"] < cut]
    warm = int(before["user_id"].value_counts().index[0])
    cold_pool = np.setdiff1d(ds.users["user_id"].to_numpy(), before["user_id"].unique())
    users = [warm] + ([int(cold_pool[0])] if len(cold_pool) else [])
    pipe = RecommendationPipeline.load(settings, dataset, link=OnlineLink.open(settings, store))
    recs = pipe.recommend_many(np.asarray(users, np.int64), 5)
    titles = ds.items.set_index("item_id")["title"]
    return [
        {
            "user_id": user,
            "kind": "warm" if user == warm else "cold start",
            "items": [
                f"{titles.get(int(i), i)} ({s:.3f})"
                for i, s in zip(rec.item_ids, rec.scores, strict=True)
            ],
        }
        for user, rec in zip(users, recs, strict=True)
    ]


def _print_report(report: DemoReport) -> None:
    table = Table(title=f"strata demo: {report.dataset}")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for name, secs in report.timings.items():
        table.add_row(name, f"{secs:.1f}")
    table.add_row("[bold]total", f"[bold]{sum(report.timings.values()):.1f}")
    _console.print(table)
    facts = Table(title="facts")
    facts.add_column("key")
    facts.add_column("value")
    for key, value in report.facts.items():
        facts.add_row(key, str(value))
    _console.print(facts)
    for sample in report.samples:
        _console.print(f"[bold]user {sample['user_id']}[/] ({sample['kind']}):")
        for line in sample["items"]:
            _console.print(f"  - {line}")
