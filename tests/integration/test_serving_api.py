"""The HTTP API on a real uvicorn server (embedded online store), talked to over HTTP with httpx."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from strata.registry import Registry
from strata.serving.app import create_app
from tests.unit.serving_support import (
    DATASET,
    TOKEN,
    LiveServer,
    copy_version,
    serving_settings,
    tiny_world,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    s = serving_settings(tmp_path_factory.mktemp("api"))
    with LiveServer(create_app(s)) as live:
        yield live.url, s


@pytest.fixture
def http(server: tuple[str, object]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0], timeout=30) as c:
        yield c


def _field(r: httpx.Response) -> str:
    assert r.status_code == 422, r.text
    return str(r.json()["detail"][0]["field"])


def test_recommend_get_and_post(http: httpx.Client) -> None:
    r = http.get("/recommend", params={"user_id": 1, "k": 5, "device": "mobile", "ts": 10**9})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_id"] == 1 and len(body["items"]) == 5 and body["model_version"] == "v0001"
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)
    first = body["items"][0]
    assert set(first["scores"]) == {"retrieval", "ranker"} and first["score"] == pytest.approx(
        first["scores"]["ranker"]
    )
    for stage in ("context", "user_features", "query_tower", "retrieve", "filter", "rank"):
        assert body["timings_ms"][stage] >= 0
    assert body["degraded"] is False and body["degraded_reason"] is None
    post = http.post("/recommend", json={"user_id": 1, "k": 5, "device": "mobile", "ts": 10**9})
    assert [i["item_id"] for i in post.json()["items"]] == [i["item_id"] for i in body["items"]]
    anon = http.post("/recommend", json={"k": 3})
    assert anon.status_code == 200 and anon.json()["user_features"] == "anonymous"
    assert len(anon.json()["items"]) == 3
    default_k = http.get("/recommend", params={"user_id": 2}).json()
    assert len(default_k["items"]) == 10  # serve.k_default


@pytest.mark.parametrize(
    ("method", "kwargs", "field"),
    [
        ("get", {"params": {"user_id": 1, "k": 0}}, "k"),
        ("get", {"params": {"user_id": 1, "k": 101}}, "k"),
        ("get", {"params": {"user_id": "abc"}}, "user_id"),
        ("get", {"params": {"user_id": -3}}, "user_id"),
        ("get", {"params": {"user_id": 1, "colour": "red"}}, "colour"),
        ("get", {"params": {"user_id": 1, "device": "toaster"}}, "device"),
        ("post", {"json": {"user_id": 1, "k": "five"}}, "k"),
        ("post", {"json": {"user_id": 1, "k": 500}}, "k"),
        ("post", {"json": {"user_id": 1, "flavour": 1}}, "flavour"),
        ("post", {"json": {"user_id": 1.5}}, "user_id"),
        ("post", {"json": {"user_id": 1, "stage": "everything"}}, "stage"),
        ("get", {"params": {"user_id": 1, "seed": -1}}, "seed"),
        ("get", {"params": {"user_id": 1, "seed": 2**63}}, "seed"),
        ("post", {"json": {"user_id": 1, "seed": "7"}}, "seed"),
    ],
)
def test_bad_recommend_input_is_422_naming_the_field(
    http: httpx.Client, method: str, kwargs: dict, field: str
) -> None:
    assert _field(getattr(http, method)("/recommend", **kwargs)) == field


def test_bad_events_are_422_naming_the_field(http: httpx.Client) -> None:
    ok = {"event_id": "b1", "user_id": 1, "item_id": 3, "type": "click", "ts": 5}
    assert _field(http.post("/events", json={**ok, "item_id": 999_999})) == "item_id"
    assert _field(http.post("/events", json={**ok, "type": "teleport"})) == "type"
    assert _field(http.post("/events", json={**ok, "mood": "happy"})) == "mood"
    assert _field(http.post("/events", json={**ok, "user_id": "one"})) == "user_id"
    batch = [ok, {**ok, "event_id": "b2", "item_id": 123_456}]
    assert _field(http.post("/events", json=batch)) == "[1].item_id"
    assert _field(http.post("/events", json=[])) == "body"
    bad_json = http.post(
        "/events", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert _field(bad_json) == "body"
    # Nothing of a rejected batch was applied: the valid first event is still new.
    assert http.post("/events", json=ok).json()["new"] == 1


def test_event_effect_is_visible_to_the_next_request(http: httpx.Client) -> None:
    before = http.get("/recommend", params={"user_id": 11, "k": 10}).json()
    top = before["items"][0]["item_id"]
    ev = {"event_id": "vis-1", "user_id": 11, "item_id": top, "type": "click", "ts": 10**9}
    r = http.post("/events", json=ev)
    assert r.status_code == 200
    assert r.json() == {"accepted": 1, "new": 1, "duplicates": 0, "deferred": 0}
    after = http.get("/recommend", params={"user_id": 11, "k": 10}).json()
    assert top not in [i["item_id"] for i in after["items"]]
    # Idempotent by event_id; a batch is accepted in one call.
    assert http.post("/events", json=ev).json()["new"] == 0
    batch = [{**ev, "event_id": f"vis-b{i}", "item_id": it["item_id"]}
             for i, it in enumerate(after["items"][:3])]  # fmt: skip
    assert http.post("/events", json=batch).json()["new"] == 3
    final = http.get("/recommend", params={"user_id": 11, "k": 10}).json()
    assert not {b["item_id"] for b in batch} & {i["item_id"] for i in final["items"]}


def test_events_that_cannot_be_logged_are_queued_or_refused_with_503(tmp_path: Path) -> None:
    """Embedded mode with the event log unwritable (a directory in its place): events go to
    the outbox (202) and are applied once the log is back; with the outbox unwritable too,
    nothing is acknowledged: 503 with Retry-After."""
    s = serving_settings(tmp_path)
    log, outbox = s.events_dir / "events.jsonl", s.events_dir / "events.outbox.jsonl"
    with LiveServer(create_app(s)) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        top = c.get("/recommend", params={"user_id": 12, "k": 10}).json()["items"][0]["item_id"]
        ev = {"event_id": "d-1", "user_id": 12, "item_id": top, "type": "click", "ts": 10**9}
        log.mkdir(parents=True)
        outbox.mkdir()
        refused = c.post("/events", json=ev)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "outbox" in refused.json()["detail"][0]["msg"]
        outbox.rmdir()
        queued = c.post("/events", json=ev)
        assert queued.status_code == 202, queued.text
        assert queued.json() == {"accepted": 1, "new": 0, "duplicates": 0, "deferred": 1}
        assert [json.loads(x)["event_id"] for x in outbox.open()] == ["d-1"]
        log.rmdir()  # the log is writable again: the upkeep task drains the outbox

        def applied() -> bool:
            items = c.get("/recommend", params={"user_id": 12, "k": 10}).json()["items"]
            return outbox.stat().st_size == 0 and top not in [i["item_id"] for i in items]

        deadline = time.monotonic() + 10
        while not applied():
            assert time.monotonic() < deadline, "deferred event was never applied"
            time.sleep(0.05)
        assert [json.loads(x)["event_id"] for x in log.open()] == ["d-1"]
        assert c.post("/events", json=ev).json()["duplicates"] == 1


def test_items_health_ready_metrics(http: httpx.Client) -> None:
    ds = tiny_world()
    item = http.get("/items/3")
    assert item.status_code == 200
    want = ds.items.set_index("item_id").loc[3, "genres"]
    assert item.json()["genres"] == list(want)
    assert http.get("/items/99999").status_code == 404
    assert _field(http.get("/items/abc")) == "item_id"
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    http.get("/recommend", params={"user_id": 1})
    text = http.get("/metrics").text
    assert 'strata_http_request_duration_seconds_bucket{endpoint="/recommend"' in text
    assert 'strata_recommend_stage_duration_seconds_count{stage="rank"}' in text
    assert 'strata_http_requests_total{endpoint="/recommend",method="GET",status="422"}' in text
    assert 'strata_model_info{dataset="tiny",index="exact",version="v0001"} 1.0' in text


def test_reload_requires_token_and_swaps_without_failures(tmp_path: Path) -> None:
    # The pointer follower (which would also pick v0002 up within a poll) kept out of the way:
    # this is the admin endpoint's own swap; tests/cluster covers following.
    s = serving_settings(tmp_path, follow_poll_s=3600.0)
    with LiveServer(create_app(s)) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        assert c.post("/admin/reload").status_code == 401
        wrong = c.post("/admin/reload", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        Registry(s.registry_dir, DATASET).promote(copy_version(s))
        statuses: list[int] = []
        versions: set[str] = set()
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=live.url, timeout=30) as lc:
                while not stop.is_set():
                    r = lc.get("/recommend", params={"user_id": 5, "k": 5})
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        versions.add(r.json()["model_version"])

        workers = [threading.Thread(target=load) for _ in range(3)]
        for w in workers:
            w.start()
        auth = {"Authorization": f"Bearer {TOKEN}"}
        results = [c.post("/admin/reload", headers=auth) for _ in range(3)]
        after = c.get("/recommend", params={"user_id": 5}).json()
        stop.set()
        for w in workers:
            w.join()
        assert [r.status_code for r in results] == [200, 200, 200]
        assert results[0].json() == {**results[0].json(), "previous": "v0001", "version": "v0002"}
        assert after["model_version"] == "v0002"
        assert statuses and set(statuses) == {200}
        assert "v0002" in versions
        assert 'version="v0002"' in c.get("/metrics").text


def test_seed_makes_a_request_repeatable(tmp_path: Path) -> None:
    """With sampling diversity a list is random per request; the same `seed` repeats it (GET
    and POST alike) and other seeds draw other lists."""
    from strata.config import DiversityConfig

    s = serving_settings(tmp_path, diversity=DiversityConfig(type="sample", temperature=1.0))
    with LiveServer(create_app(s)) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        params = {"user_id": 3, "k": 10, "ts": 10**9, "seed": 11}
        first = [it["item_id"] for it in c.get("/recommend", params=params).json()["items"]]
        again = [it["item_id"] for it in c.post("/recommend", json=params).json()["items"]]
        assert first == again
        lists = {
            tuple(it["item_id"] for it in c.get("/recommend", params={**params, "seed": seed})
                  .json()["items"])
            for seed in range(5)
        }  # fmt: skip
        assert len(lists) > 1


def test_registry_lists_versions_pointer_and_gate_decisions(
    server: tuple[str, object], http: httpx.Client
) -> None:
    """GET /registry: the versions newest first with their metrics, the pointer, the version
    this replica serves, and the last gate decisions (a torn last line is skipped)."""
    _, settings = server
    reg = Registry(settings.registry_dir, DATASET)  # type: ignore[attr-defined]
    body = http.get("/registry").json()
    assert body["serving"] == body["this_replica"] == reg.serving()
    assert [v["version"] for v in body["versions"]] == list(reversed(reg.versions()))
    assert "ranker_auc_valid" in body["versions"][-1]["metrics"]
    reg.append_log({"kind": "incremental", "accepted": False, "reasons": ["recall fell"]})
    with (reg.dir / "decisions.jsonl").open("a") as fh:
        fh.write('{"kind": "incremen')  # a record being written
    decisions = http.get("/registry", params={"last": 5}).json()["decisions"]
    assert decisions[-1]["reasons"] == ["recall fell"]
    assert http.get("/registry", params={"last": 0}).status_code == 422


def test_replicas_lists_this_replica_alone_in_the_embedded_mode(
    server: tuple[str, object], http: httpx.Client
) -> None:
    """GET /replicas without a shared store: this replica, with what it serves."""
    ready = http.get("/readyz").json()
    body = http.get("/replicas").json()
    assert body["error"] is None and [m["replica"] for m in body["replicas"]] == [body["self"]]
    (me,) = body["replicas"]
    assert me["model_version"] == ready["model_version"] and me["dataset"] == ready["dataset"]
    assert me["item_feature_version"] == ready["item_feature_version"]
    assert me["live_items"] == me["live_revision"] == 0 and me["degraded"] is False


def test_item_image_takes_the_catalogues_ids(http: httpx.Client) -> None:
    """GET /items/{id}/image: 422 naming item_id for a non-integer id of an integer dataset,
    404 for an item without a poster or outside the catalogue."""
    r = http.get("/items/abc/image")
    assert r.status_code == 422 and "item_id" in r.text
    assert http.get("/items/3/image").status_code == 404
    assert http.get(f"/items/{2**64}/image").status_code == 404
