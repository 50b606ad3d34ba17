"""Model weights on disk: safetensors files (never pickles), strict on load."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from strata.errors import DataError

if TYPE_CHECKING:
    import torch


def save_state(module: torch.nn.Module, path: Path) -> Path:
    """Weights as safetensors (never pickles)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(path))
    return path


def load_state(module: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights into `module` (strict)."""
    from safetensors.torch import load_file

    if not path.exists():
        raise DataError(path, "model weights are missing")
    module.load_state_dict(load_file(str(path)), strict=True)
