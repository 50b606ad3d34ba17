"""From tables to typed batches: point-in-time user state, vocabularies, item table, encoders.

Column names follow `strata.features.schema` (user_recent_items, user_top_genre, ...) so the same
encoder reads the offline store's frames and the in-memory fallback computed here from raw events.
A `FeatureSpace` is fitted on the training window only: users/items without training interactions
get the unknown id (0) so serving treats them exactly as training-time masking taught the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from strata.datasets.base import DEVICES
from strata.errors import DataError
from strata.features.schema import RECENT_ITEMS_N
from strata.models.inputs import FeatureDims
from strata.training.batch import ItemFeatures, QueryFeatures

if TYPE_CHECKING:
    import pandas as pd

AGE_BINS = np.array([1, 18, 25, 35, 45, 50, 56])  # MovieLens age groups; 0 = unknown
FEATURE_SPACE_FILE = "feature_space.json"
TABLES_FILE = "feature_tables.safetensors"


# --- point-in-time user state ---------------------------------------------------------------


@dataclass(frozen=True)
class UserState:
    """Behavioural user features per row: recent item ids (-1 pad, oldest first), counts, genre."""

    hist: np.ndarray  # (N, L) int64 item ids, -1 = padding
    n_events: np.ndarray  # (N,) float32
    mean_value: np.ndarray  # (N,) float32
    top_genre: np.ndarray  # (N,) int64 index into the genre vocabulary + 1, 0 = none


def _state(
    item: np.ndarray,
    value: np.ndarray,
    genre_mh: np.ndarray,
    gstart: np.ndarray,
    cut: np.ndarray,
    hist_len: int,
) -> UserState:
    """State from the sorted events in [gstart, cut) per row (vectorised; no per-user loop)."""
    n = len(item)
    offs = np.arange(hist_len, 0, -1)  # oldest first
    idx = cut[:, None] - offs[None, :]  # (R, L)
    valid = idx >= gstart[:, None]
    hist = np.where(valid, item[np.clip(idx, 0, max(n - 1, 0))] if n else -1, -1).astype(np.int64)
    cs_v = np.concatenate([[0.0], np.cumsum(value, dtype=np.float64)])
    k = (cut - gstart).astype(np.float64)
    mean = np.where(k > 0, (cs_v[cut] - cs_v[gstart]) / np.maximum(k, 1), 0.0)
    cs_g = np.concatenate(
        [
            np.zeros((1, genre_mh.shape[1]), np.float32),
            np.cumsum(genre_mh, axis=0, dtype=np.float32),
        ]
    )
    counts = cs_g[cut] - cs_g[gstart]  # (R, G)
    top = np.where(counts.sum(1) > 0, counts.argmax(1) + 1, 0)
    return UserState(hist, k.astype(np.float32), mean.astype(np.float32), top.astype(np.int64))


def _sorted_events(events: pd.DataFrame, genre_of: dict[int, np.ndarray], n_genres: int) -> Any:
    order = np.lexsort((events["ts"].to_numpy(), events["user_id"].to_numpy()))
    u = events["user_id"].to_numpy(np.int64)[order]
    t = events["ts"].to_numpy(np.int64)[order]
    it = events["item_id"].to_numpy(np.int64)[order]
    v = events["value"].to_numpy(np.float64)[order]
    mh = np.zeros((len(it), n_genres), np.float32)
    if len(it):
        ids, inv = np.unique(it, return_inverse=True)
        table = np.stack([genre_of.get(int(i), np.zeros(n_genres, np.float32)) for i in ids])
        mh = table[inv]
    return order, u, t, it, v, mh


def point_in_time_state(
    events: pd.DataFrame, space: FeatureSpace, hist_len: int = RECENT_ITEMS_N
) -> UserState:
    """User state strictly before each event's ts (events at the same second are not visible),
    aligned with the rows of `events`."""
    order, u, t, it, v, mh = _sorted_events(events, space.genre_of(), space.n_genres)
    n = len(u)
    pos = np.arange(n)
    new_user = np.r_[True, u[1:] != u[:-1]] if n else np.zeros(0, bool)
    new_run = new_user | (np.r_[True, t[1:] != t[:-1]] if n else np.zeros(0, bool))
    gstart = np.maximum.accumulate(np.where(new_user, pos, 0)) if n else pos
    rstart = np.maximum.accumulate(np.where(new_run, pos, 0)) if n else pos
    st = _state(it, v, mh, gstart, rstart, hist_len)
    inv = np.empty(n, np.int64)
    inv[order] = pos
    return UserState(st.hist[inv], st.n_events[inv], st.mean_value[inv], st.top_genre[inv])


def latest_state(
    events: pd.DataFrame, user_ids: np.ndarray, space: FeatureSpace, hist_len: int = RECENT_ITEMS_N
) -> UserState:
    """State after all of `events` for each of `user_ids` (no events -> empty state)."""
    _, u, _, it, v, mh = _sorted_events(events, space.genre_of(), space.n_genres)
    uniq, first, counts = np.unique(u, return_index=True, return_counts=True)
    where = np.searchsorted(uniq, user_ids)
    where_c = np.clip(where, 0, max(len(uniq) - 1, 0))
    found = (
        (where < len(uniq)) & (uniq[where_c] == user_ids)
        if len(uniq)
        else np.zeros(len(user_ids), bool)
    )
    gstart = np.where(found, first[where_c] if len(uniq) else 0, 0).astype(np.int64)
    cut = np.where(found, gstart + (counts[where_c] if len(uniq) else 0), 0).astype(np.int64)
    return _state(it, v, mh, gstart, cut, hist_len)


# --- context ---------------------------------------------------------------------------------


def context_features(ts: np.ndarray) -> np.ndarray:
    """Hour-of-day and day-of-week as sin/cos (UTC, Monday = 0), like `ctx_*` in the schema."""
    ts = np.asarray(ts, dtype=np.int64)
    sec = (ts % 86400) / 86400.0
    dow = ((ts // 86400) + 3) % 7 / 7.0  # 1970-01-01 was a Thursday
    two_pi = 2 * np.pi
    return np.stack(
        [np.sin(two_pi * sec), np.cos(two_pi * sec), np.sin(two_pi * dow), np.cos(two_pi * dow)],
        axis=1,
    ).astype(np.float32)


# --- feature space ---------------------------------------------------------------------------


def _lookup(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of `ids` in `sorted_ids` and whether each was found."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(sorted_ids) == 0:
        return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
    pos = np.searchsorted(sorted_ids, ids)
    pos_c = np.clip(pos, 0, len(sorted_ids) - 1)
    return pos_c, sorted_ids[pos_c] == ids


def _vocab_index(vocab: list[str], values: np.ndarray) -> np.ndarray:
    """1-based index of each value in `vocab`, 0 when absent."""
    m = {v: i + 1 for i, v in enumerate(vocab)}
    return np.array([m.get(str(v), 0) for v in values], dtype=np.int64)


class FeatureSpace:
    """Vocabularies and per-entity arrays that turn ids + state into `QueryFeatures`/`ItemFeatures`.

    Row 0 of every table is the unknown entity. `user_idx`/`item_idx` give the id-embedding index
    (0 for entities without training interactions); demographics and content are looked up by the
    entity's row, so cold entities still get them.
    """

    def __init__(self, meta: dict[str, Any], tables: dict[str, np.ndarray]) -> None:
        self.meta = meta
        self.t = tables

    # construction ---------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        users: pd.DataFrame,
        items: pd.DataFrame,
        train_events: pd.DataFrame,
        content: pd.DataFrame | None = None,
        hist_len: int = RECENT_ITEMS_N,
    ) -> FeatureSpace:
        """Fit vocabularies on the catalog and mark ids seen in `train_events` as known."""
        users = users.sort_values("user_id").reset_index(drop=True)
        items = items.sort_values("item_id").reset_index(drop=True)
        user_ids = users["user_id"].to_numpy(np.int64)
        item_ids = items["item_id"].to_numpy(np.int64)
        nu, ni = len(user_ids), len(item_ids)
        genres = sorted({g for gs in items["genres"] for g in (list(gs) if gs is not None else [])})
        genders = sorted(users["gender"].astype(str).unique().tolist())
        occupations = sorted(users["occupation"].astype(str).unique().tolist())
        devices = list(DEVICES)
        age = users["age"].fillna(0).to_numpy(np.float64)
        age_b = np.where(age > 0, np.digitize(age, AGE_BINS), 0)
        u_known = np.isin(user_ids, train_events["user_id"].to_numpy(np.int64))
        i_known = np.isin(item_ids, train_events["item_id"].to_numpy(np.int64))
        # Id-embedding index: 1..n for entities seen in training, 0 (unknown) otherwise.
        u_idx = np.zeros(nu + 1, np.int64)
        u_idx[1:][u_known] = np.arange(1, u_known.sum() + 1)
        i_idx = np.zeros(ni + 1, np.int64)
        i_idx[1:][i_known] = np.arange(1, i_known.sum() + 1)
        values = train_events["value"].to_numpy(np.float64)
        value_scale = float(np.abs(values).max()) if len(values) else 1.0

        # Item metadata: multi-hot genres, standardised year + missing flag, log price if present.
        gmap = {g: i for i, g in enumerate(genres)}
        mh = np.zeros((ni + 1, max(len(genres), 1)), np.float32)
        for r, gs in enumerate(items["genres"]):
            for g in list(gs) if gs is not None else []:
                mh[r + 1, gmap[g]] = 1.0
        year = items["year"].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
        has_year = ~np.isnan(year)
        y_mean = float(np.nanmean(year)) if has_year.any() else 0.0
        y_std = float(np.nanstd(year)) if has_year.sum() > 1 else 1.0
        num_cols = [np.where(has_year, (year - y_mean) / max(y_std, 1e-6), 0.0), has_year * 1.0]
        # Log popularity in the training window lets the models weigh taste against what is popular
        # now (a static value as of the cut-off, so serving sees exactly what training saw).
        counts = np.bincount(
            np.searchsorted(item_ids, train_events["item_id"].to_numpy(np.int64)), minlength=ni
        )[:ni]
        num_cols.append(np.log1p(counts) / max(np.log1p(counts.max()), 1.0))
        if "price" in items.columns:
            num_cols.append(np.log1p(items["price"].fillna(0).to_numpy(np.float64).clip(min=0)))
        item_num = np.zeros((ni + 1, len(num_cols)), np.float32)
        item_num[1:] = np.stack(num_cols, axis=1)

        text, image, flags = cls._content_arrays(item_ids, content)
        meta = {
            "user_ids": user_ids.tolist(),
            "item_ids": item_ids.tolist(),
            "genres": genres,
            "genders": genders,
            "occupations": occupations,
            "devices": devices,
            "value_scale": value_scale,
            "hist_len": hist_len,
            "has_content": content is not None,
        }
        tables = {
            "user_idx": u_idx,
            "item_idx": i_idx,
            "age": np.r_[0, age_b].astype(np.int64),
            "gender": np.r_[0, _vocab_index(genders, users["gender"].astype(str).to_numpy())],
            "occupation": np.r_[
                0, _vocab_index(occupations, users["occupation"].astype(str).to_numpy())
            ],
            "genres": mh,
            "item_num": item_num,
            "text": text,
            "image": image,
            "flags": flags,
        }
        return cls(meta, tables)

    @staticmethod
    def _content_arrays(
        item_ids: np.ndarray, content: pd.DataFrame | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ni = len(item_ids)
        if content is None or len(content) == 0:
            # No content table: 1-wide zero vectors with has_* = 0 keep the model shape valid.
            z = np.zeros((ni + 1, 1), np.float32)
            return z, z.copy(), np.zeros((ni + 1, 2), np.float32)
        pos, found = _lookup(item_ids, content["item_id"].to_numpy(np.int64))
        tdim = len(content["text_emb"].iloc[0])
        idim = len(content["image_emb"].iloc[0])
        text = np.zeros((ni + 1, tdim), np.float32)
        image = np.zeros((ni + 1, idim), np.float32)
        flags = np.zeros((ni + 1, 2), np.float32)
        rows = pos[found] + 1
        text[rows] = np.stack(content["text_emb"].to_numpy()[found]).astype(np.float32)
        image[rows] = np.stack(content["image_emb"].to_numpy()[found]).astype(np.float32)
        flags[rows, 0] = content["has_text"].to_numpy(bool)[found]
        flags[rows, 1] = content["has_image"].to_numpy(bool)[found]
        # A missing modality is a zero vector whatever the table holds.
        text[flags[:, 0] == 0] = 0.0
        image[flags[:, 1] == 0] = 0.0
        return text, image, flags

    # persistence ---------------------------------------------------------------------------

    def save(self, folder: Path) -> list[Path]:
        """Write the JSON vocabularies and safetensors arrays into `folder`; return the paths."""
        from safetensors.numpy import save_file

        meta_path, tab_path = folder / FEATURE_SPACE_FILE, folder / TABLES_FILE
        meta_path.write_text(json.dumps(self.meta))
        save_file({k: np.ascontiguousarray(v) for k, v in self.t.items()}, str(tab_path))
        return [meta_path, tab_path]

    @classmethod
    def load(cls, folder: Path) -> FeatureSpace:
        """Read a feature space written by `save`."""
        from safetensors.numpy import load_file

        meta_path, tab_path = folder / FEATURE_SPACE_FILE, folder / TABLES_FILE
        if not meta_path.exists() or not tab_path.exists():
            raise DataError(folder, f"missing {FEATURE_SPACE_FILE} or {TABLES_FILE}")
        return cls(json.loads(meta_path.read_text()), load_file(str(tab_path)))

    # properties ----------------------------------------------------------------------------

    @property
    def user_ids(self) -> np.ndarray:
        """All user ids of the catalog, sorted."""
        return np.asarray(self.meta["user_ids"], dtype=np.int64)

    @property
    def item_ids(self) -> np.ndarray:
        """All item ids of the catalog, sorted (row r + 1 of the item table)."""
        return np.asarray(self.meta["item_ids"], dtype=np.int64)

    @property
    def n_genres(self) -> int:
        """Width of the genre multi-hot."""
        return int(self.t["genres"].shape[1])

    def dims(self) -> FeatureDims:
        """The `FeatureDims` models are built with."""
        return FeatureDims(
            n_users=int(self.t["user_idx"].max()) + 1,
            n_items=int(self.t["item_idx"].max()) + 1,
            n_ages=len(AGE_BINS) + 1,
            n_genders=len(self.meta["genders"]) + 1,
            n_occupations=len(self.meta["occupations"]) + 1,
            n_genres=self.n_genres,
            n_devices=len(self.meta["devices"]) + 1,
            hist_len=int(self.meta["hist_len"]),
            user_num_dim=2,
            item_num_dim=int(self.t["item_num"].shape[1]),
            text_dim=int(self.t["text"].shape[1]),
            image_dim=int(self.t["image"].shape[1]),
        )

    def genre_of(self) -> dict[int, np.ndarray]:
        """Item id -> genre multi-hot (for the behavioural top-genre feature)."""
        return dict(zip(self.meta["item_ids"], self.t["genres"][1:], strict=True))

    # encoding ------------------------------------------------------------------------------

    def user_rows(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row (1-based, 0 = not in the catalog) of each user id and whether it was found."""
        pos, found = _lookup(self.user_ids, user_ids)
        return np.where(found, pos + 1, 0), found

    def item_rows(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row (1-based, 0 = not in the catalog) of each item id and whether it was found."""
        pos, found = _lookup(self.item_ids, item_ids)
        return np.where(found, pos + 1, 0), found

    def items(self, rows: np.ndarray) -> ItemFeatures:
        """Item features for item-table rows (0 = unknown item)."""
        t = self.t
        return ItemFeatures(
            item=t["item_idx"][rows],
            genres=t["genres"][rows],
            item_num=t["item_num"][rows],
            text=t["text"][rows],
            image=t["image"][rows],
            flags=t["flags"][rows],
        )

    def all_items(self) -> ItemFeatures:
        """Item features of every catalog item, in `item_ids` order."""
        return self.items(np.arange(1, len(self.meta["item_ids"]) + 1))

    def queries(
        self, user_ids: np.ndarray, ts: np.ndarray, device: np.ndarray, state: UserState
    ) -> QueryFeatures:
        """Query features for users at times `ts` on `device`, with behavioural `state`."""
        rows, _ = self.user_rows(user_ids)
        hist_rows, _ = self.item_rows(np.where(state.hist >= 0, state.hist, -(2**62)))
        hist = self.t["item_idx"][hist_rows]  # unknown/padded items -> 0 (ignored by pooling)
        user_num = np.stack(
            [np.log1p(state.n_events) / 5.0, state.mean_value / self.meta["value_scale"]], axis=1
        ).astype(np.float32)
        return QueryFeatures(
            user=self.t["user_idx"][rows],
            age=self.t["age"][rows],
            gender=self.t["gender"][rows],
            occupation=self.t["occupation"][rows],
            hist=hist.astype(np.int64),
            top_genre=state.top_genre.astype(np.int64),
            user_num=user_num,
            ctx=context_features(ts),
            device=_vocab_index(self.meta["devices"], np.asarray(device)),
        )
