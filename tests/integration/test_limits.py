"""The documented request limits of both HTTP apps, over real HTTP: a body over
`max_body_bytes` is a 413 whether its length is declared or not (and nothing of it is
stored), events per batch, rows per /ctr/predict, ids per /ctr/feedback, k, int64 ids and
string lengths are 422s naming the field, never a 5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from strata.config import CtrServeConfig, Settings
from strata.serving.app import create_app
from tests.unit.serving_support import LiveServer, serving_settings

pytestmark = pytest.mark.integration

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Settings]]:
    s = serving_settings(tmp_path_factory.mktemp("limits"), max_body_bytes=LIMIT, max_events=50)
    with LiveServer(create_app(s, ctr=False)) as live:
        yield live.url, s


def _event(i: int, **over: object) -> dict[str, object]:
    return {"event_id": f"lim-{i}", "user_id": 1, "item_id": 2, "type": "click",
            "ts": 1_000_000_000, **over}  # fmt: skip


def _field(r: httpx.Response) -> str:
    assert r.status_code == 422, r.text
    return str(r.json()["detail"][0]["field"])


def test_a_body_over_the_limit_is_413_and_nothing_is_stored(served: tuple[str, Settings]) -> None:
    url, s = served
    log = s.events_dir
    before = sorted(p.stat().st_size for p in log.glob("*.jsonl")) if log.exists() else []
    big = json.dumps([_event(i, context={"pad": "x" * 200}) for i in range(400)]).encode()
    assert len(big) > LIMIT
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/events", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "bytes" in r.json()["detail"][0]["msg"], r.text

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            for i in range(0, len(big), 4096):
                yield big[i : i + 4096]

        r = c.post("/events", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
        r = c.post("/items", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413
        after = sorted(p.stat().st_size for p in log.glob("*.jsonl")) if log.exists() else []
        assert after == before  # nothing of a refused body reached the event log
        small = c.post("/events", json=_event(1))  # under the limit: served as usual
        assert small.status_code == 200 and small.json()["new"] == 1, small.text


def test_counts_ranges_and_lengths_are_422s_naming_the_field(
    served: tuple[str, Settings],
) -> None:
    url, _ = served
    with httpx.Client(base_url=url, timeout=30) as c:
        assert _field(c.post("/events", json=[_event(i) for i in range(51)])) == "body"
        assert _field(c.post("/events", json=_event(1, event_id="e" * 129))) == "event_id"
        assert _field(c.post("/events", json=_event(1, user_id=2**63))) == "user_id"
        assert _field(c.post("/events", json=_event(1, ts=-1))) == "ts"
        assert _field(c.get("/recommend", params={"user_id": 2**63})) == "user_id"
        assert _field(c.get("/recommend", params={"user_id": "9" * 300})) == "user_id"
        assert _field(c.get("/recommend", params={"user_id": 1, "k": 101})) == "k"
        assert _field(c.get("/recommend", params={"user_id": 1, "k": 0})) == "k"
        assert _field(c.get("/recommend", params={"user_id": 1, "ts": 2**64})) == "ts"
        assert _field(c.get("/recommend", params={"user_id": 1, "seed": 2**63})) == "seed"
        assert _field(c.post("/recommend", json={"user_id": 1, "k": 2**70})) == "k"
        assert _field(c.get("/items/" + "9" * 300)) == "item_id"
        assert c.get("/recommend", params={"user_id": 2**63 - 1, "k": 3}).status_code == 200


def test_ctr_rows_ids_and_body_limits(tmp_path: Path) -> None:
    from strata.ctr.artifacts import ctr_registry, publish
    from strata.ctr.data import CtrSource
    from strata.ctr.train import train_ctr
    from strata.serving.ctr_api import create_ctr_app
    from tests.unit.ctr_support import synthetic_frame, synthetic_parquet, tiny_cfg

    serve = CtrServeConfig(max_batch_rows=8, max_feedback_ids=16, max_body_bytes=LIMIT)
    cfg = tiny_cfg().model_copy(update={"serve": serve})
    s = Settings(home=tmp_path / "home", ctr=cfg)
    publish(train_ctr(CtrSource(synthetic_parquet(tmp_path, 1000, seed=5)), cfg, seed=0),
            ctr_registry(s))  # fmt: skip
    frame = synthetic_frame(20, seed=9).drop(columns="label")
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")  # NaN: missing
    with LiveServer(create_ctr_app(s)) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        assert c.post("/ctr/predict", json={"rows": rows[:8]}).status_code == 200
        assert _field(c.post("/ctr/predict", json={"rows": rows[:9]})) == "rows"
        assert _field(c.post("/ctr/feedback", json={"ids": list(range(17)),
                                                      "labels": [0] * 17})) == "ids"  # fmt: skip
        big = json.dumps({"rows": rows * 200}).encode()
        assert len(big) > LIMIT
        r = c.post("/ctr/predict", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
