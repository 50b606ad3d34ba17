"""Property tests for the parsers of tabular outside data: Criteo TSV lines (to Parquet, and the
CTR service's JSON rows, which must read numbers exactly as the offline path does), MovieLens-100K
files (GroupLens layout, written small in tmp_path) and a declared dataset's CSV files and
timestamps. Same invariant as test_parsers_property.py: a correct parse or a `DataError` /
`ValidationError` naming the file, row or field, and a failed conversion writes nothing.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from strata.config import Settings
from strata.ctr.preprocess import _int_values, parse_records
from strata.datasets.criteo import CAT_COLUMNS, INT_COLUMNS, criteo_to_parquet, iter_criteo_batches
from strata.datasets.movielens import GENRES, parse_movielens_100k
from strata.datasets.spec import dataset_dir, parse_timestamps, register_spec
from strata.errors import DataError, ValidationError
from tests.unit.property_support import props

PROPS = props(100)
FEW = props(40)  # each example writes and reads files


def _tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` by relative path -> SHA-256 (to compare byte for byte)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --- Criteo --------------------------------------------------------------------------------------

criteo_rows = st.tuples(
    st.integers(0, 1),
    st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), min_size=13, max_size=13),
    st.lists(
        st.one_of(st.none(), st.text("0123456789abcdef", min_size=8, max_size=8)),
        min_size=26,
        max_size=26,
    ),
)


def _tsv(row: tuple[int, list[int | None], list[str | None]]) -> str:
    label, ints, cats = row
    cells = [str(label), *("" if v is None else str(v) for v in ints)]
    return "\t".join(cells + ["" if c is None else c for c in cats])


@FEW
@given(st.lists(criteo_rows, min_size=1, max_size=20), st.sampled_from(["\n", "\r\n"]))
def test_criteo_lines_round_trip_through_parquet(tmp_path: Path, rows: list, eol: str) -> None:
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    (work / "day.tsv").write_text(eol.join(_tsv(r) for r in rows) + eol)
    info = criteo_to_parquet(work / "day.tsv", work / "pq", chunk_rows=7)
    df = pd.concat(list(iter_criteo_batches(work / "pq", batch_rows=5)), ignore_index=True)
    assert info.rows == len(rows) and info.positives == sum(r[0] for r in rows)
    assert df["label"].tolist() == [r[0] for r in rows]
    for j, c in enumerate(INT_COLUMNS):
        assert [None if pd.isna(v) else int(v) for v in df[c]] == [r[1][j] for r in rows]
    for j, c in enumerate(CAT_COLUMNS):
        assert [None if pd.isna(v) else v for v in df[c]] == [r[2][j] for r in rows]


bad_criteo_lines = st.one_of(
    st.binary(max_size=60).filter(lambda b: b"\n" not in b),
    criteo_rows.map(_tsv).map(lambda t: t.rsplit("\t", 1)[0]),  # a field short
    criteo_rows.map(_tsv).map(lambda t: t + "\tx"),  # a field extra
    criteo_rows.map(_tsv).map(lambda t: "2" + t[1:]),  # label 2
    criteo_rows.map(_tsv).map(lambda t: "\t" + t[2:]),  # no label
    st.sampled_from(["9" * 25, "١٢", "1e3", "nan", "inf", "0x1"]).map(
        lambda v: "\t".join(["0", v] + [""] * 38)
    ),
    st.just("0" + "\t" * 13 + "\xff" * 3 + "\t" * 25),
)


# Arrow fails to decode a short row with invalid UTF-8 before it calls our handler (it reports
# that as "Exception ignored"); the read still ends in its own parse error, which must be named.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@FEW
@given(
    st.lists(criteo_rows.map(_tsv), max_size=5),
    bad_criteo_lines,
    st.integers(0, 5),
)
def test_bad_criteo_line_is_a_named_error_and_keeps_the_old_output(
    tmp_path: Path, good: list[str], bad: str | bytes, at: int
) -> None:
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    lines = [x.encode() if isinstance(x, str) else x for x in good]
    lines.insert(
        min(at, len(lines)), bad.encode("utf-8", "surrogatepass") if isinstance(bad, str) else bad
    )
    (work / "old.tsv").write_text(_tsv((1, [1] * 13, ["abcdef01"] * 26)) + "\n")
    criteo_to_parquet(work / "old.tsv", work / "pq")
    before = _tree(work / "pq")
    (work / "day.tsv").write_bytes(b"\n".join(lines) + b"\n")
    try:
        info = criteo_to_parquet(work / "day.tsv", work / "pq", chunk_rows=2, overwrite=True)
    except DataError as exc:
        assert "day.tsv" in str(exc)
        assert _tree(work / "pq") == before  # the old output is untouched
        assert [p.name for p in work.iterdir() if p.name.startswith(".")] == []  # no staging
        return
    assert info.rows >= len(good)  # a line that was valid after all (e.g. whitespace only)


# --- CTR rows as JSON (online) against the frame path (offline) ----------------------------------

number_text = st.one_of(
    st.text(st.sampled_from("0123456789+-.eE _infatyINFNA \t١１\u00a0"), max_size=8),
    st.integers().map(str),
    st.floats().map(str),
)


@PROPS
@given(number_text)
@example("１２")  # float() reads full-width digits; pandas does not
@example("1_000")
@example("nan")  # float() reads it as missing, the offline path refuses it
def test_online_rows_read_numbers_like_the_offline_frames(text: str) -> None:
    try:
        offline = _int_values(pd.DataFrame({"I1": [text]}, dtype=object), "I1")[0]
    except ValidationError:
        offline = "refused"
    try:
        online = parse_records([{"I1": text}]).ints["I1"][0]
    except ValidationError as exc:
        assert exc.field == "rows[0].I1"
        online = "refused"
    if isinstance(offline, str) or isinstance(online, str):
        assert offline == online
    else:
        assert offline == online or (np.isnan(offline) and np.isnan(online))


@PROPS
@given(
    st.dictionaries(
        st.sampled_from(["label", *INT_COLUMNS[:3], *CAT_COLUMNS[:3], "I99"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(),
            st.text(max_size=6),
            st.lists(st.integers(), max_size=2),
        ),
    )
)
@example({"I1": 10**400})  # OverflowError
def test_ctr_rows_parse_or_name_the_field(row: dict[str, Any]) -> None:
    try:
        parsed = parse_records([row])
    except ValidationError as exc:
        assert exc.field.startswith("rows[0].") or exc.field in ("label", "rows")
        return
    for c in INT_COLUMNS[:3]:
        v = row.get(c)
        if v is not None and v != "" and not isinstance(v, str):
            assert parsed.ints[c][0] == float(v) or np.isnan(float(v))


# --- MovieLens-100K (GroupLens layout) -----------------------------------------------------------

ml_users = st.lists(
    st.tuples(st.integers(1, 100), st.sampled_from("MF"), st.sampled_from(["writer", "other"])),
    min_size=1,
    max_size=5,
)
ml_titles = st.text(st.characters(min_codepoint=32, max_codepoint=255, blacklist_characters="|"),
                    min_size=1, max_size=15).filter(lambda t: t.strip() == t)  # fmt: skip


@st.composite
def movielens(draw: st.DrawFn) -> dict[str, Any]:
    users = draw(ml_users)
    n_items = draw(st.integers(1, 5))
    items = [
        (draw(ml_titles), draw(st.integers(1920, 2020)),
         draw(st.lists(st.integers(0, 1), min_size=19, max_size=19)))
        for _ in range(n_items)
    ]  # fmt: skip
    pairs = draw(
        st.lists(
            st.tuples(st.integers(1, len(users)), st.integers(1, n_items)), min_size=1, unique=True
        )
    )
    ratings = [(u, i, draw(st.integers(1, 5)), draw(st.integers(0, 2**40))) for u, i in pairs]
    return {"users": users, "items": items, "ratings": ratings}


def _write_movielens(folder: Path, ml: dict[str, Any], eol: str = "\n") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in ml["ratings"]]
    users = [f"{n}|{a}|{g}|{o}|0{n:04d}" for n, (a, g, o) in enumerate(ml["users"], 1)]
    items = [
        f"{n}|{title} ({year})|01-Jan-{year}||http://x|" + "|".join(map(str, flags))
        for n, (title, year, flags) in enumerate(ml["items"], 1)
    ]
    for name, lines in (("u.data", data), ("u.user", users), ("u.item", items)):
        (folder / name).write_bytes((eol.join(lines) + eol).encode("latin-1"))


@FEW
@given(movielens(), st.sampled_from(["\n", "\r\n"]))
def test_movielens_files_round_trip(tmp_path: Path, ml: dict[str, Any], eol: str) -> None:
    folder = Path(tempfile.mkdtemp(dir=tmp_path)) / "ml"
    _write_movielens(folder, ml, eol)
    ds = parse_movielens_100k(folder)
    inter = ds.interactions.sort_values(["user_id", "item_id"])
    assert list(zip(inter["user_id"], inter["item_id"], inter["value"], inter["ts"], strict=True)) \
        == sorted(ml["ratings"])  # fmt: skip
    assert ds.users["age"].tolist() == [a for a, _, _ in ml["users"]]
    assert ds.users["gender"].tolist() == [g for _, g, _ in ml["users"]]
    assert ds.items["title"].tolist() == [t for t, _, _ in ml["items"]]
    assert ds.items["year"].tolist() == [y for _, y, _ in ml["items"]]
    assert ds.items["genres"].tolist() == [
        [GENRES[g] for g in range(1, 19) if f[g]] for _, _, f in ml["items"]
    ]


@FEW
@given(
    movielens(),
    st.sampled_from(["u.data", "u.user", "u.item"]),
    st.one_of(
        st.sampled_from(["inf", "-inf", "1e30", "99999999999999999999", "70000", "1.5", "", "x"]),
        st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=6),
    ),
    st.integers(0, 20),
    st.sampled_from(["replace", "drop", "truncate"]),
)
@example({"users": [(30, "M", "x")], "items": [("a", 1990, [0] * 19)], "ratings": [(1, 1, 5, 0)]},
         "u.data", "inf", 3, "replace")  # IntCastingNaNError  # fmt: skip
@example({"users": [(30, "M", "x")], "items": [("a", 1990, [0] * 19)], "ratings": [(1, 1, 5, 0)]},
         "u.data", "1e30", 3, "replace")  # read as int64's minimum  # fmt: skip
@example({"users": [(30, "M", "x")], "items": [("a", 1990, [0] * 19)], "ratings": [(1, 1, 5, 0)]},
         "u.user", "70000", 1, "replace")  # an age that wrapped around int16  # fmt: skip
@example({"users": [(30, "M", "x")], "items": [("a", 1990, [0] * 19)], "ratings": [(1, 1, 5, 0)]},
         "u.user", "", 4, "drop")  # a short line read as missing text  # fmt: skip
def test_damaged_movielens_file_is_a_data_error_or_a_true_parse(
    tmp_path: Path, ml: dict[str, Any], name: str, cell: str, col: int, how: str
) -> None:
    folder = Path(tempfile.mkdtemp(dir=tmp_path)) / "ml"
    _write_movielens(folder, ml)
    sep = "\t" if name == "u.data" else "|"
    lines = (folder / name).read_bytes().decode("latin-1").splitlines()
    fields = lines[0].split(sep)
    col %= len(fields)
    if how == "replace":
        fields[col] = cell
    elif how == "drop":
        del fields[col]
    else:
        fields = sep.join(fields)[: len(cell)].split(sep)
    lines[0] = sep.join(fields)
    (folder / name).write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    try:
        ds = parse_movielens_100k(folder)
    except DataError as exc:
        assert name in str(exc)
        return
    # Accepted: every parsed number fits its column and means what the file says.
    assert ds.users["age"].between(-(2**15), 2**15 - 1).all()
    assert ds.interactions["value"].between(1, 5).all()
    assert not ds.users[["gender", "occupation", "zip"]].isna().any().any()
    assert not ds.items["title"].isna().any()


# --- a declared dataset (`strata data add`) ------------------------------------------------------


@PROPS
@given(st.lists(st.integers(0, 2**62), min_size=1, max_size=5), st.sampled_from(["s", "ms", "iso"]))
def test_timestamps_round_trip(secs: list[int], unit: str) -> None:
    if unit == "iso":
        secs = [s % (253402300799 + 1) for s in secs]  # ISO years end at 9999
        text = [pd.Timestamp(s, unit="s").isoformat() for s in secs]
        values = pd.Series(text)
    else:
        values = pd.Series([s * 1000 if unit == "ms" else s for s in secs], dtype=object)
        secs = [s if s * (1000 if unit == "ms" else 1) < 2**53 else None for s in secs]
    got = parse_timestamps(values, unit, "x.csv", "ts").tolist()
    assert [g for g, s in zip(got, secs, strict=True) if s is not None] == [
        s for s in secs if s is not None
    ]  # beyond 2**53 the float conversion rounds


@PROPS
@given(
    st.one_of(
        st.text(max_size=12), st.floats(), st.integers(-(2**70), 2**70), st.booleans(), st.none()
    ),
    st.sampled_from(["s", "ms", "iso"]),
)
@example(1e30, "s")  # read as int64's minimum
@example("9999-12-31T00:00:00", "iso")  # OutOfBoundsDatetime
def test_any_timestamp_cell_parses_or_names_the_row(cell: object, unit: str) -> None:
    try:
        got = parse_timestamps(pd.Series([cell], dtype=object), unit, "x.csv", "ts")
    except DataError as exc:
        assert "row 2: ts" in exc.problem
        return
    if unit != "iso":
        assert 0 <= int(got.iloc[0]) <= 2**63 - 1


@FEW
@given(
    st.lists(
        st.tuples(
            st.text(st.characters(codec="utf-8", blacklist_characters="\r\n\x00"), max_size=6),
            st.text(st.characters(codec="utf-8", blacklist_characters="\r\n\x00"), max_size=6),
            st.one_of(st.integers(-5, 2**40).map(str), st.text(max_size=4)),
        ),
        max_size=5,
    ),
    st.one_of(st.integers(1800, 2100), st.integers(), st.floats()).map(str),
    st.booleans(),
)
@example([("u1", "i1", "5")], "99999", False)  # a year beyond Int16 (TypeError in pandas)
def test_data_add_writes_only_after_the_whole_check(
    tmp_path: Path, rows: list[tuple[str, str, str]], year: str, bom: bool
) -> None:
    from strata.datasets.spec_load import load_registered

    work = Path(tempfile.mkdtemp(dir=tmp_path))
    s = Settings(home=work / "home")
    body = "user,item,ts\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows)
    (work / "events.csv").write_bytes(("\ufeff" if bom else "").encode() + body.encode())
    (work / "items.csv").write_text(f"sku,title,year\ni1,One,{year}\ni2,Two,2000\n")
    (work / "spec.yaml").write_text(
        "interactions: {path: events.csv, user: user, item: item, timestamp: ts}\n"
        "items: {path: items.csv, id: sku, text: [title], year: year}\n"
    )
    before = _tree(s.home)
    try:
        register_spec(s, "mine", work / "spec.yaml")
    except (DataError, ValidationError):
        assert _tree(s.home) == before
        return
    assert (dataset_dir(s, "mine") / "spec.yaml").is_file()
    try:
        ds = load_registered(s, "mine")
    except DataError as exc:
        assert "items.csv" in str(exc) or "events.csv" in str(exc)
        return
    assert ds.items["year"].dropna().between(-(2**15), 2**15 - 1).all()
    assert ds.interactions["ts"].ge(0).all()


def test_year_out_of_range_names_the_row(tmp_path: Path) -> None:
    """Regression: a year beyond Int16 was a bare TypeError from pandas."""
    from strata.datasets.spec_load import load_declared

    (tmp_path / "events.csv").write_text("user,item,ts\nu1,i1,5\n")
    (tmp_path / "items.csv").write_text("sku,title,year\ni1,One,99999\n")
    (tmp_path / "spec.yaml").write_text(
        "interactions: {path: events.csv, user: user, item: item, timestamp: ts}\n"
        "items: {path: items.csv, id: sku, text: [title], year: year}\n"
    )
    with pytest.raises(DataError, match=r"items.csv: row 2: year 99999 is not a year"):
        load_declared("mine", tmp_path / "spec.yaml")
