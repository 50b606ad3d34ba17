"""A declared dataset on the one path: features generated from its declarations (counts per its
own event types, local-time context), positives with their weights, declared numerics in the
towers' inputs, the owner's ids at the edges (`IdMap`), and RecBole atomic files as a spec."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from strata.config import Settings
from strata.datasets import load
from strata.datasets.shop import write_shop
from strata.datasets.spec import register_spec
from strata.engine.ids import NEW_USER_BASE, IdMap, new_user_id
from strata.errors import DataError, ValidationError
from strata.features.definitions import FeatureParams
from strata.features.offline import OfflineStore, ingest_dataset
from strata.models.space import FeatureSpace
from strata.training.data import positive_rows


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Path]:
    root = tmp_path_factory.mktemp("shop")
    spec = write_shop(root / "files", n_users=60, n_items=40, n_events=1500, images=False)
    text = spec.read_text().replace("timezone: UTC", "timezone: America/New_York")
    spec.write_text(text)
    s = Settings(home=root / "home")
    register_spec(s, "shop", spec)
    ingest_dataset(OfflineStore(s), load("shop", settings=s), "shop")
    return s, root / "files"


def test_user_features_count_the_datasets_own_event_types(shop: tuple[Settings, Path]) -> None:
    s, _ = shop
    store = OfflineStore(s)
    assert store.event_types("shop") == ("add_to_cart", "purchase", "view")
    feats = store.latest_user_features("shop").set_index("user_id")
    ev = load("shop", settings=s).interactions
    as_of = int(ev["ts"].max()) + 1
    recent = ev[ev["ts"] >= as_of - store.params.user_window_s]  # the trailing user window
    want = recent.groupby(["user_id", "event_type"]).size().unstack(fill_value=0)
    for t in ("view", "add_to_cart", "purchase"):
        got = feats[f"user_n_{t}"].reindex(want.index)
        assert (got == want[t]).all() and got.sum() > 0
    assert "user_n_rating" not in feats.columns
    # the top value of each declared item attribute over the same window (ties: first by name)
    brand = (
        load("shop", settings=s)
        .items.set_index("item_id")["genres"]
        .map(lambda tags: next(t.split("=", 1)[1] for t in tags if t.startswith("brand=")))
    )
    counts = recent.assign(b=recent["item_id"].map(brand)).groupby(["user_id", "b"]).size()
    top = counts.reset_index().sort_values(["user_id", 0, "b"], ascending=[True, False, True])
    want_top = top.drop_duplicates("user_id").set_index("user_id")["b"]
    assert (feats["user_pref_brand"].reindex(want_top.index) == want_top).all()
    assert feats["user_pref_category"].ne("").any() and feats.columns.is_unique
    rows = store.training_set("shop")
    assert {"user_n_add_to_cart", "user_n_purchase", "user_n_view"} <= set(rows.columns)


def test_context_is_in_the_declared_time_zone(shop: tuple[Settings, Path]) -> None:
    s, _ = shop
    store = OfflineStore(s)
    assert store.params_for("shop").timezone == "America/New_York"
    rows = store.training_set("shop")
    from strata.features.definitions import context_features_np

    local = context_features_np(rows["ts"].to_numpy(), None, "America/New_York")
    np.testing.assert_allclose(rows["ctx_hour_sin"], local["ctx_hour_sin"], atol=1e-9)
    utc = context_features_np(rows["ts"].to_numpy())
    assert not np.allclose(rows["ctx_hour_sin"], utc["ctx_hour_sin"])


def test_declared_features_transpile_for_athena() -> None:
    from strata.features.definitions import render_all

    params = FeatureParams(event_types=("view", "add_to_cart"), item_attrs=("brand",),
                           timezone="Europe/Berlin")  # fmt: skip
    sql = render_all("athena", params)
    assert "user_pref_brand" in sql["user_behaviour"]
    assert "user_n_add_to_cart" in sql["training_set"]
    assert "WHEN ts < 3150061200" in sql["context"]  # the zone's offset table (to 2070)


def test_positives_are_weighted_and_other_events_only_feed_features() -> None:
    rows = pd.DataFrame({"event_type": ["view", "purchase", "wishlist", "add_to_cart"]})
    out = positive_rows(rows, {"view": 0.2, "add_to_cart": 0.6, "purchase": 1.0})
    assert out["event_type"].tolist() == ["view", "purchase", "add_to_cart"]
    assert out["weight"].tolist() == pytest.approx([0.2, 1.0, 0.6])
    assert positive_rows(rows, None)["weight"].tolist() == [1.0] * 4


def test_declared_numerics_and_ids_reach_the_feature_space(shop: tuple[Settings, Path]) -> None:
    s, _ = shop
    store = OfflineStore(s)
    users, items = store.users("shop"), store.items("shop")
    space = FeatureSpace.fit(users, items, store.training_set("shop"))
    # price (log, standardised) joins the item numerics; age (a user numeric) the query's
    assert space.dims().user_num_dim == 3
    col = space.t["item_num"][1:, -1]
    assert abs(float(col.mean())) < 1e-5 and float(col.std()) == pytest.approx(1.0, abs=1e-3)
    assert any(g.startswith("brand=") for g in space.meta["genres"])
    ids = IdMap.of(space)
    assert ids is not None
    first = str(users["external_id"].iloc[0])
    assert ids.user(first) == int(users["user_id"].iloc[0])
    sku = str(items["external_id"].iloc[3])
    dense = ids.item(sku)
    assert ids.items_external(np.array([dense])) == [sku]
    # a customer the version never saw: a stable id in the reserved range, the same everywhere
    assert ids.user("U-NEW") == new_user_id("U-NEW") >= NEW_USER_BASE
    with pytest.raises(ValidationError, match="item_id"):
        ids.item("SKU-999999")
    with pytest.raises(ValidationError, match="user_id"):
        ids.user(True)


def _atomic(folder: Path) -> None:
    folder.mkdir()
    (folder / "toy.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "".join(f"u{i % 7}\ti{i % 11}\t{1 + i % 5}\t{1_600_000_000 + 60 * i}\n"
                  for i in range(120))
    )  # fmt: skip
    (folder / "toy.item").write_text(
        "item_id:token\tmovie_title:token_seq\tprice:token\tclass:token_seq\tbrand:token\n"
        + "".join(f"i{i}\tA \"quoted\" film {i}\t{i}.5\tDrama Comedy\tb{i % 3}\n"
                  for i in range(11))
    )  # fmt: skip
    (folder / "toy.user").write_text(
        "user_id:token\tage:token\tgender:token\n"
        + "".join(f"u{i}\t{20 + i}\t{'FM'[i % 2]}\n" for i in range(7))
    )


def test_recbole_atomic_files_register_and_load(tmp_path: Path) -> None:
    from strata.datasets.recbole import recbole_spec, register_recbole

    _atomic(tmp_path / "toy")
    spec = recbole_spec(tmp_path / "toy")
    assert spec["items"]["text"] == ["movie_title:token_seq"]
    assert spec["items"]["multi_categorical"] == {"class:token_seq": " "}
    assert spec["items"]["numeric"] == ["price:token"] and spec["items"]["categorical"] == [
        "brand:token"
    ]
    assert spec["users"]["numeric"] == ["age:token"] and spec["interactions"]["value"]
    s = Settings(home=tmp_path / "home")
    register_recbole(s, "toy", tmp_path / "toy")
    ds = load("toy", settings=s)
    assert len(ds.interactions) == 120 and sorted(ds.interactions["value"].unique()) == [
        1,
        2,
        3,
        4,
        5,
    ]
    assert ds.items["title"].iloc[0] == 'A "quoted" film 0'  # quoting off for atomic files
    assert "class=Drama" in ds.items["genres"].iloc[0] and "num_price" in ds.items.columns
    assert ds.users["gender"].iloc[0] == "F"  # own embedding table: no attr= prefix


def test_a_bad_recbole_header_exits_2_naming_file_and_field(tmp_path: Path) -> None:
    _atomic(tmp_path / "toy")
    (tmp_path / "toy" / "toy.inter").write_text("user_id:token\titem_id\n")
    with pytest.raises(DataError, match="item_id"):
        from strata.datasets.recbole import recbole_spec

        recbole_spec(tmp_path / "toy")
    env = {**os.environ, "STRATA_HOME": str(tmp_path / "home")}
    r = subprocess.run([sys.executable, "-m", "strata.cli", "data", "add", "toy", "--recbole",
                        str(tmp_path / "toy")], capture_output=True, text=True, env=env,
                       timeout=120)  # fmt: skip
    assert r.returncode == 2 and "toy.inter" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "home" / "datasets" / "toy").exists()
