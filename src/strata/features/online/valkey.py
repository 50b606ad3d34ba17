"""Valkey/Redis online store (redis-py); the only module of strata that imports the client.

Key layout (`P` = `key_prefix`, default `strata`). Everything that belongs to one entity carries
the hash tag `{<entity>:<id>}`, so on a cluster one user's keys share a slot and one user's Lua
scripts (Bloom, activity) are cluster safe:

    P:{user:42}:f:<version>   hash   one feature row: field per feature, raw little-endian bytes
                                     (scalars: float32/float64/int32/int64; vectors: packed
                                     float32), plus field `_` = presence marker; optional TTL
    P:meta:<entity>:<version> hash   feature name -> "dtype:dim" (immutable once read)
    P:active:<entity>         string the version readers see (switched with one SET)
    P:versions:<entity>       list   stored versions, oldest first (older ones get deleted)
    P:{user:42}:bloom         string Bloom generations of recently interacted items (serving/bloom)
    P:{user:42}:seen          set    event_ids already applied (idempotency; TTL = window)
    P:{user:42}:act           hash   behavioural counters n_<type>, n_events, last_ts, c:<cat>
    P:{user:42}:recent        list   recent item ids, newest first, capped
    P:events                  stream hand-off of ingested events (consumer group; see
                                     `ValkeyEventStream`, recreated on demand after a restart)

A read of many rows is one round trip: on a standalone server (the default, also ElastiCache
without cluster mode) one Lua call checks the active pointer and HMGETs every row, returning
each fixed-width feature as one concatenated column (decoded with one `np.frombuffer`); with
`cluster=True` it is one pipeline of `GET` pointer + `HMGET` per row (cluster safe). The active
version is cached and re-checked on every read; only right after a switch does a read take a
second trip.

Two connection pools with different timeouts: `client` (config `timeout_ms`, default 50 ms, no
retries) carries every call a request can make (reads and the metadata load after a version
switch, activity, Bloom, the events stream, health), so a hung server costs a request at most one
short timeout per call; `bulk` (`bulk_timeout_ms`, default 10 s) is only for batch jobs that are
never on the request path: writes, activation, version cleanup (materialize, admin). Every client
error (refused, timeout, reset, and error replies such as OOM or LOADING) surfaces as
`StoreUnavailableError`, so callers degrade instead of failing with the client's exception.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from strata.errors import StoreUnavailableError
from strata.features.online import (
    ActivityEvents,
    FeatureRows,
    FeatureSpec,
    as_ids,
    check_entity,
    check_features,
    check_version,
    infer_specs,
)
from strata.features.online.memory import DEFAULT_VERSION, activity_rows

if TYPE_CHECKING:
    from strata.config import ValkeyOnlineConfig

log = logging.getLogger(__name__)

WRITE_BATCH = 1000
PRESENT = "_"
# RedisError covers error replies too (OOM, MISCONF, READONLY, BUSY, WRONGTYPE): for a caller
# each means "the store cannot serve this now", never a reason to fail a request with a 500.
_ERRORS = (redis.exceptions.RedisError, OSError)


def _le(dtype: str) -> np.dtype:
    return np.dtype(dtype).newbyteorder("<")


class ValkeyOnlineStore:
    """`OnlineStore` over Valkey/Redis: one hash per entity row, pipelined, versioned."""

    def __init__(self, config: ValkeyOnlineConfig) -> None:
        self.config = config
        self.prefix = config.key_prefix
        # Serving calls get a short, bounded timeout and no retries (fail fast, degrade);
        # bulk work (materialize) gets a patient client of its own, never used by requests.
        self.client: Any = self._connect(config.timeout_ms / 1000.0)
        self.bulk: Any = self._connect(max(config.timeout_ms, config.bulk_timeout_ms) / 1000.0)
        self._meta: dict[tuple[str, str], dict[str, FeatureSpec]] = {}
        self._active: dict[str, str | None] = {}
        self._activity: ValkeyActivityStore | None = None
        self._read_script = self.client.register_script(_READ_LUA)

    def _connect(self, timeout_s: float) -> Any:
        return redis.Redis.from_url(
            self.config.url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_error=[],
        )

    @classmethod
    def from_config(cls, config: ValkeyOnlineConfig) -> ValkeyOnlineStore:
        """Build from `ValkeyOnlineConfig` (connects lazily on first use)."""
        return cls(config)

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Translate client/network failures into `StoreUnavailableError`."""
        try:
            yield
        except _ERRORS as exc:
            raise StoreUnavailableError(f"online store {self.config.url}: {exc}") from exc

    # --- keys -----------------------------------------------------------------------------

    def row_key(self, entity: str, entity_id: int, version: str) -> str:
        """Key of one feature row."""
        return f"{self.prefix}:{{{entity}:{entity_id}}}:f:{version}"

    def entity_key(self, entity: str, entity_id: int, kind: str) -> str:
        """Key of per-entity live state (`bloom`, `seen`, `act`, `recent`)."""
        return f"{self.prefix}:{{{entity}:{entity_id}}}:{kind}"

    def _meta_key(self, entity: str, version: str) -> str:
        return f"{self.prefix}:meta:{entity}:{version}"

    def _active_key(self, entity: str) -> str:
        return f"{self.prefix}:active:{entity}"

    def _versions_key(self, entity: str) -> str:
        return f"{self.prefix}:versions:{entity}"

    # --- protocol -------------------------------------------------------------------------

    def _load_meta(self, entity: str, version: str, client: Any = None) -> dict[str, FeatureSpec]:
        with self.guard():
            raw = (client or self.bulk).hgetall(self._meta_key(entity, version))
        specs = {}
        for k, v in raw.items():
            dtype, dim = v.decode().split(":")
            specs[k.decode()] = FeatureSpec(dtype, int(dim))
        self._meta[(entity, version)] = specs
        return specs

    def write(
        self,
        entity: str,
        ids: Any,
        columns: Mapping[str, Any],
        version: str | None = None,
    ) -> int:
        """Upsert rows into `version` (default: active, or `default` made active) in batches."""
        check_entity(entity)
        ids = as_ids(ids)
        parsed = infer_specs(ids, columns)
        if version is None:
            with self.guard():
                self.bulk.set(self._active_key(entity), DEFAULT_VERSION, nx=True)
                raw = self.bulk.get(self._active_key(entity))
            version = raw.decode() if raw else DEFAULT_VERSION
            self._register(entity, version)
        check_version(version)
        specs = self._load_meta(entity, version)
        for name, (spec, _) in parsed.items():
            if name in specs and specs[name] != spec:
                from strata.errors import ValidationError

                raise ValidationError(name, f"stored as {specs[name]}, got {spec}")
        # Column bytes once, then slice per row: no per-value NumPy calls.
        blobs = {
            name: (arr.astype(_le(spec.dtype), copy=False).tobytes(), spec.width)
            for name, (spec, arr) in parsed.items()
            if spec.dtype != "string"
        }
        strings = {
            name: [v.encode() for v in arr.tolist()]
            for name, (spec, arr) in parsed.items()
            if spec.dtype == "string"
        }
        ttl = self.config.ttl_s
        with self.guard():
            self.bulk.hset(
                self._meta_key(entity, version),
                mapping={n: f"{s.dtype}:{s.dim}" for n, (s, _) in parsed.items()},
            )
            for start in range(0, len(ids), WRITE_BATCH):
                pipe = self.bulk.pipeline(transaction=False)
                for row in range(start, min(start + WRITE_BATCH, len(ids))):
                    key = self.row_key(entity, int(ids[row]), version)
                    mapping: dict[str, bytes] = {PRESENT: b"1"}
                    for name, (buf, w) in blobs.items():
                        mapping[name] = buf[row * w : (row + 1) * w]
                    for name, encoded in strings.items():
                        mapping[name] = encoded[row]
                    pipe.hset(key, mapping=mapping)
                    if ttl:
                        pipe.expire(key, ttl)
                pipe.execute()
        self._meta.pop((entity, version), None)
        return len(np.unique(ids))

    def _register(self, entity: str, version: str) -> None:
        with self.guard():
            known = [v.decode() for v in self.bulk.lrange(self._versions_key(entity), 0, -1)]
            if version not in known:
                self.bulk.rpush(self._versions_key(entity), version)

    def _specs(self, entity: str, version: str | None, features: Sequence[str]) -> dict:
        if version is None:
            return {}
        specs = self._meta.get((entity, version))
        if specs is None or any(f not in specs for f in features):
            # On the read path: the first read after a switch must not wait on the bulk timeout.
            specs = self._load_meta(entity, version, self.client)
        return specs

    def read(self, entity: str, ids: Any, features: Sequence[str]) -> FeatureRows:
        """All rows in one round trip (one Lua call, or one pipeline of HMGETs on a cluster)."""
        check_entity(entity)
        ids = as_ids(ids)
        features = list(features)
        if self.config.cluster:
            return self._read_pipelined(entity, ids, features)
        version = self._active.get(entity)
        with self.guard():
            for _ in range(3):
                if version is None:
                    version = self.active_version(entity)
                    if version is None:
                        check_features(entity, None, {}, features)
                        return FeatureRows(ids, np.zeros(len(ids), bool), {}, None)
                specs = self._specs(entity, version, features)
                check_features(entity, version, specs, features)
                widths = [specs[n].width for n in features]
                keys = [self._active_key(entity)]
                keys += [self.row_key(entity, i, version) for i in ids.tolist()]
                args: list[Any] = [version, len(features)]
                for name, width in zip(features, widths, strict=True):
                    args += [name, width]
                out = self._read_script(keys=keys, args=args)
                if len(out) == 1:  # the pointer moved since it was cached: follow it
                    version = out[0].decode() if out[0] else None
                    self._active[entity] = version
                    continue
                self._active[entity] = version
                found = np.frombuffer(out[1], dtype=np.uint8) == ord("1")
                values = {
                    name: self._decode(specs[name], col, len(ids))
                    for name, col in zip(features, out[2:], strict=True)
                }
                return FeatureRows(ids=ids, found=found, values=values, version=version)
        raise StoreUnavailableError(f"{entity}: active version kept changing during the read")

    @staticmethod
    def _decode(spec: FeatureSpec, col: Any, n: int) -> np.ndarray:
        if spec.dtype == "string":
            return np.array([v.decode() if v else "" for v in col] or [], dtype=object)
        arr = np.frombuffer(col, dtype=_le(spec.dtype)).astype(spec.dtype, copy=False)
        return arr if spec.dim == 1 else arr.reshape(n, spec.dim)

    def _read_pipelined(self, entity: str, ids: np.ndarray, features: list[str]) -> FeatureRows:
        """Cluster-safe read: the active pointer plus one HMGET per id in one pipeline."""
        cached = self._active.get(entity)
        rows: list[Any] = []
        with self.guard():
            pipe = self.client.pipeline(transaction=False)
            pipe.get(self._active_key(entity))
            if cached is not None:
                for i in ids.tolist():
                    pipe.hmget(self.row_key(entity, i, cached), [PRESENT, *features])
            out = pipe.execute()
            raw = out[0]
            version = raw.decode() if raw else None
            if version is not None and version != cached:
                # The pointer moved (or first read): read again at the version now active.
                self._active[entity] = version
                pipe = self.client.pipeline(transaction=False)
                for i in ids.tolist():
                    pipe.hmget(self.row_key(entity, i, version), [PRESENT, *features])
                rows = pipe.execute()
            elif version is not None:
                rows = out[1:]
        specs = self._specs(entity, version, features)
        check_features(entity, version, specs, features)
        if version is None:
            return FeatureRows(ids, np.zeros(len(ids), bool), {}, None)
        found = np.fromiter((r[0] is not None for r in rows), dtype=bool, count=len(ids))
        values: dict[str, np.ndarray] = {}
        for j, name in enumerate(features, start=1):
            spec = specs[name]
            if spec.dtype == "string":
                values[name] = self._decode(spec, [r[j] for r in rows], len(ids))
                continue
            zero = b"\0" * spec.width
            buf = b"".join([r[j] if r[j] is not None else zero for r in rows])
            values[name] = self._decode(spec, buf, len(ids))
        return FeatureRows(ids=ids, found=found, values=values, version=version)

    def delete(self, entity: str, ids: Any) -> int:
        """Delete rows of `ids` from the active version."""
        check_entity(entity)
        ids = as_ids(ids)
        version = self.active_version(entity)
        if version is None or not len(ids):
            return 0
        with self.guard():
            n = self.bulk.delete(*[self.row_key(entity, int(i), version) for i in ids])
        return int(n)

    def activate(self, entity: str, version: str, keep: int = 2) -> None:
        """One SET switches readers; versions older than the newest `keep` are unlinked."""
        check_entity(entity)
        check_version(version)
        vkey = self._versions_key(entity)
        with self.guard():
            pipe = self.bulk.pipeline(transaction=True)
            pipe.lrem(vkey, 0, version)
            pipe.rpush(vkey, version)
            pipe.set(self._active_key(entity), version)
            pipe.execute()
            stored = [v.decode() for v in self.bulk.lrange(vkey, 0, -1)]
            for old in stored[: max(len(stored) - max(keep, 1), 0)]:
                self._drop_version(entity, old)
                self.bulk.lrem(vkey, 0, old)

    def _drop_version(self, entity: str, version: str) -> None:
        pattern = f"{self.prefix}:{{{entity}:*}}:f:{version}"
        batch: list[bytes] = []
        for key in self.bulk.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                self.bulk.unlink(*batch)
                batch.clear()
        if batch:
            self.bulk.unlink(*batch)
        self.bulk.unlink(self._meta_key(entity, version))
        self._meta.pop((entity, version), None)
        log.info("dropped %s version %s", entity, version)

    def active_version(self, entity: str) -> str | None:
        """The version readers see now (read from the server, not the cache)."""
        check_entity(entity)
        with self.guard():
            raw = self.client.get(self._active_key(entity))
        return raw.decode() if raw else None

    def versions(self, entity: str) -> list[str]:
        """Stored versions of `entity`, oldest first."""
        with self.guard():
            return [
                v.decode()
                for v in self.bulk.lrange(self._versions_key(check_entity(entity)), 0, -1)
            ]

    def health(self) -> None:
        """PING with the serving timeout; raise `StoreUnavailableError` on failure."""
        with self.guard():
            self.client.ping()

    def activity_store(self) -> ValkeyActivityStore:
        """Live per-user activity in the same Valkey."""
        if self._activity is None:
            self._activity = ValkeyActivityStore(self)
        return self._activity

    def event_stream(self, stream: str, group: str) -> ValkeyEventStream:
        """The events stream `P:<stream>` read through consumer group `group`."""
        return ValkeyEventStream(self, stream, group)

    def close(self) -> None:
        """Release both connection pools."""
        self.client.close()
        self.bulk.close()


