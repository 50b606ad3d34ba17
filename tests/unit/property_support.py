"""Hypothesis settings shared by the parser property tests: reproducible (derandomized, no
example database) and without deadlines, since one example may write and read real files."""

from __future__ import annotations

from hypothesis import HealthCheck, settings


def props(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
