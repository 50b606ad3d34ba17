"""Training on a cluster as a Kubeflow Training Operator `PyTorchJob`.

The Helm chart renders the job as a template into the `strata-training-job` ConfigMap
(`distributedTraining.*`: nodes, ranks per node, GPUs, resources, the shared volume). With
`pipelines.training_job` naming that ConfigMap, the initial pipeline's training step reads it,
gives the job a fresh name and the run's `strata train` arguments, submits it and waits for
the operator to report it Succeeded or Failed; the version the job's rank 0 registered (not
promoted: the pipeline's gate decides) goes on through the pipeline like a staged one.

Nothing here runs without a cluster: the tests build the manifest from the chart's rendered
ConfigMap and read job states; the submission itself (`run_training_job`) is untested here.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from strata.errors import StrataError, ValidationError

if TYPE_CHECKING:
    from strata.config import Settings

log = logging.getLogger(__name__)

TEMPLATE_KEY = "pytorchjob.yaml"
GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"


class TrainingJobError(StrataError):
    """The PyTorchJob failed, or did not finish in time."""


def job_manifest(template: str, name: str, train_args: Sequence[str]) -> dict[str, Any]:
    """The chart's PyTorchJob template named `name`, every pod running `strata train
    <train_args>` with the template's ranks per pod and device."""
    import yaml

    job = yaml.safe_load(template)
    if not isinstance(job, dict) or job.get("kind") != "PyTorchJob":
        raise ValidationError("pipelines.training_job", "the ConfigMap holds no PyTorchJob")
    job = copy.deepcopy(job)
    job["metadata"]["name"] = name
    specs = job["spec"]["pytorchReplicaSpecs"]
    for spec in specs.values():
        (c,) = [c for c in spec["template"]["spec"]["containers"] if c["name"] == "pytorch"]
        old = list(c["command"])
        keep = [x for flag in ("--nproc", "--device") if flag in old
                for x in (flag, old[old.index(flag) + 1])]  # fmt: skip
        c["command"] = ["strata", "train", *train_args, *keep, "--json"]
    return job


def job_state(status: dict[str, Any] | None) -> str:
    """`succeeded`, `failed` or `running` from a PyTorchJob's status conditions."""
    conds = {c.get("type"): c for c in (status or {}).get("conditions", [])}
    for kind in ("Succeeded", "Failed"):
        if str(conds.get(kind, {}).get("status")) == "True":
            return kind.lower()
    return "running"


def run_training_job(settings: Settings, train_args: Sequence[str], poll_s: float = 10.0) -> str:
    """Submit the chart's PyTorchJob for `strata train <train_args>` and wait for its end;
    returns the job's name (TrainingJobError when it failed or ran past the run timeout)."""
    from kubernetes import client, config

    p = settings.pipelines
    if not p.k8s_namespace or not p.training_job:
        raise ValidationError("pipelines.training_job", "needs pipelines.k8s_namespace as well")
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    cm = client.CoreV1Api().read_namespaced_config_map(p.training_job, p.k8s_namespace)
    name = f"strata-train-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    body = job_manifest((cm.data or {}).get(TEMPLATE_KEY, ""), name, train_args)
    api = client.CustomObjectsApi()
    api.create_namespaced_custom_object(GROUP, VERSION, p.k8s_namespace, PLURAL, body)
    log.info("submitted PyTorchJob %s/%s: strata train %s", p.k8s_namespace, name, train_args)
    deadline = time.monotonic() + p.run_timeout_s
    while time.monotonic() < deadline:
        job = api.get_namespaced_custom_object(GROUP, VERSION, p.k8s_namespace, PLURAL, name)
        state = job_state(job.get("status"))
        if state == "succeeded":
            return name
        if state == "failed":
            raise TrainingJobError(f"PyTorchJob {name} failed: {job.get('status')}")
        time.sleep(poll_s)
    raise TrainingJobError(f"PyTorchJob {name} did not finish in {p.run_timeout_s} s")
