"""The live catalogue on top of a serving version (`LiveOverlay`): items added after training
enter the version's feature space (`strata.models.space_extend`), get content vectors from the
same encoders as training and an item-tower vector from the version's own weights, and are
searched next to the version's ANN index (`LiveRetriever`); retired items are never retrieved.

Every replica builds its overlay from the durable log on the shared storage
(`strata.features.live_items.LiveCatalogue`), so none keeps state another needs: the replica
that takes a change builds the new overlay first (so a bad item changes nothing), appends the
record, swaps its pipeline and signals; the others rebuild when the log's revision moves.

Live items are searched exactly (a brute-force pass over L vectors, ~0.1 ms per thousand at
D = 64) and merged with the version's index results, instead of being inserted into the FAISS
index: the index stays immutable and shared by in-flight requests (FAISS adds are not safe
under concurrent search), flat and IVF alike, and the next training folds the items into a
rebuilt index.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from strata.engine.stages import ExactIndex, Retriever
from strata.errors import ValidationError
from strata.features.live_items import LiveCatalogue, LiveItem, Op

if TYPE_CHECKING:
    import pandas as pd

    from strata.config import Settings
    from strata.engine.version import ModelVersion
    from strata.models.space import FeatureSpace
    from strata.models.two_tower import TwoTower


class LiveRetriever:
    """The version's index plus exact search over the live items, retired ids removed."""

    def __init__(self, base: Retriever, live: ExactIndex | None, retired: np.ndarray) -> None:
        self.base = base
        self.live = live
        self.retired = np.asarray(sorted(retired), np.int64)

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-`n` over both, best first; -1 / -inf pad as every stage does."""
        ids, sc = self.base.search(queries, n + len(self.retired))  # room for the dropped
        if self.live is not None and len(self.live):
            lids, lsc = self.live.search(queries, min(n, len(self.live)))
            ids, sc = np.hstack([ids, lids]), np.hstack([sc, lsc])
        if len(self.retired):
            gone = np.isin(ids, self.retired)
            ids, sc = np.where(gone, -1, ids), np.where(gone, -np.inf, sc).astype(np.float32)
        order = np.argsort(-sc, axis=1, kind="stable")[:, :n]
        ids, sc = np.take_along_axis(ids, order, 1), np.take_along_axis(sc, order, 1)
        if ids.shape[1] < n:  # fewer items than asked: pad
            pad = n - ids.shape[1]
            ids = np.hstack([ids, np.full((len(ids), pad), -1, np.int64)])
            sc = np.hstack([sc, np.full((len(sc), pad), -np.inf, np.float32)])
        return ids, sc


@dataclass(frozen=True)
class LiveOverlay:
    """A version's live items: the extended space, their ids and item-tower vectors (sorted by
    id), the ids retired (never recommended), and the log revision it was built from."""

    revision: int
    space: FeatureSpace
    ids: np.ndarray  # (L,) int64
    emb: np.ndarray  # (L, D) float32
    retired: np.ndarray  # (R,) int64
    items: dict[int, LiveItem]

    def retriever(self, base: Retriever) -> LiveRetriever:
        """`base` with the live items searched next to it."""
        live = ExactIndex(self.ids, self.emb) if len(self.ids) else None
        return LiveRetriever(base, live, self.retired)

    def embeddings(self, item_ids: np.ndarray, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The version's (ids, vectors) with the live ones merged in, sorted by id."""
        ids = np.concatenate([np.asarray(item_ids, np.int64), self.ids])
        order = np.argsort(ids, kind="stable")
        return ids[order], np.concatenate([emb, self.emb.astype(emb.dtype)])[order]


class ItemEmbedder:
    """The version's item tower (loaded once, on the first live item) and, for a version
    trained with content, the content encoders training used."""

    def __init__(self, settings: Settings, mv: ModelVersion) -> None:
        self.settings, self.mv = settings, mv
        self._tower: TwoTower | None = None
        self._encoders: tuple[Any, Any] | None = None

    def content(self, items: pd.DataFrame) -> pd.DataFrame | None:
        """Text and image vectors of `items` (item_id, title, year, genres, description,
        image_path), None for a version trained without content."""
        if not self.mv.space.meta.get("has_content"):
            return None
        from strata.features.content import encode_item_content

        if self._encoders is None:  # loaded once per version (each is a model session)
            from strata.models.encoders import ImageEncoder, TextEncoder
            from strata.training.content import content_cache_dir

            cache = content_cache_dir(self.settings)
            self._encoders = (TextEncoder(cache), ImageEncoder(cache))
        return encode_item_content(items, *self._encoders)

    def vectors(self, space: FeatureSpace, ids: np.ndarray) -> np.ndarray:
        """Item-tower vectors (L, D) of `ids` from the extended `space`."""
        from strata.models.infer import embed_items

        if self._tower is None:
            self._tower = self.mv.torch_models()[0]
        rows, _ = space.item_rows(ids)
        return embed_items(self._tower, space.items(rows))


