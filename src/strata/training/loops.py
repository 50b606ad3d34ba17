"""Seeded, deterministic training loops for the two-tower model and the DCN-v2 ranker.

Loops consume iterables of typed batches (real or synthetic alike) and own the optimiser, device
and progress bar; models stay pure modules.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from strata import progress
from strata.models.batch import ItemFeatures, QueryFeatures, RankBatch, RetrievalBatch
from strata.models.infer import rank_inputs
from strata.training.distributed import Dist
from strata.training.masking import mask_item, mask_item_rows, mask_query_rows

#: Position of `item_num` among the item tower's inputs (`ItemFeatures` field order).
ITEM_NUM = [f.name for f in fields(ItemFeatures)].index("item_num")

if TYPE_CHECKING:
    import torch

    from strata.models.dcn import DCNRanker
    from strata.models.two_tower import TwoTower
    from strata.training.checkpoints import Checkpoints

B = TypeVar("B", RetrievalBatch, RankBatch)


def seed_everything(seed: int, num_threads: int = 2) -> None:
    """Seed Python, NumPy and torch and pin the thread count so runs repeat bit for bit on CPU."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(num_threads)


@dataclass(frozen=True)
class RetrievalData:
    """All positive examples of a window: query features per event and the item-table row."""

    query: QueryFeatures
    item_rows: np.ndarray  # (N,) int64 rows of the item table
    log_q: np.ndarray  # (N,) float32 log P(item is a positive)
    weight: np.ndarray  # (N,) float32
    # (N, Ni) numeric item features as of each event (point-in-time popularity); None = table's
    item_num: np.ndarray | None = None
    ts: np.ndarray | None = None  # (N,) int64 event times; None = unknown

    def __len__(self) -> int:
        return len(self.item_rows)

    def take(self, idx: np.ndarray) -> RetrievalData:
        """Rows `idx`."""
        return RetrievalData(
            self.query.take(idx),
            self.item_rows[idx],
            self.log_q[idx],
            self.weight[idx],
            None if self.item_num is None else self.item_num[idx],
            None if self.ts is None else self.ts[idx],
        )

    def batches(
        self,
        items: ItemFeatures,
        batch_size: int,
        rng: np.random.Generator,
        steps: int | None = None,
    ) -> Iterator[RetrievalBatch]:
        """Shuffled mini-batches; item features are gathered from the table per batch.
        `steps`: exactly that many full batches (`epoch_order`)."""
        perm = epoch_order(rng, len(self), steps, batch_size)
        for s in range(0, len(perm) - 1, batch_size):
            idx = perm[s : s + batch_size]
            if len(idx) < 2:  # a softmax over one candidate teaches nothing
                continue
            it = items.take(self.item_rows[idx])
            if self.item_num is not None:
                it = replace(it, item_num=self.item_num[idx])
            yield RetrievalBatch(
                self.query.take(idx),
                it,
                self.log_q[idx],
                self.weight[idx],
                None if self.ts is None else self.ts[idx],
            )


