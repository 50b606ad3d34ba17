"""One rule for a missing test dependency: outside CI the test skips with the reason; under
`CI=true` (set by .ci/run) it fails with the same reason, so CI never passes by skipping."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """True under CI (`CI` set to 1/true/yes, as .ci/run and most CI systems do)."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(why: str) -> NoReturn:
    """Fail under CI, skip elsewhere, saying `why` (name the path or the package it wanted)."""
    if in_ci():
        pytest.fail(f"{why} (CI=true: a missing test dependency fails instead of skipping)")
    pytest.skip(why)
