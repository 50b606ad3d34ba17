"""The request path as one object: `RecommendationPipeline` serves HTTP and `strata recommend`.

One request walks the stages of DESIGN.md, each timed:

    context        ts + device -> the query tower's context inputs
    user_features  online store row (one round trip) + live recent items from events; users the
                   store does not hold fall back to the model version's snapshot (their state at
                   the training cut), unknown/anonymous users to masked cold-start defaults
    query_tower    InferenceBackend (ONNX Runtime in process, or Triton)       -> (1, D) vector
    retrieve       AnnIndex of the version (FAISS flat/IVF/HNSW; ExactIndex when none is built)
    filter         the version's training history (exact, in process) + the user's Bloom filter
                   of recent interactions (one round trip)
    item_features  the version's item table, in process (exactly what the ranker was trained on)
    rank           all candidates in one ranker batch through the InferenceBackend
    order          top-k, optionally diversified (per-genre cap or softmax sampling)

Online-store failures never fail a request: every store call goes through the `StoreBreaker` of
`strata.serving.online`, which fails fast while the store is known to be down and lets one caller
probe it again after a backoff. While it is open, user features come from the snapshot/defaults,
the Bloom filter is skipped (fail open) and the result says `degraded` with the reasons.

The pipeline of one model version is immutable once built, so a hot reload builds a new one and
swaps a reference; requests that already hold the old one finish on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from strata.artifacts import ITEM_EMBEDDINGS_FILE, ITEM_IDS_FILE
from strata.engine.order import genre_capped, sampled, top_k
from strata.engine.stages import ExactIndex, PairSetFilter, Retriever
from strata.errors import DataError, NotFoundError, StoreUnavailableError, ValidationError
from strata.models.inputs import QUERY_INPUTS
from strata.serving.catalog import CatalogCache, UserSnapshot
from strata.serving.online import OnlineLink

if TYPE_CHECKING:
    from strata.config import Settings
    from strata.serving.backends import InferenceBackend
    from strata.training.batch import ItemFeatures, QueryFeatures
    from strata.training.data import FeatureSpace

log = logging.getLogger(__name__)
T = TypeVar("T")

STAGES = (
    "context",
    "user_features",
    "query_tower",
    "retrieve",
    "filter",
    "item_features",
    "rank",
    "order",
)
Stage = Literal["retrieval", "full"]
UserSource = Literal["online", "snapshot", "cold", "anonymous"]


# --- results ----------------------------------------------------------------------------------


@dataclass
class Recommendation:
    """One answer: items best first with final and per-stage scores, timings and versions."""

    user_id: int | None
    item_ids: np.ndarray  # (k',) int64, k' <= k
    scores: np.ndarray  # (k',) float32 final scores (ranker probability, or retrieval score)
    retrieval_scores: np.ndarray  # (k',) float32 inner products from the index
    ranker_scores: np.ndarray | None  # (k',) float32 probabilities; None for stage retrieval
    timings_ms: dict[str, float]
    model_version: str
    feature_versions: dict[str, str | None]
    user_source: UserSource
    candidates: dict[str, int]
    degraded_reasons: list[str] = field(default_factory=list)

    @property
    def degraded(self) -> bool:
        """True when a fallback was used (store down: snapshot/default features, no Bloom)."""
        return bool(self.degraded_reasons)


class _Timer:
    """Per-stage wall times in milliseconds."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._t0 = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = (time.perf_counter() - t) * 1000.0

    def total(self) -> float:
        return (time.perf_counter() - self._t0) * 1000.0


# --- the pipeline -----------------------------------------------------------------------------


