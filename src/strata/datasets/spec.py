"""A dataset declared by its owner: one YAML spec over their own files (`strata data add`).

The spec says where the interactions, items and users live (CSV, Parquet or JSON lines; a path
relative to the spec file, an absolute path, or `s3://`), which columns hold what, how
timestamps are written (unix seconds, milliseconds or ISO-8601), which event types count as
positives with what weight, the item and user attributes by kind, and the time zone of the
hour/day-of-week context. Unknown keys are errors that name the key.

`check_spec` reads the files through DuckDB (one reader for every format, local or S3), checks
every declared column, parses every timestamp and id, and returns a report: rows, users, items,
time span, missing values per declared column, duplicate ids, and interactions whose user or item
is unknown or whose event type is not declared. Hard errors (a missing file or column, an
unparseable timestamp, a duplicate id) raise `DataError` naming the file, row and field;
`register_spec` writes the spec (paths resolved) and its report under
`$STRATA_HOME/datasets/<name>/` only after the check passed, so a failed add leaves nothing.

Example (docs/own-data.md has a complete one):

    interactions:
      path: events.jsonl
      user: customer
      item: sku
      timestamp: ts_ms
      timestamp_unit: ms
      event_type: action
      positives: {view: 0.2, add_to_cart: 0.6, purchase: 1.0}
    items:
      path: products.parquet
      id: sku
      text: [title, description]
      categorical: [brand]
      multi_categorical: {category: ">"}
      numeric: [price]
      image_column: image
    users:
      path: customers.csv
      id: customer
      categorical: [segment]
    timezone: Europe/Berlin
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from strata.duckio import load_httpfs
from strata.errors import DataError, ValidationError

if TYPE_CHECKING:
    import pandas as pd

    from strata.config import Settings

SPEC_FILE = "spec.yaml"
REPORT_FILE = "report.json"
Format = Literal["csv", "parquet", "jsonl"]
_SUFFIX_FORMAT = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet",
                  ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}  # fmt: skip
_EXAMPLES = 5  # rows quoted in a report entry


def event_slug(value: object) -> str:
    """An event type as a feature-name-safe slug: lower case, [a-z0-9_], starting with a letter,
    at most 32 characters (`Add to cart` -> `add_to_cart`)."""
    s = re.sub(r"[^a-z0-9]+", "_", str(value).strip().lower()).strip("_")
    if not s or not s[0].isalpha():
        s = f"t_{s}"
    return s[:32].rstrip("_")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TableSpec(_Strict):
    """Where one table lives."""

    path: str = Field(min_length=1)
    format: Format | None = None  # default: from the file suffix
    # CSV only: the field separator (default: detected) -- a declared one also turns quoting off,
    # for tab-separated exports whose text fields contain quote characters (RecBole's)
    delimiter: str | None = Field(default=None, min_length=1, max_length=1)

    def resolved(self, base: Path) -> str:
        """The path as DuckDB reads it: s3:// as given, relative to the spec's folder otherwise."""
        if self.path.startswith("s3://"):
            return self.path
        p = Path(self.path).expanduser()
        return str(p if p.is_absolute() else (base / p).resolve())

    def file_format(self) -> Format:
        if self.format is not None:
            return self.format
        suffix = Path(self.path.removesuffix(".gz")).suffix.lower()
        fmt = _SUFFIX_FORMAT.get(suffix)
        if fmt is None:
            raise ValidationError("format", f"cannot tell the format of {self.path!r}; set it")
        return fmt  # type: ignore[return-value]


class InteractionsSpec(TableSpec):
    """The interaction log: who did what to which item, when."""

    user: str
    item: str
    timestamp: str
    timestamp_unit: Literal["s", "ms", "iso"] = "s"
    event_type: str | None = None  # column; absent: every row is one positive event type
    value: str | None = None  # optional numeric column (a rating, a quantity)
    device: str | None = None  # optional column: the device of the event (context feature)
    event_id: str | None = None  # optional column: a stable id per event (default: row number)
    # every event type the log and live events may carry (default: the types in the log)
    event_types: list[str] = Field(default_factory=list)
    positives: dict[str, float] = Field(default_factory=dict)  # event type -> weight

    @field_validator("positives")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: w for k, w in v.items() if not w > 0}
        if bad:
            raise ValueError(f"weights must be > 0, got {bad}")
        return v

    @model_validator(mode="after")
    def _types_need_a_column(self) -> InteractionsSpec:
        if (self.positives or self.event_types) and self.event_type is None:
            raise ValueError(
                "positives and event_types name event types: declare the event_type column"
            )
        vocab = {event_slug(t) for t in self.event_types}
        outside = [t for t in self.positives if vocab and event_slug(t) not in vocab]
        if outside:
            raise ValueError(f"positives {outside} are not among event_types")
        return self

    def columns(self) -> list[str]:
        """Every column the spec reads."""
        cols = [self.user, self.item, self.timestamp, self.event_type, self.value, self.device]
        return list(dict.fromkeys(c for c in [*cols, self.event_id] if c is not None))


