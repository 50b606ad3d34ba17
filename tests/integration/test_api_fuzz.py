"""Both HTTP APIs fuzzed from their own OpenAPI schemas with schemathesis, over real HTTP against
real servers: the recommender (Valkey online store, admin token, live catalogue) and the CTR
service (a trained model). Every operation gets a bounded number of generated requests, valid
and invalid (`FUZZ_EXAMPLES`, default 25). Properties: no 5xx, every response conforms to the
schema the server publishes (status codes and bodies), and every 4xx about input names the
field (`detail[].field`)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case, Response
from schemathesis.checks import CheckContext, positive_data_acceptance

from strata.config import Settings, ValkeyOnlineConfig
from tests.unit.serving_support import TOKEN, LiveServer, serving_settings

pytestmark = [pytest.mark.integration, pytest.mark.fuzz]

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))


def names_the_field(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """A 422 (bad input) says which field is wrong in every entry."""
    if response.status_code == 422:
        detail = response.json().get("detail")
        assert isinstance(detail, list) and detail, f"422 without detail: {response.text[:300]}"
        for entry in detail:
            assert isinstance(entry.get("field"), str) and entry["field"], (
                f"422 entry without a field: {entry}"
            )
    return None


CHECKS = [names_the_field]
# "Schema-valid request accepted" cannot hold for an API that checks input against the served
# catalogue: an item id, a genre or a device the version does not know is valid JSON Schema
# and still a 422 naming the field (by design; the names_the_field check covers those answers).
EXCLUDED = [positive_data_acceptance]


@pytest.fixture(scope="module")
def serving_api(tmp_path_factory: pytest.TempPathFactory, valkey_url: str) -> Iterator[Any]:
    from strata.serving.app import create_app

    home = tmp_path_factory.mktemp("fuzz")
    s = serving_settings(home)
    online = ValkeyOnlineConfig(url=valkey_url, key_prefix=f"t{uuid.uuid4().hex[:10]}",
                                timeout_ms=1000)  # fmt: skip
    s = s.model_copy(update={"online": online})
    with LiveServer(create_app(s, ctr=False)) as live:
        yield schemathesis.openapi.from_url(live.url + "/openapi.json")


@pytest.fixture(scope="module")
def ctr_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from strata.ctr.artifacts import ctr_registry, publish
    from strata.ctr.data import CtrSource
    from strata.ctr.train import train_ctr
    from strata.serving.ctr_api import create_ctr_app
    from tests.unit.ctr_support import synthetic_parquet, tiny_cfg

    tmp: Path = tmp_path_factory.mktemp("fuzz-ctr")
    cfg = tiny_cfg()
    s = Settings(home=tmp / "home", ctr=cfg)
    publish(train_ctr(CtrSource(synthetic_parquet(tmp, 1500, seed=3)), cfg, seed=0),
            ctr_registry(s))  # fmt: skip
    with LiveServer(create_ctr_app(s)) as live:
        yield schemathesis.openapi.from_url(live.url + "/openapi.json")


def _fuzz(schema: Any, headers: dict[str, str] | None = None) -> dict[str, int]:
    """Run every operation of `schema` with EXAMPLES valid and EXAMPLES invalid generated
    requests; returns the examples run per operation, fails with every distinct failure."""
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import Failure, FailureGroup
    from schemathesis.generation import GenerationMode

    runs: dict[str, int] = {}
    failures: list[str] = []

    def _checker(label: str) -> Callable[[Case], None]:
        def check(case: Case) -> None:
            runs[label] += 1
            case.call_and_validate(headers=headers, additional_checks=CHECKS,
                                   excluded_checks=EXCLUDED, timeout=30)  # fmt: skip

        return check

    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            label = f"{op.label} ({mode.value})"
            runs[label] = 0

            run = FUZZ(given(case=op.as_strategy(generation_mode=mode))(_checker(label)))
            try:
                run()
            except (AssertionError, Failure, FailureGroup) as exc:  # every property's verdict
                failures.append(f"{label}: {type(exc).__name__}: {str(exc)[:1500]}")
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE, label
                del runs[label]
    print(f"fuzzed {len(runs)} operation/mode pairs, {sum(runs.values())} requests")
    assert not failures, "\n\n".join(failures)
    return runs


FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))  # fmt: skip


def test_recommender_api(serving_api: Any) -> None:
    runs = _fuzz(serving_api, {"Authorization": f"Bearer {TOKEN}"})
    assert any(k.startswith("POST /recommend") for k in runs)


def test_ctr_api(ctr_api: Any) -> None:
    runs = _fuzz(ctr_api)
    assert any(k.startswith("POST /ctr/predict") for k in runs)
