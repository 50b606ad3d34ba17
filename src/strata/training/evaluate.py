"""Offline evaluation harness: a global temporal split, ranking metrics per slice, and baselines.

Every system under test (the trained pipeline, its retrieval stage, and the baselines here) is
anything with `recommend(user_ids, k, stage=..., exclude=...) -> (item ids (U, k), scores (U, k))`
(contract 4). The harness asks each one for the users that have held-out interactions, passing
the items each user interacted with before the split as `exclude`, and scores the lists against
the held-out interactions:

- all: every user with a held-out interaction with an item they had not seen before the split;
- warm_users: those with history before the split; cold_users: those without;
- cold_items: held-out interactions with items that have no interactions before the split
  (recall of exactly those, per user), which only content features can find.

Baselines (`strata.training.baselines`): popularity (all-time, and over the last 30 days before
the split: the window of the models' item popularity feature), item-KNN (cosine over the binary
train matrix) and ALS from `implicit`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from strata import progress
from strata.engine.recommend import Stage
from strata.errors import NotFoundError, ValidationError
from strata.training.metrics import coverage, hit_matrix

if TYPE_CHECKING:
    import pandas as pd

    from strata.config import Settings
    from strata.datasets.base import RecDataset

log = logging.getLogger(__name__)

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 20, 50, 100)
SLICES = ("all", "warm_users", "cold_users", "cold_items")


class SystemUnderTest(Protocol):
    """What the harness evaluates: top-k item ids and scores per user (contract 4)."""

    def recommend(
        self,
        user_ids: np.ndarray,
        k: int,
        stage: Stage = "full",
        exclude: dict[int, set[int]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Item ids (U, k) int64 (-1 pads a short list) and scores (U, k) float32."""
        ...


# --- split ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemporalSplit:
    """Interactions before `until` (train) and from `until` on (test), plus the eval targets."""

    until: int
    item_ids: np.ndarray  # (I,) sorted catalog
    user_ids: np.ndarray  # (N,) every known user
    train: pd.DataFrame
    test: pd.DataFrame
    seen: dict[int, set[int]]  # user -> items interacted with before `until`
    eval_users: np.ndarray  # (U,) users with something new to find after `until`
    relevant: list[np.ndarray]  # per eval user: held-out items not seen before `until`
    warm: np.ndarray  # (U,) bool: eval user has history before `until`
    cold_items: np.ndarray  # items with no interaction before `until`

    def summary(self) -> dict[str, int]:
        """Counts printed in the report."""
        cold = set(self.cold_items.tolist())
        return {
            "until": int(self.until),
            "n_items": len(self.item_ids),
            "n_users": len(self.user_ids),
            "train_interactions": len(self.train),
            "test_interactions": len(self.test),
            "eval_users": len(self.eval_users),
            "warm_users": int(self.warm.sum()),
            "cold_users": int((~self.warm).sum()),
            "cold_items": len(self.cold_items),
            "cold_item_users": sum(1 for r in self.relevant if cold.intersection(r.tolist())),
        }


def temporal_split(ds: RecDataset, until: int) -> TemporalSplit:
    """Split `ds` globally at timestamp `until`: train is ts < until, test is ts >= until."""
    inter = ds.interactions
    ts = inter["ts"].to_numpy(np.int64)
    train = inter[ts < until]
    test = inter[ts >= until]
    if ds.positives:
        # Targets are what the dataset trains on (e.g. purchases, add-to-carts); every event
        # before the split still counts as seen, as the serving filter drops it.
        test = test[test["event_type"].isin(list(ds.positives))]
    if train.empty or test.empty:
        lo, hi = (int(ts.min()), int(ts.max())) if len(ts) else (0, 0)
        raise ValidationError("until", f"{until} leaves an empty side; data spans {lo}..{hi}")
    item_ids = np.sort(ds.items["item_id"].to_numpy(np.int64))
    user_ids = np.sort(ds.users["user_id"].to_numpy(np.int64))
    seen = _groups(train["user_id"].to_numpy(np.int64), train["item_id"].to_numpy(np.int64))
    held = _groups(test["user_id"].to_numpy(np.int64), test["item_id"].to_numpy(np.int64))
    eval_users, relevant = [], []
    for user in sorted(held):
        # Items seen before the split cannot be recommended, so they are not targets either.
        new = held[user] - seen.get(user, set())
        if new:
            eval_users.append(user)
            relevant.append(np.array(sorted(new), dtype=np.int64))
    users = np.array(eval_users, dtype=np.int64)
    warm = np.array([u in seen for u in eval_users], dtype=bool)
    cold_items = np.setdiff1d(item_ids, train["item_id"].to_numpy(np.int64))
    return TemporalSplit(
        until=int(until),
        item_ids=item_ids,
        user_ids=user_ids,
        train=train,
        test=test,
        seen=seen,
        eval_users=users,
        relevant=relevant,
        warm=warm,
        cold_items=cold_items,
    )


