"""`--engine athena` up to the request: the DDL, the symlink manifests and the CTAS queries that a
build submits through boto3, against a local moto server (S3 + Athena). moto accepts a query
without running it, so this stops at what Athena is asked; the SQL itself is checked by parsing
it as Athena SQL here and by running its Spark twin in tests/e2e/test_features_spark.py."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import sqlglot

from strata.config import OfflineStoreConfig, Settings
from strata.errors import ValidationError
from strata.features.athena import AthenaEngine, hive_type, table_prefix
from strata.features.engines import build_features, check_engine
from strata.features.offline import OfflineStore

BUCKET = "strata-athena"
DATASET = "shop-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server_mod = pytest.importorskip("moto.server", reason="needs moto (dev extra)")
    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def engine(moto_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> AthenaEngine:
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL_S3": moto_url,
        "AWS_ENDPOINT_URL_ATHENA": moto_url,
    }.items():
        monkeypatch.setenv(k, v)
    import boto3

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    meta = {"event_types": ["view", "purchase"], "item_attributes": ["brand"]}
    key = f"strata/{DATASET}/dataset.json"
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(meta).encode())
    offline = OfflineStoreConfig(
        uri=f"s3://{BUCKET}/strata",
        s3_region="us-east-1",
        athena_database="feat",
        athena_poll_s=0.01,
    )
    settings = Settings(home=tmp_path / "home", offline=offline)
    return AthenaEngine(OfflineStore(settings))


def _submitted(engine: AthenaEngine, ids: list[str]) -> list[dict[str, Any]]:
    return [engine.client.get_query_execution(QueryExecutionId=q)["QueryExecution"] for q in ids]


def test_build_declares_the_files_and_submits_one_ctas_per_table(engine: AthenaEngine) -> None:
    out = build_features(
        engine.store, DATASET, "athena", until=1_700_000_000, training_set="s3://b/ts"
    )
    assert out["engine"] == "athena" and out["as_of"] == 1_700_000_000
    qes = _submitted(engine, out["queries"])
    assert all(q["Status"]["State"] == "SUCCEEDED" for q in qes)
    assert all(q["QueryExecutionContext"]["Database"] == "feat" for q in qes)
    assert all(
        q["ResultConfiguration"]["OutputLocation"].startswith(
            f"s3://{BUCKET}/strata/athena-results/"
        )
        for q in qes
    )
    texts = [q["Query"] for q in qes]
    pre = table_prefix(DATASET)
    assert pre == "shop_1"
    assert texts[0] == "CREATE DATABASE IF NOT EXISTS `feat`"
    ddl = "\n".join(texts[:7])
    # users/items: symlink tables over one file each; events: projected date partitions
    assert f"`feat`.`{pre}_users`" in ddl and "SymlinkTextInputFormat" in ddl
    assert f"LOCATION 's3://{BUCKET}/strata/{DATASET}/events/'" in ddl
    assert "'projection.date.format' = 'yyyy-MM-dd'" in ddl
    assert "`genres` array<string>" in ddl
    import boto3

    s3 = boto3.client("s3", region_name="us-east-1")
    for table in ("users", "items"):
        body = s3.get_object(Bucket=BUCKET, Key=f"strata/{DATASET}/_athena/{table}/manifest")
        assert (
            body["Body"].read().decode().strip()
            == f"s3://{BUCKET}/strata/{DATASET}/{table}.parquet"
        )
    # one CTAS per output, each a query Athena's (Trino) grammar accepts
    ctas = texts[7:]
    assert set(out["tables"]) == {"user_features", "item_features", "training_set"}
    assert len(ctas) == 3
    for text, name in zip(ctas, ("user_features", "item_features", "training_set"), strict=True):
        assert text.startswith(f'CREATE TABLE "feat"."{out["tables"][name]}"')
        tree = sqlglot.parse_one(text, read="athena")
        assert isinstance(tree, sqlglot.exp.Create)
        assert f'"feat"."{pre}_events"' in text and "ts < 1700000000" in text
    assert f"/features/athena/{out['run']}/user_features/'" in ctas[0]
    assert "external_location = 's3://b/ts/'" in ctas[2]
    # the dataset's own declarations (dataset.json on S3) shape the SQL
    assert "user_n_purchase" in ctas[0] and "user_n_rating" not in ctas[0]
    assert "user_pref_brand" in ctas[0]


def test_without_until_the_cut_is_asked_of_athena(engine: AthenaEngine) -> None:
    # moto returns no result rows for max(ts): an empty log, so the cut is 0
    out = engine.build(DATASET)
    assert out["as_of"] == 0
    texts = [q["Query"] for q in _submitted(engine, out["queries"])]
    assert f'SELECT max(ts) FROM "feat"."{table_prefix(DATASET)}_events"' in texts


def test_bad_requests_fail_before_any_query(engine: AthenaEngine, tmp_path: Any) -> None:
    with pytest.raises(ValidationError, match="s3://"):
        engine.build(DATASET, until=10, training="/tmp/local.parquet")
    with pytest.raises(ValidationError, match=r"offline\.uri"):
        AthenaEngine(OfflineStore(Settings(home=tmp_path / "local")), client=object())
    with pytest.raises(ValidationError, match="--engine"):
        check_engine("bigquery", engine.store.settings)
    assert hive_type("BIGINT[]") == "array<bigint>"
