"""Data-parallel training with `torch.distributed`: gloo on CPU, NCCL on CUDA.

Every rank holds a full replica of the model and takes its slice of each *global* batch (per-rank
batch B, global N*B). Gradients are summed over ranks in one flat all-reduce per step and
divided by N, so with the loss scaled as `rank_loss = N * (rank's share of the global sum) /
global count` the update is the one a single process makes on the global batch: N ranks with
batch B train like one rank with batch N*B (tested). `gather` is an all-gather that keeps the
graph, which the two-tower's in-batch softmax uses so that every rank's queries score the
items of every rank (global negatives).

`launch` re-runs the current command under torchrun (`--standalone`, a free local port); each
worker finds itself through torchrun's environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from strata.errors import EXIT_NOT_PROMOTED, ValidationError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda", "auto")


def resolve_device(spec: str, local_rank: int = 0, field: str = "training.device") -> str:
    """`cpu`, `cuda` (an error when absent) or `auto` (CUDA when present) -> a torch device;
    errors name the setting `field`."""
    import torch

    base = spec.split(":", 1)[0]
    if base not in DEVICES:
        raise ValidationError(field, f"expected one of {', '.join(DEVICES)}, got {spec!r}")
    if base == "auto":
        base = "cuda" if torch.cuda.is_available() else "cpu"
    if base == "cuda":
        if not torch.cuda.is_available():
            raise ValidationError(field, "cuda asked for; torch sees no CUDA device")
        return spec if ":" in spec else f"cuda:{local_rank % torch.cuda.device_count()}"
    return "cpu"


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: rank of `world`, and the device it trains on."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"
    # True: each rank's batches are its own rows (sharded input), every rank the same size;
    # False: each rank takes its slice of every global batch
    sharded: bool = False

    @property
    def main(self) -> bool:
        """True on the rank that writes files (rank 0)."""
        return self.rank == 0

    def rows(self, n: int) -> np.ndarray | None:
        """This rank's rows of a global batch of `n` (every rank the same count; the remainder
        of an uneven batch is dropped so collectives line up), or all `n` of a sharded rank's
        own batch. None: too few rows to train on."""
        per = n if self.sharded else n // self.world
        if per < 1 or per * self.world < 2:
            return None
        start = 0 if self.sharded else self.rank * per
        return np.arange(start, start + per)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """All ranks' `x` concatenated in rank order (dim 0), differentiable for float inputs."""
        if self.world == 1:
            return x
        import torch

        if x.is_floating_point() and x.requires_grad:
            return _gather_fn().apply(x, self.world, self.rank)
        parts = [torch.empty_like(x) for _ in range(self.world)]
        torch.distributed.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    def total(self, value: float) -> float:
        """Sum of a number over ranks."""
        if self.world == 1:
            return float(value)
        import torch

        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return float(t.item())

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's picklable `obj`, in rank order."""
        if self.world == 1:
            return [obj]
        import torch

        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast_params(self, model: torch.nn.Module) -> None:
        """Make every rank start from rank 0's weights."""
        if self.world == 1:
            return
        import torch

        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                torch.distributed.broadcast(t.data, src=0)

    def average_gradients(self, params: Sequence[torch.nn.Parameter], loss: torch.Tensor) -> float:
        """Average gradients (and the loss, returned) over ranks in one flat all-reduce.

        A parameter no rank used keeps `grad = None`, so Adam skips it as a single process would.
        """
        if self.world == 1:
            return float(loss.detach())
        import torch

        parts = [p.new_zeros(p.numel()) if p.grad is None else p.grad.reshape(-1) for p in params]
        dtype = parts[0].dtype
        used = torch.tensor([p.grad is not None for p in params], dtype=dtype, device=loss.device)
        flat = torch.cat([*parts, used, loss.detach().reshape(1).to(dtype)])
        torch.distributed.all_reduce(flat)
        flat /= self.world
        used_by_any = (flat[-1 - len(params) : -1] > 0).tolist()
        off = 0
        for p, u in zip(params, used_by_any, strict=True):
            if u:
                p.grad = flat[off : off + p.numel()].view_as(p).clone()
            off += p.numel()
        return float(flat[-1])

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.world > 1:
            import torch

            torch.distributed.barrier()


