"""The live catalogue's foundations: the durable log of added/updated/retired items (replay,
concurrent appends, torn tails, image checks) and a version's feature space extended with new
items, whose rows the item tower reads exactly like the version's own rows of the same content
with an unknown id and no popularity."""

from __future__ import annotations

import io
import multiprocessing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from strata.config import Settings
from strata.errors import ValidationError
from strata.features.live_items import (
    MAX_IMAGE_BYTES,
    LiveCatalogue,
    check_image,
    parse_item,
)
from strata.models.space import POP_COL, FeatureSpace
from strata.models.space_extend import extend_items, year_scale

from .serving_support import DATASET, serving_settings, tiny_world


def _png(w: int = 8, h: int = 8, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, format=fmt)
    return buf.getvalue()


# --- the durable log ---------------------------------------------------------------------------


def test_replay_gives_the_latest_content_and_the_retired_ids(tmp_path: Path) -> None:
    cat = LiveCatalogue(Settings(home=tmp_path), "tiny")
    assert cat.revision == 0 and cat.state() == ({}, set())
    a = parse_item({"item_id": 900, "title": " Arrival ", "genres": ["Drama", "Drama"]})
    assert a.title == "Arrival" and a.genres == ("Drama",)  # trimmed, deduplicated
    cat.append("add", 900, a)
    r1 = cat.revision
    cat.append("add", 901, parse_item({"item_id": 901, "title": "B", "year": 2001}))
    cat.append("update", 900, a.model_copy(update={"year": 2016}))
    cat.append("retire", 901)
    assert cat.revision > r1
    live, retired = LiveCatalogue(Settings(home=tmp_path), "tiny").state()  # another process
    assert sorted(live) == [900, 901] and live[900].year == 2016 and retired == {901}
    cat.append("add", 901, parse_item({"item_id": 901, "title": "B again"}))  # back in service
    live, retired = cat.state()
    assert live[901].title == "B again" and retired == set()


def test_a_torn_tail_is_skipped_by_readers_and_cut_by_the_next_append(tmp_path: Path) -> None:
    cat = LiveCatalogue(Settings(home=tmp_path), "tiny")
    cat.append("add", 1, parse_item({"item_id": 1, "title": "one"}))
    log = cat.dir / "items.jsonl"
    with log.open("ab") as fh:
        fh.write(b'{"op":"add","item_id":2,"item":{"item_')  # a crash mid-write
    assert list(cat.state()[0]) == [1]
    cat.append("add", 3, parse_item({"item_id": 3, "title": "three"}))
    assert sorted(cat.state()[0]) == [1, 3]
    assert all(line.endswith(b"}") for line in log.read_bytes().splitlines())


def _append_many(home: str, worker: int) -> None:
    cat = LiveCatalogue(Settings(home=Path(home)), "tiny")
    for i in range(40):
        iid = worker * 1000 + i
        cat.append("add", iid, parse_item({"item_id": iid, "title": "x" * (50 + i * 7)}))


