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
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from strata.artifacts import INDEX_DIR, ITEM_EMBEDDINGS_FILE, ITEM_IDS_FILE
from strata.atomic import atomic_write_bytes
from strata.errors import DataError, NotFoundError, ValidationError

if TYPE_CHECKING:
    from collections.abc import Callable

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


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over rows of |found_row & truth_row| / |truth_row| (ids; -1 in `found` never counts)."""
    q, k = truth.shape
    if q == 0 or k == 0:
        return 1.0
    # Offset each row by row * 2**33 so one sorted 1-D search answers every row's membership.
    off = np.arange(q, dtype=np.int64)[:, None] << 33
    t = np.sort((truth.astype(np.int64) + off).ravel())
    f = (found.astype(np.int64) + off)[found >= 0]
    pos = np.clip(np.searchsorted(t, f), 0, len(t) - 1)
    return float((t[pos] == f).sum() / truth.size)


def synthetic_embeddings(
    n: int, dim: int = 64, n_clusters: int = 2000, seed: int = 0
) -> np.ndarray:
    """Clustered unit vectors shaped like trained item embeddings (tests and benchmarks).

    Cluster centres have a decaying per-dimension spectrum (trained embeddings use a few directions
    much more than others), cluster sizes follow a Zipf law (popular genres), and items scatter
    around their centre; rows are L2-normalised.
    """
    rng = np.random.default_rng(seed)
    spec = (1.0 / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)
    cent = rng.standard_normal((n_clusters, dim)).astype(np.float32) * spec
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    pop = np.minimum(rng.zipf(1.3, n_clusters), 1000).astype(np.float64)
    labels = rng.choice(n_clusters, n, p=pop / pop.sum())
    scale = 0.6 * spec / np.sqrt(np.mean(spec**2)) / np.sqrt(dim)
    x = cent[labels] + rng.standard_normal((n, dim)).astype(np.float32) * scale
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def synthetic_queries(items: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    """Query vectors near the catalogue: a noisy mean of three random items, normalised.

    A proxy for query-tower outputs, which sit near the items a user engaged with; the noise keeps
    them off the item points so tuning is not flattered by self-matches.
    """
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(items), (n, 3))
    v = items[idx].mean(axis=1) + 0.1 * rng.standard_normal((n, items.shape[1])).astype(np.float32)
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return v.astype(np.float32)


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


def _tune(
    index: FaissIndex,
    name: str,
    lo: int,
    hi: int,
    queries: np.ndarray,
    truth: np.ndarray,
    target: float,
) -> tuple[float, list[list[float]]]:
    """Smallest value of knob `name` in [lo, hi] with recall >= target (doubling, then bisect)."""
    k = truth.shape[1]
    sweep: list[list[float]] = []

    def measure(v: int) -> float:
        index.set_param(name, v)
        r = recall_at_k(index.search(queries, k)[0], truth)
        sweep.append([v, round(r, 5)])
        return r

    v, prev = lo, None
    r = measure(v)
    while r < target and v < hi:
        prev, v = v, min(2 * v, hi)
        r = measure(v)
    if r < target:
        raise DataError(
            name, f"recall@{k} {r:.3f} < target {target} even at {name}={v}; use --kind ivf or flat"
        )
    best, best_r = v, r
    lo_fail = prev
    while lo_fail is not None and best - lo_fail > max(1, lo_fail // 8):
        mid = (lo_fail + best) // 2
        rm = measure(mid)
        if rm >= target:
            best, best_r = mid, rm
        else:
            lo_fail = mid
    index.set_param(name, best)
    return best_r, sweep


def build_index(
    item_ids: np.ndarray,
    embeddings: np.ndarray,
    kind: str = "auto",
    *,
    target_recall: float = 0.95,
    k: int = 100,
    tune_queries: np.ndarray | None = None,
    n_tune: int = 200,
    seed: int = 0,
    nlist: int | None = None,
    margin: float = 0.01,
) -> FaissIndex:
    """Build and tune an index over `embeddings` (I, D) whose rows are `item_ids` (I,).

    `kind` is auto | flat | ivf | hnsw. Approximate kinds are tuned on `tune_queries` (default:
    `n_tune` synthetic queries near the catalogue) until recall@k against exact search reaches
    `target_recall` + `margin` (the margin absorbs the sampling error of a few hundred tuning
    queries, so unseen queries still meet the target); the measured value is kept in
    `info["recall_at_k"]`.
    """
    if kind != "auto" and kind not in KINDS:
        raise ValidationError("kind", f"expected auto, {', '.join(KINDS)}; got {kind!r}")
    if not 0.0 < target_recall <= 1.0:
        raise ValidationError("target_recall", f"must be in (0, 1], got {target_recall}")
    from strata.progress import task

    faiss = _faiss()
    t0 = time.perf_counter()
    ids, x = _check_inputs(item_ids, embeddings)
    n, d = x.shape
    chosen: Kind = choose_kind(n) if kind == "auto" else kind  # type: ignore[assignment]
    faiss.omp_set_num_threads(_cpu_count())  # building and tuning are batch work
    goal = min(1.0, target_recall + margin)
    info: dict[str, Any] = {"requested_kind": kind, "target_recall": target_recall, "k": k}

    if chosen == "flat":
        raw = faiss.IndexFlatIP(d)
        raw.add(x)
        index = FaissIndex(raw, ids, "flat", {}, info)
        info.update(recall_at_k=1.0, tuning={"exact": True})
    else:
        with task(f"{chosen} index over {n:,} items (truth, build, tune)", total=3) as (p, t):
            if tune_queries is None:
                tq = synthetic_queries(x, n_tune, seed=seed + 1)
            else:
                tq = np.ascontiguousarray(tune_queries, dtype=np.float32)
                if tq.ndim != 2 or tq.shape[1] != d:
                    raise ValidationError("tune_queries", f"expected (Q, {d}), got {tq.shape}")
            kk = min(k, n)
            exact = faiss.IndexFlatIP(d)
            exact.add(x)
            truth = ids[exact.search(tq, kk)[1]]  # (Q, kk) item ids, like FaissIndex.search
            del exact
            p.advance(t)
            if chosen == "ivf":
                nl = int(nlist or choose_nlist(n))
                if not 1 <= nl <= n:
                    raise ValidationError("nlist", f"must be in [1, {n}], got {nl}")
                raw = faiss.index_factory(d, f"IVF{nl},Flat", faiss.METRIC_INNER_PRODUCT)
                ivf = faiss.extract_index_ivf(raw)
                ivf.cp.spherical = True  # centroids on the unit sphere suit inner-product search
                ivf.cp.niter = 10
                ivf.cp.seed = seed
                # k-means on 64 points per cell: more barely moves the centroids and costs linearly.
                rng = np.random.default_rng(seed)
                sample = x if n <= 64 * nl else x[np.sort(rng.choice(n, 64 * nl, replace=False))]
                t1 = time.perf_counter()
                raw.train(sample)
                raw.add(x)
                info["train_add_seconds"] = round(time.perf_counter() - t1, 3)
                index = FaissIndex(raw, ids, "ivf", {"nlist": nl, "nprobe": 1}, info)
                p.advance(t)
                r, sweep = _tune(index, "nprobe", 1, nl, tq, truth, goal)
            else:
                raw = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
                raw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
                t1 = time.perf_counter()
                raw.add(x)
                info["train_add_seconds"] = round(time.perf_counter() - t1, 3)
                params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": kk}
                index = FaissIndex(raw, ids, "hnsw", params, info)
                p.advance(t)
                lo = max(16, kk)
                r, sweep = _tune(index, "efSearch", lo, max(lo, _MAX_EF_SEARCH), tq, truth, goal)
            p.advance(t)
            info.update(
                recall_at_k=round(r, 5),
                tuned_to=goal,
                tuning={"queries": len(tq), "sweep": sweep},
            )
    info["build_seconds"] = round(time.perf_counter() - t0, 3)
    index._info = info
    log.info("built %s index over %d x %d: %s recall@%d=%s", index.kind, n, d, index.params, k,
             info["recall_at_k"])  # fmt: skip
    return index


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


def index_from_files(
    settings: Settings,
    folder: Path,
    kind: str | None,
    tune_queries: Callable[[], np.ndarray | None],
    source: dict[str, Any],
) -> FaissIndex:
    """The index of `folder`'s `item_embeddings.npy` / `item_ids.npy` (kind default:
    `settings.index.kind`); `tune_queries` is called only when the kind needs tuning."""
    from strata.atomic import sha256_file

    emb_path, ids_path = folder / ITEM_EMBEDDINGS_FILE, folder / ITEM_IDS_FILE
    for p in (emb_path, ids_path):
        if not p.is_file():
            raise DataError(p, "missing; no exported item embeddings here")
    try:
        emb = np.load(emb_path, allow_pickle=False)
        ids = np.load(ids_path, allow_pickle=False)
    except ValueError as exc:
        raise DataError(emb_path, f"unreadable embeddings: {exc}") from None
    cfg = settings.index
    want = kind or cfg.kind
    resolved = choose_kind(len(ids)) if want == "auto" else want
    tq = tune_queries() if resolved in ("ivf", "hnsw") else None
    index = build_index(
        ids, emb, want, target_recall=cfg.target_recall, k=cfg.recall_k, tune_queries=tq,
        n_tune=cfg.tune_queries, seed=settings.seed,
    )  # fmt: skip
    if "tuning" in index._info and "queries" in index._info["tuning"]:
        index._info["tuning"]["source"] = "query_tower" if tq is not None else "synthetic"
    # load_version_index checks this hash against the version's manifest entry.
    index._info["source"] = {**source, "item_embeddings_sha256": sha256_file(emb_path)}
    return index


def build_staged_index(settings: Settings, stage_dir: Path, kind: str | None = None) -> dict:
    """Build the index of a two-tower staging folder's item embeddings (`train_two_tower`) and
    save it in `stage_dir/index`, which `train_ranker` copies into the version it commits."""
    from strata.artifacts import STAGE_INDEX, STAGE_META, STAGE_QUERIES

    stage_dir = Path(stage_dir)
    meta_path = stage_dir / STAGE_META
    if not meta_path.is_file():
        raise DataError(meta_path, "missing; not a two-tower staging folder")
    dataset = json.loads(meta_path.read_text()).get("dataset")

    def queries() -> np.ndarray | None:
        # Query-tower vectors of sampled training rows, saved by train_two_tower.
        q = stage_dir / STAGE_QUERIES
        return np.load(q, allow_pickle=False).astype(np.float32) if q.is_file() else None

    index = index_from_files(
        settings, stage_dir, kind, queries, {"dataset": dataset, "version": None}
    )
    out = stage_dir / STAGE_INDEX
    index.save(out)
    return {"path": str(out), **index.info}


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
