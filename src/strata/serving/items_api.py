"""The live catalogue over HTTP (admin token): `POST /items` adds an item, `PATCH /items/{id}`
changes a live item's content, `DELETE /items/{id}` retires an item (never recommended again;
its events are still accepted). The image travels as base64 in the JSON body. Each call checks
the item against the served version, builds the new live catalogue, then writes the durable
record and swaps the pipeline (`strata.serving.state.change_live`); the other replicas follow
through the signal or their next poll."""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.responses import JSONResponse

from strata.errors import ValidationError
from strata.features.live_items import MAX_IMAGE_BYTES
from strata.serving.follow import announce, serving_signal
from strata.serving.live import resolve_item
from strata.serving.openapi import ADMIN, ItemChange, ItemIn, ItemPatch, errors
from strata.serving.state import ServingState, change_live

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from fastapi import FastAPI

    Admin = Callable[[Request], Awaitable[ServingState]]

#: What the JSON body of POST/PATCH may hold besides the image.
FIELDS = ("title", "genres", "year", "description")
# An integer for the built-in datasets, the owner's id for a declared one (`resolve_item`).
ItemId = Annotated[str, Path(min_length=1, max_length=256)]


def _image(body: dict[str, Any]) -> bytes | None:
    raw = body.get("image_base64")
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise ValidationError("image_base64", "must be a base64 string")
    if len(raw) > (MAX_IMAGE_BYTES * 4) // 3 + 8:
        raise ValidationError("image_base64", f"the image is over {MAX_IMAGE_BYTES} bytes")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValidationError("image_base64", f"not base64: {exc}") from None


async def _apply(
    state: ServingState, op: str, item_id: object, body: dict[str, Any]
) -> JSONResponse:
    t0 = time.perf_counter()
    fields = {k: v for k, v in body.items() if k in FIELDS}
    image = _image(body) if op != "retire" else None
    record = await change_live(state, (op, item_id, fields, image))
    pipe = state.pipeline
    await asyncio.to_thread(announce, state.signals, serving_signal(pipe.dataset), "catalogue")
    dense, external = resolve_item(pipe.space, item_id)
    out = {
        "item_id": external if external is not None else dense,
        "op": op,
        "version": pipe.version,
        "item": (record or {}).get("item"),
        "live_items": len(pipe.live.ids) if pipe.live else 0,
        "ms": round((time.perf_counter() - t0) * 1000.0, 1),
    }
    return JSONResponse(out, status_code=201 if op == "add" else 200)


def install_items(app: FastAPI, admin: Admin) -> None:
    """Mount the live-catalogue routes; `admin` returns the app's state for a request that
    carries the admin token (and raises 401/403 otherwise)."""

    need_admin = Depends(admin)  # 401/403 before the body is looked at
    change: dict[int | str, dict[str, Any]] = {200: {"model": ItemChange}}

    @app.post("/items", status_code=201,
              responses={201: {"model": ItemChange}, **errors(*ADMIN, 413, 503)})  # fmt: skip
    async def add_item(body: ItemIn, state: ServingState = need_admin) -> JSONResponse:
        """Add an item (id, title, genres, year, description, image_base64): retrievable by the
        next /recommend, without retraining. The id is an integer, or the owner's id (text)
        for a declared dataset."""
        fields = body.model_dump(exclude_unset=True)
        return await _apply(state, "add", body.item_id, fields)

    @app.patch("/items/{item_id}", responses={**change, **errors(*ADMIN, 404, 413, 503)})
    async def update_item(
        item_id: ItemId, body: ItemPatch, state: ServingState = need_admin
    ) -> JSONResponse:
        """Change a live item's content (re-encoded and re-embedded)."""
        return await _apply(state, "update", item_id, body.model_dump(exclude_unset=True))

    @app.delete("/items/{item_id}", responses={**change, **errors(*ADMIN, 404, 503)})
    async def retire_item(item_id: ItemId, state: ServingState = need_admin) -> JSONResponse:
        """Retire an item: never recommended again; its events are still accepted."""
        return await _apply(state, "retire", item_id, {})
