"""Criteo-format training data for the CTR models: where the rows come from (a file, a folder of
day files, or the synthetic generator), the temporal train/validation/test split, and the
bounded-memory reservoir and block shuffling that stream rows through training."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from strata.config import Settings
from strata.ctr.preprocess import (
    LABEL,
    CtrBatch,
)
from strata.errors import DataError


class CtrSource:
    """Criteo rows in Parquet, read as row ranges in file order.

    A folder written by `strata.datasets.criteo.criteo_to_parquet` is read through its manifest
    and `iter_criteo_batches`; any other Parquet file or folder through a pyarrow dataset.
    """

    def __init__(self, path: Path) -> None:
        from strata.datasets.criteo import MANIFEST, read_manifest

        self.path = Path(path)
        if not self.path.exists():
            raise DataError(self.path, "no such file or folder")
        self._criteo = (self.path / MANIFEST).is_file()
        if self._criteo:
            self.rows = read_manifest(self.path).rows
            return
        import pyarrow.dataset as pads

        try:
            self._ds = pads.dataset(str(self.path), format="parquet")
            self.rows = int(self._ds.count_rows())
        except Exception as exc:  # pyarrow raises several types for unreadable input
            raise DataError(self.path, f"not readable as Parquet ({exc})") from None
        if LABEL not in self._ds.schema.names:
            raise DataError(self.path, "no 'label' column")
        if self.rows == 0:
            raise DataError(self.path, "no rows")

    def _frames(self, chunk_rows: int) -> Iterator[pd.DataFrame]:
        if self._criteo:
            from strata.datasets.criteo import iter_criteo_batches

            yield from iter_criteo_batches(self.path, chunk_rows)
        else:
            for rb in self._ds.to_batches(batch_size=chunk_rows):
                yield rb.to_pandas()

    def iter_range(self, start: int, stop: int, chunk_rows: int) -> Iterator[pd.DataFrame]:
        """Raw frames covering rows [start, stop) in file order, at most `chunk_rows` each."""
        offset = 0
        for df in self._frames(chunk_rows):
            n = len(df)
            lo, hi = max(start - offset, 0), min(stop - offset, n)
            offset += n
            if hi > lo:
                yield df.iloc[lo:hi]
            if offset >= stop:
                return

    def _units(self) -> list[tuple[str, int, int]]:
        """Every Parquet row group in file order: (file, row group index, rows), from footers."""
        import pyarrow.parquet as pq

        if self._criteo:
            files = [str(p) for p in sorted(self.path.glob("part-*.parquet"))]
        else:
            files = list(self._ds.files)
        out: list[tuple[str, int, int]] = []
        for f in files:
            md = pq.ParquetFile(f).metadata
            out += [(f, g, md.row_group(g).num_rows) for g in range(md.num_row_groups)]
        return out

    def shard(
        self, start: int, stop: int, rank: int, world: int
    ) -> list[tuple[str, int, int, int]]:
        """The pieces (file, row group, first row, end row within it) of rows [start, stop) that
        `rank` of `world` reads. Row groups go round-robin over the ranks, so a rank opens only
        its own; with fewer row groups than ranks each is cut into `world` equal slices."""
        pieces: list[tuple[str, int, int, int]] = []
        offset = 0
        for f, g, n in self._units():
            lo, hi = max(start - offset, 0), min(stop - offset, n)
            if hi > lo:
                pieces.append((f, g, lo, hi))
            offset += n
            if offset >= stop:
                break
        if len(pieces) >= world:
            return pieces[rank::world]
        out = []
        for f, g, lo, hi in pieces:
            cut = np.linspace(lo, hi, world + 1).astype(np.int64)
            if cut[rank + 1] > cut[rank]:
                out.append((f, g, int(cut[rank]), int(cut[rank + 1])))
        return out

    def iter_shard(
        self, start: int, stop: int, chunk_rows: int, rank: int, world: int
    ) -> Iterator[pd.DataFrame]:
        """Raw frames of this rank's share of rows [start, stop) (see `shard`), at most
        `chunk_rows` each; rank 0 of 1 reads the same rows as `iter_range`."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from strata.datasets.criteo import CRITEO_COLUMNS

        cols = list(CRITEO_COLUMNS) if self._criteo else None
        mapper = {pa.int64(): pd.Int64Dtype()}.get if self._criteo else None
        for f, g, lo, hi in self.shard(start, stop, rank, world):
            offset = 0
            for rb in pq.ParquetFile(f).iter_batches(
                batch_size=chunk_rows, row_groups=[g], columns=cols
            ):
                a, b = max(lo - offset, 0), min(hi - offset, rb.num_rows)
                offset += rb.num_rows
                if b > a:
                    yield rb.slice(a, b - a).to_pandas(types_mapper=mapper)
                if offset >= hi:
                    break

    def shard_rows(self, start: int, stop: int, rank: int, world: int) -> int:
        """How many rows `iter_shard` yields for `rank` (from the footers, nothing read)."""
        return sum(hi - lo for _, _, lo, hi in self.shard(start, stop, rank, world))


