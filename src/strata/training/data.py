"""Training data of the two-tower model and the ranker: the offline store prepared for a dataset,
point-in-time training rows, the fitted feature space, retrieval rows, ranker rows with sampled
negatives, and item popularity snapshots as of each training query's time."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from strata.engine.stages import PairSetFilter
from strata.errors import ValidationError
from strata.models.batch import QueryFeatures, RankBatch, RetrievalBatch
from strata.models.space import FeatureSpace, query_features_from_frame
from strata.training.loops import RetrievalData

if TYPE_CHECKING:
    import pandas as pd

    from strata.config import Settings, TrainingConfig
    from strata.datasets.base import RecDataset
    from strata.features.offline import OfflineStore
    from strata.training.loops import Negatives
    from strata.training.shards import ShardTotals

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tables:
    """A dataset held in memory (tests, benchmarks): ingested into the offline store first."""

    users: pd.DataFrame
    items: pd.DataFrame
    events: pd.DataFrame
    content: pd.DataFrame | None


@dataclass(frozen=True)
class TrainingData:
    """What a training run reads from the offline store for one cut-off."""

    users: pd.DataFrame
    items: pd.DataFrame
    rows: pd.DataFrame  # training set: one row per event before `cut`, point-in-time features
    cut: int
    content: pd.DataFrame | None
    # the whole set's totals when `rows` is this rank's shard (`training.shard_input`)
    shard: ShardTotals | None = None


def prepare_store(
    settings: Settings, dataset: str, images: Path | None = None, tables: Tables | None = None
) -> OfflineStore:
    """The offline store holding `dataset`: `tables` are ingested (idempotent by event_id); a
    dataset not yet in the store is loaded with `strata.datasets.load` and ingested."""
    from strata.features.offline import OfflineStore, ingest_dataset

    store = OfflineStore(settings)
    if tables is not None:
        store.ingest(dataset, tables.users, tables.items, [tables.events])
        if tables.content is not None:
            store.write_item_content(dataset, tables.content)
    elif not _has(store, dataset, "users.parquet"):
        ingest_dataset(store, load_dataset(settings, dataset, images), dataset)
    return store


def _has(store: OfflineStore, dataset: str, name: str) -> bool:
    uri = f"{store.dataset_uri(dataset)}/{name}"
    return uri.startswith("s3://") or Path(uri).exists()


def load_content(
    settings: Settings, store: OfflineStore, dataset: str, images: Path | None = None
) -> pd.DataFrame | None:
    """Stored content embeddings; with `images` and none stored, encode them into the store."""
    if _has(store, dataset, "item_content.parquet"):
        return store.item_content(dataset)
    if images is None:
        return None
    from strata.training.content import encode_and_store

    encode_and_store(settings, dataset, images=images)
    return store.item_content(dataset)


def training_data(
    settings: Settings,
    dataset: str,
    until: int | None = None,
    images: Path | None = None,
    tables: Tables | None = None,
) -> tuple[OfflineStore, TrainingData]:
    """Point-in-time training rows before `until` (default: after the last event) and catalog.
    In a distributed run rank 0 ingests / encodes whatever is missing first, then the others
    read it; with `training.shard_input` each rank reads only its shard of the rows
    (`strata.training.shards`)."""
    from strata.training.distributed import current
    from strata.training.shards import TrainingExport

    dist = current(settings.training.device)
    sharded = settings.training.shard_input and dist.world > 1
    if not dist.main:
        dist.barrier()
    export = None
    try:
        store = prepare_store(settings, dataset, images, tables)
        content = load_content(settings, store, dataset, images)
        if sharded and dist.main:
            export = TrainingExport.write(store, dataset, until)
    finally:
        if dist.main:
            dist.barrier()
    positives = store.dataset_meta(dataset).get("positives")
    shard = None
    if sharded:
        uri = dist.gather_objects(None if export is None else export.uri)[0]
        export = TrainingExport(store, dataset, uri)
        try:
            types = list(positives) if positives else None
            rows = positive_rows(export.shard(dist, types), positives)
            # the whole-set aggregates are read once, on rank 0, and sent to the others
            mine = export.totals(types, pairs=True) if dist.main else None
            sent = None if mine is None else replace(mine, pairs=None)
            parts = dist.gather_objects((len(rows), sent))
            shard = replace(mine or parts[0][1], shard_rows=tuple(int(n) for n, _ in parts))
        finally:
            dist.barrier()  # every rank has read: the file can go
            if dist.main:
                export.remove()
        log.info("rank %d trains on its shard: %d of %d rows", dist.rank, len(rows), shard.rows)
        n, max_ts = shard.rows, shard.max_ts
    else:
        rows = positive_rows(store.training_set(dataset, until=until), positives)
        n, max_ts = len(rows), int(rows["ts"].max()) if len(rows) else 0
    if n == 0:
        where = "" if until is None else f" before {until}"
        raise ValidationError("--until" if until is not None else "dataset",
                              f"no interactions{where} to train on")  # fmt: skip
    cut = max_ts + 1 if until is None else int(until)
    items, content = with_live_items(settings, dataset, store.items(dataset), content)
    return store, TrainingData(store.users(dataset), items, rows, cut, content, shard)


def with_live_items(
    settings: Settings, dataset: str, items: pd.DataFrame, content: pd.DataFrame | None
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The catalogue with the items added live (`strata items add`, `POST /items`) that it does
    not hold yet, their content encoded when the run trains with content: a training includes
    every item served so far, retired ones too (their events are training data)."""
    import pandas as pd

    from strata.features.live_items import LiveCatalogue

    live, _ = LiveCatalogue(settings, dataset).state()
    known = set(items["item_id"].to_numpy(np.int64).tolist())
    # A declared dataset's owner may since have sent the item in its own files: theirs wins.
    owned = set(items["external_id"].astype(str)) if "external_id" in items.columns else set()
    new = {i: it for i, it in live.items() if i not in known and it.external_id not in owned}
    if not new:
        return items, content
    df = LiveCatalogue(settings, dataset).frame(new)
    if ("external_id" in items.columns) != ("external_id" in df.columns):
        raise ValidationError("items", "live items and the dataset disagree on owner's item ids")
    merged = pd.concat([items, df], ignore_index=True)
    if content is not None:
        from strata.features.content import encode_item_content
        from strata.models.encoders import ImageEncoder, TextEncoder
        from strata.training.content import content_cache_dir

        cache = content_cache_dir(settings)
        added = encode_item_content(df, TextEncoder(cache), ImageEncoder(cache))
        content = pd.concat([content, added], ignore_index=True)
    return merged, content


