"""Content (multimodal) item features: text and poster embeddings of every item.

The encoders themselves (all-MiniLM-L6-v2 for text, EfficientNet-Lite0 for posters) are models,
in `strata.models.encoders`; this module takes any object with their shape (`TextEmbedder`,
`ImageEmbedder`), builds each item's text, finds its poster, and keeps the embedding caches.

Embeddings are cached per encoder + model hash, keyed by a hash of the content (the text, the
image bytes), so re-running only encodes new or changed items. A missing modality (no text, no
poster, an unreadable image) is a zero vector with `has_text` / `has_image` False, never an error.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from strata import progress
from strata.atomic import atomic_path
from strata.errors import DataError

if TYPE_CHECKING:
    import pandas as pd


log = logging.getLogger(__name__)

TEXT_DIM = 384  # all-MiniLM-L6-v2 sentence embedding
IMAGE_DIM = 1280  # EfficientNet-Lite0 pooled features


class _Embedder(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def dim(self) -> int: ...
    @property
    def cache_dir(self) -> Path: ...
    @property
    def model_hash(self) -> str: ...


class TextEmbedder(_Embedder, Protocol):
    """A text encoder (`strata.models.encoders.TextEncoder`)."""

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray: ...


class ImageEmbedder(_Embedder, Protocol):
    """An image encoder (`strata.models.encoders.ImageEncoder`)."""

    @property
    def batch_size(self) -> int: ...
    def pixels(self, data: bytes) -> np.ndarray | None: ...
    def encode(self, images: np.ndarray, show_progress: bool = False) -> np.ndarray: ...


# --- model files ---------------------------------------------------------------------------


def content_hash(data: str | bytes) -> str:
    """Cache key of one piece of content (a text or the bytes of an image)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()[:32]


# --- text ----------------------------------------------------------------------------------


# --- image ---------------------------------------------------------------------------------


# --- cache ---------------------------------------------------------------------------------


class EmbeddingCache:
    """content hash -> vector for one encoder + model version, stored as one .npz file."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path = Path(path)
        self.dim = dim
        self._index: dict[str, int] = {}
        self._vectors = np.zeros((0, dim), dtype=np.float32)
        if self.path.is_file():
            try:
                with np.load(self.path, allow_pickle=False) as data:
                    keys, vectors = data["keys"], data["vectors"]
            except (OSError, ValueError, KeyError) as exc:
                # A damaged cache only costs re-encoding; it is rebuilt on the next put().
                log.warning("ignoring unreadable embedding cache %s: %s", self.path, exc)
            else:
                if vectors.shape[1:] == (dim,):
                    self._vectors = vectors.astype(np.float32, copy=False)
                    self._index = {str(k): i for i, k in enumerate(keys)}

    def __len__(self) -> int:
        return len(self._index)

    def get(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors (N, dim) for `keys` (zeros where absent) and the found mask (N,)."""
        pos = np.array([self._index.get(k, -1) for k in keys], dtype=np.int64)
        found = pos >= 0
        out = np.zeros((len(keys), self.dim), dtype=np.float32)
        out[found] = self._vectors[pos[found]]
        return out, found

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Add or replace vectors and rewrite the cache file atomically."""
        if not len(keys):
            return
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(keys), self.dim)
        new = [k for k in dict.fromkeys(keys) if k not in self._index]
        start = len(self._vectors)
        self._index.update({k: start + i for i, k in enumerate(new)})
        self._vectors = np.concatenate([self._vectors, np.zeros((len(new), self.dim), np.float32)])
        self._vectors[[self._index[k] for k in keys]] = vectors
        all_keys = np.array(sorted(self._index, key=self._index.__getitem__), dtype="U64")

        def write(tmp: Path) -> None:
            with tmp.open("wb") as fh:
                np.savez(fh, keys=all_keys, vectors=self._vectors)

        with atomic_path(self.path) as tmp_path:
            write(tmp_path)


def cache_for(encoder: _Embedder) -> EmbeddingCache:
    """The embedding cache file of `encoder`'s model version under its cache folder."""
    path = encoder.cache_dir / "embeddings" / f"{encoder.name}-{encoder.model_hash}.npz"
    return EmbeddingCache(path, encoder.dim)


# --- items ---------------------------------------------------------------------------------


def item_texts(items: pd.DataFrame) -> list[str]:
    """One text per item from title, year, genres and description (empty when none exist)."""
    import pandas as pd

    def clean(value: object) -> str:
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            return ""
        return str(value).strip()

    def genres(value: object) -> str:
        if value is None or isinstance(value, float):
            return ""
        return ", ".join(str(g) for g in list(value))  # type: ignore[call-overload]

    n = len(items)
    titles = items["title"] if "title" in items else pd.Series([""] * n)
    years = items["year"] if "year" in items else pd.Series([None] * n)
    genre_col = items["genres"] if "genres" in items else pd.Series([None] * n)
    descs = items["description"] if "description" in items else pd.Series([""] * n)
    texts = []
    for title, year, gen, desc in zip(titles, years, genre_col, descs, strict=True):
        parts = []
        t, y = clean(title), clean(year)
        if t:
            # ML titles already carry "(1995)"; do not repeat the year.
            parts.append(t if (not y or y in t) else f"{t} ({y})")
        elif y:
            parts.append(y)
        g = genres(gen)
        if g:
            parts.append(f"Genres: {g}")
        d = clean(desc)
        if d:
            parts.append(d)
        texts.append(". ".join(parts))
    return texts