# Many rows in one call: KEYS = active pointer, then one row key per id (at the version in
# ARGV[1]); ARGV = version, feature count, then (name, byte width; 0 = string) per feature.
# Returns {pointer} alone when the pointer moved, else {pointer, presence '0'/'1' per row,
# one column per feature: fixed-width values concatenated (zeros when absent) or a list}.
_READ_LUA = """
local ptr = redis.call('GET', KEYS[1])
if ptr ~= ARGV[1] then return {ptr or false} end
local nf = tonumber(ARGV[2])
local fields, widths, cols, zeros = {'_'}, {}, {}, {}
for j = 1, nf do
  fields[j + 1] = ARGV[1 + 2 * j]
  widths[j] = tonumber(ARGV[2 + 2 * j])
  cols[j] = {}
  zeros[j] = string.rep('\\0', widths[j])
end
local present = {}
for i = 2, #KEYS do
  local v = redis.call('HMGET', KEYS[i], unpack(fields))
  present[i - 1] = v[1] and '1' or '0'
  for j = 1, nf do
    local x = v[j + 1]
    if widths[j] > 0 then
      if x and #x == widths[j] then cols[j][i - 1] = x else cols[j][i - 1] = zeros[j] end
    else
      cols[j][i - 1] = x or ''
    end
  end
end
local out = {ptr, table.concat(present)}
for j = 1, nf do
  if widths[j] > 0 then out[j + 2] = table.concat(cols[j]) else out[j + 2] = cols[j] end
end
return out
"""

