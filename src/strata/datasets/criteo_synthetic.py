"""Synthetic Criteo-format click logs with known truth.

`criteo_like` draws Criteo-format rows (label, I1..I13, C1..C26) from a hidden logistic teacher over
hashed per-field weights plus pairwise field interactions; `drift=True` swaps in a changed teacher.
`p_true` is returned, so the best achievable AUC/logloss on any sample is known.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from strata.errors import ConfigError, DataError

if TYPE_CHECKING:
    import pandas as pd


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


TEACHER_SEED = 20_240_601
_N_INT, _N_CAT = 13, 26
_INTERACTIONS = ((0, 1), (2, 5), (3, 8), (4, 13), (6, 20), (9, 16), (11, 25))
_PAIR_BUCKETS = 4096
_MASK32 = np.uint64(0xFFFFFFFF)


@dataclass(frozen=True, eq=False)
class CriteoTeacher:
    """The hidden logistic model behind `criteo_like`: per-field value weights, integer-feature
    slopes, hashed pairwise interactions and a bias calibrated to a ~22% click rate."""

    vocab: np.ndarray  # (26,) values per categorical field
    cat_missing: np.ndarray  # (26,) missing rate
    mult: np.ndarray  # (26,) odd 32-bit multipliers: token = (mult * idx + add) mod 2**32
    add: np.ndarray  # (26,)
    cat_weights: tuple[np.ndarray, ...]  # 26 arrays (vocab_j,)
    int_mu: np.ndarray  # (13,) log-normal location of each integer feature
    int_sigma: np.ndarray  # (13,)
    int_missing: np.ndarray  # (13,)
    int_weights: np.ndarray  # (13,) slope on the standardised log1p value
    int_missing_weights: np.ndarray  # (13,) contribution when the value is missing
    pair_weights: np.ndarray  # (len(_INTERACTIONS), _PAIR_BUCKETS)
    bias: float

    def logits(self, ints: np.ndarray, cats: np.ndarray) -> np.ndarray:
        """Teacher log-odds for integer features (N, 13; NaN = missing) and categorical value
        indices (N, 26; -1 = missing or unknown)."""
        n = len(ints)
        out = np.full(n, self.bias)
        for j in range(_N_CAT):
            present = cats[:, j] >= 0
            out[present] += self.cat_weights[j][cats[present, j]]
        z = (np.log1p(np.clip(ints, 0, None)) - self.int_mu) / (self.int_sigma + 1e-9)
        missing = np.isnan(ints)
        out += np.where(missing, self.int_missing_weights, self.int_weights * np.nan_to_num(z)).sum(
            1
        )
        for p, (a, b) in enumerate(_INTERACTIONS):
            both = (cats[:, a] >= 0) & (cats[:, b] >= 0)
            h = _pair_hash(cats[both, a], cats[both, b])
            out[both] += self.pair_weights[p, h]
        return out

    def tokens(self, j: int, idx: np.ndarray) -> np.ndarray:
        """32-bit hash tokens of field `j` for value indices `idx` (a bijection, see `mult`)."""
        return (idx.astype(np.uint64) * self.mult[j] + self.add[j]) & _MASK32

    def indices(self, j: int, tokens: np.ndarray) -> np.ndarray:
        """Invert `tokens`: value indices of field `j`, -1 where the token is not in its vocab."""
        inv = np.uint64(pow(int(self.mult[j]), -1, 1 << 32))
        idx = ((tokens.astype(np.uint64) - self.add[j]) & _MASK32) * inv & _MASK32
        idx = idx.astype(np.int64)
        return np.where(idx < self.vocab[j], idx, -1)


def _pair_hash(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    h = (a.astype(np.uint64) * np.uint64(0x9E3779B1)) ^ (
        b.astype(np.uint64) * np.uint64(0x85EBCA77)
    )
    return ((h >> np.uint64(7)) % np.uint64(_PAIR_BUCKETS)).astype(np.int64)


@functools.lru_cache(maxsize=2)  # deterministic, so memoising is safe (no mutable state)
def criteo_teacher(drift: bool = False) -> CriteoTeacher:
    """The fixed teacher (before or after drift); same on every call and in every process."""
    rng = np.random.default_rng(TEACHER_SEED)
    vocab = np.round(np.exp(rng.uniform(np.log(4), np.log(20_000), _N_CAT))).astype(np.int64)
    cat_missing = np.where(rng.random(_N_CAT) < 0.3, rng.uniform(0.05, 0.45, _N_CAT), 0.0)
    mult = rng.integers(1, 1 << 31, _N_CAT, dtype=np.int64).astype(np.uint64) * 2 + 1
    mult &= _MASK32
    add = rng.integers(0, 1 << 32, _N_CAT, dtype=np.int64).astype(np.uint64)
    # A few fields carry most of the signal, as in real logs; the rest are weak or pure noise.
    scale = rng.choice([0.0, 0.1, 0.25, 0.5], _N_CAT, p=[0.25, 0.35, 0.25, 0.15])
    cat_w = [rng.normal(0, s, v) for s, v in zip(scale, vocab, strict=True)]
    int_mu = rng.uniform(0.5, 4.0, _N_INT)
    int_sigma = rng.uniform(0.5, 1.5, _N_INT)
    int_missing = rng.uniform(0.0, 0.45, _N_INT)
    int_w = rng.normal(0, 0.3, _N_INT)
    int_mw = rng.normal(0, 0.2, _N_INT)
    pair_w = rng.normal(0, 0.4, (len(_INTERACTIONS), _PAIR_BUCKETS))
    if drift:
        # Concept drift: the same traffic, a changed response. About half the fields and most
        # slopes are redrawn and the interactions mostly change; the inputs stay the same.
        drng = np.random.default_rng(TEACHER_SEED + 1)
        redraw = drng.random(_N_CAT) < 0.5
        new_scale = np.maximum(scale, 0.25)
        cat_w = [
            drng.normal(0, new_scale[j], vocab[j]) if redraw[j] else cat_w[j] for j in range(_N_CAT)
        ]
        int_w = np.where(drng.random(_N_INT) < 0.7, -int_w, int_w)
        pair_w = 0.3 * pair_w + drng.normal(0, 0.4, pair_w.shape)
    teacher = CriteoTeacher(
        vocab, cat_missing, mult, add, tuple(cat_w), int_mu, int_sigma, int_missing,
        int_w, int_mw, pair_w, 0.0,
    )  # fmt: skip
    # Calibrate the bias on a fixed draw so that the click rate is about 22% (Criteo's is ~25%).
    cal_ints, cal_cats = _draw_features(teacher, np.random.default_rng(TEACHER_SEED + 2), 20_000)
    raw = teacher.logits(cal_ints, cal_cats)
    lo, hi = -10.0, 10.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _sigmoid(raw + mid).mean() < 0.22 else (lo, mid)
    return replace(teacher, bias=(lo + hi) / 2)


def _draw_features(t: CriteoTeacher, rng: np.random.Generator, n: int):
    """Integer features (N, 13) with NaN for missing, categorical indices (N, 26) with -1."""
    ints = np.floor(np.expm1(rng.normal(t.int_mu, t.int_sigma, (n, _N_INT))).clip(0, None))
    ints[rng.random((n, _N_INT)) < t.int_missing] = np.nan
    # Power-law value frequencies: u**3 piles the mass onto low indices.
    cats = np.floor(rng.random((n, _N_CAT)) ** 3 * t.vocab).astype(np.int64)
    cats[rng.random((n, _N_CAT)) < t.cat_missing] = -1
    return ints, cats


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_SHIFTS = np.arange(28, -1, -4, dtype=np.uint64)


def _hex8(tokens: np.ndarray) -> np.ndarray:
    """Vectorised `f"{t:08x}"` for an array of 32-bit tokens."""
    nibbles = (tokens[:, None] >> _SHIFTS) & np.uint64(0xF)
    return _HEX[nibbles.astype(np.int64)].view("S8").ravel().astype(str).astype(object)


def criteo_like(n_rows: int, seed: int = 0, drift: bool = False) -> pd.DataFrame:
    """Criteo-format rows (label, I1..I13, C1..C26) plus `p_true`, the teacher's click probability.

    The traffic (feature distribution) is the same with or without drift; `drift=True` draws the
    labels from the changed teacher. Rows are reproducible from (`n_rows`, `seed`, `drift`).
    """
    import pandas as pd

    from strata.datasets.criteo import CAT_COLUMNS, INT_COLUMNS

    if n_rows < 1:
        raise ConfigError(f"n_rows must be >= 1, got {n_rows}")
    t = criteo_teacher(drift)
    rng = np.random.default_rng([seed, 7])
    ints, cats = _draw_features(t, rng, n_rows)
    p = _sigmoid(t.logits(ints, cats))
    label = (rng.random(n_rows) < p).astype(np.int8)
    cols: dict[str, object] = {"label": label}
    for k, name in enumerate(INT_COLUMNS):
        cols[name] = pd.array(np.where(np.isnan(ints[:, k]), None, ints[:, k]), dtype="Int64")
    for j, name in enumerate(CAT_COLUMNS):
        present = cats[:, j] >= 0
        col = np.full(n_rows, None, dtype=object)
        col[present] = _hex8(t.tokens(j, cats[present, j]))
        cols[name] = pd.array(col, dtype="str")
    cols["p_true"] = p
    return pd.DataFrame(cols)


def criteo_teacher_proba(df: pd.DataFrame, drift: bool = False) -> np.ndarray:
    """Click probability of the (pre- or post-drift) teacher for raw Criteo rows, e.g. to score
    drifted data with the old teacher. Unknown hashes contribute nothing."""
    import pandas as pd

    from strata.datasets.criteo import CAT_COLUMNS, INT_COLUMNS

    t = criteo_teacher(drift)
    ints = np.column_stack(
        [pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
         for c in INT_COLUMNS]
    )  # fmt: skip
    cats = np.full((len(df), _N_CAT), -1, dtype=np.int64)
    for j, c in enumerate(CAT_COLUMNS):
        s = df[c]
        present = s.notna().to_numpy()
        toks = np.array([int(v, 16) for v in s[present]], dtype=np.uint64)
        cats[present, j] = t.indices(j, toks)
    return _sigmoid(t.logits(ints, cats))


def write_criteo_tsv(frames: pd.DataFrame | Iterable[pd.DataFrame], path: Path) -> int:
    """Write rows in the raw Criteo format (tab-separated, no header, empty = missing) atomically;
    accepts one DataFrame or an iterable of chunks; extra columns such as `p_true` are dropped.
    Returns the number of rows written."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from strata.datasets.criteo import CRITEO_COLUMNS, criteo_schema

    path = Path(path)
    chunks = [frames] if isinstance(frames, pd.DataFrame) else frames
    schema = criteo_schema()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    rows = 0
    try:
        opts = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
        with pacsv.CSVWriter(str(tmp), schema, write_options=opts) as writer:
            for df in chunks:
                missing = [c for c in CRITEO_COLUMNS if c not in df.columns]
                if missing:
                    raise DataError(path, f"frame lacks Criteo columns {missing}")
                table = pa.Table.from_pandas(
                    df[list(CRITEO_COLUMNS)], schema=schema, preserve_index=False
                )
                writer.write_table(table)
                rows += len(df)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return rows
