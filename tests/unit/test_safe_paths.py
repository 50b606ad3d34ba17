"""Names and paths from outside stay inside their roots: dataset names (`strata data add`, the
registry), image file names in a dataset's items file, image names under `--images`. `..`,
absolute paths, NUL bytes and symlinks out of the root are refused with the field named (CLI:
exit 2, one line)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from strata.config import Settings
from strata.datasets.shop import write_shop
from strata.datasets.spec import register_spec
from strata.errors import DataError, ValidationError
from strata.features.content import image_paths
from strata.registry import Registry
from strata.safepath import check_name, inside

STRATA = Path(sys.executable).with_name("strata")


def _escape_link(root: Path, outside: Path) -> str:
    outside.mkdir(exist_ok=True)
    (outside / "secret.png").write_bytes(b"not an image of ours")
    (root / "out").symlink_to(outside, target_is_directory=True)
    return "out/secret.png"


def test_inside_refuses_every_way_out(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    assert inside(root, "sub/a.png", "f") == (root / "sub" / "a.png").resolve()
    link = _escape_link(root, tmp_path / "elsewhere")
    cases = {"../x.png": "'..'", "sub/../../x.png": "'..'", "/etc/passwd": "must be relative",
             "~/x.png": "must be relative", "a\x00.png": "NUL", link: "symlink"}  # fmt: skip
    for bad, why in cases.items():
        with pytest.raises(ValidationError, match=why) as err:
            inside(root, bad, "image")
        assert err.value.field == "image"


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "a/b", "../x", "a\\b", "a\x00b",
                                  "tab\tname", "x" * 256])  # fmt: skip
def test_unusable_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not a usable name"):
        check_name("name", name)
    with pytest.raises(ValidationError) as err:
        Registry(tmp_path, name)
    assert err.value.field == "dataset"
    assert not any(tmp_path.iterdir())  # nothing was created anywhere


def test_usable_names_pass() -> None:
    for name in ("tiny", "movielens-100k", "shop_v2.1", "x" * 255):
        assert check_name("name", name) == name


def _shop(tmp_path: Path, image: str | None) -> Path:
    """A small shop dataset whose first product's image is `image`."""
    spec = write_shop(tmp_path / "shop", n_users=30, n_items=20, n_events=400)
    products = spec.parent / "products.parquet"
    df = pd.read_parquet(products)
    df.loc[0, "image"] = image
    df.to_parquet(products, index=False)
    return spec


def _data_add(name: str, spec: Path, home: Path) -> subprocess.CompletedProcess[str]:
    if not STRATA.exists():
        pytest.skip(f"console script {STRATA} is not installed")
    env = {**os.environ, "STRATA_HOME": str(home)}
    return subprocess.run([str(STRATA), "data", "add", name, "--spec", str(spec)],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip


def test_data_add_refuses_bad_names_and_image_paths(tmp_path: Path) -> None:
    home = tmp_path / "home"
    spec = _shop(tmp_path, "../../elsewhere/secret.png")
    link = _escape_link(tmp_path / "shop", tmp_path / "elsewhere")
    for name in ("../evil", "a/b", ".hidden"):
        res = _data_add(name, spec, home)
        assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
        assert res.stderr.startswith("error: name: ") and "not a usable name" in res.stderr
    res = _data_add("shop", spec, home)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "products.parquet: row 1: image: " in res.stderr and "'..'" in res.stderr
    for bad, why in ((str(tmp_path / "elsewhere" / "secret.png"), "must be relative"),
                     (link, "symlink")):  # fmt: skip
        res = _data_add("shop", _shop(tmp_path, bad), home)
        assert res.returncode == 2 and why in res.stderr, res.stderr
    assert not (home / "datasets" / "shop").exists()
    with pytest.raises(ValidationError, match="name: 'a\\\\x00b'"):
        register_spec(Settings(home=home), "a\x00b", spec)
    # and the same files with the image name fixed are accepted
    res = _data_add("shop", _shop(tmp_path, "images/SKU-000001.png"), home)
    assert res.returncode == 0, res.stderr


def test_load_refuses_an_image_path_out_of_the_items_folder(tmp_path: Path) -> None:
    from strata.datasets.spec_load import load_declared

    spec = _shop(tmp_path, "/etc/hostname")
    with pytest.raises(DataError, match="row 1: image: '/etc/hostname' must be relative"):
        load_declared("shop", spec)


def test_relative_image_names_stay_under_the_images_folder(tmp_path: Path) -> None:
    images = tmp_path / "posters"
    images.mkdir()
    (images / "1.jpg").write_bytes(b"x")
    ok = pd.DataFrame({"item_id": [1, 2], "image_path": ["1.jpg", None]})
    assert image_paths(ok, images)[0] == (images / "1.jpg").resolve()
    bad = pd.DataFrame({"item_id": [1], "image_path": ["../../etc/passwd.jpg"]})
    with pytest.raises(ValidationError, match=r"image_path: .*leads out of"):
        image_paths(bad, images)
