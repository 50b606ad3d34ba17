"""Feature masking for cold start: hide who the user is (id + behaviour) with probability p_user and
which item it is (id) with probability p_item, so the towers learn to serve new users from
demographics + context and new items from content and metadata."""

from __future__ import annotations

import numpy as np

from strata.training.batch import ItemFeatures, QueryFeatures


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


def mask_item(it: ItemFeatures, p_item: float, rng: np.random.Generator) -> ItemFeatures:
    """Rows drawn with probability `p_item` get the unknown item id; content stays."""
    m = rng.random(len(it)) < p_item  # (B,)
    if not m.any():
        return it
    return ItemFeatures(
        item=np.where(m, 0, it.item),
        genres=it.genres,
        item_num=it.item_num,
        text=it.text,
        image=it.image,
        flags=it.flags,
    )
