"""The owner's ids of a declared dataset (`datasets.spec_load`) at the edges of the system.

Inside, users and items are dense int64 ids; a dataset registered with `strata data add` keeps
the owner's ids (strings such as `SKU-000123`, or integers) in the version's feature space, and
the HTTP API and the CLI speak them: `IdMap` turns a request's user id into the dense one and a
result's item ids back into the owner's.

A user id the version has never seen (a customer who signed up after training) maps to a dense
id in a reserved range, derived from the id's bytes alone, so every replica, the event path and
`/recommend` agree on it without shared state: its events build online features and fill the
Bloom filter under that id, and its requests read them. Unknown item ids are an error: items
enter through the catalogue.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

from strata.errors import ValidationError

if TYPE_CHECKING:
    from strata.models.space import FeatureSpace

#: Dense ids of users the version does not know start here (far above any catalogue size).
NEW_USER_BASE = 1 << 40
MAX_ID_LENGTH = 256


def new_user_id(external: str) -> int:
    """The dense id of a user unknown to the version: NEW_USER_BASE + 40 bits of a hash."""
    digest = hashlib.blake2b(external.encode("utf-8"), digest_size=8).digest()
    return NEW_USER_BASE + int.from_bytes(digest, "big") % NEW_USER_BASE


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
        text = _text(external, field)
        return self._user_dense.get(text) or new_user_id(text)

    def item(self, external: object, field: str = "item_id") -> int:
        """The dense id of an owner's item id; ValidationError naming `field` when unknown."""
        text = _text(external, field)
        dense = self._item_dense.get(text)
        if dense is None:
            raise ValidationError(field, f"unknown item {text!r}")
        return dense

    def items_external(self, dense: np.ndarray) -> list[str]:
        """Owner ids of dense item ids (every id must be in the catalogue)."""
        rows, _ = self._space.item_rows(np.asarray(dense, np.int64))
        return self._item_external[rows].tolist()


def _text(value: object, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValidationError(field, "expected a string or an integer id")
    text = str(value)
    if not text or len(text) > MAX_ID_LENGTH:
        raise ValidationError(field, f"must be 1..{MAX_ID_LENGTH} characters")
    return text