def test_appends_from_several_processes_never_interleave(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    live, _ = LiveCatalogue(Settings(home=tmp_path), "tiny").state()
    assert len(live) == 160  # every record whole, none lost


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"item_id": 5, "title": "   "}, "title"),
        ({"item_id": -1, "title": "a"}, "item_id"),
        ({"item_id": 2**63, "title": "a"}, "item_id"),
        ({"item_id": 5, "title": "a", "year": 99999}, "year"),
        ({"item_id": 5, "title": "a", "genres": ["ok", " "]}, "genres"),
        ({"item_id": 5, "title": "a", "colour": "red"}, "colour"),
        ({"title": "a"}, "item_id"),
    ],
)
def test_bad_items_name_the_field(data: dict, field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        parse_item(data)
    assert exc.value.field == field


def test_images_are_checked_before_they_are_kept(tmp_path: Path) -> None:
    cat = LiveCatalogue(Settings(home=tmp_path), "tiny")
    assert check_image(_png()) == "png" and check_image(_png(fmt="JPEG")) == "jpg"
    name = cat.store_image(_png())
    assert (cat.images / name).read_bytes() == _png() and cat.store_image(_png()) == name
    for bad, needle in (
        (b"", "empty"),
        (b"GIF89a not really", "not a readable image"),
        (_png()[:40], "not a readable image"),  # truncated
        (b"\x89PNG" + b"0" * MAX_IMAGE_BYTES, "bytes; at most"),
        (_png(6000, 5000), "pixels; at most"),  # small file, 30 M pixels
        (_png(fmt="BMP"), "expected JPEG, PNG or WebP"),
    ):
        with pytest.raises(ValidationError, match=needle) as exc:
            check_image(bad)
        assert exc.value.field == "image"
    assert len(list(cat.images.iterdir())) == 1  # nothing else was written


# --- a version's space with new items ---------------------------------------------------------


def test_new_rows_are_the_versions_own_rows_with_an_unknown_id(tmp_path: Path) -> None:
    """The same titles, genres and years entered as new items give exactly the item-tower
    vectors of the version's own rows once their id embedding and popularity are removed: the
    live path encodes items the way training did."""
    from strata.engine.version import ModelVersion
    from strata.models.infer import embed_items

    mv = ModelVersion.open(serving_settings(tmp_path), DATASET)
    items = tiny_world().items.head(12).copy()
    items["item_id"] = items["item_id"] + 10_000  # new ids, same content
    space = extend_items(mv.space, items, None, mv.as_of)
    assert len(space.item_ids) == len(mv.space.item_ids) + 12
    assert np.array_equal(space.item_ids[: len(mv.space.item_ids)], mv.space.item_ids)
    two_tower, _ = mv.torch_models()
    rows, found = space.item_rows(items["item_id"].to_numpy())
    assert found.all() and (space.t["item_idx"][rows] == 0).all()
    live = embed_items(two_tower, space.items(rows))

    own, _ = mv.space.item_rows(items["item_id"].to_numpy() - 10_000)
    ref = mv.space.items(own)
    ref.item[:] = 0  # unknown id
    ref.item_num[:, POP_COL] = 0.0  # no popularity yet
    assert np.allclose(live, embed_items(two_tower, ref), atol=1e-5)
    # the version's own rows are untouched (same vectors as the saved embeddings)
    old_rows, _ = space.item_rows(mv.space.item_ids)
    assert np.allclose(embed_items(two_tower, space.items(old_rows)), mv.item_embeddings, atol=1e-5)


def _small_space() -> FeatureSpace:
    items = pd.DataFrame(
        {
            "item_id": [10, 20, 30],
            "title": ["a", "b", "c"],
            "year": pd.array([1990, 2000, None], dtype="Int16"),
            "genres": [["x"], ["y"], ["x", "y"]],
            "description": ["", "", ""],
        }
    )
    users = pd.DataFrame({"user_id": [1], "gender": ["M"], "occupation": ["o"], "age": [30]})
    events = pd.DataFrame({"user_id": [1], "item_id": [20], "ts": [0], "value": [1.0]})
    return FeatureSpace.fit(users, items, events)


def test_ids_between_existing_ones_keep_the_table_sorted() -> None:
    space = _small_space()
    mean, std = year_scale(space)
    assert (mean, std) == pytest.approx((1995.0, 5.0))
    new = pd.DataFrame({"item_id": [15, 40], "year": pd.array([2000, None], dtype="Int16"),
                        "genres": [["y"], []]})  # fmt: skip
    out = extend_items(space, new, None, as_of=0)
    assert out.item_ids.tolist() == [10, 15, 20, 30, 40]
    for iid in (10, 20, 30):  # every old item keeps its row content
        a, b = out.item_rows(np.array([iid]))[0], space.item_rows(np.array([iid]))[0]
        assert np.array_equal(out.t["genres"][a], space.t["genres"][b])
        assert out.t["item_idx"][a] == space.t["item_idx"][b]
    r15 = out.item_rows(np.array([15]))[0]
    assert out.t["item_num"][r15, 0] == pytest.approx((2000 - 1995) / 5)  # same standardising
    assert out.t["genres"][r15].tolist() == [[0.0, 1.0]] and out.t["item_idx"][r15] == 0
    assert space.item_ids.tolist() == [10, 20, 30]  # the version's own space is unchanged


@pytest.mark.parametrize(
    ("new", "field"),
    [
        ({"item_id": [20], "year": [None], "genres": [["x"]]}, "item_id"),  # already there
        ({"item_id": [50, 50], "year": [None, None], "genres": [[], []]}, "item_id"),
        ({"item_id": [50], "year": [None], "genres": [["Western"]]}, "genres"),
    ],
)
def test_items_that_do_not_fit_the_version_name_the_field(new: dict, field: str) -> None:
    df = pd.DataFrame(new)
    df["year"] = df["year"].astype("Int16")
    with pytest.raises(ValidationError) as exc:
        extend_items(_small_space(), df, None, as_of=0)
    assert exc.value.field == field


# --- the command line and a loaded pipeline ----------------------------------------------------


def _cli(home: Path, *args: str) -> tuple[int, str, str]:
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "strata.cli", "items", *args, "--dataset", DATASET],
        capture_output=True, text=True, env={"STRATA_HOME": str(home), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )  # fmt: skip
    return res.returncode, res.stdout, res.stderr


