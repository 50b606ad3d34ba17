"""Atomic file writes and file hashes shared by every module that persists artifacts.

A file is written to a temporary sibling, flushed to disk, then renamed over the target
(`os.replace` is atomic on POSIX), so a reader or a crash never sees a half-written file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from strata.errors import StorageError, StrataError

#: errno values that mean "this disk cannot take the write", not a bug.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
#: Below this many free bytes a failed write is put down to a full disk (libraries such as
#: safetensors, torch and DuckDB report ENOSPC in their own exception types, without errno).
FULL_BELOW_BYTES = 1 << 20


@contextmanager
def atomic_path(path: Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`.

    The temporary file is removed when the block raises. `mode` replaces mkstemp's 0600 so
    shared caches and registries stay readable by other users.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, streamed in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def out_of_space(exc: BaseException, folder: Path) -> str | None:
    """Why `exc`, raised while writing under `folder`, is the disk's fault (None if it is not):
    an OSError with a storage errno, or any error while that disk has (almost) no space left."""
    code = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and code in STORAGE_ERRNOS:
        return os.strerror(code)
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    free = st.f_bavail * st.f_frsize
    return f"no space left on device ({free} bytes free)" if free < FULL_BELOW_BYTES else None


@contextmanager
def writing(folder: Path, what: str) -> Iterator[None]:
    """Turn a failure of the writes in this block on a full or read-only disk into one clear
    `StorageError` naming `what` and `folder`; other errors pass unchanged."""
    try:
        yield
    except StrataError:
        raise
    except Exception as exc:
        why = out_of_space(exc, folder)
        if why is None:
            raise
        raise StorageError(f"{what} {folder}: {why}; nothing was committed, "
                           "free space and rerun") from exc  # fmt: skip
