"""The chart's PyTorchJob (Kubeflow Training Operator) for data-parallel training, as the
pipelines' training step submits it: its shape, the command each pod runs, GPUs per rank, the
Role that lets the step submit it, bad values refused by the schema; job states; and the
torchrun command a pod runs inside such a job (multi-node rendezvous instead of --standalone).
No operator or API server runs here: submission itself is not exercised."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from strata.config import PipelinesConfig, Settings
from strata.errors import ValidationError
from strata.pipelines import steps
from strata.pipelines.pytorchjob import TEMPLATE_KEY, job_manifest, job_state
from strata.training.distributed import torchrun_command
from tests.k8s_tools import CHART, helm, render_chart

ON = ("distributedTraining.enabled=true",)


def _template(*sets: str) -> str:
    docs = render_chart(sets=(*ON, *sets))
    (cm,) = [d for d in docs if d["metadata"]["name"] == "strata-training-job"]
    assert cm["kind"] == "ConfigMap"
    return str(cm["data"][TEMPLATE_KEY])


def _pods(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {role: rs["template"]["spec"] for role, rs in job["spec"]["pytorchReplicaSpecs"].items()}


def test_off_by_default() -> None:
    docs = render_chart()
    assert not [d for d in docs if d["metadata"]["name"] == "strata-training-job"]
    (role,) = [d for d in docs if d["kind"] == "Role"]
    assert all("pytorchjobs" not in r["resources"] for r in role["rules"])


def test_nodes_times_ranks_train_on_the_shared_volume() -> None:
    job = yaml.safe_load(
        _template("distributedTraining.nodes=3", "distributedTraining.nprocPerNode=2")
    )
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    assert job["spec"]["nprocPerNode"] == "2"
    reps = job["spec"]["pytorchReplicaSpecs"]
    assert (reps["Master"]["replicas"], reps["Worker"]["replicas"]) == (1, 2)
    for pod in _pods(job).values():
        (c,) = pod["containers"]
        assert c["name"] == "pytorch"
        cmd = c["command"]
        assert cmd[:2] == ["strata", "train"] and cmd[cmd.index("--nproc") + 1] == "2"
        assert cmd[cmd.index("--device") + 1] == "cpu"
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["STRATA_HOME"] == "/data"  # checkpoints and the registry on the shared volume
        assert env["STRATA_TRAINING__SHARD_INPUT"] == "false"  # every rank reads all rows
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v]  # fmt: skip
        assert claims == ["strata-data"]
        assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
        assert pod["nodeSelector"] == {"strata.io/pool": "cpu"}


def test_shard_input_reaches_every_rank_pod() -> None:
    job = yaml.safe_load(_template("distributedTraining.shardInput=true"))
    for pod in _pods(job).values():
        (c,) = pod["containers"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["STRATA_TRAINING__SHARD_INPUT"] == "true"


def test_one_node_has_no_workers_and_gpu_ranks_get_a_gpu_each() -> None:
    job = yaml.safe_load(_template("distributedTraining.nodes=1",
                                   "distributedTraining.nprocPerNode=4",
                                   "distributedTraining.gpu=true"))  # fmt: skip
    pods = _pods(job)
    assert set(pods) == {"Master"}
    (c,) = pods["Master"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert c["command"][c["command"].index("--device") + 1] == "cuda"
    assert pods["Master"]["nodeSelector"] == {"strata.io/pool": "gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pods[
        "Master"
    ]["tolerations"]


def test_the_step_names_the_job_and_sets_the_runs_arguments() -> None:
    template = _template("distributedTraining.nodes=2", "distributedTraining.nprocPerNode=3")
    job = job_manifest(template, "strata-train-x", ["--dataset", "shop", "--no-promote"])
    assert job["metadata"]["name"] == "strata-train-x"
    for pod in _pods(job).values():
        (c,) = pod["containers"]
        assert c["command"] == ["strata", "train", "--dataset", "shop", "--no-promote",
                                "--nproc", "3", "--device", "cpu", "--json"]  # fmt: skip
    assert yaml.safe_load(template)["metadata"]["name"] == "strata-train"  # template untouched
    with pytest.raises(ValidationError, match="no PyTorchJob"):
        job_manifest("kind: Deployment", "x", [])
    # the pipeline runner may read the template and submit the job, nothing more
    (role,) = [d for d in render_chart(sets=ON) if d["kind"] == "Role"]
    rules = {(r["apiGroups"][0], r["resources"][0]): r for r in role["rules"]}
    assert rules[("kubeflow.org", "pytorchjobs")]["verbs"] == ["create", "get"]
    assert rules[("", "configmaps")]["resourceNames"] == ["strata-training-job"]


def test_job_states_from_the_operators_conditions() -> None:
    def cond(kind: str, status: str) -> dict[str, str]:
        return {"type": kind, "status": status}

    assert job_state(None) == "running"
    running = [cond("Created", "True"), cond("Running", "True")]
    assert job_state({"conditions": running}) == "running"
    done = [cond("Running", "False"), cond("Succeeded", "True")]
    assert job_state({"conditions": done}) == "succeeded"
    assert job_state({"conditions": [cond("Failed", "True")]}) == "failed"


def test_training_as_a_job_needs_the_shared_volume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRATA_PIPELINES__TRAINING_JOB", "strata-training-job")
    with pytest.raises(ValidationError, match=r"pipelines\.pvc"):
        steps.train_two_tower(str(tmp_path), "tiny")
    assert Settings(pipelines=PipelinesConfig(training_job="x")).pipelines.training_job == "x"


@pytest.mark.parametrize(
    ("value", "key"),
    [("distributedTraining.nodes=0", "nodes"), ("distributedTraining.ranks=2", "ranks")],
)
def test_bad_values_fail_the_render_naming_the_key(value: str, key: str) -> None:
    res = subprocess.run(
        [str(helm()), "template", "strata", str(CHART), "--set", ON[0], "--set", value],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode != 0 and key in res.stderr, res.stderr


def test_torchrun_is_standalone_locally_and_joins_the_job_in_a_pod() -> None:
    local = torchrun_command(2, ["train", "--dataset", "x"], {})
    assert local[:3] == [sys.executable, "-m", "strata.training.distributed"]
    assert "--standalone" in local and "--nproc-per-node=2" in local
    assert local[-4:] == ["strata.cli", "train", "--dataset", "x"]
    pod = torchrun_command(2, ["train"], {"PET_MASTER_ADDR": "strata-train-1-master-0",
                                          "PET_NNODES": "3", "PET_NODE_RANK": "1"})  # fmt: skip
    assert "--standalone" not in pod and "--nproc-per-node=2" in pod
