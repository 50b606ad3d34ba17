"""Criteo TSV -> partitioned Parquet: schema, empty fields, bounded parts, bad rows, round trips."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from strata.datasets.criteo import (
    CAT_COLUMNS,
    CRITEO_COLUMNS,
    INT_COLUMNS,
    MANIFEST,
    criteo_schema,
    criteo_to_parquet,
    iter_criteo_batches,
    read_manifest,
)
from strata.datasets.criteo_synthetic import criteo_like, write_criteo_tsv
from strata.errors import DataError


def _fields(path: Path) -> list[list[str]]:
    """The raw file split by hand, the reference the parser is checked against."""
    return [line.split("\t") for line in path.read_text().splitlines()]


def _row(label: str, ints: list[str], cats: list[str]) -> str:
    assert len(ints) == 13 and len(cats) == 26
    return "\t".join([label, *ints, *cats]) + "\n"


def _small_file(path: Path) -> Path:
    """Six rows exercising empty integers, empty hashes, an all-empty row and a negative int."""
    ints = [str(i) for i in range(1, 14)]
    cats = [f"{i:08x}" for i in range(0xA0, 0xA0 + 26)]
    rows = [
        _row("1", ints, cats),
        _row("0", [""] * 13, [""] * 26),
        _row("0", ["", "-1", *ints[2:]], ["", *cats[1:25], ""]),
        _row("1", [*ints[:12], ""], cats),
        _row("0", ["0"] * 13, cats[:13] + [""] * 13),
        _row("0", ints, cats),
    ]
    path.write_text("".join(rows))
    return path


def _no_leftovers(folder: Path) -> bool:
    return not any(".tmp-" in p.name or ".old-" in p.name for p in folder.iterdir())


def test_criteo_8k_to_parquet_and_back(criteo_8k: Path, tmp_path: Path) -> None:
    raw = _fields(criteo_8k)
    assert len(raw) == 8000
    out = tmp_path / "pq"
    info = criteo_to_parquet(criteo_8k, out)
    assert (info.rows, info.parts) == (8000, 1)
    assert info.positives == sum(r[0] == "1" for r in raw)
    assert 0.18 < info.ctr < 0.26
    assert read_manifest(out) == info
    assert pq.read_schema(out / "part-00000.parquet").equals(criteo_schema())

    batches = list(iter_criteo_batches(out, batch_rows=2500))
    assert [len(b) for b in batches] == [2500, 2500, 2500, 500]
    df = pd.concat(batches, ignore_index=True)
    assert list(df.columns) == list(CRITEO_COLUMNS)
    # Empty fields are nulls, column by column, exactly where the raw file has them.
    for k, col in enumerate(CRITEO_COLUMNS):
        empty = np.array([r[k] == "" for r in raw])
        np.testing.assert_array_equal(df[col].isna().to_numpy(), empty, err_msg=col)
    assert df[list(CAT_COLUMNS)].isna().to_numpy().any()
    for i in (0, 1234, 7999):
        r = raw[i]
        assert int(df.loc[i, "label"]) == int(r[0])
        assert [None if pd.isna(v) else int(v) for v in df.loc[i, list(INT_COLUMNS)]] == [
            int(x) if x else None for x in r[1:14]
        ]
        assert [None if pd.isna(v) else v for v in df.loc[i, list(CAT_COLUMNS)]] == [
            x if x else None for x in r[14:]
        ]
    assert str(df["I1"].dtype) == "Int64" and df["label"].dtype == np.int8


def test_tiny_chunks_bound_each_part(criteo_8k: Path, tmp_path: Path) -> None:
    """Memory is bounded by the chunk: a 700-row chunk gives ceil(8000/700) parts of <= 700 rows."""
    out = tmp_path / "pq"
    info = criteo_to_parquet(criteo_8k, out, chunk_rows=700)
    parts = sorted(out.glob("part-*.parquet"))
    assert info.parts == len(parts) == math.ceil(8000 / 700)
    sizes = [pq.ParquetFile(p).metadata.num_rows for p in parts]
    assert sizes == [700] * 11 + [8000 - 7700]
    # Order is preserved across part boundaries.
    labels = pd.concat(iter_criteo_batches(out, batch_rows=999, columns=["label"]))["label"]
    assert labels.tolist() == [int(r[0]) for r in _fields(criteo_8k)]


def test_empty_fields_and_gzip(tmp_path: Path) -> None:
    src = _small_file(tmp_path / "small.tsv")
    gz = tmp_path / "small.tsv.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    for i, path in enumerate((src, gz)):
        info = criteo_to_parquet(path, tmp_path / f"out{i}", chunk_rows=4)
        assert (info.rows, info.positives, info.parts) == (6, 2, 2)
        df = pd.concat(iter_criteo_batches(tmp_path / f"out{i}"), ignore_index=True)
        assert df.loc[1, list(INT_COLUMNS) + list(CAT_COLUMNS)].isna().all()
        assert df.loc[2, "I2"] == -1 and pd.isna(df.loc[2, "I1"])
        assert (
            pd.isna(df.loc[2, "C1"]) and pd.isna(df.loc[2, "C26"]) and df.loc[2, "C2"] == "000000a1"
        )
        assert pd.isna(df.loc[3, "I13"]) and df.loc[3, "I12"] == 12
        assert df[list(CAT_COLUMNS)].isna().sum().sum() == 26 + 2 + 13


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("1\t2\t3\n", r"line 5: expected 40 tab-separated fields, got 3"),
        (_row("0", ["1", "x1", *["1"] * 11], ["ab"] * 26), r"line 5, field I2"),
        (_row("2", ["1"] * 13, ["ab"] * 26), r"line 5: label must be 0 or 1"),
        (_row("", ["1"] * 13, ["ab"] * 26), r"line 5: empty label"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path: Path, bad_line: str, message: str) -> None:
    src = tmp_path / "bad.tsv"
    good = _small_file(tmp_path / "good.tsv").read_text().splitlines(keepends=True)
    src.write_text("".join(good[:4]) + bad_line + "".join(good[4:]))
    out = tmp_path / "out"
    with pytest.raises(DataError, match=message) as err:
        criteo_to_parquet(src, out, chunk_rows=2)
    assert str(src) in str(err.value)
    assert not out.exists() and _no_leftovers(tmp_path)


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    src = _small_file(tmp_path / "small.tsv")
    out = tmp_path / "out"
    criteo_to_parquet(src, out, chunk_rows=2)
    assert len(list(out.glob("part-*.parquet"))) == 3
    with pytest.raises(DataError, match="exists"):
        criteo_to_parquet(src, out)
    info = criteo_to_parquet(src, out, chunk_rows=10, overwrite=True)
    assert info.parts == 1 and len(list(out.glob("part-*.parquet"))) == 1
    assert json.loads((out / MANIFEST).read_text())["chunk_rows"] == 10
    assert _no_leftovers(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        criteo_to_parquet(tmp_path / "missing.tsv", tmp_path / "o2")
    with pytest.raises(DataError, match="manifest missing"):
        next(iter_criteo_batches(tmp_path))


def test_synthetic_rows_round_trip(tmp_path: Path) -> None:
    df = criteo_like(3000, seed=3)
    src = tmp_path / "syn.tsv"
    assert write_criteo_tsv(df, src) == 3000
    first = src.read_text().splitlines()[0].split("\t")
    assert len(first) == 40 and first[0] in ("0", "1")
    criteo_to_parquet(src, tmp_path / "pq", chunk_rows=1000)
    back = pd.concat(iter_criteo_batches(tmp_path / "pq", batch_rows=777), ignore_index=True)
    expected = df[list(CRITEO_COLUMNS)]
    for col in CRITEO_COLUMNS:
        np.testing.assert_array_equal(
            back[col].isna().to_numpy(), expected[col].isna().to_numpy(), err_msg=col
        )
        present = expected[col].notna().to_numpy()
        assert (
            back[col][present].astype(str).tolist() == expected[col][present].astype(str).tolist()
        )