# One script per user: keys share the user's hash tag, so it is atomic and cluster safe.
# ARGV: recent_cap, ttl_s, then 5 values per event: event_id, item_id, type, ts, category.
_APPLY_LUA = """
local seen, act, recent = KEYS[1], KEYS[2], KEYS[3]
local cap, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
local last = tonumber(redis.call('HGET', act, 'last_ts') or '0')
for i = 3, #ARGV, 5 do
  if redis.call('SADD', seen, ARGV[i]) == 1 then
    redis.call('HINCRBY', act, 'n_' .. ARGV[i + 2], 1)
    redis.call('HINCRBY', act, 'n_events', 1)
    local ts = tonumber(ARGV[i + 3])
    if ts > last then last = ts end
    if tonumber(ARGV[i + 4]) >= 0 then redis.call('HINCRBY', act, 'c:' .. ARGV[i + 4], 1) end
    redis.call('LPUSH', recent, ARGV[i + 1])
    out[#out + 1] = '1'
  else
    out[#out + 1] = '0'
  end
end
redis.call('HSET', act, 'last_ts', string.format('%d', last))
redis.call('LTRIM', recent, 0, cap - 1)
redis.call('EXPIRE', seen, ttl)
redis.call('EXPIRE', act, ttl)
redis.call('EXPIRE', recent, ttl)
return table.concat(out)
"""


