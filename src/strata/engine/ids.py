"""The owner's ids of a declared dataset (`datasets.spec_load`) at the edges of the system.

Inside, users and items are dense int64 ids; a dataset registered with `strata data add` keeps
the owner's ids (strings such as `SKU-000123`, or integers) in the version's feature space, and
the HTTP API and the CLI speak them: `IdMap` turns a request's user id into the dense one and a
result's item ids back into the owner's.

A user id the version has never seen (a customer who signed up after training) maps to a dense
id in a reserved range, derived from the id's bytes alone, so every replica, the event path and
`/recommend` agree on it without shared state: its events build online features and fill the
Bloom filter under that id, and its requests read them. Unknown item ids are an error: items
enter through the catalogue. An item added live (`POST /items`) gets its dense id the same way,
from its own id's bytes (`new_item_id`, another reserved range), so every replica, the live log
and the next training agree on it without allocating anything.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

from strata.errors import ValidationError

if TYPE_CHECKING:
    from strata.models.space import FeatureSpace

#: Dense ids of users the version does not know start here (far above any catalogue size);
#: those of items added live to a declared dataset start at NEW_ITEM_BASE. Each range is 2^40.
NEW_USER_BASE = 1 << 40
NEW_ITEM_BASE = 1 << 42
MAX_ID_LENGTH = 256


def _hashed(base: int, external: str) -> int:
    digest = hashlib.blake2b(external.encode("utf-8"), digest_size=8).digest()
    return base + int.from_bytes(digest, "big") % (1 << 40)


def new_user_id(external: str) -> int:
    """The dense id of a user unknown to the version: NEW_USER_BASE + 40 bits of a hash."""
    return _hashed(NEW_USER_BASE, external)


def new_item_id(external: str) -> int:
    """The dense id of an item added live: NEW_ITEM_BASE + 40 bits of a hash (two live ids
    sharing one, about n^2 / 2^41 for n live items, are refused at the second add)."""
    return _hashed(NEW_ITEM_BASE, external)


class IdMap:
    """Owner ids <-> dense ids of one version (`FeatureSpace.meta` user_external/item_external)."""

    def __init__(self, space: FeatureSpace) -> None:
        # Built once when the version loads (not on a first request): 1M ids take ~0.3 s.
        self._space = space
        users: list[str] = list(space.meta["user_external"])
        items: list[str] = list(space.meta["item_external"])
        self._user_dense = dict(zip(users, space.user_ids.tolist(), strict=True))
        self._item_dense = dict(zip(items, space.item_ids.tolist(), strict=True))
        # row r + 1 of the item table = item_ids[r]; row 0 for padding ids (-1)
        self._item_external = np.array(["", *items], dtype=object)

    @staticmethod
    def of(space: FeatureSpace) -> IdMap | None:
        """The map of a version trained on a declared dataset; None for the built-in datasets
        (their ids are the integers they ship with)."""
        return IdMap(space) if "item_external" in space.meta else None

    def user(self, external: object, field: str = "user_id") -> int:
        """The dense id of an owner's user id (a reserved-range id for users never seen)."""
        text = owner_id(external, field)
        return self._user_dense.get(text) or new_user_id(text)

    def item(self, external: object, field: str = "item_id") -> int:
        """The dense id of an owner's item id; ValidationError naming `field` when unknown."""
        text = owner_id(external, field)
        dense = self._item_dense.get(text)
        if dense is None:
            raise ValidationError(field, f"unknown item {text!r}")
        return dense

    def has_item(self, external: object, field: str = "item_id") -> bool:
        """Whether the owner's item id is in this catalogue (ValidationError for a bad id)."""
        return owner_id(external, field) in self._item_dense

    def items_external(self, dense: np.ndarray) -> list[str]:
        """Owner ids of dense item ids (every id must be in the catalogue)."""
        rows, _ = self._space.item_rows(np.asarray(dense, np.int64))
        return self._item_external[rows].tolist()


def owner_id(value: object, field: str) -> str:
    """An owner's id as text (str or int, 1..256 characters); ValidationError naming `field`."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValidationError(field, "expected a string or an integer id")
    text = str(value)
    if not text or len(text) > MAX_ID_LENGTH:
        raise ValidationError(field, f"must be 1..{MAX_ID_LENGTH} characters")
    return text
