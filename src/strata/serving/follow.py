"""Replicas follow the registry: every one serves the version its `serving` pointer names.

The registry (on the storage all replicas share) is the source of truth; no replica keeps state
another needs. A promotion reaches every replica in two ways: whoever moves the pointer and
reloads (POST /admin/reload on any replica, a CTR retrain) publishes a signal through the online
store (`strata.features.online.signals`), which wakes each follower at once; and each follower
reads the pointer every `poll_s` anyway, so a missed signal (store down, a pipeline that only
wrote the pointer) costs at most one poll period. `follow` is the loop; what "check and reload"
means is the caller's (the recommender's pipeline, the CTR model).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from strata.features.online.signals import ValkeySignals

log = logging.getLogger(__name__)

#: Seconds before a follower tries again to load a version that failed to load (damaged): not
#: every poll, since each try reads and hashes the whole version; a new promotion goes at once.
RETRY_FAILED_S = 30.0


def serving_signal(registry_name: str) -> str:
    """The signal name of a registry's serving pointer (`serving:<dataset>`)."""
    return f"serving:{registry_name}"


async def follow(
    check: Callable[[], Awaitable[None]],
    signals: ValkeySignals | None,
    name: str,
    poll_s: float,
) -> None:
    """Run `check()` after every signal `name` and at least every `poll_s` seconds, until
    cancelled. An exception in `check` is logged and the loop goes on (a broken version must not
    stop a replica from following the next one)."""
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    stop = threading.Event()

    def woken(_name: str, _message: str) -> None:
        with suppress(RuntimeError):  # the loop has closed: the app is stopping
            loop.call_soon_threadsafe(wake.set)

    if signals is not None:
        signals.listen([name], woken, stop)
    try:
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), poll_s)
            wake.clear()
            try:
                await check()
            except Exception:
                log.exception("following %s failed; trying again on the next signal or poll", name)
    finally:
        stop.set()


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel background tasks, newest first, and wait until each has ended."""
    for task in reversed(tasks):
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


def announce(signals: ValkeySignals | None, name: str, version: str) -> None:
    """Tell the other replicas that `name` now serves `version` (best effort: they poll too)."""
    from strata.errors import StoreUnavailableError

    if signals is None:
        return
    try:
        signals.publish(name, version)
    except StoreUnavailableError as exc:
        log.info("could not signal %s -> %s (%s); the other replicas will poll", name, version, exc)
