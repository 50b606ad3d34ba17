"""ANN index: exactness, tuned recall, save/load integrity, auto choice, pipeline and CLI use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from strata.engine import index as ann
from strata.engine import stages
from strata.engine.index import AnnIndex, FaissIndex, choose_kind, load_index
from strata.errors import DataError, NotFoundError, ValidationError
from strata.training.index_build import (
    build_index,
    recall_at_k,
    synthetic_embeddings,
    synthetic_queries,
)

from .engine_support import Queries, array_engine

N, D = 20_000, 64
STRATA = Path(sys.executable).parent / "strata"


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clustered unit vectors, non-contiguous item ids, and queries unseen by tuning."""
    x = synthetic_embeddings(N, D, n_clusters=200, seed=3)
    ids = np.arange(N, dtype=np.int64) * 7 + 11
    q = synthetic_queries(x, 100, seed=99)
    return ids, x, q


@pytest.fixture(scope="module")
def ivf(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> FaissIndex:
    ids, x, _ = data
    return build_index(ids, x, "ivf")


def brute_force(ids: np.ndarray, x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    s = q @ x.T
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return ids[top], np.take_along_axis(s, top, axis=1)


def test_flat_equals_numpy_brute_force(data: tuple[np.ndarray, ...]) -> None:
    ids, x, q = data
    index = build_index(ids, x, "flat")
    got_ids, got_sc = index.search(q, 100)
    want_ids, want_sc = brute_force(ids, x, q, 100)
    assert got_ids.dtype == np.int64 and got_sc.dtype == np.float32
    assert got_ids.shape == got_sc.shape == (len(q), 100)
    np.testing.assert_allclose(got_sc, want_sc, rtol=0, atol=1e-5)
    # Ids agree except where two scores tie within float error (then either order is exact).
    assert (got_ids == want_ids).mean() > 0.999
    assert index.info["recall_at_k"] == 1.0 and index.kind == "flat"


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_meets_recall_on_unseen_queries(
    kind: str, data: tuple[np.ndarray, ...], ivf: FaissIndex
) -> None:
    ids, x, q = data
    index = ivf if kind == "ivf" else build_index(ids, x, "hnsw")
    assert index.kind == kind
    assert index.info["recall_at_k"] >= 0.95  # measured on the tuning queries
    got, _ = index.search(q, 100)
    truth, _ = brute_force(ids, x, q, 100)
    assert recall_at_k(got, truth) >= 0.95  # and on queries it never saw
    knob = "nprobe" if kind == "ivf" else "efSearch"
    sweep = index.info["tuning"]["sweep"]
    # The tuned knob is the smallest swept value that met the goal.
    passing = [v for v, r in sweep if r >= index.info["tuned_to"]]
    assert index.params[knob] == min(passing)
    assert all(r < index.info["tuned_to"] for v, r in sweep if v < index.params[knob])


def test_ivf_is_not_exhaustive(ivf: FaissIndex) -> None:
    # Tuning must stop well short of scanning every cell, else it is a slow flat index.
    assert ivf.params["nprobe"] < ivf.params["nlist"] / 4


def test_save_load_roundtrip_identical(
    tmp_path: Path, data: tuple[np.ndarray, ...], ivf: FaissIndex
) -> None:
    _, _, q = data
    ivf.save(tmp_path / "idx")
    back = load_index(tmp_path / "idx", dim=D)
    a_ids, a_sc = ivf.search(q, 100)
    b_ids, b_sc = back.search(q, 100)
    assert np.array_equal(a_ids, b_ids) and np.array_equal(a_sc, b_sc)
    assert back.kind == "ivf" and back.params == ivf.params and back.size == N
    assert back.info["recall_at_k"] == ivf.info["recall_at_k"]
    m = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert m["dim"] == D and m["n"] == N and m["kind"] == "ivf"
    assert m["params"]["nprobe"] == ivf.params["nprobe"]
    assert len(m["files"]["index"]["sha256"]) == 64


def test_resave_replaces_files_and_leaves_no_temp(
    tmp_path: Path, data: tuple[np.ndarray, ...]
) -> None:
    ids, x, _ = data
    folder = tmp_path / "idx"
    build_index(ids[:500], x[:500], "flat").save(folder)
    build_index(ids[:800], x[:800], "flat").save(folder)
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 3 and not any(n.startswith(".") for n in names)  # old files removed
    assert load_index(folder).size == 800


def test_corrupt_or_mismatched_index_raises(tmp_path: Path, data: tuple[np.ndarray, ...]) -> None:
    ids, x, _ = data
    folder = tmp_path / "idx"
    build_index(ids[:1000], x[:1000], "flat").save(folder)
    with pytest.raises(DataError, match="dimension 64 != expected embedding dimension 32"):
        load_index(folder, dim=32)
    m = json.loads((folder / "manifest.json").read_text())
    idx_file = folder / m["files"]["index"]["name"]
    blob = bytearray(idx_file.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    idx_file.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="sha256 differs"):
        load_index(folder)
    idx_file.unlink()
    with pytest.raises(DataError, match="missing"):
        load_index(folder)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="corrupt index manifest"):
        load_index(folder)
    with pytest.raises(NotFoundError):
        load_index(tmp_path / "nowhere")


def test_manifest_cannot_point_outside_its_folder(
    tmp_path: Path, data: tuple[np.ndarray, ...]
) -> None:
    ids, x, _ = data
    folder = tmp_path / "idx"
    build_index(ids[:100], x[:100], "flat").save(folder)
    m = json.loads((folder / "manifest.json").read_text())
    m["files"]["index"]["name"] = "../elsewhere.faiss"
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="plain name"):
        load_index(folder)


