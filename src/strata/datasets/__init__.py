"""Dataset acquisition and parsing: MovieLens-100K, Criteo logs, synthetic worlds with known truth,
and datasets their owners declare with a spec (`strata data add`).

`load(name)` is the one entry point the rest of strata uses for recommender datasets; the loaders
are imported only when their dataset is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from strata.datasets.base import RecDataset, validate
from strata.errors import UnknownDatasetError

if TYPE_CHECKING:
    from strata.config import Settings

DATASETS = ("movielens-100k", "synthetic")

__all__ = ["DATASETS", "RecDataset", "fetch", "known", "load", "validate"]


def _settings(settings: Settings | None) -> Settings:
    if settings is not None:
        return settings
    from strata.config import Settings

    return Settings()


def load(
    name: str,
    path: Path | None = None,
    images: Path | None = None,
    settings: Settings | None = None,
) -> RecDataset:
    """Load a recommender dataset by name as a validated `RecDataset`.

    "movielens-100k" reads `path` when given, else the cache (acquiring it when absent), through
    the spec shipped with the package; "synthetic" writes the small default world seeded by
    `settings.seed` as files plus a spec and reads them back (`path`/`images` unused); any other
    name is a dataset registered with `strata data add`. All three end in `spec_load`.
    """
    if name == "movielens-100k":
        from strata.datasets.movielens import load_movielens_100k

        return load_movielens_100k(path, images, _settings(settings))
    if name == "synthetic":
        from strata.datasets.synthetic import synthetic_dataset

        return synthetic_dataset(seed=_settings(settings).seed)
    from strata.datasets.spec_load import is_registered, load_registered

    if is_registered(_settings(settings), name):
        return load_registered(_settings(settings), name)
    raise UnknownDatasetError(name, known(settings))


def known(settings: Settings | None = None) -> list[str]:
    """The built-in datasets and those registered with `strata data add`."""
    from strata.datasets.spec import dataset_dir
    from strata.datasets.spec_load import is_registered

    s = _settings(settings)
    root = dataset_dir(s, "x").parent
    names = [p.name for p in root.iterdir()] if root.is_dir() else []
    mine = sorted(n for n in names if is_registered(s, n))
    return [*DATASETS, *mine]


def fetch(name: str, path: Path | None = None, settings: Settings | None = None) -> Path | None:
    """Acquire a dataset into the cache and return its folder (None for generated datasets)."""
    if name == "movielens-100k":
        from strata.datasets.movielens import fetch_movielens_100k

        return fetch_movielens_100k(_settings(settings), path)
    if name == "synthetic":
        return None
    from strata.datasets.spec_load import is_registered

    if is_registered(_settings(settings), name):
        return None  # the owner's files stay where the spec points
    raise UnknownDatasetError(name, known(settings))
