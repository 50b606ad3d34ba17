"""Criteo Display Advertising logs: streaming TSV -> partitioned Parquet, and streaming back.

The raw format (Kaggle DAC and the 1TB click logs) is tab-separated without a header: `label`,
13 integer features `I1..I13` and 26 hashed categoricals `C1..C26` (8 hex digits), any feature
may be empty. A day file has ~45M rows (~11 GB), so it is read with Arrow's streaming CSV reader
block by block and written as one Parquet file per `chunk_rows` rows: memory is bounded by one
chunk plus one read block, whatever the file size. Files ending in `.gz`/`.bz2` are decompressed
on the fly.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from strata.errors import DataError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

log = logging.getLogger(__name__)

INT_COLUMNS = tuple(f"I{i}" for i in range(1, 14))
CAT_COLUMNS = tuple(f"C{i}" for i in range(1, 27))
CRITEO_COLUMNS = ("label", *INT_COLUMNS, *CAT_COLUMNS)
MANIFEST = "_criteo.json"
DEFAULT_CHUNK_ROWS = 1_000_000
# A Criteo row is ~230 bytes; the read block is sized to about one chunk but kept within limits
# so that tiny chunks stay tiny and huge chunks don't allocate huge blocks.
_ROW_BYTES = 256
_MIN_BLOCK, _MAX_BLOCK = 1 << 16, 1 << 26


def criteo_schema() -> pa.Schema:
    """The explicit Arrow schema: int8 label, nullable int64 integers, nullable string hashes."""
    import pyarrow as pa

    fields = [pa.field("label", pa.int8(), nullable=False)]
    fields += [pa.field(c, pa.int64()) for c in INT_COLUMNS]
    fields += [pa.field(c, pa.string()) for c in CAT_COLUMNS]
    return pa.schema(fields)


@dataclass(frozen=True)
class CriteoParquetInfo:
    """What `criteo_to_parquet` wrote: row and positive counts, part files, their folder."""

    source: str
    out_dir: str
    rows: int
    positives: int
    parts: int
    chunk_rows: int

    @property
    def ctr(self) -> float:
        """Fraction of rows with label 1."""
        return self.positives / self.rows if self.rows else 0.0


class _BadRow:
    """Remembers the first row with the wrong field count (Arrow only lets the handler say no)."""

    def __init__(self) -> None:
        self.row: tuple[int | None, int, str] | None = None

    def __call__(self, row) -> str:
        if self.row is None:
            self.row = (row.number, row.actual_columns, row.text)
        return "error"


def _open(src: Path, chunk_rows: int, bad: _BadRow):
    import pyarrow.csv as pacsv

    schema = criteo_schema()
    block = max(_MIN_BLOCK, min(_MAX_BLOCK, chunk_rows * _ROW_BYTES))
    return pacsv.open_csv(
        src,
        read_options=pacsv.ReadOptions(
            column_names=list(CRITEO_COLUMNS), block_size=block, use_threads=False
        ),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, invalid_row_handler=bad),
        convert_options=pacsv.ConvertOptions(
            column_types={f.name: f.type for f in schema},
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )


def _check_labels(batch, src: Path, first_line: int) -> int:
    import pyarrow.compute as pc

    label = batch.column(0)
    if label.null_count:
        idx = pc.index(pc.is_null(label), True).as_py()
        raise DataError(src, f"line {first_line + idx}: empty label")
    bad = pc.and_(pc.not_equal(label, 0), pc.not_equal(label, 1))
    if pc.any(bad).as_py():
        idx = pc.index(bad, True).as_py()
        raise DataError(src, f"line {first_line + idx}: label must be 0 or 1, got {label[idx]}")
    return int(pc.sum(label).as_py() or 0)


_CONVERSION = re.compile(r"column #(\d+).*invalid value '(.*)'")


def _locate(src: Path, done: int, msg: str) -> str:
    """Find the line of a conversion error by rescanning from the last good row (error path only:
    Arrow names the column and value but not the line)."""
    import io

    import pyarrow as pa

    m = _CONVERSION.search(msg)
    if m is None:
        return f"after line {done}"
    col, value = int(m.group(1)), m.group(2)
    with pa.input_stream(str(src), compression="detect") as raw:
        for number, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8", errors="replace"), 1):
            if number <= done:
                continue
            fields = line.rstrip("\r\n").split("\t")
            if col < len(fields) and fields[col] == value:
                return f"line {number}, field {CRITEO_COLUMNS[col]}"
    return f"after line {done}"


def criteo_to_parquet(
    src: Path,
    out_dir: Path,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    *,
    overwrite: bool = False,
    compression: str = "zstd",
) -> CriteoParquetInfo:
    """Stream a Criteo TSV into `out_dir/part-00000.parquet ...`, one part per `chunk_rows` rows.

    The parts are written into a staging folder that is renamed onto `out_dir` only when the
    whole file parsed, so a bad row (reported with its line number) leaves nothing behind.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from rich.progress import TaskID

    from strata.progress import task

    src, out_dir = Path(src), Path(out_dir)
    if chunk_rows < 1:
        raise DataError(src, f"chunk_rows must be >= 1, got {chunk_rows}")
    if not src.is_file():
        raise DataError(src, "Criteo file does not exist")
    if out_dir.exists() and not overwrite:
        raise DataError(out_dir, "output folder exists (pass overwrite=True / --overwrite)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    schema = criteo_schema()
    bad = _BadRow()
    rows = positives = parts = 0
    pending: list[pa.RecordBatch] = []
    pending_rows = 0

    def flush(batches: list[pa.RecordBatch]) -> None:
        nonlocal parts
        table = pa.Table.from_batches(batches, schema=schema)
        pq.write_table(table, tmp / f"part-{parts:05d}.parquet", compression=compression)
        parts += 1

    try:
        with task(f"criteo -> parquet {src.name}", total=src.stat().st_size) as (bar, tid):
            try:
                reader = _open(src, chunk_rows, bad)
                for batch in reader:
                    # Arrow reads the label as nullable; the schema promises non-null, checked here.
                    positives += _check_labels(batch, src, rows + 1)
                    batch = pa.RecordBatch.from_arrays(batch.columns, schema=schema)
                    rows += batch.num_rows
                    while batch.num_rows:
                        take = min(chunk_rows - pending_rows, batch.num_rows)
                        pending.append(batch.slice(0, take))
                        pending_rows += take
                        batch = batch.slice(take)
                        if pending_rows == chunk_rows:
                            flush(pending)
                            pending, pending_rows = [], 0
                    bar.update(TaskID(tid), completed=min(rows * _ROW_BYTES, src.stat().st_size))
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                if bad.row is not None:
                    number, got, text = bad.row
                    where = f"line {number}" if number is not None else f"after line {rows}"
                    raise DataError(
                        src,
                        f"{where}: expected {len(CRITEO_COLUMNS)} tab-separated fields, got {got}"
                        f" ({text[:60]!r})",
                    ) from None
                msg = str(exc).strip().splitlines()[0]
                raise DataError(src, f"{_locate(src, rows, msg)}: {msg}") from None
            if pending:
                flush(pending)
        if rows == 0:
            raise DataError(src, "file has no rows")
        info = CriteoParquetInfo(str(src), str(out_dir), rows, positives, parts, chunk_rows)
        (tmp / MANIFEST).write_text(json.dumps(asdict(info), indent=2))
        _replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("criteo %s: %d rows, %d parts, CTR %.4f", src, rows, parts, info.ctr)
    return info


def _replace(tmp: Path, out_dir: Path) -> None:
    """Rename `tmp` onto `out_dir`; an old `out_dir` is moved aside first and removed after."""
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_manifest(parquet_dir: Path) -> CriteoParquetInfo:
    """The manifest `criteo_to_parquet` wrote into `parquet_dir`."""
    path = Path(parquet_dir) / MANIFEST
    if not path.is_file():
        raise DataError(path, "not a Criteo Parquet folder (manifest missing)")
    try:
        return CriteoParquetInfo(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise DataError(path, f"corrupt manifest: {exc}") from None


def iter_criteo_batches(
    parquet_dir: Path, batch_rows: int = 65_536, columns: list[str] | None = None
) -> Iterator[pd.DataFrame]:
    """Stream a Criteo Parquet folder back as DataFrames of exactly `batch_rows` rows (last may
    be shorter), in file order; integers come back as nullable `Int64`, hashes as strings."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    read_manifest(parquet_dir)
    if batch_rows < 1:
        raise DataError(parquet_dir, f"batch_rows must be >= 1, got {batch_rows}")
    parts = sorted(Path(parquet_dir).glob("part-*.parquet"))
    if not parts:
        raise DataError(parquet_dir, "no part-*.parquet files")
    cols = list(columns) if columns is not None else list(CRITEO_COLUMNS)
    unknown = [c for c in cols if c not in CRITEO_COLUMNS]
    if unknown:
        raise DataError(parquet_dir, f"unknown Criteo columns {unknown}")
    mapper = {pa.int64(): pd.Int64Dtype()}.get

    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for part in parts:
        for batch in pq.ParquetFile(part).iter_batches(batch_size=batch_rows, columns=cols):
            pending.append(batch)
            pending_rows += batch.num_rows
            while pending_rows >= batch_rows:
                table = pa.Table.from_batches(pending)
                yield table.slice(0, batch_rows).to_pandas(types_mapper=mapper)
                rest = table.slice(batch_rows)
                pending, pending_rows = rest.to_batches(), rest.num_rows
    if pending_rows:
        yield pa.Table.from_batches(pending).to_pandas(types_mapper=mapper)