def resolve_source(data: Path, settings: Settings) -> CtrSource:
    """A Parquet path as is; a Criteo TSV is converted once (streaming) into the cache."""
    from strata.datasets.criteo import MANIFEST, criteo_to_parquet

    data = Path(data)
    if data.is_file() and data.name.endswith(_TSV_SUFFIXES):
        st = data.stat()
        key = hashlib.sha1(f"{data.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
        out = settings.home / "ctr" / "parquet" / f"{data.name}-{key[:12]}"
        if not (out / MANIFEST).is_file():
            criteo_to_parquet(data, out, overwrite=True)
        return CtrSource(out)
    return CtrSource(data)


@dataclass(frozen=True)
class Split:
    """Row ranges of the temporal train / valid / test split."""

    train: tuple[int, int]
    valid: tuple[int, int]
    test: tuple[int, int]


MAX_EVAL_ROWS = 200_000  # validation rows kept in memory for early stopping


def valid_frame(source: CtrSource, split: Split, chunk_rows: int) -> pd.DataFrame:
    """The validation rows early stopping scores: the first `MAX_EVAL_ROWS` of the split's."""
    v0, v1 = split.valid
    return pd.concat(list(source.iter_range(v0, min(v1, v0 + MAX_EVAL_ROWS), chunk_rows)))


def temporal_split(n: int, valid_fraction: float, test_fraction: float) -> Split:
    """First rows train, then validation, then test (all non-empty)."""
    n_test = max(1, round(n * test_fraction))
    n_valid = max(1, round(n * valid_fraction))
    n_train = n - n_test - n_valid
    if n_train < 1:
        raise DataError("<data>", f"{n} rows are too few to split")
    return Split((0, n_train), (n_train, n_train + n_valid), (n_train + n_valid, n))


class Reservoir:
    """A uniform sample of at most `k` rows of a stream (bottom-k random keys), vectorised."""

    def __init__(self, k: int, seed: int) -> None:
        self.k = k
        self._rng = np.random.default_rng(seed)
        self._keys = np.empty(0)
        self._batch: CtrBatch | None = None

    def add(self, batch: CtrBatch) -> None:
        """Offer the rows of `batch`."""
        if self.k == 0 or len(batch) == 0:
            return
        keys = self._rng.random(len(batch))
        if self._batch is None:
            merged, all_keys = batch, keys
        else:
            merged = CtrBatch.concat([self._batch, batch])
            all_keys = np.concatenate([self._keys, keys])
        if len(all_keys) > self.k:
            keep = np.argpartition(all_keys, self.k)[: self.k]
            merged, all_keys = merged.take(keep), all_keys[keep]
        self._batch, self._keys = merged, all_keys

    def sample(self) -> CtrBatch | None:
        """The rows kept so far."""
        return self._batch


def _block_shuffled(
    batches: Iterable[CtrBatch], buffer_rows: int, batch_size: int, rng: np.random.Generator
) -> Iterator[CtrBatch]:
    """Minibatches from a stream through a shuffle buffer of `buffer_rows` rows."""
    pending: list[CtrBatch] = []
    held = 0

    def drain(final: bool) -> Iterator[CtrBatch]:
        nonlocal pending, held
        if not pending:
            return
        big = CtrBatch.concat(pending).take(rng.permutation(held))
        full = held if final else held - held % batch_size
        for s in range(0, full, batch_size):
            yield big.take(slice(s, min(s + batch_size, full)))
        pending = [big.take(slice(full, held))] if full < held else []
        held -= full

    for b in batches:
        pending.append(b)
        held += len(b)
        if held >= buffer_rows:
            yield from drain(final=False)
    yield from drain(final=True)


_TSV_SUFFIXES = (".tsv", ".txt", ".gz")
