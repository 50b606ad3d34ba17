"""Bloom filter maths and the in-memory backend (the Valkey one runs the same contract suite)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from strata.config import BloomConfig
from strata.errors import ValidationError
from strata.features.bloom import (
    BloomFilter,
    MemoryBloom,
    base_hashes,
    bit_positions,
    bloom_params,
    open_bloom,
)


def test_sizing_follows_the_formulas() -> None:
    p = bloom_params(BloomConfig())
    assert p.m == math.ceil(-1000 * math.log(0.01) / math.log(2) ** 2)  # 9586 bits
    assert p.k == 7
    assert p.gen_s == 7 * 86400 and p.ttl_s == 14 * 86400
    assert bloom_params(BloomConfig(generations=4, window_s=300)).gen_s == 100


def test_hashes_are_deterministic_and_in_range() -> None:
    p = bloom_params(BloomConfig(capacity=50, fp_rate=0.05))
    ids = np.array([0, 1, 2**62, 12345])
    h1, h2 = base_hashes(ids, p.m)
    assert ((h1 >= 0) & (h1 < p.m)).all() and ((h2 >= 1) & (h2 < p.m)).all()
    pos = bit_positions(ids, p)
    assert pos.shape == (4, p.k) and (pos < p.m).all()
    np.testing.assert_array_equal(pos, bit_positions(ids.copy(), p))


@pytest.mark.parametrize(("capacity", "fp_rate"), [(1000, 0.01), (500, 0.05)])
def test_fp_rate_at_capacity_within_1_5x(capacity: int, fp_rate: float) -> None:
    bloom = MemoryBloom(bloom_params(BloomConfig(capacity=capacity, fp_rate=fp_rate)))
    rng = np.random.default_rng(3)
    members = rng.choice(10**9, size=capacity, replace=False)
    bloom.add_many(np.full(capacity, 1), members, now=0)
    assert bloom.contains(1, members, now=0).all()  # never a false negative
    probes = np.setdiff1d(rng.choice(10**12, size=101_000, replace=False) + 10**9, members)[
        :100_000
    ]
    measured = bloom.contains(1, probes, now=0).mean()
    assert fp_rate / 1.5 <= measured <= fp_rate * 1.5


def test_no_false_negatives_across_many_users() -> None:
    bloom = open_bloom(BloomConfig(capacity=100))
    assert isinstance(bloom, BloomFilter)
    rng = np.random.default_rng(0)
    users = rng.integers(0, 50, size=3_000)
    items = rng.integers(0, 10**6, size=3_000)
    bloom.add_many(users, items, now=5)
    for u in range(50):
        assert bloom.contains(u, items[users == u], now=5).all()


def test_filter_expires_after_all_generations() -> None:
    bloom = MemoryBloom(bloom_params(BloomConfig(window_s=100)))
    bloom.add_many(np.array([1]), np.array([9]), now=0)
    assert bloom.contains(1, np.array([9]), now=199).all()
    assert not bloom.contains(1, np.array([9]), now=200).any()
    assert bloom.raw(1) is None


def test_mismatched_pairs_are_rejected() -> None:
    bloom = MemoryBloom(bloom_params(BloomConfig()))
    with pytest.raises(ValidationError) as err:
        bloom.add_many(np.array([1, 2]), np.array([1, 2, 3]))
    assert err.value.field == "item_ids"
    assert bloom.contains(1, np.array([], dtype=np.int64)).shape == (0,)
