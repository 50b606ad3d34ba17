"""Sharded training input of the recommender (`training.shard_input` in a multi-rank run).

Rank 0 streams the point-in-time training set once into a Parquet file beside the dataset in the
offline store (a local folder or `s3://`, so ranks on other nodes read it too). Every rank then
reads only its shard, the rows whose `hash(user_id) % world` is its rank: a user's events stay
on one rank, so the ranker's filter of items the user already saw stays exact. What the model
needs of the whole set (ids known to training, the largest |value|, item counts for logQ, the
time quantiles of the popularity snapshots, the seen pairs the version ships) comes from
aggregate queries over the file, run once by rank 0 and sent to the others, so no rank holds
every row; rank 0 alone keeps the (user, item) pairs the version's seen filter is built from.
The file is removed once every rank has read.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from strata.features.parquet_files import sql_quote

if TYPE_CHECKING:
    import duckdb
    import pandas as pd

    from strata.features.offline import OfflineStore
    from strata.training.distributed import Dist

#: Points of the time-quantile grid the popularity snapshot times are chosen from.
TS_GRID = 257


@dataclass(frozen=True)
class ShardTotals:
    """What a rank knows of the whole training set when its rows are one shard."""

    rows: int  # rows over all shards
    user_ids: np.ndarray  # (U,) int64 sorted users with a training row
    item_ids: np.ndarray  # (I,) int64 sorted items with a training row
    item_counts: np.ndarray  # (I,) int64 training rows per item of `item_ids`
    max_abs_value: float
    min_ts: int
    max_ts: int
    ts_grid: np.ndarray  # (TS_GRID,) int64 quantiles of the row times (first = min)
    # (R, 2) int64 (user, item) of every row, held by rank 0 only (the version's seen filter)
    pairs: np.ndarray | None = None
    shard_rows: tuple[int, ...] = ()  # rows of each rank's shard, in rank order

    def known(self) -> dict[str, pd.Series]:
        """The columns `FeatureSpace.fit` reads of the training events (ids seen, |value|)."""
        import pandas as pd

        return {
            "user_id": pd.Series(self.user_ids),
            "item_id": pd.Series(self.item_ids),
            "value": pd.Series([self.max_abs_value]),
        }


class TrainingExport:
    """One training set in one Parquet file of the offline store, read in shards."""

    def __init__(self, store: OfflineStore, dataset: str, uri: str) -> None:
        self.store, self.dataset, self.uri = store, dataset, uri

    @classmethod
    def write(cls, store: OfflineStore, dataset: str, until: int | None) -> TrainingExport:
        """Rank 0: stream the training set before `until` to a new file (bounded memory)."""
        uri = f"{store.dataset_uri(dataset)}/training_sets/{uuid.uuid4().hex}.parquet"
        store.export_training_set(dataset, uri, until=until)
        return cls(store, dataset, uri)

    def _run(self, sql: str, what: str) -> pd.DataFrame:
        def run(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
            return con.execute(sql).df()

        out: pd.DataFrame = self.store._query(run, self.dataset, what)
        return out

    def _rows(self, event_types: Sequence[str] | None, extra: str = "") -> str:
        where = [extra] if extra else []
        if event_types:
            where.append(f"event_type IN ({', '.join(sql_quote(t) for t in event_types)})")
        cond = f" WHERE {' AND '.join(where)}" if where else ""
        return f"SELECT * FROM read_parquet({sql_quote(self.uri)}){cond}"

    def shard(self, dist: Dist, event_types: Sequence[str] | None) -> pd.DataFrame:
        """This rank's rows (`hash(user_id) % world == rank`), in the training set's order."""
        cond = f"hash(user_id) % {int(dist.world)} = {int(dist.rank)}"
        sql = f"{self._rows(event_types, cond)} ORDER BY ts, event_id"
        return self._run(sql, "training shard").reset_index(drop=True)

    def totals(self, event_types: Sequence[str] | None, pairs: bool) -> ShardTotals:
        """Aggregates of the whole file (rows of `event_types` only, when given); `pairs`: also
        every row's (user, item)."""
        rows = f"({self._rows(event_types)})"
        grid = ", ".join(f"{k / (TS_GRID - 1)!r}" for k in range(TS_GRID))
        head = self._run(
            f"SELECT count(*) AS n, min(ts) AS lo, max(ts) AS hi, max(abs(value)) AS v, "
            f"quantile_disc(ts, [{grid}]) AS q FROM {rows}",
            "training totals",
        ).iloc[0]
        users = self._run(f"SELECT DISTINCT user_id FROM {rows} ORDER BY 1", "training users")
        items = self._run(
            f"SELECT item_id, count(*) AS n FROM {rows} GROUP BY 1 ORDER BY 1", "training items"
        )
        n = int(head["n"])
        both = None
        if pairs:
            both = self._run(f"SELECT user_id, item_id FROM {rows}", "training pairs")
        return ShardTotals(
            rows=n,
            user_ids=users["user_id"].to_numpy(np.int64),
            item_ids=items["item_id"].to_numpy(np.int64),
            item_counts=items["n"].to_numpy(np.int64),
            max_abs_value=float(head["v"]) if n else 1.0,
            min_ts=int(head["lo"]) if n else 0,
            max_ts=int(head["hi"]) if n else 0,
            ts_grid=np.asarray(head["q"] if n else [], np.int64),
            pairs=None if both is None else both.to_numpy(np.int64),
        )

    def remove(self) -> None:
        """Delete the file (locally; an S3 export is left to the bucket's lifecycle rule)."""
        if not self.uri.startswith("s3://"):
            Path(self.uri).unlink(missing_ok=True)
