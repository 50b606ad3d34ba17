"""Configuration: one small pydantic model per component, composed into `Settings` at the root.

Every value can come from the environment with the `STRATA_` prefix and `__` between levels,
e.g. `STRATA_HOME=/data/strata` or `STRATA_ONLINE__URL=redis://10.0.0.5:6379/0`.
Backends are chosen by a `type` literal (memory | valkey, ...) and unknown keys are rejected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from strata.config_storage import (
    BloomConfig,
    EventsConfig,
    MemoryOnlineConfig,
    OfflineStoreConfig,
    OnlineStoreConfig,
    Strict,
    ValkeyOnlineConfig,
    online_config_from_url,
)
from strata.errors import ConfigError

_Strict = Strict


def default_home() -> Path:
    """`$STRATA_HOME`, else `~/.cache/strata`: datasets, offline store, registry and logs."""
    return Path("~/.cache/strata").expanduser()


# --- ctr -----------------------------------------------------------------------------------


class CtrPreprocessConfig(_Strict):
    """Criteo preprocessing: log+clip+normalise ints; vocab + OOV (or hashing) for categoricals."""

    min_count: int = Field(default=10, ge=1)  # rarer categories share the OOV bucket
    max_vocab: int = Field(default=100_000, ge=1)  # per column, most frequent kept
    hash_threshold: int = Field(default=1_000_000, ge=1)  # distinct values above this -> hashing
    hash_buckets: int = Field(default=1_000_003, ge=2)
    clip_quantile: float = Field(default=0.999, gt=0.5, le=1.0)


class CtrModelConfig(_Strict):
    """DCN (cross v1) or DCN-v2 ranker; defaults are the classic DCN configuration."""

    type: Literal["dcn", "dcnv2"] = "dcn"
    emb_dim: int = Field(default=16, ge=1)
    cross_layers: int = Field(default=6, ge=0)
    deep: tuple[int, ...] = (1024, 1024)
    dropout: float = Field(default=0.5, ge=0.0, lt=1.0)
    low_rank: int | None = Field(default=None, ge=1)  # DCN-v2 only: low-rank cross matrices
    structure: Literal["parallel", "stacked"] = "parallel"
    # Wide (first-order) part summed into the logit, Wide&Deep style: one weight per categorical
    # id, per bucket of each dense input and per dense input. Off = the networks alone.
    wide: bool = True
    wide_int_buckets: int = Field(default=16, ge=0)  # equal-width buckets of each scaled input
    wide_cross_buckets: int = Field(default=0, ge=0)  # hashed pairwise id crosses; 0 = none


class CtrTrainConfig(_Strict):
    """Streaming training: Adam + BCE, early stopping on a held-out validation split."""

    batch_size: int = Field(default=512, ge=1)
    epochs: int = Field(default=10, ge=1)
    lr: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    emb_l2: float = Field(default=1e-5, ge=0.0)  # L2 on the embedding rows used in a batch
    patience: int = Field(default=2, ge=0)
    valid_fraction: float = Field(default=0.1, gt=0.0, lt=0.5)
    test_fraction: float = Field(default=0.1, gt=0.0, lt=0.5)
    read_rows: int = Field(default=65_536, ge=1)  # Parquet rows read at a time (bounded memory)
    shuffle_buffer: int = Field(default=262_144, ge=1)
    replay_rows: int = Field(default=20_000, ge=0)  # training sample kept for incremental replay
    max_threads: int = Field(default=2, ge=1)
    device: str = Field(default="cpu", pattern=r"^(cpu|cuda|auto)(:\d+)?$")  # as training.device
    # `strata ctr train` fits a hashed LR on the same rows; the version is promoted only if its
    # validation AUC > the LR's + this (0.0: strictly better; negative: a tolerated deficit).
    baseline_min_gain: float = Field(default=0.0, ge=-1.0, le=1.0)


class DriftConfig(_Strict):
    """Rolling-AUC drift monitor: absolute threshold, relative drop, cooldown."""

    window: int = Field(default=500, ge=2)
    auc_threshold: float | None = Field(default=0.70, ge=0.0, le=1.0)
    relative_drop: float | None = Field(default=0.05, gt=0.0, lt=1.0)
    cooldown_s: float = Field(default=60.0, ge=0.0)
    cooldown_labels: int = Field(default=500, ge=0)
    psi_alert: float = Field(default=0.2, gt=0.0)


class IncrementalConfig(_Strict):
    """Warm-start fine-tuning on recent labelled traffic plus a replay sample, then a gate."""

    recent_rows: int = Field(default=5_000, ge=1)
    replay_ratio: float = Field(default=0.5, ge=0.0)  # replay rows per recent row
    holdout_fraction: float = Field(default=0.2, gt=0.0, lt=0.9)
    epochs: int = Field(default=2, ge=1)
    lr: float = Field(default=5e-4, gt=0.0)
    min_gain: float = Field(default=0.0)  # new AUC must be >= old AUC + min_gain on the holdout


class CtrServeConfig(_Strict):
    """`/ctr/*` HTTP serving: bind address, request size limit, retrain and shutdown behaviour."""

    host: str = "127.0.0.1"
    port: int = Field(default=8001, ge=1, le=65535)
    max_batch_rows: int = Field(default=4096, ge=1)  # rows per /ctr/predict request
    max_feedback_ids: int = Field(default=100_000, ge=1)  # ids per /ctr/feedback request
    max_body_bytes: int = Field(default=8 * 2**20, ge=1024)  # larger request bodies: 413
    onnx_threads: int = Field(default=1, ge=1)  # intra-op threads of the served ONNX session
    # Retraining on a background thread keeps requests flowing while the new version trains.
    retrain_background: bool = True
    shutdown_wait_s: float = Field(default=30.0, ge=0.0)  # wait for a running retrain on exit
    # PSI over top-k/quantile bins is biased upward on small samples: report it from 1000 rows.
    min_drift_rows: int = Field(default=1000, ge=1)  # recent labelled rows for feature PSI
    # Cluster mode (a Valkey online store): how long a prediction waits there for its label, and
    # the retrain lease (renewed while a retrain runs; expires this long after its holder died).
    feedback_ttl_s: int = Field(default=86_400, ge=1)
    lease_s: float = Field(default=30.0, gt=0.0)
    # `strata ctr serve` without a trained version: wait for the first one (503 until then)
    # instead of exiting (a fresh cluster).
    wait_for_model: bool = False


class CtrConfig(_Strict):
    """The ranking-only CTR system."""

    preprocess: CtrPreprocessConfig = CtrPreprocessConfig()
    model: CtrModelConfig = CtrModelConfig()
    train: CtrTrainConfig = CtrTrainConfig()
    drift: DriftConfig = DriftConfig()
    incremental: IncrementalConfig = IncrementalConfig()
    buffer_size: int = Field(default=100_000, ge=1)  # prediction-id ring buffer for feedback
    registry_name: str = "ctr"
    serve: CtrServeConfig = CtrServeConfig()


# --- training (recommender) -----------------------------------------------------------------


class TrainingConfig(_Strict):
    """Two-tower + ranker training: optimiser, cold-start masking, negatives, fine-tune, device."""

    # cpu | cuda | auto (CUDA when present); mixed precision (bf16 autocast) on CUDA
    device: str = Field(default="cpu", pattern=r"^(cpu|cuda|auto)(:\d+)?$")
    # a checkpoint every this many optimiser steps (0: none) in checkpoint_dir (default:
    # <home>/checkpoints/<dataset>); a rerun of the same training resumes from the last one
    checkpoint_every: int = Field(default=500, ge=0)
    checkpoint_dir: Path | None = None
    # True: in a multi-rank run each rank reads only its shard of the training set (the users
    # whose hash falls on it; strata.training.shards) instead of every row; per-rank batches
    # are then the rank's own rows. False: every rank reads all rows and takes its slice of each
    # global batch (N ranks x batch B train exactly like one rank with batch N*B).
    shard_input: bool = False
    num_threads: int = Field(default=2, ge=1)
    epochs: int = Field(default=5, ge=1)
    batch_size: int = Field(default=1024, ge=2)  # in-batch negatives; 2x fewer steps than 512
    lr: float = Field(default=2e-3, gt=0.0)
    weight_decay: float = Field(default=1e-6, ge=0.0)
    p_user: float = Field(default=0.15, ge=0.0, le=1.0)  # user id + behaviour -> unknown
    p_item: float = Field(default=0.3, ge=0.0, le=1.0)  # item id (+ popularity) -> unknown
    random_negatives: int = Field(default=256, ge=0)  # extra uniform negatives per batch
    # popularity snapshots the random negatives are featurised at (point in time, per query)
    popularity_snapshots: int = Field(default=24, ge=1)
    logq_weight: float = Field(default=1.0, ge=0.0, le=1.0)  # 1 = full logQ correction
    # logQ weight of rows whose user is masked; > 1 keeps more of the popularity prior that new
    # users follow. 1.0 (full correction) chosen on a validation split inside the ML-100K
    # training period once negatives were point in time (1.5 before); None = logq_weight
    logq_weight_cold: float | None = Field(default=1.0, ge=0.0, le=2.0)
    # True: a masked item id also hides the item's popularity (a new item as of the cut-off).
    # False (chosen on the validation split: all three slices up): masked rows keep it, as a
    # served new item does once events arrive (serving reads live popularity)
    mask_item_popularity: bool = False
    ranker_epochs: int = Field(default=2, ge=1)
    # served ranker logit + retrieval logit (late fusion, DCNConfig.score_weight)
    ranker_fusion: bool = True
    # weight of log(1 + the item's events in the popularity window) added to the served ranker
    # logit (DCNConfig.prior_weight; 0 = off). 8 chosen on the validation split: cold users peak
    # there, larger weights only converge on the 30-day popularity list (docs/quality.md)
    ranker_popularity_prior: float = Field(default=8.0, ge=0.0)
    ranker_batch_size: int = Field(default=1024, ge=2)
    ranker_lr: float = Field(default=2e-3, gt=0.0)
    ranker_hard_negatives: int = Field(default=2, ge=0)  # per positive, from retrieval top-N
    ranker_random_negatives: int = Field(default=2, ge=0)  # per positive, uniform
    ranker_max_positives: int = Field(default=20_000, ge=1)  # subsample for 2-core CPUs
    # retrieval depth the ranker's hard negatives are drawn from (evaluation and gates rank
    # serve.candidates from the version's index, as serving does)
    candidates: int = Field(default=200, ge=1)
    finetune_epochs: int = Field(default=2, ge=1)
    finetune_lr: float = Field(default=5e-4, gt=0.0)
    replay_ratio: float = Field(default=1.0, ge=0.0)  # replayed old events per new event
    gate_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)  # newest events held out for the gate
    gate_tolerance: float = Field(default=0.0, ge=0.0)  # allowed metric drop


# --- index (ANN) ---------------------------------------------------------------------------


class IndexConfig(_Strict):
    """ANN index build: kind (auto picks by catalogue size) and the recall target it is tuned to."""

    kind: Literal["auto", "flat", "ivf", "hnsw"] = "auto"
    target_recall: float = Field(default=0.95, gt=0.0, le=1.0)  # recall@recall_k vs exact
    recall_k: int = Field(default=100, ge=1)
    tune_queries: int = Field(default=200, ge=10)  # sampled queries for tuning nprobe/efSearch


# --- inference backends ---------------------------------------------------------------------


class OnnxRuntimeConfig(_Strict):
    """Query tower and ranker in process with ONNX Runtime (the default)."""

    type: Literal["onnxruntime"] = "onnxruntime"
    # One thread per session by default: on 2 cores the HTTP server, the ANN search and the
    # models share the CPU, and a request's model calls are small (N<=~300 rows).
    intra_op_threads: int = Field(default=1, ge=1)
    inter_op_threads: int = Field(default=1, ge=1)


class TritonBackendConfig(_Strict):
    """Query tower and ranker on an NVIDIA Triton server over HTTP (`http://host:8000`)."""

    type: Literal["triton"] = "triton"
    url: str = "http://127.0.0.1:8000"
    timeout_s: float = Field(default=2.0, gt=0.0)
    model_version: str = ""  # Triton model version to request; "" = the server's latest


InferenceConfig = Annotated[OnnxRuntimeConfig | TritonBackendConfig, Field(discriminator="type")]


class TritonExportConfig(_Strict):
    """`strata export triton`: dynamic batching and CPU instance groups written to config.pbtxt."""

    max_batch_size: int = Field(default=1024, ge=1)
    preferred_batch_sizes: tuple[int, ...] = (64, 256)
    max_queue_delay_us: int = Field(default=500, ge=0)
    instances: int = Field(default=1, ge=1)  # instance_group count
    # Where each instance runs: KIND_GPU on a GPU node (Triton's ONNX Runtime backend with CUDA)
    instance_kind: Literal["KIND_CPU", "KIND_GPU"] = "KIND_CPU"
    intra_op_threads: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _sizes_fit(self) -> TritonExportConfig:
        bad = [s for s in self.preferred_batch_sizes if not 1 <= s <= self.max_batch_size]
        if bad:
            raise ValueError(f"preferred_batch_sizes {bad} must be in 1..max_batch_size")
        return self


# --- serving -------------------------------------------------------------------------------


class DiversityConfig(_Strict):
    """Order-stage diversity (off by default): a per-genre cap, or softmax sampling of the top-k."""

    type: Literal["none", "genre_cap", "sample"] = "none"
    genre_cap: int = Field(default=3, ge=1)  # at most this many items per primary genre
    temperature: float = Field(default=0.1, gt=0.0)  # sampling: softmax(logit / temperature)


class FreshConfig(_Strict):
    """Order-stage exposure for fresh items: those the model version has no interactions for
    (item cold start). Their retrieval scores carry no interaction signal, so by score alone
    they would never be shown and never gather the feedback the next version learns them from.
    From list position `start` on, one slot in every `every` goes to the user's next fresh
    item; the top `start` positions are never touched. Full pipeline only.

    `order`: "newest" = latest release year first, the ranker network (content, metadata and
    the user's features) choosing within a year; "ranker" = the network alone; "random" =
    uniform exploration (unbiased exposure, e.g. to log data a later model learns from).
    On ML-100K "newest" gives 3.2-4.6x the recall of "random" on three test splits and 2.2x on
    the validation split; "ranker" beats "random" on the test splits, not on validation
    (docs/quality.md)."""

    enabled: bool = True
    start: int = Field(default=10, ge=0)
    every: int = Field(default=10, ge=1)
    order: Literal["newest", "ranker", "random"] = "newest"
    pool: int = Field(default=100, ge=1)  # fresh items ranked per request (newest / nearest)


class GcConfig(_Strict):
    """Garbage-collector policy of a serving process (`strata.serving.pauses`): freeze what is
    loaded at start-up and on reload out of every collection, and collect young objects less
    often than CPython's default (700, 10, 10).
    Chosen with `bench/serve_load.py` (docs/benchmarks.md, "Tail latency")."""

    freeze: bool = True
    threshold0: int = Field(default=10_000, ge=0)  # 0 disables automatic collection
    threshold1: int = Field(default=20, ge=1)
    threshold2: int = Field(default=20, ge=1)


class ServeConfig(_Strict):
    """`strata serve`: HTTP bind, request limits, admin token, store timeouts and backoff."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    dataset: str = "movielens-100k"
    candidates: int = Field(default=300, ge=1)  # retrieval depth N before filtering/ranking
    k_default: int = Field(default=10, ge=1)
    k_max: int = Field(default=100, ge=1)
    max_events: int = Field(default=1000, ge=1)  # events per POST /events
    # Larger request bodies are refused with 413 before they are read (8 MiB: a POST /items
    # with a 5 MiB image as base64 fits)
    max_body_bytes: int = Field(default=8 * 2**20, ge=1024)
    # None disables /admin/*; set with STRATA_SERVE__ADMIN_TOKEN.
    admin_token: SecretStr | None = None
    # The online store is skipped (fail open) after a failure, retried after a backoff that
    # doubles from min to max, so a returning store is used again within max + one timeout.
    store_backoff_min_s: float = Field(default=0.05, gt=0.0)
    store_backoff_max_s: float = Field(default=0.5, gt=0.0)
    catalog_refresh_s: float = Field(default=2.0, gt=0.0)  # item feature-version poll period
    # Every replica follows the registry's serving pointer: woken at once by a notification
    # through the online store, and polling the pointer this often as the fallback.
    follow_poll_s: float = Field(default=2.0, gt=0.0)
    # Start without a model version (a fresh cluster): live, unready until the first promotion,
    # instead of exiting with "run strata train" (the CLI's default, for people).
    wait_for_model: bool = False
    # Where /recommend runs: on the event loop ("inline"), in the threadpool ("thread"), or
    # "auto": inline with in-process inference (ONNX Runtime), threads with a remote server.
    dispatch: Literal["auto", "inline", "thread"] = "auto"
    diversity: DiversityConfig = DiversityConfig()
    fresh: FreshConfig = FreshConfig()

    @model_validator(mode="after")
    def _limits(self) -> ServeConfig:
        if self.k_default > self.k_max:
            raise ValueError(f"k_default {self.k_default} > k_max {self.k_max}")
        if self.store_backoff_min_s > self.store_backoff_max_s:
            raise ValueError("store_backoff_min_s must be <= store_backoff_max_s")
        return self


# --- pipelines (Kubeflow) ------------------------------------------------------------------


class PipelinesConfig(_Strict):
    """Kubeflow pipelines: project image, storage for data and artifacts, KFP host, serving URL."""

    image: str = "ghcr.io/strata-recsys/strata:0.1.0"  # what the components run in on a cluster
    storage_uri: str | None = None  # local folder or s3://bucket/prefix; default: <home>
    kfp_host: str | None = None  # KFP API server; None = run pipelines locally
    experiment: str = "strata"
    # Base URL whose POST /admin/reload the deploy step calls (bearer: serve.admin_token).
    serving_url: str | None = None
    min_new_events: int = Field(default=10, ge=1)  # incremental: fewer new events -> skip
    min_ranker_auc: float = Field(default=0.5, ge=0.0, le=1.0)  # initial gate floor
    run_timeout_s: int = Field(default=3600, ge=1)  # waiting for a submitted KFP run
    # Deploy on a cluster: with a namespace set, the deploy step also patches the serving
    # Deployment (installed by the Helm chart) so a rollout records the new model version.
    k8s_namespace: str | None = None
    k8s_deployment: str = "strata-serving"
    # Compiled for a cluster: the ConfigMap of settings every step reads (STRATA_* keys), a GPU
    # for the training steps, and a PersistentVolumeClaim mounted as the storage (instead of
    # s3://) in every step.
    settings_config_map: str = "strata-settings"
    gpu: bool = False
    pvc: str | None = None
    pvc_mount_path: str = "/data"
    # On a cluster: the ConfigMap holding the chart's PyTorchJob template (strata-training-job,
    # with distributedTraining.enabled); the initial pipeline then trains as that job
    # (pipelines.pytorchjob), which needs pvc (the job's pods share the volume with the steps).
    training_job: str | None = None


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
    training: TrainingConfig = TrainingConfig()
    events: EventsConfig = EventsConfig()
    ctr: CtrConfig = CtrConfig()
    index: IndexConfig = IndexConfig()
    inference: InferenceConfig = OnnxRuntimeConfig()
    triton_export: TritonExportConfig = TritonExportConfig()
    pipelines: PipelinesConfig = PipelinesConfig()
    serve: ServeConfig = ServeConfig()
    gc: GcConfig = GcConfig()
    seed: int = Field(default=42, ge=0, le=2**32 - 1)  # np.random.seed takes no more

    def __init__(self, **values: Any) -> None:
        # A whole section from one variable (STRATA_BLOOM='{...}') is JSON; pydantic-settings
        # raises its own SettingsError (or a RecursionError) for bad JSON there, not a
        # ValidationError: make it the domain error that names the variable.
        try:
            super().__init__(**values)
        except SettingsError as exc:
            raise ConfigError(f"environment: {exc}: a list or a whole section is JSON") from None
        except RecursionError:
            raise ConfigError("environment: a STRATA_* variable nests JSON too deeply") from None

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


__all__ = [
    "BloomConfig",
    "EventsConfig",
    "MemoryOnlineConfig",
    "OfflineStoreConfig",
    "OnlineStoreConfig",
    "Settings",
    "ValkeyOnlineConfig",
    "online_config_from_url",
]
