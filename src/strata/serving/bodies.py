"""What the serving app reads and writes besides errors: the POST /recommend body, the /recommend
response (every score field documented in docs/serving.md), and the validation of
POST /events bodies against the serving catalogue."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from strata.errors import ValidationError
from strata.serving.service import Recommendation, RecommendationPipeline

if TYPE_CHECKING:
    pass


class RecommendBody(BaseModel):
    """POST /recommend: `user_id` may be omitted for an anonymous user (context only)."""

    model_config = ConfigDict(extra="forbid")

    # an integer >= 0, or the owner's id (string or integer) for a declared dataset
    user_id: StrictInt | StrictStr | None = None
    k: StrictInt | None = None
    device: StrictStr = Field(default="unknown", max_length=64)
    ts: StrictInt | None = Field(default=None, ge=0, le=2**63 - 1)
    stage: Literal["retrieval", "full"] = "full"
    seed: StrictInt | None = Field(default=None, ge=0, le=2**63 - 1)

    @field_validator("user_id", mode="before")
    @classmethod
    def _id(cls, v: object) -> object:
        # one message for the field instead of one per member of the union
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | str)):
            raise ValueError("expected an integer or a string id")
        return v


def request_user(pipe: RecommendationPipeline, user_id: int | str | None) -> int | None:
    """The dense user id of a request: the owner's id through the version's `IdMap` for a
    declared dataset, else an integer >= 0 (ValidationError naming user_id otherwise)."""
    if user_id is None:
        return None
    if pipe.ids is not None:
        return pipe.ids.user(user_id)
    try:
        uid = int(user_id)
    except ValueError:
        raise ValidationError("user_id", "must be an integer >= 0") from None
    if not 0 <= uid <= 2**63 - 1:
        raise ValidationError("user_id", "must be an integer >= 0 (int64)")
    return uid


def recommendation_json(
    rec: Recommendation, k: int, pipe: RecommendationPipeline | None = None,
    user_id: int | str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The /recommend response body; with a declared dataset's pipeline, in the owner's ids
    (`user_id` as the request gave it, item ids from the version's `IdMap`)."""
    ranker = rec.ranker_scores
    ids = pipe.ids if pipe is not None else None
    shown: list[Any] = (
        ids.items_external(rec.item_ids) if ids is not None else [int(i) for i in rec.item_ids]
    )
    items = [
        {
            "item_id": shown[j],
            "score": float(s),
            "scores": {
                "retrieval": float(r),
                **({"ranker": float(ranker[j])} if ranker is not None else {}),
            },
        }
        for j, (i, s, r) in enumerate(
            zip(rec.item_ids.tolist(), rec.scores.tolist(), rec.retrieval_scores.tolist(),
                strict=True)
        )
    ]  # fmt: skip
    return {
        "user_id": user_id if ids is not None else rec.user_id,
        "k": k,
        "items": items,
        "timings_ms": {name: round(ms, 4) for name, ms in rec.timings_ms.items()},
        "model_version": rec.model_version,
        "feature_versions": rec.feature_versions,
        "user_features": rec.user_source,
        "candidates": rec.candidates,
        "degraded": rec.degraded,
        "degraded_reason": "; ".join(rec.degraded_reasons) or None,
    }


def parse_events(body: Any, pipe: RecommendationPipeline, max_events: int) -> list[Any]:
    """Validate one event object or a JSON array of them; ValidationError names the field
    (`item_id`, or `[3].item_id` in a batch) including items the catalog does not hold."""
    from strata.features.events import parse_event

    single = isinstance(body, dict)
    if not single and not isinstance(body, list):
        raise ValidationError("body", "expected an event object or an array of events")
    raw = [body] if single else body
    if not raw:
        raise ValidationError("body", "empty batch")
    if len(raw) > max_events:
        raise ValidationError("body", f"{len(raw)} events; at most {max_events} per request")
    events = []
    ids = pipe.ids
    types = pipe.event_types
    for i, obj in enumerate(raw):
        where = "" if single else f"[{i}]"
        try:
            if ids is not None and isinstance(obj, dict):
                # a declared dataset's events name the owner's ids
                mapped = {"user_id": ids.user, "item_id": ids.item}
                obj = {**obj, **{k: f(obj[k], k) for k, f in mapped.items() if k in obj}}
            event = parse_event(obj)
            if event.type not in types:
                raise ValidationError("type", f"{event.type!r} is not one of {list(types)}")
            events.append(event)
        except ValidationError as exc:
            name = f"{where}.{exc.field}" if where else exc.field
            raise ValidationError(name, exc.problem) from None
    items = np.fromiter((e.item_id for e in events), np.int64, len(events))
    _, known = pipe.catalog.positions(items)
    if not known.all():
        i = int(np.argmin(known))
        name = "item_id" if single else f"[{i}].item_id"
        raise ValidationError(name, f"unknown item {int(items[i])} (not in the catalog)")
    return events
