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

from fastapi import Body, Path, Request
from fastapi.responses import JSONResponse

from strata.errors import ValidationError
from strata.features.live_items import MAX_IMAGE_BYTES
from strata.serving.follow import announce, serving_signal
from strata.serving.live import resolve_item
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


def _fields(body: dict[str, Any], allow: tuple[str, ...]) -> dict[str, Any]:
    extra = sorted(set(body) - {*allow, "image_base64"})
    if extra:
        raise ValidationError(extra[0], f"unknown field; expected {[*allow, 'image_base64']}")
    return {k: v for k, v in body.items() if k in FIELDS}


async def _apply(
    request: Request, op: str, item_id: object, body: dict[str, Any], admin: Admin
) -> JSONResponse:
    state = await admin(request)
    t0 = time.perf_counter()
    allow = ("item_id", *FIELDS) if op == "add" else FIELDS
    fields = _fields(body, allow) if op != "retire" else {}
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

    @app.post("/items", status_code=201)
    async def add_item(request: Request, body: Annotated[dict[str, Any], Body()]) -> JSONResponse:
        """Add an item (id, title, genres, year, description, image_base64): retrievable by the
        next /recommend, without retraining. The id is an integer, or the owner's id (text)
        for a declared dataset."""
        if "item_id" not in body:
            raise ValidationError("item_id", "required")
        raw = body["item_id"]
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise ValidationError("item_id", "must be an integer (or a declared dataset's id)")
        return await _apply(request, "add", raw, body, admin)

    @app.patch("/items/{item_id}")
    async def update_item(
        request: Request, item_id: ItemId, body: Annotated[dict[str, Any], Body()]
    ) -> JSONResponse:
        """Change a live item's content (re-encoded and re-embedded)."""
        return await _apply(request, "update", item_id, body, admin)

    @app.delete("/items/{item_id}")
    async def retire_item(request: Request, item_id: ItemId) -> JSONResponse:
        """Retire an item: never recommended again; its events are still accepted."""
        return await _apply(request, "retire", item_id, {}, admin)