class RecommendationPipeline:
    """All request-path stages for one registry version (immutable once built; thread-safe)."""

    def __init__(
        self,
        settings: Settings,
        dataset: str,
        path: Path,
        manifest: dict[str, Any],
        space: FeatureSpace,
        snapshot: UserSnapshot,
        history: PairSetFilter,
        backend: InferenceBackend,
        index: Retriever,
        index_info: dict[str, Any],
        link: OnlineLink,
    ) -> None:
        from strata.training.data import USER_INPUT_FEATURES

        self.settings = settings
        self.config = settings.serve
        self.dataset = dataset
        self.path = path
        self.manifest = manifest
        self.version: str = manifest["version"]
        self.as_of = int(manifest["data_range"]["until"])
        self.space = space
        self.snapshot = snapshot
        self.history = history
        self.backend = backend
        self.index = index
        self.index_info = index_info
        self.link = link
        self.catalog = CatalogCache(space, link)
        # Fresh items (no training interactions: unknown id) and their content-only embeddings.
        rows = space.fresh_rows()
        self.fresh_ids = space.item_ids[rows - 1]
        self.fresh_year = space.t["year"][rows].astype(np.float64)
        self.fresh_emb = np.zeros((len(rows), 0), np.float32)
        if len(rows):
            emb = np.load(path / ITEM_EMBEDDINGS_FILE, mmap_mode="r", allow_pickle=False)
            self.fresh_emb = np.ascontiguousarray(emb[rows - 1], dtype=np.float32)
        self.ranker_score_weight = float(
            manifest.get("models", {}).get("ranker", {}).get("score_weight", 0.0)
        )
        self.hist_len = int(space.meta["hist_len"])
        self.devices = tuple(space.meta["devices"])
        self.user_features = tuple(USER_INPUT_FEATURES)
        self._warned_features = False

    # construction -----------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        settings: Settings,
        dataset: str | None = None,
        version: str | None = None,
        link: OnlineLink | None = None,
    ) -> RecommendationPipeline:
        """Load `version` (default: the registry's serving one) with its backend and index."""
        from strata.registry import Registry
        from strata.serving.backends import create_backend
        from strata.training.data import FeatureSpace

        ds = dataset or settings.serve.dataset
        reg = Registry(settings.registry_dir, ds)
        path = reg.path(version)
        manifest = reg.manifest(path.name)
        space = FeatureSpace.load(path)
        snapshot = UserSnapshot.load(path)
        history = _load_history(path)
        index, info = _load_index(settings, ds, path, space)
        backend = create_backend(settings, ds, path.name)
        pipe = cls(
            settings, ds, path, manifest, space, snapshot, history, backend, index, info,
            link if link is not None else OnlineLink.open(settings),
        )  # fmt: skip
        try:
            pipe.catalog.refresh()
        except StoreUnavailableError as exc:
            log.warning("catalog cache not loaded (store down), will retry: %s", exc)
        log.info("pipeline %s/%s ready: %d items, index %s", ds, pipe.version, len(pipe.catalog),
                 info.get("kind"))  # fmt: skip
        return pipe

    # validation -------------------------------------------------------------------------------

    def check_request(self, k: int, device: str, ts: int | None) -> None:
        """ValidationError naming the field for k out of range, unknown device, negative ts."""
        if isinstance(k, bool) or not isinstance(k, int | np.integer):
            raise ValidationError("k", f"must be an integer, got {type(k).__name__}")
        if not 1 <= k <= self.config.k_max:
            raise ValidationError("k", f"must be in 1..{self.config.k_max}, got {k}")
        if device not in self.devices:
            raise ValidationError("device", f"expected one of {list(self.devices)}, got {device!r}")
        if ts is not None and ts < 0:
            raise ValidationError("ts", f"must be >= 0 (unix seconds), got {ts}")

    def knows_user(self, user_ids: np.ndarray) -> np.ndarray:
        """(U,) bool: user ids present in the version's users table."""
        return np.isin(np.asarray(user_ids, np.int64), self.space.user_ids)

    # request path -----------------------------------------------------------------------------

    def recommend(
        self,
        user_id: int | None,
        k: int | None = None,
        ts: int | None = None,
        device: str = "unknown",
        stage: Stage = "full",
        candidates: int | None = None,
    ) -> Recommendation:
        """Top-`k` items for one user (None = anonymous, context only) at time `ts` on `device`."""
        k = self.config.k_default if k is None else k
        self.check_request(k, device, ts)
        if stage not in ("retrieval", "full"):
            raise ValidationError("stage", f"expected 'retrieval' or 'full', got {stage!r}")
        n = max(candidates or self.config.candidates, k)
        timer = _Timer()
        degraded: list[str] = []
        versions: dict[str, str | None] = {"index": str(self.index_info.get("kind"))}

        with timer.stage("context"):
            t_arr = np.array([int(time.time()) if ts is None else int(ts)], dtype=np.int64)
            dev = np.array([device], dtype=object)
        with timer.stage("user_features"):
            q, source, versions["user"] = self._query_features(user_id, t_arr, dev, degraded)
        with timer.stage("query_tower"):
            inputs = {name: np.ascontiguousarray(getattr(q, name)) for name in QUERY_INPUTS}
            qvec = self.backend.infer("query_tower", inputs)["query_embedding"]
        with timer.stage("retrieve"):
            ids, r_scores = self.index.search(np.asarray(qvec, np.float32), n)
            ids, r_scores = ids[0], r_scores[0]
            fresh = self.config.fresh
            use_fresh = stage == "full" and fresh.enabled and k > fresh.start
            f_ids, f_scores = self._fresh_pool(qvec[0]) if use_fresh else (ids[:0], r_scores[:0])
        retrieved = int((ids >= 0).sum())
        n_main = len(ids)
        with timer.stage("filter"):
            # ANN candidates and the fresh pool in one history + Bloom check (one round trip).
            keep = self._filter(user_id, np.r_[ids, f_ids], degraded)
            f_ids, f_scores = f_ids[keep[n_main:]], f_scores[keep[n_main:]]
            ids, r_scores = ids[keep[:n_main]], r_scores[keep[:n_main]]
        ranker: np.ndarray | None = None
        logit: np.ndarray | None = None
        if stage == "full" and len(ids):
            with timer.stage("item_features"):
                items = self._item_features(np.r_[ids, f_ids])
            with timer.stage("rank"):
                both = self._rank(q, items, np.r_[r_scores, f_scores])  # one ranker call
                logit, f_logit = both[: len(ids)], both[len(ids) :]
                ranker = _sigmoid(logit)
        with timer.stage("order"):
            final = ranker if ranker is not None else r_scores
            # Ordered by logit: fused ranker logits reach ~20, where float32 probabilities tie.
            pick = self._order(ids, final if logit is None else logit, k, logit is not None)
            out_ids, out_final, out_r = ids[pick], final[pick], r_scores[pick]
            n_fresh = 0
            if logit is not None and len(f_ids):
                out_ids, out_final, out_r, n_fresh = self._with_fresh(
                    out_ids, out_final, out_r, f_ids, f_scores, f_logit
                )
        versions["item"] = self.catalog.feature_version
        timer.ms["total"] = timer.total()
        return Recommendation(
            user_id=user_id,
            item_ids=out_ids,
            scores=out_final.astype(np.float32),
            retrieval_scores=out_r.astype(np.float32),
            ranker_scores=None if ranker is None else out_final.astype(np.float32),
            timings_ms=timer.ms,
            model_version=self.version,
            feature_versions=versions,
            user_source=source,
            candidates={"retrieved": retrieved, "after_filter": len(ids), "fresh": n_fresh},
            degraded_reasons=degraded,
        )

    def _fresh_pool(self, qvec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Up to `fresh.pool` fresh items (no interactions in training) for the reserved slots:
        the newest, nearest first within a year, or the nearest (`FreshConfig.order`); their
        ids (F,) and retrieval scores (F,)."""
        from strata.engine import stages

        cfg = self.config.fresh
        if not len(self.fresh_ids):
            return self.fresh_ids, np.zeros(0, np.float32)
        near = self.fresh_emb @ np.asarray(qvec, np.float32)  # (F,)
        none = np.zeros((1, len(near)), bool)  # seen items are filtered with the candidates
        pick = stages.fresh_pool(near[None], self.fresh_year[None], none, cfg.order, cfg.pool)[0]
        return self.fresh_ids[pick], near[pick].astype(np.float32)

    def _with_fresh(
        self,
        ids: np.ndarray,
        final: np.ndarray,
        r_scores: np.ndarray,
        f_ids: np.ndarray,
        f_scores: np.ndarray,
        f_logit: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """The ordered list with fresh items in the reserved slots (`FreshConfig`), ordered by
        the ranker without its retrieval part (fused logit minus it: a fresh item's retrieval
        score carries no interaction signal; the popularity prior stays, so a fresh item that
        is picking up events comes first); fresh scores are their fused probabilities. Returns
        ids, scores, retrieval scores and how many fresh items went in."""
        from strata.engine import stages

        cfg = self.config.fresh
        rows, _ = self.space.item_rows(f_ids)
        net = f_logit - self.ranker_score_weight * f_scores
        valid = np.ones((1, len(f_ids)), bool)
        year = self.space.t["year"][rows][None]
        by = stages.fresh_order(valid, net[None], year, cfg.order)[0]
        f_ids, f_scores, f_prob = f_ids[by], f_scores[by], _sigmoid(f_logit[by])
        take = stages.interleave_fresh(ids[None], f_ids[None], cfg.start, cfg.every)[0]
        take = take[take >= 0]
        k = len(ids)
        return (
            np.r_[ids, f_ids][take],
            np.r_[final, f_prob][take],
            np.r_[r_scores, f_scores][take],
            int((take >= k).sum()),
        )

    def recommend_many(
        self,
        user_ids: np.ndarray,
        k: int,
        stage: Stage = "full",
        ts: int | None = None,
        device: str = "unknown",
    ) -> list[Recommendation]:
        """Offline batch (`strata recommend`): every user must be in the users table; context
        defaults to the version's cut-off, so results are reproducible."""
        ids = np.asarray(user_ids, dtype=np.int64).reshape(-1)
        known = self.knows_user(ids)
        if not known.all():
            bad = ids[~known][:5].tolist()
            raise ValidationError("user_id", f"unknown user id(s) {bad} (not in the users table)")
        when = self.as_of if ts is None else ts
        return [self.recommend(int(u), k, ts=when, device=device, stage=stage) for u in ids]

    # stages -----------------------------------------------------------------------------------

    def _query_features(
        self, user_id: int | None, ts: np.ndarray, device: np.ndarray, degraded: list[str]
    ) -> tuple[QueryFeatures, UserSource, str | None]:
        """Query-tower inputs: online row, else the version snapshot, else cold-start defaults;
        live recent items from events are appended to the history in every case."""
        from strata.training.data import query_features_from_rows

        if user_id is None:
            uid = np.array([-1], dtype=np.int64)
            return (
                query_features_from_rows(self.space, {}, np.zeros(1, bool), ts, device, uid),
                "anonymous",
                None,
            )
        uid = np.array([user_id], dtype=np.int64)
        link = self.link
        row: dict[str, np.ndarray] | None = None
        recent = np.zeros(0, np.int64)
        version: str | None = None
        source: UserSource = "cold"
        store_ok = True
        try:
            rows = link.breaker.call(link.store.read, "user", uid, self.user_features)
            version = rows.version
            if bool(rows.found[0]):
                row, source = dict(rows.values), "online"
        except StoreUnavailableError:
            store_ok = False
        except ValidationError as exc:
            # No user version materialized (or one without a feature the model needs): every
            # user is "not in the store", so the snapshot serves, as for any missing user.
            if not self._warned_features:
                self._warned_features = True
                # Nothing materialized is normal (embedded runs); a version without the
                # model's features is a deployment mistake worth a warning.
                level = logging.INFO if self._no_user_version() else logging.WARNING
                log.log(level, "online store has no usable user features (%s); using the "
                        "version snapshot", exc)  # fmt: skip
        if store_ok:
            try:
                recent = link.breaker.call(link.activity.recent_items, int(user_id), self.hist_len)
            except StoreUnavailableError:
                store_ok = False
        if not store_ok:
            degraded.append("online store unavailable: user features from the model snapshot")
        if row is None:
            row = self.snapshot.row(int(user_id))
            source = "snapshot" if row is not None else "cold"
        if row is None and len(recent):
            # A user with no stored features but live events: defaults plus those events.
            row, source = self._default_row(), "cold"
        if row is None:
            q = query_features_from_rows(self.space, {}, np.zeros(1, bool), ts, device, uid)
            return q, source, version
        row = _with_recent(row, recent, self.hist_len)
        q = query_features_from_rows(self.space, row, np.ones(1, bool), ts, device, uid)
        return q, source, version

    def _no_user_version(self) -> bool:
        """True when no user feature version was ever activated in the online store."""
        try:
            return self.link.breaker.call(self.link.store.active_version, "user") is None
        except StoreUnavailableError:
            return False

    def _default_row(self) -> dict[str, np.ndarray]:
        """One row of cold-start defaults in the online encoding (schema defaults)."""
        from strata.features.schema import defaults

        out: dict[str, np.ndarray] = {}
        for name, value in defaults("user").items():
            if name not in self.user_features:
                continue
            if isinstance(value, list):
                out[name] = np.full((1, 1), -1, np.int64)
            elif isinstance(value, str):
                out[name] = np.array([value], dtype=object)
            else:
                out[name] = np.array([value])
        return out

    def _filter(self, user_id: int | None, ids: np.ndarray, degraded: list[str]) -> np.ndarray:
        """(N,) keep-mask: valid slots the user has not interacted with (history + Bloom)."""
        keep = ids >= 0
        if user_id is None or not keep.any():
            return keep
        uid = np.array([user_id], dtype=np.int64)
        safe = np.where(keep, ids, 0)
        keep &= ~self.history.seen(uid, safe[None, :])[0]
        link = self.link
        try:
            keep &= ~link.breaker.call(link.bloom.contains, int(user_id), safe)
        except StoreUnavailableError:
            degraded.append("online store unavailable: Bloom filter skipped (fail open)")
        return keep

    def _item_features(self, ids: np.ndarray) -> ItemFeatures:
        """Ranker item inputs from the version's item table, with the catalog cache's live
        popularity where the online store has it (as of the training cut otherwise)."""
        from strata.training.data import POP_COL, log_count

        pos, found = self.catalog.positions(ids)
        rows = np.where(found, pos + 1, 0)
        items = self.space.items(rows)
        live = self.catalog.popularity(pos)
        if live is not None:
            pop, have = live
            have = have & (rows > 0)
            if have.any():
                num = items.item_num.copy()
                num[have, POP_COL] = log_count(pop[have])
                items = replace(items, item_num=num)
        return items

    def _rank(self, q: QueryFeatures, items: ItemFeatures, r_scores: np.ndarray) -> np.ndarray:
        """Ranker logits (N,) float64 for all candidates in one batch."""
        from strata.models.inputs import ITEM_INPUTS

        n = len(r_scores)
        rep = np.zeros(n, dtype=np.int64)
        inputs = {name: np.ascontiguousarray(getattr(q, name)[rep]) for name in QUERY_INPUTS}
        for name in ITEM_INPUTS:
            inputs[name] = np.ascontiguousarray(getattr(items, name))
        inputs["retrieval_score"] = np.ascontiguousarray(r_scores, dtype=np.float32)
        return self.backend.infer("ranker", inputs)["logit"].reshape(n).astype(np.float64)

    def _order(
        self, ids: np.ndarray, scores: np.ndarray, k: int, logits: bool = False
    ) -> np.ndarray:
        """Indices of the final top-k (best first), diversified when configured; `logits` says
        `scores` are log-odds rather than probabilities (for sampling)."""
        div = self.config.diversity
        if div.type == "none" or len(ids) <= 1:
            return top_k(scores, k)
        pos, _ = self.catalog.positions(ids)
        genre = self.catalog.primary_genre[pos]
        if div.type == "genre_cap":
            return genre_capped(scores, genre, k, div.genre_cap)
        return sampled(scores, k, div, logits)


# --- helpers ------------------------------------------------------------------------------------


def _sigmoid(logit: np.ndarray) -> np.ndarray:
    """Probabilities (float32) from logits, computed in float64."""
    return (1.0 / (1.0 + np.exp(-np.asarray(logit, np.float64)))).astype(np.float32)


def _with_recent(
    row: dict[str, np.ndarray], recent: np.ndarray, hist_len: int
) -> dict[str, np.ndarray]:
    """The row with live recent items (newest first) appended to `user_recent_items`, kept in
    the online encoding (oldest first, left-aligned, -1 padded), newest `hist_len` at least."""
    name = "user_recent_items"
    if not len(recent) or name not in row:
        return row
    stored = np.asarray(row[name]).reshape(1, -1)[0]
    width = max(stored.shape[0], hist_len)
    merged = np.concatenate([stored[stored >= 0], recent[::-1]])[-width:]
    out = np.full((1, width), -1, np.int64)
    out[0, : len(merged)] = merged
    return {**row, name: out}


def _load_history(path: Path) -> PairSetFilter:
    """The (user, item) pairs before the version's cut-off (exact seen filter)."""
    from safetensors.numpy import load_file

    from strata.artifacts import SEEN_FILE

    f = path / SEEN_FILE
    if not f.exists():
        log.warning("%s: no %s; only the Bloom filter removes seen items", path, f.name)
        return PairSetFilter(np.zeros(0, np.int64), np.zeros(0, np.int64))
    st = load_file(str(f))
    users = st.get("seen_user", st.get("user"))
    items = st.get("seen_item", st.get("item"))
    if users is None or items is None:
        raise DataError(f, f"expected seen_user/seen_item arrays, got {sorted(st)}")
    return PairSetFilter(users, items)


def _load_index(
    settings: Settings, dataset: str, path: Path, space: FeatureSpace
) -> tuple[Retriever, dict[str, Any]]:
    """The version's saved ANN index, else exact search over its item embeddings."""
    try:
        from strata.engine.index import load_version_index

        ann = load_version_index(settings, dataset, path.name)
        return ann, {"kind": ann.kind, **ann.params}
    except NotFoundError as exc:
        log.info("%s/%s: no ANN index (%s); using exact search", dataset, path.name, exc)
    except DataError as exc:
        log.warning("%s/%s: unusable ANN index (%s); using exact search", dataset, path.name, exc)
    emb = np.load(path / ITEM_EMBEDDINGS_FILE, allow_pickle=False)
    ids_file = path / ITEM_IDS_FILE
    ids = np.load(ids_file, allow_pickle=False) if ids_file.exists() else space.item_ids
    return ExactIndex(ids, emb), {"kind": "exact"}
