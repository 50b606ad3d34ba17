"""Metrics against scikit-learn and small hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from strata.errors import ValidationError
from strata.training.metrics import auc, coverage, hit_matrix, logloss, ndcg_at_k, recall_at_k

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def test_auc_hand_cases() -> None:
    # Positives at 0.35 and 0.8; negatives at 0.1 and 0.4: 3 of 4 pairs ordered -> 0.75.
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts half
    assert auc([1, 0], [0.9, 0.1]) == pytest.approx(1.0)


def test_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    p = np.round(rng.random(2000) * 0.5 + 0.3 * y, 1)  # coarse scores: many ties
    assert auc(y, p) == pytest.approx(sklearn_metrics.roc_auc_score(y, p), abs=1e-12)


def test_auc_rejects_bad_labels() -> None:
    with pytest.raises(ValidationError, match="both"):
        auc([1, 1, 1], [0.2, 0.3, 0.4])
    with pytest.raises(ValidationError, match="0 or 1"):
        auc([0, 2], [0.2, 0.3])


def test_logloss_matches_sklearn_and_clips() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    p = rng.random(500)
    assert logloss(y, p) == pytest.approx(sklearn_metrics.log_loss(y, p), rel=1e-9)
    # A confident miss is clipped, not infinite.
    assert logloss([1], [0.0], eps=1e-7) == pytest.approx(-np.log(1e-7))


def test_recall_hand_case() -> None:
    recs = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    relevant = [{1, 9}, {7}, set()]  # the last user has nothing relevant: left out of the mean
    assert recall_at_k(recs, relevant, 2) == pytest.approx((0.5 + 0.0) / 2)
    assert recall_at_k(recs, relevant, 3) == pytest.approx(0.25)
    assert np.isnan(recall_at_k(recs, [set(), set(), set()], 2))


def test_padding_never_hits_and_large_ids_work() -> None:
    big = 2**62
    recs = np.array([[big, -1, 5], [-1, -1, -1]])
    hits, n_rel = hit_matrix(recs, [[big], [-1, 3]])
    assert hits.tolist() == [[True, False, False], [False, False, False]]
    assert n_rel.tolist() == [1, 2]


def test_ndcg_hand_case() -> None:
    recs = np.array([[5, 1, 2]])
    # One relevant item at rank 2: DCG = 1/log2(3), IDCG = 1.
    assert ndcg_at_k(recs, [[1]], 3) == pytest.approx(1 / np.log2(3))
    # Two relevant, hits at ranks 1 and 3.
    expect = (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    assert ndcg_at_k(recs, [[5, 2]], 3) == pytest.approx(expect)


def test_ndcg_matches_sklearn() -> None:
    rng = np.random.default_rng(2)
    n_users, n_items, k = 40, 30, 10
    scores = rng.random((n_users, n_items))
    truth = rng.random((n_users, n_items)) < 0.15
    truth[:, 0] = True  # every user has something relevant (sklearn scores empty rows as 0)
    recs = np.argsort(-scores, axis=1)[:, :k]
    relevant = [np.flatnonzero(row) for row in truth]
    expected = sklearn_metrics.ndcg_score(truth.astype(int), scores, k=k)
    assert ndcg_at_k(recs, relevant, k) == pytest.approx(expected, abs=1e-12)


def test_coverage() -> None:
    recs = np.array([[1, 2], [2, 3], [3, -1]])
    assert coverage(recs, 10) == pytest.approx(0.3)
    assert coverage(recs, 10, k=1) == pytest.approx(0.3)  # items 1, 2, 3
    assert coverage(recs[:, :1][:2], 4) == pytest.approx(0.5)
    with pytest.raises(ValidationError):
        coverage(recs, 0)
