"""Property tests for the parsers of outside data that arrives as JSON, bytes or environment:
events (one object, a JSONL file, a POST /events body), the live catalogue's durable log, image
uploads and their base64, and `Settings` from STRATA_* variables.

Invariant everywhere: any input gives a correct parse (a valid value written the way a user
would parses back to itself) or the project's domain error naming the field or the line, never
another exception; an ingest that rejects a line writes nothing of it (files compared byte for
byte). Tabular data (Criteo, MovieLens, declared datasets) is in test_parsers_property_data.py.
"""

from __future__ import annotations

import base64
import io
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydantic
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from strata.config import Settings
from strata.datasets.base import EVENT_TYPE_PATTERN, EVENT_TYPES
from strata.errors import ConfigError, DataError, ValidationError
from strata.features.event_files import ingest_file
from strata.features.events import INT64_MAX, EventIngestor, parse_event
from strata.features.live_items import LiveCatalogue, LiveItem, check_image
from strata.features.online.memory import MemoryOnlineStore
from strata.models.encoders import load_image
from tests.unit.property_support import props

PROPS = props(150)
FEW = props(60)  # the ones that write files or decode images

# --- strategies ----------------------------------------------------------------------------------

ids = st.integers(0, INT64_MAX)
finite = st.floats(allow_nan=False, allow_infinity=False)
context_values = st.one_of(
    st.text(max_size=256), st.integers(-(2**63), 2**63), finite, st.booleans()
)


