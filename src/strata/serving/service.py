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

Online-store failures never fail a request: every store call goes through `StoreBreaker`, which
fails fast while the store is known to be down, lets one caller probe it again after a backoff
that doubles from `store_backoff_min_s` to `store_backoff_max_s`, and closes on the first success.
While it is open, user features come from the snapshot/defaults, the Bloom filter is skipped
(fail open) and the result says `degraded` with the reasons.

The pipeline of one model version is immutable once built, so a hot reload builds a new one and
swaps a reference; requests that already hold the old one finish on it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from strata.errors import DataError, NotFoundError, StoreUnavailableError, ValidationError
from strata.models.inputs import QUERY_INPUTS
from strata.serving.pipeline import ExactIndex, PairSetFilter, Retriever

if TYPE_CHECKING:
    from strata.config import DiversityConfig, Settings
    from strata.features.online import ActivityStore, FeatureRows, OnlineStore
    from strata.serving.backends import InferenceBackend
    from strata.serving.bloom import BloomFilter
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
_CATALOG_CHUNK = 5000  # rows per store read when the catalog cache reloads item features


# --- store breaker ----------------------------------------------------------------------------


class StoreBreaker:
    """Fail-fast guard for online-store calls with exponential backoff and a single probe.

    Closed: calls pass. After a `StoreUnavailableError` it opens for a backoff (doubling from
    `min_s` to `max_s`); calls then raise at once without touching the network. When the backoff
    has passed, exactly one caller probes the store; success closes the breaker, failure reopens
    it with a longer backoff. So a returning store is used again within `max_s` plus one timeout.
    """

    def __init__(
        self, min_s: float, max_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.min_s, self.max_s = min_s, max_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until = 0.0
        self._probing = False
        self._last_error = ""

    @property
    def is_open(self) -> bool:
        """True while calls are being skipped (the store failed and has not recovered)."""
        return self._failures > 0

    @property
    def last_error(self) -> str:
        """The message of the failure that opened the breaker ('' when closed)."""
        return self._last_error

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` unless the store is known to be down; StoreUnavailableError when skipped."""
        with self._lock:
            probe = self._failures > 0
            if probe and (self._probing or self._clock() < self._open_until):
                raise StoreUnavailableError(f"online store skipped: {self._last_error}")
            self._probing = probe
        ok = False
        try:
            out = fn(*args, **kwargs)
            ok = True
            return out
        except StoreUnavailableError as exc:
            with self._lock:
                self._failures += 1
                backoff = min(self.max_s, self.min_s * 2 ** min(self._failures - 1, 30))
                self._open_until = self._clock() + backoff
                if self._failures == 1:
                    log.warning("online store unavailable, serving degraded: %s", exc)
                self._last_error = str(exc)
            raise
        finally:
            with self._lock:
                self._probing = False
                if ok and self._failures:
                    log.warning("online store is back after %d failed attempts", self._failures)
                    self._failures = 0
                    self._last_error = ""


@dataclass
class OnlineLink:
    """The online side shared by every pipeline version: feature store, live activity, Bloom
    filters, and the breaker that guards them (built once per process)."""

    store: OnlineStore
    activity: ActivityStore
    bloom: BloomFilter
    breaker: StoreBreaker

    @classmethod
    def open(cls, settings: Settings, store: OnlineStore | None = None) -> OnlineLink:
        """Open the configured online store (or use `store`) with its activity store and Bloom."""
        from strata.features.online import open_activity_store, open_online_store
        from strata.serving.bloom import open_bloom

        st = store if store is not None else open_online_store(settings.online)
        cfg = settings.serve
        return cls(
            st,
            open_activity_store(st),
            open_bloom(settings.bloom, st),
            StoreBreaker(cfg.store_backoff_min_s, cfg.store_backoff_max_s),
        )

    def health(self) -> None:
        """Ping the store through the breaker (StoreUnavailableError when down)."""
        self.breaker.call(self.store.health)

    def close(self) -> None:
        """Release store connections (Valkey pools); a no-op for the memory store."""
        closer = getattr(self.store, "close", None)
        if closer is not None:
            closer()


# --- catalog ----------------------------------------------------------------------------------


class ItemCategories(Mapping[int, int]):
    """Item id -> primary genre index as a read-only mapping over sorted arrays (no 1M-key dict);
    handed to `EventIngestor` for the users' top-category counters."""

    def __init__(self, item_ids: np.ndarray, genre: np.ndarray) -> None:
        self._ids, self._genre = item_ids, genre

    def __getitem__(self, key: int) -> int:
        pos = int(np.searchsorted(self._ids, key))
        if pos >= len(self._ids) or self._ids[pos] != key or self._genre[pos] < 0:
            raise KeyError(key)
        return int(self._genre[pos])

    def __iter__(self) -> Iterator[int]:
        return iter(self._ids[self._genre >= 0].tolist())

    def __len__(self) -> int:
        return int((self._genre >= 0).sum())


class CatalogCache:
    """In-process item catalog: the version's item ids and genres, plus the online store's item
    features cached whole (popularity feeds the ranker; the rest answers GET /items) and reloaded
    when the store's item feature version changes."""

    def __init__(self, space: FeatureSpace, link: OnlineLink) -> None:
        self.item_ids = space.item_ids  # sorted
        self.genre_names: list[str] = list(space.meta["genres"])
        mh = space.t["genres"][1:]  # (I, G) multi-hot; row r = item_ids[r]
        self.primary_genre = np.where(mh.sum(1) > 0, mh.argmax(1), -1).astype(np.int64)
        self._mh = mh
        self._link = link
        # (version, found (I,), {feature: (I,) values}) swapped as one tuple: readers never mix.
        self._online: tuple[str | None, np.ndarray, dict[str, np.ndarray]] = (
            None,
            np.zeros(len(self.item_ids), bool),
            {},
        )
        self._refresh_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def feature_version(self) -> str | None:
        """The online item feature version held in the cache (None before the first load)."""
        return self._online[0]

    def positions(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row of each id in `item_ids` order and whether it is in the catalog."""
        ids = np.asarray(item_ids, dtype=np.int64)
        if not len(self.item_ids):
            return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
        pos = np.searchsorted(self.item_ids, ids).clip(0, len(self.item_ids) - 1)
        return pos, self.item_ids[pos] == ids

    def categories(self) -> ItemCategories:
        """Item -> primary genre mapping for event ingestion."""
        return ItemCategories(self.item_ids, self.primary_genre)

    def popularity(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Live `item_n_events` of catalog rows `pos` and where the store had them (or None)."""
        _, found, table = self._online
        pop = table.get("item_n_events")
        if pop is None:
            return None
        return pop[pos], found[pos]

    def refresh(self) -> bool:
        """Reload the online item features if their active version changed; True if reloaded."""
        store, breaker = self._link.store, self._link.breaker
        with self._refresh_lock:
            version = breaker.call(store.active_version, "item")
            if version == self._online[0]:
                return False
            if version is None or not len(self.item_ids):
                self._online = (version, np.zeros(len(self.item_ids), bool), {})
                return True
            from strata.features.schema import ITEM_FEATURES

            names = list(self._read_known([f.name for f in ITEM_FEATURES]).values)
            parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
            found: list[np.ndarray] = []
            for start in range(0, len(self.item_ids), _CATALOG_CHUNK):
                chunk = self.item_ids[start : start + _CATALOG_CHUNK]
                rows = breaker.call(store.read, "item", chunk, names)
                if rows.version != version:  # switched mid-reload: the next poll redoes it
                    return False
                found.append(rows.found)
                for n in names:
                    parts[n].append(rows.values[n])
            table = {n: np.concatenate(v) for n, v in parts.items()}
            self._online = (version, np.concatenate(found), table)
            log.info("catalog cache: item features %s (%d items)", version, int(found[0].size))
            return True

    def _read_known(self, names: list[str]) -> FeatureRows:
        """Read one row with `names`, dropping features the stored version does not have."""
        store, breaker = self._link.store, self._link.breaker
        probe = self.item_ids[:1]
        for _ in range(len(names) + 1):
            try:
                return breaker.call(store.read, "item", probe, names)
            except ValidationError as exc:
                if exc.field not in names:
                    raise
                names = [n for n in names if n != exc.field]
        raise DataError("item", "no readable item features in the online store")

    def item(self, item_id: int) -> dict[str, Any] | None:
        """Everything the service knows about one item, or None when it is not in the catalog."""
        pos, found = self.positions(np.array([item_id]))
        if not found[0]:
            return None
        r = int(pos[0])
        version, have, table = self._online
        features = {n: _jsonable(v[r]) for n, v in table.items()} if have[r] else {}
        return {
            "item_id": int(item_id),
            "genres": [self.genre_names[g] for g in np.flatnonzero(self._mh[r])],
            "features": features,
            "feature_version": version,
        }


class UserSnapshot:
    """The version's user feature rows as of its training cut (offline store), in the online
    store's encoding: the fallback for users the online store does not hold or cannot serve."""

    def __init__(self, user_ids: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        order = np.argsort(user_ids, kind="stable")
        self.ids = np.asarray(user_ids, np.int64)[order]
        self.columns = {n: np.asarray(c)[order] for n, c in columns.items()}

    @classmethod
    def load(cls, path: Path) -> UserSnapshot:
        """Read `user_features.parquet` of a registry version (empty when the file is absent)."""
        from strata.training.data import USER_INPUT_FEATURES, frame_rows
        from strata.training.train import USER_FEATURES_FILE

        f = path / USER_FEATURES_FILE
        if not f.exists():
            log.warning("%s: no %s; users without online features start cold", path, f.name)
            return cls(np.zeros(0, np.int64), {})
        import pandas as pd

        df = pd.read_parquet(f)
        from strata.features.schema import USER_KEY

        return cls(df[USER_KEY].to_numpy(np.int64), frame_rows(df, USER_INPUT_FEATURES))

    def row(self, user_id: int) -> dict[str, np.ndarray] | None:
        """One user's columns as 1-row arrays, or None when the snapshot does not have them."""
        if not len(self.ids):
            return None
        pos = int(np.searchsorted(self.ids, user_id))
        if pos >= len(self.ids) or self.ids[pos] != user_id:
            return None
        return {n: c[pos : pos + 1] for n, c in self.columns.items()}


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


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
            emb = np.load(path / "item_embeddings.npy", mmap_mode="r", allow_pickle=False)
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
        from strata.serving.backends import create_backend
        from strata.training.data import FeatureSpace
        from strata.training.registry import Registry

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
        from strata.serving import pipeline

        cfg = self.config.fresh
        if not len(self.fresh_ids):
            return self.fresh_ids, np.zeros(0, np.float32)
        near = self.fresh_emb @ np.asarray(qvec, np.float32)  # (F,)
        none = np.zeros((1, len(near)), bool)  # seen items are filtered with the candidates
        pick = pipeline.fresh_pool(near[None], self.fresh_year[None], none, cfg.order, cfg.pool)[0]
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
        from strata.serving import pipeline

        cfg = self.config.fresh
        rows, _ = self.space.item_rows(f_ids)
        net = f_logit - self.ranker_score_weight * f_scores
        valid = np.ones((1, len(f_ids)), bool)
        year = self.space.t["year"][rows][None]
        by = pipeline.fresh_order(valid, net[None], year, cfg.order)[0]
        f_ids, f_scores, f_prob = f_ids[by], f_scores[by], _sigmoid(f_logit[by])
        take = pipeline.interleave_fresh(ids[None], f_ids[None], cfg.start, cfg.every)[0]
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


def open_batch_pipeline(
    settings: Settings, dataset: str, version: str | None = None, k: int | None = None
) -> RecommendationPipeline:
    """The serving pipeline for offline use (`strata recommend`): same stages and stores as
    HTTP; `k` may exceed the HTTP limit `serve.k_max`."""
    if k is not None and k > settings.serve.k_max:
        serve = settings.serve.model_copy(update={"k_max": k})
        settings = settings.model_copy(update={"serve": serve})
    return RecommendationPipeline.load(settings, dataset, version)


# --- order-stage helpers ------------------------------------------------------------------------


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores, best first (stable on ties)."""
    n = len(scores)
    if n > k:
        part = np.argpartition(-scores, k - 1)[:k]
        return part[np.lexsort((part, -scores[part]))]
    return np.argsort(-scores, kind="stable")


def genre_capped(scores: np.ndarray, genre: np.ndarray, k: int, cap: int) -> np.ndarray:
    """Best-first top-k with at most `cap` items per genre; fills from the rest if short.

    Vectorised: each candidate's rank within its genre (in score order) comes from one lexsort;
    candidates beyond the cap move behind all others, order is kept otherwise. Items without a
    genre (-1) are never capped.
    """
    n = len(scores)
    order = np.argsort(-scores, kind="stable")
    g = genre[order]
    pos = np.arange(n)
    by_genre = np.lexsort((pos, g))
    gs = g[by_genre]
    starts = np.r_[0, np.flatnonzero(np.diff(gs)) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    occ = np.empty(n, dtype=np.int64)
    occ[by_genre] = pos - run_start
    over = (occ >= cap) & (g >= 0)
    return order[np.lexsort((pos, over))[:k]]


def sampled(scores: np.ndarray, k: int, cfg: DiversityConfig, logits: bool = False) -> np.ndarray:
    """k items sampled without replacement from softmax(logit / T) (Gumbel top-k); `scores`
    are probabilities, or log-odds already with `logits`."""
    if logits:
        logit = scores.astype(np.float64)
    else:
        p = np.clip(scores.astype(np.float64), 1e-9, 1 - 1e-9)
        logit = np.log(p) - np.log1p(-p)
    g = np.random.default_rng().gumbel(size=len(scores))
    return top_k(logit / cfg.temperature + g, k)


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

    from strata.training.train import SEEN_FILE

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
        from strata.serving.index import load_version_index

        ann = load_version_index(settings, dataset, path.name)
        return ann, {"kind": ann.kind, **ann.params}
    except NotFoundError as exc:
        log.info("%s/%s: no ANN index (%s); using exact search", dataset, path.name, exc)
    except DataError as exc:
        log.warning("%s/%s: unusable ANN index (%s); using exact search", dataset, path.name, exc)
    emb = np.load(path / "item_embeddings.npy", allow_pickle=False)
    ids_file = path / "item_ids.npy"
    ids = np.load(ids_file, allow_pickle=False) if ids_file.exists() else space.item_ids
    return ExactIndex(ids, emb), {"kind": "exact"}
