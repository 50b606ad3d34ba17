"""Error bodies of both HTTP apps, in one shape: FastAPI's `{"detail": [...]}` with each entry
naming the offending field (`k`, `[3].item_id`, `rows[3].I5`) next to FastAPI's `loc`."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from strata.errors import NotFoundError, StoreUnavailableError, StrataError, ValidationError

_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_SOURCES = ("query", "body", "path", "header")


def field_of(loc: tuple[Any, ...] | list[Any]) -> str:
    """FastAPI location -> field name: ('query', 'k') -> 'k', ('body', 0, 'ts') -> '[0].ts',
    ('body', 'rows', 3, 'I5') -> 'rows[3].I5'."""
    parts = list(loc[1:] if loc and loc[0] in _SOURCES else loc)
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


def body_loc(field_path: str) -> list[str | int]:
    """`rows[3].I5` -> ["body", "rows", 3, "I5"] (FastAPI's location of a body field)."""
    out: list[str | int] = ["body"]
    for name, index in _PART.findall(field_path):
        out.append(int(index) if index else name)
    return out


def validation_response(exc: RequestValidationError) -> JSONResponse:
    """422 for a request FastAPI could not parse: every error with its field named."""
    errs = []
    for e in exc.errors():
        loc = list(e.get("loc", ()))
        errs.append({"field": field_of(loc), "loc": loc, "msg": e.get("msg", "invalid"),
                     "type": e.get("type", "value_error")})  # fmt: skip
    return JSONResponse({"detail": errs}, status_code=422)


def error_response(
    status: int,
    field: str | None,
    msg: str,
    loc: list[Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """One error entry; `field` None for errors that are not about one input."""
    detail: dict[str, Any] = {"msg": msg, "type": "value_error"}
    if field is not None:
        detail |= {"field": field, "loc": loc or [field]}
    return JSONResponse({"detail": [detail]}, status_code=status, headers=headers)


RETRY_AFTER_S = 1  # Retry-After of a 503: about when the breaker has probed the store again


def install_http_errors(app: FastAPI) -> None:
    """Both apps: request-schema errors 422 naming each field, a body that cannot be read as
    JSON 422 naming `body` (Starlette says 400), and every other HTTP error in the same body
    shape with its status and headers."""

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.detail, list):  # already entries (the CTR routes' 422s)
            return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
        if exc.status_code == 400 and "parsing the body" in str(exc.detail):
            return error_response(422, "body", "not a JSON document (or not UTF-8)")
        return error_response(
            exc.status_code, None, str(exc.detail), headers=dict(exc.headers or {})
        )


def install_error_handlers(app: FastAPI) -> None:
    """Map the library's errors to HTTP: ValidationError 422 naming the field, NotFoundError
    404, an unreachable store 503 with Retry-After, an unavailable inference server 503, any
    other StrataError 400; request-schema errors 422 in the same body shape."""
    install_http_errors(app)

    @app.exception_handler(ValidationError)
    async def _invalid(_: Request, exc: ValidationError) -> JSONResponse:
        return error_response(422, exc.field, exc.problem)

    @app.exception_handler(NotFoundError)
    async def _missing(_: Request, exc: NotFoundError) -> JSONResponse:
        return error_response(404, None, str(exc))

    @app.exception_handler(StoreUnavailableError)
    async def _unavailable(_: Request, exc: StoreUnavailableError) -> JSONResponse:
        return error_response(503, None, str(exc), headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(StrataError)
    async def _strata(_: Request, exc: StrataError) -> JSONResponse:
        from strata.serving.backends import InferenceUnavailableError

        return error_response(
            503 if isinstance(exc, InferenceUnavailableError) else 400, None, str(exc)
        )
