"""The `strata` command line: a thin typer layer over library functions (no logic lives here).

Every `StrataError` (bad input, missing file, unknown dataset) becomes one line on stderr and exit
code 2; usage errors also exit 2. Heavy libraries are imported inside the commands that use them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from strata.config import Settings
from strata.errors import StrataError

app = typer.Typer(
    name="strata",
    help="Multistage multimodal recommender and CTR service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Acquire and inspect datasets.", no_args_is_help=True)
features_app = typer.Typer(help="Offline and online feature store.", no_args_is_help=True)
events_app = typer.Typer(help="Event ingestion.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
app.add_typer(events_app, name="events")


def settings() -> Settings:
    """Settings from the environment (STRATA_*); built per command, never held globally."""
    return Settings()


def print_json(obj: object) -> None:
    """Write one JSON document to stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


# --- demo ----------------------------------------------------------------------------------


@app.command()
def demo(
    dataset: Annotated[str, typer.Option(help="Dataset to run on.")] = "movielens-100k",
    no_serve: Annotated[
        bool, typer.Option("--no-serve", help="Run the offline path and print a summary.")
    ] = False,
) -> None:
    """Run the main job end to end on embedded defaults."""
    from strata.demo import run_demo

    run_demo(settings(), dataset=dataset, serve=not no_serve)


# --- data ----------------------------------------------------------------------------------


# --- features ------------------------------------------------------------------------------


# --- events --------------------------------------------------------------------------------


def main() -> None:
    """Entry point: run the app and turn domain errors into one line and exit code 2.

    Usage errors are typer's own (exit 2 with the usage line); anything else is a bug and keeps
    its traceback.
    """
    from pydantic import ValidationError

    try:
        app()
    except StrataError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        sys.stderr.write(f"error: {loc}: {first['msg']}\n")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
