"""Typed batches crossing every data -> model boundary, and a synthetic generator of the same types.

Arrays stay NumPy until `.tensors(device)` so that data preparation, serving and training share one
representation; field order equals `strata.models.inputs.QUERY_INPUTS` / `ITEM_INPUTS`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from strata.models.inputs import CTX_DIM, ITEM_INPUTS, QUERY_INPUTS, FeatureDims

if TYPE_CHECKING:
    import torch


def _tensors(obj: Any, device: str) -> tuple[torch.Tensor, ...]:
    import torch

    return tuple(
        torch.from_numpy(np.ascontiguousarray(getattr(obj, f.name))).to(device) for f in fields(obj)
    )


def _take(obj: Any, idx: np.ndarray) -> Any:
    return type(obj)(**{f.name: getattr(obj, f.name)[idx] for f in fields(obj)})


def _concat(parts: list[Any]) -> Any:
    cls = type(parts[0])
    return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)})


@dataclass(frozen=True)
class QueryFeatures:
    """Query-side inputs for B rows (see `QUERY_INPUTS` for meaning and shapes)."""

    user: np.ndarray  # (B,) int64
    age: np.ndarray  # (B,) int64
    gender: np.ndarray  # (B,) int64
    occupation: np.ndarray  # (B,) int64
    hist: np.ndarray  # (B, L) int64
    top_genre: np.ndarray  # (B,) int64
    user_num: np.ndarray  # (B, Nu) float32
    ctx: np.ndarray  # (B, 4) float32
    device: np.ndarray  # (B,) int64

    def __len__(self) -> int:
        return len(self.user)

    def tensors(self, device: str = "cpu") -> tuple[torch.Tensor, ...]:
        """Torch tensors in `QUERY_INPUTS` order."""
        return _tensors(self, device)

    def take(self, idx: np.ndarray) -> QueryFeatures:
        """Rows `idx` (fancy indexing; also repeats rows)."""
        return _take(self, idx)


@dataclass(frozen=True)
class ItemFeatures:
    """Item-side inputs for B rows (see `ITEM_INPUTS`)."""

    item: np.ndarray  # (B,) int64
    genres: np.ndarray  # (B, G) float32
    item_num: np.ndarray  # (B, Ni) float32
    text: np.ndarray  # (B, T) float32
    image: np.ndarray  # (B, P) float32
    flags: np.ndarray  # (B, 2) float32

    def __len__(self) -> int:
        return len(self.item)

    def tensors(self, device: str = "cpu") -> tuple[torch.Tensor, ...]:
        """Torch tensors in `ITEM_INPUTS` order."""
        return _tensors(self, device)

    def take(self, idx: np.ndarray) -> ItemFeatures:
        """Rows `idx` (fancy indexing; also repeats rows)."""
        return _take(self, idx)


assert tuple(f.name for f in fields(QueryFeatures)) == QUERY_INPUTS
assert tuple(f.name for f in fields(ItemFeatures)) == ITEM_INPUTS


@dataclass(frozen=True)
class RetrievalBatch:
    """Positive (query, item) pairs for the two-tower; `log_q` = log item sampling rate."""

    query: QueryFeatures
    item: ItemFeatures
    log_q: np.ndarray  # (B,) float32, log P(item appears as a positive)
    weight: np.ndarray  # (B,) float32 per-example weight
    ts: np.ndarray | None = None  # (B,) int64 event time (point-in-time negatives); None = unknown

    def __len__(self) -> int:
        return len(self.log_q)

    def take(self, idx: np.ndarray) -> RetrievalBatch:
        """Rows `idx`."""
        return RetrievalBatch(
            self.query.take(idx), self.item.take(idx), self.log_q[idx], self.weight[idx],
            None if self.ts is None else self.ts[idx],
        )  # fmt: skip


@dataclass(frozen=True)
class RankBatch:
    """Labelled (query, candidate) rows for the ranker, with the retrieval score as a feature."""

    query: QueryFeatures
    item: ItemFeatures
    retrieval_score: np.ndarray  # (B,) float32
    label: np.ndarray  # (B,) float32 in {0, 1}

    def __len__(self) -> int:
        return len(self.label)

    def take(self, idx: np.ndarray) -> RankBatch:
        """Rows `idx`."""
        return RankBatch(
            self.query.take(idx), self.item.take(idx), self.retrieval_score[idx], self.label[idx]
        )


def concat_queries(parts: list[QueryFeatures]) -> QueryFeatures:
    """Row-wise concatenation of query features."""
    return _concat(parts)


def concat_items(parts: list[ItemFeatures]) -> ItemFeatures:
    """Row-wise concatenation of item features."""
    return _concat(parts)


# --- synthetic ------------------------------------------------------------------------------


def synthetic_queries(dims: FeatureDims, n: int, rng: np.random.Generator) -> QueryFeatures:
    """Random but well-formed query features for `n` rows."""
    hist = rng.integers(0, dims.n_items, size=(n, dims.hist_len))
    return QueryFeatures(
        user=rng.integers(0, dims.n_users, n),
        age=rng.integers(0, dims.n_ages, n),
        gender=rng.integers(0, dims.n_genders, n),
        occupation=rng.integers(0, dims.n_occupations, n),
        hist=hist,
        top_genre=rng.integers(0, dims.n_genres + 1, n),
        user_num=rng.normal(size=(n, dims.user_num_dim)).astype(np.float32),
        ctx=rng.uniform(-1, 1, size=(n, CTX_DIM)).astype(np.float32),
        device=rng.integers(0, dims.n_devices, n),
    )


def synthetic_items(dims: FeatureDims, item: np.ndarray, seed: int = 0) -> ItemFeatures:
    """Deterministic features per item index (same index -> same features), like a real catalog."""
    n_items = dims.n_items
    rng = np.random.default_rng(seed)
    genres = (rng.random((n_items, dims.n_genres)) < 0.15).astype(np.float32)
    num = rng.normal(size=(n_items, dims.item_num_dim)).astype(np.float32)
    text = rng.normal(size=(n_items, dims.text_dim)).astype(np.float32) * 0.05
    image = rng.normal(size=(n_items, dims.image_dim)).astype(np.float32) * 0.05
    flags = np.ones((n_items, 2), dtype=np.float32)
    return ItemFeatures(item, genres[item], num[item], text[item], image[item], flags[item])


def synthetic_batches(
    dims: FeatureDims, batch_size: int, n_batches: int, seed: int = 0
) -> Iterator[RetrievalBatch]:
    """Retrieval batches where each user prefers a fixed item cluster, so models can learn."""
    rng = np.random.default_rng(seed)
    # Zipf-like popularity so the logQ correction has something to correct.
    pop = 1.0 / np.arange(1, dims.n_items) ** 0.8
    pop /= pop.sum()
    for _ in range(n_batches):
        q = synthetic_queries(dims, batch_size, rng)
        # Planted preference: user u likes items near (u * 7) mod n, mixed with popularity.
        liked = 1 + (q.user * 7 + rng.integers(0, 5, batch_size)) % (dims.n_items - 1)
        popular = 1 + rng.choice(dims.n_items - 1, size=batch_size, p=pop)
        item = np.where(rng.random(batch_size) < 0.7, liked, popular).astype(np.int64)
        log_q = np.log(pop[item - 1] * 0.3 + 0.7 / (dims.n_items - 1)).astype(np.float32)
        yield RetrievalBatch(
            q, synthetic_items(dims, item), log_q, np.ones(batch_size, dtype=np.float32)
        )


def synthetic_rank_batches(
    dims: FeatureDims, batch_size: int, n_batches: int, seed: int = 0
) -> Iterator[RankBatch]:
    """Ranker batches whose label depends on (user, item) parity and the retrieval score."""
    rng = np.random.default_rng(seed)
    for _ in range(n_batches):
        q = synthetic_queries(dims, batch_size, rng)
        item = rng.integers(1, dims.n_items, batch_size)
        score = rng.normal(size=batch_size).astype(np.float32)
        logit = 2.0 * score + np.where((q.user + item) % 2 == 0, 1.5, -1.5)
        label = (rng.random(batch_size) < 1 / (1 + np.exp(-logit))).astype(np.float32)
        yield RankBatch(q, synthetic_items(dims, item), score, label)
