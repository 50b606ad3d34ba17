"""Bring your own data, end to end as a new user runs it, every step a real `strata` process: a
generated shop (string SKU/customer ids, millisecond timestamps, view / add-to-cart / purchase
events with weights, price, brand, a two-level category, descriptions, product images) ->
`data add` -> `features build` -> `features encode` -> `train` -> `evaluate` (beats popularity on
held-out interactions) -> `recommend` and `serve`, both speaking the shop's own ids."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

pytestmark = pytest.mark.e2e

STRATA = Path(sys.executable).with_name("strata")


def _run(env: dict[str, str], *args: str, timeout: int = 600) -> str:
    r = subprocess.run([str(STRATA), *args], env=env, capture_output=True, text=True,
                       timeout=timeout)  # fmt: skip
    assert r.returncode == 0, f"strata {' '.join(args)}: {r.stderr[-3000:]}"
    return r.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_shop_from_its_own_files_to_recommendations_in_its_own_ids(tmp_path: Path) -> None:
    env = {**os.environ, "STRATA_HOME": str(tmp_path / "home")}
    shop = tmp_path / "shop"
    # A world with known tastes and a flatter popularity curve than the default, so that
    # personal taste, not the global best-sellers, decides most held-out interactions.
    _run(env, "data", "generate", "--out", str(shop), "--users", "600", "--items", "300",
         "--events", "30000", "--zipf", "0.6")  # fmt: skip
    out = _run(env, "data", "add", "shop", "--spec", str(shop / "spec.yaml"), "--json")
    report = json.loads(out)
    assert report["usable_interactions"] == 30_000
    assert set(report["interactions"]["event_types"]) == {"view", "add_to_cart", "purchase"}

    built = json.loads(_run(env, "features", "build", "--dataset", "shop"))
    assert built["items"] == 300 and built["params"]["event_types"] == [
        "add_to_cart", "purchase", "view",
    ]  # fmt: skip
    features = pd.read_parquet(Path(built["path"]) / "user_features.parquet")
    assert {"user_n_view", "user_n_add_to_cart", "user_n_purchase"} <= set(features.columns)
    assert features["user_n_purchase"].sum() > 0
    enc = json.loads(_run(env, "features", "encode", "--dataset", "shop"))
    assert enc["has_text"] == 300 and 200 < enc["has_image"] < 300  # a tenth have no image

    events = pd.read_json(shop / "events.jsonl", lines=True)
    until = int(events["ts_ms"].quantile(0.8) // 1000)
    trained = json.loads(_run(env, "train", "--dataset", "shop", "--until", str(until), "--json"))
    assert trained["version"] == "v0001"
    ev = json.loads(_run(env, "evaluate", "--dataset", "shop", "--until", str(until), "--json"))
    systems = ev["systems"]

    def ndcg(name: str) -> float:
        return float(systems[name]["slices"]["all"]["ndcg@10"])

    # Held-out targets are the declared positives after the split (views count at weight 0.2).
    assert ndcg("model-full") > ndcg("popularity") and ndcg("model-full") > ndcg("popularity-30d")
    assert all(systems[n]["seen_violations"] == 0 for n in systems)

    users_file = tmp_path / "users.txt"
    users_file.write_text("U-000042\nU-000007\n")
    recs = tmp_path / "recs.jsonl"
    _run(env, "recommend", "--dataset", "shop", "--users-file", str(users_file), "--out",
         str(recs), "--k", "5")  # fmt: skip
    lines = [json.loads(x) for x in recs.read_text().splitlines()]
    assert [x["user_id"] for x in lines] == ["U-000042", "U-000007"]
    skus = set(pd.read_parquet(shop / "products.parquet")["sku"])
    assert all(len(x["items"]) == 5 and set(x["items"]) <= skus for x in lines)
    users_file.write_text("U-000042\nU-TYPO\n")  # a batch names the ids it does not know
    r = subprocess.run([str(STRATA), "recommend", "--dataset", "shop", "--users-file",
                        str(users_file), "--out", str(recs)], env=env, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 2 and "U-TYPO" in r.stderr and "Traceback" not in r.stderr

    port = _free_port()
    server = subprocess.Popen(
        [str(STRATA), "serve", "--dataset", "shop", "--port", str(port)],
        env={**env, "STRATA_SERVE__ADMIN_TOKEN": "shop-admin"}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            deadline = time.monotonic() + 120
            while True:
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "server did not become ready"
                time.sleep(0.5)
            _serve_in_own_ids(http, skus)
            _a_live_item_in_own_ids(http, shop)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _serve_in_own_ids(http: httpx.Client, skus: set[str]) -> None:
    r = http.get("/recommend", params={"user_id": "U-000042", "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_id"] == "U-000042"
    items = [it["item_id"] for it in body["items"]]
    assert len(items) == 5 and set(items) <= skus
    info = http.get(f"/items/{items[0]}").json()
    assert info["item_id"] == items[0] and any(g.startswith("brand=") for g in info["genres"])
    # The shop declares no year (a nullable column of pd.NA): the title is shown, no year.
    assert info["title"] and info["year"] is None, info
    # Posters are addressed by the shop's ids too (a tenth of the products have none).
    with_image = [i for i in items if http.get(f"/items/{i}").json()["image"]]
    assert with_image, items
    poster = http.get(f"/items/{with_image[0]}/image")
    assert poster.status_code == 200 and poster.headers["content-type"] == "image/png"
    assert http.get("/items/SKU-999999").status_code == 404
    post = http.post("/recommend", json={"user_id": "U-000042", "k": 5})
    assert [it["item_id"] for it in post.json()["items"]] == items
    # An event in the shop's ids and event types: the bought item leaves the user's list.
    ev = {"event_id": "web-1", "user_id": "U-000042", "item_id": items[0], "type": "purchase",
          "ts": 1_800_000_000}  # fmt: skip
    r = http.post("/events", json=ev)
    assert r.status_code == 200, r.text
    after = http.get("/recommend", params={"user_id": "U-000042", "k": 5}).json()
    assert items[0] not in [it["item_id"] for it in after["items"]]
    # A customer who signed up after training: cold start, still the shop's ids.
    new = http.get("/recommend", params={"user_id": "U-NEW-CUSTOMER", "k": 5}).json()
    assert new["user_id"] == "U-NEW-CUSTOMER" and {it["item_id"] for it in new["items"]} <= skus
    # Bad input names the field: an unknown SKU, an event type the shop never declared.
    bad_item = http.post("/events", json={**ev, "event_id": "web-2", "item_id": "SKU-999999"})
    assert bad_item.status_code == 422 and bad_item.json()["detail"][0]["field"] == "item_id"
    bad_type = http.post("/events", json={**ev, "event_id": "web-3", "type": "click"})
    assert bad_type.status_code == 422 and bad_type.json()["detail"][0]["field"] == "type"


def _a_live_item_in_own_ids(http: httpx.Client, shop: Path) -> None:
    """The live catalogue speaks the shop's ids: add a SKU with a product image, see it, send
    an event for it, retire it; a clash with a catalogue SKU is a 422 naming item_id."""
    import base64

    auth = {"Authorization": "Bearer shop-admin"}
    genres = http.get("/catalog").json()["genres"]
    brand = next(g for g in genres if g.startswith("brand="))
    image = base64.b64encode((shop / "images" / "SKU-000001.png").read_bytes()).decode()
    body = {"item_id": "SKU-LIVE-1", "title": "Limited Edition Puzzle", "genres": [brand],
            "image_base64": image}  # fmt: skip
    r = http.post("/items", json=body, headers=auth)
    assert r.status_code == 201 and r.json()["item_id"] == "SKU-LIVE-1", r.text
    info = http.get("/items/SKU-LIVE-1").json()
    assert info["title"] == "Limited Edition Puzzle" and info["image"] is True
    assert info["live"]["external_id"] == "SKU-LIVE-1" and info["genres"] == [brand]
    assert http.get("/items/SKU-LIVE-1/image").status_code == 200
    ev = {"event_id": "live-1", "user_id": "U-000042", "item_id": "SKU-LIVE-1", "type": "view",
          "ts": 1_800_000_000}  # fmt: skip
    assert http.post("/events", json=ev).status_code == 200
    clash = http.post("/items", json={**body, "item_id": "SKU-000001"}, headers=auth)
    assert clash.status_code == 422 and clash.json()["detail"][0]["field"] == "item_id"
    assert http.delete("/items/SKU-LIVE-1", headers=auth).json()["item_id"] == "SKU-LIVE-1"
    assert http.get("/items/SKU-LIVE-1").json()["live"]["retired"] is True
    assert http.delete("/items/SKU-NOPE", headers=auth).status_code == 404
