"""Every metric the deployment names (prometheus-adapter rules, alert rules, the Grafana
dashboard) is one a running server exports on /metrics, with the type the query assumes
(`_bucket` of a histogram, `_total` of a counter), and every HPA metric is an adapter rule's
output. Checked against a live serving app with the CTR routes mounted."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from strata.ctr.artifacts import ctr_registry, publish
from strata.ctr.data import CtrSource
from strata.ctr.train import train_ctr
from strata.serving.app import create_app
from tests.integration.test_ctr_http import _records
from tests.unit.ctr_support import synthetic_parquet, tiny_cfg
from tests.unit.serving_support import LiveServer, serving_settings
from tests.unit.test_pipelines_deploy import adapter_rules, docs, one

pytestmark = pytest.mark.integration
NAME = re.compile(r"\bstrata_[a-z0-9_]+")
SUFFIX_TYPE = {"_bucket": "histogram", "_sum": "histogram", "_count": "histogram",
               "_total": "counter"}  # fmt: skip


def _queries() -> dict[str, list[str]]:
    """Where each PromQL / series query of the deployment comes from -> the queries."""
    out: dict[str, list[str]] = {"adapter": []}
    for rule in adapter_rules():
        out["adapter"] += [rule["seriesQuery"], rule["name"]["matches"], rule["metricsQuery"]]
    chart = docs()
    rules = one(chart, "PrometheusRule", "strata")
    out["alerts"] = [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]]
    boards = one(chart, "ConfigMap", "strata-grafana-dashboards")["data"]
    assert boards, "no dashboard in the chart"
    out["dashboard"] = [
        t["expr"] for text in boards.values() for p in json.loads(text)["panels"]
        for t in p["targets"]
    ]  # fmt: skip
    return out


def test_every_metric_the_deployment_names_is_exported(tmp_path: Path) -> None:
    cfg = tiny_cfg()
    s = serving_settings(tmp_path).model_copy(update={"ctr": cfg})
    publish(train_ctr(CtrSource(synthetic_parquet(tmp_path, 1500, seed=3)), cfg, seed=0),
            ctr_registry(s))  # fmt: skip
    with LiveServer(create_app(s)) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        assert c.get("/recommend", params={"user_id": 3}).status_code == 200
        rows, y = _records(20, seed=5)
        pred = c.post("/ctr/predict", json={"rows": rows}).json()
        fb = c.post("/ctr/feedback", json={"ids": pred["ids"], "labels": y.tolist()})
        assert fb.status_code == 200, fb.text
        text = c.get("/metrics").text
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    missing = []
    for source, queries in _queries().items():
        assert queries, source
        for q in queries:
            for name in NAME.findall(q):
                suffix = next((x for x in SUFFIX_TYPE if name.endswith(x)), "")
                base = name.removesuffix(suffix) if suffix else name
                kind = families.get(base)
                if kind is None or (suffix and kind != SUFFIX_TYPE[suffix]):
                    missing.append(f"{source}: {name} ({kind or 'not exported'})")
    assert not missing, missing
    outputs = {r["name"]["as"] for r in adapter_rules()}
    hpa_metrics = {m["pods"]["metric"]["name"] for d in docs()
                   if d["kind"] == "HorizontalPodAutoscaler"
                   for m in d["spec"]["metrics"] if m["type"] == "Pods"}  # fmt: skip
    assert hpa_metrics and hpa_metrics <= outputs
    assert families["strata_ctr_auc_floor"] == "gauge"
