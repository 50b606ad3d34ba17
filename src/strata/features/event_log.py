"""The durable event log: append-only JSON lines, fsync per append, torn tail cut on open.

One writer per file: a single process's `events.jsonl`, or each replica's own
`events.<replica>.jsonl` and outbox (`strata.features.events`). Other processes read a log with
`writer=False` (landing), and take over a dead replica's outbox under its lock file
(`OwnerLock`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any

from strata.errors import DataError

log = logging.getLogger(__name__)


class EventLog:
    """Append-only JSONL log with fsync per append; a torn tail from a crash is cut on open."""

    def __init__(self, path: Path, writer: bool = True) -> None:
        """`writer=False` opens another process's log for reading: its torn tail may be a
        write in progress, so it is skipped by `read`, never cut."""
        self.path = Path(path)
        if writer:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._repair()

    def _repair(self) -> None:
        if not self.path.exists():
            return
        size = self.path.stat().st_size
        if size == 0:
            return
        with self.path.open("rb+") as fh:
            fh.seek(max(0, size - 1))
            if fh.read(1) == b"\n":
                return
            # A crash mid-write left a partial last line that was never acknowledged: drop it.
            fh.seek(0)
            data = fh.read()
            keep = data.rfind(b"\n") + 1
            fh.truncate(keep)
            os.fsync(fh.fileno())
            log.warning("%s: dropped %d bytes of a torn final record", self.path, size - keep)

    def append(self, records: list[dict[str, Any]]) -> None:
        """Write all records in one `write` and fsync before returning.

        On failure (a full disk takes part of a write, then refuses the rest) the file is cut
        back to its size before the call and the error raised: nothing of a batch that was not
        acknowledged stays, and no torn record sits where the next append would glue onto it.
        """
        if not records:
            return
        data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.fstat(fd).st_size  # one writer per file: nobody appends meanwhile
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, start)  # frees what the partial write took, needs no space
                raise
        finally:
            os.close(fd)

    def size(self) -> int:
        """Bytes in the log (0 when it does not exist yet)."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def drop_prefix(self, offset: int) -> None:
        """Remove the first `offset` bytes (records consumed elsewhere): the rest is written to
        a temporary file, fsynced and renamed over the log, so a crash leaves old or new."""
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            fh.seek(offset)
            rest = fh.read()
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with tmp.open("wb") as fh:
                fh.write(rest)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk: the log stays whole, the space is freed
            raise
        os.replace(tmp, self.path)
        dirfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)

    def read(self, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Complete records from byte `offset` on, and the offset after the last one."""
        if not self.path.exists():
            return [], offset
        with self.path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        records = []
        for n, line in enumerate(data[:end].split(b"\n"), start=1):
            if not line.strip():
                continue
            where = f"line {n}" if offset == 0 else f"line {n} after byte {offset}"
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, too deep
                raise DataError(self.path, f"{where}: not a JSON record ({exc})") from None
            if not isinstance(record, dict):
                raise DataError(self.path, f"{where}: not a JSON object")
            records.append(record)
        return records, offset + end


class OwnerLock:
    """An exclusive advisory lock (flock) on `<path>`, held by the replica that owns a log for
    as long as its process lives: the kernel (or the NFS server) drops it when the process dies,
    so another replica that gets it knows the owner is gone."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock without waiting; False while another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
