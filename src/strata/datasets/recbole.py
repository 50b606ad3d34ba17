"""RecBole atomic files (`<name>.inter`, `<name>.item`, `<name>.user`) as a dataset spec, for
`strata data add NAME --recbole PREFIX` (then the one path every declared dataset takes).

Atomic files are tab-separated with typed headers (`user_id:token`, `rating:float`,
`class:token_seq`, ...; RecBole's documented format). The spec is read off the headers, with
RecBole's default field names: `user_id`, `item_id`, `timestamp` (unix seconds), `rating` (the
event value). Item fields: a `token_seq` whose name says it is text (title, name, description,
review) is embedded as text, any other `token_seq` is a multi-valued categorical (space
separated), `token` a categorical, `float` a numeric; `*_seq` floats are skipped. A `token` named
like a number (age, year, release_year, price) is numeric when every cell parses as one (RecBole's
ml-100k has a release year 'V', so there it stays categorical). User fields: the first two
`token` fields are categoricals, `float` fields numerics. The `.user` file is
optional; the `.inter` file must have a timestamp (strata splits and builds features by time).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from strata.errors import DataError

TEXT_HINTS = ("title", "name", "desc", "review", "text")
NUMERIC_TOKENS = ("age", "year", "release_year", "price")
USER, ITEM, TIME, VALUE = "user_id", "item_id", "timestamp", "rating"


def _header(path: Path) -> dict[str, str]:
    """`name -> type` of an atomic file's header line."""
    try:
        with path.open(encoding="utf-8") as f:
            line = f.readline().rstrip("\n\r")
    except OSError as exc:
        raise DataError(path, f"cannot read: {exc.strerror or exc}") from None
    fields = {}
    for col in line.split("\t"):
        name, sep, kind = col.partition(":")
        if not sep or kind not in ("token", "token_seq", "float", "float_seq"):
            raise DataError(path, f"row 1: header field {col!r} is not name:token|token_seq|"
                                  "float|float_seq (RecBole atomic format)")  # fmt: skip
        fields[name] = col
    return fields


def _all_numbers(path: Path, col: str) -> bool:
    """Whether every cell of `col` is a number or a missing-value word (then it is numeric)."""
    import pandas as pd

    from strata.datasets.spec_load import MISSING_WORDS

    cells = pd.read_csv(path, sep="\t", usecols=[col], dtype=str, quoting=3)[col]
    words = cells.fillna("").str.strip().str.lower()
    present = cells[~(words.isin(MISSING_WORDS) | (words == ""))]
    return bool(pd.to_numeric(present, errors="coerce").notna().all())


def _files(prefix: Path) -> dict[str, Path]:
    """The atomic files of `prefix` (`dir/ml-100k`, or a folder holding one `*.inter`)."""
    prefix = Path(prefix).expanduser().resolve()
    if prefix.is_dir():
        inters = sorted(prefix.glob("*.inter"))
        if len(inters) != 1:
            raise DataError(prefix, f"holds {len(inters)} .inter files; name one as dir/<name>")
        prefix = inters[0].with_suffix("")
    found = {s: prefix.with_name(f"{prefix.name}.{s}") for s in ("inter", "item", "user")}
    for s in ("inter", "item"):
        if not found[s].is_file():
            raise DataError(found[s], f"missing: RecBole import needs {prefix.name}.inter and "
                                      f"{prefix.name}.item")  # fmt: skip
    return {s: p for s, p in found.items() if p.is_file()}


def recbole_spec(prefix: Path) -> dict[str, Any]:
    """A dataset spec (as a mapping, absolute paths) over the atomic files of `prefix`."""
    files = _files(prefix)
    inter = _header(files["inter"])
    for need in (USER, ITEM, TIME):
        if need not in inter:
            raise DataError(files["inter"], f"row 1: no {need} field; have {list(inter)}")
    interactions: dict[str, Any] = {
        "path": str(files["inter"]), "format": "csv", "delimiter": "\t",
        "user": inter[USER], "item": inter[ITEM], "timestamp": inter[TIME],
        "timestamp_unit": "s",
    }  # fmt: skip
    if VALUE in inter:
        interactions["value"] = inter[VALUE]
    item = _header(files["item"])
    if ITEM not in item:
        raise DataError(files["item"], f"row 1: no {ITEM} field; have {list(item)}")
    items: dict[str, Any] = {"path": str(files["item"]), "format": "csv", "delimiter": "\t",
                             "id": item[ITEM], "text": [], "categorical": [],
                             "multi_categorical": {}, "numeric": []}  # fmt: skip
    for name, col in item.items():
        kind = col.split(":", 1)[1]
        if name == ITEM or kind == "float_seq":
            continue
        if kind == "token_seq":
            if any(h in name.lower() for h in TEXT_HINTS):
                items["text"].append(col)
            else:
                items["multi_categorical"][col] = " "
        elif kind == "float" or (name in NUMERIC_TOKENS and _all_numbers(files["item"], col)):
            items["numeric"].append(col)
        else:
            items["categorical"].append(col)
    spec: dict[str, Any] = {"interactions": interactions, "items": items}
    if "user" in files:
        user = _header(files["user"])
        if USER not in user:
            raise DataError(files["user"], f"row 1: no {USER} field; have {list(user)}")
        nums = [c for n, c in user.items() if n != USER and (c.endswith(":float") or (
                n in NUMERIC_TOKENS and _all_numbers(files["user"], c)))]  # fmt: skip
        cats = [c for n, c in user.items() if n != USER and c.endswith(":token")
                and c not in nums]  # fmt: skip
        spec["users"] = {"path": str(files["user"]), "format": "csv", "delimiter": "\t",
                         "id": user[USER], "categorical": cats[:2], "numeric": nums}  # fmt: skip
    return spec


def register_recbole(settings: Any, name: str, prefix: Path) -> dict[str, Any]:
    """Register the atomic files of `prefix` as dataset `name` (`spec.register_spec`)."""
    import tempfile

    import yaml

    from strata.datasets.spec import register_spec

    spec = recbole_spec(prefix)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return register_spec(settings, name, path)
