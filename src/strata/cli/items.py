"""`strata items add|update|retire`: the live catalogue from the command line, through the same
library function as `POST/PATCH/DELETE /items` (`strata.serving.live.apply_change`): checked
against the dataset's serving version, written to the durable log on the shared home, and picked
up by every running replica at its next poll."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from strata.cli.common import print_json, settings

items_app = typer.Typer(help="The live catalogue: items served without retraining.",
                        no_args_is_help=True)  # fmt: skip

DatasetOpt = Annotated[str, typer.Option("--dataset", help="Served dataset.")]
IdOpt = Annotated[str, typer.Option(
    "--id", help="Item id: an integer, or the owner's id for a dataset added with `data add`.",
)]  # fmt: skip
TitleOpt = Annotated[str | None, typer.Option(help="Title.")]
GenresOpt = Annotated[str | None, typer.Option(help="Comma-separated genres of the version.")]
YearOpt = Annotated[int | None, typer.Option(help="Release year.")]
DescOpt = Annotated[str | None, typer.Option(help="Description.")]
ImageOpt = Annotated[Path | None, typer.Option(help="Image file (JPEG, PNG or WebP).")]


def _change(
    dataset: str, op: str, item_id: str, fields: dict[str, Any], image: Path | None
) -> None:
    from strata.engine.version import ModelVersion
    from strata.errors import DataError
    from strata.serving.live import ItemEmbedder, apply_change, resolve_item

    s = settings()
    mv = ModelVersion.open(s, dataset)
    data = None
    if image is not None:
        try:
            data = image.read_bytes()
        except OSError as exc:
            raise DataError(image, f"cannot read image: {exc}") from None
    overlay, record = apply_change(
        s, mv, ItemEmbedder(s, mv), op, item_id, {k: v for k, v in fields.items() if v is not None},
        data,
    )  # fmt: skip
    dense, external = resolve_item(mv.space, item_id)
    print_json({"dataset": dataset, "version": mv.version, **record,
                "item_id": external if external is not None else dense,
                "live_items": len(overlay.ids)})  # fmt: skip


def _genres(text: str | None) -> list[str] | None:
    return None if text is None else [g.strip() for g in text.split(",") if g.strip()]


@items_app.command("add")
def items_add(
    dataset: DatasetOpt, item_id: IdOpt, title: Annotated[str, typer.Option(help="Title.")],
    genres: GenresOpt = None, year: YearOpt = None, description: DescOpt = None,
    image: ImageOpt = None,
) -> None:  # fmt: skip
    """Add an item: retrievable by every replica's next request after its poll."""
    fields = {"title": title, "genres": _genres(genres), "year": year, "description": description}
    _change(dataset, "add", item_id, fields, image)


@items_app.command("update")
def items_update(
    dataset: DatasetOpt, item_id: IdOpt, title: TitleOpt = None, genres: GenresOpt = None,
    year: YearOpt = None, description: DescOpt = None, image: ImageOpt = None,
) -> None:  # fmt: skip
    """Change a live item's content (only the options given)."""
    fields = {"title": title, "genres": _genres(genres), "year": year, "description": description}
    _change(dataset, "update", item_id, fields, image)


@items_app.command("retire")
def items_retire(dataset: DatasetOpt, item_id: IdOpt) -> None:
    """Retire an item: never recommended again; its events are still accepted."""
    _change(dataset, "retire", item_id, {}, None)