def test_cli_changes_reach_a_pipeline_loaded_afterwards(tmp_path: Path) -> None:
    """`strata items add|update|retire` write the log a serving pipeline builds its live
    catalogue from: the added item takes the fresh slot (the version has no other fresh item),
    is searched next to the index, and is gone from both once retired."""
    import json

    from strata.serving.service import RecommendationPipeline

    s = serving_settings(tmp_path)
    image = tmp_path / "poster.png"
    image.write_bytes(_png())
    add = ["add", "--id", "777", "--title", "Cold Open", "--genres", "Comedy, Drama"]
    rc, out, err = _cli(tmp_path, *add, "--year", "2001", "--image", str(image))
    assert rc == 0, err
    assert json.loads(out)["item"]["genres"] == ["Comedy", "Drama"]
    rc, _, err = _cli(tmp_path, "add", "--id", "778", "--title", "x", "--genres", "Western")
    assert rc == 2 and err.strip().splitlines()[-1].startswith("error: genres:"), err
    rc, _, err = _cli(tmp_path, "update", "--id", "3", "--title", "renamed")
    assert rc == 2 and "part of the model version" in err, err

    pipe = RecommendationPipeline.load(s)
    assert pipe.live is not None and pipe.live.ids.tolist() == [777]
    rec = pipe.recommend(3, k=20)
    assert rec.item_ids[10] == 777 and rec.candidates["fresh"] == 1
    top = pipe.recommend(3, k=100, stage="retrieval").item_ids
    assert 777 in top.tolist()

    rc, _, err = _cli(tmp_path, "retire", "--id", "777")
    assert rc == 0, err
    pipe = RecommendationPipeline.load(s)
    assert 777 not in pipe.recommend(3, k=20).item_ids.tolist()
    assert 777 not in pipe.recommend(3, k=100, stage="retrieval").item_ids.tolist()
    assert pipe.catalog.positions(np.array([777]))[1].all()  # its events are still accepted


