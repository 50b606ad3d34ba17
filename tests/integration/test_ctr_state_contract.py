"""One contract, two implementations: the CTR live state and the retrain lease behave the same
in the process (`MemoryCtrState`, `MemoryLease`) and in a real Valkey (`ValkeyCtrState`), which
is what lets a cluster of CTR replicas act as one service."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from strata.config import ValkeyOnlineConfig
from strata.ctr.preprocess import CtrBatch
from strata.ctr.state import MemoryCtrState
from strata.ctr.state_valkey import ValkeyCtrState
from strata.features.online.valkey import ValkeyOnlineStore
from strata.monitoring.trigger import MemoryLease

pytestmark = pytest.mark.integration

N_DENSE, N_CAT, CAPACITY, WINDOW, RECENT = 5, 3, 64, 10, 12


def _batch(n: int, seed: int) -> tuple[np.ndarray, CtrBatch]:
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(n, N_DENSE)).astype(np.float32)
    cats = rng.integers(0, 1000, (n, N_CAT)).astype(np.int64)
    return rng.random(n).astype(np.float32), CtrBatch(dense, cats)


@pytest.fixture(params=["memory", "valkey"])
def state(request: pytest.FixtureRequest, valkey_config: ValkeyOnlineConfig) -> Iterator:
    if request.param == "memory":
        yield MemoryCtrState(N_DENSE, N_CAT, CAPACITY, WINDOW, RECENT)
        return
    store = ValkeyOnlineStore(valkey_config)
    yield ValkeyCtrState(store, "c", N_DENSE, N_CAT, WINDOW, RECENT, ttl_s=60)
    store.close()


@pytest.fixture(params=["memory", "valkey"])
def lease(request: pytest.FixtureRequest, valkey_config: ValkeyOnlineConfig) -> Iterator:
    if request.param == "memory":
        yield MemoryLease()
        return
    store = ValkeyOnlineStore(valkey_config)
    yield ValkeyCtrState(store, "c", N_DENSE, N_CAT, WINDOW, RECENT, ttl_s=60)
    store.close()


def test_ids_are_unique_and_labels_join_once(state) -> None:
    probs, batch = _batch(8, 0)
    a = state.record(probs[:5], batch.take(slice(0, 5)))
    b = state.record(probs[5:], batch.take(slice(5, 8)))
    ids = np.concatenate([a, b])
    assert len(set(ids.tolist())) == 8
    labels = np.array([1, 0, 1, 0, 1, 0, 1, 0], dtype=np.float32)
    # one unknown id, and the same id twice in one request: the first label wins
    ask = np.concatenate([ids[:3], [ids.max() + 1000], ids[:1]])
    joined, window = state.label(ask, np.concatenate([labels[:3], [1.0], [0.0]]))
    assert joined.found.tolist() == [True, True, True, False, False]
    assert joined.duplicate.tolist() == [False, False, False, False, True]
    np.testing.assert_allclose(window.labels, labels[:3])
    np.testing.assert_allclose(window.probs, probs[:3], rtol=1e-6)
    assert window.seen == 3 and window.recent == 3
    again, _ = state.label(ids[:2], labels[:2])
    assert again.duplicate.tolist() == [True, True] and not again.found.any()


def test_window_and_recent_rows_keep_the_last_and_the_features_served(state) -> None:
    probs, batch = _batch(30, 1)
    ids = state.record(probs, batch)
    labels = (np.arange(30) % 2).astype(np.float32)
    for s in range(0, 30, 7):
        _, window = state.label(ids[s : s + 7], labels[s : s + 7])
    assert window.seen == 30 and len(window.labels) == WINDOW
    np.testing.assert_allclose(window.probs, probs[-WINDOW:], rtol=1e-6)
    recent = state.recent()
    assert len(recent) == RECENT
    np.testing.assert_allclose(recent.dense, batch.dense[-RECENT:], rtol=1e-6)
    np.testing.assert_array_equal(recent.cats, batch.cats[-RECENT:])
    np.testing.assert_array_equal(recent.labels, labels[-RECENT:])
    assert state.window().seen == 30
    state.reset(forget_recent=False)
    assert len(state.window().labels) == 0 and state.window().seen == 30
    assert len(state.recent()) == RECENT
    state.reset(forget_recent=True)
    assert len(state.recent()) == 0


def test_one_holder_at_a_time_with_expiry_and_cooldown(lease) -> None:
    assert lease.acquire("a", 0.4)
    assert not lease.acquire("b", 0.4)
    assert lease.renew("a", 0.4) and not lease.renew("b", 0.4)
    lease.release("b")  # not the holder: nothing happens
    assert not lease.acquire("b", 0.4)
    lease.release("a", hold_s=0.3)  # kept for a cooldown after the run
    assert not lease.acquire("b", 0.4) and not lease.acquire("a", 0.4)
    time.sleep(0.45)
    assert lease.acquire("b", 0.3)  # held by nobody now
    time.sleep(0.45)  # b died without releasing: it expires
    assert not lease.renew("b", 0.3)
    assert lease.acquire("c", 0.3)
    lease.release("c")
    assert lease.acquire("a", 0.3)
