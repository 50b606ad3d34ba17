"""A registry version with small real models (exported to ONNX), for backend and Triton tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from strata.config import Settings, TritonExportConfig
from strata.models.inputs import QUERY_INPUTS, FeatureDims

DIMS = FeatureDims(n_users=20, n_items=30, text_dim=8, image_dim=6, hist_len=4)


@dataclass
class Version:
    """What the fixture registered: settings, dataset, version name and the torch modules."""

    settings: Settings
    dataset: str
    version: str
    query_tower: object
    ranker: object


def register_small_models(home: Path, dataset: str = "tiny") -> Version:
    """Export a fresh two-tower's query tower and a DCN-v2 ranker and commit them as a version."""
    import torch

    from strata.models.batch import RankBatch, synthetic_items, synthetic_queries
    from strata.models.dcn import DCNConfig, DCNRanker
    from strata.models.infer import rank_inputs
    from strata.models.two_tower import TwoTower, TwoTowerConfig
    from strata.registry import Registry
    from strata.training.export import RANKER_INPUTS, export_onnx

    torch.manual_seed(0)
    tower = TwoTower(DIMS, TwoTowerConfig(out_dim=16)).query_tower.eval()
    ranker = DCNRanker(DIMS, DCNConfig()).eval()
    rng = np.random.default_rng(0)
    q = synthetic_queries(DIMS, 8, rng)
    settings = Settings(
        home=home,
        triton_export=TritonExportConfig(
            max_batch_size=512, preferred_batch_sizes=(16, 128), max_queue_delay_us=200, instances=2
        ),
    )
    reg = Registry(settings.registry_dir, dataset)
    with reg.stage() as tmp:
        export_onnx(tower, q.tensors(), QUERY_INPUTS, tmp / "query_tower.onnx", "query_embedding")
        rb = RankBatch(
            q, synthetic_items(DIMS, rng.integers(0, 30, 8)), rng.normal(size=8).astype(np.float32),
            np.zeros(8, np.float32),
        )  # fmt: skip
        export_onnx(ranker, rank_inputs(rb), RANKER_INPUTS, tmp / "ranker.onnx", "logit")
        version = reg.commit(tmp, {"kind": "test"})
    reg.promote(version)
    return Version(settings, dataset, version, tower, ranker)


def random_inputs(specs: object, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Well-formed inputs for IO specs: ids in [0, 3) (valid in every vocabulary), normal floats."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:  # type: ignore[attr-defined]
        shape = tuple(batch if d == -1 else d for d in s.shape)
        if s.dtype.kind == "i":
            out[s.name] = rng.integers(0, 3, shape).astype(s.dtype)
        else:
            out[s.name] = rng.normal(size=shape).astype(s.dtype)
    return out


def torch_outputs(v: Version, model: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The torch module's output for named inputs (the reference the backends must match)."""
    import torch

    from strata.training.export import RANKER_INPUTS

    module, names = (
        (v.query_tower, QUERY_INPUTS) if model == "query_tower" else (v.ranker, RANKER_INPUTS)
    )
    with torch.no_grad():
        return module(*(torch.from_numpy(inputs[n]) for n in names)).numpy()  # type: ignore[operator]
