"""Batched torch inference over the models' typed inputs: item and query embeddings, ranker
scores, and the ranker's positional inputs (what ONNX export traces). Shared by training,
evaluation and the engine's torch-backed parts; no autograd."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from strata.models.batch import ItemFeatures, QueryFeatures, RankBatch
    from strata.models.dcn import DCNRanker
    from strata.models.two_tower import TwoTower


def rank_inputs(b: RankBatch, device: str = "cpu") -> tuple[torch.Tensor, ...]:
    """Positional ranker inputs: query tensors, item tensors, retrieval score."""
    import torch

    score = torch.from_numpy(np.ascontiguousarray(b.retrieval_score, dtype=np.float32)).to(device)
    return (*b.query.tensors(device), *b.item.tensors(device), score)


def _in_batches(n: int, batch_size: int, run: Callable[[np.ndarray], Any]) -> list[np.ndarray]:
    """`run(rows)` over consecutive row slices without autograd; each output as a NumPy array."""
    import torch

    with torch.no_grad():
        return [
            run(np.arange(s, min(s + batch_size, n))).cpu().numpy() for s in range(0, n, batch_size)
        ]


def embed_items(model: TwoTower, items: ItemFeatures, batch_size: int = 4096) -> np.ndarray:
    """Item-tower embeddings (N, D) float32, in `items` order."""
    dev = next(model.parameters()).device.type
    out = _in_batches(
        len(items), batch_size, lambda rows: model.item_tower(*items.take(rows).tensors(dev))
    )
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, model.cfg.out_dim))


def embed_queries(model: TwoTower, queries: QueryFeatures, batch_size: int = 4096) -> np.ndarray:
    """Query-tower embeddings (N, D) float32, in `queries` order."""
    dev = next(model.parameters()).device.type
    out = _in_batches(
        len(queries), batch_size, lambda rows: model.query_tower(*queries.take(rows).tensors(dev))
    )
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, model.cfg.out_dim))


def score_ranker(
    model: DCNRanker, rows: RankBatch, batch_size: int = 8192, logits: bool = False
) -> np.ndarray:
    """Ranker probabilities (N,) float32 for labelled or unlabelled rows; log-odds with
    `logits` (what to order by: fused logits reach ~20, where float32 probabilities tie)."""
    import torch

    dev = next(model.parameters()).device.type
    link = (lambda x: x) if logits else torch.sigmoid
    out = _in_batches(
        len(rows), batch_size, lambda idx: link(model(*rank_inputs(rows.take(idx), dev)))
    )
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)
