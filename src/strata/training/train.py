"""`strata train`: dataset -> features -> two-tower -> item embeddings -> ranker -> export ->
registry (the library entry point behind the CLI).

Everything is seeded from `settings.seed`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from strata.artifacts import (
    ITEM_EMBEDDINGS_FILE,
    STAGE_INDEX,
    STAGE_META,
    STAGE_QUERIES,
    STAGE_RNG,
)
from strata.engine.stages import PairSetFilter
from strata.errors import ValidationError
from strata.models.batch import RankBatch
from strata.models.space import LOG_COUNT_SCALE, POP_COL, FeatureSpace
from strata.training.data import (
    PopularitySnapshots,
    RankData,
    Tables,
    TrainingData,
    fit_space,
    popularity_at,
    random_negatives,
    rank_data,
    retrieval_data,
    training_data,
)
from strata.training.export import update_metrics, write_version
from strata.training.loops import RetrievalData

if TYPE_CHECKING:
    import pandas as pd

    from strata.config import Settings, TrainingConfig
    from strata.features.offline import OfflineStore
    from strata.models.dcn import DCNRanker
    from strata.models.two_tower import TwoTower
    from strata.training.checkpoints import Checkpoints
    from strata.training.distributed import Dist

log = logging.getLogger(__name__)


def fit_ranker(
    ranker: DCNRanker,
    space: FeatureSpace,
    data: RankData,
    cfg: TrainingConfig,
    seed: int,
    epochs: int,
    lr: float,
    ckpt: Checkpoints | None = None,
    sharded: bool = False,
) -> list[float]:
    """Train the ranker on `data` with shuffled mini-batches and cold-start masking: whole
    queries (a positive with its negatives) lose the user's identity with probability p_user,
    rows lose the item id with probability p_item, as unknown users/items look at serving.
    `sharded`: `data` is this rank's shard (see `_lockstep`)."""
    from strata.training.loops import epoch_order, ranker_loop
    from strata.training.masking import mask_item, mask_query_rows

    dist, bs, steps = _lockstep(cfg, cfg.ranker_batch_size, len(data), sharded)
    pop_col = POP_COL if cfg.mask_item_popularity else None

    def batches(e: int, rng: np.random.Generator) -> Any:
        cold_q = rng.random(len(data.query)) < cfg.p_user  # (P,) per query, fixed this epoch
        perm = epoch_order(rng, len(data), steps if dist.sharded else None, bs)
        for s in range(0, len(perm), bs):
            idx = perm[s : s + bs]
            b = data.batch(space, idx)
            cold = cold_q[data.qi[idx]]  # (B,)
            score = b.retrieval_score
            if data.score_cold is not None:  # a masked user is retrieved by the cold query
                score = np.where(cold, data.score_cold[idx], score).astype(np.float32)
            yield RankBatch(
                mask_query_rows(b.query, cold),
                mask_item(b.item, cfg.p_item, rng, pop_col),
                score,
                b.label,
            )

    return ranker_loop(
        ranker, batches, epochs, lr=lr, seed=seed, dist=dist, ckpt=ckpt, steps_per_epoch=steps
    )


