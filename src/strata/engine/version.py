"""One model version of the registry, and every artifact in it, behind one object.

`ModelVersion.open(settings, dataset, version)` is the only reader of a version's files: serving,
`strata recommend`, evaluation, fine-tuning and index tuning all get the feature space, the
users' snapshot, the seen history, the item embeddings, the torch modules and the ANN index from
here, each read once on first use. The file names themselves live in `strata.artifacts`.
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from strata.artifacts import ITEM_EMBEDDINGS_FILE, ITEM_IDS_FILE, SEEN_FILE, USER_FEATURES_FILE
from strata.engine.stages import ExactIndex, PairSetFilter, Retriever
from strata.errors import DataError, NotFoundError

if TYPE_CHECKING:
    from strata.config import Settings
    from strata.models.dcn import DCNRanker
    from strata.models.space import FeatureSpace
    from strata.models.two_tower import TwoTower

log = logging.getLogger(__name__)


class UserSnapshot:
    """The version's user feature rows as of its training cut (offline store), in the online
    store's encoding: the fallback for users the online store does not hold or cannot serve,
    and the users' state everywhere offline (evaluation, `strata recommend` without a store)."""

    def __init__(self, user_ids: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        order = np.argsort(user_ids, kind="stable")
        self.ids = np.asarray(user_ids, np.int64)[order]
        self.columns = {n: np.asarray(c)[order] for n, c in columns.items()}

    @classmethod
    def load(cls, path: Path) -> UserSnapshot:
        """Read the user snapshot of a registry version (empty when the file is absent)."""
        from strata.features.schema import USER_KEY
        from strata.models.space import USER_INPUT_FEATURES, frame_rows

        f = path / USER_FEATURES_FILE
        if not f.exists():
            log.warning("%s: no %s; users without online features start cold", path, f.name)
            return cls(np.zeros(0, np.int64), {})
        import pandas as pd

        df = pd.read_parquet(f)
        return cls(df[USER_KEY].to_numpy(np.int64), frame_rows(df, USER_INPUT_FEATURES))

    def rows(self, user_ids: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Columns for `user_ids` (U,) (rows of users not held are arbitrary) and (U,) found."""
        ids = np.asarray(user_ids, np.int64).reshape(-1)
        if not len(self.ids):
            return {}, np.zeros(len(ids), bool)
        pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return {n: c[pos] for n, c in self.columns.items()}, self.ids[pos] == ids

    def row(self, user_id: int) -> dict[str, np.ndarray] | None:
        """One user's columns as 1-row arrays (views), or None when the snapshot lacks them."""
        if not len(self.ids):
            return None
        pos = int(np.searchsorted(self.ids, user_id))
        if pos >= len(self.ids) or self.ids[pos] != user_id:
            return None
        return {n: c[pos : pos + 1] for n, c in self.columns.items()}


class ModelVersion:
    """A registry version's directory, manifest and artifacts (read lazily, once)."""

    def __init__(self, settings: Settings, dataset: str, path: Path, manifest: dict[str, Any]):
        self.settings = settings
        self.dataset = dataset
        self.path = path
        self.manifest = manifest
        self.version: str = manifest["version"]
        self.as_of = int(manifest["data_range"]["until"])

    @classmethod
    def open(
        cls, settings: Settings, dataset: str, version: str | None = None, verify: bool = False
    ) -> ModelVersion:
        """`version` (default: the registry's serving one) of `dataset`; NotFoundError if none.
        `verify` re-hashes its files against the manifest first (DataError naming the file):
        what serving does, so a version damaged after its commit is never loaded."""
        from strata.registry import Registry

        reg = Registry(settings.registry_dir, dataset)
        path = reg.path(version)
        if verify:
            reg.verify(path.name)
        return cls(settings, dataset, path, reg.manifest(path.name))

    @property
    def score_weight(self) -> float:
        """The ranker's fused retrieval weight (its logit includes weight x retrieval score)."""
        return float(self.manifest.get("models", {}).get("ranker", {}).get("score_weight", 0.0))

    @cached_property
    def space(self) -> FeatureSpace:
        """Vocabularies and item tables the models were trained with."""
        from strata.models.space import FeatureSpace

        return FeatureSpace.load(self.path)

    @cached_property
    def snapshot(self) -> UserSnapshot:
        """The users' feature rows as of the version's cut-off."""
        return UserSnapshot.load(self.path)

    @cached_property
    def history(self) -> PairSetFilter:
        """The (user, item) pairs before the cut-off: the exact seen filter."""
        from safetensors.numpy import load_file

        f = self.path / SEEN_FILE
        if not f.exists():
            log.warning("%s: no %s; only the Bloom filter removes seen items", self.path, f.name)
            return PairSetFilter(np.zeros(0, np.int64), np.zeros(0, np.int64))
        st = load_file(str(f))
        if "user" not in st or "item" not in st:
            raise DataError(f, f"expected user/item arrays, got {sorted(st)}")
        return PairSetFilter(st["user"], st["item"])

    @cached_property
    def item_embeddings(self) -> np.ndarray:
        """(I, D) float32 item-tower vectors in catalogue (`space.item_ids`) order."""
        emb = np.load(self.path / ITEM_EMBEDDINGS_FILE, allow_pickle=False)
        return np.ascontiguousarray(emb, dtype=np.float32)

    @property
    def item_ids(self) -> np.ndarray:
        """(I,) ids of the embedding rows."""
        f = self.path / ITEM_IDS_FILE
        return np.load(f, allow_pickle=False) if f.exists() else self.space.item_ids

    def torch_models(self) -> tuple[TwoTower, DCNRanker]:
        """The two-tower model and the DCN-v2 ranker with this version's weights (eval mode)."""
        from strata.models.dcn import DCNConfig, DCNRanker
        from strata.models.two_tower import TwoTower, TwoTowerConfig
        from strata.models.weights import load_state

        dims = self.space.dims()
        tt = TwoTower(dims, TwoTowerConfig(**self.manifest["models"]["two_tower"]))
        load_state(tt, self.path / "two_tower.safetensors")
        rk = DCNRanker(dims, DCNConfig(**self.manifest["models"]["ranker"]))
        load_state(rk, self.path / "ranker.safetensors")
        return tt.eval(), rk.eval()

    def exact_index(self) -> ExactIndex:
        """Brute-force search over the version's item embeddings."""
        return ExactIndex(self.item_ids, self.item_embeddings)

    def index(self, strict: bool = False) -> tuple[Retriever, dict[str, Any]]:
        """The version's saved ANN index and its parameters, else exact search (`kind` exact).
        A corrupt index (DataError) falls back to exact search too, unless `strict` (serving:
        a damaged version is refused rather than served with another retriever)."""
        from strata.engine.index import load_version_index

        where = f"{self.dataset}/{self.version}"
        try:
            ann = load_version_index(self.settings, self.dataset, self.version)
            return ann, {"kind": ann.kind, **ann.params}
        except NotFoundError as exc:
            log.info("%s: no ANN index (%s); using exact search", where, exc)
        except DataError as exc:
            if strict:
                raise DataError(exc.path, f"{where}: unusable ANN index: {exc.problem}") from None
            log.warning("%s: unusable ANN index (%s); using exact search", where, exc)
        return self.exact_index(), {"kind": "exact"}
