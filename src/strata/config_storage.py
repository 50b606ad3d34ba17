"""Storage-layer configuration: the offline store (and the engine its feature SQL runs on), the
online store, the Bloom filter and event ingestion. Re-exported by `strata.config`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from strata.errors import ConfigError


class Strict(BaseModel):
    """Base of every config model: unknown keys rejected, frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- storage -------------------------------------------------------------------------------


class OfflineStoreConfig(Strict):
    """Parquet + DuckDB offline store. `uri` may be a local folder or `s3://bucket/prefix`."""

    uri: str | None = None  # default: <home>/offline
    duckdb_memory_limit: str = "4GB"
    duckdb_threads: int = Field(default=2, ge=1)
    s3_region: str | None = None
    s3_endpoint: str | None = None
    # `strata features build --engine`: where the feature SQL runs (the same portable SQL on
    # each). spark: PySpark on `spark_master` (local[N], spark://, k8s://, yarn) over the same
    # Parquet files; athena: boto3 queries in `athena_database`, results under `athena_output`.
    engine: Literal["duckdb", "spark", "athena"] = "duckdb"
    spark_master: str = "local[2]"
    spark_driver_memory: str = "2g"
    spark_shuffle_partitions: int = Field(default=8, ge=1)
    athena_database: str = "strata"
    athena_workgroup: str = "primary"
    athena_output: str | None = None  # s3:// query-results prefix (default <uri>/athena-results)
    athena_region: str | None = None  # default: s3_region, else the AWS environment
    athena_poll_s: float = Field(default=1.0, gt=0.0)
    athena_timeout_s: float = Field(default=3600.0, gt=0.0)


class MemoryOnlineConfig(Strict):
    """The embedded in-process online store (the default)."""

    type: Literal["memory"] = "memory"


class ValkeyOnlineConfig(Strict):
    """Valkey/Redis online store; `url` is `redis://host:port/db` (`valkey://` is accepted)."""

    type: Literal["valkey"] = "valkey"
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "strata"
    # Every call on the serving path (reads, Bloom, events) is bounded by timeout_ms; only bulk
    # jobs (materialize, file ingest) use the patient bulk_timeout_ms.
    timeout_ms: int = Field(default=50, ge=1)
    bulk_timeout_ms: int = Field(default=10_000, ge=1)
    ttl_s: int | None = Field(default=None, ge=1)
    # Standalone servers read many rows with one multi-key MGET; a cluster needs a pipeline of
    # per-key GETs instead (MGET cannot span slots; one entity's keys share a slot).
    cluster: bool = False
    # AUTH password (a Kubernetes Secret, an ElastiCache auth token), kept out of the URL so it
    # needs no URL encoding and never shows in a logged URL; rediss:// URLs turn TLS on.
    password: SecretStr | None = None
    # rediss:// only: the PEM bundle of the CA(s) the server's certificate must chain to (a
    # private CA, a self-signed server); None trusts the system's CAs (ElastiCache's are public).
    # The server is always verified, hostname included: there is no switch to turn that off,
    # since an unverified TLS link would hand the password to whoever answers.
    tls_ca_file: Path | None = None

    @model_validator(mode="after")
    def _tls_needs_rediss(self) -> ValkeyOnlineConfig:
        if self.tls_ca_file is not None and not self.url.startswith("rediss://"):
            raise ValueError("tls_ca_file is set but url is not rediss:// (TLS would be off)")
        return self


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


class BloomConfig(Strict):
    """Per-user Bloom filter of recently interacted items."""

    capacity: int = Field(default=1000, ge=1)
    fp_rate: float = Field(default=0.01, gt=0.0, lt=1.0)
    window_s: int = Field(default=7 * 86400, ge=1)
    # Rotating generations: an item stays "recent" for between window_s and
    # window_s * generations / (generations - 1) (see strata.features.bloom).
    generations: int = Field(default=2, ge=2, le=16)


class EventsConfig(Strict):
    """Event ingestion: live activity window, recent-items cap, batch size, Valkey stream names."""

    window_s: int = Field(default=7 * 86400, ge=1)
    recent_cap: int = Field(default=100, ge=1)
    batch_size: int = Field(default=1000, ge=1)
    stream: str = "events"
    group: str = "strata-ingest"
    # This replica's name when several serve one dataset (Kubernetes: the pod name): its event
    # log, outbox and stream consumer are then its own (`events.<replica>.jsonl`); None = alone.
    replica: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    # Stream entries pending this long on a consumer (a replica that died holding them) are
    # taken over and logged by the next replica that consumes.
    claim_idle_s: float = Field(default=30.0, gt=0.0)
