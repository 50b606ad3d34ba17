"""Per-rank sharded CTR input: each rank of a data-parallel `strata ctr train` streams only its
Parquet row groups, the shards cover the training rows exactly once, and the preprocessing
counts merged over shards equal one fit over all the rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from strata.config import CtrPreprocessConfig
from strata.ctr.data import CtrSource
from strata.ctr.preprocess import PreprocessorFitter, fit_preprocessor
from strata.datasets.criteo import criteo_to_parquet
from strata.datasets.criteo_synthetic import write_criteo_tsv
from tests.unit.ctr_support import synthetic_frame


def _ids(frames: list[pd.DataFrame]) -> np.ndarray:
    return np.concatenate([f["row"].to_numpy() for f in frames]) if frames else np.empty(0)


@pytest.fixture(scope="module")
def numbered(tmp_path_factory: pytest.TempPathFactory) -> CtrSource:
    """5000 rows in row groups of 700, each row carrying its position."""
    df = synthetic_frame(5000, seed=2).assign(row=np.arange(5000))
    path = tmp_path_factory.mktemp("shard") / "rows.parquet"
    df.to_parquet(path, index=False, row_group_size=700)
    return CtrSource(path)


@pytest.mark.parametrize("world", [1, 2, 3, 8, 11])
def test_shards_cover_the_range_exactly_once(numbered: CtrSource, world: int) -> None:
    start, stop = 150, 4480  # 7 row groups overlap: world 8 and 11 split each one
    shards = [_ids(list(numbered.iter_shard(start, stop, 300, r, world))) for r in range(world)]
    assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(start, stop))
    assert [len(s) for s in shards] == [
        numbered.shard_rows(start, stop, r, world) for r in range(world)
    ]
    if world <= 7:  # whole row groups: no rank opens another's
        groups = [{int(i) // 700 for i in s} for s in shards]
        assert all(a.isdisjoint(b) for i, a in enumerate(groups) for b in groups[i + 1 :])


def test_one_rank_reads_what_iter_range_reads(numbered: CtrSource) -> None:
    a = pd.concat(list(numbered.iter_range(10, 4990, 256))).reset_index(drop=True)
    b = pd.concat(list(numbered.iter_shard(10, 4990, 256, 0, 1))).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    assert max(len(f) for f in numbered.iter_shard(10, 4990, 256, 0, 1)) <= 256


def test_criteo_folder_shards_by_part_with_the_same_dtypes(tmp_path: Path) -> None:
    tsv = tmp_path / "day.tsv"
    write_criteo_tsv(synthetic_frame(3000, seed=4), tsv)
    src = CtrSource(criteo_to_parquet(tsv, tmp_path / "pq", chunk_rows=500).out_dir)
    whole = pd.concat(list(src.iter_range(0, 3000, 400))).reset_index(drop=True)
    parts = [pd.concat(list(src.iter_shard(0, 3000, 400, r, 2))) for r in range(2)]
    assert [len(p) for p in parts] == [1500, 1500]  # parts 0, 2, 4 and 1, 3, 5
    both = pd.concat(parts).sort_index(kind="stable")
    assert list(both.dtypes) == list(whole.dtypes)
    first = parts[0].reset_index(drop=True)
    pd.testing.assert_frame_equal(first.iloc[:500], whole.iloc[:500])
    pd.testing.assert_frame_equal(
        first.iloc[500:1000].reset_index(drop=True), whole.iloc[1000:1500].reset_index(drop=True)
    )


def test_merged_shard_counts_fit_what_one_pass_fits(numbered: CtrSource) -> None:
    cfg = CtrPreprocessConfig(min_count=3, max_vocab=50)
    one = fit_preprocessor(numbered.iter_range(0, 5000, 600), cfg)
    fitters = []
    for r in range(3):
        f = PreprocessorFitter(cfg)
        for df in numbered.iter_shard(0, 5000, 600, r, 3):
            f.update(df)
        fitters.append(f)
    fitters[0].merge(fitters[1])
    fitters[0].merge(fitters[2])
    merged = fitters[0].finish()
    assert merged.to_dict() == one.to_dict()
    # a shard alone fits something else (the merge is what makes them agree)
    assert fitters[1].finish().to_dict() != one.to_dict()