def load_dataset(settings: Settings, name: str, images: Path | None = None) -> RecDataset:
    """The dataset through `strata.datasets.load` (contract 2)."""
    from strata.datasets import load

    return load(name, images=images, settings=settings)


def positive_rows(rows: pd.DataFrame, positives: dict[str, float] | None) -> pd.DataFrame:
    """The training-set rows a model learns from, with a `weight` column: rows whose event type is
    a declared positive, weighted as declared; every row with weight 1 when none are declared.
    (Features still count every event: `user_n_<type>`, recent items, popularity.)"""
    if not positives:
        return rows.assign(weight=np.float32(1.0))
    keep = rows[rows["event_type"].isin(list(positives))].reset_index(drop=True)
    weights = keep["event_type"].map(positives).astype(np.float32)
    return keep.assign(weight=weights.to_numpy(np.float32))


def fit_space(store: OfflineStore, dataset: str, data: TrainingData) -> FeatureSpace:
    """Vocabularies on the catalog, ids known from the training rows, popularity as of the cut."""
    known = data.rows if data.shard is None else data.shard.known()
    space = FeatureSpace.fit(data.users, data.items, known, data.content)
    params = store.params_for(dataset)
    space.meta["event_types"] = list(params.event_types)  # what POST /events accepts
    space.meta["timezone"] = params.timezone  # of the hour / day-of-week context
    items = store.latest_item_features(dataset, as_of=data.cut)
    space.set_item_popularity(items["item_id"].to_numpy(np.int64), items["item_n_events"])
    space.set_as_of(data.cut)
    return space


