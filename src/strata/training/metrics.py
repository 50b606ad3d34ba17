"""Ranking and classification metrics, vectorised NumPy in, float out.

Ranking metrics take `recommended`, an (U, K) int array of item ids per user, best first (pad a
short list with -1), and `relevant`, the held-out items per user: a sequence of U arrays. Users
with nothing relevant are left out of the mean; a metric over no such users is NaN.

- recall@k = |top-k ∩ relevant| / |relevant|
- NDCG@k (binary relevance) = DCG@k / IDCG@k with DCG = sum over hits of 1 / log2(rank + 1)
  (rank from 1) and IDCG the DCG of min(|relevant|, k) hits at the top (Järvelin & Kekäläinen,
  2002), per user, then averaged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from strata.errors import ValidationError

Relevant = Sequence[np.ndarray] | Sequence[Sequence[int]] | Sequence[set[int]]


def _binary(y: np.ndarray | Sequence[float], name: str = "y") -> np.ndarray:
    arr = np.asarray(y, dtype=np.float64).ravel()
    if not np.isin(arr, (0.0, 1.0)).all():
        raise ValidationError(name, "labels must be 0 or 1")
    return arr


def auc(y: np.ndarray | Sequence[float], p: np.ndarray | Sequence[float]) -> float:
    """ROC AUC from ranks (Mann-Whitney U); tied scores get their average rank."""
    yt = _binary(y)
    ps = np.asarray(p, dtype=np.float64).ravel()
    if yt.shape != ps.shape:
        raise ValidationError("p", f"shape {ps.shape} differs from y {yt.shape}")
    n_pos = float(yt.sum())
    n_neg = float(len(yt) - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValidationError("y", "AUC needs both positive and negative labels")
    order = np.argsort(ps, kind="mergesort")
    sorted_p = ps[order]
    # Average rank (1-based) for each run of equal scores.
    starts = np.flatnonzero(np.r_[True, sorted_p[1:] != sorted_p[:-1]])
    ends = np.r_[starts[1:], len(sorted_p)]
    avg = (starts + ends + 1) / 2.0
    ranks = np.empty_like(ps)
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[yt == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def logloss(
    y: np.ndarray | Sequence[float], p: np.ndarray | Sequence[float], eps: float = 1e-7
) -> float:
    """Mean binary cross-entropy with probabilities clipped to [eps, 1 - eps]."""
    yt = _binary(y)
    ps = np.clip(np.asarray(p, dtype=np.float64).ravel(), eps, 1.0 - eps)
    if yt.shape != ps.shape:
        raise ValidationError("p", f"shape {ps.shape} differs from y {yt.shape}")
    if len(yt) == 0:
        raise ValidationError("y", "empty")
    return float(-np.mean(yt * np.log(ps) + (1.0 - yt) * np.log1p(-ps)))


def hit_matrix(
    recommended: np.ndarray, relevant: Relevant, k: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Hits (U, k) bool (recommended[u, j] is relevant to u) and relevant counts (U,)."""
    recs = np.asarray(recommended)
    if recs.ndim != 2:
        raise ValidationError("recommended", f"expected a 2-d array, got shape {recs.shape}")
    if len(relevant) != len(recs):
        raise ValidationError("relevant", f"{len(relevant)} rows for {len(recs)} users")
    if k is not None:
        if k < 1:
            raise ValidationError("k", "must be >= 1")
        recs = recs[:, :k]
    recs = recs.astype(np.int64, copy=False)
    rel_arrays = [np.unique(np.fromiter(r, dtype=np.int64)) for r in relevant]
    n_rel = np.array([len(r) for r in rel_arrays], dtype=np.int64)
    if recs.size == 0 or n_rel.sum() == 0:
        return np.zeros(recs.shape, dtype=bool), n_rel
    rel_items = np.concatenate(rel_arrays) if rel_arrays else np.zeros(0, np.int64)
    rel_rows = np.repeat(np.arange(len(recs), dtype=np.int64), n_rel)
    # One key per (user row, item) over dense item codes, so any id range (hashes) is safe.
    _, codes = np.unique(np.concatenate([recs.ravel(), rel_items]), return_inverse=True)
    width = int(codes.max()) + 1
    rec_codes = codes[: recs.size].reshape(recs.shape)
    rec_keys = np.arange(len(recs), dtype=np.int64)[:, None] * width + rec_codes
    rel_keys = rel_rows * width + codes[recs.size :]
    hits = np.isin(rec_keys, rel_keys) & (recs >= 0)
    return hits, n_rel


def recall_at_k(recommended: np.ndarray, relevant: Relevant, k: int) -> float:
    """Mean over users with relevant items of |top-k ∩ relevant| / |relevant|."""
    hits, n_rel = hit_matrix(recommended, relevant, k)
    mask = n_rel > 0
    if not mask.any():
        return float("nan")
    return float(np.mean(hits[mask].sum(1) / n_rel[mask]))


def ndcg_at_k(recommended: np.ndarray, relevant: Relevant, k: int) -> float:
    """Mean over users with relevant items of binary-relevance NDCG@k."""
    hits, n_rel = hit_matrix(recommended, relevant, k)
    mask = n_rel > 0
    if not mask.any():
        return float("nan")
    discounts = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))  # (k,)
    dcg = hits.astype(np.float64) @ discounts[: hits.shape[1]]
    ideal_cum = np.r_[0.0, np.cumsum(discounts)]
    idcg = ideal_cum[np.minimum(n_rel, k)]
    return float(np.mean(dcg[mask] / idcg[mask]))


def coverage(recommended: np.ndarray, n_items: int, k: int | None = None) -> float:
    """Catalog coverage: distinct items in the (top-k) lists over the catalog size."""
    if n_items < 1:
        raise ValidationError("n_items", "must be >= 1")
    recs = np.asarray(recommended)
    if k is not None:
        recs = recs[:, :k]
    distinct = np.unique(recs[recs >= 0])
    return float(len(distinct) / n_items)
