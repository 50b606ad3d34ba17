"""Training checkpoints every K steps, and resuming from the last one.

A checkpoint is two files per loop: `<name>.safetensors` (model weights, Adam's moments, torch's
RNG state) and `<name>.json` (the run's key, epoch, step, the loss sums so far, the loop
generator's state). Both are written to temporary names and renamed, JSON last, so a process
killed mid-write leaves the previous checkpoint whole. A checkpoint is only resumed by the same
run (same key: dataset, cut, seed, epochs, batch size, world size, ...); any other is ignored and
replaced. Only the main rank writes: after the all-reduce every rank holds the same state.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from strata.config import Settings
    from strata.training.distributed import Dist

log = logging.getLogger(__name__)


@dataclass
class Resume:
    """Where a restored loop goes on: epoch, batches of it already done, sums so far."""

    epoch: int
    step: int
    history: list[float]
    total: float
    n: int
    rng_state: dict[str, Any]


@dataclass
class Checkpoints:
    """Checkpoints of one training loop (`name`) of one run (`key`) in `folder`, every `every`
    optimiser steps (0: never)."""

    folder: Path
    every: int
    key: dict[str, Any]
    write: bool = True  # False on ranks other than the main one
    steps: int = field(default=0, init=False)

    def _paths(self, name: str) -> tuple[Path, Path]:
        return self.folder / f"{name}.safetensors", self.folder / f"{name}.json"

    def restore(
        self, name: str, model: torch.nn.Module, opt: torch.optim.Optimizer
    ) -> Resume | None:
        """Load the last checkpoint of this run into `model` and `opt`; None when there is none."""
        import torch
        from safetensors.torch import load_file

        tensors_path, meta_path = self._paths(name)
        if not meta_path.is_file() or not tensors_path.is_file():
            return None
        meta = json.loads(meta_path.read_text())
        if meta.get("key") != _jsonable(self.key):
            log.info("ignoring checkpoint %s: written by another run", meta_path)
            return None
        tensors = load_file(str(tensors_path))
        model.load_state_dict(
            {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        )
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, idx, what = k.split(".", 2)
                state.setdefault(int(idx), {})[what] = v
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        torch.set_rng_state(tensors["torch_rng"])
        self.steps = int(meta["global_step"])
        log.info("resuming %s from step %d (epoch %d)", name, self.steps, meta["epoch"])
        return Resume(
            int(meta["epoch"]), int(meta["step"]), [float(x) for x in meta["history"]],
            float(meta["total"]), int(meta["n"]), meta["rng_state"],
        )  # fmt: skip

    def step(
        self,
        name: str,
        model: torch.nn.Module,
        opt: torch.optim.Optimizer,
        at: Resume,
    ) -> None:
        """Count one optimiser step; every `every` steps write a checkpoint of `at`."""
        self.steps += 1
        if self.every <= 0 or self.steps % self.every or not self.write:
            return
        import torch
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {
            f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()
        }
        sd = opt.state_dict()
        for idx, st in sd["state"].items():
            for what, v in st.items():
                tensors[f"opt.{idx}.{what}"] = torch.as_tensor(v).detach().cpu().contiguous()
        tensors["torch_rng"] = torch.get_rng_state()
        meta = {
            "key": _jsonable(self.key),
            "global_step": self.steps,
            "epoch": at.epoch,
            "step": at.step,
            "history": at.history,
            "total": at.total,
            "n": at.n,
            "rng_state": at.rng_state,
            "param_groups": sd["param_groups"],
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        tensors_path, meta_path = self._paths(name)
        # the JSON names the tensors' step: writing the tensors first keeps a torn pair invisible
        # (a reader finding the old JSON with new tensors would resume a mix, so the old JSON
        # is removed before the new tensors land)
        meta_path.unlink(missing_ok=True)
        tmp = tensors_path.with_suffix(".tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, tensors_path)
        tmp = meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, meta_path)
        log.info("checkpoint %s at step %d", name, self.steps)

    def clear(self, name: str) -> None:
        """Drop a loop's checkpoint once it finished (the next run starts afresh)."""
        self.steps = 0
        if self.write:
            for p in self._paths(name):
                p.unlink(missing_ok=True)


def for_run(settings: Settings, dataset: str, dist: Dist, **key: Any) -> Checkpoints:
    """The checkpoints of one training run of `dataset` (identified by `key` and the world)."""
    cfg = settings.training
    folder = cfg.checkpoint_dir or settings.home / "checkpoints" / dataset
    full = {"dataset": dataset, "world": dist.world, "batch": cfg.batch_size, **key}
    full["ranker_batch"] = cfg.ranker_batch_size
    return Checkpoints(Path(folder), cfg.checkpoint_every, full, write=dist.main)


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))
