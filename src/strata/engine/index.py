"""ANN index over item-tower embeddings: the `AnnIndex` protocol and its FAISS backends.

Three kinds, all inner product on L2-normalised item vectors (the two towers end in an L2
normalisation, so inner product is cosine similarity and scores match the exact retriever):

- `flat`: exact search (`IndexFlatIP`). Chosen automatically up to `FLAT_MAX_ITEMS` (50k) items.
  Measured single-query top-100 on this 2-core machine (idle / shared with other jobs): 10k 0.13
  / 0.17 ms, 50k 0.57 / 1.15 ms, 100k 1.1 / 15 ms, 200k 3.3 / 27 ms, 1M 23 ms. Up to 50k the 12.8
  MB scan stays near 1 ms even under load and exactness needs no tuning; beyond it the scan is
  memory-bound and degrades badly when the cache is shared, while a tuned IVF stays < 0.3 ms.
- `ivf`: IVF-Flat, `nlist` spherical k-means cells (`choose_nlist`), `nprobe` tuned at build time.
  Chosen automatically above 50k items. Picked over HNSW by measurement (bench/ann_index.py;
  clustered vectors, noisy mixed-item queries). 1M x 64: IVF built in 21 s, nprobe=40 gave recall
  0.962 at 0.66 ms p50; HNSW (M=32, efConstruction=64) took ~390 s to build on the loaded machine
  and reached only 0.71 at efSearch=384 (1.1 ms). 100k: IVF 0.972 at 0.14 ms vs HNSW 0.974 at
  1.4 ms (efSearch=1100). Queries that sit between clusters defeat HNSW's greedy walk.
- `hnsw`: HNSW-Flat (`efSearch` tuned), available on request for other data.

Tuning: the exact top-k of a sample of queries (the version's query-tower vectors when the model
is there, else synthetic ones near the catalogue) is computed with a flat index; the search knob is
doubled, then bisected, to the smallest value whose recall@k reaches target + margin. The
measured recall and the whole sweep are stored in the manifest.

Search runs batches of fewer than 4 queries on one OpenMP thread: FAISS parallelises across
queries, so for one query extra threads only add wake-up latency.

On disk an index is a folder: `manifest.json` (kind, params, dim, n, recall, sha256 of the files)
plus a FAISS file and an item-id `.npy`, both named by content hash. The manifest is written last
with an atomic rename, so a reader sees either the old index or the new one, never a mix; loading
re-hashes the files and checks dimension and size, raising `DataError` on any mismatch.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from strata.artifacts import INDEX_DIR, ITEM_EMBEDDINGS_FILE
from strata.atomic import atomic_write_bytes
from strata.errors import DataError, NotFoundError, ValidationError

if TYPE_CHECKING:
    from strata.config import Settings

log = logging.getLogger(__name__)

Kind = Literal["flat", "ivf", "hnsw"]
KINDS: tuple[str, ...] = ("flat", "ivf", "hnsw")
FORMAT = "strata-ann/1"
MANIFEST = "manifest.json"
# Exact search up to here (measurements in the module docstring): <= ~1 ms per query even on a
# loaded machine; above it a flat scan grows memory-bound (15 ms at 100k under load).
FLAT_MAX_ITEMS = 50_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 64
_MAX_EF_SEARCH = 4096
# Query batches smaller than this run on one thread: FAISS parallelises over queries, so extra
# threads cannot speed up one query and only add OpenMP wake-up latency.
_SMALL_BATCH = 4


class AnnIndex(Protocol):
    """Top-k inner-product search over item embeddings; implements `pipeline.Retriever`."""

    @property
    def size(self) -> int:
        """Number of indexed items."""
        ...

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        ...

    @property
    def info(self) -> dict[str, Any]:
        """The manifest: kind, params, measured recall, sizes."""
        ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ids (Q, k) int64 and scores (Q, k) float32, best first; -1 / -inf pad."""
        ...

    def save(self, path: Path) -> Path:
        """Write the index folder atomically; returns the manifest path."""
        ...


def choose_kind(n_items: int) -> Kind:
    """The automatic choice: exact up to `FLAT_MAX_ITEMS` items, IVF-Flat above."""
    return "flat" if n_items <= FLAT_MAX_ITEMS else "ivf"


