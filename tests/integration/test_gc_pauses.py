"""Pause prevention on a real server: what is loaded at start-up and on reload is frozen out of
the garbage collector's reach, the thresholds are the configured ones, and the pauses the
collector does make are visible in /metrics (`strata.serving.pauses`)."""

from __future__ import annotations

import gc
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from strata.config import GcConfig
from strata.registry import Registry
from strata.serving.app import create_app
from tests.unit.serving_support import DATASET, TOKEN, LiveServer, copy_version, serving_settings

pytestmark = pytest.mark.integration


def _tracked_ids() -> set[int]:
    """Ids of the objects the collector still walks (the permanent generation is not listed)."""
    return {id(o) for o in gc.get_objects()}


def _long_lived(app: Any) -> list[Any]:
    """Objects of the loaded model version that live as long as it is served and that the
    collector would walk (containers of atoms only, e.g. a dict of floats, are never tracked)."""
    pipe = app.state.serving.pipeline
    objs = [pipe, pipe.catalog, pipe.space, pipe.snapshot, pipe.snapshot.columns, pipe.index,
            pipe.backend, pipe.manifest, pipe.space.meta]  # fmt: skip
    tracked = [o for o in objs if gc.is_tracked(o)]
    assert len(tracked) >= 5
    return tracked


def _pause_count(text: str, generation: int) -> float:
    m = re.search(rf'strata_gc_pause_seconds_count{{generation="{generation}"}} (\S+)', text)
    assert m is not None, "no GC pause histogram in /metrics"
    return float(m.group(1))


def test_startup_and_reload_freeze_the_loaded_version(tmp_path: Path) -> None:
    s = serving_settings(tmp_path)
    app = create_app(s)
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        cfg = s.gc
        assert gc.get_threshold() == (cfg.threshold0, cfg.threshold1, cfg.threshold2)
        assert gc.get_freeze_count() > 10_000  # imports + the loaded version
        tracked = _tracked_ids()
        assert not [o for o in _long_lived(app) if id(o) in tracked]
        assert c.get("/recommend", params={"user_id": 1}).status_code == 200

        old = app.state.serving.pipeline
        Registry(s.registry_dir, DATASET).promote(copy_version(s))
        r = c.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and r.json()["version"] == "v0002"
        new = app.state.serving.pipeline
        assert new is not old and new.version == "v0002"
        tracked = _tracked_ids()
        assert not [o for o in _long_lived(app) if id(o) in tracked]
        assert c.get("/recommend", params={"user_id": 1}).json()["model_version"] == "v0002"


def test_without_freeze_the_version_stays_in_the_collectors_walk(tmp_path: Path) -> None:
    s = serving_settings(tmp_path)
    s = s.model_copy(update={"gc": GcConfig(freeze=False)})
    gc.unfreeze()  # earlier tests in this process froze theirs
    app = create_app(s)
    with LiveServer(app):
        assert gc.get_freeze_count() == 0
        tracked = _tracked_ids()
        assert all(id(o) in tracked for o in _long_lived(app))


def test_gc_pauses_are_exported_per_generation(tmp_path: Path) -> None:
    s = serving_settings(tmp_path)
    with LiveServer(create_app(s)) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        text = c.get("/metrics").text
        assert "# TYPE strata_gc_pause_seconds histogram" in text
        assert 'strata_gc_pause_longest_seconds{generation="2"}' in text
        # The start-up settle is a full collection, and it was timed.
        assert _pause_count(text, 2) >= 1
        before = _pause_count(text, 0)
        for _ in range(3):
            gc.collect(0)  # real collections in the server's process
        after = _pause_count(c.get("/metrics").text, 0)
        assert after >= before + 3
        bucket = re.search(
            r'strata_gc_pause_seconds_bucket\{generation="0",le="\+Inf"\} (\S+)', text
        )
        assert bucket is not None and float(bucket.group(1)) == before