def image_paths(items: pd.DataFrame, images_dir: Path | None) -> list[Path | None]:
    """Each item's poster: its `image_path`, else `<images_dir>/<item_id>.jpg` when present."""
    import pandas as pd

    given = items["image_path"] if "image_path" in items else pd.Series([None] * len(items))
    out: list[Path | None] = []
    for item_id, path in zip(items["item_id"], given, strict=True):
        if isinstance(path, str) and path:
            from strata.safepath import inside

            p = Path(path)
            if not p.is_absolute() and images_dir is not None:
                p = inside(images_dir, path, "image_path")  # never out of --images
            out.append(p)
        elif images_dir is not None:
            p = images_dir / f"{int(item_id)}.jpg"
            out.append(p if p.is_file() else None)
        else:
            out.append(None)
    return out


def encode_item_content(
    items: pd.DataFrame,
    text_encoder: TextEmbedder,
    image_encoder: ImageEmbedder | None = None,
    images_dir: Path | None = None,
    show_progress: bool = False,
) -> pd.DataFrame:
    """Content embeddings per item: item_id, text_emb, image_emb, has_text, has_image.

    Only content whose hash is not in the encoder's cache goes through the model. Items without
    text or without a readable poster get zero vectors and a False flag.
    """
    import pandas as pd

    if "item_id" not in items:
        raise DataError("items", "missing column item_id")
    n = len(items)

    # Text.
    texts = item_texts(items)
    has_text = np.array([bool(t) for t in texts])
    text_emb = np.zeros((n, TEXT_DIM), dtype=np.float32)
    tcache = cache_for(text_encoder)
    tkeys = [content_hash(t) for t in texts]
    cached, found = tcache.get(tkeys)
    text_emb[found] = cached[found]
    todo = np.flatnonzero(has_text & ~found)
    if len(todo):
        # Identical texts are encoded once.
        uniq = list(dict.fromkeys(texts[i] for i in todo))
        vecs = text_encoder.encode(uniq, show_progress=show_progress)
        tcache.put([content_hash(t) for t in uniq], vecs)
        cached, _ = tcache.get([tkeys[i] for i in todo])
        text_emb[todo] = cached
    log.info("text: %d items, %d encoded, %d from cache", n, len(todo), int(found.sum()))

    # Images.
    image_emb = np.zeros((n, IMAGE_DIM), dtype=np.float32)
    has_image = np.zeros(n, dtype=bool)
    paths = image_paths(items, images_dir)
    if image_encoder is not None and any(p is not None for p in paths):
        icache = cache_for(image_encoder)
        keys: list[str | None] = []
        raw: dict[int, bytes] = {}
        for i, p in enumerate(paths):
            if p is None:
                keys.append(None)
                continue
            try:
                data = p.read_bytes()
            except OSError as exc:
                log.warning("unreadable image %s treated as missing: %s", p, exc)
                keys.append(None)
                continue
            raw[i] = data
            keys.append(content_hash(data))
        have = [i for i, k in enumerate(keys) if k is not None]
        cached, found_sub = icache.get([keys[i] for i in have])  # type: ignore[misc]
        hit = [i for i, f in zip(have, found_sub, strict=True) if f]
        image_emb[hit] = cached[found_sub]
        has_image[hit] = True
        miss = [i for i, f in zip(have, found_sub, strict=True) if not f]
        # Decode and encode in chunks: all ML-100K posters as float tensors would be ~860 MB.
        chunk = max(image_encoder.batch_size, 1) * 8
        decoded: list[int] = []
        starts = range(0, len(miss), chunk)
        bar: Iterable[int] = (
            progress.track(starts, "encode images", total=len(starts)) if show_progress else starts
        )
        for start in bar:
            pixels, ok = [], []
            for i in miss[start : start + chunk]:
                arr = image_encoder.pixels(raw.pop(i))  # None for a corrupt image: missing
                if arr is None:
                    log.warning("%s: not a readable image, treated as missing", paths[i])
                    continue
                pixels.append(arr)
                ok.append(i)
            if not ok:
                continue
            vecs = image_encoder.encode(np.stack(pixels))
            # Written per chunk, so an interrupted run keeps what it has already encoded.
            icache.put([keys[i] for i in ok], vecs)  # type: ignore[misc]
            image_emb[ok] = vecs
            has_image[ok] = True
            decoded += ok
        log.info(
            "images: %d found, %d encoded, %d from cache, %d unreadable",
            len(have),
            len(decoded),
            len(hit),
            len(miss) - len(decoded),
        )

    return pd.DataFrame(
        {
            "item_id": items["item_id"].to_numpy(dtype=np.int64),
            "text_emb": list(text_emb),
            "image_emb": list(image_emb),
            "has_text": has_text,
            "has_image": has_image,
        }
    )