@st.composite
def event_dicts(draw: st.DrawFn, types: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A valid event as a user writes it (optional fields sometimes left out)."""
    ev: dict[str, Any] = {
        "event_id": draw(st.text(min_size=1, max_size=128)),
        "user_id": draw(ids),
        "item_id": draw(ids),
        "type": draw(
            st.sampled_from(types) if types else st.from_regex(EVENT_TYPE_PATTERN, fullmatch=True)
        ),
        "ts": draw(ids),
    }
    if draw(st.booleans()):
        ev["value"] = draw(finite)
    if draw(st.booleans()):
        ev["context"] = draw(st.dictionaries(st.text(max_size=20), context_values, max_size=32))
    return ev


# Values no field of an event accepts as they are: wrong JSON types, out-of-range numbers,
# text that only looks like a number.
bad_values = st.one_of(
    st.booleans(),
    st.none(),
    st.just(float("nan")),
    st.just(float("inf")),
    st.integers(min_value=2**63),
    st.integers(max_value=-1),
    st.sampled_from(["١٢", "１２", "1e3", "0x10", "1_000", " ", "", "nan", "12abc"]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
junk_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), finite, st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(), inner)),
    max_leaves=10,
)


def _mutated_event(ev: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """An event with one field dropped, replaced by junk, or one unknown field added."""
    keys = sorted(ev)
    return st.one_of(
        st.sampled_from(keys).map(lambda k: {x: v for x, v in ev.items() if x != k}),
        st.tuples(st.sampled_from(keys), st.one_of(bad_values, junk_json)).map(
            lambda kv: {**ev, kv[0]: kv[1]}
        ),
        st.text(min_size=1, max_size=8).map(lambda k: {**ev, f"x{k}": 1}),
    )


@contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """`os.environ` with `values` set and no other STRATA_* variable, restored afterwards."""
    saved = dict(os.environ)
    try:
        for k in [k for k in os.environ if k.startswith("STRATA_")]:
            del os.environ[k]
        os.environ.update(values)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


# --- events --------------------------------------------------------------------------------------


@PROPS
@given(event_dicts(), st.booleans())
def test_event_round_trips_through_json(ev: dict[str, Any], ascii_only: bool) -> None:
    line = json.dumps(ev, ensure_ascii=ascii_only)
    parsed = parse_event(json.loads(line))
    assert parsed.model_dump(exclude={"value", "context"}) == {
        k: ev[k] for k in ("event_id", "user_id", "item_id", "type", "ts")
    }
    assert parsed.value == ev.get("value", 1.0)
    assert parsed.context == ev.get("context", {})
    assert parse_event(json.loads(parsed.model_dump_json())) == parsed  # what the log writes


@PROPS
@given(event_dicts(), st.sampled_from(["user_id", "item_id", "ts", "value"]), bad_values)
@example(
    {"event_id": "e", "user_id": 1, "item_id": 2, "type": "click", "ts": 3}, "user_id", True
)  # JSON true was read as user 1
def test_bad_number_fields_are_named(ev: dict[str, Any], name: str, bad: object) -> None:
    if name == "value" and isinstance(bad, int) and not isinstance(bad, bool):
        bad = 10**400  # any other int is a fine value
    with pytest.raises(ValidationError) as err:
        parse_event({**ev, name: bad})
    assert err.value.field == name


@PROPS
@given(st.one_of(junk_json, event_dicts().flatmap(_mutated_event)))
def test_any_json_is_an_event_or_a_named_error(obj: object) -> None:
    try:
        ev = parse_event(obj)
    except ValidationError as exc:
        assert exc.field and exc.problem
        return
    assert isinstance(obj, dict)
    assert 0 <= ev.user_id <= INT64_MAX and 0 <= ev.item_id <= INT64_MAX and ev.ts >= 0
    assert ev.event_id == obj["event_id"] and ev.type == obj["type"]


# Lines of a JSONL event file that can never be an event (no newline inside).
junk_lines = st.one_of(
    st.binary(max_size=40).filter(lambda b: b"\n" not in b),
    event_dicts(EVENT_TYPES).map(lambda e: json.dumps(e).encode()[:-1]),  # truncated
    st.sampled_from(
        [
            b'{"event_id": "\xff\xfe"}',  # not UTF-8
            b"[" * 50_000 + b"]" * 50_000,  # nested past the recursion limit
            b"1" * 5000,  # an integer beyond Python's digit limit
            '{"a": 1}'.encode("utf-16"),
            b"\xef\xbb\xbf[]",
            b"NaN",
        ]
    ),
)


@FEW
@given(
    st.lists(
        st.one_of(
            event_dicts(EVENT_TYPES).map(lambda e: ("ok", e)), junk_lines.map(lambda b: ("bad", b))
        ),
        max_size=12,
    ),
    st.sampled_from([b"\n", b"\r\n"]),
    st.booleans(),
)
def test_event_file_ingest_logs_exactly_the_valid_lines(
    tmp_path: Path, lines: list[tuple[str, Any]], eol: bytes, bom: bool
) -> None:
    home = Path(tempfile.mkdtemp(dir=tmp_path))
    s = Settings(home=home)
    ing = EventIngestor(s, store=MemoryOnlineStore())
    ing.ingest([{"event_id": "old", "user_id": 1, "item_id": 1, "type": "view", "ts": 1}])
    log = s.events_dir / "events.jsonl"
    before = log.read_bytes()
    body, valid, rejected = [], [], 0
    for i, (kind, x) in enumerate(lines):
        if kind == "ok":
            x = {**x, "event_id": f"n{i}"}  # distinct ids: none is a duplicate
            valid.append(x)
            body.append(json.dumps(x).encode())
        else:
            body.append(x)
            rejected += bool(x.strip())
    data = eol.join(body) + (eol if body else b"")
    if bom and data:
        data = b"\xef\xbb\xbf" + data
        rejected += lines[0][0] == "bad" and not lines[0][1].strip()  # a BOM alone is a line
    src = home / "in.jsonl"
    src.write_bytes(data)
    report = ingest_file(s, src, ing)
    assert report["rejected"] == rejected
    assert report["accepted"] == len(valid) and report["new"] == len(valid)
    after = log.read_bytes()
    assert after[: len(before)] == before  # nothing earlier rewritten
    logged = [json.loads(x) for x in after[len(before) :].splitlines()]
    assert [r["event_id"] for r in logged] == [e["event_id"] for e in valid]
    assert [parse_event({k: v for k, v in r.items() if k != "_at"}) for r in logged] == [
        parse_event(e) for e in valid
    ]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The tiny trained version's pipeline (catalogue: items 1..80)."""
    from strata.features.online.memory import MemoryOnlineStore as Store
    from strata.serving.online import OnlineLink
    from strata.serving.service import RecommendationPipeline

    from .serving_support import DATASET, serving_settings

    s = serving_settings(tmp_path_factory.mktemp("serving"))
    return RecommendationPipeline.load(s, DATASET, link=OnlineLink.open(s, Store()))


@FEW
@given(
    st.one_of(
        junk_json,
        st.lists(event_dicts(EVENT_TYPES), min_size=1, max_size=5),
        event_dicts(EVENT_TYPES),
        st.lists(st.one_of(event_dicts(EVENT_TYPES), junk_json), max_size=5),
    ),
    st.integers(1, 80),
)
def test_events_body_is_parsed_or_names_the_field(pipe: Any, body: Any, item: int) -> None:
    from strata.serving.bodies import parse_events

    if isinstance(body, dict) and "item_id" in body:
        body = {**body, "item_id": item}  # mostly catalogue items, so the whole path runs
    try:
        events = parse_events(body, pipe, 3)
    except ValidationError as exc:
        assert exc.field
        if isinstance(body, list) and len(body) <= 3 and body:
            assert exc.field.startswith("[") or exc.field == "body"
        return
    raw = [body] if isinstance(body, dict) else body
    assert [e.event_id for e in events] == [r["event_id"] for r in raw]
    assert all(1 <= e.item_id <= 80 for e in events)


# --- the live catalogue's log --------------------------------------------------------------------

live_items = st.builds(
    LiveItem,
    item_id=ids,
    title=st.text(min_size=1, max_size=30).filter(lambda t: t.strip() == t and t),
    genres=st.lists(st.sampled_from(["a", "b", "c"]), unique=True, max_size=3).map(tuple),
    year=st.one_of(st.none(), st.integers(1800, 2200)),
    description=st.text(max_size=40),
)


@FEW
@given(st.lists(st.tuples(st.sampled_from(["add", "update", "retire"]), live_items), max_size=8))
def test_live_log_replays_what_was_appended(tmp_path: Path, ops: list[tuple[str, Any]]) -> None:
    cat = LiveCatalogue(Settings(home=Path(tempfile.mkdtemp(dir=tmp_path))), "d")
    want: dict[int, LiveItem] = {}
    retired: set[int] = set()
    for op, item in ops:
        if op == "retire":
            cat.append("retire", item.item_id)
            retired.add(item.item_id)
        else:
            cat.append(op, item.item_id, item)  # type: ignore[arg-type]
            want[item.item_id] = item
            retired.discard(item.item_id)
    assert cat.state() == (want, retired)  # retired items stay in the catalogue


@PROPS
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=30).filter(lambda b: b"\n" not in b),
            junk_json.map(lambda j: json.dumps(j).encode()),
            st.fixed_dictionaries(
                {"op": st.one_of(st.sampled_from(["add", "update", "retire"]), junk_json)},
                optional={"item_id": st.one_of(ids, junk_json), "item": junk_json},
            ).map(lambda r: json.dumps(r).encode()),
        ),
        min_size=1,
        max_size=5,
    )
)
@example([b'{"op":"add","item_id":1}'])  # KeyError 'item'
@example([b"\xff"])  # UnicodeDecodeError
@example([b"[1]"])  # AttributeError on a non-object record
def test_damaged_live_log_is_a_named_data_error(tmp_path: Path, lines: list[bytes]) -> None:
    cat = LiveCatalogue(Settings(home=Path(tempfile.mkdtemp(dir=tmp_path))), "d")
    cat.dir.mkdir(parents=True)
    (cat.dir / "items.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    try:
        items, retired = cat.state()
    except DataError as exc:
        assert "items.jsonl" in str(exc) and ("line" in exc.problem or "record" in exc.problem)
        return
    assert all(isinstance(v, LiveItem) for v in items.values())
    assert all(isinstance(i, int) for i in retired)


# --- images --------------------------------------------------------------------------------------


@st.composite
def images(draw: st.DrawFn) -> tuple[str, bytes]:
    from PIL import Image

    fmt = draw(st.sampled_from(["PNG", "JPEG", "WEBP"]))
    w, h = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    seed = draw(st.binary(min_size=3, max_size=3))
    img = Image.new("RGB", (w, h), tuple(seed))
    img.putpixel((0, 0), (255 - seed[0], 0, 0))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return fmt, buf.getvalue()


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    _, data = draw(images())
    how = draw(st.sampled_from(["truncate", "flip", "insert"]))
    at = draw(st.integers(0, len(data) - 1))
    if how == "truncate":
        return data[:at]
    if how == "flip":
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]


