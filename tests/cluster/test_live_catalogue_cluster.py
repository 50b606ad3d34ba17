"""The live catalogue on two `strata serve` replicas sharing one home and one Valkey: an item
added through one replica is served by both at once (a fresh slot for every user: the version
has no other fresh item), its events are accepted, an update re-embeds it, a retirement removes
it from every list while its events are still accepted, and a restarted replica comes back with
it. Bad input is a 422 naming the field and writes nothing."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator

import httpx
import pytest

from strata.features.live_items import LiveCatalogue
from tests.unit.serving_support import DATASET, TOKEN, serving_settings

from .conftest import Cluster, running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.multiprocess]

AUTH = {"Authorization": f"Bearer {TOKEN}"}
NEW = 5000  # not an id of the tiny catalogue (1..80)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("live"), 2, "l") as c:
        yield c


def _png() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 48), (10, 120, 200)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _fresh_slot(url: str, user: int = 3) -> list[int]:
    """Item ids of the full pipeline's top 20 (the fresh slot is position 10)."""
    r = httpx.get(url + "/recommend", params={"user_id": user, "k": 20}, timeout=10)
    assert r.status_code == 200, r.text
    return [int(x["item_id"]) for x in r.json()["items"]]


def _wait(cond, timeout: float = 10.0) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.1)
    return time.monotonic() - t0


def test_add_serve_update_retire_and_restart(pair: Cluster) -> None:
    a, b = pair.replicas
    assert all(NEW not in _fresh_slot(r.url) for r in pair.replicas)
    body = {"item_id": NEW, "title": "Night Shift", "genres": ["Horror", "Drama"],
            "year": 1998, "image_base64": _png()}  # fmt: skip
    t0 = time.monotonic()
    r = httpx.post(a.url + "/items", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 201, r.text
    took = time.monotonic() - t0
    assert r.json()["item"]["image"].endswith(".png") and r.json()["live_items"] == 1
    assert _fresh_slot(a.url)[10] == NEW  # this replica: at once
    other = _wait(lambda: NEW in _fresh_slot(b.url))  # the other: signal or poll
    print(f"POST /items -> retrievable: {took * 1000:.0f} ms on the replica that took it, "
          f"+{other * 1000:.0f} ms on the other")  # fmt: skip
    item = httpx.get(b.url + f"/items/{NEW}", timeout=10).json()
    assert item["genres"] == ["Drama", "Horror"] and item["live"]["title"] == "Night Shift"
    ev = {"event_id": "live-1", "user_id": 3, "item_id": NEW, "type": "click", "ts": 2_000_000_000}
    assert httpx.post(b.url + "/events", json=ev, timeout=10).status_code == 200

    r = httpx.patch(b.url + f"/items/{NEW}", json={"title": "Night Shift (director's cut)"},
                    headers=AUTH, timeout=60)  # fmt: skip
    assert r.status_code == 200 and r.json()["item"]["year"] == 1998, r.text  # partial update
    _wait(lambda: httpx.get(a.url + f"/items/{NEW}").json()["live"]["title"].endswith("cut)"))

    r = httpx.delete(a.url + f"/items/{NEW}", headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    for rep in pair.replicas:
        _wait(lambda rep=rep: NEW not in _fresh_slot(rep.url, user=5))
        got = httpx.get(rep.url + "/recommend", timeout=10,
                        params={"user_id": 5, "k": 100, "stage": "retrieval"}).json()  # fmt: skip
        ids = [x["item_id"] for x in got["items"]]
        assert NEW not in ids and len(ids) >= 50  # the unseen rest of the catalogue
    ev2 = {**ev, "event_id": "live-2"}
    assert httpx.post(a.url + "/events", json=ev2, timeout=10).status_code == 200  # still taken

    a.stop()  # a restarted replica rebuilds the live catalogue from the shared log
    a.start()
    a.wait_ready()
    info = httpx.get(a.url + f"/items/{NEW}", timeout=10).json()
    assert info["live"]["retired"] is True and info["live"]["title"].endswith("cut)")
    assert NEW not in _fresh_slot(a.url)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"item_id": NEW + 1, "title": "x", "genres": ["Western"]}, "genres"),
        ({"item_id": 3, "title": "x"}, "item_id"),  # in the trained catalogue
        ({"item_id": NEW + 1, "title": "  "}, "title"),
        ({"item_id": NEW + 1, "title": "x", "image_base64": "bm90IGFuIGltYWdl"}, "image"),
        ({"item_id": NEW + 1, "title": "x", "image_base64": "%%%"}, "image_base64"),
        ({"item_id": NEW + 1, "title": "x", "image": "../../etc/passwd"}, "image"),
        ({"item_id": -4, "title": "x"}, "item_id"),
        ({"item_id": NEW + 1, "title": "x", "colour": "red"}, "colour"),
    ],
)
def test_bad_items_are_422_naming_the_field_and_write_nothing(
    pair: Cluster, body: dict, field: str
) -> None:
    cat = LiveCatalogue(serving_settings(pair.home), DATASET)
    before = cat.revision
    r = httpx.post(pair.replicas[0].url + "/items", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 422, r.text
    assert field in r.text
    assert cat.revision == before


def test_the_catalogue_needs_the_admin_token(pair: Cluster) -> None:
    url = pair.replicas[1].url
    body = {"item_id": NEW + 2, "title": "x"}
    assert httpx.post(url + "/items", json=body, timeout=10).status_code == 401
    bad = {"Authorization": "Bearer nope"}
    assert httpx.delete(url + f"/items/{NEW}", headers=bad, timeout=10).status_code == 401
    assert httpx.patch(url + "/items/99999", json={"title": "y"}, headers=AUTH,
                       timeout=10).status_code == 404  # fmt: skip
