"""What the serving app reads and writes besides errors: the POST /recommend body, the /recommend
response (every score field documented in the README's API section), and the validation of
POST /events bodies against the serving catalogue."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from strata.errors import ValidationError
from strata.serving.service import Recommendation, RecommendationPipeline

if TYPE_CHECKING:
    pass


class RecommendBody(BaseModel):
    """POST /recommend: `user_id` may be omitted for an anonymous user (context only)."""

    model_config = ConfigDict(extra="forbid")

    user_id: StrictInt | None = Field(default=None, ge=0)
    k: StrictInt | None = None
    device: StrictStr = "unknown"
    ts: StrictInt | None = Field(default=None, ge=0)
    stage: Literal["retrieval", "full"] = "full"
    seed: StrictInt | None = Field(default=None, ge=0, le=2**63 - 1)


def recommendation_json(rec: Recommendation, k: int) -> dict[str, Any]:
    """The /recommend response body."""
    ranker = rec.ranker_scores
    items = [
        {
            "item_id": int(i),
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
        "user_id": rec.user_id,
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
    for i, obj in enumerate(raw):
        where = "" if single else f"[{i}]"
        try:
            events.append(parse_event(obj))
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