def test_auto_choice_by_size(monkeypatch: pytest.MonkeyPatch, data: tuple[np.ndarray, ...]) -> None:
    assert choose_kind(ann.FLAT_MAX_ITEMS) == "flat"
    assert choose_kind(ann.FLAT_MAX_ITEMS + 1) == "ivf"
    ids, x, _ = data
    assert build_index(ids[:2000], x[:2000]).kind == "flat"
    # Lower the threshold so the same wiring picks IVF without a huge catalogue.
    monkeypatch.setattr(ann, "FLAT_MAX_ITEMS", 5_000)
    auto = build_index(ids, x)
    assert auto.kind == "ivf" and auto.info["requested_kind"] == "auto"


def test_search_edges_and_bad_input(data: tuple[np.ndarray, ...]) -> None:
    ids, x, q = data
    small = build_index(ids[:30], x[:30], "flat")
    got, sc = small.search(q[:2], 50)  # more than the catalogue: pad with -1 / -inf
    assert got.shape == (2, 50) and (got[:, 30:] == -1).all() and np.isneginf(sc[:, 30:]).all()
    assert set(got[0, :30].tolist()) == set(ids[:30].tolist())
    one, _ = small.search(q[0], 5)  # a single 1-D query is a batch of one
    assert one.shape == (1, 5)
    with pytest.raises(ValidationError, match="queries"):
        small.search(np.zeros((2, D + 1), np.float32), 5)
    with pytest.raises(ValidationError, match="k"):
        small.search(q[:1], 0)
    with pytest.raises(ValidationError, match="NaN"):
        small.search(np.full((1, D), np.nan, np.float32), 5)
    with pytest.raises(ValidationError, match="duplicate"):
        build_index(np.zeros(3, np.int64), x[:3], "flat")
    with pytest.raises(ValidationError, match="zero norm"):
        build_index(ids[:3], np.vstack([x[:2], np.zeros((1, D), np.float32)]), "flat")
    with pytest.raises(ValidationError, match="kind"):
        build_index(ids[:3], x[:3], "annoy")


