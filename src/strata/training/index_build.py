"""Building a registry version's ANN index (`strata index build`): an offline step, so it lives
with training; tuning queries come from the version's own query tower."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from strata.artifacts import INDEX_DIR
from strata.engine.index import index_from_files
from strata.registry import Registry

if TYPE_CHECKING:
    from strata.config import Settings


def build_version_index(
    settings: Settings, dataset: str, version: str | None = None, kind: str | None = None
) -> dict[str, Any]:
    """Build the index of a registry version's item embeddings (default: the serving version;
    kind default: `settings.index.kind`) and save it in the version's `index/` folder."""
    vdir = Registry(settings.registry_dir, dataset).path(version)
    index = index_from_files(
        settings, vdir, kind,
        lambda: _model_queries(settings, dataset, vdir.name, settings.index.tune_queries,
                               settings.seed),
        {"dataset": dataset, "version": vdir.name},
    )  # fmt: skip
    out = vdir / INDEX_DIR
    index.save(out)
    return {"path": str(out), **index.info}


def _model_queries(
    settings: Settings, dataset: str, version: str, n: int, seed: int
) -> np.ndarray | None:
    """Query-tower vectors of up to `n` sampled users of a version, so tuning sees the real query
    distribution; None when the version has no trained two-tower (embeddings only)."""
    files = Registry(settings.registry_dir, dataset).manifest(version).get("files", {})
    if "two_tower.safetensors" not in files:
        return None
    from strata.training.recommender import load_recommender

    rec = load_recommender(settings, dataset, version)
    users = rec.space.user_ids
    pick = np.random.default_rng(seed).choice(users, min(n, len(users)), replace=False)
    return np.asarray(rec.query_embeddings(pick), dtype=np.float32)
