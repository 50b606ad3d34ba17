"""Hashed logistic regression: the baseline the CTR ranker must beat on the same rows.

Every field becomes one token (`C3:68fd1e64`, integers as `I5:<floor(log(x)^2) bucket>`, the
bucketing of the Criteo competition winners), hashed into 2**n_bits weights; a logistic regression
over the summed weights, trained with Adam + L2 and early stopping on a validation split.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from strata.ctr.preprocess import CAT_COLUMNS, INT_COLUMNS, LABEL, _cat_values, _int_values

if TYPE_CHECKING:
    from strata.ctr.data import CtrSource, Split


def hash_features(df: pd.DataFrame, n_bits: int) -> np.ndarray:
    """Raw Criteo rows -> (B, 39) int64 token ids in [0, 2**n_bits)."""
    n = len(df)
    out = np.empty((n, len(INT_COLUMNS) + len(CAT_COLUMNS)), dtype=np.int64)
    mod = np.uint64(1 << n_bits)
    for j, col in enumerate(INT_COLUMNS):
        x = _int_values(df, col)
        v = np.nan_to_num(x, nan=-1e9)
        # Small values keep their own token; larger ones are bucketed by floor(log(x)^2).
        big = v > 2
        bucket = np.where(big, np.floor(np.log(np.where(big, v, 3.0)) ** 2), v)
        bucket = np.where(np.isnan(x), -999, bucket).astype(np.int64)
        tokens = pd.Series(bucket).astype(str).radd(f"{col}:").to_numpy(dtype=object)
        out[:, j] = (pd.util.hash_array(tokens, categorize=False) % mod).astype(np.int64)
    for j, col in enumerate(CAT_COLUMNS, start=len(INT_COLUMNS)):
        strs, _ = _cat_values(df, col)
        tokens = pd.Series(strs, dtype=object).radd(f"{col}:").to_numpy(dtype=object)
        out[:, j] = (pd.util.hash_array(tokens, categorize=False) % mod).astype(np.int64)
    return out


@dataclass(frozen=True)
class HashedLRConfig:
    """Baseline hyper-parameters (kept out of the product config: it only serves as a yardstick)."""

    n_bits: int = 18
    lr: float = 0.003
    l2: float = 1e-4
    epochs: int = 15
    batch_size: int = 256
    patience: int = 2
    seed: int = 0


class HashedLR:
    """A fitted hashed logistic regression (weights per hash bucket plus a bias)."""

    def __init__(self, n_bits: int, weights: np.ndarray, bias: float) -> None:
        self.n_bits = n_bits
        self.weights = weights
        self.bias = bias

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """Click probabilities for raw rows."""
        z = self.weights[hash_features(df, self.n_bits)].sum(axis=1) + self.bias
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def fit_hashed_lr(
    train_chunks: Callable[[], Iterable[pd.DataFrame]],
    valid: pd.DataFrame,
    cfg: HashedLRConfig = HashedLRConfig(),
) -> tuple[HashedLR, float]:
    """Train on streamed chunks (re-iterated per epoch); returns the best model and valid AUC."""
    import torch
    from torch import nn

    from strata.training.metrics import auc

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    w = nn.Embedding(1 << cfg.n_bits, 1)
    nn.init.zeros_(w.weight)
    b = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([*w.parameters(), b], lr=cfg.lr)
    y_valid = valid[LABEL].to_numpy(dtype=np.float32)
    best_auc, best_state, bad = -1.0, (w.weight.detach().clone(), b.detach().clone()), 0
    for _ in range(cfg.epochs):
        for df in train_chunks():
            ids = torch.from_numpy(hash_features(df, cfg.n_bits))
            y = torch.from_numpy(df[LABEL].to_numpy(dtype=np.float32))
            perm = torch.from_numpy(rng.permutation(len(df)))
            for s in range(0, len(df), cfg.batch_size):
                idx = perm[s : s + cfg.batch_size]
                rows = w(ids[idx]).squeeze(-1)  # (B, 39)
                logit = rows.sum(dim=1) + b
                loss = nn.functional.binary_cross_entropy_with_logits(logit, y[idx])
                loss = loss + cfg.l2 * (rows**2).sum(dim=1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        model = HashedLR(cfg.n_bits, w.weight.detach().numpy()[:, 0].copy(), float(b.item()))
        score = float(auc(y_valid, model.predict(valid)))
        if score > best_auc:
            best_auc, bad = score, 0
            best_state = copy.deepcopy((w.weight.detach().clone(), b.detach().clone()))
        else:
            bad += 1
            if bad > cfg.patience:
                break
    weights, bias = best_state
    return HashedLR(cfg.n_bits, weights.numpy()[:, 0].copy(), float(bias.item())), best_auc


def evaluate_hashed_lr_baseline(
    source: CtrSource, split: Split, chunk_rows: int, seed: int = 0
) -> dict[str, Any]:
    """Train the hashed-LR baseline on the same train/valid rows; metrics on the same test rows.

    The learning rate is picked from a small grid by validation AUC, so the yardstick is tuned
    as fairly as the model it is compared with; `seed` sets its init and shuffling.
    """
    from strata.ctr.data import valid_frame
    from strata.training.metrics import auc, logloss

    valid_df = valid_frame(source, split, chunk_rows)
    fits = [
        (fit_hashed_lr(lambda: source.iter_range(*split.train, chunk_rows), valid_df, cfg), cfg)
        for cfg in (HashedLRConfig(lr=0.01, seed=seed), HashedLRConfig(lr=0.003, seed=seed))
    ]
    (lr, valid_auc), best_cfg = max(fits, key=lambda f: f[0][1])
    ys, ps = [], []
    for df in source.iter_range(*split.test, chunk_rows):
        ys.append(df[LABEL].to_numpy(dtype=np.float32))
        ps.append(lr.predict(df))
    y, p = np.concatenate(ys), np.concatenate(ps)
    out: dict[str, Any] = {"auc": float(auc(y, p)), "logloss": float(logloss(y, p)), "rows": len(y)}
    out["valid_auc"] = valid_auc
    out["lr"] = best_cfg.lr
    return out
