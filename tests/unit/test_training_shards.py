"""Sharded training input (`training.shard_input`): the exported training set splits into
per-rank shards that cover every row once and keep each user on one rank, and the whole-set
totals give the same feature space and logQ as reading every row."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from strata.features.offline import OfflineStore, ingest_dataset
from strata.models.space import FeatureSpace
from strata.training.data import positive_rows, retrieval_data
from strata.training.distributed import Dist
from strata.training.loops import epoch_order
from strata.training.shards import TS_GRID, TrainingExport
from tests.unit.tiny_world import fast_settings, tiny_dataset


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[OfflineStore, pd.DataFrame, int]:
    store = OfflineStore(fast_settings(tmp_path_factory.mktemp("home")))
    ds = tiny_dataset(n_users=40, n_events=800)
    ingest_dataset(store, ds)
    ts = np.sort(ds.interactions["ts"].to_numpy())
    until = int(ts[int(len(ts) * 0.8)])
    return store, store.training_set("tiny", until=until), until


@contextmanager
def _export(store: OfflineStore, until: int) -> Iterator[TrainingExport]:
    export = TrainingExport.write(store, "tiny", until)
    try:
        yield export
    finally:
        export.remove()


def test_shards_cover_every_row_once_and_keep_users_together(
    world: tuple[OfflineStore, pd.DataFrame, int],
) -> None:
    store, full, until = world
    with _export(store, until) as export:
        shards = [export.shard(Dist(r, 3), None) for r in range(3)]
    assert not Path(export.uri).exists()
    assert all(len(s) > 0 for s in shards)  # 40 users hash onto all three ranks
    both = pd.concat(shards).sort_values(["ts", "event_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(both, full.reset_index(drop=True))  # same rows, same features
    users = [set(s["user_id"]) for s in shards]
    assert not (users[0] & users[1]) and not (users[0] & users[2]) and not (users[1] & users[2])
    for s in shards:  # each shard in the training set's own order
        order = s.sort_values(["ts", "event_id"]).index
        assert list(order) == list(s.index)


def test_totals_fit_the_space_and_logq_of_all_rows(
    world: tuple[OfflineStore, pd.DataFrame, int],
) -> None:
    store, full, until = world
    with _export(store, until) as export:
        tot = export.totals(None, pairs=True)
        shard = positive_rows(export.shard(Dist(1, 2), None), None)
        typed = export.totals(["purchase"], pairs=False)  # no such rows: a filter that bites
    assert tot.rows == len(full) and typed.rows == 0 and typed.pairs is None
    assert tot.min_ts == full["ts"].min() and tot.max_ts == full["ts"].max()
    assert len(tot.ts_grid) == TS_GRID and tot.ts_grid[0] == tot.min_ts
    assert tot.ts_grid[-1] == tot.max_ts and np.all(np.diff(tot.ts_grid) >= 0)
    assert tot.pairs is not None
    assert sorted(map(tuple, tot.pairs.tolist())) == sorted(
        zip(full["user_id"], full["item_id"], strict=True)
    )
    users, items = store.users("tiny"), store.items("tiny")
    ref = FeatureSpace.fit(users, items, full)
    got = FeatureSpace.fit(users, items, tot.known())
    assert got.meta == ref.meta  # catalogue and value scale
    for key in ref.t:  # the same ids are known (user_idx, item_idx), every table the same
        assert np.array_equal(got.t[key], ref.t[key], equal_nan=True), key
    # the shard alone knows only its own users: the totals are what makes the spaces agree
    alone = FeatureSpace.fit(users, items, shard)
    assert not np.array_equal(alone.t["user_idx"], ref.t["user_idx"])
    # logQ of a shard's rows is the whole set's item frequency, not the shard's own
    rows = positive_rows(full, None)
    want = retrieval_data(ref, rows)
    mine = rows["event_id"].isin(shard["event_id"]).to_numpy()
    have = retrieval_data(ref, shard, tot)
    assert np.allclose(have.log_q, want.log_q[mine])
    assert not np.allclose(retrieval_data(ref, shard).log_q, want.log_q[mine])


def test_an_epoch_of_sharded_input_takes_the_asked_steps_of_full_batches() -> None:
    """A shard smaller than the epoch repeats rows (each at most once more than any other), a
    larger one leaves a surplus out; without steps an epoch is one permutation."""
    rng = np.random.default_rng(0)
    small = epoch_order(rng, 10, steps=4, batch_size=4)  # 16 rows from 10
    assert len(small) == 16 and set(small.tolist()) == set(range(10))
    counts = np.bincount(small, minlength=10)
    assert counts.min() == 1 and counts.max() == 2
    large = epoch_order(rng, 50, steps=4, batch_size=4)  # 16 of 50, none twice
    assert len(large) == 16 and len(set(large.tolist())) == 16
    assert sorted(epoch_order(rng, 7, None, 4).tolist()) == list(range(7))
    # a sharded rank's batch is all of its own rows, not a slice
    rows = Dist(1, 2, sharded=True).rows(8)
    assert rows is not None and rows.tolist() == list(range(8))
    sliced = Dist(1, 2).rows(8)
    assert sliced is not None and sliced.tolist() == [4, 5, 6, 7]
