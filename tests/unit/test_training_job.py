"""The chart's PyTorchJob (Kubeflow Training Operator) for data-parallel training: its shape,
the command each pod runs, GPUs per rank, bad values refused by the schema; and the torchrun
command a pod runs inside such a job (multi-node rendezvous instead of --standalone)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from strata.training.distributed import torchrun_command
from tests.k8s_tools import CHART, helm, render_chart

ON = ("distributedTraining.enabled=true",)


def _job(*sets: str) -> dict[str, Any]:
    (job,) = [d for d in render_chart(sets=(*ON, *sets)) if d["kind"] == "PyTorchJob"]
    return job


def test_off_by_default() -> None:
    assert not [d for d in render_chart() if d["kind"] == "PyTorchJob"]


def test_nodes_times_ranks_train_on_the_shared_volume() -> None:
    job = _job("distributedTraining.nodes=3", "distributedTraining.nprocPerNode=2")
    assert job["apiVersion"] == "kubeflow.org/v1"
    spec = job["spec"]
    assert spec["nprocPerNode"] == "2"
    reps = spec["pytorchReplicaSpecs"]
    assert (reps["Master"]["replicas"], reps["Worker"]["replicas"]) == (1, 2)
    for rs in reps.values():
        pod = rs["template"]["spec"]
        (c,) = pod["containers"]
        assert c["name"] == "pytorch"
        cmd = c["command"]
        assert cmd[:2] == ["strata", "train"] and cmd[cmd.index("--nproc") + 1] == "2"
        assert cmd[cmd.index("--device") + 1] == "cpu"
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["STRATA_HOME"] == "/data"  # checkpoints and the registry on the shared volume
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v]  # fmt: skip
        assert claims == ["strata-data"]
        assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
        assert pod["nodeSelector"] == {"strata.io/pool": "cpu"}


def test_one_node_has_no_workers_and_gpu_ranks_get_a_gpu_each() -> None:
    job = _job("distributedTraining.nodes=1", "distributedTraining.nprocPerNode=4",
               "distributedTraining.gpu=true")  # fmt: skip
    reps = job["spec"]["pytorchReplicaSpecs"]
    assert set(reps) == {"Master"}
    pod = reps["Master"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert c["command"][c["command"].index("--device") + 1] == "cuda"
    assert pod["nodeSelector"] == {"strata.io/pool": "gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]


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
    assert local[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in local and "--nproc-per-node=2" in local
    assert local[-4:] == ["strata.cli", "train", "--dataset", "x"]
    pod = torchrun_command(2, ["train"], {"PET_MASTER_ADDR": "strata-train-1-master-0",
                                          "PET_NNODES": "3", "PET_NODE_RANK": "1"})  # fmt: skip
    assert "--standalone" not in pod and "--nproc-per-node=2" in pod
