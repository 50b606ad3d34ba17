"""Baselines the evaluation harness compares the model with, on the train side of a temporal split:
popularity (all-time, and over a trailing window before the split), item-KNN (cosine over the
binary train matrix) and ALS from `implicit`. Users without history get the popularity list
from every baseline (the usual fallback)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from strata.engine.recommend import Stage

if TYPE_CHECKING:
    import pandas as pd
    import scipy.sparse as sp


class _TrainMatrix:
    """Binary user x item matrix of the train interactions with id <-> index maps."""

    def __init__(self, train: pd.DataFrame, item_ids: np.ndarray) -> None:
        import scipy.sparse as sp

        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        users = train["user_id"].to_numpy(np.int64)
        self.user_ids = np.unique(users)
        rows = np.searchsorted(self.user_ids, users)
        cols = self.item_index(train["item_id"].to_numpy(np.int64))
        ok = cols >= 0
        data = np.ones(int(ok.sum()), dtype=np.float32)
        mat = sp.csr_matrix(
            (data, (rows[ok], cols[ok])), shape=(len(self.user_ids), len(self.item_ids))
        )
        mat.data[:] = 1.0  # repeated interactions count once
        self.matrix: sp.csr_matrix = mat
        pop = np.asarray(mat.sum(axis=0)).ravel().astype(np.float64)
        # Popularity in [0, 1); used as a score and, scaled down, as a deterministic tie-break.
        self.popularity = pop / (pop.max() + 1.0) if len(pop) else pop

    def item_index(self, items: np.ndarray) -> np.ndarray:
        """Column of each item id, -1 for ids outside the catalog."""
        pos = np.searchsorted(self.item_ids, items)
        pos = np.clip(pos, 0, max(len(self.item_ids) - 1, 0))
        ok = (len(self.item_ids) > 0) & (self.item_ids[pos] == items)
        return np.where(ok, pos, -1)

    def user_index(self, users: np.ndarray) -> np.ndarray:
        """Row of each user id, -1 for users without train history (cold)."""
        if len(self.user_ids) == 0:
            return np.full(len(users), -1, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.user_ids, users), 0, len(self.user_ids) - 1)
        return np.where(self.user_ids[pos] == users, pos, -1)

    def top_k_warm(
        self,
        user_ids: np.ndarray,
        k: int,
        exclude: dict[int, set[int]] | None,
        warm_scores: Callable[[np.ndarray], np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k with `warm_scores(rows)` for users in the train matrix, popularity for the rest
        (the cold-user fallback every interaction-only baseline shares)."""
        users = np.asarray(user_ids, dtype=np.int64)
        rows = self.user_index(users)
        scores = np.tile(self.popularity, (len(users), 1))
        warm = rows >= 0
        if warm.any():
            scores[warm] = warm_scores(rows[warm])
        return self.top_k(scores, users, k, exclude)

    def top_k(
        self,
        scores: np.ndarray,
        user_ids: np.ndarray,
        k: int,
        exclude: dict[int, set[int]] | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item ids and scores per row of `scores` (B, I) after masking excluded items."""
        scores = np.array(scores, dtype=np.float64, copy=True)
        if exclude:
            sets = [exclude.get(int(u), ()) for u in user_ids]
            lens = np.array([len(s) for s in sets], dtype=np.int64)
            if lens.sum():
                cols = self.item_index(np.fromiter((i for s in sets for i in s), np.int64))
                rows = np.repeat(np.arange(len(user_ids)), lens)
                keep = cols >= 0
                scores[rows[keep], cols[keep]] = -np.inf
        scores[np.isnan(scores)] = -np.inf
        n_items = scores.shape[1]
        kk = min(k, n_items)
        # Select exactly kk columns per row: all above the kk-th value, then ties at that value
        # by column order, so results never depend on argpartition's arbitrary tie handling.
        kth = -np.partition(-scores, kk - 1, axis=1)[:, kk - 1 : kk]  # (B, 1)
        above = scores > kth
        at = scores == kth
        need = kk - above.sum(axis=1, keepdims=True)
        chosen = above | (at & (np.cumsum(at, axis=1) <= need))
        cand = np.nonzero(chosen)[1].reshape(len(scores), kk)  # row-major: columns ascending
        cand_scores = np.take_along_axis(scores, cand, axis=1)
        order = np.lexsort((cand, -cand_scores), axis=1)  # by score desc, then column
        idx = np.take_along_axis(cand, order, axis=1)
        top = np.take_along_axis(cand_scores, order, axis=1)
        ids = np.where(np.isfinite(top), self.item_ids[idx], -1)
        out_ids = np.full((len(scores), k), -1, dtype=np.int64)
        out_scores = np.full((len(scores), k), -np.inf, dtype=np.float32)
        out_ids[:, :kk] = ids
        out_scores[:, :kk] = top.astype(np.float32)
        return out_ids, out_scores


class PopularityRecommender:
    """Most-interacted items before the split, minus what each user has already seen.

    With `window_s`, only interactions in the last `window_s` seconds before the split count
    ("trending"; all-time popularity breaks ties), the window of the item popularity feature
    (`item_n_events`) the models get.
    """

    name = "popularity"

    def __init__(
        self, train: pd.DataFrame, item_ids: np.ndarray, window_s: int | None = None
    ) -> None:
        self.data = _TrainMatrix(train, item_ids)
        self.scores = self.data.popularity
        if window_s is not None:
            self.name = f"popularity-{window_s // 86400}d"
            ts = train["ts"].to_numpy(np.int64)
            recent = train[ts >= (ts.max() + 1 - window_s if len(ts) else 0)]
            # All-time popularity lies in [0, 1): scaled down it only orders recent ties.
            self.scores = _TrainMatrix(recent, item_ids).popularity + 1e-3 * self.data.popularity

    def recommend(
        self,
        user_ids: np.ndarray,
        k: int,
        stage: Stage = "full",
        exclude: dict[int, set[int]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k popular items per user (`stage` is ignored: one stage)."""
        users = np.asarray(user_ids, dtype=np.int64)
        scores = np.broadcast_to(self.scores, (len(users), len(self.data.item_ids)))
        return self.data.top_k(scores, users, k, exclude)


class ItemKNNRecommender:
    """Item-based k-nearest neighbours: cosine over the binary train matrix (Sarwar et al. 2001).

    A user's score for item j is the sum of sim(i, j) over the items i they interacted with,
    keeping the `neighbours` most similar items of each i; cold users get popularity.
    """

    name = "item-knn"

    def __init__(
        self, train: pd.DataFrame, item_ids: np.ndarray, neighbours: int = 100, chunk: int = 2048
    ) -> None:
        import scipy.sparse as sp

        self.data = _TrainMatrix(train, item_ids)
        x = self.data.matrix.tocsc()
        norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        xn = (x @ sp.diags(inv)).tocsc().astype(np.float32)
        sim = (xn.T @ xn).tocsr()  # (I, I) cosine
        sim.setdiag(0.0)
        sim.eliminate_zeros()
        self.sim = _prune_rows(sim, neighbours, chunk)

    def recommend(
        self,
        user_ids: np.ndarray,
        k: int,
        stage: Stage = "full",
        exclude: dict[int, set[int]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items by summed neighbour similarity (one stage); cold users: popularity."""

        def knn(rows: np.ndarray) -> np.ndarray:
            sims = np.asarray((self.data.matrix[rows] @ self.sim).todense())
            # Popularity, scaled far below any similarity, only orders items knn scores tie.
            return sims + 1e-6 * self.data.popularity

        return self.data.top_k_warm(user_ids, k, exclude, knn)


def _prune_rows(sim: sp.csr_matrix, keep: int, chunk: int) -> sp.csr_matrix:
    """Keep the `keep` largest entries of each row of a sparse similarity matrix."""
    import scipy.sparse as sp

    n = sim.shape[0]
    if keep >= n - 1:
        return sim
    parts = []
    for start in range(0, n, chunk):
        dense = np.asarray(sim[start : start + chunk].todense())
        thresh = -np.partition(-dense, keep - 1, axis=1)[:, keep - 1 : keep]
        dense[dense < thresh] = 0.0
        parts.append(sp.csr_matrix(dense))
    return sp.vstack(parts).tocsr()


class ALSRecommender:
    """Implicit-feedback ALS (Hu, Koren & Volinsky 2008) from the `implicit` library, on CPU."""

    name = "als"

    def __init__(
        self,
        train: pd.DataFrame,
        item_ids: np.ndarray,
        # Chosen on a validation split inside the ML-100K train side (last 20% of it), not the test.
        factors: int = 32,
        regularization: float = 1.0,
        alpha: float = 5.0,
        iterations: int = 15,
        seed: int = 0,
    ) -> None:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        self.data = _TrainMatrix(train, item_ids)
        # implicit runs its own threads; a multi-threaded BLAS underneath only oversubscribes.
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=factors,
                regularization=regularization,
                alpha=alpha,
                iterations=iterations,
                random_state=seed,
                calculate_training_loss=False,
            )
            model.fit(self.data.matrix, show_progress=False)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)

    def recommend(
        self,
        user_ids: np.ndarray,
        k: int,
        stage: Stage = "full",
        exclude: dict[int, set[int]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items by user . item factor scores; cold users get popularity (one stage)."""
        return self.data.top_k_warm(
            user_ids, k, exclude, lambda rows: self.user_factors[rows] @ self.item_factors.T
        )
