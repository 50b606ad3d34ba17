"""One contract suite for every online backend: memory and a real Valkey must behave alike."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from strata.config import BloomConfig, ValkeyOnlineConfig
from strata.errors import StoreUnavailableError, ValidationError
from strata.features.bloom import BloomFilter, MemoryBloom, ValkeyBloom, bloom_params
from strata.features.online import (
    ActivityEvents,
    ActivityStore,
    OnlineStore,
    open_activity_store,
)
from strata.features.online.memory import MemoryOnlineStore
from strata.features.online.valkey import ValkeyOnlineStore

BACKENDS = [
    "memory",
    pytest.param("valkey", marks=pytest.mark.integration),
    pytest.param("valkey-cluster-path", marks=pytest.mark.integration),
]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest) -> Iterator[OnlineStore]:
    """Each backend in turn (Valkey with an isolated key prefix)."""
    if request.param == "memory":
        yield MemoryOnlineStore()
        return
    cfg = request.getfixturevalue("valkey_config")
    s = ValkeyOnlineStore(cfg.model_copy(update={"cluster": request.param.endswith("path")}))
    yield s
    s.close()


def _features(ids: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(int(ids.sum()) % 1000)
    return {
        "f32": rng.random(len(ids)).astype(np.float32),
        "f64": rng.random(len(ids)),
        "i64": ids * 7 + 3,
        "i32": (ids % 5).astype(np.int32),
        "emb": rng.random((len(ids), 16)).astype(np.float32),
        "recent": np.stack([ids, ids + 1, np.full(len(ids), -1)], axis=1),
        "cat": np.array([f"genre-{i % 4}" for i in ids], dtype=object),
    }


def test_roundtrip_in_requested_order_with_missing_mask(store: OnlineStore) -> None:
    ids = np.arange(100, 400, dtype=np.int64)
    cols = _features(ids)
    store.write("item", ids, cols, version="v1")
    store.activate("item", "v1")
    ask = np.array([150, 5, 399, 100, 10_000])
    order = ["cat", "emb", "i64", "f64", "recent", "i32", "f32"]
    rows = store.read("item", ask, order)
    assert list(rows.values) == order
    np.testing.assert_array_equal(rows.found, [True, False, True, True, False])
    pos = np.array([50, 299, 0])
    hit = rows.found
    for name in order:
        np.testing.assert_array_equal(rows.values[name][hit], cols[name][pos])
    assert rows.values["emb"].shape == (5, 16) and rows.values["emb"].dtype == np.float32
    assert rows.values["i64"].dtype == np.int64 and rows.values["f64"].dtype == np.float64
    assert rows.values["i64"][1] == 0 and rows.values["cat"][1] == ""
    assert rows.version == "v1"
    mat = rows.matrix(["f32", "emb"])
    assert mat.shape == (5, 17) and mat.dtype == np.float32


def test_unknown_feature_is_named(store: OnlineStore) -> None:
    store.write("user", np.array([1]), {"age": np.array([30])}, version="a")
    store.activate("user", "a")
    with pytest.raises(ValidationError) as err:
        store.read("user", np.array([1]), ["age", "nope"])
    assert err.value.field == "nope"


def test_upsert_last_write_wins_and_dtype_is_fixed(store: OnlineStore) -> None:
    store.write("user", np.array([1, 2, 1]), {"x": np.array([1.0, 2.0, 3.0])})
    assert store.active_version("user") == "default"
    store.write("user", np.array([2]), {"x": np.array([9.0])})
    rows = store.read("user", np.array([1, 2]), ["x"])
    np.testing.assert_array_equal(rows.values["x"], [3.0, 9.0])
    with pytest.raises(ValidationError) as err:
        store.write("user", np.array([2]), {"x": np.array([[1.0, 2.0]])})
    assert err.value.field == "x"


def test_partial_upsert_keeps_other_features_and_new_features_append(store: OnlineStore) -> None:
    ids = np.arange(5)
    names = np.array(["x", "y", "z", "w", "v"], dtype=object)
    store.write("item", ids, {"a": np.arange(5.0), "s": names}, version="p")
    store.activate("item", "p")
    # A feature the version did not have, on one existing row and one new row.
    store.write("item", np.array([1, 7]), {"b": np.array([[1, 2], [3, 4]], np.float32)}, "p")
    store.write("item", np.array([2]), {"a": np.array([9.0])}, version="p")
    rows = store.read("item", np.array([1, 2, 7, 3, 8]), ["s", "b", "a"])
    np.testing.assert_array_equal(rows.found, [True, True, True, True, False])
    np.testing.assert_array_equal(rows.values["a"], [1.0, 9.0, 0.0, 3.0, 0.0])
    assert rows.values["s"].tolist() == ["y", "z", "", "w", ""]
    np.testing.assert_array_equal(rows.values["b"], [[1, 2], [0, 0], [3, 4], [0, 0], [0, 0]])


def test_new_version_is_invisible_until_activated(store: OnlineStore) -> None:
    ids = np.arange(50)
    store.write("item", ids, {"pop": np.ones(50)}, version="v1")
    store.activate("item", "v1")
    # Half of v2 written: readers must still see all of v1.
    store.write("item", ids[:25], {"pop": np.full(25, 2.0)}, version="v2")
    rows = store.read("item", ids, ["pop"])
    assert rows.found.all() and (rows.values["pop"] == 1.0).all()
    store.write("item", ids[25:], {"pop": np.full(25, 2.0)}, version="v2")
    store.activate("item", "v2")
    rows = store.read("item", ids, ["pop"])
    assert rows.version == "v2" and (rows.values["pop"] == 2.0).all()
    store.write("item", ids, {"pop": np.full(50, 3.0)}, version="v3")
    store.activate("item", "v3", keep=2)
    assert store.versions("item") == ["v2", "v3"]  # type: ignore[attr-defined]
    store.activate("item", "v2")
    assert (store.read("item", ids, ["pop"]).values["pop"] == 2.0).all()


def test_delete(store: OnlineStore) -> None:
    store.write("user", np.arange(10), {"x": np.arange(10.0)})
    assert store.delete("user", np.array([3, 4, 99])) == 2
    rows = store.read("user", np.array([2, 3, 4]), ["x"])
    np.testing.assert_array_equal(rows.found, [True, False, False])


def test_bad_ids_and_columns_are_rejected(store: OnlineStore) -> None:
    with pytest.raises(ValidationError) as err:
        store.write("user", np.array([1, 2]), {"x": np.array([1.0])})
    assert err.value.field == "x"
    with pytest.raises(ValidationError) as err:
        store.read("user", np.array(["a"]), ["x"])
    assert err.value.field == "ids"
    with pytest.raises(ValidationError) as err:
        store.write("us:er", np.array([1]), {"x": np.array([1.0])})
    assert err.value.field == "entity"


def test_health(store: OnlineStore) -> None:
    store.health()


# --- activity ---------------------------------------------------------------------------------


def _events(rows: list[tuple[str, int, int, str, int, int]]) -> ActivityEvents:
    eid, uid, iid, typ, ts, cat = zip(*rows, strict=True)
    return ActivityEvents(
        event_id=np.array(eid, dtype=object),
        user_id=np.array(uid, dtype=np.int64),
        item_id=np.array(iid, dtype=np.int64),
        type=np.array(typ, dtype=object),
        ts=np.array(ts, dtype=np.int64),
        category=np.array(cat, dtype=np.int64),
    )


def test_activity_is_idempotent_counted_and_capped(store: OnlineStore) -> None:
    act: ActivityStore = open_activity_store(store)
    batch = _events(
        [
            ("e1", 1, 10, "view", 100, 3),
            ("e2", 1, 11, "click", 101, 4),
            ("e3", 2, 12, "view", 100, -1),
            ("e4", 1, 12, "view", 102, 4),
            ("e5", 1, 13, "purchase", 103, 3),
        ]
    )
    new = act.apply_events(batch, recent_cap=3, window_s=3600)
    assert new.all()
    again = act.apply_events(batch, recent_cap=3, window_s=3600)
    assert not again.any()
    rows = act.activity(np.array([1, 2, 3]))
    np.testing.assert_array_equal(rows.found, [True, True, False])
    np.testing.assert_array_equal(rows.values["n_view"], [2, 1, 0])
    np.testing.assert_array_equal(rows.values["n_click"], [1, 0, 0])
    np.testing.assert_array_equal(rows.values["n_events"], [4, 1, 0])
    np.testing.assert_array_equal(rows.values["last_ts"], [103, 100, 0])
    # categories 3 and 4 tie at 2 events: the smaller id wins on both backends
    np.testing.assert_array_equal(rows.values["top_category"], [3, -1, -1])
    np.testing.assert_array_equal(act.recent_items(1, 10), [13, 12, 11])


# --- bloom ------------------------------------------------------------------------------------


@pytest.fixture
def bloom(store: OnlineStore) -> BloomFilter:
    """The Bloom backend matching the store, small capacity so tests stay fast."""
    params = bloom_params(BloomConfig(capacity=200, fp_rate=0.01, window_s=1000))
    if isinstance(store, ValkeyOnlineStore):
        return ValkeyBloom(params, store)
    return MemoryBloom(params)


def test_bloom_no_false_negatives_and_isolation(bloom: BloomFilter) -> None:
    items = np.arange(5_000, 5_200)
    bloom.add_many(np.full(200, 7), items, now=10_000)
    assert bloom.contains(7, items, now=10_000).all()
    assert not bloom.contains(8, items, now=10_000).any()
    probes = np.arange(1_000_000, 1_020_000)
    fp = bloom.contains(7, probes, now=10_000).mean()
    assert fp < 0.015
    bloom.clear(7)
    assert not bloom.contains(7, items, now=10_000).any()


def test_bloom_window_rotates_generations(bloom: BloomFilter) -> None:
    # window 1000 s, 2 generations of 1000 s: remembered >= 1000 s, forgotten by 2000 s.
    bloom.add_many(np.array([1, 1]), np.array([42, 43]), now=10_999)
    assert bloom.contains(1, np.array([42, 43]), now=11_998).all()
    bloom.add_many(np.array([1]), np.array([44]), now=12_000)
    res = bloom.contains(1, np.array([42, 44]), now=12_000)
    np.testing.assert_array_equal(res, [False, True])


@pytest.mark.integration
def test_bloom_backends_store_identical_bytes(valkey_config: ValkeyOnlineConfig) -> None:
    params = bloom_params(BloomConfig(capacity=100, fp_rate=0.02, window_s=500, generations=3))
    vstore = ValkeyOnlineStore(valkey_config)
    mem, val = MemoryBloom(params), ValkeyBloom(params, vstore)
    for now, items in ((1_000, [1, 2, 3]), (1_300, [4, 5]), (1_600, [6]), (1_610, [2**40, 7])):
        for b in (mem, val):
            b.add_many(np.full(len(items), 9), np.array(items), now=now)
        assert mem.raw(9) == val.raw(9)
    probes = np.arange(0, 3_000)
    np.testing.assert_array_equal(
        mem.contains(9, probes, now=1_700), val.contains(9, probes, now=1_700)
    )
    vstore.close()


# --- valkey specifics -------------------------------------------------------------------------


@pytest.mark.integration
def test_reads_are_one_round_trip(valkey_config: ValkeyOnlineConfig, monkeypatch) -> None:
    from redis.connection import AbstractConnection

    store = ValkeyOnlineStore(valkey_config)
    ids = np.arange(300)
    store.write("item", ids, {"a": np.ones(300), "emb": np.ones((300, 8), np.float32)}, version="v")
    store.activate("item", "v")
    store.write("user", np.array([1]), {"b": np.ones(1)}, version="u")
    store.activate("user", "u")
    bloom = ValkeyBloom(bloom_params(BloomConfig()), store)
    bloom.add_many(np.array([1]), np.array([5]))
    for _ in range(2):  # warm: pointer cache, metadata, script SHA
        store.read("item", ids, ["a", "emb"])
        store.read("user", np.array([1]), ["b"])
        bloom.contains(1, ids)
    sends: list[int] = []
    original = AbstractConnection.send_packed_command

    def counting(self, command, check_health=True):  # a spy: the real send still happens
        sends.append(1)
        return original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    assert store.read("item", ids, ["a", "emb"]).found.all()
    assert len(sends) == 1
    assert store.read("user", np.array([1]), ["b"]).found.all()
    assert len(sends) == 2
    assert bloom.contains(1, ids).sum() >= 1
    assert len(sends) == 3
    store.close()


@pytest.mark.integration
def test_ttl_is_applied(valkey_config: ValkeyOnlineConfig) -> None:
    cfg = valkey_config.model_copy(update={"ttl_s": 100})
    store = ValkeyOnlineStore(cfg)
    store.write("user", np.array([5]), {"x": np.ones(1)}, version="t")
    ttl = store.bulk.ttl(store.row_key("user", 5, "t"))
    assert 0 < ttl <= 100
    assert store.row_key("user", 5, "t") == f"{cfg.key_prefix}:{{user:5}}:r:t"
    store.close()


def test_outage_is_a_typed_error() -> None:
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on `port` any more: every call must fail fast with the typed error.
    store = ValkeyOnlineStore(ValkeyOnlineConfig(url=f"redis://127.0.0.1:{port}/0", timeout_ms=200))
    with pytest.raises(StoreUnavailableError):
        store.health()
    with pytest.raises(StoreUnavailableError):
        store.read("user", np.array([1]), ["x"])
    with pytest.raises(StoreUnavailableError):
        ValkeyBloom(bloom_params(BloomConfig()), store).contains(1, np.arange(3))
    store.close()
