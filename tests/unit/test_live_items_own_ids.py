"""Live items of a declared dataset (one that keeps its owner's ids, `strata data add`): an
item added in the owner's ids gets a dense id derived from that id (the same on every replica
and in the next training), the version's space maps it both ways, and bad or clashing ids are a
422 naming `item_id`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from strata.engine.ids import NEW_ITEM_BASE, IdMap, new_item_id
from strata.errors import ValidationError
from strata.features.live_items import LiveCatalogue, parse_item
from strata.models.space import FeatureSpace
from strata.models.space_extend import extend_items
from strata.serving.live import resolve_item


def _shop_space(external: bool = True) -> FeatureSpace:
    items = pd.DataFrame(
        {
            "item_id": [1, 2, 3],
            "title": ["a", "b", "c"],
            "year": pd.array([None, None, None], dtype="Int16"),
            "genres": [["brand=x"], ["brand=y"], ["brand=x"]],
            "description": ["", "", ""],
            **({"external_id": ["SKU-1", "SKU-2", "SKU-3"]} if external else {}),
        }
    )
    users = pd.DataFrame({"user_id": [1], "gender": [""], "occupation": [""], "age": [0],
                          **({"external_id": ["U-1"]} if external else {})})  # fmt: skip
    events = pd.DataFrame({"user_id": [1], "item_id": [2], "ts": [0], "value": [1.0]})
    return FeatureSpace.fit(users, items, events)


def test_an_owners_id_gets_a_derived_dense_id_mapped_both_ways() -> None:
    space = _shop_space()
    assert resolve_item(space, "SKU-2") == (2, "SKU-2")  # a catalogue item keeps its dense id
    dense, ext = resolve_item(space, "SKU-NEW")
    assert ext == "SKU-NEW" and dense == new_item_id("SKU-NEW")
    assert NEW_ITEM_BASE <= dense < NEW_ITEM_BASE + 2**40
    assert resolve_item(space, 77) == (new_item_id("77"), "77")  # integers are ids too
    new = pd.DataFrame({"item_id": [dense], "external_id": ["SKU-NEW"], "genres": [["brand=y"]],
                        "year": pd.array([None], dtype="Int16")})  # fmt: skip
    out = extend_items(space, new, None, as_of=0)
    ids = IdMap(out)
    assert ids.item("SKU-NEW") == dense and ids.item("SKU-3") == 3
    assert ids.items_external(np.array([dense, 1])) == ["SKU-NEW", "SKU-1"]
    assert IdMap(space).has_item("SKU-NEW") is False  # the version's own map is unchanged


@pytest.mark.parametrize(
    "new",
    [
        {"item_id": [new_item_id("SKU-9")], "year": [None], "genres": [[]]},  # no owner's id
        {"item_id": [new_item_id("SKU-1")], "external_id": ["SKU-1"], "year": [None],
         "genres": [[]]},  # the owner's id is a catalogue item's
    ],
)  # fmt: skip
def test_an_owners_item_without_an_id_or_with_a_taken_one_is_refused(new: dict) -> None:
    df = pd.DataFrame(new)
    df["year"] = df["year"].astype("Int16")
    with pytest.raises(ValidationError) as exc:
        extend_items(_shop_space(), df, None, as_of=0)
    assert exc.value.field == "item_id"


@pytest.mark.parametrize("raw", ["abc", "-1", -1, 2**63, True, 1.5, None, "9" * 30])
def test_a_dataset_of_integer_ids_takes_only_integers(raw: object) -> None:
    with pytest.raises(ValidationError) as exc:
        resolve_item(_shop_space(external=False), raw)
    assert exc.value.field == "item_id"


def test_a_dataset_of_integer_ids_takes_decimal_text_from_a_path() -> None:
    space = _shop_space(external=False)
    assert resolve_item(space, "5000") == (5000, None) and resolve_item(space, 7) == (7, None)


@pytest.mark.parametrize("raw", ["", "x" * 257, True, 1.5, None, ["SKU-1"]])
def test_a_declared_dataset_refuses_ids_that_are_not_ids(raw: object) -> None:
    with pytest.raises(ValidationError) as exc:
        resolve_item(_shop_space(), raw)
    assert exc.value.field == "item_id"


def test_the_next_training_takes_live_items_unless_the_owner_sent_them(tmp_path: Path) -> None:
    """`with_live_items` on a declared dataset: a live item joins the catalogue with its owner's
    id; one the owner's own files have since brought (same id) is theirs, not added twice."""
    from strata.config import Settings
    from strata.training.data import with_live_items

    s = Settings(home=tmp_path)
    cat = LiveCatalogue(s, "shop")
    for ext, title in (("SKU-NEW", "new"), ("SKU-3", "sent later by the owner")):
        dense = new_item_id(ext)
        cat.append("add", dense, parse_item({"item_id": dense, "external_id": ext,
                                             "title": title}))  # fmt: skip
    items = pd.DataFrame({"item_id": [1, 3], "external_id": ["SKU-1", "SKU-3"], "title": ["a", "c"],
                          "genres": [[], []]})  # fmt: skip
    merged, content = with_live_items(s, "shop", items, None)
    assert content is None
    assert merged["external_id"].tolist() == ["SKU-1", "SKU-3", "SKU-NEW"]
    assert merged["item_id"].tolist()[-1] == new_item_id("SKU-NEW")
    plain = items.drop(columns="external_id")  # live items with owner's ids, a dataset without
    with pytest.raises(ValidationError, match="disagree"):
        with_live_items(s, "shop", plain, None)