class ItemsSpec(TableSpec):
    """The catalogue: one row per item, attributes by kind."""

    id: str
    text: list[str] = Field(default_factory=list)  # fields joined and embedded
    categorical: list[str] = Field(default_factory=list)
    multi_categorical: dict[str, str] = Field(default_factory=dict)  # column -> separator
    # column -> separator: labels used as they are (no `attr=`), e.g. genres; the first is the
    # category when no categorical is declared
    tags: dict[str, str] = Field(default_factory=dict)
    numeric: list[str] = Field(default_factory=list)
    year: str | None = None  # column: the year the item dates from (release, launch)
    image_column: str | None = None  # a path or URL-free file name per item
    images_dir: str | None = None  # or a folder of <item id>.jpg

    @model_validator(mode="after")
    def _one_image_source(self) -> ItemsSpec:
        if self.image_column and self.images_dir:
            raise ValueError("declare image_column or images_dir, not both")
        return self

    def columns(self) -> list[str]:
        """Every column the spec reads, id first."""
        cols: list[str | None] = [self.id, *self.text, *self.categorical, *self.multi_categorical]
        cols += [*self.tags, *self.numeric, self.year, self.image_column]
        return list(dict.fromkeys(c for c in cols if c is not None))


class UsersSpec(TableSpec):
    """Optional user attributes."""

    id: str
    categorical: list[str] = Field(default_factory=list)
    numeric: list[str] = Field(default_factory=list)
    age: str | None = None  # column: age in years (the query tower's age bucket)

    def columns(self) -> list[str]:
        cols = [self.id, *self.categorical, *self.numeric, self.age]
        return list(dict.fromkeys(c for c in cols if c is not None))


class DatasetSpec(_Strict):
    """A whole dataset: interactions and items (required), users (optional), context time zone."""

    interactions: InteractionsSpec
    items: ItemsSpec
    users: UsersSpec | None = None
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {v!r} (an IANA name such as Europe/Berlin)"
            ) from None
        return v


def load_spec(path: Path) -> DatasetSpec:
    """Parse and validate a spec file; ValidationError names the key, DataError the file."""
    import pydantic
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(path, f"cannot read the spec: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise DataError(path, f"not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise DataError(path, "expected a mapping with interactions, items (and users)")
    try:
        return DatasetSpec.model_validate(raw)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "spec"
        msg = first["msg"].removeprefix("Value error, ")
        raise ValidationError(key, f"{msg} (in {path})") from None


# --- reading and checking -----------------------------------------------------------------------


def read_table(table: TableSpec, base: Path) -> pd.DataFrame:
    """A declared table as a pandas frame (DuckDB reads CSV, Parquet and JSON lines, local or
    s3://); DataError naming the file when it is missing or unreadable."""
    import duckdb

    uri = table.resolved(base)
    if not uri.startswith("s3://") and not Path(uri).is_file():
        raise DataError(uri, "file does not exist")
    delim = table.delimiter
    reader = {
        "csv": "read_csv_auto(?, header = true)"
        if delim is None
        else f"read_csv(?, header = true, delim = {_sql_str(delim)}, quote = '', escape = '')",
        "parquet": "read_parquet(?)",
        "jsonl": "read_json_auto(?, format = 'newline_delimited')",
    }[table.file_format()]
    con = duckdb.connect()
    try:
        if uri.startswith("s3://"):
            load_httpfs(con, uri)
        return con.execute(f"SELECT * FROM {reader}", [uri]).df()
    except duckdb.Error as exc:
        first = str(exc).splitlines()[0]
        raise DataError(uri, f"unreadable {table.file_format()}: {first}") from None
    finally:
        con.close()


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _require(df: pd.DataFrame, cols: list[str], uri: str, section: str) -> None:
    for c in cols:
        if c not in df.columns:
            raise DataError(uri, f"{section}: no column {c!r}; the file has {list(df.columns)}")


def row_label(i: int, uri: str) -> str:
    """Row `i` (0-based) as an editor shows it: the line number in CSV (after the header) and
    JSON lines, the 1-based row in Parquet."""
    return (
        f"row {i + 2}" if uri.endswith((".csv", ".tsv", ".csv.gz", ".tsv.gz")) else f"row {i + 1}"
    )


def _shown(value: object) -> str:
    """A cell for a message: JSON-typed cells (mixed-type JSON columns) lose their quotes."""
    text = str(value)
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    return repr(text)


def parse_timestamps(values: pd.Series, unit: str, uri: str, field: str) -> pd.Series:
    """Unix seconds (int64) from seconds, milliseconds or ISO-8601 text; DataError naming the
    first bad row and the field."""
    import numpy as np
    import pandas as pd

    if unit == "iso":
        ts = pd.to_datetime(values.astype("string"), errors="coerce", utc=True, format="ISO8601")
        bad = ts.isna().to_numpy()
    else:
        num = pd.to_numeric(values, errors="coerce").astype("float64")
        secs_f = num // (1000 if unit == "ms" else 1)
        # 2**63 s and beyond would cast to int64's minimum
        bad = (num.isna() | ~np.isfinite(num) | (num < 0) | (secs_f >= 2.0**63)).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            uri,
            f"{row_label(i, uri)}: {field} {_shown(values.iloc[i])} is not a timestamp in {unit!r}",
        )
    if unit == "iso":
        # Whatever unit pandas picked for the parsed times (naive times are read as UTC), in
        # microseconds: nanoseconds (what subtracting a Timestamp gives) end in 2262.
        secs = ts.dt.as_unit("us").astype("int64") // 1_000_000
    else:
        secs = secs_f.astype("int64")
    return secs.astype("int64")


