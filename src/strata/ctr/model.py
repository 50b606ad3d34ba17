"""CTR rankers over preprocessed Criteo rows: DCN (cross network v1) and DCN-v2, chosen by config.

DCN: Wang et al. 2017, "Deep & Cross Network for Ad Click Predictions" (classic: 6 cross layers,
deep 2 x 1024, dropout 0.5, embeddings 16). DCN-v2: Wang et al. 2021 (matrix cross layers, full or
low-rank). Both run the cross and deep networks in parallel (or stacked) and end in one logit.
The optional wide part (Cheng et al. 2016, "Wide & Deep Learning for Recommender Systems") adds a
first-order term to that logit: on a few thousand rows a linear model over sparse ids is hard to
beat, and the sum lets the network learn only what the linear term misses.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from strata.config import CtrModelConfig
from strata.models.layers import MLP, CrossNet, CrossNetConfig, CrossNetV2, MLPConfig, embedding


class WideLinear(nn.Module):
    """First-order logit: a weight per categorical id, per bucket of each dense input and per
    dense input, plus optional hashed pairwise crosses of categorical ids. All zero at start, so
    training begins from the network's logit alone; every op exports to plain ONNX."""

    boundaries: torch.Tensor
    bucket_offsets: torch.Tensor
    cross_i: torch.Tensor
    cross_j: torch.Tensor
    cross_salt: torch.Tensor

    def __init__(
        self, n_dense: int, n_ids: int, n_fields: int, int_buckets: int, cross_buckets: int
    ) -> None:
        super().__init__()
        self.ids = nn.Embedding(n_ids, 1)
        self.dense = nn.Linear(n_dense, 1, bias=False)
        # Dense inputs are standardised log counts: equal-width buckets over [-3, 3] give each
        # range of a count its own weight (the log-bucketing of hashed LR, inside the graph).
        self.int_buckets = int_buckets
        bounds = torch.linspace(-3.0, 3.0, max(int_buckets - 1, 0))
        self.register_buffer("boundaries", bounds, persistent=False)
        offs = torch.arange(n_dense, dtype=torch.int64) * max(int_buckets, 1)
        self.register_buffer("bucket_offsets", offs, persistent=False)
        self.buckets = nn.Embedding(n_dense * int_buckets, 1) if int_buckets > 1 else None
        self.cross_buckets = cross_buckets
        pairs = torch.combinations(torch.arange(n_fields), 2)  # (P, 2)
        self.register_buffer("cross_i", pairs[:, 0].contiguous(), persistent=False)
        self.register_buffer("cross_j", pairs[:, 1].contiguous(), persistent=False)
        salt = torch.arange(len(pairs), dtype=torch.int64) * _SALT
        self.register_buffer("cross_salt", salt, persistent=False)
        self.cross = nn.Embedding(cross_buckets, 1) if cross_buckets > 0 else None
        for p in self.parameters():
            nn.init.zeros_(p)

    def forward(self, dense: torch.Tensor, cats: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Logits (B,) from dense (B, D), per-column ids (B, F) and table rows `ids` (B, F)."""
        z = self.ids(ids).squeeze(-1).sum(1) + self.dense(dense).squeeze(-1)  # (B,)
        if self.buckets is not None:
            b = (dense.unsqueeze(-1) > self.boundaries).sum(-1)  # (B, D) bucket per input
            z = z + self.buckets(b + self.bucket_offsets).squeeze(-1).sum(1)
        if self.cross is not None:
            a, c = cats[:, self.cross_i], cats[:, self.cross_j]  # (B, P) each
            h = (a * _MUL_A + c * _MUL_B + self.cross_salt) % self.cross_buckets  # (B, P)
            z = z + self.cross(h).squeeze(-1).sum(1)
        return z  # (B,)


# Odd multipliers for the cross hash; ids < 2**21 keep every product inside int64.
_MUL_A, _MUL_B, _SALT = 2_654_435_761, 40_503, 97_531


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
        self.wide: WideLinear | None = None
        if cfg.wide:
            self.wide = WideLinear(
                n_dense,
                int(sum(cardinalities)),
                len(cardinalities),
                cfg.wide_int_buckets,
                cfg.wide_cross_buckets,
            )

    def embed(self, cats: torch.Tensor) -> torch.Tensor:
        """Embeddings of every categorical column: (B, F) ids -> (B, F, E)."""
        return self.emb(cats + self.offsets)  # (B, F, E)

    def forward_with_emb(
        self, dense: torch.Tensor, cats: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B,) and the gathered embeddings (B, F, E) (for the embedding L2 penalty)."""
        ids = cats + self.offsets  # (B, F) rows of the shared table
        e = self.emb(ids)  # (B, F, E)
        x0 = torch.cat([dense, e.flatten(1)], dim=1)  # (B, D)
        if self.cfg.structure == "stacked":
            h = self.deep(self.cross(x0))  # (B, H)
        else:
            h = torch.cat([self.cross(x0), self.deep(x0)], dim=1)  # (B, D + H)
        logit = self.head(h).squeeze(-1)  # (B,)
        if self.wide is not None:
            logit = logit + self.wide(dense, cats, ids)  # (B,)
        return logit, e  # (B,), (B, F, E)

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
