"""Encoding a dataset's catalogue with the pretrained content encoders and storing the result in
the offline store (`strata features encode`): an offline step above the models layer, which
owns the encoders."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from strata.errors import DataError
from strata.features.content import IMAGE_DIM, TEXT_DIM, encode_item_content, image_paths
from strata.models.encoders import Backend, ImageEncoder, TextEncoder

if TYPE_CHECKING:
    import pandas as pd

    from strata.config import Settings


def content_cache_dir(settings: Settings) -> Path:
    """Where exported encoders and embedding caches live: `<home>/content/`."""
    return settings.home / "content"


def encode_dataset_content(
    settings: Settings,
    items: pd.DataFrame,
    images_dir: Path | None = None,
    backend: Backend = "onnx",
    show_progress: bool = True,
) -> pd.DataFrame:
    """Encode a dataset's items with the default text and image encoders (cached under home).

    An images folder that gives no item a readable image is an error (DataError, exit 2), checked
    for files before anything is encoded and for decodable images after: a run that was asked
    for posters never silently trains on text alone."""
    cache = content_cache_dir(settings)
    files = 0
    if images_dir is not None:
        if not Path(images_dir).is_dir():
            raise DataError(images_dir, "images folder does not exist")
        files = sum(1 for p in image_paths(items, images_dir) if p is not None and p.is_file())
        if not files:
            raise DataError(
                images_dir, "no item has an image file here (expected <item id>.jpg or the "
                "paths the dataset's image column names)"
            )  # fmt: skip
    df = encode_item_content(
        items,
        TextEncoder(cache, backend=backend),
        ImageEncoder(cache, backend=backend),
        images_dir=images_dir,
        show_progress=show_progress,
    )
    if images_dir is not None and not bool(df["has_image"].any()):
        raise DataError(images_dir, f"none of the {files} image files could be read as an image")
    return df


def encode_and_store(
    settings: Settings,
    dataset: str,
    images: Path | None = None,
    path: Path | None = None,
    backend: Backend = "onnx",
) -> dict[str, Any]:
    """Load `dataset`, encode its items' text and posters, write `item_content`; a summary."""
    from strata.datasets import load
    from strata.features.offline import OfflineStore

    if images is not None and not Path(images).is_dir():
        raise DataError(images, "images folder does not exist")
    ds = load(dataset, path=path, images=images, settings=settings)
    df = encode_dataset_content(settings, ds.items, images_dir=images, backend=backend)
    rows = OfflineStore(settings).write_item_content(dataset, df)
    return {
        "dataset": dataset,
        "items": rows,
        "has_text": int(df["has_text"].sum()),
        "has_image": int(df["has_image"].sum()),
        "text_dim": TEXT_DIM,
        "image_dim": IMAGE_DIM,
        "cache": str(content_cache_dir(settings)),
    }