@functools.cache
def _gather_fn() -> Any:
    """The differentiable all-gather, built on first use (torch is imported lazily)."""
    import torch

    class Gather(torch.autograd.Function):
        """all_gather forward; backward sums every rank's gradient of the gathered tensor and
        keeps this rank's slice (gloo has no reduce_scatter, so it is an all-reduce)."""

        @staticmethod
        def forward(ctx: Any, x: torch.Tensor, world: int, rank: int) -> torch.Tensor:
            ctx.rank, ctx.n = rank, x.shape[0]
            parts = [torch.empty_like(x) for _ in range(world)]
            torch.distributed.all_gather(parts, x.contiguous())
            return torch.cat(parts)

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
            g = grad.contiguous().clone()
            torch.distributed.all_reduce(g)
            return g[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n], None, None

    return Gather


def in_worker() -> bool:
    """True inside a torchrun worker (its environment names this process's rank)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(device: str = "cpu", field: str = "training.device") -> Dist:
    """This process's `Dist`: a torchrun worker joins the process group (NCCL on CUDA, gloo on
    CPU); a plain process is rank 0 of 1."""
    if not in_worker() or int(os.environ["WORLD_SIZE"]) == 1:
        return Dist(0, 1, resolve_device(device, field=field))
    import torch

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dev = resolve_device(device, int(os.environ["LOCAL_RANK"]), field)
    if not torch.distributed.is_initialized():
        backend = "nccl" if dev.startswith("cuda") else "gloo"
        if dev.startswith("cuda"):
            torch.cuda.set_device(dev)
        torch.distributed.init_process_group(backend)
    return Dist(rank, world, dev)


def current(device: str = "cpu") -> Dist:
    """The `Dist` of a process group already joined (by `init`), else rank 0 of 1."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        world = torch.distributed.get_world_size()
        return Dist(torch.distributed.get_rank(), world, resolve_device(device, local))
    return Dist(0, 1, resolve_device(device))


def shutdown(barrier: bool = False) -> None:
    """Leave the process group (no-op outside one); with `barrier`, only once every rank is here,
    so no rank closes its connections while another still uses them."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if barrier and torch.distributed.get_world_size() > 1:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def leaving_group() -> Iterator[None]:
    """Run a job's body, then leave the process group: together after a barrier when the body
    finished, at once when it raised (the others may be blocked in a collective; torchrun stops
    them). Every process leaves the group before it exits: one that exits inside a gloo group
    can abort in the group's threads."""
    try:
        yield
    except BaseException:
        shutdown()
        raise
    shutdown(barrier=True)


def torchrun_command(
    nproc: int, argv: Sequence[str], env: dict[str, str], module: str = "strata.cli"
) -> list[str]:
    """The torchrun command line (through `torchrun_main`): one node on a free local port
    (`--standalone`), or, inside a
    Kubeflow PyTorchJob pod (the operator sets `PET_MASTER_ADDR`, `PET_NNODES`, `PET_NODE_RANK`,
    which torchrun reads), this pod's share of a multi-node job."""
    single = "PET_MASTER_ADDR" not in env
    return [
        sys.executable, "-m", "strata.training.distributed", *(["--standalone"] if single else []),
        f"--nproc-per-node={int(nproc)}", "--max-restarts=0", "-m", module, *argv,
    ]  # fmt: skip


def launch(nproc: int, argv: Sequence[str], module: str = "strata.cli") -> int:
    """Run `python -m <module> <argv>` as `nproc` torchrun workers on this machine; returns the
    job's exit status (non-zero when any rank failed: torchrun then stops the others)."""
    if nproc < 1:
        raise ValidationError("--nproc", f"must be >= 1, got {nproc}")
    env = dict(os.environ)
    cmd = torchrun_command(nproc, argv, env, module)
    # each rank gets an equal share of the cores (torch would otherwise oversubscribe them)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(nproc))))
    log.info("launching %d ranks: %s", nproc, " ".join(cmd))
    return subprocess.run(cmd, env=env, check=False).returncode


def torchrun_main(argv: Sequence[str]) -> int:
    """torchrun (`torch.distributed.run`) whose failure is an exit status, not torchrun's
    traceback: 2 when the first rank to fail exited 2 (input it rejected, its one-line error
    already printed), 3 likewise when it exited 3 (its version not promoted), 1 for any other
    failure."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torchrun's agent logs each failed rank itself; the summary below says it once
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(parse_args(list(argv)))
    except ChildFailedError as exc:
        _, first = exc.get_first_failure()
        if first.exitcode in (2, EXIT_NOT_PROMOTED):
            return int(first.exitcode)
        sys.stderr.write(f"{exc}\n")  # which rank failed how (no traceback of torchrun's)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(torchrun_main(sys.argv[1:]))
