"""What a serving process holds of a model version's catalogue and users, in NumPy arrays: item
ids and genres with the online item features cached whole (`CatalogCache`), and the engine's
item inputs with live popularity from that cache (`LiveItems`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from strata.engine.recommend import VersionItems
from strata.errors import DataError, ValidationError

if TYPE_CHECKING:
    from strata.features.online import FeatureRows
    from strata.models.batch import ItemFeatures
    from strata.models.space import FeatureSpace
    from strata.serving.online import OnlineLink

log = logging.getLogger(__name__)
_CATALOG_CHUNK = 5000  # rows per store read when the catalog cache reloads item features


class ItemCategories(Mapping[int, int]):
    """Item id -> primary genre index as a read-only mapping over sorted arrays (no 1M-key dict);
    handed to `EventIngestor` for the users' top-category counters."""

    def __init__(self, item_ids: np.ndarray, genre: np.ndarray) -> None:
        self._ids, self._genre = item_ids, genre

    def __getitem__(self, key: int) -> int:
        pos = int(np.searchsorted(self._ids, key))
        if pos >= len(self._ids) or self._ids[pos] != key or self._genre[pos] < 0:
            raise KeyError(key)
        return int(self._genre[pos])

    def __iter__(self) -> Iterator[int]:
        return iter(self._ids[self._genre >= 0].tolist())

    def __len__(self) -> int:
        return int((self._genre >= 0).sum())


class CatalogCache:
    """In-process item catalog: the version's item ids and genres, plus the online store's item
    features cached whole (popularity feeds the ranker; the rest answers GET /items) and reloaded
    when the store's item feature version changes."""

    def __init__(self, space: FeatureSpace, link: OnlineLink) -> None:
        self.item_ids = space.item_ids  # sorted
        self.genre_names: list[str] = list(space.meta["genres"])
        mh = space.t["genres"][1:]  # (I, G) multi-hot; row r = item_ids[r]
        self.primary_genre = np.where(mh.sum(1) > 0, mh.argmax(1), -1).astype(np.int64)
        self._mh = mh
        self._link = link
        # (version, found (I,), {feature: (I,) values}) swapped as one tuple: readers never mix.
        self._online: tuple[str | None, np.ndarray, dict[str, np.ndarray]] = (
            None,
            np.zeros(len(self.item_ids), bool),
            {},
        )
        self._refresh_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def feature_version(self) -> str | None:
        """The online item feature version held in the cache (None before the first load)."""
        return self._online[0]

    def positions(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row of each id in `item_ids` order and whether it is in the catalog."""
        ids = np.asarray(item_ids, dtype=np.int64)
        if not len(self.item_ids):
            return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
        pos = np.minimum(np.searchsorted(self.item_ids, ids), len(self.item_ids) - 1)
        return pos, self.item_ids[pos] == ids

    def categories(self) -> ItemCategories:
        """Item -> primary genre mapping for event ingestion."""
        return ItemCategories(self.item_ids, self.primary_genre)

    def popularity(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Live `item_n_events` of catalog rows `pos` and where the store had them (or None)."""
        _, found, table = self._online
        pop = table.get("item_n_events")
        if pop is None:
            return None
        return pop[pos], found[pos]

    def refresh(self) -> bool:
        """Reload the online item features if their active version changed; True if reloaded."""
        store, breaker = self._link.store, self._link.breaker
        with self._refresh_lock:
            version = breaker.call(store.active_version, "item")
            self._link.versions.seen("item", version)  # a version gone since the last poll: lost
            if version == self._online[0]:
                return False
            if version is None or not len(self.item_ids):
                self._online = (version, np.zeros(len(self.item_ids), bool), {})
                return True
            from strata.features.schema import ITEM_FEATURES

            names = list(self._read_known([f.name for f in ITEM_FEATURES]).values)
            parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
            found: list[np.ndarray] = []
            for start in range(0, len(self.item_ids), _CATALOG_CHUNK):
                chunk = self.item_ids[start : start + _CATALOG_CHUNK]
                rows = breaker.call(store.read, "item", chunk, names)
                if rows.version != version:  # switched mid-reload: the next poll redoes it
                    return False
                found.append(rows.found)
                for n in names:
                    parts[n].append(rows.values[n])
            table = {n: np.concatenate(v) for n, v in parts.items()}
            self._online = (version, np.concatenate(found), table)
            log.info("catalog cache: item features %s (%d items)", version, int(found[0].size))
            return True

    def _read_known(self, names: list[str]) -> FeatureRows:
        """Read one row with `names`, dropping features the stored version does not have."""
        store, breaker = self._link.store, self._link.breaker
        probe = self.item_ids[:1]
        for _ in range(len(names) + 1):
            try:
                return breaker.call(store.read, "item", probe, names)
            except ValidationError as exc:
                if exc.field not in names:
                    raise
                names = [n for n in names if n != exc.field]
        raise DataError("item", "no readable item features in the online store")

    def item(self, item_id: int) -> dict[str, Any] | None:
        """Everything the service knows about one item, or None when it is not in the catalog."""
        pos, found = self.positions(np.array([item_id]))
        if not found[0]:
            return None
        r = int(pos[0])
        version, have, table = self._online
        features = {n: _jsonable(v[r]) for n, v in table.items()} if have[r] else {}
        return {
            "item_id": int(item_id),
            "genres": [self.genre_names[g] for g in np.flatnonzero(self._mh[r])],
            "features": features,
            "feature_version": version,
        }


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


class LiveItems(VersionItems):
    """The engine's `ItemSource` in a serving process: the version's item table with the
    catalogue cache's live popularity where the online store has it (as of the training cut
    otherwise)."""

    def __init__(self, space: FeatureSpace, catalog: CatalogCache) -> None:
        super().__init__(space)
        self.catalog = catalog

    def features(self, item_ids: np.ndarray) -> ItemFeatures:
        from strata.models.space import POP_COL, log_count

        pos, found = self.catalog.positions(item_ids)
        rows = np.where(found, pos + 1, 0)
        items = self.space.items(rows)
        live = self.catalog.popularity(pos)
        if live is not None:
            pop, have = live
            have = have & (rows > 0)
            if have.any():
                num = items.item_num.copy()
                num[have, POP_COL] = log_count(pop[have])
                items = replace(items, item_num=num)
        return items
