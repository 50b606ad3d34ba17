"""The content encoders' networks as `nn.Module`s: a BERT encoder with mean pooling and L2 norm
(all-MiniLM-L6-v2's shape, sized from its `config.json`) and an image backbone's globally
average-pooled features. Weights are loaded by `strata.models.encoders`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class BertLayer(nn.Module):
    """One post-norm transformer block: self-attention, then a GELU feed-forward."""

    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.hidden, self.heads = hidden, heads
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.inter = nn.Linear(hidden, intermediate)
        self.out = nn.Linear(intermediate, hidden)
        self.out_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        dh = self.hidden // self.heads

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, dh).transpose(1, 2)  # (B, H, T, dh)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / dh**0.5 + bias, dim=-1)  # (B, H, T, T)
        ctx = (att @ v).transpose(1, 2).reshape(b, t, self.hidden)  # (B, T, D)
        x = self.attn_norm(x + self.attn_out(ctx))
        h = nn.functional.gelu(self.inter(x))  # exact (erf) GELU, as BERT's "gelu"
        return self.out_norm(x + self.out(h))


class MiniLM(nn.Module):
    """BERT embeddings + encoder layers, mean-pooled over real tokens and L2-normalised; sized by
    a Hugging Face BERT `config.json` (as a dict)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        hidden, eps = int(cfg["hidden_size"]), float(cfg["layer_norm_eps"])
        self.word = nn.Embedding(int(cfg["vocab_size"]), hidden)
        self.pos = nn.Embedding(int(cfg["max_position_embeddings"]), hidden)
        self.token_type = nn.Embedding(int(cfg["type_vocab_size"]), hidden)
        self.emb_norm = nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(
            BertLayer(hidden, int(cfg["num_attention_heads"]), int(cfg["intermediate_size"]), eps)
            for _ in range(int(cfg["num_hidden_layers"]))
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        pos = torch.arange(t, device=input_ids.device).unsqueeze(0)  # (1, T)
        x = self.word(input_ids) + self.pos(pos) + self.token_type(torch.zeros_like(input_ids))
        x = self.emb_norm(x)  # (B, T, D)
        mask = attention_mask.to(x.dtype)  # (B, T)
        bias = ((1.0 - mask) * -1e9)[:, None, None, :]  # (B, 1, 1, T): no attention to pads
        for layer in self.layers:
            x = layer(x, bias)
        summed = (x * mask.unsqueeze(-1)).sum(1)  # (B, D)
        mean = summed / mask.sum(1, keepdim=True).clamp(min=1e-9)
        return nn.functional.normalize(mean, p=2.0, dim=1)


class PooledFeatures(nn.Module):
    """A backbone with `extract_features` (EfficientNet) -> its feature map averaged over space."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.net.extract_features(x)  # type: ignore[operator]  # (B, 1280, 7, 7)
        return fmap.mean(dim=(2, 3))  # (B, 1280)
