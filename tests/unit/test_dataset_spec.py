"""`strata data add NAME --spec FILE`: a shop's own files (string SKU ids, millisecond
timestamps, view / add-to-cart / purchase events, price, brand, a two-level category) checked,
reported and registered; bad specs and files exit 2 naming the key, file, row or field, and
leave nothing registered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from strata.config import Settings
from strata.datasets.spec import load_spec, register_spec
from strata.errors import DataError, UnknownDatasetError, ValidationError

N_ITEMS, N_USERS, N_EVENTS = 40, 25, 300


def _shop(folder: Path) -> dict[str, pd.DataFrame]:
    """Products (Parquet), customers (CSV), events (JSON lines, ms timestamps)."""
    rng = np.random.default_rng(3)
    skus = [f"SKU-{i:06d}" for i in range(1, N_ITEMS + 1)]
    products = pd.DataFrame(
        {
            "sku": skus,
            "title": [f"product {i}" for i in range(N_ITEMS)],
            "description": ["" if i % 7 == 0 else f"a fine thing {i}" for i in range(N_ITEMS)],
            "brand": rng.choice(["acme", "globex", "initech"], N_ITEMS),
            "category": rng.choice(["home>kitchen", "home>garden", "toys>lego"], N_ITEMS),
            "price": np.round(rng.uniform(1, 200, N_ITEMS), 2),
        }
    )
    customers = pd.DataFrame(
        {
            "customer": [f"U-{i:06d}" for i in range(1, N_USERS + 1)],
            "segment": rng.choice(["new", "loyal"], N_USERS),
        }
    )
    events = pd.DataFrame(
        {
            "customer": rng.choice(customers["customer"], N_EVENTS),
            "sku": rng.choice(skus, N_EVENTS),
            "ts_ms": 1_700_000_000_000 + np.sort(rng.integers(0, 86_400_000 * 30, N_EVENTS)),
            "action": rng.choice(["view", "add_to_cart", "purchase", "wishlist"], N_EVENTS),
        }
    )
    events.loc[5, "sku"] = "SKU-999999"  # not in the catalogue
    products.to_parquet(folder / "products.parquet", index=False)
    customers.to_csv(folder / "customers.csv", index=False)
    events.to_json(folder / "events.jsonl", orient="records", lines=True)
    return {"products": products, "customers": customers, "events": events}


def _spec(**override: object) -> dict:
    spec: dict = {
        "interactions": {
            "path": "events.jsonl",
            "user": "customer",
            "item": "sku",
            "timestamp": "ts_ms",
            "timestamp_unit": "ms",
            "event_type": "action",
            "positives": {"view": 0.2, "add_to_cart": 0.6, "purchase": 1.0},
        },
        "items": {
            "path": "products.parquet",
            "id": "sku",
            "text": ["title", "description"],
            "categorical": ["brand"],
            "multi_categorical": {"category": ">"},
            "numeric": ["price"],
        },
        "users": {"path": "customers.csv", "id": "customer", "categorical": ["segment"]},
        "timezone": "Europe/Berlin",
    }
    spec.update(override)
    return spec


def _write(folder: Path, spec: dict) -> Path:
    path = folder / "shop.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STRATA_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "strata.cli", "data", "add", *args],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def test_data_add_reports_and_registers_a_shop(tmp_path: Path) -> None:
    data = tmp_path / "files"
    data.mkdir()
    t = _shop(data)
    home = tmp_path / "home"
    r = _cli(home, "shop", "--spec", str(_write(data, _spec())), "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    ev = t["events"]
    it = rep["interactions"]
    assert it["rows"] == N_EVENTS and rep["items"]["rows"] == N_ITEMS
    assert it["users"] == ev["customer"].nunique() and it["items"] == ev["sku"].nunique()
    assert it["time_span"] == [int(ev["ts_ms"].min()) // 1000, int(ev["ts_ms"].max()) // 1000]
    assert it["rows_with_unknown_item"] == 1 and it["unknown_item_examples"] == ["SKU-999999"]
    assert it["rows_with_undeclared_event_type"] == int((ev["action"] == "wishlist").sum())
    assert it["event_types"] == ev["action"].value_counts().to_dict()
    assert rep["usable_interactions"] == N_EVENTS - 1
    assert rep["items"]["missing"] == {}  # empty descriptions are values, not missing
    # Registered with absolute paths: the spec no longer depends on where it was written.
    saved = yaml.safe_load((home / "datasets" / "shop" / "spec.yaml").read_text())
    assert saved["items"]["path"] == str((data / "products.parquet").resolve())
    assert load_spec(home / "datasets" / "shop" / "spec.yaml").timezone == "Europe/Berlin"
    assert json.loads((home / "datasets" / "shop" / "report.json").read_text())["items"]["rows"]
    # The plain output is one line naming the counts.
    again = _cli(home, "shop", "--spec", str(_write(data, _spec())))
    assert again.returncode == 0 and f"{N_EVENTS} interactions" in again.stdout


@pytest.mark.parametrize(
    ("change", "names"),
    [
        (lambda s: s["items"].update(colour=["x"]), ["items.colour", "Extra inputs"]),
        (lambda s: s.update(timezone="Mars/Olympus"), ["timezone", "Mars/Olympus"]),
        (lambda s: s["interactions"].update(positives={"view": 0}), ["interactions.positives"]),
        (lambda s: s["items"].update(numeric=["weight"]), ["products.parquet", "'weight'"]),
        (lambda s: s["interactions"].update(path="nope.csv"), ["nope.csv", "does not exist"]),
    ],
)
def test_bad_specs_exit_2_naming_the_key_or_file(tmp_path: Path, change, names) -> None:
    _shop(tmp_path)
    spec = _spec()
    change(spec)
    r = _cli(tmp_path / "home", "shop", "--spec", str(_write(tmp_path, spec)))
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    for n in names:
        assert n in r.stderr
    assert not (tmp_path / "home" / "datasets" / "shop").exists()


def test_bad_rows_name_file_row_and_field(tmp_path: Path) -> None:
    t = _shop(tmp_path)
    s = Settings(home=tmp_path / "home")
    spec_path = _write(tmp_path, _spec())
    # An unparseable timestamp: the row (as an editor counts it) and the field.
    ev = t["events"].astype({"ts_ms": object})
    ev.loc[17, "ts_ms"] = "yesterday"
    ev.to_json(tmp_path / "events.jsonl", orient="records", lines=True)
    with pytest.raises(
        DataError, match=r"events.jsonl: row 18: ts_ms 'yesterday' is not a timestamp"
    ):
        register_spec(s, "shop", spec_path)
    t["events"].to_json(tmp_path / "events.jsonl", orient="records", lines=True)
    # A duplicate item id.
    dup = pd.concat([t["products"], t["products"].iloc[[3]]], ignore_index=True)
    dup.to_parquet(tmp_path / "products.parquet", index=False)
    with pytest.raises(DataError, match=r"products.parquet: row 41: duplicate sku 'SKU-000004'"):
        register_spec(s, "shop", spec_path)
    assert not (s.home / "datasets" / "shop").exists()
    # ISO-8601 timestamps with offsets parse to unix seconds.
    t["products"].to_parquet(tmp_path / "products.parquet", index=False)
    iso = t["events"].assign(
        when=pd.to_datetime(t["events"]["ts_ms"], unit="ms", utc=True)
        .dt.tz_convert("Europe/Berlin")
        .astype(str)
    )
    iso.to_json(tmp_path / "events.jsonl", orient="records", lines=True)
    spec = _spec()
    spec["interactions"].update(timestamp="when", timestamp_unit="iso")
    rep = register_spec(s, "shop", _write(tmp_path, spec))
    assert rep["interactions"]["time_span"][0] == int(t["events"]["ts_ms"].min()) // 1000


def test_names_and_built_ins_are_protected(tmp_path: Path) -> None:
    _shop(tmp_path)
    s = Settings(home=tmp_path / "home")
    for bad in ("movielens-100k", "../x", ""):
        with pytest.raises(ValidationError, match="name"):
            register_spec(s, bad, _write(tmp_path, _spec()))


def test_a_registered_spec_loads_as_a_dataset_with_dense_ids_and_the_owners_kept(
    tmp_path: Path,
) -> None:
    from strata.datasets import known, load

    raw = _shop(tmp_path)
    s = Settings(home=tmp_path / "home")
    register_spec(s, "shop", _write(tmp_path, _spec()))
    ds = load("shop", settings=s)
    assert "shop" in known(s)
    # dense ids 1..n in the owner's id order, the owner's ids kept beside them
    assert ds.items["item_id"].tolist() == list(range(1, N_ITEMS + 1))
    assert ds.items["external_id"].tolist() == sorted(raw["products"]["sku"])
    assert ds.users["external_id"].tolist() == sorted(raw["customers"]["customer"])
    # the interaction with an unknown SKU is dropped; every other one maps back to its owner ids
    ev = raw["events"].drop(index=5).reset_index(drop=True)
    assert len(ds.interactions) == len(ev)
    item_ext = dict(zip(ds.items["item_id"], ds.items["external_id"], strict=True))
    user_ext = dict(zip(ds.users["user_id"], ds.users["external_id"], strict=True))
    got = ds.interactions.sort_values("event_id", key=lambda c: c.str[1:].astype(int))
    assert [item_ext[i] for i in got["item_id"]] == ev["sku"].tolist()
    assert [user_ext[u] for u in got["user_id"]] == ev["customer"].tolist()
    assert (got["ts"].to_numpy() == ev["ts_ms"].to_numpy() // 1000).all()
    # event types as declared (wishlist is not a positive but still an event type)
    assert set(ds.event_types) == {"view", "add_to_cart", "purchase", "wishlist"}
    assert ds.positives == {"view": 0.2, "add_to_cart": 0.6, "purchase": 1.0}
    # attributes: brand and each category level are tags, brand is the category, price numeric
    row = ds.items.iloc[0]
    product = raw["products"].set_index("sku").loc[row["external_id"]]
    assert f"brand={product['brand']}" in row["genres"]
    for level in product["category"].split(">"):
        assert f"category={level}" in row["genres"]
    assert row["category"] == product["brand"]
    assert row["num_price"] == pytest.approx(product["price"])
    assert set(ds.users["gender"]) <= {"new", "loyal"}  # the segment, in the first slot
    with pytest.raises(UnknownDatasetError, match="unknown dataset 'other'"):
        load("other", settings=s)
    # files edited after `data add`: a duplicate id is named again at load, nothing is built
    products = raw["products"]
    pd.concat([products, products.iloc[[3]]]).to_parquet(tmp_path / "products.parquet")
    with pytest.raises(DataError, match=f"duplicate sku '{products['sku'].iloc[3]}'"):
        load("shop", settings=s)


def test_event_types_become_feature_safe_slugs() -> None:
    from strata.datasets.spec_load import event_slug

    assert event_slug("Add to cart") == "add_to_cart"
    assert event_slug("  PURCHASE ") == "purchase"
    assert event_slug("3d-view") == "t_3d_view"
    assert len(event_slug("x" * 80)) <= 32
