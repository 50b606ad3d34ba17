"""Kubeflow Pipelines v2 components: each forwards its parameters to one `steps` function.

The functions below are plain Python (KFP ships their source into the container, so every
import is inside the body and the annotations are builtins); `make_components(image)` turns
them into KFP components that run in the project image. No logic lives here.
"""

# No `from __future__ import annotations`: KFP reads these annotations as real types.

from typing import Any


def ingest(storage_uri: str, dataset: str, data_path: str, until: int) -> dict:
    """Ingest users, items and events into the offline store."""
    from strata.pipelines import steps

    return steps.ingest(storage_uri, dataset, data_path, until)


def build_features(storage_uri: str, dataset: str, until: int) -> dict:
    """Build the offline feature tables."""
    from strata.pipelines import steps

    return steps.build_features(storage_uri, dataset, until)


def encode_content(
    storage_uri: str, dataset: str, data_path: str, images: str, enabled: bool
) -> dict:
    """Embed item text and posters."""
    from strata.pipelines import steps

    return steps.encode_content(storage_uri, dataset, data_path, images, enabled)


def train_two_tower(storage_uri: str, dataset: str, until: int, epochs: int, images: str) -> dict:
    """Fit the feature space + two-tower into the workspace's staging folder."""
    from strata.pipelines import steps

    return steps.train_two_tower(storage_uri, dataset, until, epochs, images)


def train_ranker(storage_uri: str, dataset: str, staged: dict) -> dict:
    """Train the ranker on the staged two-tower into a candidate registry version."""
    from strata.pipelines import steps

    return steps.train_ranker(storage_uri, dataset, staged)


def build_index(storage_uri: str, dataset: str, candidate: dict, kind: str) -> dict:
    """Build the ANN index of the staged two-tower or of the candidate version."""
    from strata.pipelines import steps

    return steps.build_index(storage_uri, dataset, candidate, kind)


def evaluate_gate(storage_uri: str, dataset: str, candidate: dict) -> dict:
    """Evaluate the candidate and decide whether it may serve."""
    from strata.pipelines import steps

    return steps.gate(storage_uri, dataset, candidate)


def materialize_online(storage_uri: str, dataset: str) -> dict:
    """Copy the latest features to the online store."""
    from strata.pipelines import steps

    return steps.materialize_online(storage_uri, dataset)


def publish(storage_uri: str, dataset: str, decision: dict) -> dict:
    """Promote an accepted version in the registry."""
    from strata.pipelines import steps

    return steps.publish(storage_uri, dataset, decision)


def deploy(published: dict, serving_url: str) -> dict:
    """Reload the serving app on the published version."""
    from strata.pipelines import steps

    return steps.deploy(published, serving_url)


def land_events(storage_uri: str, dataset: str) -> dict:
    """Land logged events in the offline store."""
    from strata.pipelines import steps

    return steps.land(storage_uri, dataset)


def finetune(storage_uri: str, dataset: str) -> dict:
    """Fine-tune query tower + ranker since the watermark; gate (publish promotes)."""
    from strata.pipelines import steps

    return steps.finetune_serving(storage_uri, dataset)


def ctr_retrain(storage_uri: str, recent_uri: str) -> dict:
    """Warm-start CTR retrain on recent labelled rows; gate and publish."""
    from strata.pipelines import steps

    return steps.ctr_retrain(storage_uri, recent_uri)


FUNCTIONS = (
    ingest,
    build_features,
    encode_content,
    train_two_tower,
    build_index,
    train_ranker,
    evaluate_gate,
    materialize_online,
    publish,
    deploy,
    land_events,
    finetune,
    ctr_retrain,
)


def require_kfp() -> Any:
    """`kfp.dsl`, or MissingExtraError naming the `pipelines` extra."""
    from strata.errors import MissingExtraError

    try:
        from kfp import dsl
    except ImportError:
        raise MissingExtraError("kfp", "pipelines") from None
    return dsl


def make_components(image: str) -> dict[str, Any]:
    """KFP components for every function above, running in `image` (kfp must be installed)."""
    dsl = require_kfp()
    # The image carries strata and kfp already: no pip install at container start.
    return {
        f.__name__: dsl.component(f, base_image=image, install_kfp_package=False) for f in FUNCTIONS
    }
