"""Every pod the Helm chart creates, under every values profile, meets Pod Security
"restricted" (non-root, seccomp RuntimeDefault, no privilege escalation, all capabilities
dropped, read-only root filesystem) and has resource requests; Valkey requires a password from a
Secret, caps its memory below the container limit, and admits only labelled strata pods; every
strata pod that talks to the online store carries that label and the password (in-cluster or
ElastiCache over TLS); every Deployment has a PodDisruptionBudget; every built-in object
validates strictly against current Kubernetes versions."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from strata.config import PipelinesConfig
from tests.k8s_tools import PROFILES, render_chart
from tests.unit.test_pipelines_deploy import DEPLOY, docs, one

IDS = [p or "default" for p in PROFILES]
WORKLOADS = ("Deployment", "StatefulSet", "Job", "CronJob", "DaemonSet")
CLIENT_LABEL = ("strata.io/valkey-client", "true")


def _pods(
    profile: str | None = None, sets: tuple[str, ...] = ()
) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for d in docs(profile) if not sets else render_chart(profile, sets=sets):
        name = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] in WORKLOADS:
            spec = d["spec"]
            if d["kind"] == "CronJob":
                spec = spec["jobTemplate"]["spec"]
            out.append((name, spec["template"]))
        elif d["kind"] == "ConfigMap" and d["metadata"]["name"] == "strata-training-job":
            job = yaml.safe_load(d["data"]["pytorchjob.yaml"])  # the pipeline submits it
            for role, rs in job["spec"]["pytorchReplicaSpecs"].items():
                out.append((f"PyTorchJob/{job['metadata']['name']}/{role}", rs["template"]))
    return out


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _bytes(quantity: str) -> int:
    num, unit = re.fullmatch(r"(\d+)([KMG]i?|[kmg]b)?", quantity).groups()  # type: ignore[union-attr]
    scale = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "kb": 2**10, "mb": 2**20,
             "gb": 2**30}  # fmt: skip
    return int(num) * scale[unit]


TRAINING_JOB = ("distributedTraining.enabled=true", "distributedTraining.nodes=3",
                "distributedTraining.nprocPerNode=2")  # fmt: skip


@pytest.mark.parametrize("profile", PROFILES, ids=IDS)
def test_every_pod_is_restricted(profile: str | None) -> None:
    _assert_restricted(_pods(profile))


def test_the_training_job_pods_are_restricted_too() -> None:
    pods = _pods(None, TRAINING_JOB)
    assert {n for n, _ in pods} >= {"PyTorchJob/strata-train/Master",
                                    "PyTorchJob/strata-train/Worker"}  # fmt: skip
    _assert_restricted(pods)


def _assert_restricted(pods: list[tuple[str, dict[str, Any]]]) -> None:
    assert len(pods) >= 3
    for name, pod in pods:
        spec = pod["spec"]
        ctx = spec["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] > 0, name
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name  # none calls the API server
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert "ALL" in sc["capabilities"]["drop"], (name, c["name"])
            assert {"cpu", "memory"} <= c["resources"]["requests"].keys(), (name, c["name"])


def test_valkey_needs_a_password_caps_memory_and_admits_only_strata_pods() -> None:
    all_docs = docs()
    sts = one(all_docs, "StatefulSet", "valkey")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    args = c["args"]
    secret = _env(c)["VALKEY_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert args[args.index("--requirepass") + 1] == "$(VALKEY_PASSWORD)"
    cap = _bytes(args[args.index("--maxmemory") + 1])
    assert cap < _bytes(c["resources"]["limits"]["memory"])  # write errors before an OOM kill
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"

    policy = one(all_docs, "NetworkPolicy", "valkey")
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    (rule,) = policy["spec"]["ingress"]
    # strata pods here, and pipeline steps in KFP's namespace: every source needs the label
    for source in rule["from"]:
        assert source["podSelector"] == {"matchLabels": dict([CLIENT_LABEL])}
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    assert all(ref == secret for ref in _clients(None))  # the Secret the server requires


def _clients(profile: str | None) -> list[dict[str, Any]]:
    """The Secret reference of each container that talks to the online store (checking that
    its pod carries the NetworkPolicy label and that no URL holds a password)."""
    refs = []
    for name, pod in _pods(profile):
        for c in pod["spec"]["containers"]:
            env = _env(c)
            if "STRATA_ONLINE__URL" not in env:
                continue
            assert CLIENT_LABEL in pod["metadata"]["labels"].items(), name
            refs.append(env["STRATA_ONLINE__PASSWORD"]["valueFrom"]["secretKeyRef"])
            assert "@" not in env["STRATA_ONLINE__URL"]["value"], name  # no password in URLs
    return refs


@pytest.mark.parametrize("profile", PROFILES, ids=IDS)
def test_every_store_client_authenticates_with_the_shared_secret(profile: str | None) -> None:
    refs = _clients(profile)
    assert len(refs) >= 3  # serving, CTR, the bootstrap Job
    assert all(r == {"name": "strata-valkey", "key": "password"} for r in refs)
    url = one(docs(profile), "ConfigMap", "strata-settings")["data"]["STRATA_ONLINE__URL"]
    if profile == "elasticache":
        assert url.startswith("rediss://")  # ElastiCache in-transit encryption
        assert not [d for d in docs(profile) if d["kind"] in ("StatefulSet", "NetworkPolicy")]
    else:
        assert url.startswith("redis://valkey-0.valkey.")


@pytest.mark.parametrize("profile", [None, "gpu-triton"], ids=["default", "gpu-triton"])
def test_every_deployment_keeps_one_pod_through_disruptions(profile: str | None) -> None:
    all_docs = docs(profile)
    for dep in (d for d in all_docs if d["kind"] == "Deployment"):
        pdb = one(all_docs, "PodDisruptionBudget", dep["metadata"]["name"])
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert pdb["spec"]["minAvailable"] >= 1


@pytest.mark.parametrize("name", ["strata-serving", "strata-ctr"])
def test_probes_follow_the_cluster_mode_contract(name: str) -> None:
    dep = one(docs(), "Deployment", name)
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    # the port opens after start-up (models loaded, or waiting for a first version): /healthz
    # is the startup and liveness probe; /readyz (503 until a version answers) the readiness one
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = _env(c)
    assert env["STRATA_EVENTS__REPLICA"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # a fresh install waits for its first version instead of crash-looping
    flag = "STRATA_SERVE__WAIT_FOR_MODEL" if name == "strata-serving" else (
        "STRATA_CTR__SERVE__WAIT_FOR_MODEL")  # fmt: skip
    assert env[flag]["value"] == "true"


def test_a_fresh_install_trains_its_first_version_on_the_shared_volume() -> None:
    all_docs = docs()
    # one Job per release revision (a Job's template is immutable); an upgrade's Job exits at
    # once when the dataset already serves (--unless-serving), so nothing is retrained
    job = one(all_docs, "Job", "strata-bootstrap-1")
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"][:5] == ["strata", "pipeline", "run", "initial", "--local"]
    assert "--unless-serving" in c["command"]
    dataset = c["command"][c["command"].index("--dataset") + 1]
    storage = c["command"][c["command"].index("--storage") + 1]
    claim = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    # the registry it promotes into is the one the serving pods follow
    serving = one(all_docs, "Deployment", "strata-serving")["spec"]["template"]["spec"]
    serving_claims = {v["name"]: v for v in serving["volumes"]}
    (s_c,) = serving["containers"]
    s_mounts = {m["mountPath"]: m["name"] for m in s_c["volumeMounts"]}
    assert (
        claim[mounts[storage]]["persistentVolumeClaim"]
        == (serving_claims[s_mounts[storage]]["persistentVolumeClaim"])
    )
    assert _env(c)["STRATA_HOME"]["value"] == _env(s_c)["STRATA_HOME"]["value"] == storage
    assert _env(s_c)["STRATA_SERVE__DATASET"]["value"] == dataset  # serves what it trained


#: EKS's current standard-support versions (the kubectl of the layer wheel is v1.33).
KUBERNETES_VERSIONS = ("1.33.0", "1.35.0")
#: Kinds of operators' CRDs (Karpenter, kube-prometheus-stack): no offline schema.
CRD_KINDS = {"NodePool", "EC2NodeClass", "ServiceMonitor", "PrometheusRule"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("profile", PROFILES, ids=IDS)
def test_every_built_in_object_validates_strictly(version: str, profile: str | None) -> None:
    import kubernetes_validate
    from kubernetes_validate.utils import ValidationError as SchemaError

    checked, errors = 0, []
    for d in docs(profile):
        if d["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(d, version, strict=True)
            checked += 1
        except SchemaError as exc:
            errors.append(f"{d['kind']}/{d['metadata']['name']}: {exc}")
    assert not errors, errors
    assert checked >= 14


def test_pods_run_as_strata_and_the_deploy_step_may_roll_the_serving_deployment() -> None:
    all_docs = docs()
    sa = one(all_docs, "ServiceAccount", "strata")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    for name, pod in _pods():
        assert pod["spec"].get("serviceAccountName") == "strata" or name == "StatefulSet/valkey"
    role = one(all_docs, "Role", "strata-deployer")
    (rule,) = role["rules"]
    # what strata.pipelines.kube.apply_serving calls (a patch of the chart's own Deployment;
    # it never creates one), and nothing else
    assert rule["resources"] == ["deployments"] and set(rule["verbs"]) <= {"get", "patch"}
    assert rule["resourceNames"] == [PipelinesConfig().k8s_deployment]
    binding = one(all_docs, "RoleBinding", "strata-deployer")
    assert binding["roleRef"]["name"] == "strata-deployer"
    subjects = binding["subjects"]
    assert {"kind": "ServiceAccount", "name": "strata", "namespace": "strata"} in subjects
    assert {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"} in (
        subjects
    )


@pytest.mark.parametrize("profile", [None, "gpu-triton"], ids=["default", "gpu-triton"])
def test_each_pod_lands_on_its_pool(profile: str | None) -> None:
    all_docs = docs(profile)
    pools = {
        d["metadata"]["name"]: d["spec"]["template"] for d in all_docs if d["kind"] == "NodePool"
    }

    def capacity(pool: dict[str, Any]) -> set[str]:
        (req,) = [
            r for r in pool["spec"]["requirements"] if r["key"] == "karpenter.sh/capacity-type"
        ]
        return set(req["values"])

    by_label = {p["metadata"]["labels"]["strata.io/pool"]: p for p in pools.values()}
    for name, pod in _pods(profile):
        pool = by_label[pod["spec"]["nodeSelector"]["strata.io/pool"]]
        if name == "StatefulSet/valkey":
            assert capacity(pool) == {"on-demand"}  # a spot reclaim would empty the store
        else:
            assert "spot" in capacity(pool)
        taints = pool["spec"].get("taints", [])
        tolerated = {(t["key"], t["effect"]) for t in pod["spec"].get("tolerations", [])}
        assert {(t["key"], t["effect"]) for t in taints} <= tolerated, name
    assert ("gpu" in by_label) == (profile == "gpu-triton")  # no GPU pool unless asked
    if profile == "gpu-triton":
        assert by_label["gpu"]["spec"]["taints"] == [
            {"key": "nvidia.com/gpu", "effect": "NoSchedule"}
        ]


def test_with_the_cluster_autoscaler_every_pool_is_a_node_group_it_can_scale_from_zero() -> None:
    cluster = yaml.safe_load((DEPLOY / "eksctl-cluster.yaml").read_text())
    groups: dict[str, list[dict[str, Any]]] = {}
    for g in cluster["managedNodeGroups"]:
        if "strata.io/pool" in g.get("labels", {}):
            groups.setdefault(g["labels"]["strata.io/pool"], []).append(g)
    ca = yaml.safe_load((DEPLOY / "cluster-autoscaler-values.yaml").read_text())
    discovery = set(ca["autoDiscovery"]["tags"])
    for profile in ("cluster-autoscaler",):
        assert not [d for d in docs(profile) if d["kind"] in ("NodePool", "EC2NodeClass")]
        for name, pod in _pods(profile):
            pool = pod["spec"]["nodeSelector"]["strata.io/pool"]
            assert groups.get(pool), f"{name}: no node group labelled strata.io/pool={pool}"
            for g in groups[pool]:
                tags = g["tags"]
                assert discovery <= tags.keys(), g["name"]  # the autoscaler finds the group
                # scale-from-zero: the autoscaler learns the label from the group's tags
                assert tags["k8s.io/cluster-autoscaler/node-template/label/strata.io/pool"] == (
                    pool
                )
            if name == "StatefulSet/valkey":
                assert not any(g.get("spot") for g in groups[pool])
    gpu = groups["gpu"][0]
    assert gpu["taints"][0]["key"] == "nvidia.com/gpu"
    assert "k8s.io/cluster-autoscaler/node-template/taint/nvidia.com/gpu" in gpu["tags"]
