"""Entity and event tables as the offline store keeps them: contract columns checked and typed,
ids and timestamps validated, list-valued genres normalised, with errors naming the source."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from strata.datasets.base import (
    EVENT_TYPES,
    INTERACTION_COLUMNS,
    ITEM_COLUMNS,
    USER_COLUMNS,
    check_columns,
)
from strata.errors import DataError

if TYPE_CHECKING:
    import pandas as pd


EVENT_SQL_TYPES = {
    "event_id": "VARCHAR",
    "user_id": "BIGINT",
    "item_id": "BIGINT",
    "event_type": "VARCHAR",
    "value": "FLOAT",
    "ts": "BIGINT",
    "device": "VARCHAR",
}

USER_SQL_TYPES = {
    "user_id": "BIGINT",
    "age": "SMALLINT",
    "gender": "VARCHAR",
    "occupation": "VARCHAR",
    "zip": "VARCHAR",
}

ITEM_SQL_TYPES = {
    "item_id": "BIGINT",
    "title": "VARCHAR",
    "year": "SMALLINT",
    "genres": "VARCHAR[]",
    "description": "VARCHAR",
    "image_path": "VARCHAR",
    "category": "VARCHAR",
}


def typed_select(relation: str, types: dict[str, str], key: str) -> str:
    """Contract columns cast to their SQL types, extra columns kept as they are, sorted by key."""
    typed = ", ".join(f"CAST({c} AS {t}) AS {c}" for c, t in types.items())
    return f"SELECT {typed}, * EXCLUDE ({', '.join(types)}) FROM {relation} ORDER BY {key}"


def items_arrow(df: pd.DataFrame) -> Any:
    """Items as Arrow with `genres` typed list<string> (pandas object lists can be ambiguous)."""
    import pyarrow as pa

    table = pa.Table.from_pandas(df.drop(columns=["genres"]), preserve_index=False)
    return table.append_column("genres", pa.array(list(df["genres"]), type=pa.list_(pa.string())))


def normalize_users(df: pd.DataFrame, source: str) -> pd.DataFrame:
    check_columns(df, USER_COLUMNS, source)
    out = df.copy()
    if out["user_id"].isna().any():
        raise DataError(source, "user_id has nulls")
    if out["user_id"].duplicated().any():
        raise DataError(source, "duplicate user_id")
    try:
        out["user_id"] = out["user_id"].astype("int64")
        out["age"] = out["age"].fillna(0).astype("int16")
    except (TypeError, ValueError) as exc:
        raise DataError(source, f"user_id/age are not integers ({exc})") from None
    for col in ("gender", "occupation", "zip"):
        out[col] = out[col].fillna("").astype(str)
    return out.reset_index(drop=True)


def normalize_items(df: pd.DataFrame, source: str) -> pd.DataFrame:
    check_columns(df, ITEM_COLUMNS, source)
    out = df.copy()
    if out["item_id"].isna().any():
        raise DataError(source, "item_id has nulls")
    if out["item_id"].duplicated().any():
        raise DataError(source, "duplicate item_id")
    try:
        out["item_id"] = out["item_id"].astype("int64")
        out["year"] = out["year"].astype("Int16")
    except (TypeError, ValueError) as exc:
        raise DataError(source, f"item_id/year are not integers ({exc})") from None

    def as_list(v: object) -> list[str]:
        if v is None or (isinstance(v, float) and v != v):
            return []
        if isinstance(v, str):
            return [g for g in v.split("|") if g]
        try:
            return [str(g) for g in v]  # type: ignore[attr-defined]
        except TypeError:
            raise DataError(source, f"genres must be a list of strings, got {v!r}") from None

    out["genres"] = [as_list(v) for v in out["genres"]]
    if "category" not in out.columns:
        # One categorical per item for "top category": the first genre when none is given.
        out["category"] = [g[0] if g else "" for g in out["genres"]]
    out["category"] = out["category"].fillna("").astype(str)
    out["title"] = out["title"].fillna("").astype(str)
    out["description"] = out["description"].fillna("").astype(str)
    out["image_path"] = out["image_path"].astype(object).where(out["image_path"].notna(), None)
    return out.reset_index(drop=True)


def normalize_events(
    df: pd.DataFrame, source: str, event_types: tuple[str, ...] = EVENT_TYPES
) -> pd.DataFrame:
    """Contract columns only, canonical dtypes, valid values (`event_type` one of
    `event_types`); duplicates within df dropped."""
    import numpy as np
    import pandas as pd

    check_columns(df, INTERACTION_COLUMNS, source)
    out = df.loc[:, list(INTERACTION_COLUMNS)].copy()
    for col in ("event_id", "user_id", "item_id", "ts", "event_type"):
        if out[col].isna().any():
            raise DataError(source, f"{col} has {int(out[col].isna().sum())} nulls")
    try:
        out["user_id"] = out["user_id"].astype(np.int64)
        out["item_id"] = out["item_id"].astype(np.int64)
        out["ts"] = out["ts"].astype(np.int64)
        out["value"] = out["value"].fillna(1.0).astype(np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(source, f"user_id/item_id/ts/value have bad types ({exc})") from None
    if (out["ts"] < 0).any():
        raise DataError(source, "ts has negative values")
    out["event_id"] = out["event_id"].astype(str)
    out["event_type"] = out["event_type"].astype(str)
    bad = ~out["event_type"].isin(event_types)
    if bad.any():
        raise DataError(
            source,
            f"event_type {sorted(set(out.loc[bad, 'event_type']))[:5]} not in {list(event_types)}",
        )
    out["device"] = out["device"].fillna("unknown").astype(str)
    out = out.drop_duplicates("event_id", keep="first")
    out = out.sort_values(["ts", "event_id"], kind="stable").reset_index(drop=True)
    return pd.DataFrame(out)
