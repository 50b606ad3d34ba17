"""The three pipelines (`initial`, `incremental`, `ctr-retrain`) as KFP v2 graphs, and compile.

Steps pass small JSON dicts (versions, decisions); data and models go through the storage URI.
Every step has side effects on that storage, so KFP's result cache is switched off for all of
them. Conditional steps are not KFP `If` blocks: a step that has nothing to do (no accepted
version, no serving URL) returns a recorded no-op, so the graph is the same straight line on a
cluster and locally.

Compiled for a cluster (`cluster=` a `PipelinesConfig`), every step pod also gets what it needs
there and nothing else (`for_cluster`): CPU/memory requests by kind of step (a GPU for the
training steps when `pipelines.gpu`), the settings from the `strata-settings` ConfigMap and the
`strata-valkey` / `strata-admin` Secrets as environment (so materialize writes to the cluster's
Valkey and deploy has the admin token), the label the Valkey NetworkPolicy admits, a non-root
security context, and the shared volume when `pipelines.pvc` names one. The local runner gets
none of it: its steps run in this process's environment.
"""

# No `from __future__ import annotations`: KFP reads the pipeline signatures as real types.

from collections.abc import Callable
from pathlib import Path
from typing import Any

from strata.config import PipelinesConfig
from strata.pipelines.components import make_components, require_kfp

PIPELINES = ("initial", "incremental", "ctr-retrain")
#: Steps that train (more CPU and memory; the GPU when asked for).
TRAINING_STEPS = frozenset({"encode-content", "train-two-tower", "train-ranker", "finetune",
                            "ctr-retrain"})  # fmt: skip
#: Settings a step reads from the `strata-settings` ConfigMap (each key optional).
SETTINGS_KEYS = ("STRATA_ONLINE__TYPE", "STRATA_ONLINE__URL", "STRATA_PIPELINES__SERVING_URL",
                 "STRATA_PIPELINES__K8S_NAMESPACE")  # fmt: skip
#: Secret name -> (key -> environment variable).
SECRETS = {"strata-valkey": {"password": "STRATA_ONLINE__PASSWORD"},
           "strata-admin": {"token": "STRATA_SERVE__ADMIN_TOKEN"}}  # fmt: skip


def for_cluster(task: Any, step: str, cfg: PipelinesConfig) -> Any:
    """What a step pod needs on a cluster (module docstring)."""
    from kfp import kubernetes

    heavy = step in TRAINING_STEPS
    task.set_cpu_request("2" if heavy else "500m").set_memory_request("6G" if heavy else "2G")
    task.set_memory_limit("8G" if heavy else "4G")
    if heavy and cfg.gpu:
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        kubernetes.add_toleration(task, key="nvidia.com/gpu", operator="Exists",
                                  effect="NoSchedule")  # fmt: skip
    kubernetes.use_config_map_as_env(task, cfg.settings_config_map,
                                     {k: k for k in SETTINGS_KEYS}, optional=True)  # fmt: skip
    for secret, keys in SECRETS.items():
        kubernetes.use_secret_as_env(task, secret, keys, optional=True)
    kubernetes.add_pod_label(task, "strata.io/valkey-client", "true")
    kubernetes.set_security_context(task, run_as_user=10001, run_as_group=10001,
                                    run_as_non_root=True)  # fmt: skip
    if cfg.pvc:
        kubernetes.mount_pvc(task, pvc_name=cfg.pvc, mount_path=cfg.pvc_mount_path)
    return task


