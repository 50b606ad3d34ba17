"""Helpers every `strata` command uses."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime

from strata.config import Settings
from strata.errors import ValidationError


def settings() -> Settings:
    """Settings from the environment (STRATA_*); built per command, never held globally."""
    return Settings()


def print_json(obj: object) -> None:
    """Write one JSON document to stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def parse_ts(value: str | int | None, field: str = "--until") -> int | None:
    """Unix seconds from an int, a digit string, or an ISO date/datetime (naive means UTC)."""
    if value is None:
        return None
    if isinstance(value, int):
        ts = value
    else:
        text = value.strip()
        if text.lstrip("-").isdigit():
            ts = int(text)
        else:
            try:
                dt = datetime.fromisoformat(text)
            except ValueError:
                raise ValidationError(
                    field, f"expected unix seconds or an ISO date, got {value!r}"
                ) from None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            ts = int(dt.timestamp())
    if ts < 0:
        raise ValidationError(field, f"must be >= 0, got {ts}")
    return ts
