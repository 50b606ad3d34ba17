"""Helpers for the CTR tests: tiny configs and synthetic Criteo-format Parquet files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from strata.config import (
    CtrConfig,
    CtrModelConfig,
    CtrPreprocessConfig,
    CtrTrainConfig,
    DriftConfig,
    IncrementalConfig,
)


def tiny_cfg(model: str = "dcn", **drift: float | int | None) -> CtrConfig:
    """Small layers, few epochs: fast on a shared 2-core CPU."""
    return CtrConfig(
        preprocess=CtrPreprocessConfig(min_count=2),
        model=CtrModelConfig(type=model, emb_dim=4, cross_layers=2, deep=(32,), dropout=0.1),
        train=CtrTrainConfig(
            epochs=2,
            batch_size=128,
            read_rows=700,
            shuffle_buffer=1500,
            replay_rows=500,
            max_threads=1,
        ),
        drift=DriftConfig(**{"window": 100, "cooldown_s": 0.0, "cooldown_labels": 0, **drift}),
        incremental=IncrementalConfig(recent_rows=800, epochs=1),
        buffer_size=1000,
        registry_name="ctr-test",
    )


def synthetic_frame(n: int, seed: int = 0, drift: bool = False) -> pd.DataFrame:
    """Synthetic Criteo rows without the teacher's probability."""
    from strata.datasets.criteo_synthetic import criteo_like

    return criteo_like(n, seed=seed, drift=drift).drop(columns=["p_true"])


def synthetic_parquet(tmp: Path, n: int, seed: int = 0) -> Path:
    """Write synthetic rows as one Parquet file and return its path."""
    path = tmp / f"criteo-{n}-{seed}.parquet"
    synthetic_frame(n, seed).to_parquet(path, index=False)
    return path


def linear_world(n: int, seed: int = 0) -> pd.DataFrame:
    """Synthetic rows whose click is a function of one 13-value categorical (C5): a hashed LR,
    which sees every value as a token, is near perfect on them (the baseline gate's tests)."""
    df = synthetic_frame(n, seed=seed)
    values = sorted(df["C5"].dropna().unique())
    df["label"] = df["C5"].isin(set(values[::2])).astype("int8")
    return df
