"""The order stage's helpers over one candidate list: top-k, a per-genre cap, and sampling
without replacement (Gumbel top-k) for diversity."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from strata.config import DiversityConfig


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores, best first (stable on ties)."""
    n = len(scores)
    if n > k:
        part = np.argpartition(-scores, k - 1)[:k]
        return part[np.lexsort((part, -scores[part]))]
    return np.argsort(-scores, kind="stable")


def genre_capped(scores: np.ndarray, genre: np.ndarray, k: int, cap: int) -> np.ndarray:
    """Best-first top-k with at most `cap` items per genre; fills from the rest if short.

    Vectorised: each candidate's rank within its genre (in score order) comes from one lexsort;
    candidates beyond the cap move behind all others, order is kept otherwise. Items without a
    genre (-1) are never capped.
    """
    n = len(scores)
    order = np.argsort(-scores, kind="stable")
    g = genre[order]
    pos = np.arange(n)
    by_genre = np.lexsort((pos, g))
    gs = g[by_genre]
    starts = np.r_[0, np.flatnonzero(np.diff(gs)) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    occ = np.empty(n, dtype=np.int64)
    occ[by_genre] = pos - run_start
    over = (occ >= cap) & (g >= 0)
    return order[np.lexsort((pos, over))[:k]]


def sampled(
    scores: np.ndarray,
    k: int,
    cfg: DiversityConfig,
    logits: bool = False,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """k items sampled without replacement from softmax(logit / T) (Gumbel top-k), drawn from
    `rng` (fresh entropy without one); `scores` are probabilities, or log-odds with `logits`."""
    if logits:
        logit = scores.astype(np.float64)
    else:
        p = np.clip(scores.astype(np.float64), 1e-9, 1 - 1e-9)
        logit = np.log(p) - np.log1p(-p)
    g = (rng or np.random.default_rng()).gumbel(size=len(scores))
    return top_k(logit / cfg.temperature + g, k)
