"""Local time for the hour / day-of-week context of a dataset's declared time zone, identical in
SQL (the offline store's `context` definition) and NumPy (the request path).

A zone is turned into its table of UTC-offset changes (daylight-saving transitions included)
between 1970 and 2070, read from the system's IANA database through `zoneinfo`. In SQL the
offset is a `CASE` over that table, plain enough to run unchanged on DuckDB, Trino/Athena and
Spark; in NumPy it is one `searchsorted`. Times outside the table keep its first or last offset.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from strata.errors import ValidationError

_FIRST, _LAST = 0, 3_155_760_000  # 1970-01-01 .. 2070-01-01 (unix seconds)
_DAY = 86_400


def _offset(zone: ZoneInfo, ts: int) -> int:
    off = datetime.fromtimestamp(ts, UTC).astimezone(zone).utcoffset()
    return int(off.total_seconds()) if off is not None else 0


@lru_cache(maxsize=32)
def transitions(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(starts, offsets) of zone `name`: offset `offsets[i]` (seconds east of UTC) applies from
    `starts[i]` on; `starts[0]` is -inf in effect (the first offset applies before it too)."""
    try:
        zone = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError("timezone", f"unknown time zone {name!r}") from None
    days = np.arange(_FIRST, _LAST, _DAY, dtype=np.int64)
    offs = np.array([_offset(zone, int(t)) for t in days], dtype=np.int64)
    starts, values = [int(days[0])], [int(offs[0])]
    for i in np.flatnonzero(np.diff(offs)) + 1:
        lo, hi = int(days[i - 1]), int(days[i])  # the change happens in (lo, hi]
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _offset(zone, mid) == offs[i - 1]:
                lo = mid
            else:
                hi = mid
        starts.append(hi)
        values.append(int(offs[i]))
    return np.asarray(starts, np.int64), np.asarray(values, np.int64)


def local_seconds(ts: np.ndarray, name: str = "UTC") -> np.ndarray:
    """Unix seconds shifted to wall-clock time in zone `name` (int64)."""
    t = np.asarray(ts, dtype=np.int64)
    if name == "UTC":
        return t
    starts, offs = transitions(name)
    return t + offs[np.maximum(np.searchsorted(starts, t, side="right") - 1, 0)]


def local_seconds_sql(name: str = "UTC", col: str = "ts") -> str:
    """SQL for `local_seconds` of column `col` (a CASE over the zone's offset changes)."""
    if name == "UTC":
        return col
    starts, offs = transitions(name)
    if len(offs) == 1:
        return f"({col} + {int(offs[0])})"
    whens = " ".join(
        f"WHEN {col} < {int(s)} THEN {int(o)}" for s, o in zip(starts[1:], offs[:-1], strict=True)
    )
    return f"({col} + CASE {whens} ELSE {int(offs[-1])} END)"
