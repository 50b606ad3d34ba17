"""Feast peer for bench/online_store.py: same features, Feast's Redis online store, same Valkey.

Runs only inside the separate peers environment (bench/.venv-peers, bench/requirements-peers.txt);
strata is never imported here and Feast is never installed into the product environment.
Usage: feast_peer.py DATA_DIR REDIS_HOST:PORT REPS  -> one JSON object on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

os.environ.setdefault("FEAST_USAGE", "False")  # no telemetry: the bench machine is offline

import numpy as np
import pandas as pd


def _pcts(samples: list[float]) -> dict[str, float]:
    arr = np.asarray(samples) * 1000.0
    return {"p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99))}


def main() -> None:
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Array, Float32, Float64

    data_dir, redis_addr, reps = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    users = pd.read_parquet(data_dir / "users.parquet")
    items = pd.read_parquet(data_dir / "items.parquet")
    user_feats = [c for c in users.columns if c not in ("user_id", "event_timestamp")]
    item_feats = [c for c in items.columns if c not in ("item_id", "event_timestamp")]
    repo = Path(tempfile.mkdtemp(prefix="feast-repo-"))
    (repo / "feature_store.yaml").write_text(
        "project: stratabench\n"
        f"registry: {repo / 'registry.db'}\n"
        "provider: local\n"
        "online_store:\n"
        "  type: redis\n"
        f'  connection_string: "{redis_addr},db=1"\n'
        "offline_store:\n"
        "  type: file\n"
        "entity_key_serialization_version: 3\n"
    )
    store = FeatureStore(repo_path=str(repo))
    views = []
    entities = []
    for name, feats in (("user", user_feats), ("item", item_feats)):
        ent = Entity(name=name, join_keys=[f"{name}_id"], value_type=ValueType.INT64)
        src = FileSource(path=str(data_dir / f"{name}s.parquet"), timestamp_field="event_timestamp")
        schema = [
            Field(name=f, dtype=Array(Float32) if f.endswith("emb") else Float64) for f in feats
        ]
        fv = FeatureView(
            name=f"{name}_fv", entities=[ent], ttl=timedelta(days=3650), schema=schema, source=src
        )
        entities.append(ent)
        views.append(fv)
    store.apply([*entities, *views])
    t = time.perf_counter()
    store.write_to_online_store("user_fv", users)
    store.write_to_online_store("item_fv", items)
    load_s = time.perf_counter() - t

    rng = np.random.default_rng(0)
    u_refs = [f"user_fv:{f}" for f in user_feats]
    i_refs = [f"item_fv:{f}" for f in item_feats]
    item_ids = items["item_id"].to_numpy()
    user_ids = users["user_id"].to_numpy()
    # warm-up: registry cache, connections
    store.get_online_features(features=i_refs, entity_rows=[{"item_id": int(item_ids[0])}])
    t_user, t_items = [], []
    for _ in range(reps):
        u = int(rng.choice(user_ids))
        t = time.perf_counter()
        out = store.get_online_features(features=u_refs, entity_rows=[{"user_id": u}]).to_dict()
        t_user.append(time.perf_counter() - t)
        cand = rng.choice(item_ids, size=300, replace=False)
        t = time.perf_counter()
        out = store.get_online_features(
            features=i_refs, entity_rows=[{"item_id": int(i)} for i in cand]
        ).to_dict()
        t_items.append(time.perf_counter() - t)
    check = out[item_feats[0]][0]
    expected = float(items.set_index("item_id").loc[int(cand[0]), item_feats[0]])
    sys.stdout.write(
        json.dumps(
            {
                "feast_version": __import__("feast").__version__,
                "load_s": load_s,
                "user_1": _pcts(t_user),
                "items_300": _pcts(t_items),
                "value_check": abs(float(check) - expected) < 1e-9,
            }
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
