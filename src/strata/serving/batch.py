"""Offline batch recommendations (`strata recommend`) through the serving pipeline: the same
stages, stores and models as HTTP, for a file of users at the version's cut-off."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from strata.errors import DataError
from strata.serving.service import RecommendationPipeline, Stage

if TYPE_CHECKING:
    from strata.config import Settings


def open_batch_pipeline(
    settings: Settings, dataset: str, version: str | None = None, k: int | None = None
) -> RecommendationPipeline:
    """The serving pipeline for offline use (`strata recommend`): same stages and stores as
    HTTP; `k` may exceed the HTTP limit `serve.k_max`."""
    if k is not None and k > settings.serve.k_max:
        serve = settings.serve.model_copy(update={"k_max": k})
        settings = settings.model_copy(update={"serve": serve})
    return RecommendationPipeline.load(settings, dataset, version)


def read_user_ids(path: Path) -> np.ndarray:
    """User ids from a text file, one per line (blank lines ignored); DataError on a bad line."""
    if not Path(path).is_file():
        raise DataError(path, "users file does not exist")
    ids = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        text = line.strip()
        if not text:
            continue
        if not text.lstrip("-").isdigit():
            raise DataError(path, f"line {n}: expected an integer user id, got {text!r}")
        ids.append(int(text))
    return np.asarray(ids, dtype=np.int64)


def recommend_file(
    settings: Settings,
    dataset: str,
    users_file: Path,
    k: int,
    out: Path,
    stage: Stage = "full",
    version: str | None = None,
) -> int:
    """Write one JSON line per user {"user_id", "items", "scores"} to `out` (atomically);
    scores are the engine's (fused ranker logits, or retrieval scores) at float32 precision."""
    import json

    from strata.atomic import atomic_path

    users = read_user_ids(users_file)
    # The same pipeline object that serves HTTP (online features when configured, else the
    # version's snapshot; context = the version's cut-off; seed 0).
    results = open_batch_pipeline(settings, dataset, version, k).recommend_many(users, k, stage)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, open(tmp, "w") as f:
        for u, res in zip(users, results, strict=True):
            line = {
                "user_id": int(u),
                "items": res.item_ids.tolist(),
                "scores": [float(x) for x in res.scores],
            }
            f.write(json.dumps(line) + "\n")
    return len(users)