def epoch_order(rng: np.random.Generator, n: int, steps: int | None, batch_size: int) -> np.ndarray:
    """The row order of one epoch over `n` rows: a permutation, or with `steps` exactly
    `steps * batch_size` rows drawn as successive permutations (a shard smaller than the
    epoch repeats rows, a larger one leaves a random surplus out; sharded ranks so take the
    same number of full batches)."""
    if steps is None:
        return rng.permutation(n)
    need = int(steps) * int(batch_size)
    laps = max(1, -(-need // max(n, 1)))
    return np.concatenate([rng.permutation(n) for _ in range(laps)])[:need]


@dataclass(frozen=True)
class Negatives:
    """Uniform random negatives of one batch: M items, optionally as of G points in time.

    With `item_num` (G, M, Ni) query row b scores the items with their numeric features
    (popularity, age) as of time group `group[b]`, so a query sees each negative's popularity
    and age at its own time rather than at the end of training (which would leak the future
    into negatives and make every served item look like a training negative); `items` then
    supplies the rest (id, metadata, content), shared by every time.
    """

    items: ItemFeatures  # (M,)
    ids: np.ndarray  # (M,) int64 item-embedding ids, for accidental-hit removal
    group: np.ndarray | None = None  # (B,) int64 time group of each query row
    item_num: np.ndarray | None = None  # (G, M, Ni) float32 numeric features per time group


def _adam(params: Iterable[torch.nn.Parameter], lr: float, wd: float) -> torch.optim.Optimizer:
    import torch

    # foreach: one fused update over all tensors instead of a Python loop of small kernels.
    return torch.optim.Adam(
        [p for p in params if p.requires_grad], lr=lr, weight_decay=wd, foreach=True
    )


def _fit(
    name: str,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    epochs: Callable[[int, np.random.Generator], Iterable[B]],
    n_epochs: int,
    step: Callable[[B, np.random.Generator], tuple[torch.Tensor, int] | None],
    *,
    seed: int,
    dist: Dist,
    ckpt: Checkpoints | None,
    steps_per_epoch: int | None,
) -> list[float]:
    """The epoch/step loop both models share: data order from a per-epoch generator, one
    optimiser step per global batch (gradients averaged over ranks), checkpoints every K steps
    and resuming from the last one; returns the mean loss per epoch.

    Epoch e draws its batches from `default_rng((seed, e))` and the step's randomness (masking,
    negatives) from `default_rng((seed, e, 1))`, so a resumed epoch replays the same batches
    and continues the step generator from its saved state: a resumed run equals an unbroken one.
    """
    import torch

    from strata.training.checkpoints import Resume

    cuda = dist.device.startswith("cuda")
    dist.broadcast_params(model)
    params = [p for g in opt.param_groups for p in g["params"]]
    at = ckpt.restore(name, model, opt) if ckpt is not None else None
    history = list(at.history) if at is not None else []
    total_steps = n_epochs * (steps_per_epoch or 0) or None
    with progress.task(name, total=total_steps) as (bar, t):
        for e in range(at.epoch if at is not None else 0, n_epochs):
            rng = np.random.default_rng((seed, e, 1))
            skip, total, n = 0, 0.0, 0
            if at is not None and e == at.epoch:
                rng.bit_generator.state = at.rng_state
                skip, total, n = at.step, at.total, at.n
            for k, b in enumerate(epochs(e, np.random.default_rng((seed, e)))):
                if k < skip:
                    continue
                # mixed precision on CUDA (bf16: no loss scaling needed); plain fp32 on CPU
                with torch.autocast("cuda", torch.bfloat16, enabled=cuda):
                    out = step(b, rng)
                if out is not None:
                    loss, rows = out
                    opt.zero_grad()
                    loss.backward()
                    mean = dist.average_gradients(params, loss)
                    opt.step()
                    total += mean * rows
                    n += rows
                    if ckpt is not None:
                        state = Resume(e, k + 1, history, total, n, dict(rng.bit_generator.state))
                        ckpt.step(name, model, opt, state)
                bar.advance(t)
            history.append(total / max(n, 1))
    if ckpt is not None:
        ckpt.clear(name)
    return history


def two_tower_loop(
    model: TwoTower,
    epochs: Callable[[int, np.random.Generator], Iterable[RetrievalBatch]],
    n_epochs: int,
    *,
    lr: float = 2e-3,
    weight_decay: float = 0.0,
    p_user: float = 0.0,
    p_item: float = 0.0,
    negatives: Callable[[np.random.Generator, RetrievalBatch], Negatives] | None = None,
    n_items: int | None = None,
    freeze_items: bool = False,
    seed: int = 0,
    device: str = "cpu",
    steps_per_epoch: int | None = None,
    logq_weight: float = 1.0,
    logq_weight_cold: float | None = None,
    pop_col: int | None = None,
    dist: Dist | None = None,
    ckpt: Checkpoints | None = None,
) -> list[float]:
    """Train with in-batch sampled softmax (+ optional random negatives); return mean loss/epoch.

    `epochs(e, rng)` yields the (global) batches of epoch `e`; `negatives(rng, batch)` draws a
    batch's random negatives (see `Negatives`); `freeze_items` keeps the item tower fixed
    (incremental fine-tuning must not move the item embeddings the ANN index was built from).
    `logq_weight_cold` (default: `logq_weight`) is the logQ weight of rows whose user was masked,
    so the cold-start query can keep more of the popularity prior than a known user's;
    `pop_col` masks item popularity together with the item id (see `masking.mask_item`).
    With `dist` each rank trains on its slice of every batch (or, `dist.sharded`, on its own
    batch of its shard) and the softmax runs over the items of the whole global batch (gathered
    from all ranks), logQ-corrected for the global batch. The step generator is the same on
    every rank (a checkpoint restores one state everywhere), so sharded ranks draw the same
    masks and negatives for their different, independently shuffled rows.
    """
    import torch

    from strata.training.losses import sampled_softmax_loss

    d = dist or Dist(device=device)
    device = d.device
    torch.manual_seed(seed)
    model.to(device).train()
    for p in model.item_tower.parameters():
        p.requires_grad_(not freeze_items)
    opt = _adam(model.parameters(), lr, weight_decay)
    w_cold = logq_weight if logq_weight_cold is None else logq_weight_cold

    def step(gb: RetrievalBatch, rng: np.random.Generator) -> tuple[torch.Tensor, int] | None:
        # randomness is drawn for the global batch, so N ranks draw what one process would
        cold = rng.random(len(gb.query)) < p_user  # (G,) rows served as unknown users
        it_feats = mask_item(gb.item, p_item, rng, pop_col)
        ns = negatives(rng, gb) if negatives is not None else None
        hide = rng.random(len(ns.items)) < p_item if ns is not None else None  # (M,) all times
        mine = d.rows(len(gb))
        if mine is None:  # a softmax over one candidate teaches nothing
            return None
        whole = d.world == 1 or d.sharded  # the whole batch is this rank's: no copy
        b, cold = (gb, cold) if whole else (gb.take(mine), cold[mine])
        it_feats = it_feats if whole else it_feats.take(mine)
        q = model.query_tower(*mask_query_rows(b.query, cold).tensors(device))  # (B, D)
        with torch.set_grad_enabled(not freeze_items):
            i = model.item_tower(*it_feats.tensors(device))  # (B, D)
        w_logq = torch.from_numpy(np.where(cold, w_cold, logq_weight).astype(np.float32))
        neg = neg_ids = neg_group = None
        if ns is not None and hide is not None:
            neg_ids = torch.from_numpy(ns.ids).to(device)
            feats = list(mask_item_rows(ns.items, hide, pop_col).tensors(device))
            if ns.item_num is not None and ns.group is not None:
                num = ns.item_num
                if pop_col is not None and hide.any():
                    num = num.copy()
                    num[:, hide, pop_col] = 0.0
                feats[ITEM_NUM] = torch.from_numpy(num).to(device)  # (G, M, Ni)
                group = ns.group if whole else ns.group[mine]
                neg_group = torch.from_numpy(group).to(device)
            with torch.set_grad_enabled(not freeze_items):
                neg = model.item_tower(*feats)  # (M, D) or (G, M, D)
        weight = torch.from_numpy(b.weight).to(device)
        loss = sampled_softmax_loss(
            q,
            d.gather(i),  # (C, D): every rank's items are every rank's negatives
            d.gather(torch.from_numpy(b.item.item).to(device)),
            d.gather(torch.from_numpy(b.log_q).to(device)),
            model.temperature,
            weight=weight,
            neg=neg,
            neg_ids=neg_ids,
            n_items=n_items,
            logq_weight=w_logq.to(device),
            neg_group=neg_group,
            offset=d.rank * len(b),
            # the ranks' losses average to the global weighted mean
            denominator=d.total(float(weight.sum())) / d.world if d.world > 1 else None,
        )
        return loss, len(b)

    history = _fit(
        "two-tower", model, opt, epochs, n_epochs, step,
        seed=seed, dist=d, ckpt=ckpt, steps_per_epoch=steps_per_epoch,
    )  # fmt: skip
    for p in model.item_tower.parameters():
        p.requires_grad_(True)
    model.eval()
    return history


def ranker_loop(
    model: DCNRanker,
    epochs: Callable[[int, np.random.Generator], Iterable[RankBatch]],
    n_epochs: int,
    *,
    lr: float = 2e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    device: str = "cpu",
    steps_per_epoch: int | None = None,
    dist: Dist | None = None,
    ckpt: Checkpoints | None = None,
) -> list[float]:
    """Train the ranker with BCE on labelled (global) batches; return mean loss per epoch.
    With `dist` each rank takes an equal slice of every batch, or its own equal-sized batch of
    sharded input (either way the mean of the ranks' means is the global batch's mean)."""
    import torch

    from strata.training.losses import bce_loss

    d = dist or Dist(device=device)
    torch.manual_seed(seed)
    model.to(d.device).train()
    opt = _adam(model.parameters(), lr, weight_decay)

    def step(gb: RankBatch, _rng: np.random.Generator) -> tuple[torch.Tensor, int] | None:
        split = d.world > 1 and not d.sharded  # this rank's slice of a global batch
        mine = d.rows(len(gb)) if split else None
        if split and mine is None:
            return None
        b = gb if mine is None else gb.take(mine)
        logits = model(*rank_inputs(b, d.device))  # (B,)
        return bce_loss(logits, torch.from_numpy(b.label).to(d.device)), len(b)

    history = _fit(
        "ranker", model, opt, epochs, n_epochs, step,
        seed=seed, dist=d, ckpt=ckpt, steps_per_epoch=steps_per_epoch,
    )  # fmt: skip
    model.eval()
    return history


def rank_batches(data: RankBatch, batch_size: int, rng: np.random.Generator) -> Iterator[RankBatch]:
    """Shuffled mini-batches of a labelled ranker table."""
    perm = rng.permutation(len(data))
    for s in range(0, len(perm), batch_size):
        yield data.take(perm[s : s + batch_size])
