"""Offline batch recommendations (`strata recommend`) through the serving pipeline: the same
stages, stores and models as HTTP, for a file of users at the version's cut-off."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from strata.engine.ids import NEW_USER_BASE
from strata.errors import DataError, ValidationError
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


def read_user_lines(path: Path) -> list[str]:
    """User ids from a text file, one per line (blank lines ignored)."""
    if not Path(path).is_file():
        raise DataError(path, "users file does not exist")
    return [t for t in (line.strip() for line in Path(path).read_text().splitlines()) if t]


def read_user_ids(path: Path) -> np.ndarray:
    """Integer user ids from a text file, one per line; DataError on a bad line."""
    ids = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        text = line.strip()
        if text and not text.lstrip("-").isdigit():
            raise DataError(path, f"line {n}: expected an integer user id, got {text!r}")
        if text:
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
    """Write one JSON line per user {"user_id", "items", "scores"} to `out` (atomically), in the
    owner's ids for a declared dataset; scores are the engine's (fused ranker logits, or
    retrieval scores) at float32 precision."""
    import json

    from strata.atomic import atomic_path

    lines = read_user_lines(users_file)
    # The same pipeline object that serves HTTP (online features when configured, else the
    # version's snapshot; context = the version's cut-off; seed 0).
    pipe = open_batch_pipeline(settings, dataset, version, k)
    ids = pipe.ids  # a declared dataset: the file and the output hold the owner's ids
    shown: list[object] = list(lines) if ids is not None else []
    if ids is not None:
        users = np.asarray([ids.user(t, f"{users_file} line {n + 1}")
                            for n, t in enumerate(lines)], np.int64)  # fmt: skip
        unknown = [t for t, u in zip(lines, users, strict=True) if u >= NEW_USER_BASE]
        if unknown:  # as for integer ids: a batch names users the version does not know
            raise ValidationError("user_id", f"unknown user id(s) {unknown[:5]} (not in the "
                                  "version's users)")  # fmt: skip
    else:
        users = read_user_ids(users_file)
        shown = [int(u) for u in users]
    results = pipe.recommend_many(users, k, stage)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, open(tmp, "w") as f:
        for u, res in zip(shown, results, strict=True):
            line = {
                "user_id": u,
                "items": ids.items_external(res.item_ids) if ids else res.item_ids.tolist(),
                "scores": [float(x) for x in res.scores],
            }
            f.write(json.dumps(line) + "\n")
    return len(users)
