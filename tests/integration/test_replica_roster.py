"""The replicas' roster in a real Valkey: each member's last status, the silent ones dropped
(and deleted), foreign or torn entries ignored, an unreachable store a clean error."""

from __future__ import annotations

import time

import pytest

from strata.config import ValkeyOnlineConfig
from strata.errors import StoreUnavailableError
from strata.features.online.signals import ValkeySignals

pytestmark = pytest.mark.integration


def test_members_listed_by_name_and_the_silent_ones_dropped(
    valkey_config: ValkeyOnlineConfig,
) -> None:
    signals = ValkeySignals(valkey_config)
    signals.beat("tiny", "r1", {"model_version": "v0001"})
    signals.beat("tiny", "r0", {"model_version": "v0002"})
    signals.beat("other", "r9", {"model_version": "v0007"})  # another dataset's roster
    listed = signals.roster("tiny", max_age_s=5.0)
    got = [(m["replica"], m["model_version"]) for m in listed]
    assert got == [("r0", "v0002"), ("r1", "v0001")]
    assert all(abs(m["ts"] - time.time()) < 5 for m in listed)

    signals.beat("tiny", "r1", {"model_version": "v0002"})  # a newer beat replaces the last
    key = f"{valkey_config.key_prefix}:replicas:tiny"
    signals._client.hset(key, "junk", b"not json")  # torn or not ours: ignored and removed
    time.sleep(0.3)
    signals.beat("tiny", "r0", {"model_version": "v0002"})
    assert [m["replica"] for m in signals.roster("tiny", max_age_s=0.2)] == ["r0"]
    assert set(signals._client.hkeys(key)) == {b"r0"}  # the silent r1 and the junk deleted
    assert [m["replica"] for m in signals.roster("other", max_age_s=5.0)] == ["r9"]
    signals.close()


def test_an_unreachable_store_is_a_clean_error() -> None:
    gone = ValkeySignals(ValkeyOnlineConfig(url="redis://127.0.0.1:1/0", timeout_ms=200))
    with pytest.raises(StoreUnavailableError, match="roster tiny"):
        gone.beat("tiny", "r0", {})
    with pytest.raises(StoreUnavailableError, match="roster tiny"):
        gone.roster("tiny", 5.0)
