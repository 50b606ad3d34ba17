"""CTR rankers over preprocessed Criteo rows: DCN (cross network v1) and DCN-v2, chosen by config.

DCN: Wang et al. 2017, "Deep & Cross Network for Ad Click Predictions" (classic: 6 cross layers,
deep 2 x 1024, dropout 0.5, embeddings 16). DCN-v2: Wang et al. 2021 (matrix cross layers, full or
low-rank). Both run the cross and deep networks in parallel (or stacked) and end in one logit.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from strata.config import CtrModelConfig
from strata.models.layers import MLP, CrossNet, CrossNetConfig, CrossNetV2, MLPConfig, embedding


class CtrModel(nn.Module):
    """Dense block + one embedding per categorical -> cross and deep networks -> a click logit."""

    offsets: torch.Tensor

    def __init__(self, n_dense: int, cardinalities: list[int], cfg: CtrModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_dense = n_dense
        self.cardinalities = list(cardinalities)
        # One table with per-column offsets: a single gather per batch instead of 26.
        offsets = torch.tensor([0, *cardinalities[:-1]], dtype=torch.int64).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.emb = embedding(int(sum(cardinalities)), cfg.emb_dim)
        in_dim = n_dense + len(cardinalities) * cfg.emb_dim
        self.in_dim = in_dim
        self.cross: nn.Module
        if cfg.cross_layers == 0:
            self.cross = nn.Identity()
        elif cfg.type == "dcn":
            self.cross = CrossNet(in_dim, num_layers=cfg.cross_layers)
        else:
            kind: Literal["low_rank", "full"] = "low_rank" if cfg.low_rank is not None else "full"
            cross_cfg = CrossNetConfig(
                num_layers=cfg.cross_layers, kind=kind, rank=cfg.low_rank or 32
            )
            self.cross = CrossNetV2(in_dim, cross_cfg)
        self.deep = MLP(in_dim, MLPConfig(hidden=tuple(cfg.deep), dropout=cfg.dropout))
        head_in = self.deep.out_dim if cfg.structure == "stacked" else in_dim + self.deep.out_dim
        self.head = nn.Linear(head_in, 1)

    def embed(self, cats: torch.Tensor) -> torch.Tensor:
        """Embeddings of every categorical column: (B, F) ids -> (B, F, E)."""
        return self.emb(cats + self.offsets)  # (B, F, E)

    def forward_with_emb(
        self, dense: torch.Tensor, cats: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B,) and the gathered embeddings (B, F, E) (for the embedding L2 penalty)."""
        e = self.embed(cats)  # (B, F, E)
        x0 = torch.cat([dense, e.flatten(1)], dim=1)  # (B, D)
        if self.cfg.structure == "stacked":
            h = self.deep(self.cross(x0))  # (B, H)
        else:
            h = torch.cat([self.cross(x0), self.deep(x0)], dim=1)  # (B, D + H)
        return self.head(h).squeeze(-1), e  # (B,), (B, F, E)

    def forward(self, dense: torch.Tensor, cats: torch.Tensor) -> torch.Tensor:
        """Click logits (B,) for dense (B, n_dense) float32 and cats (B, F) int64."""
        return self.forward_with_emb(dense, cats)[0]


class ProbModel(nn.Module):
    """Wraps a `CtrModel` to output probabilities: the exported serving graph."""

    def __init__(self, model: CtrModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, dense: torch.Tensor, cats: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(dense, cats))  # (B,)