@FEW
@given(images())
def test_valid_images_are_accepted_with_their_format(img: tuple[str, bytes]) -> None:
    fmt, data = img
    assert check_image(data) == {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}[fmt]


@props(200)
@given(st.one_of(damaged(), st.binary(max_size=64)))
def test_an_accepted_image_is_one_the_encoder_reads(data: bytes) -> None:
    try:
        check_image(data)
    except ValidationError as exc:
        assert exc.field == "image"
        return
    assert load_image(data) is not None


def test_truncated_jpeg_is_refused() -> None:
    """Regression: verify() checks no JPEG data, so a cut-off upload was stored and then read as
    'no image' by the encoder."""
    from PIL import Image

    buf = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buf, format="JPEG")
    with pytest.raises(ValidationError, match="image: not a readable image"):
        check_image(buf.getvalue()[: len(buf.getvalue()) // 2])


@FEW
@given(st.one_of(damaged(), st.binary(max_size=64)))
def test_refused_image_writes_nothing(tmp_path: Path, data: bytes) -> None:
    cat = LiveCatalogue(Settings(home=Path(tempfile.mkdtemp(dir=tmp_path))), "d")
    try:
        name = cat.store_image(data)
    except ValidationError:
        assert not cat.dir.exists()
        return
    assert (cat.images / name).read_bytes() == data


@PROPS
@given(
    st.one_of(
        st.binary(max_size=64).map(lambda b: ("ok", b)),
        st.tuples(st.just("raw"), st.one_of(st.text(max_size=40), junk_json)),
    )
)
def test_image_base64_decodes_or_names_the_field(case: tuple[str, Any]) -> None:
    from strata.serving.items_api import _image

    kind, x = case
    raw = base64.b64encode(x).decode() if kind == "ok" else x
    try:
        out = _image({"image_base64": raw})
    except ValidationError as exc:
        assert kind == "raw" and exc.field == "image_base64"
        return
    if kind == "ok":
        assert out == x
    else:
        assert raw is None or out == base64.b64decode(raw, validate=True)


# --- settings from the environment ---------------------------------------------------------------

# (variable, attribute path, the values a user may write, bounds of a valid value)
INT_FIELDS = [
    ("STRATA_BLOOM__CAPACITY", ("bloom", "capacity"), 1, None),
    ("STRATA_SERVE__PORT", ("serve", "port"), 0, 65535),
    ("STRATA_EVENTS__BATCH_SIZE", ("events", "batch_size"), 1, None),
    ("STRATA_SEED", ("seed",), 0, 2**32 - 1),
    ("STRATA_CTR__SERVE__MAX_BATCH_ROWS", ("ctr", "serve", "max_batch_rows"), 1, None),
]


@PROPS
@given(
    st.sampled_from(INT_FIELDS),
    st.integers(-(2**70), 2**70),
    st.sampled_from(["{}", " {} ", "{}\n", "+{}"]),
)
@example(INT_FIELDS[3], 2**40, "{}")  # a seed np.random.seed refuses, hours into training
def test_int_settings_parse_or_name_the_field(
    field: tuple[str, tuple[str, ...], int, int | None], n: int, spelling: str
) -> None:
    var, path, lo, hi = field
    with environ({var: spelling.format(n)}):
        try:
            s: Any = Settings()
        except pydantic.ValidationError as exc:
            assert not lo <= n <= (INT64_MAX if hi is None else hi)
            assert exc.errors()[0]["loc"][0] == path[0]
            return
    for p in path:
        s = getattr(s, p)
    assert s == n and lo <= n and (hi is None or n <= hi)


@PROPS
@given(
    st.sampled_from(
        [v for v, *_ in INT_FIELDS]
        + ["STRATA_BLOOM", "STRATA_CTR__MODEL__DEEP", "STRATA_ONLINE__TYPE", "STRATA_BLOOM__X"]
        + ["STRATA_BLOOM__FP_RATE", "STRATA_SERVE__DIVERSITY", "STRATA_FRESH__ENABLED"]
    ),
    st.one_of(
        st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")),
        junk_json.map(json.dumps),
        st.sampled_from(["{bad", "[1,2", "[" * 5000 + "]" * 5000, "١٢", "nan", "1e400"]),
    ),
)
@example("STRATA_BLOOM", "{bad")  # pydantic-settings' SettingsError
@example("STRATA_BLOOM", "[" * 5000 + "]" * 5000)  # RecursionError
def test_any_environment_gives_settings_or_a_named_error(var: str, value: str) -> None:
    with environ({var: value}):
        try:
            Settings()
        except pydantic.ValidationError as exc:
            section = var.removeprefix("STRATA_").split("__")[0].lower()
            assert exc.errors()[0]["loc"][0] == section
        except ConfigError as exc:
            assert "environment" in str(exc)
