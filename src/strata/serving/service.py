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

From query_tower on, the stages are the engine's (`strata.engine.recommend`), the same code that
evaluation and `strata recommend` run; this module adds what only a live service has: user
features from the online store, live recent items, the Bloom filter and live item popularity.

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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from strata.datasets.base import EVENT_TYPES
from strata.engine.ids import IdMap
from strata.engine.recommend import Result, Stage, StageTimer
from strata.engine.stages import Retriever
from strata.engine.version import ModelVersion
from strata.errors import StoreUnavailableError, ValidationError
from strata.features.online import NoActiveVersionError
from strata.serving.catalog import CatalogCache
from strata.serving.online import OnlineLink

if TYPE_CHECKING:
    from strata.config import Settings
    from strata.engine.recommend import FreshItems
    from strata.models.batch import QueryFeatures
    from strata.serving.backends import InferenceBackend
    from strata.serving.live import ItemEmbedder, LiveOverlay

log = logging.getLogger(__name__)

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
UserSource = Literal["online", "snapshot", "cold", "anonymous"]


# --- results ----------------------------------------------------------------------------------


@dataclass
class Recommendation:
    """One answer: items best first with final and per-stage scores, timings and versions."""

    user_id: int | None
    item_ids: np.ndarray  # (k',) int64, k' <= k
    scores: np.ndarray  # (k',) float32 final scores: fused ranker logit, or retrieval score
    retrieval_scores: np.ndarray  # (k',) float32 inner products from the index
    ranker_scores: np.ndarray | None  # (k',) float32 fused ranker logits; None for retrieval
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