def choose_nlist(n_items: int) -> int:
    """IVF cell count: the power of two nearest 2*sqrt(n), at most 8192 and at most n/39.

    2*sqrt(n) balances the coarse search (nlist dot products) against the list scan (nprobe * n /
    nlist); at 1M it gives 2048 cells of ~500 vectors each (4096 cells measured no faster at equal
    recall and trained 2x slower). k-means needs >= 39 points per centroid to place them well.
    """
    n = max(int(n_items), 1)
    nlist = int(min(2 ** round(np.log2(2.0 * np.sqrt(n))), 8192))
    cap = max(n // 39, 1)
    return nlist if nlist <= cap else int(2 ** np.floor(np.log2(cap)))


def _faiss() -> Any:
    """Import FAISS on first use (it is heavy and only retrieval and index building need it)."""
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss-cpu is a pinned dependency
        from strata.errors import MissingExtraError

        raise MissingExtraError("faiss-cpu", "serving") from None
    return faiss


def _cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, not the host's core count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class FaissIndex:
    """An `AnnIndex` over a FAISS index whose rows map to item ids through an int64 array."""

    def __init__(
        self,
        index: Any,
        item_ids: np.ndarray,
        kind: Kind,
        params: dict[str, Any],
        info: dict[str, Any] | None = None,
        threads: int | None = None,
    ) -> None:
        self._faiss = _faiss()
        self._index = index
        self._ids = np.ascontiguousarray(item_ids, dtype=np.int64)
        self.kind: Kind = kind
        self.params = dict(params)
        # Not omp_get_max_threads(): a previous single-query search may have lowered it to 1.
        self.threads = threads or _cpu_count()
        self._info = dict(info or {})
        self._apply_params()

    def _apply_params(self) -> None:
        if self.kind == "ivf":
            self._faiss.extract_index_ivf(self._index).nprobe = int(self.params["nprobe"])
        elif self.kind == "hnsw":
            self._index.hnsw.efSearch = int(self.params["efSearch"])

    @property
    def size(self) -> int:
        """Number of indexed items."""
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self._index.d)

    @property
    def info(self) -> dict[str, Any]:
        """Manifest fields: kind, params, dim, n, measured recall, tuning record."""
        return {**self._info, "kind": self.kind, "params": self.params, "dim": self.dim,
                "n": self.size}  # fmt: skip

    def __len__(self) -> int:
        return self.size

    def set_param(self, name: str, value: int) -> None:
        """Change the search-time knob (`nprobe` or `efSearch`), e.g. for a recall/latency sweep."""
        allowed = {"ivf": "nprobe", "hnsw": "efSearch"}.get(self.kind)
        if name != allowed:
            raise ValidationError("param", f"{self.kind} index has no search parameter {name!r}")
        self.params[name] = int(value)
        self._apply_params()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` item ids (Q, k) int64 and inner products (Q, k) float32; -1 / -inf pad."""
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValidationError("queries", f"expected shape (Q, {self.dim}), got {q.shape}")
        if not isinstance(k, int | np.integer) or k < 1:
            raise ValidationError("k", f"must be a positive integer, got {k!r}")
        q = np.ascontiguousarray(q, dtype=np.float32)
        if not np.isfinite(q).all():
            raise ValidationError("queries", "contain NaN or infinite values")
        kk = min(int(k), self.size)
        self._faiss.omp_set_num_threads(1 if len(q) < _SMALL_BATCH else self.threads)
        scores, rows = self._index.search(q, kk)  # (Q, kk) each
        valid = rows >= 0
        ids = np.where(valid, self._ids[np.where(valid, rows, 0)], -1)
        sc = np.where(valid, scores, -np.inf).astype(np.float32)
        if kk < k:
            pad = ((0, 0), (0, int(k) - kk))
            ids = np.pad(ids, pad, constant_values=-1)
            sc = np.pad(sc, pad, constant_values=-np.inf)
        return ids, sc

    def save(self, path: Path) -> Path:
        """Write `path/` (index file, id file, manifest last) atomically; old files are removed."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        blob = self._faiss.serialize_index(self._index)  # uint8 array
        idx_sha = hashlib.sha256(memoryview(blob)).hexdigest()
        buf = io.BytesIO()
        np.save(buf, self._ids, allow_pickle=False)
        ids_bytes = buf.getvalue()
        ids_sha = hashlib.sha256(ids_bytes).hexdigest()
        idx_name, ids_name = f"index-{idx_sha[:16]}.faiss", f"ids-{ids_sha[:16]}.npy"
        atomic_write_bytes(path / idx_name, memoryview(blob))
        atomic_write_bytes(path / ids_name, ids_bytes)
        manifest = {
            **self.info,
            "format": FORMAT,
            "metric": "inner_product",
            "faiss_version": self._faiss.__version__,
            "files": {
                "index": {"name": idx_name, "sha256": idx_sha, "bytes": int(blob.size)},
                "ids": {"name": ids_name, "sha256": ids_sha, "bytes": len(ids_bytes)},
            },
        }
        atomic_write_bytes(path / MANIFEST, json.dumps(manifest, indent=2, default=str).encode())
        keep = {idx_name, ids_name, MANIFEST}
        for old in [*path.glob("index-*.faiss"), *path.glob("ids-*.npy")]:
            if old.name not in keep:
                old.unlink(missing_ok=True)
        return path / MANIFEST


def _normalise(emb: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    if (norms <= 1e-12).any():
        bad = int(np.argmax(norms.ravel() <= 1e-12))
        raise ValidationError("embeddings", f"row {bad} has zero norm; cannot L2-normalise")
    return np.ascontiguousarray(emb / norms, dtype=np.float32)


def _check_inputs(item_ids: np.ndarray, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    emb = np.asarray(embeddings)
    ids = np.asarray(item_ids)
    if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[1] == 0:
        raise ValidationError("embeddings", f"expected a non-empty (I, D) matrix, got {emb.shape}")
    if ids.shape != (emb.shape[0],):
        raise ValidationError("item_ids", f"expected shape ({emb.shape[0]},), got {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValidationError("item_ids", f"expected integers, got {ids.dtype}")
    if len(np.unique(ids)) != len(ids):
        raise ValidationError("item_ids", "duplicate item ids")
    if not np.isfinite(emb).all():
        raise ValidationError("embeddings", "contains NaN or infinite values")
    return ids.astype(np.int64), _normalise(emb.astype(np.float32, copy=False))


def load_index(path: Path, dim: int | None = None) -> FaissIndex:
    """Load an index folder written by `save`; DataError if a file is missing, altered or corrupt,
    or if its dimension differs from `dim`."""
    faiss = _faiss()
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise NotFoundError(
            f"{path}: no ANN index here (missing {MANIFEST}); run strata index build"
        )
    try:
        m = json.loads(mpath.read_text())
        kind, n, d = m["kind"], int(m["n"]), int(m["dim"])
        params = dict(m["params"])
        files = m["files"]
        idx_file, ids_file = path / files["index"]["name"], path / files["ids"]["name"]
        idx_sha, ids_sha = files["index"]["sha256"], files["ids"]["sha256"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(mpath, f"corrupt index manifest: {exc!r}") from None
    if m.get("format") != FORMAT or kind not in KINDS:
        raise DataError(mpath, f"unsupported index format {m.get('format')!r} / kind {kind!r}")
    if dim is not None and d != dim:
        raise DataError(mpath, f"index dimension {d} != expected embedding dimension {dim}")
    for f in (idx_file, ids_file):
        if f.parent != path or f.name in ("", ".", ".."):
            raise DataError(mpath, f"index file name {f.name!r} must be a plain name in {path}")
    blob = _read_checked(idx_file, idx_sha)
    ids_bytes = _read_checked(ids_file, ids_sha)
    try:
        raw = faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))
    except RuntimeError as exc:
        raise DataError(idx_file, f"not a readable FAISS index: {exc}") from None
    ids = np.load(io.BytesIO(ids_bytes), allow_pickle=False)
    if raw.d != d or raw.ntotal != n or ids.shape != (n,) or ids.dtype != np.int64:
        raise DataError(
            path, f"index holds {raw.ntotal} x {raw.d}, ids {ids.shape}; manifest says {n} x {d}"
        )
    info = {k: v for k, v in m.items() if k not in ("kind", "params", "dim", "n", "files")}
    return FaissIndex(raw, ids, kind, params, info)


def _read_checked(path: Path, sha: str) -> bytes:
    """File bytes after checking their SHA-256 (read once, so check and use see the same data)."""
    if not path.is_file():
        raise DataError(path, "index file is missing")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha:
        raise DataError(path, "sha256 differs from the index manifest (corrupt or replaced file)")
    return data


# --- registry integration ------------------------------------------------------------------


def version_index_dir(settings: Settings, dataset: str, version: str | None = None) -> Path:
    """`<registry>/<dataset>/<version>/index` of `version` (default: the serving one)."""
    from strata.registry import Registry

    return Registry(settings.registry_dir, dataset).path(version) / INDEX_DIR


def load_version_index(settings: Settings, dataset: str, version: str | None = None) -> FaissIndex:
    """The saved index of a registry version, checked against that version's embeddings."""
    from strata.registry import Registry

    reg = Registry(settings.registry_dir, dataset)
    vdir = reg.path(version)
    manifest = reg.manifest(vdir.name)
    dim = manifest.get("models", {}).get("embedding_dim")
    index = load_index(vdir / INDEX_DIR, dim=int(dim) if dim is not None else None)
    want = manifest.get("files", {}).get(ITEM_EMBEDDINGS_FILE)
    got = index.info.get("source", {}).get("item_embeddings_sha256")
    if want is not None and got != want:
        raise DataError(vdir / INDEX_DIR, "index was built from other item embeddings; rebuild it")
    return index
