"""The pipelines compiled for a cluster declare what their step pods use: CPU/memory requests
by kind of step (a GPU for the training steps when asked), the settings ConfigMap and the two
Secrets as environment, the label the Valkey NetworkPolicy admits, a non-root security context,
and the shared volume when one is configured. The ConfigMap that deploy/ ships holds only keys
the steps map, and each is a setting strata reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from strata.config import PipelinesConfig, Settings
from strata.pipelines.pipelines import SECRETS, SETTINGS_KEYS, TRAINING_STEPS, compile_pipeline
from tests.unit.test_pipelines_deploy import docs, one

pytest.importorskip("kfp.kubernetes", reason="needs the 'pipelines' extra")


def _compiled(tmp: Path, name: str, **cfg: Any) -> tuple[dict, dict]:
    path = compile_pipeline(name, tmp, PipelinesConfig(**cfg))
    spec, platform = yaml.safe_load_all(path.read_text())
    executors = spec["deploymentSpec"]["executors"]
    return executors, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.mark.parametrize("name", ["initial", "incremental", "ctr-retrain"])
def test_every_step_declares_resources_settings_and_identity(tmp_path: Path, name: str) -> None:
    executors, platform = _compiled(tmp_path, name, gpu=True, pvc="strata-data")
    assert executors.keys() == platform.keys()
    for exe, spec in executors.items():
        step = exe.removeprefix("exec-")
        res = spec["container"]["resources"]
        assert {"resourceCpuRequest", "resourceMemoryRequest", "resourceMemoryLimit"} <= res.keys()
        assert ("accelerator" in res) == (step in TRAINING_STEPS), step
        pod = platform[exe]
        (cm,) = pod["configMapAsEnv"]
        assert cm["configMapName"] == "strata-settings" and cm["optional"] is True
        assert {k["envVar"] for k in cm["keyToEnv"]} == set(SETTINGS_KEYS)
        secrets = {
            s["secretName"]: {k["envVar"] for k in s["keyToEnv"]} for s in pod["secretAsEnv"]
        }
        assert secrets == {n: set(keys.values()) for n, keys in SECRETS.items()}
        assert pod["podMetadata"]["labels"] == {"strata.io/valkey-client": "true"}
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["pvcMount"][0]["mountPath"] == "/data"
        if step in TRAINING_STEPS:
            assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_without_gpu_or_volume_nothing_of_them_is_declared(tmp_path: Path) -> None:
    executors, platform = _compiled(tmp_path, "initial")
    assert not any("accelerator" in e["container"]["resources"] for e in executors.values())
    assert not any("pvcMount" in p or "tolerations" in p for p in platform.values())


def test_the_shipped_settings_are_keys_the_steps_map_and_strata_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = one(docs(), "ConfigMap", "strata-settings")["data"]
    assert set(data) <= set(SETTINGS_KEYS)
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    for keys in SECRETS.values():  # the secrets' environment variables are settings too
        for env in keys.values():
            monkeypatch.setenv(env, f"from-{env}")
    s = Settings()
    assert s.online.type == "valkey" and s.online.url == data["STRATA_ONLINE__URL"]
    assert s.pipelines.serving_url == data["STRATA_PIPELINES__SERVING_URL"]
    assert s.online.password is not None
    assert s.online.password.get_secret_value() == "from-STRATA_ONLINE__PASSWORD"
    assert s.serve.admin_token is not None
    assert s.serve.admin_token.get_secret_value() == "from-STRATA_SERVE__ADMIN_TOKEN"