def _lockstep(cfg: TrainingConfig, batch: int, n: int, sharded: bool) -> tuple[Dist, int, int]:
    """(dist, batch, steps per epoch) of a loop over `n` rows. Replicated input: every rank
    holds all rows and takes its slice of each global batch of `batch` x ranks. Sharded input:
    each rank's batches of `batch` are its own rows, and an epoch is as many global batches as
    replicated input would take (all shards' rows / (ranks x batch), rounded up), so every
    rank steps together: a smaller shard repeats some rows in an epoch, a larger one leaves
    some out, reshuffled each epoch (`epoch_order`). A shard with less than one batch is an
    error on every rank."""
    from strata.training.distributed import current

    dist = current(cfg.device)
    if not sharded or dist.world == 1:
        bs = batch * dist.world  # per-rank batch x ranks: the global batch
        return dist, bs, -(-n // bs)
    dist = replace(dist, sharded=True)
    sizes = [int(k) for k in dist.gather_objects(int(n))]
    steps = -(-sum(sizes) // (dist.world * batch))
    if min(sizes) < batch:
        if not dist.main:  # every rank knows it; rank 0 alone says it (one line)
            raise SystemExit(2)
        raise ValidationError(
            "training.shard_input",
            f"a rank's shard holds fewer rows than one batch of {batch}: lower the batch size "
            "or the number of ranks, or turn shard_input off",
        )
    return dist, batch, steps


def fit_two_tower(
    model: TwoTower,
    space: FeatureSpace,
    data: RetrievalData,
    cfg: TrainingConfig,
    seed: int,
    epochs: int,
    lr: float,
    freeze_items: bool = False,
    snapshots: PopularitySnapshots | None = None,
    ckpt: Checkpoints | None = None,
    sharded: bool = False,
) -> list[float]:
    """Train the two-tower on `data` with masking and random negatives from the catalog.

    With `snapshots` (and event times in `data`) each query scores the random negatives with
    their popularity and age as of its own time (latest snapshot at or before the event);
    without, as of the space's cut-off. `sharded`: `data` is this rank's shard (`_lockstep`).
    """
    from strata.training.loops import two_tower_loop

    dist, bs, steps = _lockstep(cfg, cfg.batch_size, len(data), sharded)
    table = space.items(np.arange(len(space.item_ids) + 1))
    n_items = len(space.item_ids)
    m = cfg.random_negatives
    neg = random_negatives(space, m, snapshots) if m > 0 else None

    return two_tower_loop(
        model,
        lambda e, rng: data.batches(table, bs, rng, steps if dist.sharded else None),
        epochs,
        lr=lr,
        weight_decay=cfg.weight_decay,
        p_user=cfg.p_user,
        p_item=cfg.p_item,
        negatives=neg,
        n_items=n_items,
        freeze_items=freeze_items,
        seed=seed,
        dist=dist,
        ckpt=ckpt,
        steps_per_epoch=steps,
        logq_weight=cfg.logq_weight,
        logq_weight_cold=cfg.logq_weight_cold,
        pop_col=POP_COL if cfg.mask_item_popularity else None,
    )


@dataclass(frozen=True)
class TrainResult:
    """What `train` produced: the registered version and its metrics."""

    version: str
    path: Path
    metrics: dict[str, float]


def train_two_tower(
    settings: Settings,
    dataset: str,
    until: int | None = None,
    images: Path | None = None,
    epochs: int | None = None,
    tables: Tables | None = None,
    stage_dir: Path | None = None,
    loaded: tuple[OfflineStore, TrainingData] | None = None,
) -> Path:
    """Fit the feature space and the two-tower on events before `until` and write them, with the
    item embeddings, into `stage_dir` (plain JSON, safetensors and .npy files) for `train_ranker`.

    Every feature comes from the offline store (ingesting `tables` or the dataset first when
    given/missing); content embeddings are encoded from `images` when none are stored.
    `loaded`: the result of `training_data` for these arguments, when the caller has it.
    """
    import json

    import torch
    from safetensors.torch import save_file

    from strata.models.infer import embed_items, embed_queries
    from strata.models.two_tower import TwoTower, TwoTowerConfig
    from strata.models.weights import save_state
    from strata.training.checkpoints import for_run
    from strata.training.distributed import current
    from strata.training.export import write_item_embeddings
    from strata.training.loops import seed_everything

    if stage_dir is None:
        raise ValidationError("stage_dir", "a staging folder is required")
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    cfg = settings.training
    seed = settings.seed
    seed_everything(seed, cfg.num_threads)
    dist = current(cfg.device)
    store, data = loaded or training_data(settings, dataset, until, images, tables)
    space = fit_space(store, dataset, data)
    rdata = retrieval_data(space, data.rows, data.shard)
    n_epochs = epochs or cfg.epochs
    t0 = time.perf_counter()
    assert rdata.ts is not None  # retrieval_data always carries the event times
    # snapshot times from the quantiles of every row's time (of all shards when sharded)
    ts = rdata.ts if data.shard is None else data.shard.ts_grid
    snaps = popularity_at(store, dataset, space, ts, data.cut, cfg.popularity_snapshots)
    tt = TwoTower(space.dims(), TwoTowerConfig())
    n_all = data.shard.rows if data.shard is not None else len(rdata)
    ckpt = for_run(settings, dataset, dist, cut=data.cut, seed=seed, **_run_size(data, n_all))
    tt_loss = fit_two_tower(
        tt, space, rdata, cfg, seed, n_epochs, cfg.lr, snapshots=snaps, ckpt=ckpt,
        sharded=data.shard is not None,
    )  # fmt: skip
    t_tt = time.perf_counter() - t0
    item_emb = embed_items(tt, space.all_items())
    space.save(stage_dir)
    save_state(tt, stage_dir / "two_tower.safetensors")
    write_item_embeddings(stage_dir, space.item_ids, item_emb)
    # Own generator, and the towers have no dropout: the global torch/NumPy state is untouched.
    pick = np.random.default_rng(seed).permutation(len(rdata))[: settings.index.tune_queries]
    np.save(
        stage_dir / STAGE_QUERIES,
        embed_queries(tt, rdata.query.take(np.sort(pick))),
        allow_pickle=False,
    )
    # The ranker's initial weights are drawn from torch's generator as the two-tower fit left
    # it: keeping that state makes a split run repeat a single-process run bit for bit.
    save_file({"state": torch.get_rng_state()}, str(stage_dir / STAGE_RNG))
    meta = {
        "dataset": dataset,
        "until": until,
        "cut": data.cut,
        "epochs": n_epochs,
        "seed": seed,
        "two_tower": tt.cfg.model_dump(),
        "two_tower_loss": tt_loss[-1],
        "two_tower_train_s": t_tt,
    }
    (stage_dir / STAGE_META).write_text(json.dumps(meta, indent=2))
    log.info("staged two-tower of %s in %s (loss %.4f)", dataset, stage_dir, tt_loss[-1])
    return stage_dir


def train_ranker(
    settings: Settings,
    dataset: str,
    stage_dir: Path,
    promote: bool = True,
    loaded: tuple[OfflineStore, TrainingData] | None = None,
) -> TrainResult:
    """Train the ranker on a `train_two_tower` staging folder, export, register (and promote).

    An ANN index saved in `stage_dir/index` (built from the staged item embeddings) is copied
    into the committed version. `loaded`: the training data the two-tower was staged from (read
    from the offline store again when not given).
    """
    import json

    import torch
    from safetensors.torch import load_file

    from strata.errors import DataError
    from strata.models.dcn import DCNConfig, DCNRanker
    from strata.models.infer import embed_queries, score_ranker
    from strata.models.two_tower import TwoTower, TwoTowerConfig
    from strata.models.weights import load_state
    from strata.training.checkpoints import for_run
    from strata.training.distributed import current
    from strata.training.loops import seed_everything
    from strata.training.masking import mask_query_rows
    from strata.training.metrics import auc

    stage_dir = Path(stage_dir)
    meta_path = stage_dir / STAGE_META
    if not meta_path.is_file():
        raise DataError(meta_path, "missing; not a two-tower staging folder (run train_two_tower)")
    meta = json.loads(meta_path.read_text())
    if meta.get("dataset") != dataset:
        raise ValidationError(
            "dataset", f"staging folder holds {meta.get('dataset')!r}, not {dataset!r}"
        )
    cfg = settings.training
    seed = int(meta["seed"])
    seed_everything(seed, cfg.num_threads)
    store, data = loaded or training_data(settings, dataset, meta["until"])
    rows, cut = data.rows, data.cut
    if cut != int(meta["cut"]):
        raise DataError(stage_dir, f"offline store cut {cut} differs from the staged {meta['cut']}")
    space = FeatureSpace.load(stage_dir)
    dims = space.dims()
    rdata = retrieval_data(space, rows, data.shard)
    tt = TwoTower(dims, TwoTowerConfig(**meta["two_tower"]))
    load_state(tt, stage_dir / "two_tower.safetensors")
    tt.eval()
    # Restored after building the two-tower, whose random init would otherwise consume it.
    torch.set_rng_state(load_file(str(stage_dir / STAGE_RNG))["state"])
    item_emb = np.load(stage_dir / ITEM_EMBEDDINGS_FILE, allow_pickle=False)

    dist = current(cfg.device)
    sharded = data.shard is not None
    # sharded: each rank samples its share of the positives from its own rows
    rng = np.random.default_rng((seed + 1, dist.rank) if sharded else seed + 1)
    n_pos = -(-cfg.ranker_max_positives // dist.world) if sharded else cfg.ranker_max_positives
    users = rows["user_id"].to_numpy(np.int64)
    # a shard holds all of its users' rows, so this filter is exact there too
    seen = PairSetFilter(users, rows["item_id"].to_numpy(np.int64))
    sel = np.sort(rng.permutation(len(rdata))[:n_pos])
    q_sel = rdata.query.take(sel)
    rd = rank_data(
        space, embed_queries(tt, q_sel), q_sel, rdata.item_rows[sel], users[sel], item_emb,
        seen, cfg, rng,
    )  # fmt: skip
    ts_sel = rows["ts"].to_numpy(np.int64)[sel]
    pop_snaps = popularity_at(store, dataset, space, ts_sel, cut, cfg.popularity_snapshots)
    snap = pop_snaps.at(ts_sel)  # (P,) latest snapshot <= event
    q_cold = embed_queries(tt, mask_query_rows(q_sel, np.ones(len(q_sel), bool)))  # (P, D)
    s_cold = np.einsum("rd,rd->r", q_cold[rd.qi], item_emb[rd.item_rows - 1]).astype(np.float32)
    rd = replace(
        rd, pop=pop_snaps.counts[snap[rd.qi], rd.item_rows], ts=ts_sel[rd.qi], score_cold=s_cold
    )
    # Hold out 10% of positives (with their negatives) to report ranker AUC honestly.
    held = rng.random(len(sel)) < 0.1
    val_mask = held[rd.qi]
    # Fused with the retrieval logit (score / temperature) when scoring: DCNConfig.score_weight.
    w_score = 1.0 / float(tt.temperature) if cfg.ranker_fusion else 0.0
    # ... and with the item's trailing popularity as a log-prior: DCNConfig.prior_weight.
    w_prior = cfg.ranker_popularity_prior * LOG_COUNT_SCALE  # item_num holds log1p(n) / scale
    ranker = DCNRanker(
        dims, DCNConfig(score_weight=w_score, prior_weight=w_prior, prior_col=POP_COL)
    )
    t0 = time.perf_counter()
    n_rd = int(dist.total(len(rd))) if sharded else len(rd)
    ckpt = for_run(
        settings, dataset, dist, cut=cut, seed=seed, **_run_size(data, n_rd),
        tt_loss=meta["two_tower_loss"],
    )  # fmt: skip
    rk_loss = fit_ranker(
        ranker, space, rd.subset(~val_mask), cfg, seed, cfg.ranker_epochs, cfg.ranker_lr, ckpt,
        sharded,
    )  # fmt: skip
    t_rk = time.perf_counter() - t0
    if not dist.main and not sharded:  # every rank holds the same weights: rank 0 writes
        return TrainResult("", stage_dir, {"ranker_loss": rk_loss[-1]})
    val = rd.subset(val_mask)
    val_batch = val.batch(space, np.arange(len(val)))
    # The network alone (no fusion with the retrieval logit nor the prior), for comparison.
    net = DCNRanker(dims, ranker.cfg.model_copy(update={"score_weight": 0.0, "prior_weight": 0.0}))
    net.load_state_dict(ranker.state_dict())
    net.eval()
    scored = [val.label, score_ranker(ranker, val_batch), score_ranker(net, val_batch), val.score]
    if sharded:  # each rank held out positives of its own shard: pool them on rank 0
        parts = dist.gather_objects(scored)
        scored = [np.concatenate(col) for col in zip(*parts, strict=True)]
        if not dist.main:
            return TrainResult("", stage_dir, {"ranker_loss": rk_loss[-1]})
    label, p_val, p_net, s_val = scored
    n_rows = data.shard.rows if data.shard is not None else len(rows)
    metrics: dict[str, float] = {
        "two_tower_loss": float(meta["two_tower_loss"]),
        "ranker_loss": rk_loss[-1],
        "ranker_auc_valid": auc(label, p_val),
        "ranker_net_auc_valid": auc(label, p_net),
        "retrieval_score_auc_valid": auc(label, s_val),
        "two_tower_train_s": float(meta["two_tower_train_s"]),
        "ranker_train_s": t_rk,
        "train_events": float(n_rows),
    }
    snapshot = store.latest_user_features(dataset, as_of=cut)
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kind": "train",
        "parent": None,
        "data_range": {
            "min_ts": data.shard.min_ts if data.shard is not None else int(rows["ts"].min()),
            "max_ts": data.shard.max_ts if data.shard is not None else int(rows["ts"].max()),
            "until": cut,
            "events": n_rows,
            # sharded input: the rows each rank trained on (rank order)
            **({"shard_rows": list(data.shard.shard_rows)} if data.shard is not None else {}),
        },
        "metrics": metrics,
        "seed": seed,
        "epochs": int(meta["epochs"]),
    }
    index_dir = stage_dir / STAGE_INDEX
    # the (user, item) pairs the version's seen filter holds: all shards' (rank 0 read them)
    pairs = data.shard.pairs if data.shard is not None else None
    seen_u = users if pairs is None else pairs[:, 0]
    seen_i = rows["item_id"].to_numpy(np.int64) if pairs is None else pairs[:, 1]
    with torch.no_grad():
        version, path = write_version(
            settings, dataset, space, tt, ranker, item_emb, snapshot, seen_u, seen_i, manifest,
            index_dir=index_dir if index_dir.is_dir() else None,
        )  # fmt: skip
    holdout = store.events(dataset, since=cut)
    if len(holdout):
        from strata.training.recommender import load_recommender

        rec = load_recommender(settings, dataset, version)
        metrics.update(holdout_metrics(rec, data, store.events(dataset), k=10))
        update_metrics(path, metrics)
    if promote:
        from strata.registry import Registry

        Registry(settings.registry_dir, dataset).promote(version)
    log.info("trained %s %s: %s", dataset, version, metrics)
    return TrainResult(version, path, metrics)


def _run_size(data: TrainingData, n: int) -> dict[str, Any]:
    """The checkpoint key's size entries: `n` rows (every rank's together when sharded, so all
    ranks resume from the one checkpoint rank 0 wrote)."""
    return {"n": n} if data.shard is None else {"n": n, "sharded": True}


def train(
    settings: Settings,
    dataset: str,
    until: int | None = None,
    images: Path | None = None,
    epochs: int | None = None,
    tables: Tables | None = None,
    promote: bool = True,
) -> TrainResult:
    """Train two-tower + ranker on events before `until`, export, register (and promote):
    `train_two_tower` into a scratch staging folder, then `train_ranker` on it."""
    import shutil
    import tempfile

    stage = Path(tempfile.mkdtemp(prefix="strata-train-"))
    try:
        loaded = training_data(settings, dataset, until, images, tables)
        train_two_tower(settings, dataset, until, images, epochs, tables, stage, loaded)
        return train_ranker(settings, dataset, stage, promote, loaded)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def holdout_metrics(
    rec: Any, data: TrainingData, events: pd.DataFrame, k: int = 10
) -> dict[str, float]:
    """Recall@k and NDCG@k of retrieval and the full pipeline on events from the cut-off on,
    for all, warm and cold users (the evaluation harness's split and metrics)."""
    from strata.datasets.base import RecDataset
    from strata.training.evaluate import System, evaluate, temporal_split

    split = temporal_split(RecDataset("holdout", data.users, data.items, events), data.cut)
    systems = [System(stage, rec, stage) for stage in ("retrieval", "full")]
    report = evaluate(split, systems, ks=(k,))
    out: dict[str, float] = {}
    for stage, res in report["systems"].items():
        for sl, m in res["slices"].items():
            suffix = stage if sl == "all" else f"{stage}_{sl}"
            for name in (f"recall@{k}", f"ndcg@{k}"):
                if name in m:
                    out[f"holdout_{name}_{suffix}"] = m[name]
    return out
