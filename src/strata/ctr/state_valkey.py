"""`CtrState` and `Lease` in Valkey: the CTR state every replica of a cluster shares.

Keys, under `<key_prefix>:ctr:<registry name>:` (`ctr/state.py` has the semantics):

- `next`: INCRBY counter; a request's ids are one range of it, unique across the cluster;
- `p:<id>`: a prediction awaiting its label (served probability + encoded features), expiring
  after `ttl_s`;
- `l:<id>`: "this id was labelled" for `ttl_s`, so a repeated label is a duplicate;
- `win`: the rolling window, one 8-byte (label, probability) element per labelled prediction,
  trimmed to the last `window`; `seen`: every label observed (never reset);
- `recent`: the recent labelled rows (features + label), trimmed to the last `recent_rows`;
- `lease`: the retrain lease (holder name, expiring).

Every operation is one round trip (a Lua script or a MULTI pipeline) on the serving client, so
it is bounded by the online store's short timeout; failures are `StoreUnavailableError`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from strata.ctr.preprocess import CtrBatch
from strata.ctr.state import Joined, Window

if TYPE_CHECKING:
    from collections.abc import Iterator

    from strata.features.online.valkey import ValkeyOnlineStore

#: Feedback ids per script call: a long batch must not block the store for other clients.
_CHUNK = 5_000

# KEYS: next counter, record prefix; ARGV: n, ttl_s, then n packed records. Returns the last id.
_RECORD = """
local last = redis.call('INCRBY', KEYS[1], tonumber(ARGV[1]))
local first = last - tonumber(ARGV[1]) + 1
for i = 1, tonumber(ARGV[1]) do
  redis.call('SET', KEYS[2] .. (first + i - 1), ARGV[i + 2], 'EX', tonumber(ARGV[2]))
