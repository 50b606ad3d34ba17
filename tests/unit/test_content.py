"""Content encoders: the real MiniLM and EfficientNet-Lite0 weights, a handful of items each."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from strata.features.content import IMAGE_DIM, TEXT_DIM, encode_item_content, item_texts
from strata.models.encoders import ImageEncoder, TextEncoder, load_image, minilm_dir

TITLES = [
    "Star Wars (1977). Genres: Action, Adventure, Sci-Fi",
    "Return of the Jedi (1983). Genres: Action, Adventure, Sci-Fi",
    "Sleepless in Seattle (1993). Genres: Comedy, Romance",
]


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the ONNX exports, shared by every test (the export is the main cost)."""
    return tmp_path_factory.mktemp("content-models")


@pytest.fixture(scope="session")
def text_encoder(model_cache: Path) -> TextEncoder:
    return TextEncoder(model_cache)


@pytest.fixture(scope="session")
def image_encoder(model_cache: Path) -> ImageEncoder:
    return ImageEncoder(model_cache)


def _fresh_cache(tmp_path: Path, model_cache: Path) -> Path:
    """An empty embedding cache that reuses the session's exported models."""
    (model_cache / "models").mkdir(exist_ok=True)
    tmp_path.mkdir(parents=True)
    (tmp_path / "models").symlink_to(model_cache / "models", target_is_directory=True)
    return tmp_path


def test_text_embeddings_deterministic_and_unit_norm(text_encoder: TextEncoder) -> None:
    a = text_encoder.encode(TITLES)
    b = text_encoder.encode(list(reversed(TITLES)))[::-1]
    assert a.shape == (3, TEXT_DIM) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-6)  # batch order/padding does not matter
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)


def test_similar_titles_are_closer(text_encoder: TextEncoder) -> None:
    e = text_encoder.encode(TITLES)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.1
    assert e[0] @ e[1] > e[1] @ e[2] + 0.1


def test_onnx_matches_torch_text(text_encoder: TextEncoder, model_cache: Path) -> None:
    torch_enc = TextEncoder(model_cache, backend="torch")
    diff = np.abs(torch_enc.encode(TITLES) - text_encoder.encode(TITLES)).max()
    assert diff <= 1e-4


def test_matches_sentence_transformers(text_encoder: TextEncoder) -> None:
    st = pytest.importorskip("sentence_transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model folder is local; never the hub
    ref = st.SentenceTransformer(str(minilm_dir()), device="cpu").encode(
        TITLES, normalize_embeddings=True
    )
    cos = (text_encoder.encode(TITLES) * ref).sum(axis=1)
    assert cos.min() >= 1 - 1e-4


def test_image_onnx_matches_torch(
    image_encoder: ImageEncoder, model_cache: Path, posters_dir: Path
) -> None:
    x = np.stack([load_image(posters_dir / "1.jpg"), load_image(posters_dir / "50.jpg")])  # type: ignore[list-item]
    got = image_encoder.encode(x)
    ref = ImageEncoder(model_cache, backend="torch").encode(x)
    assert got.shape == (2, IMAGE_DIM)
    assert np.abs(got - ref).max() <= 1e-4
    assert not np.allclose(got[0], got[1])  # different posters, different features


def test_item_texts() -> None:
    items = pd.DataFrame(
        {
            "item_id": [1, 2, 3],
            "title": ["Toy Story (1995)", "Heat", ""],
            "year": pd.array([1995, 1995, None], dtype="Int16"),
            "genres": [["Animation", "Comedy"], [], []],
            "description": ["", "A heist.", ""],
        }
    )
    assert item_texts(items) == [
        "Toy Story (1995). Genres: Animation, Comedy",
        "Heat (1995). A heist.",
        "",
    ]


def _items(tmp_path: Path, posters_dir: Path) -> pd.DataFrame:
    img = tmp_path / "posters"
    img.mkdir()
    shutil.copy(posters_dir / "1.jpg", img / "1.jpg")
    shutil.copy(posters_dir / "50.jpg", img / "2.jpg")
    (img / "4.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x13" * 200)  # corrupt
    return pd.DataFrame(
        {
            "item_id": np.array([1, 2, 3, 4, 5], np.int64),
            "title": ["Toy Story (1995)", "Star Wars (1977)", "Heat (1995)", "Fargo (1996)", ""],
            "year": pd.array([1995, 1977, 1995, 1996, None], dtype="Int16"),
            "genres": [["Animation"], ["Sci-Fi"], ["Action"], ["Crime"], []],
            "description": [""] * 5,
            "image_path": [str(img / "1.jpg"), str(img / "2.jpg"), None, str(img / "4.jpg"), None],
        }
    )


def test_encode_items_flags_and_cache(tmp_path: Path, model_cache: Path, posters_dir: Path) -> None:
    cache = _fresh_cache(tmp_path / "cache", model_cache)
    items = _items(tmp_path, posters_dir)

    text, image = TextEncoder(cache), ImageEncoder(cache)
    df = encode_item_content(items, text, image)
    assert df["item_id"].tolist() == [1, 2, 3, 4, 5]
    assert df["has_text"].tolist() == [True, True, True, True, False]
    assert df["has_image"].tolist() == [True, True, False, False, False]  # 4 is corrupt
    assert all(len(v) == TEXT_DIM and v.dtype == np.float32 for v in df["text_emb"])
    assert all(len(v) == IMAGE_DIM for v in df["image_emb"])
    assert not df["text_emb"][4].any() and not df["image_emb"][2].any()
    assert not df["image_emb"][3].any()
    assert df["image_emb"][0].any() and df["text_emb"][0].any()
    assert (text.n_encoded, image.n_encoded) == (4, 2)

    # A second run with fresh encoders finds everything in the cache.
    text2, image2 = TextEncoder(cache), ImageEncoder(cache)
    again = encode_item_content(items, text2, image2)
    assert (text2.n_encoded, image2.n_encoded) == (0, 0)
    assert text2._run is None and image2._run is None  # the models were not even loaded
    np.testing.assert_array_equal(np.stack(again["text_emb"]), np.stack(df["text_emb"]))
    np.testing.assert_array_equal(np.stack(again["image_emb"]), np.stack(df["image_emb"]))

    # Changing one title re-encodes exactly that text.
    items.loc[2, "title"] = "Heat (1995) director's cut"
    text3, image3 = TextEncoder(cache), ImageEncoder(cache)
    changed = encode_item_content(items, text3, image3)
    assert (text3.n_encoded, image3.n_encoded) == (1, 0)
    assert not np.array_equal(changed["text_emb"][2], df["text_emb"][2])


def test_images_dir_fallback(tmp_path: Path, model_cache: Path, posters_dir: Path) -> None:
    cache = _fresh_cache(tmp_path / "cache", model_cache)
    items = _items(tmp_path, posters_dir).assign(image_path=None)
    df = encode_item_content(
        items, TextEncoder(cache), ImageEncoder(cache), images_dir=tmp_path / "posters"
    )
    assert df["has_image"].tolist() == [True, True, False, False, False]


def test_cli_encode_bad_images_dir(strata_home: Path, tmp_path: Path) -> None:
    env = {**os.environ, "STRATA_HOME": str(strata_home)}
    args = ["features", "encode", "--dataset", "movielens-100k", "--images", str(tmp_path / "no")]
    proc = subprocess.run(
        [sys.executable, "-m", "strata.cli", *args], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "images folder does not exist" in lines[0]
