"""Dataset acquisition and parsing: MovieLens-100K, Criteo logs, synthetic worlds with known truth."""

from strata.datasets.base import RecDataset, validate

__all__ = ["RecDataset", "validate"]
