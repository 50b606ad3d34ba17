"""Signals between replicas through the online store: Valkey pub/sub.

A replica that changes what the cluster serves (POST /admin/reload after a promotion, a CTR
retrain promoting a version) publishes on a named channel, and every replica subscribed to it is
woken at once. Pub/sub is fire and forget: a replica disconnected at that moment misses the
message. So a signal only makes a follower fast; each follower also polls the source of truth
(the registry's `serving` pointer) slowly and converges without it. The embedded store has no
peers: `open_signals` gives None there, and followers poll only.

The same store keeps the roster of live replicas (`beat`, `roster`): each one writes its status
(versions served, degraded or not) every few seconds, so any replica can show operators what all
of them serve. A member that stops beating drops out; nothing in the roster is needed to serve.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from strata.errors import StoreUnavailableError

if TYPE_CHECKING:
    from strata.config import ValkeyOnlineConfig
    from strata.features.online import OnlineStore

log = logging.getLogger(__name__)

#: Seconds one listen wait lasts, so a stop request is seen within it.
_WAIT_S = 0.5
_BACKOFF_MAX_S = 2.0


class ValkeySignals:
    """Publish to and listen on `<key_prefix>:signal:<name>` channels of one Valkey."""

    def __init__(self, config: ValkeyOnlineConfig) -> None:
        import redis

        from strata.features.online.valkey import client_options, explain

        self.config = config
        self._explain = explain  # an AUTH refusal names the password setting
        self._errors = (redis.exceptions.RedisError, OSError)
        timeout = max(config.timeout_ms / 1000.0, 1.0)
        # The same password and verified TLS as the store's clients (`client_options`).
        self._client: Any = redis.Redis.from_url(
            config.url,
            **client_options(config),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )

    def channel(self, name: str) -> str:
        return f"{self.config.key_prefix}:signal:{name}"

    def publish(self, name: str, message: str) -> int:
        """Send `message` to every listener of `name`; returns how many received it.
        StoreUnavailableError when the store cannot be reached."""
        try:
            return int(self._client.publish(self.channel(name), message))
        except self._errors as exc:
            raise StoreUnavailableError(f"signal {name}: {self._explain(exc)}") from exc

    def listen(
        self, names: list[str], on_message: Callable[[str, str], None], stop: threading.Event
    ) -> threading.Thread:
        """Call `on_message(name, message)` for every message on `names` until `stop` is set,
        on a daemon thread that reconnects (backoff up to 2 s) whenever the store goes away."""
        by_channel = {self.channel(n): n for n in names}

        def run() -> None:
            backoff = 0.1
            while not stop.is_set():
                sub = self._client.pubsub(ignore_subscribe_messages=True)
                try:
                    sub.subscribe(*by_channel)
                    backoff = 0.1
                    while not stop.is_set():
                        msg = sub.get_message(timeout=_WAIT_S)
                        if msg and msg.get("type") == "message":
                            chan = _text(msg["channel"])
                            on_message(by_channel.get(chan, chan), _text(msg["data"]))
                except Exception as exc:
                    # A lost connection surfaces as RedisError/OSError, or as a TypeError from
                    # the client's parser once its socket is gone; all mean "reconnect".
                    if not stop.is_set():
                        log.debug("signal listener: %r; reconnecting in %.1f s", exc, backoff)
                        stop.wait(backoff)
                        backoff = min(backoff * 2, _BACKOFF_MAX_S)
                finally:
                    with suppress(Exception):
                        sub.close()

        thread = threading.Thread(target=run, name="strata-signals", daemon=True)
        thread.start()
        return thread

    def beat(self, group: str, member: str, status: dict[str, Any]) -> None:
        """Record `member`'s status (a JSON object, stamped with the time) in the roster of
        `group` (`<key_prefix>:replicas:<group>`, one hash field per member).
        StoreUnavailableError when the store cannot be reached."""
        body = json.dumps({**status, "ts": time.time()}, separators=(",", ":"))
        try:
            self._client.hset(self._roster_key(group), member, body)
        except self._errors as exc:
            raise StoreUnavailableError(f"roster {group}: {self._explain(exc)}") from exc

    def roster(self, group: str, max_age_s: float) -> list[dict[str, Any]]:
        """The statuses in `group` beaten within `max_age_s` seconds, by member name; members
        silent for longer (a replica that is gone) are removed on the way.
        StoreUnavailableError when the store cannot be reached."""
        key, now = self._roster_key(group), time.time()
        try:
            raw = self._client.hgetall(key)
            out, gone = [], []
            for member, body in sorted(raw.items()):
                try:
                    status = json.loads(body)
                    fresh = now - float(status["ts"]) <= max_age_s
                except (ValueError, KeyError, TypeError):
                    fresh = False  # not ours or torn: dropped like a silent member
                if fresh:
                    out.append({**status, "replica": _text(member)})
                else:
                    gone.append(member)
            if gone:
                self._client.hdel(key, *gone)
        except self._errors as exc:
            raise StoreUnavailableError(f"roster {group}: {self._explain(exc)}") from exc
        return out

    def _roster_key(self, group: str) -> str:
        return f"{self.config.key_prefix}:replicas:{group}"

    def close(self) -> None:
        self._client.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def open_signals(store: OnlineStore) -> ValkeySignals | None:
    """Signals over `store` when it is a Valkey (peers can exist), else None (embedded)."""
    from strata.config import ValkeyOnlineConfig

    config = getattr(store, "config", None)
    return ValkeySignals(config) if isinstance(config, ValkeyOnlineConfig) else None
