"""Registry: versions, atomic serving pointer, hashes, staging cleanup."""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.errors import DataError, NotFoundError, ValidationError
from strata.registry import Registry, sha256_file


def _commit(reg: Registry, payload: str) -> str:
    with reg.stage() as tmp:
        (tmp / "model.bin").write_text(payload)
        return reg.commit(tmp, {"metrics": {"x": 1.0}})


def test_versions_pointer_and_manifest(tmp_path: Path) -> None:
    reg = Registry(tmp_path, "ds")
    assert reg.versions() == [] and reg.serving() is None
    with pytest.raises(NotFoundError):
        reg.path()
    v1, v2 = _commit(reg, "a"), _commit(reg, "b")
    assert (v1, v2) == ("v0001", "v0002") and reg.versions() == [v1, v2]
    reg.promote(v1)
    assert reg.serving() == v1 and reg.path().name == v1
    reg.promote(v2)
    assert reg.serving() == v2
    m = reg.manifest(v2)
    assert m["version"] == v2 and m["dataset"] == "ds" and m["metrics"] == {"x": 1.0}
    assert m["files"]["model.bin"] == sha256_file(reg.path(v2) / "model.bin")
    # No temp files are left next to the pointer or staging folders in the registry.
    assert sorted(p.name for p in reg.dir.iterdir()) == ["serving", "v0001", "v0002"]
    with pytest.raises(NotFoundError):
        reg.promote("v0009")


def test_verify_detects_tampering(tmp_path: Path) -> None:
    reg = Registry(tmp_path, "ds")
    v = _commit(reg, "weights")
    reg.verify(v)
    (reg.path(v) / "model.bin").write_text("changed")
    with pytest.raises(DataError):
        reg.verify(v)


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    reg = Registry(tmp_path, "ds")
    with pytest.raises(RuntimeError), reg.stage() as tmp:
        (tmp / "half.bin").write_text("x")
        raise RuntimeError("crash while exporting")
    assert reg.versions() == [] and list(reg.dir.iterdir()) == []


def test_bad_dataset_name(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        Registry(tmp_path, "../escape")
