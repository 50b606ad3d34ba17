"""One online feature row as one byte string: the Valkey store's row encoding (pure NumPy).

Why one string per row rather than a hash with a field per feature: a standalone server then
answers a read of N rows with one native `MGET` (about 70 us of server time for 300 rows), where
N `HMGET`s inside a Lua script cost about 1.8 ms of server time (the script's per-call bridge and
table work, measured with `INFO commandstats`); that was the floor of `/recommend`'s item reads.

A version's *layout* is the ordered list of its features, append-only: a feature written to the
version for the first time goes to the end, so the byte offset of every existing feature never
changes. A row is

    u16 little-endian   F = bytes of fixed-width values that follow
    F bytes             the fixed-width features (scalars, vectors) in layout order, little-endian
    per string feature  u32 little-endian length + UTF-8 bytes, in layout order

A row written before a feature joined the layout is shorter (smaller F, fewer strings): the
feature reads as zero / "" for it, as an absent row does. Decoding is vectorised: the fixed
parts of all rows are joined into one buffer and viewed through one structured dtype.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from strata.features.online import FeatureSpec

_HEAD = struct.Struct("<H")
_STRLEN = struct.Struct("<I")
MAX_FIXED = 0xFFFF  # bytes of fixed-width values per row (u16 header)


@dataclass(frozen=True)
class RowLayout:
    """The byte layout of one entity version's rows (see the module docstring); the derived
    parts are computed once per layout, which the store caches per version."""

    names: tuple[str, ...]
    specs: Mapping[str, FeatureSpec]

    @cached_property
    def fixed(self) -> tuple[str, ...]:
        """Fixed-width features in layout order."""
        return tuple(n for n in self.names if self.specs[n].dtype != "string")

    @cached_property
    def strings(self) -> tuple[str, ...]:
        """String features in layout order."""
        return tuple(n for n in self.names if self.specs[n].dtype == "string")

    @cached_property
    def width(self) -> int:
        """Bytes of the fixed-width part of a full row."""
        return sum(self.specs[n].width for n in self.fixed)

    @cached_property
    def dtype(self) -> np.dtype:
        """Structured little-endian dtype of the fixed-width part."""
        names, formats, offsets, off = [], [], [], 0
        for n in self.fixed:
            s = self.specs[n]
            base = np.dtype(s.dtype).newbyteorder("<")
            names.append(n)
            formats.append(base if s.dim == 1 else (base, (s.dim,)))
            offsets.append(off)
            off += s.width
        return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": off})

    def extended(self, specs: Mapping[str, FeatureSpec]) -> RowLayout:
        """This layout with features it does not have yet appended (in `specs` order)."""
        new = [n for n in specs if n not in self.specs]
        if not new:
            return self
        return RowLayout((*self.names, *new), {**self.specs, **{n: specs[n] for n in new}})


def encode(layout: RowLayout, n: int, values: Mapping[str, Any]) -> list[bytes]:
    """`n` rows with every feature of `layout` (`values[name]` is (n,) or (n, dim)); a feature
    missing from `values` is written as zero / ""."""
    width = layout.width
    if width > MAX_FIXED:
        raise ValueError(f"fixed-width part of {width} bytes exceeds {MAX_FIXED}")
    rec = np.zeros(n, dtype=layout.dtype)
    for name in layout.fixed:
        if name in values:
            rec[name] = values[name]
    fixed = rec.tobytes()
    head = _HEAD.pack(width)
    rows = [head + fixed[r * width : (r + 1) * width] for r in range(n)]
    for name in layout.strings:
        col = values.get(name)
        for r in range(n):
            raw = col[r].encode() if col is not None and col[r] else b""
            rows[r] += _STRLEN.pack(len(raw)) + raw
    return rows


def decode(
    layout: RowLayout, raw: Sequence[bytes | None], features: Sequence[str]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(found (N,), {feature: (N,) or (N, dim) native-endian values}) from stored rows (None =
    absent), for `features` of `layout` in that order."""
    n = len(raw)
    width = layout.width
    found = np.fromiter((r is not None for r in raw), dtype=bool, count=n)
    zeros = bytes(width)
    head = _HEAD.pack(width)
    if all(r is None or r[:2] == head for r in raw):  # every row has the current layout
        buf = b"".join(zeros if r is None else r[2 : 2 + width] for r in raw)
    else:  # some rows predate features appended later: pad their fixed part with zeros
        parts = []
        for r in raw:
            w = 0 if r is None else _HEAD.unpack_from(r)[0]
            parts.append(zeros if r is None else r[2 : 2 + w] + zeros[w:])
        buf = b"".join(parts)
    rec = np.frombuffer(buf, dtype=layout.dtype, count=n) if width else None
    out: dict[str, np.ndarray] = {}
    wanted_strings = [f for f in features if layout.specs[f].dtype == "string"]
    strings = _strings(layout, raw, wanted_strings) if wanted_strings else {}
    for name in features:
        spec = layout.specs[name]
        if spec.dtype == "string":
            out[name] = strings[name]
        else:
            assert rec is not None
            out[name] = rec[name].astype(spec.dtype)  # a native-endian, contiguous copy
    return found, out


def _strings(
    layout: RowLayout, raw: Sequence[bytes | None], wanted: Sequence[str]
) -> dict[str, np.ndarray]:
    """String columns (object arrays, "" when absent): a small per-row parse."""
    index = {name: i for i, name in enumerate(layout.strings)}
    cols = {name: np.full(len(raw), "", dtype=object) for name in wanted}
    last = max(index[name] for name in wanted)
    for r, row in enumerate(raw):
        if row is None:
            continue
        pos = 2 + _HEAD.unpack_from(row)[0]
        for i in range(last + 1):
            if pos >= len(row):
                break
            (length,) = _STRLEN.unpack_from(row, pos)
            pos += _STRLEN.size
            name = layout.strings[i]
            if name in cols:
                cols[name][r] = row[pos : pos + length].decode()
            pos += length
    return cols