def build_overlay(
    settings: Settings,
    mv: ModelVersion,
    embedder: ItemEmbedder,
    pending: tuple[str, int, LiveItem | None] | None = None,
) -> LiveOverlay:
    """The overlay of the live log (plus one `pending` (op, id, item) not yet appended, so it is
    validated against the version before anything is written). Items the version already has
    in its catalogue (a later training included them) are served from the version itself."""
    from strata.models.space_extend import extend_items

    catalogue = LiveCatalogue(settings, mv.dataset)
    revision = catalogue.revision
    items, retired = catalogue.state()
    if pending is not None:
        op, iid, item = pending
        if op == "retire":
            retired.add(iid)
        else:
            assert item is not None
            items[iid] = item
            retired.discard(iid)
    new = {i: it for i, it in items.items() if not _in_version(mv, i)}
    if new:
        df = catalogue.frame(new)
        space = extend_items(mv.space, df, embedder.content(df), mv.as_of)
        ids = df["item_id"].to_numpy(np.int64)
        emb = embedder.vectors(space, ids)
    else:
        space, ids = mv.space, np.zeros(0, np.int64)
        emb = np.zeros((0, mv.item_embeddings.shape[1]), np.float32)
    return LiveOverlay(revision, space, ids, emb, np.asarray(sorted(retired), np.int64), items)


def _in_version(mv: ModelVersion, item_id: int) -> bool:
    ids = mv.space.item_ids
    pos = int(np.searchsorted(ids, item_id))
    return pos < len(ids) and int(ids[pos]) == item_id


def describe(overlay: LiveOverlay | None, item_id: int) -> dict[str, Any] | None:
    """A live item's stored description (None when it is not a live item)."""
    if overlay is None or item_id not in overlay.items:
        return None
    it = overlay.items[item_id]
    return {
        **it.model_dump(mode="json"),
        "live": True,
        "retired": bool(np.isin(item_id, overlay.retired)),
    }


def resolve_item(space: FeatureSpace, raw: object) -> tuple[int, str | None]:
    """The dense id of an item id from outside, and the owner's id. A dataset of integer ids
    takes an integer in 0..2^63-1 (or its decimal text, from a URL path) and has no owner's id;
    a declared dataset takes its own ids (text or integer): a catalogue item's dense id, else the
    one derived from the id (`engine.ids.new_item_id`). ValidationError names `item_id`."""
    from strata.engine.ids import new_item_id, owner_id

    if "item_external" not in space.meta:
        if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) < 20:
            raw = int(raw)
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw < 2**63:
            raise ValidationError("item_id", "must be an integer in 0..2^63-1")
        return raw, None
    text = owner_id(raw, "item_id")
    external = space.meta["item_external"]
    try:  # the version's catalogue: its ids are few enough to search (live ones are derived)
        return int(space.item_ids[external.index(text)]), text
    except ValueError:
        return new_item_id(text), text


def apply_change(
    settings: Settings,
    mv: ModelVersion,
    embedder: ItemEmbedder,
    op: str,
    raw_id: object,
    fields: dict[str, Any] | None = None,
    image: bytes | None = None,
) -> tuple[LiveOverlay, dict[str, Any]]:
    """Add, update (a partial `fields` change) or retire one item of the served dataset (`raw_id`
    as the outside gave it: `resolve_item`): check it against the version and the log, build
    the overlay it leads to (content encoded, item tower run), and only then append the record,
    so a rejected change writes nothing but a content-addressed image file. Returns the overlay
    and the record. ValidationError names the field; NotFoundError for an item that is not
    there to update or retire."""
    from strata.errors import NotFoundError
    from strata.features.live_items import parse_item

    if fields and "image" in fields:  # a stored file name is ours to set, never the caller's
        raise ValidationError("image", "send the image's bytes, not a file name")
    catalogue = LiveCatalogue(settings, mv.dataset)
    items, _ = catalogue.state()
    item_id, external = resolve_item(mv.space, raw_id)
    in_version = _in_version(mv, item_id)
    item: LiveItem | None = None
    if op == "add":
        if in_version or item_id in items:
            held = items[item_id].external_id if item_id in items else external
            why = "already exists" if held == external else f"collides with live item {held!r}"
            raise ValidationError("item_id", f"item {raw_id} {why}")
        item = parse_item({**(fields or {}), "item_id": item_id, "external_id": external})
    elif op == "update":
        if in_version:
            raise ValidationError(
                "item_id", f"item {raw_id} is part of the model version (it changes with training)"
            )
        if item_id not in items:
            raise NotFoundError(f"item {raw_id} is not a live item")
        item = parse_item({**items[item_id].model_dump(), **(fields or {}), "item_id": item_id})
    elif op == "retire":
        if not (in_version or item_id in items):
            raise NotFoundError(f"item {raw_id} is not in the catalogue")
    else:
        raise ValidationError("op", f"expected add, update or retire, got {op!r}")
    if image is not None and item is not None:
        item = item.model_copy(update={"image": catalogue.store_image(image)})
    overlay = build_overlay(settings, mv, embedder, (op, item_id, item))
    record = catalogue.append(cast("Op", op), item_id, item)
    before, after = catalogue.last_span
    if before == overlay.revision:  # nobody appended in between: the overlay is the log's state
        overlay = replace(overlay, revision=after)
    return overlay, record
