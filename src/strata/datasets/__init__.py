"""Dataset acquisition and parsing: MovieLens-100K, Criteo logs, synthetic worlds with known truth.

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

__all__ = ["DATASETS", "RecDataset", "fetch", "load", "validate"]


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

    "movielens-100k" reads `path` when given, else the cache (acquiring it when absent);
    "synthetic" builds the small default world seeded by `settings.seed` (`path`/`images` unused).
    """
    if name == "movielens-100k":
        from strata.datasets.movielens import load_movielens_100k

        return load_movielens_100k(path, images, _settings(settings))
    if name == "synthetic":
        from strata.datasets.synthetic import synthetic_dataset

        return synthetic_dataset(seed=_settings(settings).seed)
    _not_loadable_yet(name, settings)
    raise UnknownDatasetError(name, list(DATASETS))


def _not_loadable_yet(name: str, settings: Settings | None) -> None:
    """A dataset registered with `strata data add` is checked and reported, but the feature
    definitions and models do not yet take its declared attributes: say so instead of
    calling the name unknown."""
    from strata.datasets.spec import SPEC_FILE, dataset_dir
    from strata.errors import DataError

    spec = dataset_dir(_settings(settings), name) / SPEC_FILE
    if name and "/" not in name and spec.is_file():
        raise DataError(
            spec,
            "a registered dataset spec (`strata data add`); building features and training "
            "from a spec is not available yet: the built-in datasets are " + ", ".join(DATASETS),
        )


def fetch(name: str, path: Path | None = None, settings: Settings | None = None) -> Path | None:
    """Acquire a dataset into the cache and return its folder (None for generated datasets)."""
    if name == "movielens-100k":
        from strata.datasets.movielens import fetch_movielens_100k

        return fetch_movielens_100k(_settings(settings), path)
    if name == "synthetic":
        return None
    raise UnknownDatasetError(name, list(DATASETS))
