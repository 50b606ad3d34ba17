"""Criteo preprocessing fitted in one streaming pass, saved as JSON, applied identically online.

Integers: missing -> fitted mean plus a missing flag; `log1p(max(x, 0))`, clipped at a fitted upper
quantile (from a fixed log-space histogram, so fitting is one pass in bounded memory), then
standardised. Categoricals: values seen at least `min_count` times get an index (most frequent
first, at most `max_vocab`); everything else shares the out-of-vocabulary bucket, so an unseen
value is never an error. Columns with more than `hash_threshold` distinct values switch to hashing.
Index 0 is OOV, 1 is "missing", vocabulary (or hash buckets) start at 2.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from strata.atomic import atomic_write_text
from strata.config import CtrPreprocessConfig
from strata.errors import DataError, ValidationError

if TYPE_CHECKING:
    from strata.training.distributed import Dist

INT_COLUMNS: tuple[str, ...] = tuple(f"I{i}" for i in range(1, 14))
CAT_COLUMNS: tuple[str, ...] = tuple(f"C{i}" for i in range(1, 27))
LABEL = "label"
OOV = 0
MISSING = 1
_RESERVED = 2
# log1p of the largest int64 is ~44; 1024 bins over [0, 48) resolve clip quantiles to ~0.05.
_HIST_BINS = 1024
_HIST_MAX = 48.0
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class CtrBatch:
    """Model-ready arrays: dense (B, 2*13) float32, cats (B, 26) int64, labels (B,) or None."""

    dense: np.ndarray
    cats: np.ndarray
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.dense.shape[0])

    def take(self, idx: np.ndarray | slice) -> CtrBatch:
        """Rows `idx` of every array."""
        labels = None if self.labels is None else self.labels[idx]
        return CtrBatch(self.dense[idx], self.cats[idx], labels)

    @staticmethod
    def concat(batches: Sequence[CtrBatch]) -> CtrBatch:
        """Stack batches row-wise; labels are kept only if every batch has them."""
        if not batches:
            raise ValueError("concat of no batches")
        has_labels = all(b.labels is not None for b in batches)
        return CtrBatch(
            np.concatenate([b.dense for b in batches]),
            np.concatenate([b.cats for b in batches]),
            np.concatenate([b.labels for b in batches]) if has_labels else None,
        )

    def to_npz(self, path: Path) -> None:
        """Write the arrays atomically as an uncompressed .npz (no pickle)."""
        arrays: dict[str, np.ndarray] = {"dense": self.dense, "cats": self.cats}
        if self.labels is not None:
            arrays["labels"] = self.labels
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)  # type: ignore[arg-type]
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @staticmethod
    def from_npz(path: Path) -> CtrBatch:
        """Read arrays written by `to_npz`."""
        if not path.exists():
            raise DataError(path, "no such file")
        with np.load(path, allow_pickle=False) as z:
            labels = z["labels"] if "labels" in z.files else None
            return CtrBatch(z["dense"], z["cats"], labels)


def _int_values(df: pd.DataFrame, col: str) -> np.ndarray:
    """Column `col` as float64 with NaN for missing; non-numeric values are a DataError."""
    if col not in df.columns:
        return np.full(len(df), np.nan)
    s = df[col]
    if s.dtype == object or pd.api.types.is_string_dtype(s.dtype):
        s = s.replace("", np.nan)
        out = pd.to_numeric(s, errors="coerce")
        bad = out.isna() & s.notna()
        if bad.any():
            first = s[bad].iloc[0]
            raise ValidationError(col, f"not a number: {first!r}")
        s = out
    return s.to_numpy(dtype=np.float64, na_value=np.nan)


_SMALL_BATCH = 16  # below this, hash lookups per value beat pandas' vectorised get_indexer


def _vocab_positions(index: pd.Index, strs: np.ndarray) -> np.ndarray:
    """Positions of `strs` in a unique vocabulary index (-1 when absent).

    `get_indexer` has a fixed cost of ~50 us per call, paid 26 times per request; for the
    serving path's tiny batches (often one row) direct hash lookups are several times faster.
    """
    if len(strs) > _SMALL_BATCH:
        return np.asarray(index.get_indexer(strs), dtype=np.int64)
    out = np.full(len(strs), -1, dtype=np.int64)
    for i, value in enumerate(strs):
        if value in index:
            out[i] = index.get_loc(value)
    return out


def _cat_values(df: pd.DataFrame, col: str) -> tuple[np.ndarray, np.ndarray]:
    """Column `col` as (object array of strings, missing mask); "" and nulls are missing."""
    if col not in df.columns:
        n = len(df)
        return np.full(n, "", dtype=object), np.ones(n, dtype=bool)
    s = df[col]
    missing = s.isna().to_numpy()
    if s.dtype != object and not pd.api.types.is_string_dtype(s.dtype):
        # Numeric categoricals (e.g. ids parsed as ints) are compared as their decimal string.
        strs = s.astype("string").to_numpy(dtype=object, na_value="")
    else:
        strs = s.to_numpy(dtype=object, na_value="")
        strs = np.where(missing, "", strs).astype(object)
    missing = missing | (strs == "")
    return strs, missing


def _stable_hash(values: np.ndarray) -> np.ndarray:
    """Stable 64-bit hash of strings (pandas' fixed-key SipHash; identical across processes)."""
    return pd.util.hash_array(values.astype(object), categorize=False)


class CtrPreprocessor:
    """Fitted Criteo preprocessing; `transform` is vectorised and identical offline and online."""

    def __init__(
        self,
        int_stats: Mapping[str, Mapping[str, float]],
        cat_specs: Mapping[str, Mapping[str, Any]],
        rows_fitted: int,
    ) -> None:
        self.int_stats = {c: dict(int_stats[c]) for c in INT_COLUMNS}
        self.cat_specs = {c: dict(cat_specs[c]) for c in CAT_COLUMNS}
        self.rows_fitted = rows_fitted
        self._index: dict[str, pd.Index] = {
            c: pd.Index(spec["vocab"], dtype=object)
            for c, spec in self.cat_specs.items()
            if spec["mode"] == "vocab"
        }

    @property
    def n_dense(self) -> int:
        """Width of the dense block: one value and one missing flag per integer column."""
        return 2 * len(INT_COLUMNS)

    @property
    def cardinalities(self) -> list[int]:
        """Embedding rows per categorical column (OOV and missing included)."""
        out = []
        for c in CAT_COLUMNS:
            spec = self.cat_specs[c]
            size = len(spec["vocab"]) if spec["mode"] == "vocab" else int(spec["buckets"])
            out.append(size + _RESERVED)
        return out

    def transform(self, df: pd.DataFrame, require_label: bool = False) -> CtrBatch:
        """Raw Criteo rows (label?, I1..I13, C1..C26) -> a `CtrBatch`; unseen values -> OOV."""
        labels = None
        if LABEL in df.columns:
            y = pd.to_numeric(df[LABEL], errors="coerce").to_numpy(
                dtype=np.float64, na_value=np.nan
            )
            if np.isnan(y).any() or not np.isin(y, (0.0, 1.0)).all():
                raise ValidationError(LABEL, "labels must be 0 or 1")
            labels = y.astype(np.float32)
        elif require_label:
            raise ValidationError(LABEL, "column is missing")
        return self._encode(
            len(df),
            {c: _int_values(df, c) for c in INT_COLUMNS},
            {c: _cat_values(df, c) for c in CAT_COLUMNS},
            labels,
        )

    def transform_records(self, rows: Sequence[Mapping[str, Any]]) -> CtrBatch:
        """JSON rows (dicts keyed I1..I13, C1..C26, optional label) -> a `CtrBatch`, the same
        encoding as `transform` without building a DataFrame (the online path: a pandas frame
        of one row cost more than the model)."""
        parsed = parse_records(rows)
        return self._encode(len(rows), parsed.ints, parsed.cats, parsed.labels)

    def _encode(
        self,
        n: int,
        ints: Mapping[str, np.ndarray],
        cats_in: Mapping[str, tuple[np.ndarray, np.ndarray]],
        labels: np.ndarray | None,
    ) -> CtrBatch:
        """Dense (normalised values + missing flags) and categorical ids from raw columns:
        `ints[c]` float64 with NaN for missing, `cats_in[c]` = (strings, missing mask)."""
        dense = np.zeros((n, self.n_dense), dtype=np.float32)
        k = len(INT_COLUMNS)
        for j, col in enumerate(INT_COLUMNS):
            st = self.int_stats[col]
            x = ints[col]
            miss = np.isnan(x)
            v = np.log1p(np.clip(np.nan_to_num(x, nan=0.0), 0.0, None))
            z = (np.minimum(v, st["clip"]) - st["mean"]) / st["std"]
            dense[:, j] = np.where(miss, 0.0, z)
            dense[:, k + j] = miss
        cats = np.empty((n, len(CAT_COLUMNS)), dtype=np.int64)
        for j, col in enumerate(CAT_COLUMNS):
            strs, miss = cats_in[col]
            spec = self.cat_specs[col]
            if spec["mode"] == "vocab":
                pos = _vocab_positions(self._index[col], strs)
                idx = np.where(pos < 0, OOV, pos + _RESERVED)
            else:
                idx = (_stable_hash(strs) % np.uint64(spec["buckets"])).astype(np.int64) + _RESERVED
            cats[:, j] = np.where(miss, MISSING, idx)
        return CtrBatch(dense, cats, labels)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description of every fitted statistic."""
        return {
            "format_version": _FORMAT_VERSION,
            "rows_fitted": self.rows_fitted,
            "int_stats": self.int_stats,
            "cat_specs": self.cat_specs,
        }

    def save(self, path: Path) -> None:
        """Write the fitted statistics as JSON (atomically)."""
        atomic_write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CtrPreprocessor:
        """Inverse of `to_dict`."""
        if d.get("format_version") != _FORMAT_VERSION:
            raise ValidationError("format_version", f"unsupported: {d.get('format_version')!r}")
        return cls(d["int_stats"], d["cat_specs"], int(d["rows_fitted"]))

    @classmethod
    def load(cls, path: Path) -> CtrPreprocessor:
        """Read statistics written by `save`."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise DataError(path, "no such file") from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(path, f"not a CTR preprocessor file ({exc})") from None


_KNOWN_KEYS = frozenset((LABEL, *INT_COLUMNS, *CAT_COLUMNS))


@dataclass(frozen=True)
class ParsedRecords:
    """JSON rows as raw columns: integers float64 (NaN = missing), categoricals as (strings,
    missing mask), labels float32 or None."""

    ints: dict[str, np.ndarray]
    cats: dict[str, tuple[np.ndarray, np.ndarray]]
    labels: np.ndarray | None


def _number_text(v: str) -> bool:
    """False for text that `float` reads but the offline path (`pd.to_numeric`) does not: NaN
    spelled out, `1_000`, non-ASCII digits or spaces; online and offline must agree."""
    return v.isascii() and "_" not in v and "nan" not in v.lower()


def parse_records(rows: Sequence[Mapping[str, Any]]) -> ParsedRecords:
    """Validate JSON rows into raw columns; unknown keys and non-numeric integers are errors
    naming the field (`rows[3].I5`)."""
    if not isinstance(rows, Sequence) or isinstance(rows, str | bytes):
        raise ValidationError("rows", "expected a list of objects")
    ints = {c: np.full(len(rows), np.nan) for c in INT_COLUMNS}
    cats: dict[str, list[str]] = {c: [""] * len(rows) for c in CAT_COLUMNS}
    labels: list[float] = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValidationError(f"rows[{i}]", "expected an object")
        unknown = set(row) - _KNOWN_KEYS
        if unknown:
            raise ValidationError(f"rows[{i}].{sorted(unknown)[0]}", "unknown field")
        for c in INT_COLUMNS:
            v = row.get(c)
            if v is None or v == "":
                continue
            if isinstance(v, bool) or (isinstance(v, str) and not _number_text(v)):
                raise ValidationError(f"rows[{i}].{c}", f"not a number: {v!r}")
            try:
                ints[c][i] = float(v)
            except (TypeError, ValueError):
                raise ValidationError(f"rows[{i}].{c}", f"not a number: {v!r}") from None
            except OverflowError:  # an integer beyond float64
                raise ValidationError(f"rows[{i}].{c}", "number out of range") from None
        for c in CAT_COLUMNS:
            v = row.get(c)
            if v is None:
                continue
            if not isinstance(v, str | int):
                raise ValidationError(f"rows[{i}].{c}", f"expected a string, got {v!r}")
            cats[c][i] = str(v)
        if LABEL in row:
            lab = row[LABEL]
            if lab not in (0, 1) or (isinstance(lab, float) and lab not in (0.0, 1.0)):
                raise ValidationError(f"rows[{i}].{LABEL}", "labels must be 0 or 1")
            labels.append(float(lab))
    if labels and len(labels) != len(rows):
        raise ValidationError(LABEL, "present on some rows but not all")
    cat_cols = {}
    for c, values in cats.items():
        strs = np.asarray(values, dtype=object)
        cat_cols[c] = (strs, strs == "")
    return ParsedRecords(ints, cat_cols, np.asarray(labels, dtype=np.float32) if labels else None)


def records_to_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Validated JSON rows as a raw Criteo frame (label?, I1..I13, C1..C26)."""
    parsed = parse_records(rows)
    data: dict[str, Any] = {} if parsed.labels is None else {LABEL: parsed.labels}
    data.update(parsed.ints)
    data.update({c: strs for c, (strs, _) in parsed.cats.items()})
    return pd.DataFrame(data)


class PreprocessorFitter:
    """Accumulates statistics over streamed chunks in bounded memory; `finish` fits."""

    def __init__(self, config: CtrPreprocessConfig) -> None:
        self.config = config
        self.rows = 0
        self._hist = {c: np.zeros(_HIST_BINS, dtype=np.int64) for c in INT_COLUMNS}
        self._counts: dict[str, pd.Series | None] = {
            c: pd.Series(dtype=np.int64) for c in CAT_COLUMNS
        }

    def update(self, df: pd.DataFrame) -> None:
        """Add one chunk of raw rows to the statistics."""
        self.rows += len(df)
        for col in INT_COLUMNS:
            x = _int_values(df, col)
            x = x[~np.isnan(x)]
            v = np.log1p(np.clip(x, 0.0, None))
            b = np.minimum((v / _HIST_MAX * _HIST_BINS).astype(np.int64), _HIST_BINS - 1)
            self._hist[col] += np.bincount(b, minlength=_HIST_BINS)
        for col in CAT_COLUMNS:
            counts = self._counts[col]
            if counts is None:  # already switched to hashing
                continue
            strs, miss = _cat_values(df, col)
            vc = pd.Series(strs[~miss]).value_counts()
            counts = counts.add(vc, fill_value=0).astype(np.int64)
            # Beyond the threshold a per-value table is too big to keep: hash instead.
            self._counts[col] = None if len(counts) > self.config.hash_threshold else counts

    def merge(self, other: PreprocessorFitter) -> None:
        """Add another fitter's statistics (another rank's shard): the result is the fit of both
        shards' rows together."""
        self.rows += other.rows
        for col in INT_COLUMNS:
            self._hist[col] += other._hist[col]
        for col in CAT_COLUMNS:
            mine, theirs = self._counts[col], other._counts[col]
            if mine is None or theirs is None:
                self._counts[col] = None
                continue
            counts = mine.add(theirs, fill_value=0).astype(np.int64)
            self._counts[col] = None if len(counts) > self.config.hash_threshold else counts

    def finish(self) -> CtrPreprocessor:
        """Turn the accumulated counts into a `CtrPreprocessor`."""
        cfg = self.config
        width = _HIST_MAX / _HIST_BINS
        centers = (np.arange(_HIST_BINS) + 0.5) * width
        int_stats: dict[str, dict[str, float]] = {}
        for col in INT_COLUMNS:
            h = self._hist[col]
            total = int(h.sum())
            if total == 0:
                int_stats[col] = {"clip": 0.0, "mean": 0.0, "std": 1.0, "missing_rate": 1.0}
                continue
            cdf = np.cumsum(h) / total
            q_bin = int(np.searchsorted(cdf, cfg.clip_quantile))
            clip = float((q_bin + 1) * width)
            vals = np.minimum(centers, clip)
            mean = float((h * vals).sum() / total)
            std = float(np.sqrt(max((h * (vals - mean) ** 2).sum() / total, 0.0)))
            int_stats[col] = {
                "clip": clip,
                "mean": mean,
                "std": std if std > 1e-6 else 1.0,
                "missing_rate": 1.0 - total / max(self.rows, 1),
            }
        cat_specs: dict[str, dict[str, Any]] = {}
        for col in CAT_COLUMNS:
            counts = self._counts[col]
            if counts is None:
                cat_specs[col] = {"mode": "hash", "buckets": cfg.hash_buckets}
                continue
            kept = counts[counts >= cfg.min_count]
            # Most frequent first, ties by value, so refitting the same data is deterministic.
            order = sorted(kept.items(), key=lambda kv: (-int(kv[1]), str(kv[0])))[: cfg.max_vocab]
            cat_specs[col] = {"mode": "vocab", "vocab": [str(k) for k, _ in order]}
        return CtrPreprocessor(int_stats, cat_specs, self.rows)


def fit_preprocessor(
    chunks: Iterable[pd.DataFrame], config: CtrPreprocessConfig, dist: Dist | None = None
) -> CtrPreprocessor:
    """Fit preprocessing statistics over an iterable of raw chunks in one pass; in a data-parallel
    job (`dist`) each rank counts its own shard and the counts are merged, so every rank ends
    with the same preprocessor."""
    fitter = PreprocessorFitter(config)
    for df in chunks:
        fitter.update(df)
    if dist is not None and dist.world > 1:
        for r, other in enumerate(dist.gather_objects(fitter)):
            if r != dist.rank:
                fitter.merge(other)
    if fitter.rows == 0:
        raise DataError("<chunks>", "no rows to fit preprocessing on")
    return fitter.finish()