def retrieval_data(
    space: FeatureSpace, rows: pd.DataFrame, shard: ShardTotals | None = None
) -> RetrievalData:
    """Positive examples (one per training-set row) with point-in-time query and item features
    and popularity log-probabilities for logQ (over the whole set when `rows` is a `shard`)."""
    q = query_features_from_frame(space, rows)
    item_rows, _ = space.item_rows(rows["item_id"].to_numpy(np.int64))
    item_num = space.item_num(
        item_rows, rows["item_n_events"].to_numpy(np.float64), rows["ts"].to_numpy(np.int64)
    )
    if shard is None:
        counts = np.bincount(item_rows, minlength=len(space.item_ids) + 1).astype(np.float64)
    else:
        rows_all, ok = space.item_rows(shard.item_ids)
        n_by_row = shard.item_counts[ok].astype(np.float64)
        counts = np.bincount(rows_all[ok], n_by_row, len(space.item_ids) + 1).astype(np.float64)
    p = counts / max(counts.sum(), 1.0)
    log_q = np.log(np.maximum(p[item_rows], 1e-12)).astype(np.float32)
    weight = (
        rows["weight"].to_numpy(np.float32)
        if "weight" in rows
        else np.ones(len(item_rows), np.float32)
    )
    return RetrievalData(
        q, item_rows.astype(np.int64), log_q, weight, item_num, rows["ts"].to_numpy(np.int64)
    )


@dataclass(frozen=True)
class RankData:
    """Ranker rows as indices into per-positive query features + item-table rows (memory-light)."""

    query: QueryFeatures  # (P,) one row per positive
    qi: np.ndarray  # (R,) row into `query`
    item_rows: np.ndarray  # (R,)
    score: np.ndarray  # (R,) float32 retrieval score
    label: np.ndarray  # (R,) float32
    pop: np.ndarray | None = None  # (R,) item event counts as of the row's time; None = table's
    ts: np.ndarray | None = None  # (R,) the row's event time (item age); None = table's
    # (R,) retrieval score of the cold-start (masked) query: what a masked row sees at serving
    score_cold: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.label)

    def subset(self, mask: np.ndarray) -> RankData:
        """Rows where `mask` is true."""
        return RankData(
            self.query, self.qi[mask], self.item_rows[mask], self.score[mask], self.label[mask],
            None if self.pop is None else self.pop[mask],
            None if self.ts is None else self.ts[mask],
            None if self.score_cold is None else self.score_cold[mask],
        )  # fmt: skip

    def batch(self, space: FeatureSpace, idx: np.ndarray) -> RankBatch:
        """Materialise rows `idx` as a typed batch."""
        return RankBatch(
            self.query.take(self.qi[idx]),
            space.items(
                self.item_rows[idx],
                None if self.pop is None else self.pop[idx],
                None if self.ts is None else self.ts[idx],
            ),
            self.score[idx],
            self.label[idx],
        )


def rank_data(
    space: FeatureSpace,
    q_emb: np.ndarray,
    queries: QueryFeatures,
    pos_rows: np.ndarray,
    users: np.ndarray,
    item_emb: np.ndarray,
    seen: PairSetFilter,
    cfg: TrainingConfig,
    rng: np.random.Generator,
) -> RankData:
    """Positives plus hard negatives (retrieval top-N the user never touched) and random ones."""
    n_items = len(space.item_ids)
    p = len(pos_rows)
    n_cand = min(cfg.candidates, n_items)
    pos_score = np.einsum("pd,pd->p", q_emb, item_emb[pos_rows - 1])
    hard_rows = np.zeros((p, cfg.ranker_hard_negatives), np.int64)
    hard_ok = np.zeros((p, cfg.ranker_hard_negatives), bool)
    for s in range(0, p, 4096):
        sl = slice(s, min(s + 4096, p))
        sc = q_emb[sl] @ item_emb.T  # (C, I)
        top = np.argpartition(-sc, n_cand - 1, axis=1)[:, :n_cand] + 1  # rows (C, N)
        bad = seen.seen(users[sl], space.item_ids[top - 1]) | (top == pos_rows[sl, None])
        # A random permutation of the valid slots: pick the first h.
        key = np.where(bad, np.inf, rng.random(top.shape))
        pick = np.argsort(key, axis=1)[:, : cfg.ranker_hard_negatives]
        hard_rows[sl] = np.take_along_axis(top, pick, axis=1)
        hard_ok[sl] = ~np.take_along_axis(bad, pick, axis=1)
    rand_rows = rng.integers(1, n_items + 1, size=(p, cfg.ranker_random_negatives))
    rand_ok = rand_rows != pos_rows[:, None]
    qi = np.concatenate(
        [np.arange(p), np.repeat(np.arange(p), hard_rows.shape[1])[hard_ok.ravel()],
         np.repeat(np.arange(p), rand_rows.shape[1])[rand_ok.ravel()]]
    )  # fmt: skip
    rows = np.concatenate([pos_rows, hard_rows[hard_ok], rand_rows[rand_ok]])
    label = np.concatenate([np.ones(p), np.zeros(len(rows) - p)]).astype(np.float32)
    score = np.einsum("rd,rd->r", q_emb[qi], item_emb[rows - 1]).astype(np.float32)
    score[:p] = pos_score
    return RankData(queries, qi.astype(np.int64), rows.astype(np.int64), score, label)


