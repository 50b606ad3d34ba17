"""Every pod the manifests in deploy/ create meets Pod Security "restricted" (non-root, seccomp
RuntimeDefault, no privilege escalation, all capabilities dropped, read-only root filesystem)
and has resource requests; Valkey requires a password from a Secret, caps its memory below the
container limit, and admits only labelled strata pods; every strata pod that talks to Valkey
carries that label and the password; every Deployment has a PodDisruptionBudget."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.unit.test_pipelines_deploy import docs, one

WORKLOADS = ("Deployment", "StatefulSet", "Job", "CronJob", "DaemonSet")
CLIENT_LABEL = ("strata.io/valkey-client", "true")


def _pods() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for d in docs():
        if d["kind"] in WORKLOADS:
            spec = d["spec"]
            if d["kind"] == "CronJob":
                spec = spec["jobTemplate"]["spec"]
            out.append((f"{d['kind']}/{d['metadata']['name']}", spec["template"]))
    return out


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _bytes(quantity: str) -> int:
    num, unit = re.fullmatch(r"(\d+)([KMG]i?|[kmg]b)?", quantity).groups()  # type: ignore[union-attr]
    scale = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "kb": 2**10, "mb": 2**20,
             "gb": 2**30}  # fmt: skip
    return int(num) * scale[unit]


@pytest.mark.parametrize(("name", "pod"), _pods(), ids=[n for n, _ in _pods()])
def test_every_pod_is_restricted(name: str, pod: dict[str, Any]) -> None:
    spec = pod["spec"]
    ctx = spec["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] > 0, name
    assert ctx["seccompProfile"]["type"] == "RuntimeDefault", name
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
    (source,) = rule["from"]
    assert source == {"podSelector": {"matchLabels": dict([CLIENT_LABEL])}}

    clients = 0
    for name, pod in _pods():
        for c in pod["spec"]["containers"]:
            env = _env(c)
            if "STRATA_ONLINE__URL" not in env:
                continue
            clients += 1
            assert CLIENT_LABEL in pod["metadata"]["labels"].items(), name
            ref = env["STRATA_ONLINE__PASSWORD"]["valueFrom"]["secretKeyRef"]
            assert ref == secret, name  # the same Secret the server requires
            assert "@" not in env["STRATA_ONLINE__URL"]["value"], name  # no password in URLs
    assert clients >= 2  # serving and CTR


def test_every_deployment_keeps_one_pod_through_disruptions() -> None:
    all_docs = docs()
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
    job = one(all_docs, "Job", "strata-bootstrap")
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"][:5] == ["strata", "pipeline", "run", "initial", "--local"]
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


#: EKS's current standard-support versions (the kubectl of the layer wheel is v1.33).
KUBERNETES_VERSIONS = ("1.33.0", "1.35.0")
#: Kinds of operators' CRDs (Karpenter, kube-prometheus-stack): no offline schema.
CRD_KINDS = {"NodePool", "EC2NodeClass", "ServiceMonitor", "PrometheusRule"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_built_in_object_validates_strictly(version: str) -> None:
    import kubernetes_validate
    from kubernetes_validate.utils import ValidationError as SchemaError

    checked, errors = 0, []
    for d in docs():
        if d["kind"] in CRD_KINDS or d["kind"] == "Kustomization":
            continue
        try:
            kubernetes_validate.validate(d, version, strict=True)
            checked += 1
        except SchemaError as exc:
            errors.append(f"{d['kind']}/{d['metadata']['name']}: {exc}")
    assert not errors, errors
    assert checked >= 15


def test_pods_run_as_strata_and_the_deploy_step_may_roll_the_serving_deployment() -> None:
    all_docs = docs()
    sa = one(all_docs, "ServiceAccount", "strata")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    for name, pod in _pods():
        assert pod["spec"].get("serviceAccountName") == "strata" or name == "StatefulSet/valkey"
    role = one(all_docs, "Role", "strata-deployer")
    (rule,) = role["rules"]
    # what strata.pipelines.kube.apply_serving calls: read, create the first time, patch
    assert rule["resources"] == ["deployments"] and set(rule["verbs"]) == {"get", "create", "patch"}
    binding = one(all_docs, "RoleBinding", "strata-deployer")
    assert binding["roleRef"]["name"] == "strata-deployer"
    assert {"kind": "ServiceAccount", "name": "strata", "namespace": "strata"} in binding[
        "subjects"
    ]


def test_each_pod_lands_on_its_pool() -> None:
    all_docs = docs()
    pools = {
        d["metadata"]["name"]: d["spec"]["template"] for d in all_docs if d["kind"] == "NodePool"
    }

    def capacity(pool: dict[str, Any]) -> set[str]:
        (req,) = [
            r for r in pool["spec"]["requirements"] if r["key"] == "karpenter.sh/capacity-type"
        ]
        return set(req["values"])

    by_label = {p["metadata"]["labels"]["strata.io/pool"]: p for p in pools.values()}
    for name, pod in _pods():
        pool = by_label[pod["spec"]["nodeSelector"]["strata.io/pool"]]
        if name == "StatefulSet/valkey":
            assert capacity(pool) == {"on-demand"}  # a spot reclaim would empty the store
        else:
            assert "spot" in capacity(pool)
    gpu = by_label["gpu"]
    assert gpu["spec"]["taints"] == [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]
