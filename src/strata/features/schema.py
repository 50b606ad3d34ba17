"""Feature schema: every entity key and feature column the offline store produces, declared once.

Other components (models, online store, serving) read feature names, dtypes and vector dimensions
from here instead of hard-coding column names. The SQL that computes them lives in
`strata.features.definitions`; a test checks that the two agree column for column.

Conventions:
- user features are prefixed `user_`, item features `item_`, context features `ctx_`;
- behavioural features are computed over a trailing window strictly before the as-of time;
- every feature column is non-null; `default` is the value used when there is no history
  (cold start) and is what serving should fill for unknown entities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Entity = Literal["user", "item", "context", "event"]
DType = Literal[
    "int64",
    "int16",
    "float32",
    "float64",
    "string",
    "bool",
    "list<int64>",
    "list<string>",
    "list<float32>",
]

USER_KEY = "user_id"
ITEM_KEY = "item_id"
EVENT_KEY = "event_id"

#: Maximum length of `user_recent_items` (ordered oldest -> newest).
RECENT_ITEMS_N = 10
#: Event types counted per user by default (`strata.datasets.base.EVENT_TYPES`); a dataset with
#: other types gets its own columns through `user_features(event_types)`.
EVENT_TYPES = ("rating", "view", "click", "purchase")
#: Default trailing windows (seconds); configurable per build, see `definitions.FeatureParams`.
DEFAULT_USER_WINDOW_S = 30 * 86400
DEFAULT_ITEM_WINDOW_S = 30 * 86400


@dataclass(frozen=True)
class FeatureSpec:
    """One feature column: its name, owning entity, dtype, vector dimension and cold default."""

    name: str
    entity: Entity
    dtype: DType
    group: str
    description: str
    dim: int | None = None  # fixed length of a list/vector feature; None for scalars or variable
    default: object = None

    @property
    def is_vector(self) -> bool:
        """True for list-valued features."""
        return self.dtype.startswith("list<")


def _f(
    name: str,
    entity: Entity,
    dtype: DType,
    group: str,
    description: str,
    dim: int | None = None,
    default: object = None,
) -> FeatureSpec:
    return FeatureSpec(name, entity, dtype, group, description, dim, default)


def user_features(
    event_types: tuple[str, ...] = EVENT_TYPES, item_attrs: tuple[str, ...] = ()
) -> tuple[FeatureSpec, ...]:
    """The user feature columns of a dataset whose log holds `event_types` (one count each) and
    whose items declare `item_attrs` (the top value of each)."""
    return (
        # demographics (static)
        _f(
            "user_age",
            "user",
            "int16",
            "user_demographics",
            "age in years (0 = unknown)",
            default=0,
        ),
        _f("user_gender", "user", "string", "user_demographics", "gender code", default=""),
        _f("user_occupation", "user", "string", "user_demographics", "occupation", default=""),
        # behavioural, trailing user window strictly before the as-of time
        _f("user_n_events", "user", "int64", "user_behaviour", "events in window", default=0),
        *(
            _f(f"user_n_{t}", "user", "int64", "user_behaviour", f"{t} events in window", default=0)
            for t in event_types
        ),
        _f(
            "user_mean_value",
            "user",
            "float64",
            "user_behaviour",
            "mean event value in window",
            default=0.0,
        ),
        _f(
            "user_top_genre",
            "user",
            "string",
            "user_behaviour",
            "most frequent item genre in window",
            default="",
        ),
        _f(
            "user_top_category",
            "user",
            "string",
            "user_behaviour",
            "most frequent item category in window",
            default="",
        ),
        *(
            _f(
                f"user_pref_{a}",
                "user",
                "string",
                "user_behaviour",
                f"most frequent item {a} in window",
                default="",
            )
            for a in item_attrs
        ),
        _f(
            "user_recent_items",
            "user",
            "list<int64>",
            "user_behaviour",
            f"last {RECENT_ITEMS_N} item ids before the as-of time, oldest first (up to N)",
            dim=RECENT_ITEMS_N,
            default=[],
        ),
        _f(
            "user_days_since_last",
            "user",
            "float64",
            "user_behaviour",
            "days since the user's previous event (all history); -1 when none",
            default=-1.0,
        ),
    )


USER_FEATURES: tuple[FeatureSpec, ...] = user_features()

ITEM_FEATURES: tuple[FeatureSpec, ...] = (
    # metadata (static)
    _f("item_year", "item", "int16", "item_metadata", "release year (0 = unknown)", default=0),
    _f(
        "item_category",
        "item",
        "string",
        "item_metadata",
        "category (items.category, else the first genre)",
        default="",
    ),
    _f("item_genres", "item", "list<string>", "item_metadata", "genres", default=[]),
    # popularity, trailing item window strictly before the as-of time
    _f("item_n_events", "item", "int64", "item_popularity", "events in window", default=0),
    _f("item_n_users", "item", "int64", "item_popularity", "distinct users in window", default=0),
    _f(
        "item_mean_value",
        "item",
        "float64",
        "item_popularity",
        "mean event value in window",
        default=0.0,
    ),
)

#: Context in the dataset's declared time zone (UTC unless declared; `features.localtime`).
CONTEXT_FEATURES: tuple[FeatureSpec, ...] = (
    _f("ctx_hour_sin", "context", "float64", "context", "sin(2*pi*seconds_of_day/86400)"),
    _f("ctx_hour_cos", "context", "float64", "context", "cos(2*pi*seconds_of_day/86400)"),
    _f("ctx_dow_sin", "context", "float64", "context", "sin(2*pi*dow/7), dow 0 = Monday"),
    _f("ctx_dow_cos", "context", "float64", "context", "cos(2*pi*dow/7), dow 0 = Monday"),
    _f(
        "ctx_device",
        "context",
        "string",
        "context",
        "device of the request/event",
        default="unknown",
    ),
)

#: Content embeddings written by the encoders (table `item_content`); dims are set by the encoder
#: that produced them (None here = read the length from the table).
CONTENT_FEATURES: tuple[FeatureSpec, ...] = (
    _f("text_emb", "item", "list<float32>", "item_content", "text embedding of title+description"),
    _f("image_emb", "item", "list<float32>", "item_content", "image embedding of the poster"),
    _f("has_text", "item", "bool", "item_content", "text_emb is meaningful", default=False),
    _f("has_image", "item", "bool", "item_content", "image_emb is meaningful", default=False),
)

#: Event columns carried into the training set (labels and keys).
EVENT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "user_id",
    "item_id",
    "event_type",
    "value",
    "ts",
    "device",
)

#: Feature-table column order (key first).
USER_FEATURE_COLUMNS: tuple[str, ...] = (USER_KEY, *(f.name for f in USER_FEATURES))
ITEM_FEATURE_COLUMNS: tuple[str, ...] = (ITEM_KEY, *(f.name for f in ITEM_FEATURES))
ITEM_CONTENT_COLUMNS: tuple[str, ...] = (ITEM_KEY, *(f.name for f in CONTENT_FEATURES))


def user_feature_columns(
    event_types: tuple[str, ...] = EVENT_TYPES, item_attrs: tuple[str, ...] = ()
) -> tuple[str, ...]:
    """User feature-table columns (key first) for a log of `event_types`, items with
    `item_attrs`."""
    return (USER_KEY, *(f.name for f in user_features(event_types, item_attrs)))


def training_set_columns(
    event_types: tuple[str, ...] = EVENT_TYPES, item_attrs: tuple[str, ...] = ()
) -> tuple[str, ...]:
    """`OfflineStore.training_set` columns, in order: event columns, context, user, item
    features."""
    return (
        *EVENT_COLUMNS,
        *(f.name for f in CONTEXT_FEATURES),
        *(f.name for f in user_features(event_types, item_attrs)),
        *(f.name for f in ITEM_FEATURES),
    )


TRAINING_SET_COLUMNS: tuple[str, ...] = training_set_columns()

ALL_FEATURES: tuple[FeatureSpec, ...] = (
    *USER_FEATURES,
    *ITEM_FEATURES,
    *CONTEXT_FEATURES,
    *CONTENT_FEATURES,
)
_BY_NAME = {f.name: f for f in ALL_FEATURES}


def feature(name: str) -> FeatureSpec:
    """Look up one feature spec by column name (KeyError names the unknown feature)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown feature {name!r}") from None


def features_in(group: str) -> tuple[FeatureSpec, ...]:
    """All specs of one group, e.g. `user_behaviour` or `item_popularity`."""
    return tuple(f for f in ALL_FEATURES if f.group == group)


def defaults(entity: Entity) -> dict[str, object]:
    """Cold-start default per feature of `entity` (what serving fills for unknown ids)."""
    return {f.name: f.default for f in ALL_FEATURES if f.entity == entity}
