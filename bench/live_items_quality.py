"""Item cold start through the live catalogue, on MovieLens-100K (../shared/data).

    .venv/bin/python bench/live_items_quality.py --seeds 0,1,2      # ~15 min

The last 10% of the items by first interaction (168) are held out of training entirely: a
version is trained at the 80% temporal split on the other items and their interactions, then
the held-out items are added through the live catalogue (`serving.live.apply_change`, what
`POST /items` runs) with their titles, genres, years and posters. For every user with a
held-out positive after the split, the held-out items are ranked by the query vector against
their item-tower vectors, and recall@50 of those positives is reported against: random order
(expected value), popularity of the items' genres before the split, and the same items when
trained in (a version trained on the full catalogue with the same seed: content known, their
interactions before the split too). Modality ablations rank by vectors computed with the text
only, the poster only, or neither (genres and year). Median and min-max over training seeds;
writes bench/results/live_items_quality.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATASET = "movielens-100k"
K = 50


def recall_at(scores: np.ndarray, ids: np.ndarray, users: list[set[int]], k: int = K) -> float:
    """Mean over users of |top-k of the user's row of `scores` ∩ positives| / |positives|."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean([len(set(ids[t].tolist()) & rel) / len(rel)
                          for t, rel in zip(top, users, strict=True)]))  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--held-out", type=float, default=0.1)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    from live_items import shared_movielens

    found = shared_movielens()
    if found is None:
        return 2
    ml, posters = found
    import pandas as pd

    from strata.config import Settings
    from strata.datasets.movielens import read_movielens_100k
    from strata.engine.version import ModelVersion
    from strata.features.content import encode_item_content
    from strata.models.encoders import ImageEncoder, TextEncoder
    from strata.models.infer import embed_items
    from strata.models.space_extend import extend_items
    from strata.serving.live import ItemEmbedder, apply_change
    from strata.training.data import Tables
    from strata.training.evaluate import quantile_ts, temporal_split
    from strata.training.recommender import load_recommender
    from strata.training.train import train

    ds = read_movielens_100k(ml, images=posters)
    until = quantile_ts(ds, 0.8)
    first = ds.interactions.groupby("item_id")["ts"].min().sort_values(kind="stable")
    held = np.sort(first.index.to_numpy(np.int64)[-round(len(first) * args.held_out) :])
    split = temporal_split(ds, until)
    hs = set(held.tolist())
    eval_users, targets = [], []
    for u, rel in zip(split.eval_users.tolist(), split.relevant, strict=True):
        r = hs & set(rel.tolist())
        if r:
            eval_users.append(u)
            targets.append(r)
    users = np.array(eval_users, np.int64)
    print(f"held out {len(held)} items; {len(users)} users with held-out positives after "
          f"{until}", file=sys.stderr)  # fmt: skip

    cache = Path(tempfile.mkdtemp(prefix="strata-lq-content-"))
    content = encode_item_content(ds.items, TextEncoder(cache), ImageEncoder(cache))
    items_h = ds.items[ds.items["item_id"].isin(held)].sort_values("item_id")
    content_h = content[content["item_id"].isin(held)].sort_values("item_id")

    # popularity of genres before the split (user-agnostic), and random order
    train_items = ds.items.set_index("item_id").loc[split.train["item_id"], "genres"]
    genre_pop: dict[str, int] = {}
    for gs in train_items:
        for g in gs:
            genre_pop[g] = genre_pop.get(g, 0) + 1
    gp = np.array([np.mean([genre_pop.get(g, 0) for g in gs]) if len(gs) else 0.0
                   for gs in items_h["genres"]])  # fmt: skip
    out: dict[str, list[float]] = {"random (expected)": [], "popularity of genre": []}
    rng = np.random.default_rng(0)
    rand = np.mean([recall_at(rng.random((len(users), len(held))), held, targets)
                    for _ in range(50)])  # fmt: skip
    for seed in [int(s) for s in args.seeds.split(",")]:
        out["random (expected)"].append(float(rand))
        out["popularity of genre"].append(recall_at(np.tile(gp, (len(users), 1)), held, targets))
        # A: held-out items never trained; added live
        home = Path(tempfile.mkdtemp(prefix=f"strata-lq-a{seed}-"))
        s = Settings(home=home, seed=seed)
        keep = ~ds.items["item_id"].isin(held)
        inter = ds.interactions[~ds.interactions["item_id"].isin(held)]
        kept = content[content["item_id"].isin(ds.items[keep]["item_id"])]
        train(s, DATASET, until=until, tables=Tables(ds.users, ds.items[keep], inter, kept))
        mv = ModelVersion.open(s, DATASET)
        emb = ItemEmbedder(s, mv)
        overlay = None
        for r in items_h.itertuples():
            poster = posters / f"{r.item_id}.jpg"
            desc = r.description if isinstance(r.description, str) else ""
            year = None if pd.isna(r.year) else int(r.year)
            fields = {"title": r.title, "genres": list(r.genres), "year": year, "description": desc}
            image = poster.read_bytes() if poster.is_file() else None
            overlay, _ = apply_change(s, mv, emb, "add", int(r.item_id), fields, image)
        assert overlay is not None and np.array_equal(overlay.ids, held)
        rec = load_recommender(s, DATASET)
        q = rec.query_embeddings(users)
        out.setdefault("live: text + poster", []).append(
            recall_at(q @ overlay.emb.T, held, targets)
        )
        tower = mv.torch_models()[0]
        for name, drop_text, drop_image in (("live: text only", False, True),
                                            ("live: poster only", True, False),
                                            ("live: genres + year only", True, True)):  # fmt: skip
            c = content_h.copy()
            if drop_text:
                c["has_text"] = False
            if drop_image:
                c["has_image"] = False
            space = extend_items(mv.space, items_h, c, mv.as_of)
            rows, _ = space.item_rows(held)
            e = embed_items(tower, space.items(rows))
            out.setdefault(name, []).append(recall_at(q @ e.T, held, targets))
        # B: the same items trained in
        home_b = Path(tempfile.mkdtemp(prefix=f"strata-lq-b{seed}-"))
        sb = Settings(home=home_b, seed=seed)
        train(sb, DATASET, until=until, tables=Tables(ds.users, ds.items, ds.interactions, content))
        mvb = ModelVersion.open(sb, DATASET)
        pos = np.searchsorted(mvb.item_ids, held)
        qb = load_recommender(sb, DATASET).query_embeddings(users)
        out.setdefault("trained in", []).append(
            recall_at(qb @ mvb.item_embeddings[pos].T, held, targets))  # fmt: skip
        print(json.dumps({k: round(v[-1], 4) for k, v in out.items()}), file=sys.stderr)

    summary = {k: {"median": statistics.median(v), "min": min(v), "max": max(v)}
               for k, v in out.items()}  # fmt: skip
    summary["setup"] = {"held_out_items": len(held), "eval_users": len(users), "until": until,
                        "k": K, "seeds": args.seeds}  # fmt: skip
    print(json.dumps(summary, indent=2))
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "live_items_quality.json").write_text(
        json.dumps(summary, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
