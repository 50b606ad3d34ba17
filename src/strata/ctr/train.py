"""Streaming CTR training from Parquet in bounded memory, held-out evaluation, warm-start retrain.

Rows keep their file order (Criteo logs are in time order), so the split is temporal: the first
rows train, the next `valid_fraction` drive early stopping, the last `test_fraction` are the
held-out test. Training reads `read_rows` at a time through a block-shuffle buffer; only the
validation sample (capped), a replay reservoir and the test scores are held in memory.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from strata.config import CtrConfig, CtrModelConfig
from strata.ctr.artifacts import REPLAY, CtrTrainResult, load_version_model
from strata.ctr.baseline import evaluate_hashed_lr_baseline
from strata.ctr.data import (
    CtrSource,
    Reservoir,
    _block_shuffled,
    temporal_split,
    valid_frame,
)
from strata.ctr.drift import FeatureDriftReference
from strata.ctr.preprocess import (
    CtrBatch,
    CtrPreprocessor,
    fit_preprocessor,
)
from strata.errors import DataError
from strata.training.distributed import Dist, resolve_device
from strata.training.gates import ctr_retrain_gate

if TYPE_CHECKING:
    from strata.ctr.model import CtrModel

log = logging.getLogger(__name__)


# --- model steps ---------------------------------------------------------------------------


def build_model(prep: CtrPreprocessor, cfg: CtrModelConfig) -> CtrModel:
    """A fresh `CtrModel` sized for `prep`'s dense width and vocabularies."""
    from strata.ctr.model import CtrModel

    return CtrModel(prep.n_dense, prep.cardinalities, cfg)


def predict_proba(model: CtrModel, batch: CtrBatch, batch_size: int = 8192) -> np.ndarray:
    """Click probabilities from the torch model in eval mode."""
    import torch

    model.eval()
    dev = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for s in range(0, len(batch), batch_size):
            part = batch.take(slice(s, s + batch_size))
            logits = model(
                torch.from_numpy(part.dense).to(dev), torch.from_numpy(part.cats).to(dev)
            )
            out.append(torch.sigmoid(logits.float()).cpu().numpy())
    return np.concatenate(out) if out else np.empty(0, dtype=np.float32)


