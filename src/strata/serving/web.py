"""The web UI and the read endpoints it needs.

`/ui` (explorer) and `/ui/ops` (operations) are static pages in the package (`serving/web/`, no
CDN, no build step) that call the public HTTP API only. What the API lacked for them is added
here and documented in docs/serving.md: `GET /catalog` (genres, devices and event types of the
served version, for the forms), titles and posters of items (`ItemDisplay`, read once from the
offline store's items table and the live catalogue), and `GET /items/{id}/image`.
"""

from __future__ import annotations

import logging
import threading
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Path as PathParam
from fastapi import Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from strata.errors import NotFoundError, StrataError, ValidationError
from strata.serving.openapi import errors

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from fastapi import FastAPI

    from strata.serving.service import RecommendationPipeline
    from strata.serving.state import ServingState

log = logging.getLogger(__name__)

_IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png",
                ".webp": "image/webp"}  # fmt: skip
_PAGES = {"": "index.html", "/ops": "ops.html"}
_ASSETS = {"app.js": "text/javascript", "ops.js": "text/javascript", "style.css": "text/css"}


class ItemDisplay:
    """Titles, years and poster files of the catalogue, for people (the models never read
    them): the offline store's items table of the dataset, read on first use (absent when this
    home has no offline store), plus the live items."""

    def __init__(self, settings: Any, dataset: str) -> None:
        self._settings, self._dataset = settings, dataset
        self._rows: dict[int, tuple[str, int | None, str | None]] | None = None
        self._lock = threading.Lock()

    def _load(self) -> dict[int, tuple[str, int | None, str | None]]:
        with self._lock:
            if self._rows is None:
                rows: dict[int, tuple[str, int | None, str | None]] = {}
                try:
                    import pandas as pd

                    from strata.features.offline import OfflineStore

                    df = OfflineStore(self._settings).items(self._dataset)
                    for r in df.itertuples():
                        # pandas gives NaN, None or pd.NA (nullable Int16 of declared data)
                        year = None if pd.isna(r.year) else int(r.year)
                        path = r.image_path if isinstance(r.image_path, str) else None
                        rows[int(r.item_id)] = (str(r.title), year, path)
                except (StrataError, OSError) as exc:
                    log.info("no item titles for the UI (%s): ids only", exc)
                self._rows = rows
        return self._rows

    def get(self, pipe: RecommendationPipeline, item_id: int) -> dict[str, Any]:
        """Title, year and whether a poster exists for one item ({} when unknown)."""
        title, year, path = self._lookup(pipe, item_id)
        if title is None:
            return {}
        return {"title": title, "year": year, "image": path is not None}

    def image(self, pipe: RecommendationPipeline, item_id: int) -> Path | None:
        """The poster file of an item, when it has one that is an image file."""
        path = self._lookup(pipe, item_id)[2]
        if path is None:
            return None
        p = Path(path)
        return p if p.suffix.lower() in _IMAGE_TYPES and p.is_file() else None

    def _lookup(
        self, pipe: RecommendationPipeline, item_id: int
    ) -> tuple[str | None, int | None, str | None]:
        live = pipe.live
        if live is not None and item_id in live.items:
            from strata.features.live_items import LiveCatalogue

            it = live.items[item_id]
            p = LiveCatalogue(pipe.settings, pipe.dataset).image_path(it)
            return it.title, it.year, None if p is None else str(p)
        return self._load().get(item_id, (None, None, None))


def dense_item(pipe: RecommendationPipeline, item_id: str) -> int | None:
    """The dense id of a path's item id (the owner's id for a declared dataset, else a
    non-negative integer): None when the catalogue cannot hold it; a 422 naming `item_id` when
    a dataset of integer ids is given something else."""
    if pipe.ids is None:
        if not (item_id.isascii() and item_id.isdigit()):
            raise ValidationError("item_id", "must be an integer >= 0")
        dense = int(item_id)
        return dense if dense < 2**63 else None
    try:
        return int(pipe.ids.item(item_id))
    except ValidationError:
        return None


def _asset(name: str) -> bytes:
    return resources.files("strata.serving").joinpath("web", name).read_bytes()


def install_web(
    app: FastAPI,
    pipeline: Callable[[Request], Awaitable[RecommendationPipeline]],
    serving: Callable[[Request], Awaitable[ServingState]],
) -> None:
    """Mount the UI pages, their assets and the read endpoints they use."""

    shown: dict[str, ItemDisplay] = {}  # per dataset: titles do not change with versions

    def display(pipe: RecommendationPipeline) -> ItemDisplay:
        if pipe.dataset not in shown:
            shown[pipe.dataset] = ItemDisplay(pipe.settings, pipe.dataset)
        return shown[pipe.dataset]

    for suffix, page in _PAGES.items():

        def serve_page(page: str = page) -> HTMLResponse:
            return HTMLResponse(_asset(page).decode())

        app.add_api_route(f"/ui{suffix}", serve_page, methods=["GET"], include_in_schema=False)

    @app.get("/ui/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in _ASSETS:
            raise NotFoundError(f"no UI asset {name!r}")
        return Response(_asset(name), media_type=_ASSETS[name])

    @app.get("/catalog", responses=errors(503))
    async def catalog(request: Request) -> JSONResponse:
        """What the served version knows of its catalogue: genres, devices, event types, sizes,
        whether ids are the owner's (text) and a few user ids to start from (the UI's forms)."""
        pipe = await pipeline(request)
        own = "user_external" in pipe.space.meta
        users = pipe.space.meta["user_external"][:3] if own else pipe.space.user_ids[:3].tolist()
        return JSONResponse({
            "dataset": pipe.dataset, "version": pipe.version, "own_ids": own, "users": users,
            "genres": list(pipe.space.meta["genres"]), "devices": list(pipe.devices),
            "event_types": list(pipe.event_types), "items": len(pipe.catalog),
            "live_items": len(pipe.live.ids) if pipe.live else 0,
        })  # fmt: skip

    @app.get("/replicas", responses=errors(503))
    async def replicas(request: Request) -> JSONResponse:
        """What every live replica of this dataset serves: model version, item feature version,
        live-catalogue revision, degraded or not, last beat. Replicas beat into the online
        store every few seconds; the embedded mode (or a store that is down, with `error`) lists
        this replica alone."""
        state = await serving(request)
        listed, error = await state.replicas()
        return JSONResponse({"self": state.replica, "replicas": listed, "error": error})

    @app.get("/items/{item_id}/image", response_class=FileResponse,
             responses={200: {"content": {t: {} for t in sorted(set(_IMAGE_TYPES.values()))}},
                        **errors(404, 503)})  # fmt: skip
    async def item_image(
        request: Request, item_id: Annotated[str, PathParam(min_length=1, max_length=256)]
    ) -> FileResponse:
        """An item's poster (the images given to `features encode --images`, or a live item's
        upload); 404 when it has none. The owner's item id for a declared dataset."""
        pipe = await pipeline(request)
        dense = dense_item(pipe, item_id)
        path = display(pipe).image(pipe, dense) if dense is not None else None
        if path is None:
            raise NotFoundError(f"item {item_id} has no image")
        return FileResponse(path, media_type=_IMAGE_TYPES[path.suffix.lower()],
                            headers={"Cache-Control": "max-age=3600"})  # fmt: skip

    app.state.item_display = display