def check_unique(df: pd.DataFrame, col: str, uri: str) -> None:
    """DataError naming the first row whose `col` repeats an earlier row's."""
    import numpy as np

    dup = df[col].duplicated(keep="first").to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise DataError(uri, f"{row_label(i, uri)}: duplicate {col} {_shown(df[col].iloc[i])}")


def _missing(df: pd.DataFrame, cols: list[str]) -> dict[str, int]:
    out = {c: int(df[c].isna().sum()) for c in cols}
    return {c: n for c, n in out.items() if n}


def image_file(folder: Path, value: object, column: str, uri: str, row: int) -> str | None:
    """The absolute path of an items row's image name (None when empty). The owner's file names
    an image next to the items file; a name that leads out of that folder (absolute, "..", a
    symlink) would let GET /items/{id}/image serve any file of the server's with an image
    suffix, so it is a DataError naming the row."""
    from strata.safepath import inside

    if value is None or (isinstance(value, float) and value != value) or not str(value).strip():
        return None
    try:
        return str(inside(folder, str(value).strip(), column))
    except ValidationError as exc:
        raise DataError(uri, f"{row_label(row, uri)}: {exc}") from None


def check_spec(spec: DatasetSpec, base: Path) -> dict[str, Any]:
    """Read every declared table, enforce the hard rules, and report on the data (module
    docstring). `base` is the folder relative paths start from (the spec file's)."""
    import numpy as np

    it = spec.interactions
    inter_uri = it.resolved(base)
    inter = read_table(it, base)
    inter_cols = it.columns()
    _require(inter, inter_cols, inter_uri, "interactions")
    for c in (it.user, it.item):
        if inter[c].isna().any():
            i = int(np.flatnonzero(inter[c].isna().to_numpy())[0])
            raise DataError(inter_uri, f"{row_label(i, inter_uri)}: {c} is empty")
    ts = parse_timestamps(inter[it.timestamp], it.timestamp_unit, inter_uri, it.timestamp)

    items_uri = spec.items.resolved(base)
    items = read_table(spec.items, base)
    _require(items, spec.items.columns(), items_uri, "items")
    check_unique(items, spec.items.id, items_uri)
    if spec.items.image_column is not None:
        folder = Path(items_uri).parent
        for i, v in enumerate(items[spec.items.image_column].tolist()):
            image_file(folder, v, spec.items.image_column, items_uri, i)
    if spec.items.images_dir is not None:
        folder = Path(spec.items.images_dir)
        folder = folder if folder.is_absolute() else (base / folder)
        if not folder.is_dir():
            raise DataError(folder, "images folder does not exist")

    users = None
    users_uri = None
    if spec.users is not None:
        users_uri = spec.users.resolved(base)
        users = read_table(spec.users, base)
        _require(users, spec.users.columns(), users_uri, "users")
        check_unique(users, spec.users.id, users_uri)

    item_ids = set(items[spec.items.id].astype(str))
    unknown_item = ~inter[it.item].astype(str).isin(item_ids)
    unknown_user = np.zeros(len(inter), bool)
    if users is not None and spec.users is not None:
        unknown_user = ~inter[it.user].astype(str).isin(set(users[spec.users.id].astype(str)))
        unknown_user = unknown_user.to_numpy()
    types: dict[str, int] = {}
    undeclared = 0
    if it.event_type is not None:
        counts = inter[it.event_type].astype(str).value_counts()
        types = {str(k): int(v) for k, v in counts.items()}
        if it.positives:
            undeclared = sum(n for t, n in types.items() if t not in it.positives)
        vocab = {event_slug(t) for t in it.event_types}
        outside = ~inter[it.event_type].astype(str).map(event_slug).isin(vocab)
        if vocab and outside.any():
            i = int(np.flatnonzero(outside.to_numpy())[0])
            raise DataError(
                inter_uri,
                f"{row_label(i, inter_uri)}: {it.event_type} "
                f"{_shown(inter[it.event_type].iloc[i])} is not among event_types {sorted(vocab)}",
            )
    report: dict[str, Any] = {
        "interactions": {
            "file": inter_uri,
            "rows": len(inter),
            "users": int(inter[it.user].nunique()),
            "items": int(inter[it.item].nunique()),
            "time_span": [int(ts.min()), int(ts.max())] if len(ts) else None,
            "event_types": types,
            "rows_with_undeclared_event_type": int(undeclared),
            "rows_with_unknown_item": int(unknown_item.sum()),
            "rows_with_unknown_user": int(unknown_user.sum()),
            "unknown_item_examples": inter.loc[unknown_item, it.item]
            .astype(str)
            .head(_EXAMPLES)
            .tolist(),
            "missing": _missing(inter, inter_cols),
            "duplicate_event_ids": int(inter[it.event_id].duplicated().sum()) if it.event_id else 0,
        },
        "items": {
            "file": items_uri,
            "rows": len(items),
            "missing": _missing(items, spec.items.columns()),
        },
        "timezone": spec.timezone,
    }
    if users is not None and spec.users is not None:
        report["users"] = {
            "file": users_uri,
            "rows": len(users),
            "missing": _missing(users, spec.users.columns()),
        }
    usable = ~unknown_item.to_numpy() & ~unknown_user
    report["usable_interactions"] = int(usable.sum())
    if not usable.any():
        raise DataError(inter_uri, "no interaction refers to a known item and user")
    return report