def _groups(users: np.ndarray, items: np.ndarray) -> dict[int, set[int]]:
    """user -> set of items, from two aligned arrays (sorted once, split, no per-row loop)."""
    if len(users) == 0:
        return {}
    order = np.argsort(users, kind="stable")
    u, i = users[order], items[order]
    cuts = np.flatnonzero(np.diff(u)) + 1
    return {
        int(uu[0]): set(ii.tolist())
        for uu, ii in zip(np.split(u, cuts), np.split(i, cuts), strict=True)
    }


def quantile_ts(ds: RecDataset, q: float = 0.8) -> int:
    """The timestamp below which a fraction `q` of the interactions lie (a split point)."""
    if not 0.0 < q < 1.0:
        raise ValidationError("q", "must be in (0, 1)")
    return int(np.quantile(ds.interactions["ts"].to_numpy(np.int64), q, method="higher"))


# --- harness -------------------------------------------------------------------------------


@dataclass
class System:
    """A named recommender and the stage to evaluate it at."""

    name: str
    recommender: SystemUnderTest
    stage: Stage = "full"
    fit_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def recommend_all(
    rec: SystemUnderTest,
    users: np.ndarray,
    k: int,
    stage: Stage,
    seen: Mapping[int, set[int]],
    batch_size: int = 512,
) -> np.ndarray:
    """Top-k item ids (U, k) for `users` in batches, excluding each user's seen items."""
    out = np.full((len(users), k), -1, dtype=np.int64)
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        exclude = {int(u): seen[int(u)] for u in batch if int(u) in seen}
        ids, _ = rec.recommend(batch, k, stage=stage, exclude=exclude)
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[0] != len(batch) or ids.shape[1] > k:
            raise ValidationError("recommend", f"returned shape {ids.shape} for {len(batch)} users")
        out[start : start + len(batch), : ids.shape[1]] = ids
    return out


def seen_violations(recs: np.ndarray, users: np.ndarray, seen: Mapping[int, set[int]]) -> int:
    """How many recommended (user, item) pairs the user had already interacted with."""
    hist = [np.fromiter(seen.get(int(u), ()), np.int64) for u in users]
    hits, _ = hit_matrix(recs, hist)
    return int(hits.sum())


def slice_metrics(
    recs: np.ndarray, relevant: Sequence[np.ndarray], n_items: int, ks: Sequence[int]
) -> dict[str, float]:
    """recall@K for each K, NDCG@10 and coverage@10 for one slice (rows aligned)."""
    out: dict[str, float] = {"n_users": float(len(recs))}
    if len(recs) == 0:
        return out
    kmax = max(ks)
    hits, n_rel = hit_matrix(recs, relevant, kmax)
    ok = n_rel > 0
    cum = np.cumsum(hits[ok], axis=1)
    for k in ks:
        out[f"recall@{k}"] = float(np.mean(cum[:, min(k, kmax) - 1] / n_rel[ok]))
    k10 = min(10, kmax)
    discounts = 1.0 / np.log2(np.arange(2, k10 + 2, dtype=np.float64))
    dcg = hits[ok, :k10].astype(np.float64) @ discounts
    idcg = np.r_[0.0, np.cumsum(discounts)][np.minimum(n_rel[ok], k10)]
    out["ndcg@10"] = float(np.mean(dcg / idcg))
    out["coverage@10"] = coverage(recs, n_items, k=k10)
    return out


