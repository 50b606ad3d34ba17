"""`strata train`: dataset -> features -> two-tower -> item embeddings -> ranker -> export ->
registry (the library entry point behind the CLI).

Everything is seeded from `settings.seed`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from strata.errors import ValidationError
from strata.serving.pipeline import PairSetFilter
from strata.training.batch import QueryFeatures, RankBatch
from strata.training.data import FeatureSpace, UserState, latest_state, point_in_time_state
from strata.training.loops import RetrievalData

if TYPE_CHECKING:
    import pandas as pd

    from strata.config import Settings, TrainingConfig
    from strata.datasets.base import RecDataset
    from strata.models.dcn import DCNRanker
    from strata.models.two_tower import TwoTower

log = logging.getLogger(__name__)

USER_STATE_FILE = "user_state.safetensors"


@dataclass(frozen=True)
class Tables:
    """Users, items, events and (optional) content embeddings of one dataset."""

    users: pd.DataFrame
    items: pd.DataFrame
    events: pd.DataFrame
    content: pd.DataFrame | None


def load_tables(
    settings: Settings, dataset: str, images: Path | None = None, encode: bool = False
) -> Tables:
    """Tables from the offline store when it holds `dataset`, else from the dataset loader.

    Content embeddings come from the store's `item_content`; with `encode` (or `images`) and no
    stored content they are computed with the content encoders and written back to the store.
    """
    from strata.features.offline import OfflineStore

    store = OfflineStore(settings)
    local = Path(store.dataset_uri(dataset))
    if (local / "users.parquet").exists():
        users, items, events = store.users(dataset), store.items(dataset), store.events(dataset)
    else:
        ds = load_dataset(settings, dataset, images)
        users, items, events = ds.users, ds.items, ds.interactions
    content = None
    if (local / "item_content.parquet").exists():
        content = store.item_content(dataset)
    elif encode or images is not None:
        from strata.features.content import encode_dataset_content

        if images is not None and "image_path" in items.columns:
            from strata.datasets.movielens import attach_images

            items = attach_images(items, images)
        content = encode_dataset_content(settings, items, images)
        if (local / "users.parquet").exists():
            store.write_item_content(dataset, content)
    return Tables(users, items, events, content)


def load_dataset(settings: Settings, name: str, images: Path | None = None) -> RecDataset:
    """The dataset through `strata.datasets.load` (contract 2)."""
    from strata.datasets import load

    return load(name, images=images, settings=settings)


def split(events: pd.DataFrame, until: int | None) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Events before `until` (training) and from `until` on (holdout); `until` defaults to the
    end of the log (max ts + 1)."""
    if len(events) == 0:
        raise ValidationError("dataset", "has no interactions to train on")
    ts = events["ts"].to_numpy(np.int64)
    cut = int(ts.max()) + 1 if until is None else int(until)
    train = events[ts < cut].reset_index(drop=True)
    if len(train) == 0:
        raise ValidationError("--until", f"no interactions before {cut}")
    return train, events[ts >= cut].reset_index(drop=True), cut


def retrieval_data(space: FeatureSpace, events: pd.DataFrame, state: UserState) -> RetrievalData:
    """Positive examples (one per event) with popularity log-probabilities for logQ."""
    q = space.queries(
        events["user_id"].to_numpy(np.int64),
        events["ts"].to_numpy(np.int64),
        events["device"].astype(str).to_numpy(),
        state,
    )
    rows, _ = space.item_rows(events["item_id"].to_numpy(np.int64))
    counts = np.bincount(rows, minlength=len(space.item_ids) + 1).astype(np.float64)
    p = counts / max(counts.sum(), 1.0)
    log_q = np.log(np.maximum(p[rows], 1e-12)).astype(np.float32)
    return RetrievalData(q, rows.astype(np.int64), log_q, np.ones(len(rows), np.float32))


