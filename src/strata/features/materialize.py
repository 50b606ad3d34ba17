"""Materialization: latest offline features -> online store, as a new version switched atomically.

The version name is a content hash of the table, so running it again on unchanged data is a no-op
(idempotent) and a run that crashed half way simply rewrites the same version before switching.
Readers keep reading the previous version until the single `activate` call; the store keeps the
two newest versions so a reader that fetched the old pointer still finds whole rows.

Column mapping (offline -> online): numeric scalars and bools as numbers; strings as strings;
fixed-length float lists (embeddings) as packed float32 vectors; integer lists (e.g. recent items)
as int64 vectors padded with -1 to the longest; string lists (genres) as one `|`-joined string.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.progress import TaskID

from strata.errors import DataError
from strata.features.online import OnlineStore, open_online_store
from strata.progress import task

if TYPE_CHECKING:
    import pandas as pd

    from strata.config import Settings

BATCH_ROWS = 5000


def table_version(df: pd.DataFrame) -> str:
    """A short content hash of a feature table (Arrow IPC bytes): same data, same version."""
    import pyarrow as pa

    table = pa.Table.from_pandas(df, preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return "v" + hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:16]


def _list_column(name: str, values: list[Any]) -> np.ndarray:
    items = [np.asarray(v) if v is not None else np.zeros(0) for v in values]
    kinds = {a.dtype.kind for a in items if a.size}
    if kinds <= {"U", "S", "O"} and kinds:
        return np.array(["|".join(map(str, a.tolist())) for a in items], dtype=object)
    if not kinds:
        return np.zeros((len(items), 1), dtype=np.int64) - 1
    if kinds <= {"i", "u"}:
        width = max(1, max(a.size for a in items))
        out = np.full((len(items), width), -1, dtype=np.int64)
        for row, a in enumerate(items):
            out[row, : a.size] = a
        return out
    sizes = {a.size for a in items}
    if len(sizes) != 1:
        raise DataError(name, f"vector feature has rows of different lengths {sorted(sizes)[:5]}")
    return np.stack(items).astype(np.float32)


def online_columns(df: pd.DataFrame, key: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Split a feature table into its int64 keys and store-ready columns (see module docstring)."""
    if key not in df.columns:
        raise DataError(key, f"feature table lacks its key column; have {list(df.columns)}")
    ids = df[key].to_numpy(dtype=np.int64)
    cols: dict[str, np.ndarray] = {}
    for name in df.columns:
        if name == key:
            continue
        s = df[name]
        numpy_dtype = getattr(s.dtype, "numpy_dtype", None)
        if numpy_dtype is not None and numpy_dtype.kind in "biuf":
            # Nullable extension numbers (e.g. Int16 year): nulls become 0, the schema's default.
            cols[name] = s.fillna(0).to_numpy(dtype=numpy_dtype)
        elif s.dtype.kind in "biuf":
            cols[name] = s.to_numpy()
        elif s.dtype.kind == "O" and len(s) and not isinstance(s.iloc[0], str | type(None)):
            cols[name] = _list_column(name, s.tolist())
        else:
            cols[name] = s.fillna("").astype(str).to_numpy(dtype=object)
    return ids, cols


def materialize_frame(
    store: OnlineStore,
    entity: str,
    df: pd.DataFrame,
    key: str,
    batch_rows: int = BATCH_ROWS,
    version: str | None = None,
) -> dict[str, Any]:
    """Write `df` as a new version of `entity` in batches, then switch to it atomically."""
    ver = version or table_version(df)
    if store.active_version(entity) == ver:
        return {"version": ver, "rows": len(df), "skipped": True}
    ids, cols = online_columns(df, key)
    with task(f"materialize {entity}", total=len(ids)) as (bar, tid):
        for start in range(0, len(ids), batch_rows):
            sl = slice(start, start + batch_rows)
            store.write(entity, ids[sl], {n: c[sl] for n, c in cols.items()}, version=ver)
            bar.advance(TaskID(tid), len(ids[sl]))
    store.activate(entity, ver)
    return {"version": ver, "rows": len(df), "skipped": False}


def materialize(
    settings: Settings,
    dataset: str,
    store: OnlineStore | None = None,
    users: pd.DataFrame | None = None,
    items: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Latest user and item features of `dataset` (offline store unless given) -> online store."""
    from strata.features.schema import ITEM_KEY, USER_KEY

    online = store if store is not None else open_online_store(settings.online)
    if users is None or items is None:
        from strata.features.offline import OfflineStore

        offline = OfflineStore(settings)
        users = offline.latest_user_features(dataset) if users is None else users
        items = offline.latest_item_features(dataset) if items is None else items
    return {
        "dataset": dataset,
        "user": materialize_frame(online, "user", users, USER_KEY),
        "item": materialize_frame(online, "item", items, ITEM_KEY),
    }
