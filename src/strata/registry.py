"""Model registry on disk: `<registry_dir>/<dataset>/<version>/` plus a `serving` pointer file.

A version folder is built under a temporary name and renamed into place, so readers never see a
half-written version; the pointer is switched with write-temp + `os.replace` (atomic on POSIX).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from strata.atomic import atomic_write_text, sha256_file, writing
from strata.errors import DataError, NotFoundError

MANIFEST = "manifest.json"
POINTER = "serving"
_VERSION = re.compile(r"^v(\d{4,})$")


class Registry:
    """Versions of one dataset's models and which one is serving."""

    def __init__(self, root: Path, dataset: str) -> None:
        from strata.safepath import check_name

        # the name becomes a folder: no separator, no "..", no NUL (strata.safepath)
        check_name("dataset", dataset)
        self.dir = Path(root) / dataset
        self.dataset = dataset

    def versions(self) -> list[str]:
        """Committed versions, oldest first."""
        if not self.dir.exists():
            return []
        names = [p.name for p in self.dir.iterdir() if p.is_dir() and _VERSION.match(p.name)]
        return sorted(names, key=lambda n: int(n[1:]))

    def next_version(self) -> str:
        """The name the next committed version gets (v0001, v0002, ...)."""
        vs = self.versions()
        return f"v{(int(vs[-1][1:]) + 1 if vs else 1):04d}"

    def path(self, version: str | None = None) -> Path:
        """Folder of `version` (default: the serving one); NotFoundError when absent."""
        v = version or self.serving()
        if v is None:
            raise NotFoundError(f"no serving model for dataset {self.dataset!r}: run strata train")
        p = self.dir / v
        if not _VERSION.match(v) or not (p / MANIFEST).exists():
            raise NotFoundError(f"model version {v!r} of {self.dataset!r} does not exist")
        return p

    def manifest(self, version: str | None = None) -> dict[str, Any]:
        """The parsed manifest of `version` (default: serving)."""
        p = self.path(version) / MANIFEST
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(p, f"corrupt manifest: {exc}") from None

    def serving(self) -> str | None:
        """Name of the serving version, or None before the first promotion."""
        p = self.dir / POINTER
        return p.read_text().strip() or None if p.exists() else None

    def promote(self, version: str) -> None:
        """Point `serving` at `version` atomically."""
        self.path(version)
        atomic_write_text(self.dir / POINTER, version + "\n")

    @contextmanager
    def stage(self) -> Iterator[Path]:
        """A scratch folder inside the registry for building a version; removed if not committed.

        Its writer holds an flock on `<folder>.lock` (taken before the folder exists) while it
        lives, so the folder of a writer that was killed is known and swept by the next stage.
        A full disk while staging is a StorageError; nothing is committed then."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._sweep_staging()
        fd, lock = tempfile.mkstemp(dir=self.dir, prefix=".staging-", suffix=".lock")
        fcntl.flock(fd, fcntl.LOCK_EX)
        tmp = Path(lock.removesuffix(".lock"))
        try:
            # inside the cleanup: the disk is judged while the partial files still fill it
            with writing(self.dir, "registry"):
                tmp.mkdir()
                yield tmp
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
            os.unlink(lock)
            os.close(fd)

    def _sweep_staging(self) -> None:
        """Remove the staging folders of writers that are gone (their lock is free)."""
        for folder in self.dir.glob(".staging-*"):
            if not folder.is_dir():
                continue
            lock = folder.with_name(folder.name + ".lock")
            try:
                fd = os.open(lock, os.O_RDWR)
            except FileNotFoundError:
                fd = -1  # a folder without a lock file: its writer died while removing it
            try:
                if fd >= 0:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # a live writer
            try:
                if folder.exists():  # its writer may have committed it before letting go
                    shutil.rmtree(folder)
            finally:
                if fd >= 0:
                    lock.unlink(missing_ok=True)
                    os.close(fd)

    def commit(self, staged: Path, manifest: dict[str, Any]) -> str:
        """Hash every staged file into the manifest, write it, and rename the folder into place."""
        files = {
            p.name: sha256_file(p)
            for p in sorted(staged.iterdir())
            if p.is_file() and p.name != MANIFEST
        }
        version = self.next_version()
        full = {**manifest, "version": version, "dataset": self.dataset, "files": files}
        (staged / MANIFEST).write_text(json.dumps(full, indent=2, default=str))
        # rename() of a directory fails if the target exists, so two writers cannot clobber.
        os.rename(staged, self.dir / version)
        return version

    def verify(self, version: str | None = None) -> None:
        """Re-hash the files of a version against its manifest; DataError naming the version and
        the first file that is missing or differs (truncated, altered or replaced after commit)."""
        p = self.path(version)
        files = self.manifest(p.name).get("files")
        if not isinstance(files, dict):
            raise DataError(p / MANIFEST, f"{p.name}: the manifest lists no file hashes")
        for name, digest in files.items():
            f = p / name
            if not f.is_file():
                raise DataError(f, f"{p.name}: {name} is missing (listed in the manifest)")
            if sha256_file(f) != digest:
                raise DataError(
                    f, f"{p.name}: {name}: hash mismatch with the manifest's sha256 "
                    "(truncated, altered or replaced after the version was committed)",
                )  # fmt: skip

    def decisions(self, last: int = 50) -> list[dict[str, Any]]:
        """The last `last` gate decisions of `decisions.jsonl`, oldest first (a line being
        written, or a damaged one, is skipped)."""
        f = self.dir / "decisions.jsonl"
        if not f.exists():
            return []
        out = []
        for line in f.read_text().splitlines()[-last:]:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def append_log(self, record: dict[str, Any]) -> None:
        """Append one JSON line to `<dataset>/decisions.jsonl` (fine-tune gate decisions)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / "decisions.jsonl").open("a") as f:
            f.write(json.dumps(record, default=str) + "\n")
