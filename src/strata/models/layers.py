"""Building blocks: MLP, cross networks (DCN v1 and v2, full/low-rank/mixture), embeddings.

References: Wang et al. 2017, "Deep & Cross Network for Ad Click Predictions" (CrossNet v1);
Wang et al. 2021, "DCN V2: Improved Deep & Cross Network" (full and low-rank mixture cross layers).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class MLPConfig(BaseModel):
    """Hidden widths, dropout and normalisation of a feed-forward block."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden: tuple[int, ...] = (128,)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    layer_norm: bool = False


class MLP(nn.Module):
    """Linear -> ReLU (-> LayerNorm) (-> Dropout) stack; an optional final linear to `out_dim`."""

    def __init__(self, in_dim: int, cfg: MLPConfig, out_dim: int | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for h in cfg.hidden:
            layers.append(nn.Linear(width, h))
            layers.append(nn.ReLU())
            if cfg.layer_norm:
                layers.append(nn.LayerNorm(h))
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            width = h
        if out_dim is not None:
            layers.append(nn.Linear(width, out_dim))
            width = out_dim
        self.net = nn.Sequential(*layers)
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, out_dim)


class CrossNetConfig(BaseModel):
    """Cross network shape: `full` W (D x D), `low_rank` U V^T, or a `mixture` of experts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_layers: int = Field(default=2, ge=1)
    kind: Literal["full", "low_rank", "mixture"] = "full"
    rank: int = Field(default=32, ge=1)
    num_experts: int = Field(default=4, ge=1)


class CrossNetV2(nn.Module):
    """DCN-v2 cross layers: x_{l+1} = x0 * (W x_l + b) + x_l, with W full, low-rank or a MoE."""

    def __init__(self, dim: int, cfg: CrossNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n = cfg.num_layers
        if cfg.kind == "full":
            self.w = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n))
        elif cfg.kind == "low_rank":
            self.v = nn.ModuleList(nn.Linear(dim, cfg.rank, bias=False) for _ in range(n))
            self.u = nn.ModuleList(nn.Linear(cfg.rank, dim) for _ in range(n))
        else:
            e, r = cfg.num_experts, cfg.rank
            # Per layer and expert: V (D->r), C (r->r, nonlinearity around it), U (r->D).
            self.V = nn.Parameter(torch.randn(n, e, dim, r) * dim**-0.5)
            self.C = nn.Parameter(torch.randn(n, e, r, r) * r**-0.5)
            self.U = nn.Parameter(torch.randn(n, e, r, dim) * r**-0.5)
            self.bias = nn.Parameter(torch.zeros(n, dim))
            self.gates = nn.ModuleList(nn.Linear(dim, e, bias=False) for _ in range(n))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0  # (B, D)
        for i in range(self.cfg.num_layers):
            if self.cfg.kind == "full":
                x = x0 * self.w[i](x) + x  # (B, D)
            elif self.cfg.kind == "low_rank":
                x = x0 * self.u[i](self.v[i](x)) + x  # (B, D)
            else:
                v = torch.tanh(torch.einsum("bd,edr->ber", x, self.V[i]))  # (B, E, r)
                v = torch.tanh(torch.einsum("ber,ers->bes", v, self.C[i]))  # (B, E, r)
                uv = torch.einsum("bes,esd->bed", v, self.U[i]) + self.bias[i]  # (B, E, D)
                experts = x0.unsqueeze(1) * uv  # (B, E, D)
                g = torch.softmax(self.gates[i](x), dim=-1).unsqueeze(-1)  # (B, E, 1)
                x = (g * experts).sum(dim=1) + x  # (B, D)
        return x  # (B, D)


class CrossNet(nn.Module):
    """Classic DCN v1 cross layers: x_{l+1} = x0 (x_l . w) + b + x_l (one vector w per layer)."""

    def __init__(self, dim: int, num_layers: int = 3) -> None:
        super().__init__()
        self.w = nn.ParameterList(
            nn.Parameter(torch.randn(dim) * dim**-0.5) for _ in range(num_layers)
        )
        self.b = nn.ParameterList(nn.Parameter(torch.zeros(dim)) for _ in range(num_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0  # (B, D)
        for w, b in zip(self.w, self.b, strict=True):
            x = x0 * (x @ w).unsqueeze(-1) + b + x  # (B, D)
        return x  # (B, D)


def embedding(num: int, dim: int, padding_idx: int | None = None) -> nn.Embedding:
    """An embedding table with small normal init (std 0.05) so dot products start near zero."""
    emb = nn.Embedding(num, dim, padding_idx=padding_idx)
    nn.init.normal_(emb.weight, std=0.05)
    if padding_idx is not None:
        with torch.no_grad():
            emb.weight[padding_idx].zero_()
    return emb


def masked_mean(emb: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean of `emb` (B, L, D) over positions whose id is non-zero; zeros for an empty row."""
    mask = (ids > 0).to(emb.dtype).unsqueeze(-1)  # (B, L, 1)
    total = (emb * mask).sum(dim=1)  # (B, D)
    count = mask.sum(dim=1).clamp(min=1.0)  # (B, 1)
    return total / count  # (B, D)
