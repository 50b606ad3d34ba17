"""Deploying a published recommender version: ask the serving app to reload
(`POST /admin/reload` with the admin token) and, on a cluster (`pipelines.k8s_namespace`), roll
the serving Deployment onto it. Without a serving URL or a cluster the new version is picked up
at the app's next start; that outcome is reported, not hidden."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from strata.errors import StrataError

if TYPE_CHECKING:
    from strata.config import Settings


class DeployError(StrataError):
    """The serving app did not take the new version."""


def deploy_version(s: Settings, published: dict[str, Any], serving_url: str = "") -> dict[str, Any]:
    """Deploy what `publish` published (a no-op report when nothing was)."""
    import httpx

    cfg = s.pipelines
    url = serving_url or cfg.serving_url
    if not published.get("published"):
        return {"decision": published, "deployed": False, "reason": "nothing new was published"}
    cluster = None
    # The configured Deployment serves the recommender; CTR versions do not roll it.
    if cfg.k8s_namespace and published.get("kind") != "ctr_incremental":
        from strata.pipelines.kube import apply_serving

        cluster = apply_serving(cfg.k8s_namespace, cfg.k8s_deployment, str(published["version"]))
    if not url:
        if cluster is not None:
            return {"decision": published, "deployed": True, "cluster": cluster}
        return {"decision": published, "deployed": False, "reason": "no serving url configured"}
    token = s.serve.admin_token
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
    try:
        r = httpx.post(url.rstrip("/") + "/admin/reload", headers=headers, timeout=120.0)
    except httpx.HTTPError as exc:
        raise DeployError(f"{url}: reload failed: {exc}") from None
    if r.status_code != 200:
        raise DeployError(f"{url}: reload answered {r.status_code}: {r.text[:200]}")
    return {"decision": published, "deployed": True, "response": r.json(), "cluster": cluster}
