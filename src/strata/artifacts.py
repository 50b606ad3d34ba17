"""File names inside a registry version and its training staging folder (core layer).

Training writes these files and serving, evaluation and index tuning read them; the names live
here, below every layer, so that sharing a name never needs an import between those layers.
"""

from __future__ import annotations

USER_FEATURES_FILE = "user_features.parquet"  # the version's user snapshot (offline store)
SEEN_FILE = "seen.safetensors"  # (user, item) pairs before the cut-off, for the seen filter
ITEM_EMBEDDINGS_FILE = "item_embeddings.npy"  # (I, D) float32 item-tower output, catalog order
ITEM_IDS_FILE = "item_ids.npy"  # (I,) int64 ids of those rows, when written
INDEX_DIR = "index"  # sub-folder of a registry version that holds its ANN index

# The staging folder between the two training phases (two-tower, then ranker).
STAGE_META = "two_tower_stage.json"  # what the ranker phase needs besides the saved arrays
STAGE_RNG = "torch_rng.safetensors"  # torch's generator after the two-tower fit
STAGE_INDEX = "index"  # an ANN index built from the staged embeddings, copied into the version
STAGE_QUERIES = "tune_queries.npy"  # query-tower vectors of sampled training rows (index tuning)