def dataset_dir(settings: Settings, name: str) -> Path:
    """`$STRATA_HOME/datasets/<name>` of a registered dataset."""
    return settings.home / "datasets" / name


def register_spec(settings: Settings, name: str, spec_path: Path) -> dict[str, Any]:
    """Check the spec and its files, then register it as dataset `name`: the spec with paths
    resolved (so it no longer depends on where it was written) and the report. Nothing is
    written when a check fails. Returns the report."""
    from strata.atomic import atomic_write_text
    from strata.safepath import check_name

    builtin = ("movielens-100k", "synthetic")
    check_name("name", name)  # it becomes <home>/datasets/<name>: no "..", "/" or NUL
    if name in builtin:
        raise ValidationError("name", f"{name!r} is not a usable dataset name")
    spec_path = Path(spec_path)
    spec = load_spec(spec_path)
    base = spec_path.resolve().parent
    report = check_spec(spec, base)
    resolved = spec.model_dump(exclude_none=True)
    for section in ("interactions", "items", "users"):
        table = getattr(spec, section)
        if table is not None:
            resolved[section]["path"] = table.resolved(base)
    if spec.items.images_dir is not None and not Path(spec.items.images_dir).is_absolute():
        resolved["items"]["images_dir"] = str((base / spec.items.images_dir).resolve())
    import yaml

    out = dataset_dir(settings, name)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / REPORT_FILE, json.dumps(report, indent=2, sort_keys=True))
    atomic_write_text(out / SPEC_FILE, yaml.safe_dump(resolved, sort_keys=False))
    return {"dataset": name, "spec": str(out / SPEC_FILE), **report}
