"""Configuration: environment overrides, strict keys, --online URL parsing."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from strata.config import (
    MemoryOnlineConfig,
    Settings,
    ValkeyOnlineConfig,
    online_config_from_url,
)
from strata.errors import ConfigError


def test_env_selects_valkey_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATA_ONLINE__TYPE", "valkey")
    monkeypatch.setenv("STRATA_ONLINE__URL", "redis://10.1.2.3:6380/1")
    s = Settings()
    assert isinstance(s.online, ValkeyOnlineConfig)
    assert s.online.url == "redis://10.1.2.3:6380/1"


def test_home_drives_derived_paths(strata_home) -> None:
    s = Settings()
    assert s.home == strata_home
    assert s.offline_uri == str(strata_home / "offline")
    assert s.registry_dir == strata_home / "registry"


def test_unknown_keys_are_rejected() -> None:
    with pytest.raises(ValidationError):
        Settings(bloom={"capacity": 10, "typo": 1})


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("memory", MemoryOnlineConfig()),
        ("valkey://h:7000/2", ValkeyOnlineConfig(url="redis://h:7000/2")),
        ("redis://h:7000/0", ValkeyOnlineConfig(url="redis://h:7000/0")),
    ],
)
def test_online_url(url: str, expected: object) -> None:
    assert online_config_from_url(url) == expected


def test_online_url_rejects_garbage() -> None:
    with pytest.raises(ConfigError, match="--online"):
        online_config_from_url("mongodb://x")
