"""A dataset spec read into the `RecDataset` contract, so declared data takes the one path every
dataset takes (offline store -> features -> training -> serving). The built-in datasets take it
too: MovieLens-100K is a spec shipped with the package over the files acquisition writes
(`specs/movielens-100k.yaml`), the synthetic world writes its files and a spec.

What the spec's declarations become (`base.py` has the contract):

- **ids**: the owner's ids (strings or integers) stay in an `external_id` column of users and
  items; inside, ids are dense int64 from 1 in the owner's id order, so a re-load of the same
  files gives the same ids. Ids that already are the integers 1..n are used as they are (no
  `external_id`). Interactions whose user or item is unknown (counted by the report of
  `strata data add`) are dropped.
- **events**: each event type becomes a slug (`Add to cart` -> `add_to_cart`) that names its
  per-user count feature; `event_types` declares the whole vocabulary (live events included;
  default: the types in the log); `positives` says which types are trained on and with what
  weight (all types, weight 1, when none are declared); `value` is the declared value column or
  1.0. The event id is the `event_id` column, else `r<row number in the file>` (stable while the
  file only grows).
- **items**: the first text field is the title, the others are joined into the description (both
  are embedded by the text encoder); `tags` are labels used as they are and each categorical and
  multi-valued categorical value becomes an `attr=value` tag, all in `genres` (the item tower's
  multi-hot: one learned embedding per value); the first categorical (else the first label) is
  also the item's `category` (top-category features); `year` fills the era features; numerics
  become `num_<name>` columns (normalised in `models.space`); images come from the image column
  (relative to the items file) or from `<images_dir>/<item id>.<jpg|jpeg|png|webp>`.
- **users**: the first and second categoricals fill the query tower's two demographic embeddings
  (`gender`, `occupation`), `age` its age bucket; numerics become `num_<name>` columns.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from strata.datasets.base import RecDataset, validate
from strata.datasets.spec import (
    SPEC_FILE,
    DatasetSpec,
    check_unique,
    dataset_dir,
    event_slug,
    image_file,
    load_spec,
    parse_timestamps,
    read_table,
    row_label,
)
from strata.errors import DataError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from strata.config import Settings

#: The event type of a log without an event-type column.
DEFAULT_EVENT_TYPE = "interaction"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
#: Cells of a numeric column read as missing (RecBole's ml-100k writes "unkonwn").
MISSING_WORDS = ("unknown", "unkonwn", "nan", "null", "none", "n/a", "na", "?", "-")
#: User categoricals the query tower embeds (its two demographic slots).
MAX_USER_CATEGORICALS = 2


def is_registered(settings: Settings, name: str) -> bool:
    """True when `name` is a dataset registered with `strata data add`."""
    ok = bool(name) and "/" not in name and not name.startswith(".")
    return ok and (dataset_dir(settings, name) / SPEC_FILE).is_file()


def load_registered(settings: Settings, name: str) -> RecDataset:
    """Read registered dataset `name` (its spec and files) as a validated `RecDataset`."""
    return load_declared(name, dataset_dir(settings, name) / SPEC_FILE)


def load_declared(
    name: str, spec_path: Path, base: Path | None = None, images: Path | None = None
) -> RecDataset:
    """Read the files a spec declares as a validated `RecDataset` named `name`; relative paths
    start at `base` (default: the spec's folder); `images` replaces the spec's image source with
    a folder of `<item id>.<jpg|...>` (the built-in datasets' posters)."""
    spec = load_spec(spec_path)
    base = Path(spec_path).parent if base is None else Path(base)
    if images is not None:
        if not Path(images).is_dir():
            raise DataError(images, "images folder does not exist")
        items_spec = spec.items.model_copy(
            update={"images_dir": str(Path(images).resolve()), "image_column": None}
        )
        spec = spec.model_copy(update={"items": items_spec})
    items, item_map = _items(spec, base)
    inter = read_table(spec.interactions, base)
    users, user_map = _users(spec, base, inter)
    events, types, positives = _events(spec, base, inter, user_map, item_map)
    attrs = tuple(dict.fromkeys(attr_name(c) for c in [*spec.items.categorical,
                                                       *spec.items.multi_categorical]))  # fmt: skip
    return validate(RecDataset(name, users, items, events, types, positives, spec.timezone, attrs))


def _dense(ext: pd.Series) -> dict[str, int]:
    """Owner id (as text) -> dense id 1..n in the order given."""
    return {v: i + 1 for i, v in enumerate(ext.tolist())}


def _identity(ids: pd.Series) -> bool:
    """True when the owner's ids (sorted) already are the integers 1..n: they are then the dense
    ids themselves and no `external_id` is kept (MovieLens, the synthetic world)."""
    import numpy as np
    import pandas as pd

    return pd.api.types.is_integer_dtype(ids) and np.array_equal(
        ids.to_numpy(np.int64), np.arange(1, len(ids) + 1)
    )


def attr_name(col: str) -> str:
    """An attribute's name in tags, `num_` columns and `user_pref_<attr>` features: the column
    (less a RecBole `:type`) as a slug."""
    return event_slug(re.sub(r":(token|token_seq|float|float_seq)$", "", col))


def _tags(
    df: pd.DataFrame, categorical: list[str], multi: dict[str, str], plain: dict[str, str]
) -> list[list[str]]:
    """Per row: the plain labels (`tags`) as they are, then `attr=value` tags of the declared
    categoricals (missing values give none)."""
    import numpy as np
    import pandas as pd

    out: list[list[str]] = [[] for _ in range(len(df))]
    for col, sep in plain.items():
        for r, v in enumerate(df[col].tolist()):
            if v is None or (isinstance(v, float) and pd.isna(v)):
                continue
            parts = list(v) if isinstance(v, list | tuple | np.ndarray) else str(v).split(sep)
            out[r].extend(t for t in dict.fromkeys(str(p).strip() for p in parts) if t)
    for col in categorical:
        a = attr_name(col)
        for r, v in enumerate(df[col].tolist()):
            if v is not None and not (isinstance(v, float) and pd.isna(v)) and str(v).strip():
                out[r].append(f"{a}={str(v).strip()}")
    for col, sep in multi.items():
        a = attr_name(col)
        for r, v in enumerate(df[col].tolist()):
            if v is None or (isinstance(v, float) and pd.isna(v)):
                continue
            # a list column (Parquet, JSON) as it is; text split on the declared separator
            parts = list(v) if isinstance(v, list | tuple | np.ndarray) else str(v).split(sep)
            seen = dict.fromkeys(f"{a}={str(p).strip()}" for p in parts if str(p).strip())
            out[r].extend(t for t in seen if t not in out[r])
    return out


def _number(df: pd.DataFrame, col: str, uri: str, rows: np.ndarray | None = None) -> pd.Series:
    """A declared numeric column as float64; text that is not a number is an error naming the
    field and the row in the file (`rows`: each row's position in the file, when `df` was
    re-ordered), an empty cell or a placeholder (MISSING_WORDS) is missing (NaN)."""
    import numpy as np
    import pandas as pd

    raw = df[col]
    if not pd.api.types.is_numeric_dtype(raw):
        words = raw.astype("string").str.strip().str.lower()
        raw = raw.mask(words.isin(MISSING_WORDS) | (words == ""))
    num = pd.to_numeric(raw, errors="coerce").astype("float64")
    bad = (num.isna() & raw.notna()) | ~np.isfinite(num.fillna(0.0))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        at = int(rows[i]) if rows is not None else i
        raise DataError(uri, f"{row_label(at, uri)}: {col} {str(raw.iloc[i])!r} is not a number")
    return num


def _year(df: pd.DataFrame, col: str, uri: str, rows: np.ndarray) -> pd.Series:
    """The declared year column, rounded; a year outside the Int16 column's range is an error
    naming the row (it would not fit the items table)."""
    import numpy as np

    year = _number(df, col, uri, rows).round()
    bad = (year.notna() & ((year < -32768) | (year > 32767))).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        at = row_label(int(rows[i]), uri)
        raise DataError(uri, f"{at}: {col} {year.iloc[i]:g} is not a year")
    return year


def _numeric(
    df: pd.DataFrame, cols: list[str], uri: str, rows: np.ndarray | None = None
) -> dict[str, pd.Series]:
    """Declared numeric columns as `num_<name>` float64 columns (`_number`)."""
    return {f"num_{attr_name(c)}": _number(df, c, uri, rows) for c in cols}


def _items(spec: DatasetSpec, base: Path) -> tuple[pd.DataFrame, dict[str, int]]:
    import pandas as pd

    s = spec.items
    uri = s.resolved(base)
    raw = read_table(s, base)
    check_unique(raw, s.id, uri)  # again: the files may have changed since `data add`
    raw = raw.sort_values(s.id, kind="stable")
    rows = raw.index.to_numpy()  # each row's position in the file, for messages
    raw = raw.reset_index(drop=True)
    ext = raw[s.id].astype(str)
    ids = pd.Series(range(1, len(raw) + 1), dtype="int64")

    def text(col: str) -> pd.Series:
        return raw[col].astype("string").fillna("").str.strip()

    title = text(s.text[0]) if s.text else ext
    rest = [text(c) for c in s.text[1:]]
    desc = (
        pd.concat(rest, axis=1).apply(lambda r: ". ".join(v for v in r if v), axis=1)
        if rest
        else pd.Series([""] * len(raw))
    )
    tags = _tags(raw, s.categorical, s.multi_categorical, s.tags)
    first = [attr_name(c) for c in s.categorical[:1] or list(s.multi_categorical)[:1]]
    if first:
        category = [next((t.split("=", 1)[1] for t in row if t.startswith(f"{first[0]}=")), "")
                    for row in tags]  # fmt: skip
    else:  # the first plain label (they come first), as for a dataset without categories
        category = [row[0] if row and s.tags else "" for row in tags]
    year = _year(raw, s.year, uri, rows) if s.year else pd.Series([None] * len(raw))
    items = pd.DataFrame(
        {
            "item_id": ids,
            "title": title.astype(str),
            "year": pd.array(year, dtype="Int16"),
            "genres": tags,
            "description": desc.astype(str),
            "image_path": _images(spec, base, raw, ext),
            "category": category,
            **({} if _identity(raw[s.id]) else {"external_id": ext}),
            **_numeric(raw, s.numeric, uri, rows),
        }
    )
    return items, _dense(ext)


def _images(spec: DatasetSpec, base: Path, raw: pd.DataFrame, ext: pd.Series) -> list[str | None]:
    """Absolute image paths (None where an item has none)."""
    s = spec.items
    if s.image_column is not None:
        folder = Path(s.resolved(base)).parent
        out: list[str | None] = []
        uri = s.resolved(base)
        for i, v in enumerate(raw[s.image_column].tolist()):
            out.append(image_file(folder, v, s.image_column, uri, i))
        return out
    if s.images_dir is not None:
        folder = Path(s.images_dir)
        folder = folder if folder.is_absolute() else base / folder
        found = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        return [str(found[e]) if e in found else None for e in ext.tolist()]
    return [None] * len(raw)


def _users(
    spec: DatasetSpec, base: Path, inter: pd.DataFrame
) -> tuple[pd.DataFrame, dict[str, int]]:
    import pandas as pd

    u = spec.users
    age = None
    if u is None:
        seen = inter[spec.interactions.user].drop_duplicates()
        key = None if pd.api.types.is_integer_dtype(seen) else str
        raw = pd.DataFrame({"id": sorted(seen.tolist(), key=key)})
        ext = raw["id"].astype(str)
        ids_raw = raw["id"]
        cats: list[str] = []
        nums: dict[str, pd.Series] = {}
    else:
        if len(u.categorical) > MAX_USER_CATEGORICALS:
            raise DataError(
                u.resolved(base),
                f"users.categorical: at most {MAX_USER_CATEGORICALS} are embedded by the query "
                f"tower, got {len(u.categorical)}",
            )
        raw = read_table(u, base)
        check_unique(raw, u.id, u.resolved(base))
        raw = raw.sort_values(u.id, kind="stable")
        rows = raw.index.to_numpy()  # each row's position in the file, for messages
        raw = raw.reset_index(drop=True)
        ext = raw[u.id].astype(str)
        ids_raw = raw[u.id]
        cats = u.categorical
        nums = _numeric(raw, u.numeric, u.resolved(base), rows)
        if u.age is not None:
            years = _number(raw, u.age, u.resolved(base), rows)
            age = years.fillna(0).clip(0, 150).round().astype("int16").to_numpy()

    def cat(i: int) -> list[str]:
        # each categorical has its own embedding table, so values need no `attr=` prefix
        if i >= len(cats):
            return [""] * len(raw)
        return [
            "" if v is None or (isinstance(v, float) and v != v) else str(v).strip()
            for v in raw[cats[i]].tolist()
        ]

    users = pd.DataFrame(
        {
            "user_id": pd.Series(range(1, len(ext) + 1), dtype="int64"),
            "age": pd.Series([0] * len(ext) if age is None else age, dtype="int16"),
            "gender": cat(0),
            "occupation": cat(1),
            "zip": [""] * len(ext),
            **({} if _identity(ids_raw) else {"external_id": ext.to_numpy()}),
            **{k: v.to_numpy() for k, v in nums.items()},
        }
    )
    return users, _dense(ext)


def _events(
    spec: DatasetSpec,
    base: Path,
    inter: pd.DataFrame,
    users: dict[str, int],
    items: dict[str, int],
) -> tuple[pd.DataFrame, tuple[str, ...], dict[str, float] | None]:
    import numpy as np
    import pandas as pd

    it = spec.interactions
    uri = it.resolved(base)
    ts = parse_timestamps(inter[it.timestamp], it.timestamp_unit, uri, it.timestamp)
    uid = inter[it.user].astype(str).map(users)
    iid = inter[it.item].astype(str).map(items)
    if it.event_type is not None:
        etype = inter[it.event_type].astype(str).map(event_slug)
    else:
        etype = pd.Series([DEFAULT_EVENT_TYPE] * len(inter))
    if it.value is not None:
        value = pd.to_numeric(inter[it.value], errors="coerce").fillna(1.0)
    else:
        value = pd.Series(np.ones(len(inter)))
    row_ids = pd.Series([f"r{i + 1}" for i in range(len(inter))])
    if it.event_id is not None:  # the owner's ids, the row number where a cell is empty
        row_ids = inter[it.event_id].astype("string").str.strip().replace("", None).fillna(row_ids)
    events = pd.DataFrame(
        {
            "event_id": row_ids.astype(str).to_numpy(),
            "user_id": uid,
            "item_id": iid,
            "event_type": etype,
            "value": value.astype("float32"),
            "ts": ts.to_numpy(np.int64),
            "device": (
                inter[it.device]
                .astype("string")
                .fillna("unknown")
                .str.strip()
                .str.lower()
                .astype(str)
                if it.device is not None
                else "unknown"
            ),
        }
    )
    events = events[events["user_id"].notna() & events["item_id"].notna()].copy()
    events["user_id"] = events["user_id"].astype("int64")
    events["item_id"] = events["item_id"].astype("int64")
    positives = {event_slug(k): float(w) for k, w in it.positives.items()} or None
    vocab = tuple(dict.fromkeys(event_slug(t) for t in it.event_types))
    if vocab:  # declared: the log may not hold others (the files may have changed since `add`)
        outside = ~events["event_type"].isin(vocab).to_numpy()
        if outside.any():
            t = events["event_type"].iloc[int(np.flatnonzero(outside)[0])]
            raise DataError(uri, f"{it.event_type}: {t!r} is not among event_types {list(vocab)}")
        types = vocab
    else:
        types = tuple(sorted(set(events["event_type"]) | set(positives or {})))
    return events.reset_index(drop=True), types or (DEFAULT_EVENT_TYPE,), positives
