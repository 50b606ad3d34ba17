"""Pipeline steps called directly on a tiny trained world: the incremental path writes the
fine-tuned version unpromoted, and the registry pointer moves only once its ANN index exists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from strata.registry import Registry
from strata.training.data import Tables
from strata.training.train import train

from .tiny_world import fast_settings, tiny_dataset


def test_incremental_promotes_only_after_the_index_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from strata.artifacts import INDEX_DIR
    from strata.pipelines import steps

    home = tmp_path / "storage"
    s = fast_settings(home)
    # Steps build their settings from the environment, as in a KFP container; a wide gate
    # tolerance makes the fine-tuned candidate pass, so the promotion path is what is tested.
    training = s.training.model_copy(update={"gate_tolerance": 1.0})
    monkeypatch.setenv("STRATA_TRAINING", training.model_dump_json())
    monkeypatch.setenv("STRATA_HOME", str(home))
    ds = tiny_dataset()
    ts = np.sort(ds.interactions["ts"].to_numpy())
    until = int(ts[int(len(ts) * 0.6)])
    train(s, "tiny", until=until, tables=Tables(ds.users, ds.items, ds.interactions, None))
    reg = Registry(s.registry_dir, "tiny")
    steps.build_index(str(home), "tiny", {"version": "v0001"}, "flat")
    assert reg.serving() == "v0001"

    dec = steps.finetune_serving(str(home), "tiny")
    assert dec["accepted"] and dec["version"] == "v0002" and dec["since"] == until, dec
    assert reg.serving() == "v0001"  # written, not promoted: it has no index yet
    assert not (reg.path("v0002") / INDEX_DIR).exists()
    with pytest.raises(steps.PublishError, match="no ANN index"):
        steps.publish(str(home), "tiny", dec)
    assert reg.serving() == "v0001"

    idx = steps.build_index(str(home), "tiny", dec, "flat")
    assert idx["version"] == "v0002" and (reg.path("v0002") / INDEX_DIR).is_dir()
    pub = steps.publish(str(home), "tiny", dec)
    assert pub["published"] and reg.serving() == "v0002"
    # A rejected decision leaves the pointer where it is.
    rejected = steps.publish(str(home), "tiny", {**dec, "version": "v0001", "accepted": False})
    assert rejected["published"] is False and reg.serving() == "v0002"
