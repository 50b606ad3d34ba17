"""Cold-start feature masking."""

from __future__ import annotations

import numpy as np

from strata.models.batch import synthetic_items, synthetic_queries
from strata.models.inputs import FeatureDims
from strata.training.masking import mask_item, mask_query

DIMS = FeatureDims(n_users=50, n_items=40, text_dim=6, image_dim=5)


def test_mask_query_all_none_and_rate() -> None:
    rng = np.random.default_rng(0)
    q = synthetic_queries(DIMS, 2000, rng)
    same = mask_query(q, 0.0, rng)
    assert np.array_equal(same.user, q.user) and np.array_equal(same.hist, q.hist)
    full = mask_query(q, 1.0, rng)
    assert (full.user == 0).all() and (full.hist == 0).all() and (full.top_genre == 0).all()
    assert (full.user_num == 0).all()
    # Demographics and context survive: they are what cold users are served from.
    assert np.array_equal(full.age, q.age) and np.array_equal(full.occupation, q.occupation)
    assert np.array_equal(full.ctx, q.ctx) and np.array_equal(full.device, q.device)
    part = mask_query(q, 0.3, rng)
    masked = (part.user == 0) & (part.hist == 0).all(1)
    assert 0.25 < masked.mean() < 0.36
    # Masking is row-consistent: a masked row loses id and behaviour together.
    assert ((part.user == 0) <= ((part.hist == 0).all(1) | (q.user == 0))).all()


def test_mask_item_keeps_content() -> None:
    rng = np.random.default_rng(1)
    it = synthetic_items(DIMS, rng.integers(1, 40, 1000))
    m = mask_item(it, 0.5, rng)
    hidden = m.item == 0
    assert 0.4 < hidden.mean() < 0.6
    assert np.array_equal(m.genres, it.genres) and np.array_equal(m.text, it.text)
    assert np.array_equal(mask_item(it, 0.0, rng).item, it.item)


def test_mask_item_hides_popularity_with_the_id() -> None:
    rng = np.random.default_rng(2)
    dims = DIMS.model_copy(update={"item_num_dim": 3})
    it = synthetic_items(dims, rng.integers(1, 40, 1000))
    it = type(it)(it.item, it.genres, np.abs(it.item_num) + 0.1, it.text, it.image, it.flags)
    m = mask_item(it, 0.5, rng, pop_col=2)
    hidden = m.item == 0
    # A masked row looks like a brand-new item: unknown id and no events; the rest is untouched.
    assert (m.item_num[hidden, 2] == 0).all() and (m.item_num[~hidden, 2] > 0).all()
    assert np.array_equal(m.item_num[:, :2], it.item_num[:, :2])
    assert (it.item_num[:, 2] > 0).all()  # the input was copied, not written through
    # Without pop_col popularity stays, as before.
    assert (mask_item(it, 1.0, rng).item_num[:, 2] > 0).all()
