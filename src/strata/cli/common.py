"""Helpers every `strata` command uses."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from strata.config import Settings
from strata.errors import EXIT_NOT_PROMOTED, ValidationError

if TYPE_CHECKING:
    from strata.training.distributed import Dist


def settings() -> Settings:
    """Settings from the environment (STRATA_*); built per command, never held globally."""
    return Settings()


def print_json(obj: object) -> None:
    """Write one JSON document to stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def parse_ts(value: str | int | None, field: str = "--until") -> int | None:
    """Unix seconds from an int, a digit string, or an ISO date/datetime (naive means UTC)."""
    if value is None:
        return None
    if isinstance(value, int):
        ts = value
    else:
        text = value.strip()
        if text.lstrip("-").isdigit():
            ts = int(text)
        else:
            try:
                dt = datetime.fromisoformat(text)
            except ValueError:
                raise ValidationError(
                    field, f"expected unix seconds or an ISO date, got {value!r}"
                ) from None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            ts = int(dt.timestamp())
    if ts < 0:
        raise ValidationError(field, f"must be >= 0, got {ts}")
    return ts


def distributed(
    nproc: int, device: str, what: str, field: str = "training.device", resumable: bool = True
) -> Dist | None:
    """`--nproc N` of a training command: outside torchrun, re-run this command as N ranks and
    exit with the job's status (rank 0 prints the result); inside, join the process group and
    return this rank's `Dist`. None: a single process (N = 1)."""
    from strata.training import distributed as dist

    # a bad or absent device fails here, before any rank starts
    dist.resolve_device(device, field=field)
    if nproc < 1:
        raise ValidationError("--nproc", f"must be >= 1, got {nproc}")
    if nproc == 1 and not dist.in_worker():
        return None
    if not dist.in_worker():
        code = dist.launch(nproc, _without_nproc(sys.argv[1:]))
        if code in (2, EXIT_NOT_PROMOTED):  # bad input / not promoted: the rank said why, in a line
            raise SystemExit(code)
        if code != 0:
            again = " Run it again to resume from the last checkpoint" if resumable else ""
            sys.stderr.write(
                f"error: {what} failed on a rank (exit {code}); every rank was stopped.{again}\n"
            )
        raise SystemExit(0 if code == 0 else 1)
    return dist.init(device, field)


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line for the ranks: `--nproc` removed (a worker knows it is one from
    torchrun's environment, and torchrun's own parser would take `--nproc` as its option)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out
