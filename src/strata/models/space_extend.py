"""A version's feature space with items added after training (the live catalogue).

The new rows are encoded exactly as `FeatureSpace.fit` encodes a catalogue item that had no
training interactions: unknown id (embedding index 0), genre multi-hot over the version's genre
vocabulary, year standardised with the version's own mean and spread (read back from its table),
popularity 0, age as of the version's cut-off, content vectors and their flags. The item tower
then gives such a row the vector a trained catalogue item with the same content would have had,
which is what lets a brand-new item be retrieved before anyone touched it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from strata.errors import ValidationError
from strata.models.space import FeatureSpace

if TYPE_CHECKING:
    import pandas as pd

#: Item tables (row 0 = the unknown item; row r + 1 = item_ids[r]).
_ITEM_TABLES = ("item_idx", "genres", "item_num", "year", "text", "image", "flags")


def year_scale(space: FeatureSpace) -> tuple[float, float]:
    """(mean, std) the version standardised release years with, read back from its table
    (item_num[:, 0] = (year - mean) / std on rows with a year; (0, 1) when it cannot tell)."""
    year = space.t["year"][1:].astype(np.float64)
    z = space.t["item_num"][1:, 0].astype(np.float64)
    ok = ~np.isnan(year)
    if ok.sum() < 2 or np.ptp(year[ok]) == 0:
        return (float(year[ok][0]) if ok.any() else 0.0), 1.0
    lo, hi = int(np.argmin(np.where(ok, year, np.inf))), int(np.argmax(np.where(ok, year, -np.inf)))
    std = (year[hi] - year[lo]) / (z[hi] - z[lo])
    return float(year[lo] - z[lo] * std), float(std)


def extend_items(
    space: FeatureSpace, items: pd.DataFrame, content: pd.DataFrame | None, as_of: int
) -> FeatureSpace:
    """A new `FeatureSpace` holding `space`'s catalogue plus `items` (item_id, year, genres; ids
    not in the catalogue), with `content` (item_id, text_emb, image_emb, has_text, has_image)
    for their vectors and ages as of `as_of` (the version's cut-off); a declared dataset's
    items also carry their owner's ids (external_id). `space` is not changed."""
    own = "item_external" in space.meta
    if own and ("external_id" not in items.columns or items["external_id"].isna().any()):
        raise ValidationError("item_id", "this dataset keeps its own item ids: each item needs one")
    new_ids = items["item_id"].to_numpy(np.int64)
    if len(np.unique(new_ids)) != len(new_ids):
        raise ValidationError("item_id", "duplicate ids among the added items")
    clash = new_ids[np.isin(new_ids, space.item_ids)]
    if len(clash):
        raise ValidationError("item_id", f"{clash[:5].tolist()} already in the catalogue")
    n, t = len(new_ids), space.t
    gmap = {g: i for i, g in enumerate(space.meta["genres"])}
    mh = np.zeros((n, t["genres"].shape[1]), np.float32)
    for r, gs in enumerate(items["genres"]):
        for g in list(gs) if gs is not None else []:
            if g not in gmap:
                raise ValidationError("genres", f"unknown genre {g!r}; known: {sorted(gmap)}")
            mh[r, gmap[g]] = 1.0
    year = items["year"].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
    has_year = ~np.isnan(year)
    mean, std = year_scale(space)
    num = np.zeros((n, t["item_num"].shape[1]), np.float32)  # popularity 0; declared extras 0
    num[:, 0] = np.where(has_year, (year - mean) / max(std, 1e-6), 0.0)
    num[:, 1] = has_year
    if space.meta.get("has_content") and content is not None:
        text, image, flags = FeatureSpace._content_arrays(new_ids, content)
        text, image, flags = text[1:], image[1:], flags[1:]
        if text.shape[1] != t["text"].shape[1] or image.shape[1] != t["image"].shape[1]:
            raise ValidationError("content", "content vectors do not match the version's widths")
    else:  # a version trained without content: its item tower reads zeros there
        text = np.zeros((n, t["text"].shape[1]), np.float32)
        image = np.zeros((n, t["image"].shape[1]), np.float32)
        flags = np.zeros((n, t["flags"].shape[1]), np.float32)
    added = {
        "item_idx": np.zeros(n, t["item_idx"].dtype),
        "genres": mh,
        "item_num": num,
        "year": year.astype(t["year"].dtype),
        "text": text,
        "image": image,
        "flags": flags,
    }
    ids = np.concatenate([space.item_ids, new_ids])
    order = np.argsort(ids, kind="stable")
    tables = dict(t)
    for name in _ITEM_TABLES:
        body = np.concatenate([t[name][1:], added[name].astype(t[name].dtype)])[order]
        tables[name] = np.concatenate([t[name][:1], body])
    meta = {**space.meta, "item_ids": ids[order].tolist()}
    if own:  # the owner's ids stay aligned with item_ids (`engine.ids.IdMap`)
        external = np.array([*space.meta["item_external"], *items["external_id"]], dtype=object)
        if len(set(external)) != len(external):
            raise ValidationError("item_id", "an owner's item id is already in the catalogue")
        meta["item_external"] = external[order].tolist()
    out = FeatureSpace(meta, tables)
    rows, _ = out.item_rows(new_ids)
    age = out._age(rows, np.array([as_of], np.int64))  # the formula the version's rows used
    if age is not None:
        out.t["item_num"][rows, int(space.meta["age_col"])] = age
    return out
