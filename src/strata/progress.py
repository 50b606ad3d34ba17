"""Rich progress bars for long steps; library code reports progress only through these helpers."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

# Progress goes to stderr so that `--json` output on stdout stays machine-readable.
_console = Console(stderr=True)


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=_console,
        transient=False,
        disable=not sys.stderr.isatty(),
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate over `items` with a progress bar on stderr (silent when stderr is not a TTY)."""
    with _progress() as progress:
        yield from progress.track(items, total=total, description=description)


@contextmanager
def task(description: str, total: int | None = None) -> Iterator[tuple[Progress, TaskID]]:
    """A progress task to advance by hand: `with task("build", total=n) as (p, t): p.advance(t)`."""
    with _progress() as progress:
        yield progress, progress.add_task(description, total=total)
