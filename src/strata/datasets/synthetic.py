"""Synthetic recommender worlds with known truth, at any scale (Criteo-format click logs:
`strata.datasets.criteo_synthetic`).

`recsys_world` builds users, items and a generative preference model, then streams events chunk by
chunk (vectorised NumPy, memory bounded by the chunk), so 1M items and 10M events fit on a laptop.
Each event is drawn in two steps, which keeps the work per event independent of the catalogue size:

1. category ~ softmax(taste(user) . category_factor + device_effect[device, category]
                       + hour_effect[hour, category])
2. K candidates from that category by Zipf popularity, the one with the largest
   `affinity * user_factor . item_factor + Gumbel noise` wins (Gumbel-max = a softmax draw).

The deepest funnel step of the event (view < click < purchase) depends on the same affinity and on
price. Everything that generated the data is kept on the `SyntheticWorld` for tests.

"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from strata.datasets.base import RecDataset, validate
from strata.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

# --- recommender world ----------------------------------------------------------------------

CATEGORIES = (
    "books",
    "electronics",
    "fashion",
    "home",
    "sports",
    "toys",
    "beauty",
    "grocery",
    "music",
    "garden",
    "games",
    "travel",
)
# Real words per category, so that a sentence encoder maps descriptions of one category close
# together and the text tower has signal to learn from.
CATEGORY_WORDS: dict[str, tuple[str, ...]] = {
    "books": ("novel", "author", "chapter", "story", "paperback", "fiction", "poetry", "biography",
              "edition", "literature", "reading", "hardcover"),
    "electronics": ("laptop", "battery", "wireless", "screen", "charger", "bluetooth", "camera",
                    "processor", "headphones", "speaker", "usb", "display"),
    "fashion": ("dress", "cotton", "jacket", "sleeve", "denim", "leather", "shoes", "scarf",
                "collar", "fabric", "style", "shirt"),
    "home": ("kitchen", "sofa", "lamp", "pillow", "curtain", "blanket", "shelf", "table",
             "ceramic", "mug", "towel", "furniture"),
    "sports": ("running", "football", "tennis", "fitness", "bicycle", "helmet", "training", "yoga",
               "racket", "sneakers", "gym", "outdoor"),
    "toys": ("puzzle", "doll", "lego", "plush", "kids", "children", "blocks", "playset", "robot",
             "teddy", "crayons", "toddler"),
    "beauty": ("lipstick", "skincare", "perfume", "moisturizer", "shampoo", "mascara", "serum",
               "fragrance", "lotion", "nail", "cosmetic", "cream"),
    "grocery": ("coffee", "tea", "chocolate", "organic", "snack", "pasta", "cereal", "spices",
                "honey", "olive", "flour", "juice"),
    "music": ("guitar", "vinyl", "album", "piano", "drums", "concert", "song", "melody", "jazz",
              "orchestra", "microphone", "band"),
    "garden": ("plants", "seeds", "flowers", "soil", "hose", "shovel", "lawn", "pots", "fertilizer",
               "greenhouse", "trees", "rake"),
    "games": ("console", "controller", "multiplayer", "adventure", "level", "strategy", "arcade",
              "boardgame", "dice", "quest", "gamer", "joystick"),
    "travel": ("suitcase", "luggage", "passport", "backpack", "flight", "hotel", "map", "trip",
               "beach", "journey", "compass", "tourist"),
}  # fmt: skip
GENERIC_WORDS = ("new", "great", "quality", "classic", "premium", "best", "popular", "compact",
                 "durable", "value", "modern", "gift", "everyday", "light", "original",
                 "set")  # fmt: skip
ADJECTIVES = ("Bright", "Classic", "Swift", "Golden", "Urban", "Little", "Grand", "Silver", "Happy",
              "Bold", "Quiet", "Royal", "Wild", "Smart", "Cosy", "Prime")  # fmt: skip
OCCUPATIONS = ("student", "engineer", "teacher", "artist", "doctor", "retired", "sales", "writer",
               "scientist", "administrator", "programmer", "other")  # fmt: skip
EVENT_DEVICES = ("mobile", "desktop", "tv")
FUNNEL = ("view", "click", "purchase")
START_TS = 1_704_067_200  # 2024-01-01T00:00:00Z
_TO_DATASET_LIMIT = 5_000_000
#: The spec `SyntheticWorld.write` puts next to its files.
SPEC = {
    "interactions": {"path": "events.parquet", "event_id": "event_id", "user": "user_id",
                     "item": "item_id", "timestamp": "ts", "event_type": "event_type",
                     "event_types": ["rating", *FUNNEL], "value": "value", "device": "device"},
    "items": {"path": "items.parquet", "id": "item_id", "text": ["title", "description"],
              "tags": {"genres": "|"}, "year": "year", "numeric": ["price"]},
    "users": {"path": "users.parquet", "id": "user_id", "age": "age",
              "categorical": ["gender", "occupation"]},
    "timezone": "UTC",
}  # fmt: skip
_SUB_BATCH = 32_768  # events per vectorised step: bounds the (B, K, D) candidate tensor


@dataclass(frozen=True, eq=False)
class SyntheticWorld:
    """A generated world: user/item tables, the hidden preference model, and a streamed event log.

    Row `i` of every per-user array belongs to `user_id == i + 1`; the same holds for items.
    Truth: `user_factors` (U, D), `item_factors` (I, D), `category_factors` (C, D),
    `item_category` (I,) index into `CATEGORIES`, `item_popularity` (I,) Zipf weights summing to 1,
    `device_category` (3, C) and `hour_category` (24, C) context effects on the category logits,
    `user_activity` (U,) probability of each user acting, `user_device` (U,) habitual device index.
    """

    n_users: int
    n_items: int
    n_events: int
    seed: int
    chunk_size: int
    users: pd.DataFrame
    items: pd.DataFrame
    user_factors: np.ndarray
    item_factors: np.ndarray
    category_factors: np.ndarray
    item_category: np.ndarray
    item_popularity: np.ndarray
    device_category: np.ndarray
    hour_category: np.ndarray
    user_activity: np.ndarray
    user_device: np.ndarray
    item_price: np.ndarray
    n_candidates: int = 32
    affinity: float = 4.0
    start_ts: int = START_TS
    span_s: int = 90 * 86400
    name: str = "synthetic"
    _index: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    # -- truth ------------------------------------------------------------------------------

    def category_logits(self, user_idx: np.ndarray, device: np.ndarray, hour: np.ndarray):
        """(B, C) logits of the category choice for 0-based users, device indices and hours."""
        taste = self.user_factors[user_idx] @ self.category_factors.T  # (B, C)
        logits = 1.5 * taste + self.device_category[device] + self.hour_category[hour]
        empty = np.bincount(self.item_category, minlength=len(CATEGORIES)) == 0
        logits[:, empty] = -np.inf
        return logits

    def true_scores(
        self, user_ids: np.ndarray, item_ids: np.ndarray, device: str = "mobile", hour: int = 12
    ) -> np.ndarray:
        """Log-odds (up to a per-event constant) that the user picks each item in that context.

        Shapes broadcast: `user_ids` (B,) with `item_ids` (B,) or (B, N). Popularity enters as its
        log, affinity and context as in the generator; useful as an oracle ranking in tests.
        """
        u = np.asarray(user_ids, dtype=np.int64) - 1
        i = np.asarray(item_ids, dtype=np.int64) - 1
        dev = np.full(u.shape, EVENT_DEVICES.index(device))
        cat_logits = self.category_logits(u, dev, np.full(u.shape, hour))  # (B, C)
        cats = self.item_category[i]
        uf = self.user_factors[u]
        if i.ndim == 2:
            cat_part = np.take_along_axis(cat_logits, cats, axis=1)
            aff = np.einsum("bd,bnd->bn", uf, self.item_factors[i])
        else:
            cat_part = cat_logits[np.arange(len(u)), cats]
            aff = np.einsum("bd,bd->b", uf, self.item_factors[i])
        return cat_part + self.affinity * aff + np.log(self.item_popularity[i])

    # -- events -----------------------------------------------------------------------------

    def _category_index(self) -> dict[str, np.ndarray]:
        """Items grouped by category with within-category cumulative popularity (built once)."""
        if not self._index:
            order = np.argsort(self.item_category, kind="stable")
            cum = np.cumsum(self.item_popularity[order])
            counts = np.bincount(self.item_category, minlength=len(CATEGORIES))
            ends = np.cumsum(counts)
            starts = ends - counts
            before = np.concatenate([[0.0], cum])[starts]
            total = cum[np.maximum(ends - 1, 0)] - before
            self._index.update(order=order, cum=cum, before=before, total=total, ends=ends)
        return self._index

    def _events(self, lo: int, hi: int) -> pd.DataFrame:
        """Events with global index lo..hi-1; a pure function of (seed, lo), so reproducible."""
        import pandas as pd

        rng = np.random.default_rng([self.seed, 1, lo])
        n = hi - lo
        idx = self._category_index()
        # Global positions plus jitter, scaled onto the time span: ts never decreases.
        pos = np.arange(lo, hi, dtype=np.float64) + rng.random(n)
        ts = self.start_ts + np.floor(pos * (self.span_s / self.n_events)).astype(np.int64)
        hour = (ts // 3600) % 24
        cum_act = np.cumsum(self.user_activity)
        user = np.minimum(np.searchsorted(cum_act, rng.random(n) * cum_act[-1]), self.n_users - 1)
        habitual = rng.random(n) < 0.8
        device = np.where(habitual, self.user_device[user], rng.integers(0, 3, n))
        item = np.empty(n, dtype=np.int64)
        funnel = np.empty(n, dtype=np.int8)
        k = self.n_candidates
        for a in range(0, n, _SUB_BATCH):
            b = min(a + _SUB_BATCH, n)
            u, m = user[a:b], b - a
            logits = self.category_logits(u, device[a:b], hour[a:b])
            cat = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)  # (B,)
            draw = idx["before"][cat, None] + rng.random((m, k)) * idx["total"][cat, None]
            slot = _searchsorted_sorted(idx["cum"], draw)  # (B, K)
            slot = np.clip(slot, 0, idx["ends"][cat, None] - 1)
            cand = idx["order"][slot]  # (B, K) 0-based item indices
            uf = self.user_factors[u]  # (B, D)
            aff = np.einsum("bd,bkd->bk", uf, self.item_factors[cand])  # (B, K)
            best = np.argmax(self.affinity * aff + rng.gumbel(size=(m, k)), axis=1)
            chosen = cand[np.arange(m), best]
            item[a:b] = chosen
            chosen_aff = aff[np.arange(m), best]
            price = self.item_price[chosen]
            p_click = _sigmoid(2.0 * chosen_aff - 2.0)
            p_buy = _sigmoid(1.5 * chosen_aff - 2.5 - 0.6 * np.log(price / 20.0))
            clicked = rng.random(m) < p_click
            bought = clicked & (rng.random(m) < p_buy)
            funnel[a:b] = clicked.astype(np.int8) + bought.astype(np.int8)
        gid = pd.Series(np.arange(lo, hi, dtype=np.int64))
        return pd.DataFrame(
            {
                "event_id": ("syn-" + gid.astype(str)).to_numpy(),
                "user_id": user.astype(np.int64) + 1,
                "item_id": item + 1,
                "event_type": np.asarray(FUNNEL, dtype=object)[funnel],
                "value": np.ones(n, dtype=np.float32),
                "ts": ts,
                "device": np.asarray(EVENT_DEVICES, dtype=object)[device],
            }
        )

    def iter_events(self) -> Iterator[pd.DataFrame]:
        """Yield the event log in ts order as DataFrames of at most `chunk_size` rows (same on
        every call)."""
        for lo in range(0, self.n_events, self.chunk_size):
            yield self._events(lo, min(lo + self.chunk_size, self.n_events))

    def write(self, folder: Path) -> Path:
        """Write the world as a declared dataset: `users.parquet`, `items.parquet`,
        `events.parquet` (streamed chunk by chunk, any size) and the `spec.yaml` that declares
        them (`strata data add NAME --spec <folder>/spec.yaml`). Returns the spec's path."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        import yaml

        from strata.atomic import atomic_path, atomic_write_text

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, df in (("users", self.users), ("items", self.items)):
            with atomic_path(folder / f"{name}.parquet") as tmp:
                df.drop(columns=["image_path"], errors="ignore").to_parquet(tmp, index=False)
        with atomic_path(folder / "events.parquet") as tmp:
            writer = None
            for chunk in self.iter_events():
                table = pa.Table.from_pandas(chunk, preserve_index=False)
                writer = writer or pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
            if writer is None:  # no events: an empty file with the log's columns
                pq.write_table(pa.Table.from_pandas(self._events(0, 0), preserve_index=False), tmp)
            else:
                writer.close()
        atomic_write_text(folder / "spec.yaml", yaml.safe_dump(SPEC, sort_keys=False))
        return folder / "spec.yaml"

    def to_dataset(self) -> RecDataset:
        """All events in memory as a validated `RecDataset` (small worlds only); the world's own
        tables, with its hidden extras (`price`, `device_habit`). `load("synthetic")` takes the
        declared path instead (`write`)."""
        import pandas as pd

        if self.n_events > _TO_DATASET_LIMIT:
            raise ConfigError(
                f"n_events={self.n_events} is too large for to_dataset(); stream iter_events()"
            )
        events = pd.concat(list(self.iter_events()), ignore_index=True)
        return validate(RecDataset(self.name, self.users, self.items, events))


