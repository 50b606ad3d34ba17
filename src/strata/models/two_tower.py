"""Two-tower retrieval: a query tower and an item tower meeting in an L2-normalised dot product.

Both towers embed ids with an 'unknown' row 0, so training-time feature masking (cold start) teaches
them to fall back on demographics/context (queries) and content/metadata (items).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from strata.models.inputs import CTX_DIM, FeatureDims
from strata.models.layers import MLP, MLPConfig, embedding, masked_mean


class TwoTowerConfig(BaseModel):
    """Widths of the towers, output dimension and the softmax temperature."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    out_dim: int = Field(default=64, ge=2)
    id_dim: int = Field(default=32, ge=1)
    small_dim: int = Field(default=8, ge=1)
    content_dim: int = Field(default=32, ge=1)
    mlp: MLPConfig = MLPConfig(hidden=(128,))
    temperature: float = Field(default=0.05, gt=0.0)
    learn_temperature: bool = False


class QueryTower(nn.Module):
    """User id, demographics, pooled recent items, top genre, counts and context -> unit vector."""

    def __init__(self, dims: FeatureDims, cfg: TwoTowerConfig) -> None:
        super().__init__()
        s = cfg.small_dim
        self.user = embedding(dims.n_users, cfg.id_dim)
        self.age = embedding(dims.n_ages, s)
        self.gender = embedding(dims.n_genders, s)
        self.occupation = embedding(dims.n_occupations, s)
        self.hist = embedding(dims.n_items, cfg.id_dim, padding_idx=0)
        self.top_genre = embedding(dims.n_genres + 1, s)
        self.device = embedding(dims.n_devices, s)
        in_dim = 2 * cfg.id_dim + 5 * s + dims.user_num_dim + CTX_DIM
        self.mlp = MLP(in_dim, cfg.mlp, out_dim=cfg.out_dim)

    def forward(
        self,
        user: torch.Tensor,
        age: torch.Tensor,
        gender: torch.Tensor,
        occupation: torch.Tensor,
        hist: torch.Tensor,
        top_genre: torch.Tensor,
        user_num: torch.Tensor,
        ctx: torch.Tensor,
        device: torch.Tensor,
    ) -> torch.Tensor:
        h = masked_mean(self.hist(hist), hist)  # (B, id_dim)
        x = torch.cat(
            [
                self.user(user),  # (B, id_dim)
                h,
                self.age(age),  # (B, s)
                self.gender(gender),
                self.occupation(occupation),
                self.top_genre(top_genre),
                self.device(device),
                user_num,  # (B, Nu)
                ctx,  # (B, 4)
            ],
            dim=-1,
        )  # (B, in_dim)
        return F.normalize(self.mlp(x), dim=-1)  # (B, out_dim)


class ItemTower(nn.Module):
    """Item id, genres, numeric metadata and projected text/image embeddings -> unit vector."""

    def __init__(self, dims: FeatureDims, cfg: TwoTowerConfig) -> None:
        super().__init__()
        self.item = embedding(dims.n_items, cfg.id_dim)
        self.genres = nn.Linear(dims.n_genres, cfg.content_dim)
        self.text = nn.Linear(dims.text_dim, cfg.content_dim)
        self.image = nn.Linear(dims.image_dim, cfg.content_dim)
        in_dim = cfg.id_dim + 3 * cfg.content_dim + dims.item_num_dim + 2
        self.mlp = MLP(in_dim, cfg.mlp, out_dim=cfg.out_dim)

    def forward(
        self,
        item: torch.Tensor,
        genres: torch.Tensor,
        item_num: torch.Tensor,
        text: torch.Tensor,
        image: torch.Tensor,
        flags: torch.Tensor,
    ) -> torch.Tensor:
        static = torch.cat(
            [
                self.item(item),  # (B, id_dim)
                self.genres(genres),  # (B, C)
                self.text(text),  # (B, C)
                self.image(image),  # (B, C)
            ],
            dim=-1,
        )  # (B, S)
        if item_num.dim() == 3:
            # (G, B, Ni): the same items as of G points in time (point-in-time negatives); the
            # id and content projections are computed once and shared by every time.
            g = item_num.shape[0]
            static, flags = static.expand(g, *static.shape), flags.expand(g, *flags.shape)
        x = torch.cat([static, item_num, flags], dim=-1)  # (B, in_dim) or (G, B, in_dim)
        return F.normalize(self.mlp(x), dim=-1)  # (B, out_dim) or (G, B, out_dim)


class TwoTower(nn.Module):
    """The pair of towers plus the (fixed or learned) softmax temperature."""

    def __init__(self, dims: FeatureDims, cfg: TwoTowerConfig) -> None:
        super().__init__()
        self.dims = dims
        self.cfg = cfg
        self.query_tower = QueryTower(dims, cfg)
        self.item_tower = ItemTower(dims, cfg)
        log_t = torch.tensor(math.log(cfg.temperature))
        if cfg.learn_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)

    @property
    def temperature(self) -> torch.Tensor:
        """Current softmax temperature, clamped to a sane range so training cannot blow up."""
        return self.log_temperature.exp().clamp(0.01, 1.0)

    def forward(
        self, query: tuple[torch.Tensor, ...], item: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        q = self.query_tower(*query)  # (B, D)
        i = self.item_tower(*item)  # (B, D)
        return (q * i).sum(-1)  # (B,)
