"""Data-parallel training: N ranks with per-rank batch B train exactly like one rank with batch
N*B (global in-batch negatives, logQ for the global batch, masking drawn for the global batch),
checkpoints resume to the same weights as an unbroken run, and a killed rank fails the job.

The multi-rank tests run real gloo process groups on loopback (spawned processes). They join the
way torchrun's workers do: through a store that the launching process hosts on a port it is
already listening on (no free-port race, and the store outlives every rank). A rank that
finishes leaves the group only after a barrier (`leaving_group`, as `strata train` does), so no
rank tears down its connections while another still talks to it. The launcher waits for every
rank and reports each exit status itself, so a test reads exactly which rank died how (not
whichever failure a join happened to see first).
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from strata.models.batch import (
    RankBatch,
    RetrievalBatch,
    synthetic_batches,
    synthetic_items,
    synthetic_rank_batches,
)
from strata.models.dcn import DCNConfig, DCNRanker
from strata.models.inputs import FeatureDims
from strata.models.layers import CrossNetConfig, MLPConfig
from strata.models.two_tower import TwoTower, TwoTowerConfig
from strata.training.checkpoints import Checkpoints
from strata.training.distributed import Dist, leaving_group
from strata.training.loops import Negatives, ranker_loop, seed_everything, two_tower_loop
from strata.training.losses import sampled_softmax_loss

pytestmark = pytest.mark.multiprocess

DIMS = FeatureDims(n_users=40, n_items=60, text_dim=8, image_dim=6, hist_len=5)
WORLD = 2
PER_RANK = 24  # per-rank batch B; the global batch is WORLD * B
STEPS = 6  # batches per epoch
EPOCHS = 2
JOB_TIMEOUT_S = 300  # a job that hangs fails the test instead of the suite's 600 s timeout
GRACE_S = 20  # after one rank failed, time for the others to notice (their peer is gone)


def _batches(kind: str, size: int) -> list[RetrievalBatch] | list[RankBatch]:
    if kind == "ranker":
        return list(synthetic_rank_batches(DIMS, size, STEPS, seed=1))
    w = np.random.default_rng(5)
    # unequal weights: the ranks must reproduce the global *weighted* mean
    return [
        RetrievalBatch(b.query, b.item, b.log_q, w.uniform(0.5, 2, len(b)).astype(np.float32))
        for b in synthetic_batches(DIMS, size, STEPS, seed=3)
    ]


def _negatives(rng: np.random.Generator, b: RetrievalBatch) -> Negatives:
    ids = rng.integers(1, DIMS.n_items, 16)
    return Negatives(synthetic_items(DIMS, ids), ids)


def _train(
    kind: str,
    dist: Dist | None = None,
    ckpt: Checkpoints | None = None,
    kill_at: int | None = None,
    batch: int = WORLD * PER_RANK,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Train `kind` for EPOCHS on fixed batches of `batch` rows; (final weights, loss history)."""
    seed_everything(0, 1)

    def epochs(e: int, _rng: np.random.Generator) -> Iterator[RetrievalBatch | RankBatch]:
        for k, b in enumerate(_batches(kind, batch)):
            if kill_at is not None and e * STEPS + k == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # this rank dies mid-epoch
            yield b

    if kind == "two_tower":
        tt = TwoTower(DIMS, TwoTowerConfig(out_dim=16, mlp=MLPConfig(hidden=(32,))))
        hist = two_tower_loop(
            tt, epochs, EPOCHS, lr=1e-2, p_user=0.2, p_item=0.2, negatives=_negatives,  # type: ignore[arg-type]
            n_items=DIMS.n_items, dist=dist, ckpt=ckpt, seed=7,
        )  # fmt: skip
        model: torch.nn.Module = tt
    else:
        cfg = DCNConfig(deep=MLPConfig(hidden=(16,)), cross=CrossNetConfig(kind="low_rank", rank=4))
        model = DCNRanker(DIMS, cfg)
        hist = ranker_loop(model, epochs, EPOCHS, lr=1e-2, dist=dist, ckpt=ckpt, seed=7)  # type: ignore[arg-type]
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, hist


def _worker(rank: int, port: int, out: str, kind: str, ckpt_dir: str, kill_at: int) -> None:
    """One rank of a gloo job on loopback; rank 0 writes the final weights and loss history."""
    store = torch.distributed.TCPStore(
        "127.0.0.1", port, WORLD, is_master=False, timeout=timedelta(seconds=120)
    )
    torch.distributed.init_process_group("gloo", store=store, rank=rank, world_size=WORLD)
    with leaving_group():  # as `strata train` leaves: a barrier first unless this rank failed
        d = Dist(rank, WORLD)
        ckpt = None
        if ckpt_dir:
            ckpt = Checkpoints(Path(ckpt_dir), 2, {"test": kind}, write=d.main)
        state, hist = _train(kind, d, ckpt, kill_at if rank == 1 and kill_at >= 0 else None)
        if d.main:
            save_file({k: v.contiguous() for k, v in state.items()}, f"{out}/state.safetensors")
            Path(out, "history.json").write_text(json.dumps(hist))


