"""Valkey/Redis online store (redis-py); the only module of strata that imports the client.

Key layout (`P` = `key_prefix`, default `strata`). Everything that belongs to one entity carries
the hash tag `{<entity>:<id>}`, so on a cluster one user's keys share a slot and one user's Lua
scripts (Bloom, activity) are cluster safe:

    P:{user:42}:r:<version>   string one feature row, every feature of the version packed into
                                     one value (`strata.features.online.rowcodec`); optional TTL
    P:meta:<entity>:<version> hash   feature name -> "dtype:dim" (immutable once read), plus
                                     `_layout`: the row layout's feature order (JSON list)
    P:active:<entity>         string the version readers see (switched with one SET)
    P:versions:<entity>       list   stored versions, oldest first (older ones get deleted)
    P:{user:42}:bloom         string Bloom generations of recently interacted items (features/bloom)
    P:{user:42}:seen          set    event_ids already applied (idempotency; TTL = window)
    P:{user:42}:act           hash   behavioural counters n_<type>, n_events, last_ts, c:<cat>
    P:{user:42}:recent        list   recent item ids, newest first, capped
    P:events                  stream hand-off of ingested events (consumer group; see
                                     `ValkeyEventStream`, recreated on demand after a restart)

A read of many rows is one round trip: on a standalone server (the default, also ElastiCache
without cluster mode) one native `MGET` of the active pointer and every row key, so the pointer
and the rows are read atomically; the rows' fixed-width parts are decoded with one structured
`np.frombuffer`. With `cluster=True` it is one pipeline of `GET`s (cluster safe: no multi-slot
command). The active version is cached and re-checked on every read; only right after a switch
does a read take a second trip. A write that does not carry every feature of the version's rows
(an upsert of some columns) reads the rows it touches first and keeps their other features.

Two connection pools with different timeouts: `client` (config `timeout_ms`, default 50 ms, no
retries) carries every call a request can make (reads and the metadata load after a version
switch, activity, Bloom, the events stream, health), so a hung server costs a request at most one
short timeout per call; `bulk` (`bulk_timeout_ms`, default 10 s) is only for batch jobs that are
never on the request path: writes, activation, version cleanup (materialize, admin). Every client
error (refused, timeout, reset, and error replies such as OOM or LOADING) surfaces as
`StoreUnavailableError`, so callers degrade instead of failing with the client's exception.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from strata.errors import ConfigError, StoreUnavailableError, ValidationError
from strata.features.online import (
    ActivityEvents,
    FeatureRows,
    FeatureSpec,
    as_ids,
    check_entity,
    check_features,
    check_version,
    infer_specs,
    rowcodec,
)
from strata.features.online.memory import DEFAULT_VERSION, activity_rows
from strata.features.online.rowcodec import MAX_FIXED, RowLayout

if TYPE_CHECKING:
    from strata.config import ValkeyOnlineConfig

log = logging.getLogger(__name__)

WRITE_BATCH = 1000
LAYOUT = "_layout"  # meta hash field: the row layout's feature order
# RedisError covers error replies too (OOM, MISCONF, READONLY, BUSY, WRONGTYPE): for a caller
# each means "the store cannot serve this now", never a reason to fail a request with a 500.
_ERRORS = (redis.exceptions.RedisError, OSError)


def client_options(config: ValkeyOnlineConfig) -> dict[str, Any]:
    """The redis-py keyword arguments every client of `config` gets: the password, and for a
    rediss:// URL a verified TLS link (the CA bundle of `tls_ca_file`, else the system's)."""
    password = config.password
    out: dict[str, Any] = {
        "password": password.get_secret_value() if password is not None else None
    }
    if config.url.startswith("rediss://"):
        ca = config.tls_ca_file
        if ca is not None and not ca.is_file():
            # A wrong path must stop start-up, not look like an outage on every call.
            raise ConfigError(f"online.tls_ca_file: {ca} is not a file")
        out |= {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
        if ca is not None:
            out["ssl_ca_certs"] = str(ca)
    return out


def explain(exc: BaseException) -> str:
    """The client's message, with the setting to look at when it is an AUTH refusal (a missing
    password reads "HELLO must be called with the client already authenticated")."""
    text = " ".join(str(exc).split())  # one line, whatever the server sent
    low = text.lower()
    if "noauth" in low or "already authenticated" in low or "authentication required" in low:
        return f"the server requires a password (online.password): {text}"
    if "wrongpass" in low or "invalid username-password" in low or "invalid password" in low:
        return f"the server refused the password (online.password): {text}"
    return text


def shown_url(url: str) -> str:
    """`url` without a password in it (`redis://user:secret@host` -> `redis://user:***@host`),
    for messages and logs."""
    scheme, sep, rest = url.partition("://")
    auth, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in auth:
        return url
    return f"{scheme}://{auth.split(':', 1)[0]}:***@{host}"


class ValkeyOnlineStore:
    """`OnlineStore` over Valkey/Redis: one packed string per entity row, versioned."""

    def __init__(self, config: ValkeyOnlineConfig) -> None:
        self.config = config
        self.prefix = config.key_prefix
        # Serving calls get a short, bounded timeout and no retries (fail fast, degrade);
        # bulk work (materialize) gets a patient client of its own, never used by requests.
        self.client: Any = self._connect(config.timeout_ms / 1000.0)
        self.bulk: Any = self._connect(max(config.timeout_ms, config.bulk_timeout_ms) / 1000.0)
        self._meta: dict[tuple[str, str], RowLayout] = {}
        self._active: dict[str, str | None] = {}
        self._activity: ValkeyActivityStore | None = None

    def _connect(self, timeout_s: float) -> Any:
        return redis.Redis.from_url(
            self.config.url,
            **client_options(self.config),
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
            raise StoreUnavailableError(
                f"online store {shown_url(self.config.url)}: {explain(exc)}"
            ) from exc

    # --- keys -----------------------------------------------------------------------------

    def row_key(self, entity: str, entity_id: int, version: str) -> str:
        """Key of one feature row."""
        return f"{self.prefix}:{{{entity}:{entity_id}}}:r:{version}"

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

    def _load_meta(self, entity: str, version: str, client: Any = None) -> RowLayout:
        with self.guard():
            raw = (client or self.bulk).hgetall(self._meta_key(entity, version))
        specs = {}
        order: list[str] | None = None
        for k, v in raw.items():
            if k == LAYOUT.encode():
                order = json.loads(v)
                continue
            dtype, dim = v.decode().split(":")
            specs[k.decode()] = FeatureSpec(dtype, int(dim))
        names = [n for n in (order or sorted(specs)) if n in specs]
        layout = RowLayout(tuple(names), specs)
        self._meta[(entity, version)] = layout
        return layout

    def write(
        self,
        entity: str,
        ids: Any,
        columns: Mapping[str, Any],
        version: str | None = None,
    ) -> int:
        """Upsert rows into `version` (default: active, or `default` made active) in batches;
        features of existing rows that `columns` does not carry are kept."""
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
        before = self._load_meta(entity, version)
        for name, (spec, _) in parsed.items():
            if name in before.specs and before.specs[name] != spec:
                raise ValidationError(name, f"stored as {before.specs[name]}, got {spec}")
        layout = before.extended({name: spec for name, (spec, _) in parsed.items()})
        if layout.width > MAX_FIXED:
            raise ValidationError(next(iter(parsed)), f"rows over {MAX_FIXED} bytes")
        kept = [n for n in layout.names if n not in parsed]  # read back and kept per row
        ttl = self.config.ttl_s
        with self.guard():
            if layout is not before:
                self.bulk.hset(
                    self._meta_key(entity, version),
                    mapping={
                        **{n: f"{s.dtype}:{s.dim}" for n, s in layout.specs.items()},
                        LAYOUT: json.dumps(list(layout.names)),
                    },
                )
            for start in range(0, len(ids), WRITE_BATCH):
                part = ids[start : start + WRITE_BATCH].tolist()
                keys = [self.row_key(entity, i, version) for i in part]
                values = {n: arr[start : start + WRITE_BATCH] for n, (_, arr) in parsed.items()}
                if kept:
                    _, old = rowcodec.decode(layout, self.bulk.mget(keys), kept)
                    values |= old
                pipe = self.bulk.pipeline(transaction=False)
                for key, blob in zip(keys, rowcodec.encode(layout, len(part), values), strict=True):
                    pipe.set(key, blob, ex=ttl)
                pipe.execute()
        self._meta.pop((entity, version), None)
        return len(np.unique(ids))

    def _register(self, entity: str, version: str) -> None:
        with self.guard():
            known = [v.decode() for v in self.bulk.lrange(self._versions_key(entity), 0, -1)]
            if version not in known:
                self.bulk.rpush(self._versions_key(entity), version)

    def _layout(self, entity: str, version: str, features: Sequence[str]) -> RowLayout:
        layout = self._meta.get((entity, version))
        if layout is None or any(f not in layout.specs for f in features):
            # On the read path: the first read after a switch must not wait on the bulk timeout.
            layout = self._load_meta(entity, version, self.client)
        return layout

    def read(self, entity: str, ids: Any, features: Sequence[str]) -> FeatureRows:
        """All rows in one round trip (one MGET, or one pipeline of GETs on a cluster)."""
        check_entity(entity)
        ids = as_ids(ids)
        features = list(features)
        version = self._active.get(entity)
        with self.guard():
            for _ in range(3):
                if version is None:
                    version = self.active_version(entity)
                    if version is None:
                        check_features(entity, None, {}, features)
                        return FeatureRows(ids, np.zeros(len(ids), bool), {}, None)
                    self._active[entity] = version
                layout = self._layout(entity, version, features)
                check_features(entity, version, layout.specs, features)
                keys = [self.row_key(entity, i, version) for i in ids.tolist()]
                out = self._fetch(self._active_key(entity), keys)
                pointer = out[0].decode() if out[0] else None
                if pointer != version:  # the pointer moved since it was cached: follow it
                    version = self._active[entity] = pointer
                    continue
                found, values = rowcodec.decode(layout, out[1:], features)
                return FeatureRows(ids=ids, found=found, values=values, version=version)
        raise StoreUnavailableError(f"{entity}: active version kept changing during the read")

    def _fetch(self, pointer_key: str, keys: list[str]) -> list[Any]:
        """The pointer and the rows in one round trip: one atomic MGET on a standalone server;
        on a cluster, where one command cannot span slots, a pipeline of GETs."""
        if not self.config.cluster:
            return list(self.client.mget([pointer_key, *keys]))
        pipe = self.client.pipeline(transaction=False)
        pipe.get(pointer_key)
        for key in keys:
            pipe.get(key)
        return list(pipe.execute())

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
        pattern = f"{self.prefix}:{{{entity}:*}}:r:{version}"
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

    def event_stream(self, stream: str, group: str) -> Any:
        """The events stream `P:<stream>` read through consumer group `group` (a
        `valkey_stream.ValkeyEventStream`)."""
        from strata.features.online.valkey_stream import ValkeyEventStream

        return ValkeyEventStream(self, stream, group)

    def close(self) -> None:
        """Release both connection pools."""
        self.client.close()
        self.bulk.close()


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
