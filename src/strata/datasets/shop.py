"""The synthetic world written as a shop would hand over its data: files plus a dataset spec.

`write_shop` draws a `synthetic.recsys_world` (known preferences: users' category tastes, item
factors, Zipf popularity, a view -> add-to-cart -> purchase funnel) and writes it in a shape
unlike MovieLens, through the same files-and-spec path a team's own data takes
(`strata data generate shop --out DIR`, then `strata data add shop --spec DIR/spec.yaml`):

- `products.parquet`: `sku` (`SKU-000123`), title, description, `brand` (one of eight, drawn from
  the item's hidden factors, so it carries taste), a two-level `category` (`home>premium`),
  `price`, and `image` (a small generated PNG under `images/`, coloured by category, striped by
  brand; a tenth of the products have none);
- `customers.csv`: `customer` (`U-000042`), `segment` (new / regular / vip by activity), `age`;
- `events.jsonl`: `customer`, `sku`, `ts_ms` (milliseconds), `action` (view / add_to_cart /
  purchase: the funnel step the world drew), `device`;
- `spec.yaml`: the declaration of all of the above (positives view 0.2, add_to_cart 0.6,
  purchase 1.0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from strata.datasets.synthetic import CATEGORIES, recsys_world

BRANDS = ("acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "tyrell")
LINES = ("basics", "premium", "outlet")  # second category level
ACTIONS = ("view", "add_to_cart", "purchase")  # the world's funnel steps, in the shop's words
SPEC = {
    "interactions": {
        "path": "events.jsonl",
        "user": "customer",
        "item": "sku",
        "timestamp": "ts_ms",
        "timestamp_unit": "ms",
        "event_type": "action",
        "device": "device",
        "positives": {"view": 0.2, "add_to_cart": 0.6, "purchase": 1.0},
    },
    "items": {
        "path": "products.parquet",
        "id": "sku",
        "text": ["title", "description"],
        "categorical": ["brand"],
        "multi_categorical": {"category": ">"},
        "numeric": ["price"],
        "image_column": "image",
    },
    "users": {
        "path": "customers.csv",
        "id": "customer",
        "categorical": ["segment"],
        "numeric": ["age"],
    },
    "timezone": "UTC",
}


def write_shop(
    folder: Path,
    n_users: int = 400,
    n_items: int = 300,
    n_events: int = 12_000,
    seed: int = 0,
    images: bool = True,
    zipf_a: float = 1.0,
) -> Path:
    """Write the shop files and `spec.yaml` into `folder`; return the spec's path (`zipf_a`:
    how steeply popularity falls off; lower = personal taste matters more)."""
    import pandas as pd
    import yaml

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    world = recsys_world(n_users, n_items, n_events, seed=seed, span_days=60, zipf_a=zipf_a)
    rng = np.random.default_rng([seed, 7])
    d = world.item_factors.shape[1]
    brand = np.argmax(world.item_factors @ rng.standard_normal((d, len(BRANDS))), axis=1)
    line = np.argmax(world.item_factors @ rng.standard_normal((d, len(LINES))), axis=1)
    items = world.items
    skus = [f"SKU-{i:06d}" for i in items["item_id"]]
    has_image = rng.random(n_items) >= 0.1 if images else np.zeros(n_items, bool)
    products = pd.DataFrame(
        {
            "sku": skus,
            "title": items["title"].to_numpy(),
            "description": items["description"].to_numpy(),
            "brand": np.asarray(BRANDS, dtype=object)[brand],
            "category": [f"{c}>{LINES[j]}" for c, j in zip(items["category"], line, strict=True)],
            "price": items["price"].astype(np.float64).to_numpy(),
            "image": [f"images/{s}.png" if ok else None for s, ok in zip(skus, has_image,
                                                                          strict=True)],
        }
    )  # fmt: skip
    if images:
        _draw_images(folder / "images", skus, world.item_category, brand, has_image)
    act = world.user_activity
    segment = np.where(act > np.quantile(act, 0.9), "vip",
                       np.where(act > np.quantile(act, 0.5), "regular", "new"))  # fmt: skip
    customers = pd.DataFrame(
        {
            "customer": [f"U-{i:06d}" for i in world.users["user_id"]],
            "segment": segment,
            "age": world.users["age"].astype(int).to_numpy(),
        }
    )
    ev = pd.concat(list(world.iter_events()), ignore_index=True)
    action = ev["event_type"].map(dict(zip(("view", "click", "purchase"), ACTIONS, strict=True)))
    events = pd.DataFrame(
        {
            "customer": "U-" + ev["user_id"].astype(str).str.zfill(6),
            "sku": "SKU-" + ev["item_id"].astype(str).str.zfill(6),
            "ts_ms": ev["ts"].to_numpy(np.int64) * 1000 + rng.integers(0, 1000, len(ev)),
            "action": action,
            "device": ev["device"],
        }
    )
    products.to_parquet(folder / "products.parquet", index=False)
    customers.to_csv(folder / "customers.csv", index=False)
    events.to_json(folder / "events.jsonl", orient="records", lines=True)
    spec = folder / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    return spec


def _draw_images(
    folder: Path, skus: list[str], category: np.ndarray, brand: np.ndarray, has: np.ndarray
) -> None:
    """32x32 PNGs: a hue per category, a stripe per brand (content an image encoder can see)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    hues = np.linspace(0, 255, len(CATEGORIES), endpoint=False).astype(int)
    for sku, c, b, ok in zip(skus, category, brand, has, strict=True):
        if not ok:
            continue
        img = Image.new("HSV", (32, 32), (int(hues[c]), 200, 220))
        px = img.load()
        assert px is not None
        for x in range(32):
            for y in range(4 * int(b) % 28, 4 * int(b) % 28 + 4):
                px[x, y] = (int(hues[c]), 60, 40)
        img.convert("RGB").save(folder / f"{sku}.png")
