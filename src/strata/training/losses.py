"""Losses: in-batch sampled softmax with logQ correction (Yi et al. 2019, "Sampling-bias-corrected
neural modeling for large corpus item recommendations") and binary cross-entropy for the ranker."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sampled_softmax_loss(
    q: torch.Tensor,
    i: torch.Tensor,
    item_ids: torch.Tensor,
    log_q: torch.Tensor,
    temperature: torch.Tensor | float,
    weight: torch.Tensor | None = None,
    neg: torch.Tensor | None = None,
    neg_ids: torch.Tensor | None = None,
    n_items: int | None = None,
    logq_weight: float | torch.Tensor = 1.0,
    neg_group: torch.Tensor | None = None,
    offset: int = 0,
    denominator: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Softmax over the in-batch items (plus optional uniform random negatives) per query row.

    Each logit is `q.i / T - log(expected count of i among the candidates)`: in-batch items appear
    with rate B * p(i) (`log_q` = log p(i)), uniform negatives with rate M / n_items. Without this
    correction popular items are over-penalised as negatives; `logq_weight` < 1 applies it
    partially (popularity itself predicts well on temporal splits). Columns that hold the row's
    own positive item elsewhere in the batch ("accidental hits") are removed from the softmax.
    `logq_weight` may be a (B,) tensor: one weight per query row.

    `neg` is (M, D), or (G, M, D) with `neg_group` (B,): the same M negatives embedded with their
    features as of G points in time, row b scoring version `neg_group[b]` (point-in-time
    negatives: a query at time t sees each negative's popularity and age at t, as serving does).

    Data-parallel: `i`, `item_ids` and `log_q` may hold the C >= B items of the global batch
    (every rank's, gathered), query row b's own item at column `offset + b`; the logQ term then
    uses the global batch size C. `denominator` replaces the local weight sum (or row count) so
    the ranks' losses add up to the global batch's mean.
    """
    b, c = q.shape[0], i.shape[0]
    w = logq_weight.unsqueeze(1) if isinstance(logq_weight, torch.Tensor) else logq_weight
    logits = q @ i.T / temperature  # (B, C)
    logits = logits - w * (log_q + math.log(c)).unsqueeze(0)  # (B, C)
    own = torch.arange(b, device=q.device) + offset  # (B,) column of each row's positive
    mine = item_ids[own]  # (B,)
    same = item_ids.unsqueeze(0) == mine.unsqueeze(1)  # (B, C)
    eye = own.unsqueeze(1) == torch.arange(c, device=q.device).unsqueeze(0)  # (B, C)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    if neg is not None:
        if neg_ids is None or n_items is None:
            raise ValueError("random negatives need neg_ids and n_items")
        m = neg.shape[-2]
        if neg.dim() == 3:
            if neg_group is None:
                raise ValueError("grouped negatives (G, M, D) need neg_group")
            by_group = torch.einsum("bd,gmd->bgm", q, neg)  # (B, G, M)
            ln = by_group[torch.arange(b, device=q.device), neg_group]  # (B, M)
        else:
            ln = q @ neg.T  # (B, M)
        ln = ln / temperature - w * math.log(m / n_items)  # (B, M)
        ln = ln.masked_fill(neg_ids.unsqueeze(0) == mine.unsqueeze(1), float("-inf"))
        logits = torch.cat([logits, ln], dim=1)  # (B, C + M)
    ce = F.cross_entropy(logits, own, reduction="none")  # (B,)
    if weight is None:
        return ce.sum() / (b if denominator is None else denominator)
    if denominator is None:
        return (ce * weight).sum() / weight.sum().clamp(min=1e-12)
    return (ce * weight).sum() / denominator


def bce_loss(
    logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary cross-entropy on logits (numerically stable), optionally weighted per row."""
    return F.binary_cross_entropy_with_logits(logits, labels, weight=weight)
