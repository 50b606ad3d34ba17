"""CTR preprocessing: fitted statistics, OOV/missing handling, hashing, JSON round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from strata.config import CtrPreprocessConfig
from strata.ctr.preprocess import (
    CAT_COLUMNS,
    INT_COLUMNS,
    MISSING,
    OOV,
    CtrBatch,
    CtrPreprocessor,
    fit_preprocessor,
    records_to_frame,
)
from strata.errors import DataError, ValidationError
from tests.unit.ctr_support import synthetic_frame


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return synthetic_frame(2000, seed=5)


@pytest.fixture(scope="module")
def prep(frame: pd.DataFrame) -> CtrPreprocessor:
    chunks = [frame.iloc[i : i + 500] for i in range(0, len(frame), 500)]
    return fit_preprocessor(chunks, CtrPreprocessConfig(min_count=3))


def test_integers_are_standardised_with_missing_flags(prep, frame) -> None:
    b = prep.transform(frame)
    k = len(INT_COLUMNS)
    for j, col in enumerate(INT_COLUMNS):
        miss = frame[col].isna().to_numpy()
        assert np.array_equal(b.dense[:, k + j] > 0.5, miss)
        z = b.dense[~miss, j]
        assert abs(z.mean()) < 0.1 and 0.8 < z.std() < 1.2  # histogram-fitted stats
        assert np.all(b.dense[miss, j] == 0.0)


def test_huge_integer_is_clipped(prep) -> None:
    rows = [{"I1": 10**15}, {"I1": 10**18}]
    b = prep.transform_records(rows)
    assert b.dense[0, 0] == b.dense[1, 0]  # both at the clip
    assert np.isfinite(b.dense).all()


def test_categoricals_vocab_oov_missing(prep, frame) -> None:
    b = prep.transform(frame)
    counts = frame["C1"].value_counts()
    rare = counts[counts < 3].index
    common = counts[counts >= 3].index
    col = b.cats[:, 0]
    if len(rare):
        assert np.all(col[frame["C1"].isin(rare).to_numpy()] == OOV)
    assert np.all(col[frame["C1"].isin(common).to_numpy()] >= 2)
    assert prep.cardinalities[0] == len(common) + 2
    unseen = prep.transform_records([{"C1": "never-seen", "C2": None}])
    assert unseen.cats[0, 0] == OOV and unseen.cats[0, 1] == MISSING
    assert np.all(unseen.cats[0, 2:] == MISSING)  # absent keys are missing, not errors


def test_json_round_trip_is_identical(prep, frame, tmp_path: Path) -> None:
    path = tmp_path / "prep.json"
    prep.save(path)
    again = CtrPreprocessor.load(path)
    a, b = prep.transform(frame), again.transform(frame)
    assert np.array_equal(a.dense, b.dense) and np.array_equal(a.cats, b.cats)
    assert again.cardinalities == prep.cardinalities


def test_online_records_match_offline_frame(prep, frame) -> None:
    sub = frame.iloc[:50]
    rows = []
    for r in sub.to_dict("records"):
        rows.append({k: (None if pd.isna(v) else v) for k, v in r.items()})
    a, b = prep.transform(sub), prep.transform_records(rows)
    assert np.allclose(a.dense, b.dense) and np.array_equal(a.cats, b.cats)
    assert np.array_equal(a.labels, b.labels)
    # Single rows take the small-batch vocabulary lookup; it must agree with the batch path.
    singles = np.concatenate([prep.transform_records([r]).cats for r in rows])
    assert np.array_equal(singles, a.cats)


def test_hashing_for_huge_vocabularies(frame) -> None:
    cfg = CtrPreprocessConfig(min_count=1, hash_threshold=50, hash_buckets=97)
    prep = fit_preprocessor([frame], cfg)
    big = [c for c in CAT_COLUMNS if prep.cat_specs[c]["mode"] == "hash"]
    small = [c for c in CAT_COLUMNS if prep.cat_specs[c]["mode"] == "vocab"]
    assert big and small
    j = CAT_COLUMNS.index(big[0])
    b = prep.transform(frame)
    present = frame[big[0]].notna().to_numpy()
    assert np.all((b.cats[present, j] >= 2) & (b.cats[present, j] < 99))
    assert prep.cardinalities[j] == 99
    # Stable: the same value hashes to the same bucket in a fresh transform.
    again = prep.transform_records([{big[0]: frame[big[0]][present].iloc[0]}])
    assert again.cats[0, j] == b.cats[present, j][0]


def test_bad_records_raise_validation_errors(prep) -> None:
    with pytest.raises(ValidationError, match=r"rows\[0\]\.I99"):
        records_to_frame([{"I99": 1}])
    with pytest.raises(ValidationError, match=r"rows\[1\]\.I3"):
        records_to_frame([{"I3": 1}, {"I3": "abc"}])
    with pytest.raises(ValidationError, match="label"):
        records_to_frame([{"label": 2}])
    with pytest.raises(ValidationError):
        prep.transform(pd.DataFrame({"I1": ["x"]}))


def test_corrupt_or_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        CtrPreprocessor.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError):
        CtrPreprocessor.load(bad)
    with pytest.raises(DataError):
        fit_preprocessor([], CtrPreprocessConfig())


def test_batch_npz_round_trip(prep, frame, tmp_path: Path) -> None:
    b = prep.transform(frame.iloc[:30])
    b.to_npz(tmp_path / "b.npz")
    c = CtrBatch.from_npz(tmp_path / "b.npz")
    assert np.array_equal(b.cats, c.cats) and np.array_equal(b.labels, c.labels)


def test_criteo_8k_fit(criteo_8k: Path) -> None:
    from strata.datasets.criteo import CRITEO_COLUMNS

    df = pd.read_csv(criteo_8k, sep="\t", header=None, names=list(CRITEO_COLUMNS), nrows=3000)
    prep = fit_preprocessor([df], CtrPreprocessConfig(min_count=5))
    b = prep.transform(df)
    assert b.cats.shape == (3000, 26) and (b.cats < np.array(prep.cardinalities)).all()
    assert 0.1 < float(b.labels.mean()) < 0.4
