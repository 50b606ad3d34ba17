"""Building and tuning ANN indexes (`strata index build`, and the training step that builds a
version's index from its staged embeddings): offline steps, so they live with training. The
index types, their files and loading are `strata.engine.index`; building tunes `nprobe` /
`efSearch` against exact search on queries from the version's own query tower (or synthetic
queries near the catalogue when there is none)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from strata.artifacts import INDEX_DIR, ITEM_EMBEDDINGS_FILE, ITEM_IDS_FILE
from strata.engine.index import (
    _MAX_EF_SEARCH,
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    KINDS,
    FaissIndex,
    Kind,
    _check_inputs,
    _cpu_count,
    _faiss,
    choose_kind,
    choose_nlist,
)
from strata.errors import DataError, ValidationError
from strata.registry import Registry

if TYPE_CHECKING:
    from strata.config import Settings

log = logging.getLogger(__name__)


def build_version_index(
    settings: Settings, dataset: str, version: str | None = None, kind: str | None = None
) -> dict[str, Any]:
    """Build the index of a registry version's item embeddings (default: the serving version;
    kind default: `settings.index.kind`) and save it in the version's `index/` folder."""
    vdir = Registry(settings.registry_dir, dataset).path(version)
    index = index_from_files(
        settings, vdir, kind,
        lambda: _model_queries(settings, dataset, vdir.name, settings.index.tune_queries,
                               settings.seed),
        {"dataset": dataset, "version": vdir.name},
    )  # fmt: skip
    out = vdir / INDEX_DIR
    index.save(out)
    return {"path": str(out), **index.info}


def _model_queries(
    settings: Settings, dataset: str, version: str, n: int, seed: int
) -> np.ndarray | None:
    """Query-tower vectors of up to `n` sampled users of a version, so tuning sees the real query
    distribution; None when the version has no trained two-tower (embeddings only)."""
    files = Registry(settings.registry_dir, dataset).manifest(version).get("files", {})
    if "two_tower.safetensors" not in files:
        return None
    from strata.training.recommender import load_recommender

    rec = load_recommender(settings, dataset, version)
    users = rec.space.user_ids
    pick = np.random.default_rng(seed).choice(users, min(n, len(users)), replace=False)
    return np.asarray(rec.query_embeddings(pick), dtype=np.float32)


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