end
return last
"""
# KEYS: record prefix, labelled prefix, window, seen, recent; ARGV: ttl_s, window, recent_rows,
# then (id, label) pairs. Per id: 2 (joined: its first label), 1 (labelled before) or 0
# (unknown); then the window, the count of labels seen and of recent rows. A record is the
# 4-byte served probability + encoded features; the window gets label + probability, the recent
# rows label + features (the same layout as a record, the label in front).
_LABEL = """
local out, n = {}, 0
for i = 4, #ARGV, 2 do
  local v = redis.call('GETDEL', KEYS[1] .. ARGV[i])
  if v then
    redis.call('SET', KEYS[2] .. ARGV[i], 1, 'EX', tonumber(ARGV[1]))
    local y = struct.pack('<f', tonumber(ARGV[i + 1]))
    redis.call('RPUSH', KEYS[3], y .. string.sub(v, 1, 4))
    redis.call('RPUSH', KEYS[5], y .. string.sub(v, 5))
    n = n + 1
    out[#out + 1] = 2
  else
    out[#out + 1] = redis.call('EXISTS', KEYS[2] .. ARGV[i])
  end
end
if n > 0 then
  redis.call('LTRIM', KEYS[3], -tonumber(ARGV[2]), -1)
  redis.call('LTRIM', KEYS[5], -tonumber(ARGV[3]), -1)
  redis.call('INCRBY', KEYS[4], n)
end
return {out, redis.call('LRANGE', KEYS[3], 0, -1), redis.call('GET', KEYS[4]),
        redis.call('LLEN', KEYS[5])}
"""
# KEYS: lease; ARGV: holder, ttl_ms. Extends the lease only if `holder` holds it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 0
"""
# KEYS: lease; ARGV: holder, hold_ms (0: delete). Only the holder releases.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if tonumber(ARGV[2]) > 0 then return redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2])) end
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class ValkeyCtrState:
    """`CtrState` + `Lease` over the online store's serving client."""

    def __init__(
        self,
        store: ValkeyOnlineStore,
        name: str,
        n_dense: int,
        n_cat: int,
        window: int,
        recent_rows: int,
        ttl_s: int,
    ) -> None:
        self.store = store
        self.key = f"{store.prefix}:ctr:{name}:"
        self.n_dense, self.n_cat = n_dense, n_cat
        self.window_size, self.recent_rows, self.ttl_s = window, recent_rows, ttl_s
        client = store.client
        self._record = client.register_script(_RECORD)
        self._label = client.register_script(_LABEL)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._row_bytes = 4 + 4 * n_dense + 8 * n_cat  # prob|label, dense, cats

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """The store's guard: network failures and error replies (NOSCRIPT after a flush, OOM)
        become StoreUnavailableError."""
        with self.store.guard():
            yield

    def _pack(self, first: np.ndarray, batch: CtrBatch) -> list[bytes]:
        head = np.asarray(first, dtype="<f4").reshape(-1, 1).view(np.uint8)
        dense = np.ascontiguousarray(batch.dense, dtype="<f4").view(np.uint8)
        cats = np.ascontiguousarray(batch.cats, dtype="<i8").view(np.uint8)
        rows = np.concatenate([head, dense, cats], axis=1)
        return [r.tobytes() for r in rows]

    def _unpack(self, blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raw = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(blobs), self._row_bytes)
        first = raw[:, :4].copy().view("<f4").reshape(-1).astype(np.float32)
        dense = raw[:, 4 : 4 + 4 * self.n_dense].copy().view("<f4").astype(np.float32)
        cats = raw[:, 4 + 4 * self.n_dense :].copy().view("<i8").astype(np.int64)
        return first, dense.reshape(len(blobs), -1), cats.reshape(len(blobs), -1)

    # --- CtrState ---------------------------------------------------------------------------

    def record(self, probs: np.ndarray, batch: CtrBatch) -> np.ndarray:
        n = len(batch)
        if n == 0:
            return np.empty(0, dtype=np.int64)
        with self._guard():
            last = int(self._record(keys=[self.key + "next", self.key + "p:"],
                                    args=[n, self.ttl_s, *self._pack(probs, batch)]))  # fmt: skip
        return np.arange(last - n + 1, last + 1, dtype=np.int64)

    def label(self, ids: np.ndarray, labels: np.ndarray) -> tuple[Joined, Window]:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        y = np.asarray(labels).reshape(-1)
        codes: list[int] = []
        keys = [self.key + k for k in ("p:", "l:", "win", "seen", "recent")]
        res: list[Any] = [[], [], 0, 0]
        for start in range(0, max(ids.size, 1), _CHUNK):  # bounded work per script call
            part = slice(start, start + _CHUNK)
            pairs = [v for i, lab in zip(ids[part].tolist(), y[part].tolist(), strict=True)
                     for v in (i, int(lab))]  # fmt: skip
            with self._guard():
                res = self._label(keys=keys, args=[self.ttl_s, self.window_size,
                                                   self.recent_rows, *pairs])  # fmt: skip
            codes += [int(c) for c in res[0]]
        code = np.asarray(codes, dtype=np.int64).reshape(-1)
        return Joined(code == 2, code == 1), _window(res[1], res[2], res[3])

    def window(self) -> Window:
        with self._guard():
            pipe = self.store.client.pipeline(transaction=True)
            pipe.lrange(self.key + "win", 0, -1)
            pipe.get(self.key + "seen")
            pipe.llen(self.key + "recent")
            elems, seen, recent = pipe.execute()
        return _window(elems, seen, recent)

    def recent(self) -> CtrBatch:
        with self._guard():
            blobs = self.store.bulk.lrange(self.key + "recent", 0, -1)
        if not blobs:
            empty = np.zeros((0, self.n_dense), np.float32), np.zeros((0, self.n_cat), np.int64)
            return CtrBatch(*empty, np.zeros(0, np.float32))
        y, dense, cats = self._unpack(blobs)
        return CtrBatch(dense, cats, y)

    def reset(self, forget_recent: bool) -> None:
        keys = [self.key + "win", *([self.key + "recent"] if forget_recent else [])]
        with self._guard():
            self.store.client.delete(*keys)

    # --- Lease ------------------------------------------------------------------------------

    def acquire(self, holder: str, ttl_s: float) -> bool:
        with self._guard():
            return bool(self.store.client.set(self.key + "lease", holder, nx=True,
                                              px=max(1, int(ttl_s * 1000))))  # fmt: skip

    def renew(self, holder: str, ttl_s: float) -> bool:
        with self._guard():
            return bool(self._renew(keys=[self.key + "lease"],
                                    args=[holder, max(1, int(ttl_s * 1000))]))  # fmt: skip

    def release(self, holder: str, hold_s: float = 0.0) -> None:
        with self._guard():
            self._release(keys=[self.key + "lease"], args=[holder, int(hold_s * 1000)])


def _window(elems: list[bytes], seen: Any, recent: Any) -> Window:
    pairs = np.frombuffer(b"".join(elems), dtype="<f4").reshape(-1, 2).astype(np.float32)
    return Window(pairs[:, 0].copy(), pairs[:, 1].copy(), int(seen or 0), int(recent or 0))
