"""The live catalogue: items added, changed or retired while a dataset serves (`POST /items`,
`strata items add|update|retire`), kept durably on the shared storage next to the event logs.

`<home>/catalog/<dataset>/items.jsonl` is an append-only log of `add`, `update` and `retire`
records (fsync per append; appends from several replicas serialised by a lock file), and each
item's image is stored once under `images/<sha256>.<ext>`. Replaying the log gives the current
live items; the log's size is its revision, so a replica knows whether it is up to date by one
`stat`. Only what needs no model version is checked here (field shapes, image bytes); whether the
genres and the id fit a version is the serving side's check (`strata.serving.live`).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from strata.errors import DataError, ValidationError
from strata.features.event_log import EventLog

if TYPE_CHECKING:
    import pandas as pd

    from strata.config import Settings

#: Largest accepted image file, and largest decoded size (a small file can decode huge).
MAX_IMAGE_BYTES = 5 * 2**20
MAX_IMAGE_PIXELS = 25_000_000
_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}

Op = Literal["add", "update", "retire"]


class LiveItem(BaseModel):
    """What describes a live item: the same content the encoders and the item tower see for a
    trained item (title, genres, year, description, poster)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    item_id: int = Field(ge=0, le=2**63 - 1)  # dense (`engine.ids.new_item_id` for own ids)
    external_id: str | None = Field(default=None, min_length=1, max_length=256)  # owner's id
    title: str = Field(min_length=1, max_length=500)
    genres: tuple[str, ...] = Field(default=(), max_length=30)
    year: int | None = Field(default=None, ge=1800, le=2200)
    description: str = Field(default="", max_length=5000)
    # file name under images/, set from the uploaded bytes (content hash + format), never a path
    image: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}\.(jpg|png|webp)$")

    @field_validator("title")
    @classmethod
    def _title_not_blank(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("must not be empty")
        return v

    @field_validator("genres")
    @classmethod
    def _genres_distinct(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(not g.strip() for g in v):
            raise ValueError("genre names must not be empty")
        return tuple(dict.fromkeys(g.strip() for g in v))


def parse_item(data: dict[str, Any]) -> LiveItem:
    """A `LiveItem` from outside data; ValidationError naming the first bad field."""
    import pydantic

    try:
        return LiveItem.model_validate(data)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "item"
        raise ValidationError(field, err["msg"]) from None


def check_image(data: bytes) -> str:
    """The file extension of an acceptable image; ValidationError("image") for anything that
    is not a JPEG/PNG/WebP image within the byte and pixel limits (checked before decoding)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ValidationError("image", "empty file")
    if len(data) > MAX_IMAGE_BYTES:
        raise ValidationError("image", f"{len(data)} bytes; at most {MAX_IMAGE_BYTES}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (w, h) = img.format, img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ValidationError("image", f"{w}x{h} pixels; at most {MAX_IMAGE_PIXELS}")
            img.verify()  # structure and checksums, without decoding the pixels
        # verify() checks no JPEG data at all (a truncated upload passed, then the encoder read
        # it as no image): decode once, a JPEG at 1/8 scale, within the pixel limit checked above
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (max(1, w // 8), max(1, h // 8)))
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValidationError("image", f"not a readable image: {exc}") from None
    except Image.DecompressionBombError as exc:
        raise ValidationError("image", str(exc)) from None
    if fmt not in _FORMATS:
        raise ValidationError("image", f"format {fmt}; expected JPEG, PNG or WebP")
    return _FORMATS[fmt]


def _replayed(record: dict[str, Any], n: int, path: Path) -> tuple[int, LiveItem | None]:
    """One log record as (item id, its content; None for a retire); DataError naming the log
    and the record when it is not one `LiveCatalogue.append` writes (hand-edited, damaged)."""
    import pydantic

    iid, op = record.get("item_id"), record.get("op")
    if isinstance(iid, bool) or not isinstance(iid, int) or not 0 <= iid <= 2**63 - 1:
        raise DataError(path, f"record {n}: item_id {iid!r} is not an integer id")
    if op not in ("add", "update", "retire"):
        raise DataError(path, f"record {n}: op {op!r} is not add, update or retire")
    if op == "retire":
        return iid, None
    try:
        return iid, LiveItem.model_validate(record.get("item"))
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "item"
        raise DataError(path, f"record {n}: item.{where}: {err['msg']}") from None


class LiveCatalogue:
    """The durable live items of one dataset under `<home>/catalog/<dataset>/`."""

    def __init__(self, settings: Settings, dataset: str) -> None:
        self.dir = settings.home / "catalog" / dataset
        self.images = self.dir / "images"
        self._log = EventLog(self.dir / "items.jsonl", writer=False)
        self.last_span = (0, 0)  # the log's size before and after this object's last append

    @property
    def revision(self) -> int:
        """Bytes of the log: changes with every record, equal on every replica once seen."""
        return self._log.size()

    def records(self) -> list[dict[str, Any]]:
        """Every complete record, oldest first."""
        return self._log.read(0)[0]

    def state(self) -> tuple[dict[int, LiveItem], set[int]]:
        """Replay: every item ever added, by id, with its latest content (a retired item stays
        in the catalogue, so events for it are still accepted), and the ids retired now (never
        recommended)."""
        items: dict[int, LiveItem] = {}
        retired: set[int] = set()
        for n, r in enumerate(self.records(), start=1):
            iid, item = _replayed(r, n, self._log.path)
            if item is None:  # retired
                retired.add(iid)
            else:
                items[iid] = item
                retired.discard(iid)
        return items, retired

    def frame(self, items: dict[int, LiveItem]) -> pd.DataFrame:
        """Items as the catalogue table that `FeatureSpace` and the content encoders read
        (item_id, title, year, genres, description, image_path, and external_id for a declared
        dataset's items), sorted by id."""
        import numpy as np
        import pandas as pd

        rows = sorted(items.items())
        own = any(it.external_id is not None for _, it in rows)
        return pd.DataFrame(
            {
                "item_id": np.array([i for i, _ in rows], np.int64),
                **({"external_id": [it.external_id for _, it in rows]} if own else {}),
                "title": [it.title for _, it in rows],
                "year": pd.array([it.year for _, it in rows], dtype="Int16"),
                "genres": [list(it.genres) for _, it in rows],
                "description": [it.description for _, it in rows],
                "image_path": [
                    None if (p := self.image_path(it)) is None else str(p) for _, it in rows
                ],
            }
        )

    def image_path(self, item: LiveItem) -> Path | None:
        """Where the item's image is stored (None without one)."""
        return None if item.image is None else self.images / item.image

    def store_image(self, data: bytes) -> str:
        """Keep checked image bytes once (content-addressed); their file name."""
        ext = check_image(data)
        name = f"{hashlib.sha256(data).hexdigest()[:32]}.{ext}"
        path = self.images / name
        if not path.exists():
            from strata.atomic import atomic_write_bytes

            self.images.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data)
        return name

    def append(self, op: Op, item_id: int, item: LiveItem | None = None) -> dict[str, Any]:
        """Append one record durably (fsynced before returning); the record."""
        record: dict[str, Any] = {"op": op, "item_id": int(item_id), "at": time.time()}
        if item is not None:
            record["item"] = item.model_dump(mode="json")
        with self._locked():
            log = EventLog(self._log.path)  # cuts a torn tail left by a crash
            before = log.size()
            log.append([record])
            self.last_span = (before, log.size())
        return record

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise appends across processes and replicas (flock on a sibling file)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "items.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
