"""The typed tables every recommender dataset yields, and their validation.

All loaders (MovieLens, synthetic, ...) return a `RecDataset` with these exact columns, so the
offline store, training and tests never special-case a dataset. Extra columns are allowed and
kept (e.g. `price`, `description`, `device_habit`), required ones are checked with a clear error.

Column contract (dtype in brackets):
- users:        user_id [int64], age [int16], gender [str], occupation [str], zip [str]
- items:        item_id [int64], title [str], year [Int16, nullable], genres [list<str>],
                description [str, may be empty], image_path [str, nullable]
- interactions: event_id [str], user_id [int64], item_id [int64], event_type [str, one of the
                dataset's `event_types`; built-ins: rating|view|click|purchase], value [float32;
                the rating, or 1.0], ts [int64, unix seconds], device [str: e.g. mobile|desktop|
                tv|unknown]

A dataset declared by its owner (`strata data add`, `spec.py`) keeps the owner's ids in an
`external_id` [str] column of users and items (the int64 ids are dense, assigned at load), its
declared numeric attributes as `num_<name>` [float64] columns, and its categoricals as
`attr=value` tags in `genres` (items) or in `gender`/`occupation` (users).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from strata.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

USER_COLUMNS = ("user_id", "age", "gender", "occupation", "zip")
ITEM_COLUMNS = ("item_id", "title", "year", "genres", "description", "image_path")
INTERACTION_COLUMNS = ("event_id", "user_id", "item_id", "event_type", "value", "ts", "device")
#: Event types of the built-in datasets; a declared dataset names its own (`spec.py`).
EVENT_TYPES = ("rating", "view", "click", "purchase")
#: What an event type may look like: it becomes part of a feature column name (user_n_<type>).
EVENT_TYPE_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
DEVICES = ("mobile", "desktop", "tv", "unknown")


@dataclass(frozen=True)
class RecDataset:
    """A recommender dataset as three pandas tables that follow the column contract above."""

    name: str
    users: pd.DataFrame
    items: pd.DataFrame
    interactions: pd.DataFrame
    #: The event types the log may hold (each gets a per-user count feature).
    event_types: tuple[str, ...] = EVENT_TYPES
    #: Event type -> training weight of the types that are positives; None = every event, 1.0.
    positives: dict[str, float] | None = None
    #: IANA time zone of the hour / day-of-week context.
    timezone: str = "UTC"
    #: Declared item attributes whose values are `attr=value` tags in items.genres.
    item_attributes: tuple[str, ...] = ()

    def declared(self) -> dict[str, object]:
        """What the offline store keeps about the log (`dataset.json`)."""
        return {
            "event_types": list(self.event_types),
            "positives": self.positives,
            "timezone": self.timezone,
            "item_attributes": list(self.item_attributes),
        }

    def summary(self) -> dict[str, int]:
        """Row counts, as printed by `strata data info NAME --json`."""
        return {
            "users": len(self.users),
            "items": len(self.items),
            "interactions": len(self.interactions),
        }


def check_columns(df: pd.DataFrame, required: tuple[str, ...], source: object) -> None:
    """Raise `DataError` naming `source` when `df` lacks any of `required`."""
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(source, f"missing columns {missing}; have {list(df.columns)}")


def validate(ds: RecDataset) -> RecDataset:
    """Check the column contract and referential integrity; return `ds` unchanged when valid."""
    check_columns(ds.users, USER_COLUMNS, f"{ds.name}:users")
    check_columns(ds.items, ITEM_COLUMNS, f"{ds.name}:items")
    check_columns(ds.interactions, INTERACTION_COLUMNS, f"{ds.name}:interactions")
    if ds.users["user_id"].duplicated().any():
        raise DataError(f"{ds.name}:users", "duplicate user_id")
    if ds.items["item_id"].duplicated().any():
        raise DataError(f"{ds.name}:items", "duplicate item_id")
    inter = ds.interactions
    unknown_users = ~inter["user_id"].isin(ds.users["user_id"])
    if unknown_users.any():
        raise DataError(
            f"{ds.name}:interactions",
            f"{int(unknown_users.sum())} rows reference unknown user_id",
        )
    unknown_items = ~inter["item_id"].isin(ds.items["item_id"])
    if unknown_items.any():
        raise DataError(
            f"{ds.name}:interactions",
            f"{int(unknown_items.sum())} rows reference unknown item_id",
        )
    return ds
