"""Cluster deploy: the rollout patch and the Deployment created from deploy/serving.yaml (pure
functions; no API server is reachable here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from strata.config import PipelinesConfig
from strata.pipelines.kube import (
    VERSION_ANNOTATION,
    ClusterDeployError,
    rollout_patch,
    serving_manifest,
)

ROOT = Path(__file__).resolve().parents[2]


def test_rollout_patch_changes_only_the_pod_template_annotation() -> None:
    assert rollout_patch("v0007") == {
        "spec": {"template": {"metadata": {"annotations": {VERSION_ANNOTATION: "v0007"}}}}
    }
    # A new version is a different pod template, so the Deployment rolls; same version, no-op.
    assert rollout_patch("v0007") != rollout_patch("v0008")


def test_serving_manifest_from_the_project_yaml() -> None:
    cfg = PipelinesConfig(k8s_namespace="recs")
    path = ROOT / cfg.k8s_manifest
    dep = serving_manifest(path, "recs", cfg.k8s_deployment, "v0003")
    assert dep["kind"] == "Deployment" and dep["metadata"]["name"] == "strata-serving"
    assert dep["metadata"]["namespace"] == "recs"
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann[VERSION_ANNOTATION] == "v0003"
    assert ann["prometheus.io/scrape"] == "true"  # the file's own annotations are kept
    # The file on disk is untouched (deepcopy), and the result is still valid YAML.
    (orig,) = [
        d for d in yaml.safe_load_all(path.read_text())
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "strata-serving"
    ]  # fmt: skip
    assert VERSION_ANNOTATION not in orig["spec"]["template"]["metadata"]["annotations"]
    assert yaml.safe_load(yaml.safe_dump(dep)) == dep


def test_serving_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(ClusterDeployError, match="cannot read"):
        serving_manifest(tmp_path / "absent.yaml", "ns", "strata-serving", "v0001")
    other = tmp_path / "other.yaml"
    other.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: strata-serving}\n")
    with pytest.raises(ClusterDeployError, match="found 0"):
        serving_manifest(other, "ns", "strata-serving", "v0001")


def test_deploy_step_reports_without_url_or_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    from strata.pipelines import steps

    monkeypatch.delenv("STRATA_PIPELINES__SERVING_URL", raising=False)
    monkeypatch.delenv("STRATA_PIPELINES__K8S_NAMESPACE", raising=False)
    out = steps.deploy({"published": True, "version": "v0002"})
    assert out["deployed"] is False and out["reason"] == "no serving url configured"
    out = steps.deploy({"published": False})
    assert out["deployed"] is False and out["reason"] == "nothing new was published"
