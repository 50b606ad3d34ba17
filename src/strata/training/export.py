"""Export: ONNX for the query tower and the ranker (checked against torch with ONNX Runtime), item
embeddings as .npy + Parquet, and the per-version artifact set the registry hashes."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from strata.artifacts import ITEM_EMBEDDINGS_FILE, ITEM_IDS_FILE
from strata.errors import DataError
from strata.models.inputs import ITEM_INPUTS, QUERY_INPUTS

if TYPE_CHECKING:
    import torch

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
