"""Hashed logistic regression: the baseline the CTR ranker must beat on the same rows.

Every field becomes one token (the categorical's string, integers as their `floor(log(x)^2)`
bucket, the bucketing of the Criteo competition winners), hashed with its field into 2**n_bits
weights; a logistic regression over the summed weights, trained with Adam + L2 and early stopping
on a validation split.

It has to stay cheap next to the DCN (it is fitted on every `strata ctr train`): a field's
distinct values are hashed once per chunk (SipHash of the string, then splitmix64 with the field)
instead of one Python string per token; Adam updates only the weights a batch touches (lazy Adam,
not a dense step over all 2**n_bits); the validation rows are hashed once, and the training rows
once while they fit in memory. A few us per row and epoch instead of ~90-300 (docs/ctr.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from strata.ctr.preprocess import CAT_COLUMNS, INT_COLUMNS, LABEL, _int_values

if TYPE_CHECKING:
    from strata.ctr.data import CtrSource, Split

_MISSING_INT = -999  # the integer bucket of a missing value
_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 (wrapping): a bijective avalanche of the bits."""
    x = x ^ (x >> np.uint64(30))
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _field_salts(n: int) -> np.ndarray:
    """(n,) uint64: one random-looking salt per field, so equal values in two fields differ."""
    return _mix64(np.arange(1, n + 1, dtype=np.uint64) * np.uint64(_GOLDEN))


def _int_buckets(df: pd.DataFrame) -> np.ndarray:
    """(B, 13) int64: small integers keep their own token, larger ones floor(log(x)^2)."""
    out = np.empty((len(df), len(INT_COLUMNS)), dtype=np.int64)
    for j, col in enumerate(INT_COLUMNS):
        x = _int_values(df, col)
        missing = np.isnan(x)
        v = np.where(missing, -1e9, x)
        big = v > 2
        bucket = np.where(big, np.floor(np.log(np.where(big, v, 3.0)) ** 2), v)
        out[:, j] = np.where(missing, _MISSING_INT, bucket)
    return out


def _cat_codes(df: pd.DataFrame, col: str) -> tuple[np.ndarray, np.ndarray]:
    """(codes, SipHash of each distinct value's string); code -1 and "" are missing (hash 0)."""
    if col not in df.columns:
        return np.full(len(df), -1, dtype=np.intp), np.zeros(0, dtype=np.uint64)
    codes, uniques = pd.factorize(df[col])
    if not pd.api.types.is_string_dtype(uniques.dtype):
        # Numeric categoricals (ids parsed as ints) are tokens by their decimal string.
        uniques = uniques.astype("string")
    values = np.asarray(uniques, dtype=object)
    hashes = pd.util.hash_array(values, categorize=False)
    hashes[values == ""] = 0
    return codes, hashes


def hash_features(df: pd.DataFrame, n_bits: int) -> np.ndarray:
    """Raw Criteo rows -> (B, 39) int32 token ids in [0, 2**n_bits), deterministic across runs
    and processes. A categorical's distinct values are hashed once per call (not per row)."""
    if not 1 <= n_bits <= 31:
        raise ValueError(f"n_bits must be in [1, 31], got {n_bits}")
    mask = np.uint64((1 << n_bits) - 1)
    n_int = len(INT_COLUMNS)
    salts = _field_salts(n_int + len(CAT_COLUMNS))
    out = np.empty((len(df), n_int + len(CAT_COLUMNS)), dtype=np.int32)
    # Integer fields: few distinct buckets, mixed elementwise in one vectorised pass.
    out[:, :n_int] = _mix64(_int_buckets(df).view(np.uint64) ^ salts[:n_int]) & mask
    for j, col in enumerate(CAT_COLUMNS, start=n_int):
        codes, hashes = _cat_codes(df, col)
        # The last table entry is the missing token, which code -1 picks.
        table = (_mix64(np.append(hashes, np.uint64(0)) ^ salts[j]) & mask).astype(np.int32)
        out[:, j] = table[codes]
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


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))


