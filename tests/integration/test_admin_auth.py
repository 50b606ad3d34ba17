"""The admin surface on a real server: every route that changes what is served (found from the
OpenAPI schema, so a new admin route is covered by itself) answers 403 when no admin token is
configured, never open, and 401 for a missing, wrong or differently-schemed token, before its
body or path is looked at."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from strata.serving.app import create_app
from tests.unit.serving_support import TOKEN, LiveServer, serving_settings

pytestmark = pytest.mark.integration
#: Admin routes known today; the schema must list at least these as admin (401).
KNOWN = {("POST", "/admin/reload"), ("POST", "/items"), ("PATCH", "/items/{item_id}"),
         ("DELETE", "/items/{item_id}")}  # fmt: skip
# A body that would be a 422 (or a real change) if the token check came after it.
BODY: dict[str, Any] = {"item_id": 999_999, "title": "x", "genres": ["nope"]}


def _admin_routes(schema: dict[str, Any]) -> set[tuple[str, str]]:
    """(method, path) of every operation whose documented answers include 401."""
    return {
        (method.upper(), path)
        for path, ops in schema["paths"].items()
        for method, op in ops.items()
        if "401" in op.get("responses", {})
    }


def _call(c: httpx.Client, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    url = path.replace("{item_id}", "1")
    body = BODY if method in ("POST", "PATCH") else None
    return c.request(method, url, json=body, headers=headers)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Three live servers: admin token set, none configured, configured empty."""
    urls: dict[str, str] = {}
    settings = {
        "token": serving_settings(tmp_path_factory.mktemp("token")),
        "none": serving_settings(tmp_path_factory.mktemp("none"), admin_token=None),
        "empty": serving_settings(tmp_path_factory.mktemp("empty"), admin_token=""),
    }
    lives = {k: LiveServer(create_app(s, ctr=True)) for k, s in settings.items()}
    try:
        for k, live in lives.items():
            live.__enter__()
            urls[k] = live.url
        yield urls
    finally:
        for live in lives.values():
            if live.thread.is_alive():
                live.__exit__()


def _routes(url: str) -> set[tuple[str, str]]:
    with httpx.Client(base_url=url, timeout=30) as c:
        routes = _admin_routes(c.get("/openapi.json").json())
    assert routes >= KNOWN, f"admin routes missing from the schema: {KNOWN - routes}"
    return routes


@pytest.mark.parametrize("which", ["none", "empty"])
def test_without_a_token_every_admin_route_is_forbidden(
    servers: dict[str, str], which: str
) -> None:
    # An empty STRATA_SERVE__ADMIN_TOKEN (an empty Secret) must not mean "any bearer passes".
    url = servers[which]
    tries = [{}, {"Authorization": "Bearer"}, {"Authorization": f"Bearer {TOKEN}"}]
    with httpx.Client(base_url=url, timeout=30) as c:
        for method, path in sorted(_routes(url)):
            for headers in tries:
                r = _call(c, method, path, headers)
                assert r.status_code == 403, (method, path, headers, r.text)
                assert "disabled" in r.json()["detail"][0]["msg"]
        assert c.get("/items/1").status_code in (200, 404)  # reads stay open


def test_a_missing_or_wrong_token_is_unauthorized(servers: dict[str, str]) -> None:
    url = servers["token"]
    tries = [{}, {"Authorization": "Bearer"}, {"Authorization": "Bearer wrong"},
             {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Bearer {TOKEN[:-1]}"},
             {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN},
             {"X-Admin-Token": TOKEN}]  # fmt: skip
    with httpx.Client(base_url=url, timeout=30) as c:
        for method, path in sorted(_routes(url)):
            for headers in tries:
                r = _call(c, method, path, headers)
                assert r.status_code == 401, (method, path, headers, r.text)
                assert r.headers["www-authenticate"] == "Bearer"
        # the right token gets past the check: the body is looked at only then (422)
        r = c.post("/items", json=BODY, headers={"Authorization": f"bearer  {TOKEN}"})
        assert r.status_code == 422, r.text
        assert c.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}).is_success


def test_the_ctr_service_has_no_admin_route(servers: dict[str, str]) -> None:
    # The /ctr/* routes (mounted here, and the standalone `strata ctr serve`) change nothing an
    # operator owns: if one ever documents 401 it must be in KNOWN and tested above.
    with httpx.Client(base_url=servers["token"], timeout=30) as c:
        schema = c.get("/openapi.json").json()
    ctr = {p for p in schema["paths"] if p.startswith("/ctr/")}
    assert ctr, "the CTR routes are not mounted"
    assert not {r for r in _admin_routes(schema) if r[1].startswith("/ctr/")}
