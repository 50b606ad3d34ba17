"""Deploy on a Kubernetes cluster: roll the serving Deployment onto a new model version.

Serving pods load the registry's serving version at start, so a rollout (a changed pod-template
annotation) is how every replica picks up a new version; a missing Deployment is created from
the project's manifest. The patch and manifest are built by pure functions (tested); only
`apply_serving` talks to the API server, through the `kubernetes` client that kfp installs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from strata.errors import StrataError

VERSION_ANNOTATION = "strata.io/model-version"


class ClusterDeployError(StrataError):
    """The serving Deployment could not be read, patched or created on the cluster."""


def rollout_patch(version: str) -> dict[str, Any]:
    """Strategic-merge patch that sets the model-version annotation on the pod template."""
    return {"spec": {"template": {"metadata": {"annotations": {VERSION_ANNOTATION: version}}}}}


def serving_manifest(path: Path, namespace: str, name: str, version: str) -> dict[str, Any]:
    """The Deployment named `name` from the YAML at `path`, in `namespace`, annotated with
    `version` (what gets created when the cluster has no serving Deployment yet)."""
    import yaml

    try:
        docs = list(yaml.safe_load_all(path.read_text()))
    except (OSError, yaml.YAMLError) as exc:
        raise ClusterDeployError(f"{path}: cannot read serving manifest: {exc}") from None
    found = [
        d for d in docs
        if isinstance(d, dict) and d.get("kind") == "Deployment"
        and d.get("metadata", {}).get("name") == name
    ]  # fmt: skip
    if len(found) != 1:
        raise ClusterDeployError(f"{path}: expected one Deployment {name!r}, found {len(found)}")
    dep = copy.deepcopy(found[0])
    dep["metadata"]["namespace"] = namespace
    meta = dep["spec"]["template"].setdefault("metadata", {})
    meta.setdefault("annotations", {})[VERSION_ANNOTATION] = version
    return dep


def apply_serving(namespace: str, name: str, version: str, manifest: Path) -> dict[str, Any]:
    """Patch the serving Deployment's annotation (rolling restart), or create it if absent."""
    try:
        import urllib3
        from kubernetes import client, config
        from kubernetes.client.exceptions import ApiException
        from kubernetes.config.config_exception import ConfigException
    except ImportError:
        from strata.errors import MissingExtraError

        raise MissingExtraError("kubernetes", "pipelines") from None
    try:
        try:
            config.load_incluster_config()  # a pipeline step running in the cluster
        except ConfigException:
            config.load_kube_config()  # a workstation with a kubeconfig
        apps = client.AppsV1Api()
        try:
            apps.read_namespaced_deployment(name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = serving_manifest(manifest, namespace, name, version)
            apps.create_namespaced_deployment(namespace, body)
            return {"namespace": namespace, "deployment": name, "action": "created"}
        apps.patch_namespaced_deployment(name, namespace, rollout_patch(version))
    except (ApiException, ConfigException, OSError, urllib3.exceptions.HTTPError) as exc:
        raise ClusterDeployError(f"deployment {namespace}/{name}: {exc}") from None
    return {"namespace": namespace, "deployment": name, "action": "patched"}
