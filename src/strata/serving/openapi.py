"""What the HTTP APIs publish about themselves: every status code an operation can answer, the
error body, the request bodies read by hand (`/events`, for speed), and the response bodies.

The handlers return `JSONResponse`s built by hand (no `response_model`: validating every answer
would cost the request path for nothing), so these models only document: they go into the
OpenAPI schema through `responses=` and `openapi_extra=`, and the fuzz tests
(`tests/integration/test_api_fuzz.py`) check every real response against them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from strata.features.events import EVENT_TYPE_PATTERN, INT64_MAX, ContextValue

_WHY = {
    400: "a request the service cannot act on (not about one field)",
    401: "missing or wrong admin bearer token",
    403: "admin endpoints are disabled (no admin token configured)",
    404: "not found (an item, a model version)",
    409: "conflict (a reload that failed; the old version still serves)",
    413: "request body over the size limit",
    422: "bad input: every entry names the field",
    503: "not ready, the online store unreachable, or the inference server down (Retry-After)",
}


class ErrorEntry(BaseModel):
    """One problem: `field` names the input at fault (`k`, `[3].item_id`, `rows[3].I5`)."""

    field: str | None = Field(default=None, min_length=1)
    loc: list[str | int] | None = None
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error answer of both apps."""

    detail: list[ErrorEntry] = Field(min_length=1)


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` of a route that can answer `codes` (422 always: FastAPI adds it anyway)."""
    return {c: {"model": ErrorBody, "description": _WHY[c]} for c in sorted({*codes, 422})}


ADMIN = (401, 403)


def body(schema: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra=` documenting a required JSON body a handler parses itself (a schema
    without `$defs`: nothing outside it is referenced)."""
    assert "$defs" not in schema
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


# --- request bodies read by hand ---------------------------------------------------------------


class EventIn(BaseModel):
    """One event over HTTP; ids are integers, or the owner's ids for a declared dataset."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(min_length=1, max_length=128)
    user_id: int | str
    item_id: int | str
    type: str = Field(pattern=EVENT_TYPE_PATTERN)
    ts: int = Field(ge=0, le=INT64_MAX)
    value: float = 1.0
    context: dict[str, ContextValue] = Field(default_factory=dict, max_length=32)


def events_body(max_events: int) -> dict[str, Any]:
    """`/events` takes one event or a non-empty array of at most `max_events`."""
    one = EventIn.model_json_schema()
    many = {"type": "array", "items": one, "minItems": 1, "maxItems": max_events}
    return body({"oneOf": [one, many]})


class ItemIn(BaseModel):
    """`POST /items`: a new item (the image as base64 bytes: JPEG, PNG or WebP)."""

    model_config = ConfigDict(extra="forbid")

    item_id: int | str
    title: str = Field(min_length=1, max_length=500)
    genres: list[str] = Field(default_factory=list, max_length=30)
    year: int | None = Field(default=None, ge=1800, le=2200)
    description: str = Field(default="", max_length=5000)
    image_base64: str | None = None


class ItemPatch(BaseModel):
    """`PATCH /items/{id}`: the fields to change."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, min_length=1, max_length=500)
    genres: list[str] | None = Field(default=None, max_length=30)
    year: int | None = Field(default=None, ge=1800, le=2200)
    description: str | None = Field(default=None, max_length=5000)
    image_base64: str | None = None


# --- responses -----------------------------------------------------------------------------------


class Readiness(BaseModel):
    """`/readyz`: 200 ready, 503 with the reasons while not (no version loaded yet)."""

    ready: bool
    reasons: list[str]


class Scores(BaseModel):
    retrieval: float
    ranker: float | None = None


class RecommendedItem(BaseModel):
    item_id: int | str
    score: float
    scores: Scores


class Recommendation(BaseModel):
    """A `/recommend` answer."""

    user_id: int | str | None
    k: int
    items: list[RecommendedItem]
    timings_ms: dict[str, float]
    model_version: str
    feature_versions: dict[str, str | None]
    user_features: str
    candidates: dict[str, int]
    degraded: bool
    degraded_reason: str | None


class EventsReport(BaseModel):
    """`/events`: 200 when applied, 202 when durably queued (the online store was down)."""

    accepted: int
    new: int
    duplicates: int
    deferred: int


class ItemChange(BaseModel):
    """`POST/PATCH/DELETE /items`."""

    item_id: int | str
    op: Literal["add", "update", "retire"]
    version: str
    item: dict[str, Any] | None
    live_items: int
    ms: float


class Predictions(BaseModel):
    """`/ctr/predict`: one id and probability per row."""

    ids: list[int]
    probabilities: list[float]
    version: str
