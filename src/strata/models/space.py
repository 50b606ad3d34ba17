"""From offline-store feature rows to typed model inputs: vocabularies, item table, encoders.

The offline store is the single source of point-in-time features: training reads
`OfflineStore.training_set` (one row per event, features strictly before its ts), a version's user
snapshot is `OfflineStore.latest_user_features(as_of=cut)`, and serving reads the same columns from
the online store. All three arrive here as the columns `materialize.online_columns` produces
(strings as str, recent items as int64 padded with -1), and `query_features_from_rows` is the one
function that turns them plus request context (`definitions.context_features_np`) into
`QueryFeatures`, so training and serving cannot drift apart.

A `FeatureSpace` is fitted on the training window only: users/items without training interactions
get the unknown id (0) so serving treats them exactly as training-time masking taught the model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from strata.datasets.base import DEVICES
from strata.errors import DataError, ValidationError
from strata.features.schema import RECENT_ITEMS_N, USER_FEATURES, USER_KEY, defaults
from strata.models.batch import ItemFeatures, QueryFeatures
from strata.models.inputs import FeatureDims

if TYPE_CHECKING:
    import pandas as pd

AGE_BINS = np.array([1, 18, 25, 35, 45, 50, 56])  # MovieLens age groups; 0 = unknown
FEATURE_SPACE_FILE = "feature_space.json"
TABLES_FILE = "feature_tables.safetensors"
#: Offline-store user feature columns the query tower reads (a subset of the schema's).
USER_INPUT_FEATURES: tuple[str, ...] = (
    "user_age",
    "user_gender",
    "user_occupation",
    "user_n_events",
    "user_mean_value",
    "user_top_genre",
    "user_recent_items",
)
#: Column of `item_num` holding log item popularity (trailing window, as of the event/cut).
POP_COL = 2
#: Column of `item_num` holding the item's age (years since release, log-scaled) at the event/cut:
#: a new item's freshness is known at serving time even though its popularity is not.
AGE_COL = 3
_YEAR_S = 365.2425 * 86400.0
#: log1p(count) is divided by this so the feature stays near [0, 1] on typical catalogs.
LOG_COUNT_SCALE = 5.0

assert set(USER_INPUT_FEATURES) <= {f.name for f in USER_FEATURES}


# --- feature rows --------------------------------------------------------------------------------


def frame_rows(df: pd.DataFrame, names: tuple[str, ...] = USER_INPUT_FEATURES) -> dict[str, Any]:
    """Columns `names` of an offline-store frame, encoded exactly as the online store holds them."""
    from strata.features.materialize import online_columns

    missing = [n for n in names if n not in df.columns]
    if missing:
        raise DataError("feature rows", f"missing feature columns {missing}")
    part = df.loc[:, list(names)].reset_index(drop=True)
    part.insert(0, "_row", np.arange(len(part), dtype=np.int64))
    _, cols = online_columns(part, "_row")
    return cols


def log_count(n: np.ndarray) -> np.ndarray:
    """log1p of an event count, scaled (the numeric form of every count feature)."""
    return (np.log1p(np.maximum(np.asarray(n, np.float64), 0.0)) / LOG_COUNT_SCALE).astype(
        np.float32
    )


def _lookup(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of `ids` in `sorted_ids` and whether each was found."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(sorted_ids) == 0:
        return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
    pos = np.searchsorted(sorted_ids, ids)
    pos_c = np.minimum(pos, len(sorted_ids) - 1)
    return pos_c, sorted_ids[pos_c] == ids


def _vocab_index(vocab: list[str], values: np.ndarray) -> np.ndarray:
    """1-based index of each value in `vocab`, 0 when absent."""
    m = {v: i + 1 for i, v in enumerate(vocab)}
    return np.array([m.get(str(v), 0) for v in np.asarray(values).tolist()], dtype=np.int64)


def _recent_matrix(recent: np.ndarray, n: int, width: int) -> np.ndarray:
    """(N, width) int64 item ids, the newest `width` valid ids right-aligned, -1 elsewhere.

    Accepts the online encoding ((N, W) int64 padded with -1, any W) or an object column of lists.
    """
    if recent.dtype == object:
        lists = [np.asarray(v if v is not None else [], np.int64).ravel() for v in recent]
        padded = np.full((n, max([len(v) for v in lists] + [1])), -1, np.int64)
        for r, v in enumerate(lists):
            padded[r, : len(v)] = v
        recent = padded
    rec = np.asarray(recent, dtype=np.int64).reshape(n, -1)
    valid = rec >= 0
    cnt = valid.sum(1)  # valid ids form a prefix (oldest first), padding follows
    # Slot j of the output holds source position cnt - width + j (negative -> padding).
    src = cnt[:, None] - width + np.arange(width)[None, :]
    ok = (src >= 0) & (src < rec.shape[1])
    out = np.take_along_axis(rec, np.clip(src, 0, max(rec.shape[1] - 1, 0)), axis=1)
    return np.where(ok, out, -1)


def query_features_from_rows(
    space: FeatureSpace,
    rows: Mapping[str, np.ndarray],
    found: np.ndarray,
    ts: np.ndarray,
    device: np.ndarray,
    user_ids: np.ndarray | None = None,
) -> QueryFeatures:
    """Query-tower inputs from user feature rows (online-store encoding) plus request context.

    `rows` holds the schema's user feature columns as `materialize.online_columns` writes them
    (`user_recent_items` int64 padded with -1, strings as str); `found` (N,) marks users that
    have a row: the others get the masked cold-start defaults (unknown id, no demographics, no
    behaviour), exactly what training-time masking shows the model. `user_ids` selects the id
    embedding (default: `rows["user_id"]`); ids unseen in training map to the unknown id.
    """
    found = np.asarray(found, dtype=bool).reshape(-1)
    n = len(found)
    if user_ids is None:
        if USER_KEY not in rows:
            raise ValidationError("user_ids", "pass the user ids (e.g. FeatureRows.ids)")
        user_ids = rows[USER_KEY]
    user_ids = np.asarray(user_ids, dtype=np.int64).reshape(-1)
    ts = np.broadcast_to(np.asarray(ts, dtype=np.int64), (n,))
    device = np.broadcast_to(np.asarray(device, dtype=object), (n,))
    if len(user_ids) != n:
        raise ValidationError("user_ids", f"expected {n} ids, got {len(user_ids)}")
    dflt = defaults("user")

    def col(name: str) -> np.ndarray:
        if name in rows:
            return np.asarray(rows[name])
        if found.any():
            raise ValidationError("rows", f"missing user feature {name!r}")
        if isinstance(dflt[name], list):  # no recent items: one padding column
            return np.full((n, 1), -1, np.int64)
        return np.full(n, dflt[name], dtype=object)

    from strata.features.definitions import context_features_np

    ctx_d = context_features_np(ts, device, space.meta.get("timezone", "UTC"))
    ctx = np.stack(
        [
            np.asarray(ctx_d[c])
            for c in ("ctx_hour_sin", "ctx_hour_cos", "ctx_dow_sin", "ctx_dow_cos")
        ],
        axis=1,
    ).astype(np.float32)
    dev = _vocab_index(space.meta["devices"], np.asarray(ctx_d["ctx_device"], dtype=object))

    pos, known = _lookup(space.user_ids, user_ids)
    uidx = np.where(found & known, space.t["user_idx"][np.where(known, pos + 1, 0)], 0)
    age = col("user_age").astype(np.float64)
    age_b = np.where(found & (age > 0), np.digitize(age, AGE_BINS), 0).astype(np.int64)
    gender = np.where(found, _vocab_index(space.meta["genders"], col("user_gender")), 0)
    occ = np.where(found, _vocab_index(space.meta["occupations"], col("user_occupation")), 0)
    top = np.where(found, _vocab_index(space.meta["genres"], col("user_top_genre")), 0)
    hist_ids = _recent_matrix(col("user_recent_items"), n, int(space.meta["hist_len"]))
    hist_ids = np.where(found[:, None], hist_ids, -1)
    hist_rows, hist_ok = space.item_rows(hist_ids.ravel())
    # Padding and items unknown to this version map to 0, which pooling ignores.
    hist = np.where(hist_ok, space.t["item_idx"][hist_rows], 0).reshape(hist_ids.shape)
    n_ev = np.where(found, col("user_n_events").astype(np.float64), 0.0)
    mean_v = np.where(found, col("user_mean_value").astype(np.float64), 0.0)
    user_num = np.stack(
        [log_count(n_ev), (mean_v / float(space.meta["value_scale"])).astype(np.float32)], axis=1
    ).astype(np.float32)
    static = space.t.get("user_num")
    if static is not None and static.shape[1]:
        # declared numeric user attributes (static, by the user's catalog row; 0 when unknown)
        user_num = np.concatenate([user_num, static[np.where(known, pos + 1, 0)]], axis=1)
    return QueryFeatures(
        user=uidx.astype(np.int64),
        age=age_b,
        gender=gender.astype(np.int64),
        occupation=occ.astype(np.int64),
        hist=hist.astype(np.int64),
        top_genre=top.astype(np.int64),
        user_num=user_num,
        ctx=ctx,
        device=dev.astype(np.int64),
    )


def query_features_from_frame(
    space: FeatureSpace, df: pd.DataFrame, ts: np.ndarray | None = None, device: Any = None
) -> QueryFeatures:
    """Query features of every row of an offline-store frame (training set or user snapshot).

    `ts`/`device` default to the frame's own `ts`/`device` columns (a training set's events).
    """
    t = df["ts"].to_numpy(np.int64) if ts is None else ts
    d = df["device"].astype(str).to_numpy(dtype=object) if device is None else device
    return query_features_from_rows(
        space,
        frame_rows(df),
        np.ones(len(df), bool),
        t,
        d,
        user_ids=df[USER_KEY].to_numpy(np.int64),
    )


# --- feature space -------------------------------------------------------------------------------


def declared_numerics(df: pd.DataFrame) -> list[np.ndarray]:
    """The `num_<name>` columns of a declared dataset (`datasets.spec_load`), normalised: log1p
    when no value is negative (prices, counts), then standardised; a missing value is the mean
    (0), and a column with any missing value adds a 0/1 missing flag."""
    out = []
    for col in sorted(c for c in df.columns if str(c).startswith("num_")):
        x = pd_float(df[col])
        ok = ~np.isnan(x)
        if ok.any() and (x[ok] >= 0).all():
            x = np.log1p(x)
        mean = float(x[ok].mean()) if ok.any() else 0.0
        std = float(x[ok].std()) if ok.sum() > 1 else 1.0
        out.append(np.where(ok, (x - mean) / max(std, 1e-6), 0.0))
        if not ok.all():
            out.append((~ok).astype(np.float64))
    return out


def pd_float(col: pd.Series) -> np.ndarray:
    """A pandas column as float64 with NaN for missing (nullable dtypes included)."""
    return col.astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)


class FeatureSpace:
    """Vocabularies and per-item arrays that turn feature rows into `QueryFeatures`/`ItemFeatures`.

    Row 0 of every item table is the unknown item. `user_idx`/`item_idx` give the id-embedding
    index (0 for entities without training interactions); item metadata and content are looked up
    by the item's row, so cold items still get them.
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
        train_events: pd.DataFrame | Mapping[str, pd.Series],
        content: pd.DataFrame | None = None,
        hist_len: int = RECENT_ITEMS_N,
    ) -> FeatureSpace:
        """Fit vocabularies on the catalog and mark ids seen in `train_events` (its columns
        user_id, item_id and value, whose largest magnitude scales values) as known.

        The popularity column of `item_num` starts at zero; `set_item_popularity` fills it from
        the offline store's item features as of the version's cut-off.
        """
        users = users.sort_values("user_id").reset_index(drop=True)
        items = items.sort_values("item_id").reset_index(drop=True)
        user_ids = users["user_id"].to_numpy(np.int64)
        item_ids = items["item_id"].to_numpy(np.int64)
        nu, ni = len(user_ids), len(item_ids)
        genres = sorted({g for gs in items["genres"] for g in (list(gs) if gs is not None else [])})
        genders = sorted(users["gender"].astype(str).unique().tolist())
        occupations = sorted(users["occupation"].astype(str).unique().tolist())
        u_known = np.isin(user_ids, train_events["user_id"].to_numpy(np.int64))
        i_known = np.isin(item_ids, train_events["item_id"].to_numpy(np.int64))
        # Id-embedding index: 1..n for entities seen in training, 0 (unknown) otherwise.
        u_idx = np.zeros(nu + 1, np.int64)
        u_idx[1:][u_known] = np.arange(1, u_known.sum() + 1)
        i_idx = np.zeros(ni + 1, np.int64)
        i_idx[1:][i_known] = np.arange(1, i_known.sum() + 1)
        values = train_events["value"].to_numpy(np.float64)
        value_scale = float(np.abs(values).max()) if len(values) else 1.0

        # Item metadata: multi-hot genres, standardised year + missing flag, log popularity
        # (POP_COL, point in time), age (AGE_COL, point in time), log price if present.
        gmap = {g: i for i, g in enumerate(genres)}
        mh = np.zeros((ni + 1, max(len(genres), 1)), np.float32)
        for r, gs in enumerate(items["genres"]):
            for g in list(gs) if gs is not None else []:
                mh[r + 1, gmap[g]] = 1.0
        year = items["year"].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
        has_year = ~np.isnan(year)
        y_mean = float(np.nanmean(year)) if has_year.any() else 0.0
        y_std = float(np.nanstd(year)) if has_year.sum() > 1 else 1.0
        num_cols = [
            np.where(has_year, (year - y_mean) / max(y_std, 1e-6), 0.0),
            has_year * 1.0,
            np.zeros(ni),
            np.zeros(ni),
        ]
        if "price" in items.columns:
            num_cols.append(np.log1p(items["price"].fillna(0).to_numpy(np.float64).clip(min=0)))
        num_cols += declared_numerics(items)
        item_num = np.zeros((ni + 1, len(num_cols)), np.float32)
        item_num[1:] = np.stack(num_cols, axis=1)
        user_num = np.zeros((nu + 1, 0), np.float32)
        if declared := declared_numerics(users):
            user_num = np.zeros((nu + 1, len(declared)), np.float32)
            user_num[1:] = np.stack(declared, axis=1)

        text, image, flags = cls._content_arrays(item_ids, content)
        meta = {
            "user_ids": user_ids.tolist(),
            "item_ids": item_ids.tolist(),
            "genres": genres,
            "genders": genders,
            "occupations": occupations,
            "devices": list(DEVICES),
            "value_scale": value_scale,
            "hist_len": hist_len,
            "has_content": content is not None,
            "age_col": AGE_COL,
        }
        # A declared dataset's own ids, aligned with user_ids / item_ids (`engine.ids.IdMap`).
        for key, df in (("user_external", users), ("item_external", items)):
            if "external_id" in df.columns:
                meta[key] = df["external_id"].astype(str).tolist()
        tables: dict[str, np.ndarray] = {
            "user_idx": u_idx,
            "item_idx": i_idx,
            "genres": mh,
            "item_num": item_num,
            "year": np.r_[np.nan, year].astype(np.float32),
            "text": text,
            "image": image,
            "flags": flags,
            "user_num": user_num,
        }
        return cls(meta, tables)

    def set_item_popularity(self, item_ids: np.ndarray, n_events: np.ndarray) -> None:
        """Fill the popularity column from item features (`item_n_events`) as of the cut-off."""
        rows, ok = self.item_rows(np.asarray(item_ids, np.int64))
        self.t["item_num"][:, POP_COL] = 0.0
        self.t["item_num"][rows[ok], POP_COL] = log_count(np.asarray(n_events)[ok])

    def set_as_of(self, ts: int) -> None:
        """Fill the age column of the item table as of `ts` (the version's cut-off)."""
        age = self._age(np.arange(len(self.t["item_num"])), np.asarray([ts], np.int64))
        if age is not None:
            self.t["item_num"][:, int(self.meta["age_col"])] = age

    def _age(self, rows: np.ndarray, ts: np.ndarray) -> np.ndarray | None:
        """log1p(years since release) of item rows at times `ts`; 0 without a year; None for a
        space without an age column (versions written before it existed)."""
        if self.meta.get("age_col") is None or "year" not in self.t:
            return None
        year = self.t["year"][rows].astype(np.float64)
        years = 1970.0 + np.asarray(ts, np.float64) / _YEAR_S - year
        return np.where(np.isnan(year), 0.0, np.log1p(np.clip(years, 0.0, 100.0))).astype(
            np.float32
        )

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

    @cached_property
    def user_ids(self) -> np.ndarray:
        """All user ids of the catalog, sorted (built once: the serving path reads it per
        request, and rebuilding it from the JSON list costs ~30 ms at 1M items)."""
        return np.asarray(self.meta["user_ids"], dtype=np.int64)

    @cached_property
    def item_ids(self) -> np.ndarray:
        """All item ids of the catalog, sorted (row r + 1 of the item table); built once."""
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
            user_num_dim=2 + (int(self.t["user_num"].shape[1]) if "user_num" in self.t else 0),
            item_num_dim=int(self.t["item_num"].shape[1]),
            text_dim=int(self.t["text"].shape[1]),
            image_dim=int(self.t["image"].shape[1]),
        )

    # encoding ------------------------------------------------------------------------------

    def item_rows(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row (1-based, 0 = not in the catalog) of each item id and whether it was found."""
        pos, found = _lookup(self.item_ids, item_ids)
        return np.where(found, pos + 1, 0), found

    def items(
        self, rows: np.ndarray, popularity: np.ndarray | None = None, ts: np.ndarray | None = None
    ) -> ItemFeatures:
        """Item features for item-table rows (0 = unknown item); `popularity` (N,) item event
        counts and `ts` (N,) event times replace the table's as-of-cut popularity and age
        (point-in-time training rows)."""
        t = self.t
        return ItemFeatures(
            item=t["item_idx"][rows],
            genres=t["genres"][rows],
            item_num=self.item_num(rows, popularity, ts),
            text=t["text"][rows],
            image=t["image"][rows],
            flags=t["flags"][rows],
        )

    def item_num(
        self, rows: np.ndarray, popularity: np.ndarray | None = None, ts: np.ndarray | None = None
    ) -> np.ndarray:
        """(N, Ni) numeric item features of `rows`, with `popularity`/`ts` as in `items`."""
        num = self.t["item_num"][rows]
        if popularity is not None:
            num = num.copy()
            num[:, POP_COL] = log_count(popularity)
        age = None if ts is None else self._age(rows, ts)
        if age is not None:
            num = num.copy() if popularity is None else num
            num[:, int(self.meta["age_col"])] = age
        return num

    def fresh_rows(self) -> np.ndarray:
        """(F,) item-table rows of catalog items without training interactions (unknown id:
        their features are content and metadata only)."""
        return np.flatnonzero(self.t["item_idx"][1:] == 0).astype(np.int64) + 1

    def all_items(self) -> ItemFeatures:
        """Item features of every catalog item, in `item_ids` order."""
        return self.items(np.arange(1, len(self.meta["item_ids"]) + 1))