def _run_ranks(tmp: Path, kind: str, ckpt_dir: str = "", kill_at: int = -1) -> list[int | None]:
    """Run a WORLD-rank job to its end; every rank's exit status, in rank order. Once a rank has
    failed, the others get GRACE_S to fail on their own before they are killed."""
    store = torch.distributed.TCPStore(
        "127.0.0.1", 0, WORLD, is_master=True, wait_for_workers=False
    )
    spawn = multiprocessing.get_context("spawn")
    args = (store.port, str(tmp), kind, ckpt_dir, kill_at)
    procs = [spawn.Process(target=_worker, args=(r, *args)) for r in range(WORLD)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        if any(p.exitcode not in (None, 0) for p in procs):
            deadline = min(deadline, time.monotonic() + GRACE_S)
        multiprocessing.connection.wait([p.sentinel for p in procs if p.is_alive()], 0.5)
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join()
    return [p.exitcode for p in procs]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_gathered_softmax_adds_up_to_the_global_batch() -> None:
    """The loss each rank computes over the gathered batch sums (scaled) to one big batch's."""
    rng = np.random.default_rng(0)
    q = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(8, 4))).float(), dim=1)
    i = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(8, 4))).float(), dim=1)
    ids = torch.tensor([1, 2, 3, 1, 5, 6, 7, 8])  # an accidental hit across the two halves
    log_q = torch.from_numpy(np.log(rng.uniform(0.01, 0.2, 8))).float()
    w = torch.from_numpy(rng.uniform(0.5, 2, 8)).float()
    full = sampled_softmax_loss(q, i, ids, log_q, 0.1, weight=w)
    halves = [
        sampled_softmax_loss(
            q[r * 4 : (r + 1) * 4],
            i,
            ids,
            log_q,
            0.1,
            weight=w[r * 4 : (r + 1) * 4],
            offset=r * 4,
            denominator=w.sum() / 2,
        )
        for r in range(2)
    ]
    assert torch.allclose((halves[0] + halves[1]) / 2, full, atol=1e-6)
    # without the gathered items (each half its own softmax) the loss is another one
    local = sampled_softmax_loss(q[:4], i[:4], ids[:4], log_q[:4], 0.1, weight=w[:4])
    assert not torch.allclose(local, halves[0] / 2 * w.sum() / w[:4].sum(), atol=1e-3)


@pytest.mark.parametrize("kind", ["two_tower", "ranker"])
def test_two_ranks_train_like_one_rank_with_twice_the_batch(kind: str, tmp_path: Path) -> None:
    ref_state, ref_hist = _train(kind)  # one process, batch 2B
    assert _run_ranks(tmp_path, kind) == [0] * WORLD  # two gloo ranks, batch B each
    state = load_file(str(tmp_path / "state.safetensors"))
    hist = json.loads((tmp_path / "history.json").read_text())
    assert _max_diff(state, ref_state) < 1e-4
    assert np.allclose(hist, ref_hist, atol=1e-5)
    # the comparison can fail: one process on batch B (local negatives only) ends elsewhere
    other, _ = _train(kind, batch=PER_RANK)
    assert _max_diff(other, ref_state) > 1e-3


def test_checkpoint_resume_matches_an_unbroken_run(tmp_path: Path) -> None:
    """One process: the run dies after a checkpoint (an exception mid-epoch), the rerun resumes
    from it and ends with the weights and loss history of a run that never stopped."""
    ref_state, ref_hist = _train("two_tower")
    ckpt = Checkpoints(tmp_path, 3, {"run": 1})

    class Boom(Exception):
        pass

    def dying() -> None:
        seed_everything(0, 1)
        tt = TwoTower(DIMS, TwoTowerConfig(out_dim=16, mlp=MLPConfig(hidden=(32,))))

        def epochs(e: int, _rng: np.random.Generator) -> Iterator[RetrievalBatch]:
            for k, b in enumerate(_batches("two_tower", WORLD * PER_RANK)):
                if e * STEPS + k == 8:
                    raise Boom
                yield b  # type: ignore[misc]

        two_tower_loop(
            tt, epochs, EPOCHS, lr=1e-2, p_user=0.2, p_item=0.2, negatives=_negatives,
            n_items=DIMS.n_items, ckpt=ckpt, seed=7,
        )  # fmt: skip

    with pytest.raises(Boom):
        dying()
    meta = json.loads((tmp_path / "two-tower.json").read_text())
    assert (meta["global_step"], meta["epoch"], meta["step"]) == (6, 0, 6)
    # another run's checkpoint is never resumed
    assert Checkpoints(tmp_path, 3, {"run": 2}).restore("two-tower", *_model_opt()) is None
    state, hist = _train("two_tower", ckpt=Checkpoints(tmp_path, 3, {"run": 1}))
    assert _max_diff(state, ref_state) < 1e-6 and np.allclose(hist, ref_hist, atol=1e-7)
    assert not (tmp_path / "two-tower.json").exists()  # a finished loop drops its checkpoint


def _model_opt() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    tt = TwoTower(DIMS, TwoTowerConfig(out_dim=16, mlp=MLPConfig(hidden=(32,))))
    return tt, torch.optim.Adam(tt.parameters())


def test_a_killed_rank_fails_the_job_and_the_rerun_resumes(tmp_path: Path) -> None:
    ref_state, ref_hist = _train("two_tower")
    ckpt_dir = tmp_path / "ckpt"
    out = tmp_path / "out"
    out.mkdir()
    rank0, rank1 = _run_ranks(out, "two_tower", str(ckpt_dir), kill_at=9)  # rank 1 dies at step 10
    assert rank1 == -signal.SIGKILL
    assert rank0 != 0  # the survivor fails (its peer is gone) or is stopped: never finishes
    assert not (out / "state.safetensors").exists()  # the job failed as a whole
    meta = json.loads((ckpt_dir / "two-tower.json").read_text())
    assert meta["global_step"] == 8  # checkpoints every 2 steps: the last one before the kill
    assert _run_ranks(out, "two_tower", str(ckpt_dir)) == [0] * WORLD
    state = load_file(str(out / "state.safetensors"))
    assert _max_diff(state, ref_state) < 1e-4
    assert np.allclose(json.loads((out / "history.json").read_text()), ref_hist, atol=1e-5)
    assert not (ckpt_dir / "two-tower.json").exists()