@dataclass(frozen=True)
class RankData:
    """Ranker rows as indices into per-positive query features + item-table rows (memory-light)."""

    query: QueryFeatures  # (P,) one row per positive
    qi: np.ndarray  # (R,) row into `query`
    item_rows: np.ndarray  # (R,)
    score: np.ndarray  # (R,) float32 retrieval score
    label: np.ndarray  # (R,) float32

    def __len__(self) -> int:
        return len(self.label)

    def subset(self, mask: np.ndarray) -> RankData:
        """Rows where `mask` is true."""
        return RankData(
            self.query, self.qi[mask], self.item_rows[mask], self.score[mask], self.label[mask]
        )

    def batch(self, space: FeatureSpace, idx: np.ndarray) -> RankBatch:
        """Materialise rows `idx` as a typed batch."""
        return RankBatch(
            self.query.take(self.qi[idx]),
            space.items(self.item_rows[idx]),
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


def auc_score(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC (`strata.training.metrics.auc`); NaN when only one class is present."""
    from strata.training.metrics import auc

    if len(np.unique(y)) < 2:
        return float("nan")
    return auc(y, p)


def fit_ranker(
    ranker: DCNRanker,
    space: FeatureSpace,
    data: RankData,
    cfg: TrainingConfig,
    seed: int,
    epochs: int,
    lr: float,
) -> list[float]:
    """Train the ranker on `data` with shuffled mini-batches."""
    from strata.training.loops import train_ranker

    bs = cfg.ranker_batch_size

    def batches(e: int, rng: np.random.Generator) -> Any:
        perm = rng.permutation(len(data))
        for s in range(0, len(perm), bs):
            yield data.batch(space, perm[s : s + bs])

    return train_ranker(
        ranker, batches, epochs, lr=lr, seed=seed, device=cfg.device,
        steps_per_epoch=-(-len(data) // bs),
    )  # fmt: skip


def fit_two_tower(
    model: TwoTower,
    space: FeatureSpace,
    data: RetrievalData,
    cfg: TrainingConfig,
    seed: int,
    epochs: int,
    lr: float,
    freeze_items: bool = False,
) -> list[float]:
    """Train the two-tower on `data` with masking and random negatives from the catalog."""
    from strata.training.loops import train_two_tower

    table = space.items(np.arange(len(space.item_ids) + 1))
    n_items = len(space.item_ids)
    neg = None
    if cfg.random_negatives > 0:

        def neg(rng: np.random.Generator) -> Any:
            return table.take(rng.integers(1, n_items + 1, cfg.random_negatives))

    return train_two_tower(
        model,
        lambda e, rng: data.batches(table, cfg.batch_size, rng),
        epochs,
        lr=lr,
        weight_decay=cfg.weight_decay,
        p_user=cfg.p_user,
        p_item=cfg.p_item,
        negatives=neg,
        n_items=n_items,
        freeze_items=freeze_items,
        seed=seed,
        device=cfg.device,
        steps_per_epoch=-(-len(data) // cfg.batch_size),
        logq_weight=cfg.logq_weight,
    )


@dataclass(frozen=True)
class TrainResult:
    """What `train` produced: the registered version and its metrics."""

    version: str
    path: Path
    metrics: dict[str, float]


def train(
    settings: Settings,
    dataset: str,
    until: int | None = None,
    images: Path | None = None,
    epochs: int | None = None,
    tables: Tables | None = None,
    promote: bool = True,
) -> TrainResult:
    """Train two-tower + ranker on events before `until`, export, register (and promote)."""
    import torch

    from strata.models.dcn import DCNConfig, DCNRanker
    from strata.models.two_tower import TwoTower, TwoTowerConfig
    from strata.training.loops import embed_items, embed_queries, score_ranker, seed_everything

    cfg = settings.training
    seed = settings.seed
    seed_everything(seed, cfg.num_threads)
    t = tables or load_tables(settings, dataset, images)
    train_ev, holdout, cut = split(t.events, until)
    space = FeatureSpace.fit(t.users, t.items, train_ev, t.content)
    dims = space.dims()
    state = point_in_time_state(train_ev, space)
    rdata = retrieval_data(space, train_ev, state)
    n_epochs = epochs or cfg.epochs
    t0 = time.perf_counter()
    tt = TwoTower(dims, TwoTowerConfig())
    tt_loss = fit_two_tower(tt, space, rdata, cfg, seed, n_epochs, cfg.lr)
    t_tt = time.perf_counter() - t0
    item_emb = embed_items(tt, space.all_items())

    rng = np.random.default_rng(seed + 1)
    seen = PairSetFilter(train_ev["user_id"].to_numpy(), train_ev["item_id"].to_numpy())
    sel = np.sort(rng.permutation(len(rdata))[: cfg.ranker_max_positives])
    q_sel = rdata.query.take(sel)
    rd = rank_data(
        space, embed_queries(tt, q_sel), q_sel, rdata.item_rows[sel],
        train_ev["user_id"].to_numpy(np.int64)[sel], item_emb, seen, cfg, rng,
    )  # fmt: skip
    # Hold out 10% of positives (with their negatives) to report ranker AUC honestly.
    held = rng.random(len(sel)) < 0.1
    val_mask = held[rd.qi]
    ranker = DCNRanker(dims, DCNConfig())
    t0 = time.perf_counter()
    rk_loss = fit_ranker(
        ranker, space, rd.subset(~val_mask), cfg, seed, cfg.ranker_epochs, cfg.ranker_lr
    )
    t_rk = time.perf_counter() - t0
    val = rd.subset(val_mask)
    p_val = score_ranker(ranker, val.batch(space, np.arange(len(val))))
    metrics: dict[str, float] = {
        "two_tower_loss": tt_loss[-1],
        "ranker_loss": rk_loss[-1],
        "ranker_auc_valid": auc_score(val.label, p_val),
        "retrieval_score_auc_valid": auc_score(val.label, val.score),
        "two_tower_train_s": t_tt,
        "ranker_train_s": t_rk,
        "train_events": float(len(train_ev)),
    }
    user_state = latest_state(train_ev, space.user_ids, space)
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kind": "train",
        "parent": None,
        "data_range": {
            "min_ts": int(train_ev["ts"].min()),
            "max_ts": int(train_ev["ts"].max()),
            "until": cut,
            "events": len(train_ev),
        },
        "metrics": metrics,
        "seed": seed,
        "epochs": n_epochs,
    }
    with torch.no_grad():
        version, path = write_version(
            settings, dataset, space, tt, ranker, item_emb, user_state,
            train_ev["user_id"].to_numpy(np.int64), train_ev["item_id"].to_numpy(np.int64),
            manifest,
        )  # fmt: skip
    if len(holdout):
        from strata.training.recommender import load_recommender

        rec = load_recommender(settings, dataset, version)
        metrics.update(holdout_metrics(rec, holdout, k=10))
        _update_metrics(path, metrics)
    if promote:
        from strata.training.registry import Registry

        Registry(settings.registry_dir, dataset).promote(version)
    log.info("trained %s %s: %s", dataset, version, metrics)
    return TrainResult(version, path, metrics)


def _update_metrics(path: Path, metrics: dict[str, float]) -> None:
    """Holdout metrics arrive after commit: rewrite the manifest atomically (files unchanged)."""
    import json
    import os
    import tempfile

    from strata.training.registry import MANIFEST

    m = json.loads((path / MANIFEST).read_text())
    m["metrics"] = metrics
    fd, tmp = tempfile.mkstemp(dir=path, prefix=".manifest.")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(m, indent=2, default=str))
    os.replace(tmp, path / MANIFEST)


def holdout_metrics(rec: Any, holdout: pd.DataFrame, k: int = 10) -> dict[str, float]:
    """Recall@k and NDCG@k of retrieval and the full pipeline on holdout users."""
    from strata.training.metrics import ndcg_at_k, recall_at_k

    rel = holdout.groupby("user_id")["item_id"].apply(lambda s: s.to_numpy(np.int64))
    users = rel.index.to_numpy(np.int64)
    out: dict[str, float] = {}
    for stage in ("retrieval", "full"):
        ids, _ = rec.recommend(users, k, stage=stage)
        out[f"holdout_recall@{k}_{stage}"] = recall_at_k(ids, list(rel), k)
        out[f"holdout_ndcg@{k}_{stage}"] = ndcg_at_k(ids, list(rel), k)
    return out


def write_version(
    settings: Settings,
    dataset: str,
    space: FeatureSpace,
    two_tower: TwoTower,
    ranker: DCNRanker,
    item_emb: np.ndarray,
    user_state: UserState,
    seen_users: np.ndarray,
    seen_items: np.ndarray,
    manifest: dict[str, Any],
) -> tuple[str, Path]:
    """Write every artifact of a version into a staging folder and commit it to the registry."""
    from safetensors.numpy import save_file

    from strata.features import schema
    from strata.models.inputs import ITEM_INPUTS, QUERY_INPUTS
    from strata.training.batch import synthetic_items, synthetic_queries
    from strata.training.export import RANKER_INPUTS, export_onnx, save_state, write_item_embeddings
    from strata.training.loops import rank_inputs
    from strata.training.registry import Registry

    reg = Registry(settings.registry_dir, dataset)
    two_tower.cpu().eval()
    ranker.cpu().eval()
    dims = space.dims()
    with reg.stage() as tmp:
        space.save(tmp)
        save_state(two_tower, tmp / "two_tower.safetensors")
        save_state(ranker, tmp / "ranker.safetensors")
        write_item_embeddings(tmp, space.item_ids, item_emb)
        save_file(
            {
                "hist": user_state.hist, "n_events": user_state.n_events,
                "mean_value": user_state.mean_value, "top_genre": user_state.top_genre,
                "seen_user": seen_users.astype(np.int64), "seen_item": seen_items.astype(np.int64),
            },
            str(tmp / USER_STATE_FILE),
        )  # fmt: skip
        # Check ONNX on a random but well-formed batch (vocab ranges of the fitted dims).
        rng = np.random.default_rng(0)
        q = synthetic_queries(dims, 8, rng)
        it = synthetic_items(dims, rng.integers(0, dims.n_items, 8))
        d_q = export_onnx(
            two_tower.query_tower,
            q.tensors(),
            QUERY_INPUTS,
            tmp / "query_tower.onnx",
            "query_embedding",
        )
        rb = RankBatch(q, it, rng.normal(size=8).astype(np.float32), np.zeros(8, np.float32))
        d_r = export_onnx(ranker, rank_inputs(rb), RANKER_INPUTS, tmp / "ranker.onnx", "logit")
        full = {
            **manifest,
            "onnx_max_abs_diff": {"query_tower": d_q, "ranker": d_r},
            "feature_schema": {
                "query_inputs": list(QUERY_INPUTS),
                "item_inputs": list(ITEM_INPUTS),
                "ranker_inputs": list(RANKER_INPUTS),
                "dims": dims.model_dump(),
                "user_features": list(schema.USER_FEATURE_COLUMNS),
                "item_features": list(schema.ITEM_FEATURE_COLUMNS),
                "context_features": [f.name for f in schema.CONTEXT_FEATURES],
                "content_features": list(schema.ITEM_CONTENT_COLUMNS)
                if space.meta["has_content"]
                else [],
            },
            "models": {
                "two_tower": two_tower.cfg.model_dump(),
                "ranker": ranker.cfg.model_dump(),
                "embedding_dim": int(item_emb.shape[1]),
            },
        }
        version = reg.commit(tmp, full)
    return version, reg.dir / version
