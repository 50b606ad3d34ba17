"""The storage URI every pipeline step reads and writes: a local folder, or a remote fsspec URI.

A local folder (or `file://` URI) is used as `STRATA_HOME` directly. A remote URI (`s3://...`,
any fsspec protocol) is mirrored: the step pulls the tree into a scratch folder, runs there, and
pushes the tree back only when it succeeded, so a failed step never publishes partial output.
Steps of one run execute one after another, so there is a single writer at a time.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from strata.config import Settings
from strata.errors import ConfigError

log = logging.getLogger(__name__)


def is_remote(uri: str) -> bool:
    """Whether `uri` names a non-local filesystem (anything with a scheme other than file)."""
    return "://" in uri and not uri.startswith("file://")


def local_path(uri: str) -> Path:
    """The folder of a local storage URI (`/path` or `file:///path`)."""
    if is_remote(uri):
        raise ConfigError(f"storage uri {uri!r} is not local")
    return Path(uri.removeprefix("file://")).expanduser()


def resolve_uri(settings: Settings, uri: str | None = None) -> str:
    """The storage URI to use: the argument, else `pipelines.storage_uri`, else `<home>`."""
    chosen = uri or settings.pipelines.storage_uri or str(settings.home)
    if not chosen.strip():
        raise ConfigError("pipelines.storage_uri: empty")
    return chosen


def serving_version(uri: str, dataset: str) -> str | None:
    """The serving version of `dataset` in the registry under the storage at `uri` (None before
    the first promotion); a remote storage is asked for the pointer file only."""
    from strata.registry import POINTER, Registry

    if not is_remote(uri):
        return Registry(local_path(uri) / "registry", dataset).serving()
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri)
    Registry(Path("registry"), dataset)  # the same name check as a local registry
    pointer = f"{root.rstrip('/')}/registry/{dataset}/{POINTER}"
    if not fs.exists(pointer):
        return None
    return fs.cat_file(pointer).decode().strip() or None


@contextmanager
def workspace(uri: str, base: Settings | None = None) -> Iterator[Settings]:
    """Settings whose home is the storage at `uri` (mirrored through fsspec when remote)."""
    base = base or Settings()
    if not is_remote(uri):
        home = local_path(uri)
        home.mkdir(parents=True, exist_ok=True)
        yield base.model_copy(update={"home": home})
        return
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri)
    scratch = Path(tempfile.mkdtemp(prefix="strata-ws-"))
    try:
        if fs.exists(root):
            fs.get(root.rstrip("/") + "/", str(scratch) + "/", recursive=True)
        yield base.model_copy(update={"home": scratch})
        # Reached only when the step returned normally: publish its outputs.
        fs.put(str(scratch) + "/", root.rstrip("/") + "/", recursive=True)
        log.info("pushed workspace %s -> %s", scratch, uri)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def fetched(uri: str) -> Iterator[Path]:
    """A local path holding the file or folder at `uri` (downloaded to scratch when remote)."""
    if not is_remote(uri):
        yield local_path(uri)
        return
    import fsspec

    fs, rpath = fsspec.core.url_to_fs(uri)
    scratch = Path(tempfile.mkdtemp(prefix="strata-fetch-"))
    try:
        dest = scratch / Path(rpath.rstrip("/")).name
        fs.get(rpath, str(dest), recursive=fs.isdir(rpath))
        yield dest
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
