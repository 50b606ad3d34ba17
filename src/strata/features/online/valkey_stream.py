"""The Valkey Stream + consumer group that carries events from a replica to its durable log.

`ValkeyOnlineStore.event_stream` opens one; `strata.features.events.EventIngestor` uses it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis

log = logging.getLogger(__name__)


def _is_nogroup(exc: Exception) -> bool:
    return str(exc).startswith("NOGROUP")


class ValkeyEventStream:
    """The Valkey Stream + consumer group that carries events to the durable log.

    Nothing touches the network at construction (the app starts with the store down), and the
    group is created on demand: before the first read, and again whenever the server answers
    NOGROUP because it restarted empty (or the group was destroyed). It is recreated from the
    stream's start (id 0, MKSTREAM): entries added before the group existed (an `add` right after
    the restart) are delivered, never skipped; entries that were already processed come again and
    are absorbed by the idempotent ingest (event_id marks; offline landing dedups by event_id).
    Every call uses the serving client, except blocking reads, which need a timeout above the block.

    Replicas share the group, so an entry one replica added may be delivered to another; if that
    one dies before logging it, the entry stays pending under its name. `claim` moves entries
    pending longer than a bound (the dead consumer's) to a live consumer, which then logs them.
    """

    def __init__(self, store: Any, stream: str, group: str) -> None:
        """`store`: the `ValkeyOnlineStore` whose clients and key prefix the stream uses."""
        self.store = store
        self.key = f"{store.prefix}:{stream}"
        self.group = group
        self._have_group = False

    def ensure_group(self) -> None:
        """Create the group (and the stream) unless it exists."""
        with self.store.guard():
            try:
                self.store.client.xgroup_create(self.key, self.group, id="0", mkstream=True)
                log.info("created consumer group %s on %s", self.group, self.key)
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._have_group = True

    def add(self, payloads: Sequence[str]) -> None:
        """Append one entry per JSON payload in one pipelined round trip."""
        with self.store.guard():
            pipe = self.store.client.pipeline(transaction=False)
            for p in payloads:
                # Approximate trim keeps the stream bounded; acked entries are in the log.
                pipe.xadd(self.key, {"e": p}, maxlen=1_000_000, approximate=True)
            pipe.execute()

    def read(
        self, consumer: str, start: str, count: int, block_ms: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        """(entry id, payload) pairs for `consumer`: its pending ones from `start="0"`, new ones
        from `">"`; entries whose payload was trimmed away are skipped."""
        if not self._have_group:
            self.ensure_group()
        client = self.store.client if block_ms is None else self.store.bulk
        with self.store.guard():
            try:
                resp = client.xreadgroup(
                    self.group, consumer, {self.key: start}, count=count, block=block_ms
                )
            except redis.exceptions.ResponseError as exc:
                if not _is_nogroup(exc):
                    raise
                log.warning("%s: consumer group %s is gone (server restarted?); recreating it",
                            self.key, self.group)  # fmt: skip
                self.ensure_group()
                resp = client.xreadgroup(
                    self.group, consumer, {self.key: start}, count=count, block=block_ms
                )
        out = []
        for _, entries in resp or []:
            for entry_id, fields in entries:
                if fields and b"e" in fields:
                    out.append((entry_id, fields[b"e"]))
        return out

    def ack(self, ids: Sequence[bytes]) -> int:
        """XACK `ids`; returns how many were pending (0 when the group was lost meanwhile)."""
        if not ids:
            return 0
        with self.store.guard():
            return int(self.store.client.xack(self.key, self.group, *ids))

    def pending(self) -> int:
        """Entries delivered to some consumer and not acknowledged yet."""
        with self.store.guard():
            try:
                info = self.store.client.xpending(self.key, self.group)
            except redis.exceptions.ResponseError as exc:
                if not _is_nogroup(exc):
                    raise
                return 0
        return int(info["pending"])

    def claim(self, consumer: str, min_idle_ms: int, count: int) -> int:
        """Move up to `count` entries pending on any consumer for over `min_idle_ms` to
        `consumer` (XAUTOCLAIM); returns how many moved (they are then its pending entries)."""
        if not self._have_group:
            self.ensure_group()
        with self.store.guard():
            try:
                resp = self.store.client.xautoclaim(
                    self.key, self.group, consumer, min_idle_ms, "0-0", count=count, justid=True
                )
            except redis.exceptions.ResponseError as exc:
                if not _is_nogroup(exc):
                    raise
                return 0
        moved = len(resp[1]) if resp and len(resp) > 1 else 0
        if moved:
            log.warning("%s: %s took over %d entries left pending by another consumer",
                        self.key, consumer, moved)  # fmt: skip
        return moved
