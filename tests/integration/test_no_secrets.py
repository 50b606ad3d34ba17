"""No secret ever leaves the process: with an admin token, a Valkey password and S3 keys set to
distinctive random values (from the environment, as a pod gets them), a real server and the
`strata` CLI are driven into their error paths (wrong token, bad input, the store gone, the store
refusing the password, an unreachable store URL) and every log record (DEBUG and up), response
(headers and body), `/metrics` and CLI output is searched for those values."""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from strata.config import Settings, ValkeyOnlineConfig
from strata.features.online.valkey import shown_url
from strata.serving.app import create_app
from tests.unit.serving_support import LiveServer, free_port, serving_settings

from .conftest import PrivateValkey

pytestmark = pytest.mark.integration
STRATA = str(Path(sys.executable).with_name("strata"))


def _secrets() -> dict[str, str]:
    return {
        "STRATA_SERVE__ADMIN_TOKEN": f"adm{secrets.token_hex(12)}",
        "STRATA_ONLINE__PASSWORD": f"vkp{secrets.token_hex(12)}",
        "AWS_ACCESS_KEY_ID": f"AKIA{secrets.token_hex(8).upper()}",
        "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
    }


def _leaks(texts: list[str], values: dict[str, str]) -> list[str]:
    return [f"{name} in: {t[:300]!r}" for t in texts for name, v in values.items() if v in t]


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STRATA, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_no_secret_in_logs_bodies_metrics_or_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    values = _secrets()
    (tmp_path / "vk").mkdir()
    vk = PrivateValkey(tmp_path / "vk", password=values["STRATA_ONLINE__PASSWORD"])
    vk.start()
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("STRATA_ONLINE__TYPE", "valkey")
    monkeypatch.setenv("STRATA_ONLINE__URL", vk.url)
    env_settings = Settings()  # the secrets as a pod gets them: from its environment
    online = env_settings.online
    assert isinstance(online, ValkeyOnlineConfig) and online.password is not None
    admin = env_settings.serve.admin_token
    s = serving_settings(tmp_path / "home", admin_token=admin)
    s = s.model_copy(update={"online": online})
    assert values["STRATA_ONLINE__PASSWORD"] not in repr(s) + str(s.model_dump())

    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    good = {"Authorization": f"Bearer {values['STRATA_SERVE__ADMIN_TOKEN']}"}
    try:
        with LiveServer(create_app(s)) as live, httpx.Client(base_url=live.url, timeout=30) as c:

            def hit(method: str, path: str, **kw: object) -> httpx.Response:
                r = c.request(method, path, **kw)  # type: ignore[arg-type]
                seen.append(f"{method} {path} {r.status_code} {dict(r.headers)} {r.text}")
                return r

            first = hit("GET", "/recommend", params={"user_id": 4, "k": 5})
            assert first.status_code == 200 and first.json()["degraded"] is False  # password ok
            assert hit("POST", "/admin/reload", headers=good).status_code == 200  # token ok
            assert (
                hit("POST", "/admin/reload", headers={"Authorization": "Bearer x"}).status_code
                == 401
            )
            token = values["STRATA_SERVE__ADMIN_TOKEN"]
            assert hit("POST", "/items", headers={"Authorization": f"Basic {token}"},
                       json={"item_id": 1}).status_code == 401  # fmt: skip
            assert hit("POST", "/items", headers=good, json={"item_id": "x"}).status_code == 422
            assert hit("GET", "/items/abc").status_code == 422
            assert hit("POST", "/events", content=b"{not json").status_code == 422
            assert hit("GET", "/recommend", params={"k": "many"}).status_code == 422

            vk.stop()  # the store is gone
            ready = hit("GET", "/readyz").json()
            assert ready["degraded"] is True and any("online store" in r for r in ready["reasons"])
            assert hit("GET", "/recommend", params={"user_id": 4}).json()["degraded"] is True
            ev = {"event_id": "s-1", "user_id": 4, "item_id": 1, "type": "click", "ts": 10**9}
            assert hit("POST", "/events", json=ev).status_code == 202

            # back with another password: the replica's password is now refused
            vk.password = f"other{secrets.token_hex(6)}"
            vk.start()
            refused = False
            deadline = time.monotonic() + 20
            while not refused and time.monotonic() < deadline:
                reasons = hit("GET", "/readyz").json()["reasons"]
                refused = any("refused the password" in r for r in reasons)
                time.sleep(0.2)
            assert refused, "the store's refusal never showed in /readyz"
            hit("GET", "/recommend", params={"user_id": 4})
            hit("GET", "/replicas")
            hit("POST", "/admin/reload", headers=good)
            metrics = hit("GET", "/metrics")
            assert metrics.status_code == 200 and "strata_http_requests_total" in metrics.text
    finally:
        vk.stop()

    fmt = logging.Formatter("%(name)s %(levelname)s %(message)s")
    logs = [fmt.format(r) for r in caplog.records]  # with tracebacks, when a record has one
    assert logs, "nothing was logged: the log check would be vacuous"

    # The CLI, with the same environment, against stores it cannot use.
    env = {**os.environ, **values, "STRATA_HOME": str(tmp_path / "home"),
           "STRATA_ONLINE__TYPE": "valkey"}  # fmt: skip
    events = tmp_path / "ev.jsonl"
    events.write_text('{"event_id":"c-1","user_id":1,"item_id":2,"type":"click","ts":1000000000}\n')
    closed = free_port()
    url_secret = secrets.token_hex(10)
    runs = {
        "unreachable": _cli(
            ["events", "ingest", str(events), "--online", f"redis://127.0.0.1:{closed}/0"],
            env, tmp_path,
        ),
        "password in the URL": _cli(
            ["events", "ingest", str(events)],
            {**env, "STRATA_ONLINE__URL": f"redis://:{url_secret}@127.0.0.1:{closed}/0"},
            tmp_path,
        ),
        "bad setting": _cli(["events", "ingest", str(events)],
                            {**env, "STRATA_ONLINE__TIMEOUT_MS": "-1"}, tmp_path),
        "pipeline compile": _cli(["pipeline", "compile", "--out", str(tmp_path / "kfp")],
                                 env, tmp_path),
    }  # fmt: skip
    for name, run in list(runs.items())[:3]:
        assert run.returncode == 2, (name, run.stdout, run.stderr)
        assert run.stderr.startswith("error: ") and run.stderr.count("\n") == 1, run.stderr
    assert "online store redis://:***@127.0.0.1" in runs["password in the URL"].stderr
    assert runs["pipeline compile"].returncode == 0, runs["pipeline compile"].stderr
    compiled = [p.read_text() for p in sorted((tmp_path / "kfp").glob("*.yaml"))]
    assert compiled and "STRATA_ONLINE__PASSWORD" in compiled[0]  # by Secret reference only
    cli = [f"{n}: {r.stdout} {r.stderr}" for n, r in runs.items()]

    leaks = _leaks(seen + logs + cli + compiled, {**values, "url password": url_secret})
    assert not leaks, "\n".join(leaks)


def test_urls_are_shown_without_their_password() -> None:
    assert shown_url("redis://:hunter2@h:6379/0") == "redis://:***@h:6379/0"
    assert shown_url("rediss://default:p@ss:w@h:1/0") == "rediss://default:***@h:1/0"
    assert shown_url("redis://h:6379/0") == "redis://h:6379/0"
    assert shown_url("redis://user@h:6379/0") == "redis://user@h:6379/0"