def test_single_query_runs_on_one_thread(data: tuple[np.ndarray, ...]) -> None:
    import faiss

    ids, x, q = data
    index = build_index(ids[:1000], x[:1000], "flat")
    index.search(q[:1], 10)
    assert faiss.omp_get_max_threads() == 1
    index.search(q, 10)
    assert faiss.omp_get_max_threads() == index.threads
    index.search(q[:1], 10)
    assert build_index(ids[:100], x[:100], "flat").threads == index.threads > 0


def test_recall_at_k_counts_overlap() -> None:
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, -1], [8, 7, 6, 5]])
    assert recall_at_k(found, truth) == pytest.approx((2 + 4) / 8)


def test_pipeline_retrieve_stage_accepts_ann_index(
    data: tuple[np.ndarray, ...], ivf: FaissIndex
) -> None:
    ids, x, q = data
    users = np.arange(len(q), dtype=np.int64)
    exact = stages.ExactIndex(ids, x)
    flat: AnnIndex = build_index(ids, x, "flat")

    def top10(index: AnnIndex | stages.ExactIndex) -> tuple[np.ndarray, np.ndarray]:
        res = array_engine(index).run(users, Queries(q), 10, 100, "retrieval")  # type: ignore[arg-type]
        return res.ids, res.scores

    want = top10(exact)
    got = top10(flat)
    np.testing.assert_allclose(got[1], want[1], atol=1e-5)
    assert (got[0] == want[0]).mean() > 0.99
    # The approximate index drops into the same engine; its top-10 mostly agrees with exact.
    approx = top10(ivf)
    assert recall_at_k(approx[0], want[0]) >= 0.9


# --- registry + CLI ---------------------------------------------------------------------------


def _fake_version(home: Path, dataset: str, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """A registry version holding only exported item embeddings (what the index needs)."""
    from strata.registry import Registry
    from strata.training.export import write_item_embeddings

    x = synthetic_embeddings(n, D, n_clusters=50, seed=5)
    ids = np.arange(n, dtype=np.int64) + 1
    reg = Registry(home / "registry", dataset)
    with reg.stage() as tmp:
        write_item_embeddings(tmp, ids, x)
        version = reg.commit(tmp, {"models": {"embedding_dim": D}})
    reg.promote(version)
    return ids, x


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    if not STRATA.exists():
        pytest.skip(f"console script {STRATA} is not installed")
    env = {**os.environ, "STRATA_HOME": str(home)}
    return subprocess.run(
        [str(STRATA), "index", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_version_index_build_and_stale_check(strata_home: Path) -> None:
    from strata.config import Settings
    from strata.engine.index import load_version_index
    from strata.training.index_build import build_version_index

    ids, x = _fake_version(strata_home, "toy")
    s = Settings()
    out = build_version_index(s, "toy")
    assert out["kind"] == "flat" and out["n"] == 3000 and out["source"]["version"] == "v0001"
    index = load_version_index(s, "toy")
    got, _ = index.search(x[:5], 1)
    assert got[:, 0].tolist() == ids[:5].tolist()  # each item is its own nearest neighbour
    np.save(strata_home / "registry" / "toy" / "v0001" / "item_embeddings.npy", x[::-1].copy())
    # Registry manifest keeps the old embeddings hash; a rebuilt index would not match it.
    build_version_index(s, "toy")
    with pytest.raises(DataError, match="other item embeddings"):
        load_version_index(s, "toy")


def test_cli_index_build(strata_home: Path) -> None:
    _fake_version(strata_home, "toy")
    res = _cli("build", "--dataset", "toy", "--kind", "ivf", home=strata_home)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["kind"] == "ivf" and out["recall_at_k"] >= 0.95
    assert (Path(out["path"]) / "manifest.json").is_file()

    bad = _cli("build", "--dataset", "toy", "--kind", "annoy", home=strata_home)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "kind" in bad.stderr
    missing = _cli("build", "--dataset", "nope", home=strata_home)
    assert missing.returncode == 2 and "no serving model" in missing.stderr
