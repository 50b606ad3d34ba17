"""Names and paths that come from outside (a dataset's files, a CLI argument, a request) must
stay inside the folder they are meant for: these checks refuse `..`, absolute paths, NUL bytes
and symlinks that lead out of the root, with a `ValidationError` naming the field (HTTP 422,
CLI exit 2 with one line)."""

from __future__ import annotations

from pathlib import Path

from strata.errors import ValidationError

_MAX_NAME = 255  # one path component on every filesystem we run on


def check_name(field: str, name: str) -> str:
    """`name` if it can be one folder or file name of ours (no separator, no leading dot, no
    NUL or control character, not empty, at most 255 characters)."""
    bad = (
        not name
        or len(name) > _MAX_NAME
        or "/" in name
        or "\\" in name
        or name.startswith(".")
        or any(ord(ch) < 32 or ord(ch) == 127 for ch in name)
    )
    if bad:
        raise ValidationError(field, f"{name!r} is not a usable name")
    return name


def inside(root: Path, relative: str, field: str) -> Path:
    """`root / relative`, resolved, refused unless it stays inside `root` once symlinks are
    followed (`relative` must not be absolute, hold `..` or a NUL byte)."""
    if "\x00" in relative:
        raise ValidationError(field, f"{relative!r} holds a NUL byte")
    rel = Path(relative)
    if rel.is_absolute() or relative.startswith("~"):
        raise ValidationError(field, f"{relative!r} must be relative to {root}")
    if ".." in rel.parts:
        raise ValidationError(field, f"{relative!r} leads out of {root} ('..')")
    base = Path(root).resolve()
    full = (base / rel).resolve()
    if not full.is_relative_to(base):
        raise ValidationError(field, f"{relative!r} leads out of {root} (a symlink)")
    return full