class _BloomFilter:
    """The engine's `live` seen filter for one call: each user's Bloom filter of recent
    interactions in the online store (one round trip per user); fails open and records why
    when the store is down."""

    def __init__(self, link: OnlineLink, degraded: list[list[str]]) -> None:
        self.link = link
        self.degraded = degraded  # per user of the call

    def seen(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        out = np.zeros(item_ids.shape, bool)
        link = self.link
        for r, u in enumerate(user_ids.tolist()):
            if u < 0:  # anonymous: nothing to filter
                continue
            try:
                out[r] = link.breaker.call(link.bloom.contains, int(u), item_ids[r])
            except StoreUnavailableError:
                self.degraded[r].append(
                    "online store unavailable: Bloom filter skipped (fail open)"
                )
        return out


def _fresh(fresh: FreshItems, live: LiveOverlay | None) -> FreshItems:
    """The fresh-slot candidates without retired items."""
    if live is None or not len(live.retired):
        return fresh
    keep = ~np.isin(fresh.ids, live.retired)
    return type(fresh)(fresh.ids[keep], fresh.year[keep], fresh.emb[keep])


# --- the pipeline -----------------------------------------------------------------------------


class RecommendationPipeline:
    """All request-path stages for one registry version (immutable once built; thread-safe):
    user features from the online store (else the version snapshot, else cold-start defaults),
    then the engine (`strata.engine.recommend`) with the inference backend, the version's ANN
    index, live item popularity and each user's Bloom filter."""

    def __init__(
        self,
        settings: Settings,
        mv: ModelVersion,
        backend: InferenceBackend,
        index: Retriever,
        index_info: dict[str, Any],
        link: OnlineLink,
        live: LiveOverlay | None = None,
    ) -> None:
        from strata.engine.recommend import Engine, FreshItems
        from strata.models.space import USER_INPUT_FEATURES
        from strata.serving.backends import BackendModels
        from strata.serving.catalog import LiveItems

        self.settings = settings
        self.config = settings.serve
        self.model_version = mv
        self.dataset = mv.dataset
        self.path = mv.path
        self.manifest = mv.manifest
        self.version = mv.version
        self.as_of = mv.as_of
        # With live items: the version's space and index extended by the live catalogue.
        self.live = live
        self.base_index = index
        self.space = space = mv.space if live is None else live.space
        item_ids, item_emb = mv.item_ids, mv.item_embeddings
        if live is not None and (len(live.ids) or len(live.retired)):
            # only then: an empty live catalogue adds nothing to the request path
            index = live.retriever(index)
            item_ids, item_emb = live.embeddings(item_ids, item_emb)
        self.snapshot = mv.snapshot
        self.history = mv.history
        self.backend = backend
        self.index = index
        self.index_info = index_info
        self.link = link
        self.catalog = CatalogCache(space, link)
        self.ids = IdMap.of(space)  # the owner's ids of a declared dataset, else None
        self.event_types: tuple[str, ...] = tuple(space.meta.get("event_types", EVENT_TYPES))
        self.engine = Engine(
            BackendModels(backend), index, LiveItems(space, self.catalog), mv.history,
            _fresh(FreshItems.of(space, item_ids, item_emb), live), mv.score_weight,
            self.config.fresh, self.config.diversity,
        )  # fmt: skip
        self.fresh_ids = self.engine.fresh_ids
        self.hist_len = int(space.meta["hist_len"])
        self.devices = tuple(space.meta["devices"])
        self.user_features = tuple(USER_INPUT_FEATURES)
        self._warned_features = False
        self.embedder: ItemEmbedder | None = None  # set by `load`: the live items' item tower

    # construction -----------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        settings: Settings,
        dataset: str | None = None,
        version: str | None = None,
        link: OnlineLink | None = None,
    ) -> RecommendationPipeline:
        """Load `version` (default: the registry's serving one) with its backend and index;
        DataError naming the version and file when one is damaged (a file differs from the
        manifest's sha256, a graph ORT cannot read, a corrupt ANN index): never served."""
        from strata.serving.backends import create_backend
        from strata.serving.live import ItemEmbedder, build_overlay

        mv = ModelVersion.open(settings, dataset or settings.serve.dataset, version, verify=True)
        index, info = mv.index(strict=True)
        backend = create_backend(settings, mv.dataset, mv.version)
        embedder = ItemEmbedder(settings, mv)
        pipe = cls(
            settings, mv, backend, index, info,
            link if link is not None else OnlineLink.open(settings),
            build_overlay(settings, mv, embedder),
        )  # fmt: skip
        pipe.embedder = embedder
        pipe._warm_catalog()
        log.info("pipeline %s/%s ready: %d items (%d live), index %s", mv.dataset, pipe.version,
                 len(pipe.catalog), len(pipe.live.ids) if pipe.live else 0,
                 info.get("kind"))  # fmt: skip
        return pipe

    def with_live(self, live: LiveOverlay) -> RecommendationPipeline:
        """The same version with another live catalogue (a new pipeline; this one unchanged)."""
        pipe = type(self)(
            self.settings, self.model_version, self.backend, self.base_index, self.index_info,
            self.link, live,
        )  # fmt: skip
        pipe.embedder = self.embedder
        pipe._warm_catalog()
        return pipe

    def _warm_catalog(self) -> None:
        try:
            self.catalog.refresh()
        except StoreUnavailableError as exc:
            log.warning("catalog cache not loaded (store down), will retry: %s", exc)

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
        seed: int | None = None,
    ) -> Recommendation:
        """Top-`k` items for one user (None = anonymous, context only) at time `ts` on `device`;
        `seed` makes random choices (fresh order "random", diversity "sample") repeatable."""
        k = self.config.k_default if k is None else k
        self.check_request(k, device, ts)
        timer = StageTimer()
        degraded: list[str] = []
        with timer.stage("context"):
            t_arr = np.array([int(time.time()) if ts is None else int(ts)], dtype=np.int64)
            dev = np.array([device], dtype=object)
        with timer.stage("user_features"):
            q, source, user_version = self._query_features(user_id, t_arr, dev, degraded)
        degraded += self.link.versions.lost()  # features the store lost (empty normally)
        uid = np.array([-1 if user_id is None else user_id], np.int64)
        res = self.engine.run(
            uid, q, k, candidates or self.config.candidates, stage,
            live=_BloomFilter(self.link, [degraded]), seed=seed, timer=timer,
        )  # fmt: skip
        timer.ms["total"] = timer.total()
        versions = {"index": str(self.index_info.get("kind")), "user": user_version}
        return self._answer(res, 0, user_id, timer.ms, versions, source, degraded)

    def _answer(
        self,
        res: Result,
        r: int,
        user_id: int | None,
        timings: dict[str, float],
        versions: dict[str, str | None],
        source: UserSource,
        degraded: list[str],
    ) -> Recommendation:
        """Row `r` of an engine result as a `Recommendation`."""
        keep = res.ids[r] >= 0
        sc = res.scores[r][keep]
        return Recommendation(
            user_id=user_id,
            item_ids=res.ids[r][keep],
            scores=sc,
            retrieval_scores=res.retrieval[r][keep],
            ranker_scores=sc if res.ranked else None,
            timings_ms=timings,
            model_version=self.version,
            feature_versions={**versions, "item": self.catalog.feature_version},
            user_source=source,
            candidates={
                "retrieved": int(res.retrieved[r]),
                "after_filter": int(res.after_filter[r]),
                "fresh": int(res.fresh[r]),
            },
            degraded_reasons=degraded,
        )

    def recommend_many(
        self,
        user_ids: np.ndarray,
        k: int,
        stage: Stage = "full",
        ts: int | None = None,
        device: str = "unknown",
        seed: int | None = 0,
        chunk: int = 64,
    ) -> list[Recommendation]:
        """Offline batch (`strata recommend`): every user must be in the users table; context
        defaults to the version's cut-off, so results are reproducible. Users go through the
        engine `chunk` at a time; timings are per chunk."""
        from strata.models.batch import concat_queries

        ids = np.asarray(user_ids, dtype=np.int64).reshape(-1)
        known = self.knows_user(ids)
        if not known.all():
            bad = ids[~known][:5].tolist()
            raise ValidationError("user_id", f"unknown user id(s) {bad} (not in the users table)")
        when = self.as_of if ts is None else ts
        self.check_request(k, device, when)
        out: list[Recommendation] = []
        for s in range(0, len(ids), chunk):
            users = ids[s : s + chunk]
            timer = StageTimer()
            degraded: list[list[str]] = [[] for _ in users]
            t_arr, dev = np.array([when], np.int64), np.array([device], dtype=object)
            parts = []
            with timer.stage("user_features"):
                for j, u in enumerate(users.tolist()):
                    parts.append(self._query_features(u, t_arr, dev, degraded[j]))
            q = concat_queries([p[0] for p in parts])
            lost = self.link.versions.lost()
            for reasons in degraded:
                reasons += lost
            res = self.engine.run(
                users, q, k, self.config.candidates, stage,
                live=_BloomFilter(self.link, degraded), seed=seed, timer=timer,
            )  # fmt: skip
            timer.ms["total"] = timer.total()
            index = str(self.index_info.get("kind"))
            for j, u in enumerate(users.tolist()):
                versions = {"index": index, "user": parts[j][2]}
                out.append(self._answer(res, j, u, timer.ms, versions, parts[j][1], degraded[j]))
        return out

    # stages -----------------------------------------------------------------------------------

    def _query_features(
        self, user_id: int | None, ts: np.ndarray, device: np.ndarray, degraded: list[str]
    ) -> tuple[QueryFeatures, UserSource, str | None]:
        """Query-tower inputs: online row, else the version snapshot, else cold-start defaults;
        live recent items from events are appended to the history in every case."""
        from strata.models.space import query_features_from_rows

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
            link.versions.seen("user", version)  # a version gone since the last read: lost
            if bool(rows.found[0]):
                row, source = dict(rows.values), "online"
        except StoreUnavailableError:
            store_ok = False
        except ValidationError as exc:
            # No user version materialized or left (NoActiveVersionError), or one without a
            # feature the model needs: every user is "not in the store", so the snapshot
            # serves, as for any missing user (flagged when a version this process read is gone).
            none = isinstance(exc, NoActiveVersionError)
            if none:
                link.versions.seen("user", None)
            if not self._warned_features:
                self._warned_features = True
                # Nothing materialized is normal (embedded runs); a version without the
                # model's features is a deployment mistake worth a warning.
                level = logging.INFO if none else logging.WARNING
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


# --- helpers ------------------------------------------------------------------------------------


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