def test_live_retriever_merges_drops_retired_and_pads() -> None:
    from strata.engine.stages import ExactIndex
    from strata.serving.live import LiveRetriever

    rng = np.random.default_rng(0)
    base = ExactIndex(np.arange(1, 11), rng.normal(size=(10, 4)).astype(np.float32))
    live = ExactIndex(np.array([100, 101]), rng.normal(size=(2, 4)).astype(np.float32))
    q = rng.normal(size=(3, 4)).astype(np.float32)
    both = ExactIndex(np.r_[np.arange(1, 11), [100, 101]], np.vstack([base.emb, live.emb]))
    ids, sc = LiveRetriever(base, live, np.array([], np.int64)).search(q, 5)
    want_ids, want_sc = both.search(q, 5)
    assert np.array_equal(ids, want_ids) and np.allclose(sc, want_sc)
    ids, _ = LiveRetriever(base, live, np.array([3, 100])).search(q, 12)
    assert not np.isin(ids, [3, 100]).any()
    assert (ids[:, :10] >= 0).all() and (ids[:, 10:] == -1).all()  # 10 left, padded to 12


def test_the_next_training_includes_the_live_items(tmp_path: Path) -> None:
    """A training run after live adds has them in its catalogue (uninteracted: fresh items of
    the new version, vectors from its own item tower); the overlay of that version then serves
    them from the version itself, and a retirement still holds."""
    from strata.engine.version import ModelVersion
    from strata.serving.live import ItemEmbedder, build_overlay
    from strata.training.data import Tables
    from strata.training.train import train

    from .tiny_world import fast_settings, tiny_dataset

    s = fast_settings(tmp_path)
    cat = LiveCatalogue(s, DATASET)
    cat.append("add", 500, parse_item({"item_id": 500, "title": "Late", "genres": ["Drama"],
                                       "year": 2003}))  # fmt: skip
    cat.append("add", 501, parse_item({"item_id": 501, "title": "Later", "genres": ["Action"]}))
    cat.append("retire", 501)
    ds = tiny_dataset()
    ts = np.sort(ds.interactions["ts"].to_numpy())
    train(s, DATASET, until=int(ts[int(len(ts) * 0.6)]),
          tables=Tables(ds.users, ds.items, ds.interactions, None))  # fmt: skip
    mv = ModelVersion.open(s, DATASET)
    rows, found = mv.space.item_rows(np.array([500, 501]))
    assert found.all() and (mv.space.t["item_idx"][rows] == 0).all()  # no interactions yet
    assert mv.space.t["genres"][rows[0]][mv.space.meta["genres"].index("Drama")] == 1.0
    assert {500, 501} <= set(mv.space.item_ids[mv.space.fresh_rows() - 1].tolist())
    overlay = build_overlay(s, mv, ItemEmbedder(s, mv))
    assert len(overlay.ids) == 0 and overlay.retired.tolist() == [501]
    assert sorted(overlay.items) == [500, 501]


def test_a_change_leaves_its_replica_up_to_date_with_the_log(tmp_path: Path) -> None:
    """The overlay `apply_change` returns is the log's state (its revision is the log's size
    after the append), so the replica that took the change does not rebuild it again; a
    rejected change appends nothing."""
    from strata.engine.version import ModelVersion
    from strata.errors import NotFoundError
    from strata.serving.live import ItemEmbedder, apply_change

    s = serving_settings(tmp_path)
    mv = ModelVersion.open(s, DATASET)
    emb = ItemEmbedder(s, mv)
    cat = LiveCatalogue(s, DATASET)
    overlay, _ = apply_change(s, mv, emb, "add", 4000, {"title": "a", "genres": ["Drama"]})
    assert overlay.revision == cat.revision > 0 and overlay.ids.tolist() == [4000]
    overlay, rec = apply_change(s, mv, emb, "update", 4000, {"year": 1999})
    assert rec["item"]["title"] == "a" and rec["item"]["year"] == 1999
    assert overlay.revision == cat.revision
    before = cat.revision
    with pytest.raises(ValidationError) as exc:
        apply_change(s, mv, emb, "add", 4001, {"title": "b", "image": "0" * 32 + ".png"})
    assert exc.value.field == "image"
    with pytest.raises(NotFoundError):
        apply_change(s, mv, emb, "retire", 123456, None)
    with pytest.raises(ValidationError):
        apply_change(s, mv, emb, "update", 3, {"title": "trained item"})
    assert cat.revision == before
