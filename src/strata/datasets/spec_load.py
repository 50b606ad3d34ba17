"""A registered dataset spec read into the `RecDataset` contract, so declared data takes the one
path every dataset takes (offline store -> features -> training -> serving).

What the spec's declarations become (`base.py` has the contract):

- **ids**: the owner's ids (strings or integers) stay in an `external_id` column of users and
  items; inside, ids are dense int64 from 1 in the owner's id order, so a re-load of the same
  files gives the same ids. Interactions whose user or item is unknown (counted by the report of
  `strata data add`) are dropped.
- **events**: each event type becomes a slug (`Add to cart` -> `add_to_cart`) that names its
  per-user count feature; `positives` says which types are trained on and with what weight (all
  types, weight 1, when none are declared); `value` is the declared value column or 1.0. The
  event id is `<row number in the file>`, stable while the file only grows.
- **items**: the first text field is the title, the others are joined into the description (both
  are embedded by the text encoder); each categorical and multi-valued categorical value becomes an
  `attr=value` tag in `genres` (the item tower's multi-hot: one learned embedding per value), the
  first categorical is also the item's `category` (top-category features); numerics become
  `num_<name>` columns (normalised in `models.space`); images come from the image column (relative
  to the items file) or from `<images_dir>/<item id>.<jpg|jpeg|png|webp>`.
- **users**: the first and second categoricals fill the query tower's two demographic embeddings
  (`gender`, `occupation`) as `attr=value`; numerics become `num_<name>` columns.
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
    load_spec,
    parse_timestamps,
    read_table,
)
from strata.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from strata.config import Settings

#: The event type of a log without an event-type column.
DEFAULT_EVENT_TYPE = "interaction"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
#: Cells of a numeric column read as missing (RecBole's ml-100k writes "unkonwn").
MISSING_WORDS = ("unknown", "unkonwn", "nan", "null", "none", "n/a", "na", "?", "-")
#: User categoricals the query tower embeds (its two demographic slots).
MAX_USER_CATEGORICALS = 2


def event_slug(value: object) -> str:
    """An event type as a feature-name-safe slug: lower case, [a-z0-9_], starting with a letter,
    at most 32 characters (`Add to cart` -> `add_to_cart`)."""
    s = re.sub(r"[^a-z0-9]+", "_", str(value).strip().lower()).strip("_")
    if not s or not s[0].isalpha():
        s = f"t_{s}"
    return s[:32].rstrip("_")


def is_registered(settings: Settings, name: str) -> bool:
    """True when `name` is a dataset registered with `strata data add`."""
    ok = bool(name) and "/" not in name and not name.startswith(".")
    return ok and (dataset_dir(settings, name) / SPEC_FILE).is_file()


def load_registered(settings: Settings, name: str) -> RecDataset:
    """Read registered dataset `name` (its spec and files) as a validated `RecDataset`."""
    spec_path = dataset_dir(settings, name) / SPEC_FILE
    spec = load_spec(spec_path)
    base = spec_path.parent
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


def attr_name(col: str) -> str:
    """An attribute's name in tags, `num_` columns and `user_pref_<attr>` features: the column
    (less a RecBole `:type`) as a slug."""
    return event_slug(re.sub(r":(token|token_seq|float|float_seq)$", "", col))


def _tags(df: pd.DataFrame, categorical: list[str], multi: dict[str, str]) -> list[list[str]]:
    """`attr=value` tags per row of the declared categoricals (missing values give none)."""
    import numpy as np
    import pandas as pd

    out: list[list[str]] = [[] for _ in range(len(df))]
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


def _numeric(df: pd.DataFrame, cols: list[str], uri: str) -> dict[str, pd.Series]:
    """Declared numeric columns as float64 (`num_<name>`); text that is not a number is an error
    naming the row and field, an empty cell or a placeholder (MISSING_WORDS) is missing (NaN)."""
    import numpy as np
    import pandas as pd

    out = {}
    for col in cols:
        raw = df[col]
        if not pd.api.types.is_numeric_dtype(raw):
            words = raw.astype("string").str.strip().str.lower()
            raw = raw.mask(words.isin(MISSING_WORDS) | (words == ""))
        num = pd.to_numeric(raw, errors="coerce").astype("float64")
        bad = (num.isna() & raw.notna()) | ~np.isfinite(num.fillna(0.0))
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(uri, f"row {i + 1}: {col} {str(raw.iloc[i])!r} is not a number")
        out[f"num_{attr_name(col)}"] = num
    return out


def _items(spec: DatasetSpec, base: Path) -> tuple[pd.DataFrame, dict[str, int]]:
    import pandas as pd

    s = spec.items
    uri = s.resolved(base)
    raw = read_table(s, base)
    check_unique(raw, s.id, uri)  # again: the files may have changed since `data add`
    raw = raw.sort_values(s.id, kind="stable").reset_index(drop=True)
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
    tags = _tags(raw, s.categorical, s.multi_categorical)
    first = [attr_name(c) for c in s.categorical[:1] or list(s.multi_categorical)[:1]]
    category = [next((t.split("=", 1)[1] for t in row if t.startswith(f"{first[0]}=")), "")
                if first else "" for row in tags]  # fmt: skip
    items = pd.DataFrame(
        {
            "item_id": ids,
            "title": title.astype(str),
            "year": pd.array([None] * len(raw), dtype="Int16"),
            "genres": tags,
            "description": desc.astype(str),
            "image_path": _images(spec, base, raw, ext),
            "category": category,
            "external_id": ext,
            **_numeric(raw, s.numeric, uri),
        }
    )
    return items, _dense(ext)


def _images(spec: DatasetSpec, base: Path, raw: pd.DataFrame, ext: pd.Series) -> list[str | None]:
    """Absolute image paths (None where an item has none)."""
    s = spec.items
    if s.image_column is not None:
        folder = Path(s.resolved(base)).parent
        out: list[str | None] = []
        for v in raw[s.image_column].tolist():
            if v is None or (isinstance(v, float) and v != v) or not str(v).strip():
                out.append(None)
                continue
            p = Path(str(v).strip()).expanduser()
            out.append(str(p if p.is_absolute() else folder / p))
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
    if u is None:
        ext = pd.Series(sorted(inter[spec.interactions.user].astype(str).unique()), dtype=str)
        raw = pd.DataFrame(index=range(len(ext)))
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
        raw = raw.sort_values(u.id, kind="stable").reset_index(drop=True)
        ext = raw[u.id].astype(str)
        cats = u.categorical
        nums = _numeric(raw, u.numeric, u.resolved(base))

    def cat(i: int) -> list[str]:
        if i >= len(cats):
            return [""] * len(raw)
        col, a = cats[i], attr_name(cats[i])
        return [
            "" if v is None or (isinstance(v, float) and v != v) else f"{a}={str(v).strip()}"
            for v in raw[col].tolist()
        ]

    users = pd.DataFrame(
        {
            "user_id": pd.Series(range(1, len(ext) + 1), dtype="int64"),
            "age": pd.Series([0] * len(ext), dtype="int16"),
            "gender": cat(0),
            "occupation": cat(1),
            "zip": [""] * len(ext),
            "external_id": ext.to_numpy(),
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
    events = pd.DataFrame(
        {
            "event_id": [f"r{i + 1}" for i in range(len(inter))],
            "user_id": uid,
            "item_id": iid,
            "event_type": etype,
            "value": value.astype("float32"),
            "ts": ts.to_numpy(np.int64),
            "device": (
                inter[it.device].astype("string").fillna("unknown").str.strip().str.lower()
                if it.device is not None
                else "unknown"
            ),
        }
    )
    events = events[events["user_id"].notna() & events["item_id"].notna()].copy()
    events["user_id"] = events["user_id"].astype("int64")
    events["item_id"] = events["item_id"].astype("int64")
    positives = {event_slug(k): float(w) for k, w in it.positives.items()} or None
    types = tuple(sorted(set(events["event_type"]) | set(positives or {}))) or (DEFAULT_EVENT_TYPE,)
    return events.reset_index(drop=True), types, positives
