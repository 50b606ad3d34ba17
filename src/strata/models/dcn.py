"""DCN-v2 ranker: embeddings of user, item and context features plus the retrieval score, a cross
network (full / low-rank / mixture) and a deep MLP, stacked or in parallel (Wang et al. 2021)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from strata.models.inputs import CTX_DIM, FeatureDims
from strata.models.layers import MLP, CrossNetConfig, CrossNetV2, MLPConfig, embedding, masked_mean


class DCNConfig(BaseModel):
    """Ranker shape: embedding widths, cross network, deep network and how they combine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id_dim: int = Field(default=16, ge=1)
    small_dim: int = Field(default=8, ge=1)
    content_dim: int = Field(default=16, ge=1)
    cross: CrossNetConfig = CrossNetConfig(num_layers=2, kind="low_rank", rank=32)
    deep: MLPConfig = MLPConfig(hidden=(128, 64))
    structure: Literal["stacked", "parallel"] = "parallel"
    # Late fusion with retrieval: in eval mode (scoring, export, serving) the output is the
    # network's logit plus `score_weight * retrieval_score` (the two-tower's softmax logit when
    # set to 1 / temperature), a product of the two experts; training fits the network alone.
    # 0 = the network's logit only.
    score_weight: float = Field(default=0.0, ge=0.0)
    # A third expert, also eval mode only: `prior_weight * item_num[:, prior_col]`, the item's
    # trailing popularity (log events in the feature window) as a log-prior; 0 = off.
    prior_weight: float = Field(default=0.0, ge=0.0)
    prior_col: int = Field(default=0, ge=0)


class DCNRanker(nn.Module):
    """Scores (user, item, context) rows; returns a logit per row.

    In eval mode the logit is fused with the retrieval logit (`DCNConfig.score_weight`): the
    two-tower saw every training positive, so its scores on them are inflated and a ranker that
    learns to lean on (or correct) them fails to transfer to served candidates; fitted apart
    and added in log-odds, each model keeps what it learned (measured on ML-100K: docs/quality.md).
    `DCNConfig.prior_weight` adds the item's recent popularity the same way: neither model
    extrapolates the popularity at the cut-off (a trend the training events never saw) as
    strongly as new users and new interests follow it.
    """

    def __init__(self, dims: FeatureDims, cfg: DCNConfig) -> None:
        super().__init__()
        if cfg.prior_weight and cfg.prior_col >= dims.item_num_dim:
            raise ValueError(f"prior_col {cfg.prior_col} outside item_num ({dims.item_num_dim})")
        self.dims = dims
        self.cfg = cfg
        s, d, c = cfg.small_dim, cfg.id_dim, cfg.content_dim
        self.user = embedding(dims.n_users, d)
        self.age = embedding(dims.n_ages, s)
        self.gender = embedding(dims.n_genders, s)
        self.occupation = embedding(dims.n_occupations, s)
        self.hist = embedding(dims.n_items, d, padding_idx=0)
        self.top_genre = embedding(dims.n_genres + 1, s)
        self.device = embedding(dims.n_devices, s)
        self.item = embedding(dims.n_items, d)
        self.genres = nn.Linear(dims.n_genres, c)
        self.text = nn.Linear(dims.text_dim, c)
        self.image = nn.Linear(dims.image_dim, c)
        in_dim = (
            3 * d + 5 * s + dims.user_num_dim + CTX_DIM + 3 * c + dims.item_num_dim + 2
        ) + 2  # + history-item affinity + retrieval score
        self.in_dim = in_dim
        self.cross = CrossNetV2(in_dim, cfg.cross)
        self.deep = MLP(in_dim, cfg.deep)
        head_in = self.deep.out_dim if cfg.structure == "stacked" else in_dim + self.deep.out_dim
        self.head = nn.Linear(head_in, 1)

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
        item: torch.Tensor,
        genres: torch.Tensor,
        item_num: torch.Tensor,
        text: torch.Tensor,
        image: torch.Tensor,
        flags: torch.Tensor,
        retrieval_score: torch.Tensor,
    ) -> torch.Tensor:
        h = masked_mean(self.hist(hist), hist)  # (B, d)
        it = self.item(item)  # (B, d)
        # Explicit history-candidate affinity: cross layers would need depth to find it.
        affinity = (h * it).sum(-1, keepdim=True)  # (B, 1)
        x0 = torch.cat(
            [
                self.user(user),  # (B, d)
                h,
                it,
                self.age(age),  # (B, s)
                self.gender(gender),
                self.occupation(occupation),
                self.top_genre(top_genre),
                self.device(device),
                user_num,  # (B, Nu)
                ctx,  # (B, 4)
                self.genres(genres),  # (B, c)
                self.text(text),
                self.image(image),
                item_num,  # (B, Ni)
                flags,  # (B, 2)
                affinity,
                retrieval_score.unsqueeze(-1),  # (B, 1)
            ],
            dim=-1,
        )  # (B, in_dim)
        if self.cfg.structure == "stacked":
            z = self.deep(self.cross(x0))  # (B, H)
        else:
            z = torch.cat([self.cross(x0), self.deep(x0)], dim=-1)  # (B, in_dim + H)
        out = self.head(z).squeeze(-1)  # (B,)
        if self.cfg.score_weight and not self.training:
            out = out + self.cfg.score_weight * retrieval_score  # (B,)
        if self.cfg.prior_weight and not self.training:
            out = out + self.cfg.prior_weight * item_num[:, self.cfg.prior_col]  # (B,)
        return out
