"""Export: ONNX for the query tower and the ranker (checked against torch with ONNX Runtime), item
embeddings as .npy + Parquet, and the per-version artifact set the registry hashes
(`write_version`)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from strata.artifacts import (
    INDEX_DIR,
    ITEM_EMBEDDINGS_FILE,
    ITEM_IDS_FILE,
    SEEN_FILE,
    USER_FEATURES_FILE,
)
from strata.errors import DataError
from strata.models.inputs import ITEM_INPUTS, QUERY_INPUTS

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from strata.config import Settings
    from strata.models.dcn import DCNRanker
    from strata.models.space import FeatureSpace
    from strata.models.two_tower import TwoTower

MAX_ABS_DIFF = 1e-4
RANKER_INPUTS = (*QUERY_INPUTS, *ITEM_INPUTS, "retrieval_score")


def export_onnx(
    module: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    names: tuple[str, ...],
    path: Path,
    output: str,
) -> float:
    """Export `module(*inputs)` to ONNX with a dynamic batch axis and return the max abs difference
    between ONNX Runtime and torch on `inputs`; DataError when it exceeds 1e-4."""
    import torch

    module = module.eval().cpu()
    inputs = tuple(t.cpu() for t in inputs)
    dynamic = {n: {0: "batch"} for n in (*names, output)}
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated upstream but exports these plain graphs fast
        # and with dynamic axes; the check below guards its correctness.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            inputs,
            str(path),
            input_names=list(names),
            output_names=[output],
            dynamic_axes=dynamic,
            opset_version=17,
            dynamo=False,
        )
    diff = check_onnx(path, module, inputs, names)
    if diff > MAX_ABS_DIFF:
        raise DataError(path, f"ONNX output differs from torch by {diff:.2e} > {MAX_ABS_DIFF}")
    return diff


def check_onnx(
    path: Path, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], names: tuple[str, ...]
) -> float:
    """Max abs difference between ONNX Runtime and torch outputs on `inputs`."""
    import onnxruntime as ort
    import torch

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {n: t.numpy() for n, t in zip(names, inputs, strict=True)}
    got = sess.run(None, feed)[0]
    with torch.no_grad():
        want = module(*inputs).numpy()
    return float(np.abs(got - want).max())


def write_item_embeddings(folder: Path, item_ids: np.ndarray, emb: np.ndarray) -> list[Path]:
    """`item_embeddings.npy` (I, D) float32 and `item_embeddings.parquet` (item_id, embedding)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    npy = folder / ITEM_EMBEDDINGS_FILE
    np.save(npy, emb.astype(np.float32), allow_pickle=False)
    ids = folder / ITEM_IDS_FILE
    np.save(ids, item_ids.astype(np.int64), allow_pickle=False)
    table = pa.table(
        {
            "item_id": pa.array(item_ids.astype(np.int64)),
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(emb.astype(np.float32).ravel()), emb.shape[1]
            ),
        }
    )
    pq_path = folder / "item_embeddings.parquet"
    pq.write_table(table, pq_path)
    return [npy, ids, pq_path]


def update_metrics(path: Path, metrics: dict[str, float]) -> None:
    """Holdout metrics arrive after commit: rewrite the manifest atomically (files unchanged)."""
    import json

    from strata.atomic import atomic_write_text
    from strata.registry import MANIFEST

    m = json.loads((path / MANIFEST).read_text())
    m["metrics"] = metrics
    # written beside and renamed: a full disk leaves the committed manifest as it was
    atomic_write_text(path / MANIFEST, json.dumps(m, indent=2, default=str))


def write_version(
    settings: Settings,
    dataset: str,
    space: FeatureSpace,
    two_tower: TwoTower,
    ranker: DCNRanker,
    item_emb: np.ndarray,
    user_features: pd.DataFrame,
    seen_users: np.ndarray,
    seen_items: np.ndarray,
    manifest: dict[str, Any],
    index_dir: Path | None = None,
) -> tuple[str, Path]:
    """Write every artifact of a version into a staging folder and commit it to the registry
    (with a copy of the ANN index in `index_dir`, built from these item embeddings, if given)."""
    import shutil

    from safetensors.numpy import save_file

    from strata.features import schema
    from strata.features.schema import USER_KEY
    from strata.models.batch import RankBatch, synthetic_items, synthetic_queries
    from strata.models.infer import rank_inputs
    from strata.models.space import USER_INPUT_FEATURES
    from strata.models.weights import save_state
    from strata.registry import Registry

    reg = Registry(settings.registry_dir, dataset)
    two_tower.cpu().eval()
    ranker.cpu().eval()
    dims = space.dims()
    with reg.stage() as tmp:
        space.save(tmp)
        save_state(two_tower, tmp / "two_tower.safetensors")
        save_state(ranker, tmp / "ranker.safetensors")
        write_item_embeddings(tmp, space.item_ids, item_emb)
        # The user snapshot exactly as the offline store computed it (Parquet, schema columns):
        # the recommender encodes it with the same function serving applies to online rows.
        user_features.loc[:, [USER_KEY, *USER_INPUT_FEATURES]].to_parquet(
            tmp / USER_FEATURES_FILE, index=False
        )
        save_file(
            {"user": seen_users.astype(np.int64), "item": seen_items.astype(np.int64)},
            str(tmp / SEEN_FILE),
        )
        # Check ONNX on a random but well-formed batch (vocab ranges of the fitted dims).
        rng = np.random.default_rng(0)
        q = synthetic_queries(dims, 8, rng)
        it = synthetic_items(dims, rng.integers(0, dims.n_items, 8))
        d_q = export_onnx(
            two_tower.query_tower,
            q.tensors(),
            QUERY_INPUTS,
            tmp / "query_tower.onnx",
            "query_embedding",
        )
        rb = RankBatch(q, it, rng.normal(size=8).astype(np.float32), np.zeros(8, np.float32))
        d_r = export_onnx(ranker, rank_inputs(rb), RANKER_INPUTS, tmp / "ranker.onnx", "logit")
        full = {
            **manifest,
            "onnx_max_abs_diff": {"query_tower": d_q, "ranker": d_r},
            "feature_schema": {
                "query_inputs": list(QUERY_INPUTS),
                "item_inputs": list(ITEM_INPUTS),
                "ranker_inputs": list(RANKER_INPUTS),
                "dims": dims.model_dump(),
                "user_features": list(schema.USER_FEATURE_COLUMNS),
                "item_features": list(schema.ITEM_FEATURE_COLUMNS),
                "context_features": [f.name for f in schema.CONTEXT_FEATURES],
                "content_features": list(schema.ITEM_CONTENT_COLUMNS)
                if space.meta["has_content"]
                else [],
            },
            "models": {
                "two_tower": two_tower.cfg.model_dump(),
                "ranker": ranker.cfg.model_dump(),
                "embedding_dim": int(item_emb.shape[1]),
            },
        }
        if index_dir is not None:
            shutil.copytree(index_dir, tmp / INDEX_DIR)
        version = reg.commit(tmp, full)
    return version, reg.dir / version