@dataclass(frozen=True)
class PopularitySnapshots:
    """Item popularity (item_n_events) as of a few times: (S,) times, (S, I + 1) counts by
    item-table row."""

    times: np.ndarray
    counts: np.ndarray

    def at(self, ts: np.ndarray) -> np.ndarray:
        """(N,) index of the latest snapshot at or before each time (the first one for earlier
        times, which holds no events)."""
        return np.maximum(np.searchsorted(self.times, np.asarray(ts, np.int64), "right") - 1, 0)


def popularity_at(
    store: OfflineStore,
    dataset: str,
    space: FeatureSpace,
    ts: np.ndarray,
    cut: int,
    n_snapshots: int = 6,
) -> PopularitySnapshots:
    """Item popularity from the offline store at snapshot times spread over the quantiles of
    `ts` (the first at its minimum), none after `cut`. Rows take the latest snapshot at or before
    their event, so positives and negatives of a query see the same point-in-time popularity and
    none of them the future."""
    qs = np.quantile(np.asarray(ts, np.int64), np.linspace(0.0, 1.0, n_snapshots + 1)[1:-1])
    times = np.unique(np.minimum(np.r_[int(np.min(ts)), qs.astype(np.int64)], cut))
    table = np.zeros((len(times), len(space.item_ids) + 1), np.float64)
    f = store.item_popularity_at(dataset, times.tolist())
    rows, ok = space.item_rows(f["item_id"].to_numpy(np.int64))
    snap = np.searchsorted(times, f["as_of"].to_numpy(np.int64))
    table[snap[ok], rows[ok]] = f["item_n_events"].to_numpy(np.float64)[ok]
    return PopularitySnapshots(times, table)


def random_negatives(
    space: FeatureSpace, m: int, snapshots: PopularitySnapshots | None = None
) -> Callable[[np.random.Generator, RetrievalBatch], Negatives]:
    """A sampler of `m` uniform catalog negatives per batch. With `snapshots` and batch event
    times, each query row sees them as of its own time (latest snapshot at or before its event:
    popularity and age then); otherwise as of the space's cut-off."""
    from strata.training.loops import Negatives

    table = space.items(np.arange(len(space.item_ids) + 1))
    n_items = len(space.item_ids)

    def sample(rng: np.random.Generator, b: RetrievalBatch) -> Negatives:
        rows = rng.integers(1, n_items + 1, m)
        ids = table.item[rows]
        if snapshots is None or b.ts is None:
            return Negatives(table.take(rows), ids)
        groups, group = np.unique(snapshots.at(b.ts), return_inverse=True)
        g = len(groups)
        snap = np.repeat(groups, m)
        tiled = np.tile(rows, g)
        num = space.item_num(tiled, snapshots.counts[snap, tiled], snapshots.times[snap])
        return Negatives(
            table.take(rows), ids, group.astype(np.int64).reshape(-1),
            num.reshape(g, m, -1).astype(np.float32),
        )  # fmt: skip

    return sample