class HashedLR:
    """A fitted hashed logistic regression (weights per hash bucket plus a bias)."""

    def __init__(self, n_bits: int, weights: np.ndarray, bias: float) -> None:
        self.n_bits = n_bits
        self.weights = weights
        self.bias = bias

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """Click probabilities for raw rows."""
        return self.predict_ids(hash_features(df, self.n_bits))

    def predict_ids(self, ids: np.ndarray) -> np.ndarray:
        """Click probabilities for token ids from `hash_features`."""
        z = self.weights[ids].sum(axis=1, dtype=np.float64) + self.bias
        return _sigmoid(z).astype(np.float32)


_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults


class _LazyAdamFit:
    """One model's state: weights, Adam moments and early stopping. A step touches only the
    weights its batch's tokens hit (their summed gradient, then Adam on those rows), so a
    256-row batch costs ~10k updates instead of 2**n_bits; the bias gets a plain Adam step."""

    def __init__(self, cfg: HashedLRConfig) -> None:
        size = 1 << cfg.n_bits
        self.cfg = cfg
        self.w, self.m, self.v = np.zeros(size), np.zeros(size), np.zeros(size)
        self.grad = np.zeros(size)  # scratch: zero outside a step
        self.b = self.mb = self.vb = 0.0
        self.t = 0
        self.best_auc, self.best = -1.0, HashedLR(cfg.n_bits, self.w.astype(np.float32), 0.0)
        self.bad, self.epochs_run, self.done = 0, 0, cfg.epochs < 1

    def step(self, ids: np.ndarray, y: np.ndarray) -> None:
        """One Adam step on the batch's mean log loss + l2 * mean squared weights of its rows."""
        n = len(y)
        flat = ids.ravel()
        wf = self.w[flat]
        err = (_sigmoid(wf.reshape(n, -1).sum(axis=1) + self.b) - y) / n  # dloss/dlogit
        np.add.at(self.grad, flat, np.repeat(err, ids.shape[1]) + (2.0 * self.cfg.l2 / n) * wf)
        g = self.grad[flat]  # each token's summed gradient (repeated per occurrence)
        self.grad[flat] = 0.0
        self.t += 1
        step = self.cfg.lr / (1.0 - _BETA1**self.t)
        root_c2 = np.sqrt(1.0 - _BETA2**self.t)
        m = self.m[flat] * _BETA1 + (1.0 - _BETA1) * g
        v = self.v[flat] * _BETA2 + (1.0 - _BETA2) * g * g
        self.m[flat], self.v[flat] = m, v  # duplicates write the same value
        self.w[flat] = wf - step * m / (np.sqrt(v) / root_c2 + _EPS)
        gb = float(err.sum())
        self.mb = self.mb * _BETA1 + (1.0 - _BETA1) * gb
        self.vb = self.vb * _BETA2 + (1.0 - _BETA2) * gb * gb
        self.b -= step * self.mb / (np.sqrt(self.vb) / root_c2 + _EPS)

    def end_epoch(self, ids_valid: np.ndarray, y_valid: np.ndarray) -> None:
        """Score the validation rows; keep the best model, stop after `patience` bad epochs."""
        from strata.training.metrics import auc

        self.epochs_run += 1
        model = HashedLR(self.cfg.n_bits, self.w.astype(np.float32), float(self.b))
        score = float(auc(y_valid, model.predict_ids(ids_valid)))
        if score > self.best_auc:
            self.best_auc, self.best, self.bad = score, model, 0
        else:
            self.bad += 1
        self.done = self.bad > self.cfg.patience or self.epochs_run >= self.cfg.epochs


_CACHE_TOKENS = 1 << 25  # int32 ids kept across epochs: 128 MB, ~860k training rows


