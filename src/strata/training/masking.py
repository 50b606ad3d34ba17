"""Feature masking for cold start: hide who the user is (id + behaviour) with probability p_user and
which item it is (id, optionally its popularity) with probability p_item, so the towers learn to
serve new users from demographics + context and new items from content and metadata."""

from __future__ import annotations

import numpy as np

from strata.models.batch import ItemFeatures, QueryFeatures


def mask_query(q: QueryFeatures, p_user: float, rng: np.random.Generator) -> QueryFeatures:
    """Rows drawn with probability `p_user` lose user id, history, top genre and counts."""
    return mask_query_rows(q, rng.random(len(q)) < p_user)


def mask_query_rows(q: QueryFeatures, m: np.ndarray) -> QueryFeatures:
    """Rows where `m` (B,) is true lose user id, history, top genre and counts."""
    if not m.any():
        return q
    return QueryFeatures(
        user=np.where(m, 0, q.user),
        age=q.age,
        gender=q.gender,
        occupation=q.occupation,
        hist=np.where(m[:, None], 0, q.hist),
        top_genre=np.where(m, 0, q.top_genre),
        user_num=np.where(m[:, None], 0.0, q.user_num).astype(np.float32),
        ctx=q.ctx,
        device=q.device,
    )


def mask_item(
    it: ItemFeatures, p_item: float, rng: np.random.Generator, pop_col: int | None = None
) -> ItemFeatures:
    """Rows drawn with probability `p_item` get the unknown item id; content stays.

    With `pop_col` those rows also lose their popularity (column `pop_col` of `item_num` -> 0):
    a new item at serving time has an unknown id *and* no events, so the model must learn that
    pair from content alone instead of reading "no events" as "nobody wants this".
    """
    return mask_item_rows(it, rng.random(len(it)) < p_item, pop_col)


def mask_item_rows(it: ItemFeatures, m: np.ndarray, pop_col: int | None = None) -> ItemFeatures:
    """Rows where `m` (B,) is true get the unknown item id (and zero popularity with `pop_col`)."""
    if not m.any():
        return it
    num = it.item_num
    if pop_col is not None and pop_col < num.shape[1]:
        num = num.copy()
        num[m, pop_col] = 0.0
    return ItemFeatures(
        item=np.where(m, 0, it.item),
        genres=it.genres,
        item_num=num,
        text=it.text,
        image=it.image,
        flags=it.flags,
    )