def evaluate(
    split: TemporalSplit,
    systems: Sequence[System],
    ks: Sequence[int] = DEFAULT_KS,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Evaluate each system on every slice of `split`; returns the JSON-ready report."""
    if not ks or min(ks) < 1:
        raise ValidationError("ks", "need cutoffs >= 1")
    kmax = max(ks)
    users = split.eval_users
    cold = split.cold_items
    cold_rel = [r[np.isin(r, cold)] for r in split.relevant]
    has_cold = np.array([len(r) > 0 for r in cold_rel], dtype=bool)
    report: dict[str, Any] = {"split": split.summary(), "ks": list(ks), "systems": {}}
    it: Any = systems
    if show_progress:
        it = progress.track(systems, "evaluate", total=len(systems))
    for system in it:
        t0 = time.perf_counter()
        recs = recommend_all(system.recommender, users, kmax, system.stage, split.seen)
        secs = time.perf_counter() - t0
        violations = seen_violations(recs, users, split.seen)
        if violations:
            log.error("%s recommended %d already-seen items", system.name, violations)
        n = len(split.item_ids)
        rel = split.relevant
        slices = {
            "all": slice_metrics(recs, rel, n, ks),
            "warm_users": slice_metrics(
                recs[split.warm], [r for r, w in zip(rel, split.warm, strict=True) if w], n, ks
            ),
            "cold_users": slice_metrics(
                recs[~split.warm], [r for r, w in zip(rel, split.warm, strict=True) if not w], n, ks
            ),
            "cold_items": slice_metrics(
                recs[has_cold], [r for r, h in zip(cold_rel, has_cold, strict=True) if h], n, ks
            ),
        }
        report["systems"][system.name] = {
            "stage": system.stage,
            "fit_s": system.fit_s,
            "recommend_s": secs,
            "seen_violations": violations,
            "slices": slices,
            **system.extra,
        }
    return report


def plot_report(report: Mapping[str, Any], path: Path) -> Path:
    """Recall@K curves per system, one panel per slice, as a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = report["ks"]
    fig, axes = plt.subplots(1, len(SLICES), figsize=(4.2 * len(SLICES), 3.8), sharey=False)
    for ax, name in zip(axes, SLICES, strict=True):
        for sys_name, res in report["systems"].items():
            m = res["slices"][name]
            ys = [m.get(f"recall@{k}", np.nan) for k in ks]
            ax.plot(ks, ys, marker="o", label=sys_name)
        n_users = int(next(iter(report["systems"].values()))["slices"][name]["n_users"])
        ax.set_title(f"{name} ({n_users} users)")
        ax.set_xscale("log")
        ax.set_xlabel("K")
        ax.set_ylabel("recall@K")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{report.get('dataset', '')} split at {report['split']['until']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return path


def write_report(report: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write `report.json` and `recall_at_k.png` into `out_dir` atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "report.json"
    tmp = out_dir / f".report.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(report, indent=2, default=_json_default))
    os.replace(tmp, json_path)
    png = plot_report(report, out_dir / "recall_at_k.png")
    return json_path, png


def _json_default(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


def model_systems(
    settings: Settings, dataset: str, until: int | None = None
) -> tuple[list[System], str | None]:
    """The trained recommender at both stages, if it exists and saw no data from `until` on."""
    try:
        from strata.training.recommender import load_recommender
    except ImportError as exc:
        return [], f"no trained model loader: {exc}"
    try:
        rec = load_recommender(settings, dataset)
    except NotFoundError as exc:
        return [], f"no trained model: {exc}"
    as_of = getattr(rec, "as_of", None)
    if as_of is not None and until is not None and int(as_of) > until:
        # A model that saw the held-out interactions would report leaked, inflated numbers.
        return (
            [],
            f"model {getattr(rec, 'version', '?')} was trained on data until {as_of} > {until}",
        )
    return [System("model-retrieval", rec, "retrieval"), System("model-full", rec, "full")], None


def run_evaluation(
    settings: Settings,
    dataset: str,
    until: int,
    out_dir: Path | None = None,
    path: Path | None = None,
    include_model: bool = True,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, Any]:
    """Load `dataset`, split at `until`, evaluate the trained model and baselines, write files."""
    from strata.datasets import load

    ds = load(dataset, path=path, settings=settings)
    split = temporal_split(ds, until)
    systems: list[System] = []
    note = None
    if include_model:
        systems, note = model_systems(settings, dataset, until)
        if note:
            log.warning("%s; evaluating baselines only", note)
    systems += fit_baselines(split, seed=settings.seed)
    report = evaluate(split, systems, ks=ks, show_progress=True)
    report["dataset"] = dataset
    if note:
        report["model_note"] = note
    out = out_dir or settings.home / "reports" / dataset / f"eval-{until}"
    json_path, png = write_report(report, out)
    report["files"] = {"json": str(json_path), "plot": str(png)}
    return report


def format_table(report: Mapping[str, Any], metrics: Sequence[str] = ()) -> str:
    """A plain-text table: one row per system and slice with the headline metrics."""
    cols = list(metrics) or ["recall@10", "recall@50", "ndcg@10", "coverage@10"]
    w = max([18, *(len(n) + 2 for n in report["systems"])])
    header = f"{'system':<{w}}{'slice':<12}{'users':>7}" + "".join(f"{c:>13}" for c in cols)
    lines = [header, "-" * len(header)]
    for name, res in report["systems"].items():
        for sl in SLICES:
            m = res["slices"][sl]
            vals = "".join(f"{m[c]:>13.4f}" if c in m else f"{'-':>13}" for c in cols)
            lines.append(f"{name:<{w}}{sl:<12}{int(m['n_users']):>7}{vals}")
    return "\n".join(lines)


def fit_baselines(split: TemporalSplit, seed: int = 0) -> list[System]:
    """Popularity (all-time and over the popularity feature's window), item-KNN and ALS fitted
    on the train side of `split`."""
    from strata.features.schema import DEFAULT_ITEM_WINDOW_S
    from strata.training.baselines import ALSRecommender, ItemKNNRecommender, PopularityRecommender

    systems = []
    for make in (
        lambda: PopularityRecommender(split.train, split.item_ids),
        lambda: PopularityRecommender(split.train, split.item_ids, DEFAULT_ITEM_WINDOW_S),
        lambda: ItemKNNRecommender(split.train, split.item_ids),
        lambda: ALSRecommender(split.train, split.item_ids, seed=seed),
    ):
        t0 = time.perf_counter()
        rec = make()
        log.info("fitted %s in %.1fs", rec.name, time.perf_counter() - t0)
        systems.append(System(rec.name, rec, "full", fit_s=time.perf_counter() - t0))
    return systems