def evaluate_probs(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """AUC and logloss (metrics from strata.training.metrics) plus the row count."""
    from strata.training.metrics import auc, logloss

    return {"auc": float(auc(y, p)), "logloss": float(logloss(y, p)), "rows": len(y)}


def _fit_epochs(
    model: CtrModel,
    make_batches: Callable[[int], Iterable[CtrBatch]],
    valid: CtrBatch | None,
    epochs: int,
    lr: float,
    weight_decay: float,
    emb_l2: float,
    patience: int,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    dist: Dist | None = None,
    steps: int | None = None,
) -> dict[str, Any]:
    """Adam + BCE epochs with early stopping on validation AUC; restores the best weights.

    Data-parallel (`dist` of several ranks): each rank trains on its own minibatches, gradients
    are averaged over ranks every step (so the replicas stay equal), every rank takes exactly
    `steps` steps per epoch, and the main rank alone validates (`valid`; None elsewhere) and
    tells the others when to stop. On CUDA the forward pass runs under bf16 autocast.
    """
    import torch
    from torch import nn

    d = dist or Dist()
    dev = next(model.parameters()).device
    amp = dev.type == "cuda"
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    best_auc, best_epoch, bad = -1.0, -1, 0
    best_state = copy.deepcopy(model.state_dict()) if d.main else None
    history: list[dict[str, float]] = []
    seen = 0
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for i, mb in enumerate(make_batches(epoch)):
            if steps is not None and i >= steps:
                break
            assert mb.labels is not None
            dense = torch.from_numpy(mb.dense).to(dev, non_blocking=True)
            cats = torch.from_numpy(mb.cats).to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                logits, emb = model.forward_with_emb(dense, cats)
            loss = nn.functional.binary_cross_entropy_with_logits(
                logits.float(), torch.from_numpy(mb.labels).to(dev)
            )
            if emb_l2 > 0:
                # L2 only on the rows this batch used: rare ids are not shrunk every step.
                loss = loss + emb_l2 * (emb.float() ** 2).sum(dim=(1, 2)).mean()
            opt.zero_grad()
            loss.backward()
            if d.world > 1:
                d.average_gradients(params, loss)
            opt.step()
            seen += len(mb)
        stop = False
        if d.main:
            assert valid is not None and valid.labels is not None
            m = evaluate_probs(valid.labels, predict_proba(model, valid))
            m["epoch"] = epoch
            history.append(m)
            log.info("ctr epoch %d: valid auc=%.4f logloss=%.4f", epoch, m["auc"], m["logloss"])
            if on_epoch is not None:
                on_epoch(epoch, m)
            if m["auc"] > best_auc:
                best_auc, best_epoch, bad = m["auc"], epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
                stop = bad > patience
        if d.total(1.0 if stop else 0.0) > 0:  # the main rank's verdict, for every rank
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    elapsed = time.perf_counter() - t0
    seen_all = d.total(seen)
    return {
        "best_valid_auc": best_auc,
        "best_epoch": best_epoch,
        "history": history,
        "samples_per_s": seen_all / elapsed if elapsed > 0 else 0.0,
        "train_seconds": elapsed,
        "rows_seen": int(seen_all),
    }


# --- full training -------------------------------------------------------------------------


def train_ctr(
    source: CtrSource, cfg: CtrConfig, seed: int = 42, baseline: bool = False
) -> CtrTrainResult:
    """Fit preprocessing, train DCN/DCN-v2 with early stopping, evaluate on the held-out test
    (one process, on `ctr.train.device`). `baseline`: also fit the hashed LR on the same rows
    (`metrics["baseline_hashed_lr"]`), which `strata ctr train`'s promotion gate needs."""
    result = train_ctr_rank(source, cfg, seed)
    assert result is not None  # rank 0 of 1 always returns one
    return with_baseline(result, source, seed) if baseline else result


def with_baseline(result: CtrTrainResult, source: CtrSource, seed: int = 42) -> CtrTrainResult:
    """`result` plus the hashed LR fitted on the same training rows and early-stopped on the
    same validation window (`metrics["baseline_hashed_lr"]`): the promotion gate's yardstick.
    One process; a data-parallel job runs it on the main rank after the ranks left the group."""
    tc = result.config.train
    split = temporal_split(source.rows, tc.valid_fraction, tc.test_fraction)
    base = evaluate_hashed_lr_baseline(source, split, tc.read_rows, seed=seed)
    return dataclasses.replace(result, metrics={**result.metrics, "baseline_hashed_lr": base})


def train_ctr_rank(
    source: CtrSource,
    cfg: CtrConfig,
    seed: int = 42,
    dist: Dist | None = None,
) -> CtrTrainResult | None:
    """`train_ctr` as one rank of a job. Data-parallel (`dist` of N ranks): each rank streams
    only its row groups of the training rows (`CtrSource.iter_shard`), the preprocessing counts
    are merged over ranks, the per-rank batch is `train.batch_size` (global N x that), and every
    rank takes as many steps per epoch as the smallest shard allows (`shard_steps`). The main
    rank validates, tests and returns the result; the others return None.
    """
    import torch
    from rich.progress import TaskID

    from strata.progress import task

    d = dist or Dist(device=resolve_device(cfg.train.device, field="ctr.train.device"))
    tc = cfg.train
    share = max(1, (os.cpu_count() or 1) // d.world)  # ranks split the machine's cores
    torch.set_num_threads(min(tc.max_threads, share) if d.world > 1 else tc.max_threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + d.rank)
    split = temporal_split(source.rows, tc.valid_fraction, tc.test_fraction)

    def train_frames() -> Iterator[pd.DataFrame]:
        if d.world == 1:
            return source.iter_range(*split.train, tc.read_rows)
        return source.iter_shard(*split.train, tc.read_rows, d.rank, d.world)

    prep = fit_preprocessor(train_frames(), cfg.preprocess, d)
    valid = None
    if d.main:
        valid = prep.transform(valid_frame(source, split, tc.read_rows), require_label=True)
    model = build_model(prep, cfg.model).to(d.device)
    d.broadcast_params(model)
    reservoir = Reservoir(tc.replay_rows, seed)
    steps = shard_steps(source, cfg, d.world) if d.world > 1 else None

    def make_batches(epoch: int) -> Iterator[CtrBatch]:
        def chunks() -> Iterator[CtrBatch]:
            for df in train_frames():
                b = prep.transform(df, require_label=True)
                if epoch == 0:
                    reservoir.add(b)
                yield b

        yield from _block_shuffled(chunks(), tc.shuffle_buffer, tc.batch_size, rng)

    with task(f"train {cfg.model.type}", total=tc.epochs) as (progress, tid):
        fit = _fit_epochs(
            model,
            make_batches,
            valid,
            tc.epochs,
            tc.lr,
            tc.weight_decay,
            tc.emb_l2,
            tc.patience,
            on_epoch=lambda _e, _m: progress.advance(TaskID(tid)),
            dist=d,
            steps=steps,
        )
    if not d.main:
        return None
    model.cpu()
    test = evaluate_source(model, prep, source, *split.test, tc.read_rows)
    metrics: dict[str, Any] = {
        "test": test,
        "valid_auc": fit["best_valid_auc"],
        "best_epoch": fit["best_epoch"],
        "history": fit["history"],
        "samples_per_s": fit["samples_per_s"],
        "train_seconds": fit["train_seconds"],
        "rows_seen": fit["rows_seen"],
        "ranks": d.world,
        "device": d.device,
        "split": {"train": split.train, "valid": split.valid, "test": split.test},
    }
    # with several ranks the replay sample comes from the main rank's shard (its row groups
    # are spread over the whole training range, so it is still a sample of all of it)
    replay = reservoir.sample()
    drift_ref = FeatureDriftReference.fit(replay, psi_alert=cfg.drift.psi_alert) if replay else None
    return CtrTrainResult(
        model=model,
        preprocessor=prep,
        config=cfg,
        metrics=metrics,
        replay=replay,
        drift_reference=drift_ref,
        data={"path": str(source.path), "rows": source.rows},
    )


def shard_steps(source: CtrSource, cfg: CtrConfig, world: int) -> int:
    """Optimiser steps per epoch of a `world`-rank job: full per-rank batches of the smallest
    shard (read from the Parquet footers, so the launcher checks it before any rank starts).
    The larger shards' surplus rows (under one row group) sit out the epoch."""
    tc = cfg.train
    split = temporal_split(source.rows, tc.valid_fraction, tc.test_fraction)
    least = min(source.shard_rows(*split.train, r, world) for r in range(world))
    if least < tc.batch_size:
        raise DataError(
            str(source.path),
            f"a rank's shard holds {least} training rows, fewer than one batch of "
            f"{tc.batch_size}: use fewer ranks or a smaller ctr.train.batch_size",
        )
    return least // tc.batch_size


def evaluate_source(
    model: CtrModel,
    prep: CtrPreprocessor,
    source: CtrSource,
    start: int,
    stop: int,
    chunk_rows: int = 65_536,
) -> dict[str, float]:
    """AUC/logloss/rows of the torch model over rows [start, stop), streamed."""
    ys, ps = [], []
    for df in source.iter_range(start, stop, chunk_rows):
        b = prep.transform(df, require_label=True)
        assert b.labels is not None
        ys.append(b.labels)
        ps.append(predict_proba(model, b))
    return evaluate_probs(np.concatenate(ys), np.concatenate(ps))


# --- incremental ---------------------------------------------------------------------------


@dataclass
class IncrementalResult:
    """Outcome of a warm-start retrain: the gate's numbers and, if promoted, the new version."""

    promoted: bool
    old_auc: float
    new_auc: float
    rows_recent: int
    rows_replay: int
    rows_holdout: int
    seconds: float
    result: CtrTrainResult | None = None
    reasons: list[str] = field(default_factory=list)  # why the gate refused

    def to_dict(self) -> dict[str, Any]:
        """The numbers (without the model)."""
        return {
            "promoted": self.promoted,
            "old_auc": self.old_auc,
            "new_auc": self.new_auc,
            "rows_recent": self.rows_recent,
            "rows_replay": self.rows_replay,
            "rows_holdout": self.rows_holdout,
            "seconds": self.seconds,
            "reasons": self.reasons,
        }


def incremental_train(
    version_dir: Path,
    recent: CtrBatch,
    cfg: CtrConfig,
    seed: int = 42,
) -> IncrementalResult:
    """Warm-start from `version_dir`, fine-tune on recent rows + replay, gate on a recent holdout.

    The newest `holdout_fraction` of `recent` is the holdout; the rest plus a replay sample from
    the serving version's training data (to resist forgetting) are the fine-tuning rows. The new
    model is promoted only if its holdout AUC >= the serving model's + `min_gain`.
    """
    import torch

    from strata.training.metrics import auc

    ic = cfg.incremental
    if recent.labels is None or len(recent) < 20:
        raise DataError("<recent>", f"need at least 20 labelled rows, got {len(recent)}")
    t0 = time.perf_counter()
    torch.set_num_threads(cfg.train.max_threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    old, prep, meta = load_version_model(version_dir)
    n_hold = max(10, int(len(recent) * ic.holdout_fraction))
    fit_rows, holdout = (
        recent.take(slice(0, len(recent) - n_hold)),
        recent.take(slice(-n_hold, None)),
    )
    assert holdout.labels is not None
    replay_path = version_dir / REPLAY
    replay_all = CtrBatch.from_npz(replay_path) if replay_path.exists() else None
    n_replay = 0
    train_rows = fit_rows
    if replay_all is not None and ic.replay_ratio > 0:
        n_replay = min(len(replay_all), int(len(fit_rows) * ic.replay_ratio))
        replay = replay_all.take(rng.choice(len(replay_all), n_replay, replace=False))
        train_rows = CtrBatch.concat([fit_rows, replay])
    old_auc = float(auc(holdout.labels, predict_proba(old, holdout)))
    new = copy.deepcopy(old)

    def make_batches(_epoch: int) -> Iterator[CtrBatch]:
        perm = rng.permutation(len(train_rows))
        for s in range(0, len(perm), cfg.train.batch_size):
            yield train_rows.take(perm[s : s + cfg.train.batch_size])

    # Early stopping on the holdout would leak it into the gate: use a slice of the fit rows.
    n_val = max(10, len(fit_rows) // 5)
    fit_valid = fit_rows.take(slice(-n_val, None))
    _fit_epochs(
        new,
        make_batches,
        fit_valid,
        ic.epochs,
        ic.lr,
        cfg.train.weight_decay,
        cfg.train.emb_l2,
        patience=ic.epochs,
    )
    new_auc = float(auc(holdout.labels, predict_proba(new, holdout)))
    verdict = ctr_retrain_gate(old_auc, new_auc, ic.min_gain)
    promoted = verdict.accepted
    seconds = time.perf_counter() - t0
    log.info(
        "ctr incremental: old_auc=%.4f new_auc=%.4f promoted=%s (recent=%d replay=%d holdout=%d)",
        old_auc, new_auc, promoted, len(fit_rows), n_replay, n_hold,
    )  # fmt: skip
    out = IncrementalResult(
        promoted,
        old_auc,
        new_auc,
        len(fit_rows),
        n_replay,
        n_hold,
        seconds,
        result=None,
        reasons=verdict.reasons,
    )
    if promoted:
        # The next replay mixes the old sample with the recent rows, so it follows the traffic.
        res = Reservoir(cfg.train.replay_rows, seed + 1)
        if replay_all is not None:
            res.add(replay_all)
        res.add(recent)
        model_cfg = CtrModelConfig(**meta["model"])
        out.result = CtrTrainResult(
            model=new,
            preprocessor=prep,
            config=cfg.model_copy(update={"model": model_cfg}),
            metrics={"gate": out.to_dict(), "parent": version_dir.name},
            replay=res.sample(),
            drift_reference=FeatureDriftReference.fit(recent, psi_alert=cfg.drift.psi_alert),
            data={"rows": len(recent), "incremental": True},
        )
    return out