class _HashedChunks:
    """The training chunks as (token ids, labels). The first pass hashes them and keeps them
    for the next epochs while they fit in `_CACHE_TOKENS`; larger data is re-read and re-hashed
    every epoch (bounded memory, as the DCN's training streams)."""

    def __init__(self, chunks: Callable[[], Iterable[pd.DataFrame]], n_bits: int) -> None:
        self.chunks, self.n_bits = chunks, n_bits
        self.cache: list[tuple[np.ndarray, np.ndarray]] | None = []
        self.complete = False

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self.complete and self.cache is not None:
            yield from self.cache
            return
        tokens = 0
        for df in self.chunks():
            item = hash_features(df, self.n_bits), df[LABEL].to_numpy(dtype=np.float64)
            tokens += item[0].size
            if self.cache is not None and tokens <= _CACHE_TOKENS:
                self.cache.append(item)
            else:
                self.cache = None
            yield item
        self.complete = True


def fit_hashed_lrs(
    train_chunks: Callable[[], Iterable[pd.DataFrame]],
    valid: pd.DataFrame,
    cfgs: Sequence[HashedLRConfig],
) -> list[tuple[HashedLR, float]]:
    """Fit several configs in one pass over the data (re-iterated per epoch), sharing the hashing
    and the shuffled batches; each early-stops on its own. They must agree on n_bits, seed and
    batch_size; each result equals fitting that config alone. Returns (best model, valid AUC)."""
    shared = {(c.n_bits, c.seed, c.batch_size) for c in cfgs}
    if len(shared) != 1:
        raise ValueError(f"configs fitted together must share n_bits, seed, batch_size: {shared}")
    ((n_bits, seed, batch_size),) = shared
    rng = np.random.default_rng(seed)
    # Hashed once, scored every epoch; intp ids index several times faster than int32.
    ids_valid = hash_features(valid, n_bits).astype(np.intp)
    y_valid = valid[LABEL].to_numpy(dtype=np.float64)
    chunks = _HashedChunks(train_chunks, n_bits)
    fits = [_LazyAdamFit(c) for c in cfgs]
    while live := [f for f in fits if not f.done]:
        for chunk_ids, chunk_y in chunks:
            perm = rng.permutation(len(chunk_y))
            ids, y = chunk_ids.astype(np.intp)[perm], chunk_y[perm]
            for s in range(0, len(y), batch_size):
                for f in live:
                    f.step(ids[s : s + batch_size], y[s : s + batch_size])
        for f in live:
            f.end_epoch(ids_valid, y_valid)
    return [(f.best, f.best_auc) for f in fits]


def fit_hashed_lr(
    train_chunks: Callable[[], Iterable[pd.DataFrame]],
    valid: pd.DataFrame,
    cfg: HashedLRConfig = HashedLRConfig(),
) -> tuple[HashedLR, float]:
    """Train on streamed chunks (re-iterated per epoch); returns the best model and valid AUC."""
    return fit_hashed_lrs(train_chunks, valid, [cfg])[0]


def evaluate_hashed_lr_baseline(
    source: CtrSource, split: Split, chunk_rows: int, seed: int = 0
) -> dict[str, Any]:
    """Train the hashed-LR baseline on the same train/valid rows; metrics on the same test rows.

    The learning rate is picked from a small grid by validation AUC, so the yardstick is tuned
    as fairly as the model it is compared with; `seed` sets its shuffling. The grid's models
    are fitted together in one pass over the rows.
    """
    from strata.ctr.data import valid_frame
    from strata.training.metrics import auc, logloss

    valid_df = valid_frame(source, split, chunk_rows)
    cfgs = [HashedLRConfig(lr=0.01, seed=seed), HashedLRConfig(lr=0.003, seed=seed)]
    fits = fit_hashed_lrs(lambda: source.iter_range(*split.train, chunk_rows), valid_df, cfgs)
    (lr, valid_auc), best_cfg = max(zip(fits, cfgs, strict=True), key=lambda f: f[0][1])
    ys, ps = [], []
    for df in source.iter_range(*split.test, chunk_rows):
        ys.append(df[LABEL].to_numpy(dtype=np.float32))
        ps.append(lr.predict(df))
    y, p = np.concatenate(ys), np.concatenate(ps)
    out: dict[str, Any] = {"auc": float(auc(y, p)), "logloss": float(logloss(y, p)), "rows": len(y)}
    out["valid_auc"] = valid_auc
    out["lr"] = best_cfg.lr
    return out