def make_pipelines(
    image: str, cluster: PipelinesConfig | None = None
) -> dict[str, Callable[..., Any]]:
    """The three KFP pipeline objects, with components running in `image`; `cluster`: compiled
    for a Kubernetes cluster (`for_cluster` on every step)."""
    dsl = require_kfp()

    c = make_components(image)

    def nocache(task: Any) -> Any:
        task.set_caching_options(False)
        if cluster is not None:
            for_cluster(task, task.component_spec.name.replace("_", "-"), cluster)
        return task

    @dsl.pipeline(
        name="strata-initial",
        description="ingest -> features -> content -> two-tower -> index -> ranker -> gate "
        "-> materialize -> publish -> deploy",
    )
    def initial(
        storage_uri: str,
        dataset: str = "movielens-100k",
        data_path: str = "",
        until: int = 0,
        epochs: int = 0,
        encode: bool = True,
        images: str = "",
        index_kind: str = "",
        serving_url: str = "",
    ) -> dict:
        t_ingest = nocache(
            c["ingest"](storage_uri=storage_uri, dataset=dataset, data_path=data_path, until=until)
        )
        t_feat = nocache(
            c["build_features"](storage_uri=storage_uri, dataset=dataset, until=until)
        ).after(t_ingest)
        t_content = nocache(
            c["encode_content"](
                storage_uri=storage_uri,
                dataset=dataset,
                data_path=data_path,
                images=images,
                enabled=encode,
            )
        ).after(t_feat)
        t_tt = nocache(
            c["train_two_tower"](
                storage_uri=storage_uri, dataset=dataset, until=until, epochs=epochs, images=images
            )
        ).after(t_content)
        t_index = nocache(
            c["build_index"](
                storage_uri=storage_uri, dataset=dataset, candidate=t_tt.output, kind=index_kind
            )
        )
        t_train = nocache(
            c["train_ranker"](storage_uri=storage_uri, dataset=dataset, staged=t_index.output)
        )
        t_gate = nocache(
            c["evaluate_gate"](storage_uri=storage_uri, dataset=dataset, candidate=t_train.output)
        )
        t_mat = nocache(c["materialize_online"](storage_uri=storage_uri, dataset=dataset)).after(
            t_gate
        )
        t_pub = nocache(
            c["publish"](storage_uri=storage_uri, dataset=dataset, decision=t_gate.output)
        ).after(t_mat)
        t_deploy = nocache(c["deploy"](published=t_pub.output, serving_url=serving_url))
        return t_deploy.output

    @dsl.pipeline(
        name="strata-incremental",
        description="land events -> fine-tune query tower + ranker (item tower frozen) -> gate "
        "-> index -> promote -> reload",
    )
    def incremental(
        storage_uri: str,
        dataset: str = "movielens-100k",
        index_kind: str = "",
        serving_url: str = "",
    ) -> dict:
        t_land = nocache(c["land_events"](storage_uri=storage_uri, dataset=dataset))
        t_ft = nocache(c["finetune"](storage_uri=storage_uri, dataset=dataset)).after(t_land)
        t_index = nocache(
            c["build_index"](
                storage_uri=storage_uri, dataset=dataset, candidate=t_ft.output, kind=index_kind
            )
        )
        t_pub = nocache(
            c["publish"](storage_uri=storage_uri, dataset=dataset, decision=t_ft.output)
        ).after(t_index)
        t_deploy = nocache(c["deploy"](published=t_pub.output, serving_url=serving_url))
        return t_deploy.output

    @dsl.pipeline(
        name="strata-ctr-retrain",
        description="warm-start CTR retrain on recent labelled rows -> gate -> publish -> reload",
    )
    def ctr_retrain(storage_uri: str, recent_uri: str, serving_url: str = "") -> dict:
        t_rt = nocache(c["ctr_retrain"](storage_uri=storage_uri, recent_uri=recent_uri))
        t_deploy = nocache(c["deploy"](published=t_rt.output, serving_url=serving_url))
        return t_deploy.output

    return {"initial": initial, "incremental": incremental, "ctr-retrain": ctr_retrain}


def get_pipeline(
    name: str, image: str, cluster: PipelinesConfig | None = None
) -> Callable[..., Any]:
    """One pipeline by CLI name; ValidationError for an unknown one."""
    from strata.errors import ValidationError

    if name not in PIPELINES:
        raise ValidationError(
            "pipeline", f"unknown pipeline {name!r}; known: {', '.join(PIPELINES)}"
        )
    return make_pipelines(image, cluster)[name]


def compile_pipeline(name: str, out: Path, cfg: PipelinesConfig) -> Path:
    """Compile one pipeline for a cluster (image, resources, settings, volume from `cfg`) to
    `<out>/<name>.yaml` (written to a temp name, then renamed)."""
    import os

    require_kfp()
    from kfp import compiler

    out.mkdir(parents=True, exist_ok=True)
    dest = out / f"{name}.yaml"
    tmp = out / f".{name}.tmp.yaml"
    try:
        compiler.Compiler().compile(get_pipeline(name, cfg.image, cfg), str(tmp))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def compile_all(out: Path, cfg: PipelinesConfig) -> list[Path]:
    """Compile every pipeline into `out`: one YAML per pipeline for a KFP cluster."""
    return [compile_pipeline(name, out, cfg) for name in PIPELINES]