class ValkeyActivityStore:
    """`ActivityStore` in Valkey: one atomic Lua call per user, all users in one pipeline."""

    def __init__(self, store: ValkeyOnlineStore) -> None:
        self.store = store
        self._apply = store.client.register_script(_APPLY_LUA)

    def _keys(self, user: int) -> list[str]:
        return [self.store.entity_key("user", user, k) for k in ("seen", "act", "recent")]

    def apply_events(self, events: ActivityEvents, recent_cap: int, window_s: int) -> np.ndarray:
        """Apply events idempotently by event_id; returns the mask of events that were new."""
        order = np.lexsort((events.ts, events.user_id))
        users = events.user_id[order]
        bounds = np.flatnonzero(np.diff(users)) + 1
        groups = np.split(order, bounds)
        cats = events.category if events.category is not None else np.full(len(order), -1)
        with self.store.guard():
            pipe = self.store.client.pipeline(transaction=False)
            for g in groups:
                argv: list[Any] = [recent_cap, window_s]
                for i in g.tolist():
                    argv += [
                        str(events.event_id[i]),
                        int(events.item_id[i]),
                        str(events.type[i]),
                        int(events.ts[i]),
                        int(cats[i]),
                    ]
                self._apply(keys=self._keys(int(events.user_id[g[0]])), args=argv, client=pipe)
            results = pipe.execute() if len(order) else []
        new = np.zeros(len(events.event_id), dtype=bool)
        for g, res in zip(groups, results, strict=True):
            new[g] = np.frombuffer(res, dtype=np.uint8) == ord("1")
        return new

    def activity(self, user_ids: Any) -> FeatureRows:
        """Counters per user in one pipelined round trip."""
        ids = as_ids(user_ids)
        with self.store.guard():
            pipe = self.store.client.pipeline(transaction=False)
            for u in ids.tolist():
                pipe.hgetall(self.store.entity_key("user", u, "act"))
            raw = pipe.execute()
        states = [{k.decode(): int(v) for k, v in r.items()} or None for r in raw]
        return activity_rows(ids, states)

    def recent_items(self, user_id: int, n: int) -> np.ndarray:
        """Newest-first recent items of `user_id`."""
        with self.store.guard():
            raw = self.store.client.lrange(
                self.store.entity_key("user", int(user_id), "recent"), 0, n - 1
            )
        return np.asarray([int(x) for x in raw], dtype=np.int64)


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
    """

    def __init__(self, store: ValkeyOnlineStore, stream: str, group: str) -> None:
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