def _searchsorted_sorted(cum: np.ndarray, x: np.ndarray) -> np.ndarray:
    """`searchsorted(cum, x, "right")`, ~3x faster on large `cum`: sorted keys let NumPy reuse
    each search's position as the next one's start (cache-friendly)."""
    flat = x.ravel()
    order = np.argsort(flat)
    out = np.empty(flat.shape, dtype=np.int64)
    out[order] = np.searchsorted(cum, flat[order], side="right")
    return out.reshape(x.shape)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _unit(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    v = rng.standard_normal(shape)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _descriptions(rng: np.random.Generator, cats: np.ndarray, n_words: int = 8) -> list[str]:
    """Short texts: mostly words of the item's category, a few generic ones, shuffled."""
    per_cat = len(CATEGORY_WORDS[CATEGORIES[0]])
    vocab = np.array(
        [w for c in CATEGORIES for w in CATEGORY_WORDS[c]] + list(GENERIC_WORDS), dtype=object
    )
    n = len(cats)
    own = cats[:, None] * per_cat + rng.integers(0, per_cat, (n, n_words - 2))
    generic = len(CATEGORIES) * per_cat + rng.integers(0, len(GENERIC_WORDS), (n, 2))
    words = np.concatenate([own, generic], axis=1)
    words = np.take_along_axis(words, rng.random(words.shape).argsort(axis=1), axis=1)
    return [" ".join(row) for row in vocab[words]]


def recsys_world(
    n_users: int,
    n_items: int,
    n_events: int,
    seed: int = 0,
    chunk_size: int = 1_000_000,
    *,
    dim: int = 16,
    zipf_a: float = 1.0,
    n_candidates: int = 32,
    span_days: int = 90,
) -> SyntheticWorld:
    """Build a synthetic recommender world with known preferences (see the module docstring)."""
    import pandas as pd

    for name, value in (("n_users", n_users), ("n_items", n_items), ("chunk_size", chunk_size)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if n_events < 0:
        raise ConfigError(f"n_events must be >= 0, got {n_events}")
    rng = np.random.default_rng([seed, 0])
    n_cat = len(CATEGORIES)

    cat_f = _unit(rng, (n_cat, dim))  # (C, D)
    item_cat = rng.integers(0, n_cat, n_items)
    item_f = cat_f[item_cat] + 0.5 * rng.standard_normal((n_items, dim)) / math.sqrt(dim)
    # Zipf popularity over a random order of the catalogue.
    rank = rng.permutation(n_items) + 1
    pop = rank.astype(np.float64) ** -zipf_a
    pop /= pop.sum()

    # Tastes: a main and a secondary favourite category plus individual noise.
    fav = rng.integers(0, n_cat, (n_users, 2))
    w = rng.uniform(0.55, 0.9, n_users)[:, None]
    user_f = 1.5 * (w * cat_f[fav[:, 0]] + (1 - w) * cat_f[fav[:, 1]])
    user_f = user_f + 0.5 * rng.standard_normal((n_users, dim)) / math.sqrt(dim)
    activity = rng.lognormal(0.0, 1.0, n_users)
    activity /= activity.sum()
    user_device = rng.choice(3, n_users, p=[0.55, 0.35, 0.10])

    device_cat = rng.normal(0.0, 0.8, (3, n_cat))
    amp = rng.uniform(0.3, 1.0, n_cat)
    peak = rng.uniform(0, 24, n_cat)
    hours = np.arange(24)[:, None]
    hour_cat = amp * np.cos(2 * np.pi * (hours - peak) / 24)  # (24, C)

    users = pd.DataFrame(
        {
            "user_id": np.arange(1, n_users + 1, dtype=np.int64),
            "age": np.clip(rng.normal(36, 12, n_users), 16, 80).astype(np.int16),
            "gender": np.asarray(("F", "M"), dtype=object)[rng.integers(0, 2, n_users)],
            "occupation": np.asarray(OCCUPATIONS, dtype=object)[
                rng.integers(0, len(OCCUPATIONS), n_users)
            ],
            "zip": pd.Series(rng.integers(0, 100_000, n_users)).astype(str).str.zfill(5).to_numpy(),
            "device_habit": np.asarray(EVENT_DEVICES, dtype=object)[user_device],
        }
    )

    cat_names = np.asarray(CATEGORIES, dtype=object)[item_cat]
    price_mu = rng.uniform(1.5, 4.5, n_cat)  # log-price level per category
    price = np.round(np.exp(price_mu[item_cat] + 0.5 * rng.standard_normal(n_items)), 2)
    price = np.maximum(price, 0.5).astype(np.float32)
    noun_idx = rng.integers(0, len(CATEGORY_WORDS[CATEGORIES[0]]), n_items)
    adj = np.asarray(ADJECTIVES, dtype=object)[rng.integers(0, len(ADJECTIVES), n_items)]
    nouns = np.array(
        [CATEGORY_WORDS[c][j].title() for c, j in zip(cat_names, noun_idx, strict=True)]
    )
    items = pd.DataFrame(
        {
            "item_id": np.arange(1, n_items + 1, dtype=np.int64),
            "title": (adj + " " + nouns.astype(object)),
            "year": pd.array(rng.integers(1990, 2025, n_items), dtype="Int16"),
            "genres": [[c] for c in cat_names],
            "description": _descriptions(rng, item_cat),
            "image_path": None,
            "category": cat_names,
            "price": price,
        }
    )
    return SyntheticWorld(
        n_users=n_users,
        n_items=n_items,
        n_events=n_events,
        seed=seed,
        chunk_size=chunk_size,
        users=users,
        items=items,
        user_factors=user_f.astype(np.float32),
        item_factors=item_f.astype(np.float32),
        category_factors=cat_f.astype(np.float32),
        item_category=item_cat,
        item_popularity=pop,
        device_category=device_cat,
        hour_category=hour_cat,
        user_activity=activity,
        user_device=user_device,
        item_price=price,
        n_candidates=n_candidates,
        span_s=span_days * 86400,
    )


def synthetic_dataset(seed: int = 0) -> RecDataset:
    """The small default world behind `load("synthetic")`, 1,000 users, 2,000 items, 50k events,
    by the path every dataset takes: written as files plus a spec, read through the spec."""
    import tempfile

    from strata.datasets.spec_load import load_declared

    world = recsys_world(1_000, 2_000, 50_000, seed=seed)
    with tempfile.TemporaryDirectory(prefix="strata-synthetic-") as tmp:
        return load_declared("synthetic", world.write(Path(tmp)))
