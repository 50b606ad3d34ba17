"""Configuration: one small pydantic model per component, composed into `Settings` at the root.

Every value can come from the environment with the `STRATA_` prefix and `__` between levels,
e.g. `STRATA_HOME=/data/strata` or `STRATA_ONLINE__URL=redis://10.0.0.5:6379/0`.
Backends are chosen by a `type` literal (memory | valkey, ...) and unknown keys are rejected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from strata.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def default_home() -> Path:
    """`$STRATA_HOME`, else `~/.cache/strata`: datasets, offline store, registry and logs live here."""
    return Path("~/.cache/strata").expanduser()


# --- storage -------------------------------------------------------------------------------


class OfflineStoreConfig(_Strict):
    """Parquet + DuckDB offline store. `uri` may be a local folder or `s3://bucket/prefix`."""

    uri: str | None = None  # default: <home>/offline
    duckdb_memory_limit: str = "4GB"
    duckdb_threads: int = Field(default=2, ge=1)
    s3_region: str | None = None
    s3_endpoint: str | None = None


class MemoryOnlineConfig(_Strict):
    """The embedded in-process online store (the default)."""

    type: Literal["memory"] = "memory"


class ValkeyOnlineConfig(_Strict):
    """Valkey/Redis online store; `url` is `redis://host:port/db` (`valkey://` is accepted)."""

    type: Literal["valkey"] = "valkey"
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "strata"
    timeout_ms: int = Field(default=50, ge=1)
    ttl_s: int | None = Field(default=None, ge=1)


OnlineStoreConfig = Annotated[MemoryOnlineConfig | ValkeyOnlineConfig, Field(discriminator="type")]


def online_config_from_url(url: str) -> MemoryOnlineConfig | ValkeyOnlineConfig:
    """Parse the CLI's `--online memory|valkey://host:port/db|redis://...` into a config."""
    if url == "memory":
        return MemoryOnlineConfig()
    for scheme in ("valkey://", "redis://", "rediss://", "valkeys://"):
        if url.startswith(scheme):
            secure = scheme in ("rediss://", "valkeys://")
            rest = url[len(scheme) :]
            return ValkeyOnlineConfig(url=("rediss://" if secure else "redis://") + rest)
    raise ConfigError(f"--online: expected 'memory' or 'valkey://host:port/db', got {url!r}")


class BloomConfig(_Strict):
    """Per-user Bloom filter of recently interacted items."""

    capacity: int = Field(default=1000, ge=1)
    fp_rate: float = Field(default=0.01, gt=0.0, lt=1.0)
    window_s: int = Field(default=7 * 86400, ge=1)


# --- root ----------------------------------------------------------------------------------


class Settings(BaseSettings):
    """Root configuration composed of the component configs above."""

    model_config = SettingsConfigDict(
        env_prefix="STRATA_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    home: Path = Field(default_factory=default_home)
    offline: OfflineStoreConfig = OfflineStoreConfig()
    online: OnlineStoreConfig = MemoryOnlineConfig()
    bloom: BloomConfig = BloomConfig()
    seed: int = 42

    @property
    def datasets_dir(self) -> Path:
        """Cache of acquired raw datasets: `<home>/datasets/<name>/`."""
        return self.home / "datasets"

    @property
    def offline_uri(self) -> str:
        """Root of the offline store (local folder or s3:// URI)."""
        return self.offline.uri or str(self.home / "offline")

    @property
    def registry_dir(self) -> Path:
        """Model registry: `<home>/registry/<dataset>/<version>/` plus a `serving` pointer."""
        return self.home / "registry"

    @property
    def events_dir(self) -> Path:
        """Append-only local event logs of the embedded mode."""
        return self.home / "events"
