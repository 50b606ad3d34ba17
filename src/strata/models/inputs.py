"""Input schema shared by the towers and the ranker: vocabulary sizes and tensor input names.

Models take plain tensors in a fixed order (so they export to ONNX with named inputs); the
`models.batch` dataclasses carry the same fields in the same order.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Order matters: it is the positional order of `QueryTower.forward` and the ONNX input names.
QUERY_INPUTS = (
    "user",  # (B,) int64, 0 = unknown user
    "age",  # (B,) int64 age bucket, 0 = unknown
    "gender",  # (B,) int64, 0 = unknown
    "occupation",  # (B,) int64, 0 = unknown
    "hist",  # (B, L) int64 recent item indices, 0 = padding
    "top_genre",  # (B,) int64 most frequent genre in history, 0 = none
    "user_num",  # (B, Nu) float32 numeric user features (log event count, ...)
    "ctx",  # (B, 4) float32 hour/day-of-week sin-cos
    "device",  # (B,) int64, 0 = unknown
)
ITEM_INPUTS = (
    "item",  # (B,) int64, 0 = unknown item
    "genres",  # (B, G) float32 multi-hot
    "item_num",  # (B, Ni) float32 numeric metadata (year, price, ...) incl. missing flags
    "text",  # (B, T) float32 text embedding (zeros when absent)
    "image",  # (B, P) float32 image embedding (zeros when absent)
    "flags",  # (B, 2) float32 has_text, has_image
)
CTX_DIM = 4


class FeatureDims(BaseModel):
    """Vocabulary sizes and vector widths a model is built for (index 0 is always 'unknown')."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_users: int = Field(ge=1)
    n_items: int = Field(ge=1)
    n_ages: int = Field(default=8, ge=1)
    n_genders: int = Field(default=3, ge=1)
    n_occupations: int = Field(default=22, ge=1)
    n_genres: int = Field(default=19, ge=1)
    n_devices: int = Field(default=5, ge=1)
    hist_len: int = Field(default=20, ge=1)
    user_num_dim: int = Field(default=2, ge=1)
    item_num_dim: int = Field(default=2, ge=1)
    text_dim: int = Field(default=384, ge=1)
    image_dim: int = Field(default=1280, ge=1)
