"""Cluster deploy: the rollout patch (a pure function; no API server is reachable here) and the
deploy step's reports without a serving URL or cluster."""

from __future__ import annotations

import pytest

from strata.pipelines.kube import VERSION_ANNOTATION, rollout_patch


def test_rollout_patch_changes_only_the_pod_template_annotation() -> None:
    assert rollout_patch("v0007") == {
        "spec": {"template": {"metadata": {"annotations": {VERSION_ANNOTATION: "v0007"}}}}
    }
    # A new version is a different pod template, so the Deployment rolls; same version, no-op.
    assert rollout_patch("v0007") != rollout_patch("v0008")


def test_deploy_step_reports_without_url_or_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    from strata.pipelines import steps

    monkeypatch.delenv("STRATA_PIPELINES__SERVING_URL", raising=False)
    monkeypatch.delenv("STRATA_PIPELINES__K8S_NAMESPACE", raising=False)
    out = steps.deploy({"published": True, "version": "v0002"})
    assert out["deployed"] is False and out["reason"] == "no serving url configured"
    out = steps.deploy({"published": False})
    assert out["deployed"] is False and out["reason"] == "nothing new was published"
