"""One path for all data: MovieLens-100K is read through the spec shipped with the package, the
synthetic world writes files plus a spec, and the spec keys those need (labels used as they are,
year, age, event ids, a declared event vocabulary) work for any dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from strata.config import Settings
from strata.datasets import load
from strata.datasets.movielens import (
    GROUPLENS_FILES,
    SPEC,
    TABLES,
    cache_dir,
    parse_movielens_100k,
    read_movielens_100k,
)
from strata.datasets.spec import load_spec, register_spec
from strata.datasets.spec_load import load_declared
from strata.datasets.synthetic import recsys_world
from strata.errors import DataError, ValidationError


def _same(a: pd.Series, b: pd.Series) -> None:
    if a.name == "genres":
        assert [list(x) for x in a] == [list(x) for x in b]
        return
    pd.testing.assert_series_equal(
        a.reset_index(drop=True), b.reset_index(drop=True), check_names=False, check_dtype=False
    )


def test_movielens_through_its_shipped_spec_is_the_parsed_data(
    ml100k_dir: Path, posters_dir: Path
) -> None:
    parsed = parse_movielens_100k(ml100k_dir)
    ds = read_movielens_100k(ml100k_dir, images=posters_dir)
    assert load_spec(SPEC).interactions.event_types == ["rating", "view", "click", "purchase"]
    for col in parsed.interactions.columns:
        _same(parsed.interactions[col], ds.interactions[col])
    for col in ("item_id", "title", "year", "genres", "description"):
        _same(parsed.items[col], ds.items[col])
    for col in ("user_id", "age", "gender", "occupation"):
        _same(parsed.users[col], ds.users[col])
    # the same dtypes the contract promises, ids used as they are (1..n), the declared events
    assert ds.items["year"].dtype == "Int16" and ds.users["age"].dtype == np.int16
    assert "external_id" not in ds.items.columns and "external_id" not in ds.users.columns
    assert ds.event_types == ("rating", "view", "click", "purchase") and ds.positives is None
    assert ds.item_attributes == ()
    # the top category is the first genre, as for a dataset that declares none
    first = [g[0] if len(g) else "" for g in parsed.items["genres"]]
    assert ds.items["category"].tolist() == first
    assert ds.items["image_path"].notna().sum() == len(list(posters_dir.glob("*.jpg")))


def test_a_cache_from_before_the_spec_gains_its_tables(ml100k_dir: Path, strata_home) -> None:
    settings = Settings()
    folder = cache_dir(settings)
    folder.mkdir(parents=True)
    for name in GROUPLENS_FILES:
        shutil.copyfile(ml100k_dir / name, folder / name)
    (folder / "SOURCE.json").write_text("{}")
    ds = load("movielens-100k", settings=settings)
    assert all((folder / t).is_file() for t in TABLES)
    assert ds.summary() == {"users": 943, "items": 1682, "interactions": 100000}
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_the_synthetic_world_writes_files_and_a_spec_others_can_register(tmp_path: Path) -> None:
    world = recsys_world(40, 60, 900, seed=2, chunk_size=250)
    spec_path = world.write(tmp_path / "world")
    assert {p.name for p in (tmp_path / "world").iterdir()} == {
        "spec.yaml", "users.parquet", "items.parquet", "events.parquet"
    }  # fmt: skip
    truth = world.to_dataset()
    ds = load_declared("synthetic", spec_path)
    for col in truth.interactions.columns:
        _same(truth.interactions[col], ds.interactions[col])
    for col in ("item_id", "title", "year", "genres", "description", "category"):
        _same(truth.items[col], ds.items[col])
    for col in ("user_id", "age", "gender", "occupation"):
        _same(truth.users[col], ds.users[col])
    np.testing.assert_allclose(ds.items["num_price"], truth.items["price"].astype(float))
    assert ds.event_types == ("rating", "view", "click", "purchase")
    # the same files and spec go through `strata data add` like anyone's
    s = Settings(home=tmp_path / "home")
    report = register_spec(s, "world", spec_path)
    assert report["interactions"]["rows"] == 900 and report["usable_interactions"] == 900
    assert load("world", settings=s).summary() == ds.summary()
    # load("synthetic") takes this path too
    assert set(load("synthetic", settings=Settings(seed=1)).items.columns) >= {"num_price"}


def _catalogue(folder: Path, year: list[object]) -> Path:
    """Three items (ids 10, 20, 30), five events, a users file with ages; returns the spec."""
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "id": [30, 10, 20],
            "name": ["c", "a", "b"],
            "labels": ["x|y", "y", ""],
            "brand": ["B2", "B1", "B1"],
            "year": year,
        }
    ).to_csv(folder / "items.csv", index=False)
    pd.DataFrame({"uid": ["u2", "u1"], "age": [41.0, None], "tier": ["gold", "free"]}).to_csv(
        folder / "users.csv", index=False
    )
    pd.DataFrame(
        {
            "eid": ["e1", "e2", "e3", "e4", "e5"],
            "user": ["u1", "u2", "u1", "u2", "u1"],
            "item": [10, 20, 30, 10, 20],
            "ts": [1, 2, 3, 4, 5],
            "kind": ["View", "buy", "view", "view", "buy"],
        }
    ).to_csv(folder / "events.csv", index=False)
    spec = {
        "interactions": {
            "path": "events.csv", "event_id": "eid", "user": "user", "item": "item",
            "timestamp": "ts", "event_type": "kind", "event_types": ["view", "buy", "return"],
            "positives": {"buy": 1.0},
        },
        "items": {"path": "items.csv", "id": "id", "text": ["name"], "tags": {"labels": "|"},
                  "categorical": ["brand"], "year": "year"},
        "users": {"path": "users.csv", "id": "uid", "age": "age", "categorical": ["tier"]},
    }  # fmt: skip
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    return folder / "spec.yaml"


def test_labels_year_age_event_ids_and_vocabulary(tmp_path: Path) -> None:
    ds = load_declared("cat", _catalogue(tmp_path, [2001, 1999, None]))
    items = ds.items.set_index("external_id")
    # labels as they are, then brand=...; the brand (first categorical) is the category
    assert list(items.loc["30", "genres"]) == ["x", "y", "brand=B2"]
    assert list(items.loc["20", "genres"]) == ["brand=B1"]
    assert items.loc["30", "category"] == "B2" and items.loc["30", "year"] == 2001
    assert pd.isna(items.loc["20", "year"])
    # ids 10, 20, 30 are not 1..n: dense ids in id order, the owner's kept
    assert ds.items["item_id"].tolist() == [1, 2, 3]
    assert ds.items["external_id"].tolist() == ["10", "20", "30"]
    users = ds.users.set_index("external_id")
    assert users.loc["u2", "age"] == 41 and users.loc["u1", "age"] == 0
    assert users.loc["u2", "gender"] == "gold"
    assert ds.interactions["event_id"].tolist() == ["e1", "e2", "e3", "e4", "e5"]
    # the declared vocabulary, in the declared order, even the type the log does not hold yet
    assert ds.event_types == ("view", "buy", "return") and ds.positives == {"buy": 1.0}


def test_a_bad_year_names_its_row_in_the_file(tmp_path: Path) -> None:
    # the rows are re-ordered by id at load (item 20 comes second); the message still names
    # the line the editor shows: the header is line 1, item 20 line 4
    with pytest.raises(DataError, match=r"items.csv: row 4: year 'soon' is not a number"):
        load_declared("cat", _catalogue(tmp_path, [2001, 1999, "soon"]))


def test_event_types_outside_the_declared_vocabulary_are_refused(tmp_path: Path) -> None:
    spec_path = _catalogue(tmp_path, [2001, 1999, 2000])
    spec = yaml.safe_load(spec_path.read_text())
    spec["interactions"]["event_types"] = ["view", "return"]
    spec["interactions"]["positives"] = {"view": 1.0}
    spec_path.write_text(yaml.safe_dump(spec))
    s = Settings(home=tmp_path / "home")
    with pytest.raises(DataError, match=r"events.csv.*row 3: kind 'buy' is not among event_types"):
        register_spec(s, "cat", spec_path)
    assert not (tmp_path / "home" / "datasets" / "cat").exists()
    spec["interactions"]["positives"] = {"buy": 1.0}
    spec_path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValidationError, match=r"interactions.*\['buy'\] are not among event_types"):
        load_spec(spec_path)
