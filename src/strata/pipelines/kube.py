"""Deploy on a Kubernetes cluster: roll the serving Deployment onto a new model version.

Serving replicas follow the registry's serving pointer by themselves; the rollout (a changed
pod-template annotation) also records the version on the Deployment and restarts replicas that
missed the signal. The Deployment belongs to the Helm chart (deploy/helm/strata): a missing one
is an error naming the fix, never created here (an object made outside the release would block
the next `helm upgrade`). The patch is built by a pure function (tested); only `apply_serving`
talks to the API server, through the `kubernetes` client that kfp installs.
"""

from __future__ import annotations

from typing import Any

from strata.errors import StrataError

VERSION_ANNOTATION = "strata.io/model-version"


class ClusterDeployError(StrataError):
    """The serving Deployment could not be patched (absent, forbidden, unreachable API server)."""


def rollout_patch(version: str) -> dict[str, Any]:
    """Strategic-merge patch that sets the model-version annotation on the pod template."""
    return {"spec": {"template": {"metadata": {"annotations": {VERSION_ANNOTATION: version}}}}}


def apply_serving(namespace: str, name: str, version: str) -> dict[str, Any]:
    """Patch the serving Deployment's annotation (rolling restart)."""
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
            apps.patch_namespaced_deployment(name, namespace, rollout_patch(version))
        except ApiException as exc:
            if exc.status != 404:
                raise
            raise ClusterDeployError(
                f"deployment {namespace}/{name} not found: install the chart first "
                f"(helm install strata deploy/helm/strata -n {namespace})"
            ) from None
    except (ApiException, ConfigException, OSError, urllib3.exceptions.HTTPError) as exc:
        raise ClusterDeployError(f"deployment {namespace}/{name}: {exc}") from None
    return {"namespace": namespace, "deployment": name, "action": "patched"}
