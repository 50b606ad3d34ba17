"""The online side of a serving process: the store, live activity and Bloom filters behind one
`StoreBreaker`, so a failing store costs a request at most one short timeout and then nothing.

`StoreBreaker` fails fast while the store is known to be down, lets one caller probe it again
after a backoff that doubles from `store_backoff_min_s` to `store_backoff_max_s`, and closes on
the first success. `OnlineLink` is built once per process and shared by every model version.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from strata.errors import StoreUnavailableError

if TYPE_CHECKING:
    from strata.config import Settings
    from strata.features.bloom import BloomFilter
    from strata.features.online import ActivityStore, OnlineStore

log = logging.getLogger(__name__)
T = TypeVar("T")


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


class FeatureVersions:
    """Which online feature version of each entity this process last read, to notice a store
    that lost its data: a version that was active and is gone (a Valkey restarted empty, or
    flushed) while the store answers. No extra round trip: readers report the version each read
    returned anyway (the pointer rides in the rows' MGET; the catalog polls the item one)."""

    def __init__(self) -> None:
        self._last: dict[str, str | None] = {}
        self._lost: dict[str, str] = {}  # entity -> the version that was active before

    def seen(self, entity: str, version: str | None) -> None:
        """Record the active version a read of `entity` found (None: there was none)."""
        last = self._last.get(entity)
        if version == last:
            return
        self._last[entity] = version
        if version is None and last is not None:
            self._lost[entity] = last
            log.warning("online store lost the %s features (version %s is no longer active: "
                        "restarted empty or flushed); serving degraded until re-materialized",
                        entity, last)  # fmt: skip
        elif version is not None and self._lost.pop(entity, None) is not None:
            log.warning("online store holds %s features again (version %s)", entity, version)

    def lost(self) -> list[str]:
        """One degraded reason per entity whose features the store lost (empty normally)."""
        if not self._lost:
            return []
        return [
            f"online store lost its {entity} features: version {was} is gone (restarted empty "
            f"or flushed), {_FALLBACK.get(entity, 'defaults')} until `strata features "
            "materialize` runs again"
            for entity, was in sorted(self._lost.items())
        ]


#: What serves in place of an entity's lost online features (the reason's wording).
_FALLBACK = {
    "user": "user features from the model snapshot and interactions before it not filtered",
    "item": "item popularity as of the training cut",
}


@dataclass
class OnlineLink:
    """The online side shared by every pipeline version: feature store, live activity, Bloom
    filters, the breaker that guards them, and the feature versions last read (built once per
    process)."""

    store: OnlineStore
    activity: ActivityStore
    bloom: BloomFilter
    breaker: StoreBreaker
    versions: FeatureVersions = field(default_factory=FeatureVersions)

    @classmethod
    def open(cls, settings: Settings, store: OnlineStore | None = None) -> OnlineLink:
        """Open the configured online store (or use `store`) with its activity store and Bloom."""
        from strata.features.bloom import open_bloom
        from strata.features.online import open_activity_store, open_online_store

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
