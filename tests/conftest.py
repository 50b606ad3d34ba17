"""Shared fixtures: an isolated STRATA_HOME per test and the shared data folder (absent: skip,
or fail under CI=true naming the path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ci import missing

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture
def strata_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty STRATA_HOME so tests never touch the user's cache."""
    home = tmp_path / "strata-home"
    home.mkdir()
    monkeypatch.setenv("STRATA_HOME", str(home))
    return home


def _shared(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.exists():
        missing(f"shared data {path} is absent")
    return path


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """GroupLens MovieLens-100K files from ../shared/data/ml-100k."""
    return _shared("ml-100k")


@pytest.fixture(scope="session")
def posters_dir() -> Path:
    """ML-100K poster thumbnails from ../shared/data/ml-100k-posters."""
    return _shared("ml-100k-posters")


@pytest.fixture(scope="session")
def criteo_8k() -> Path:
    """The first 8,000 rows of Criteo DAC from ../shared/data/criteo/criteo_8k.tsv."""
    return _shared("criteo/criteo_8k.tsv")
