"""The three pipelines (`initial`, `incremental`, `ctr-retrain`) as KFP v2 graphs, and compile.

Steps pass small JSON dicts (versions, decisions); data and models go through the storage URI.
Every step has side effects on that storage, so KFP's result cache is switched off for all of
them. Conditional steps are not KFP `If` blocks: a step that has nothing to do (no accepted
version, no serving URL) returns a recorded no-op, so the graph is the same straight line on a
cluster and locally.
"""

# No `from __future__ import annotations`: KFP reads the pipeline signatures as real types.

from collections.abc import Callable
from pathlib import Path
from typing import Any

from strata.pipelines.components import make_components, require_kfp

PIPELINES = ("initial", "incremental", "ctr-retrain")


def make_pipelines(image: str) -> dict[str, Callable[..., Any]]:
    """The three KFP pipeline objects, with components running in `image`."""
    dsl = require_kfp()

    c = make_components(image)

    def nocache(task: Any) -> Any:
        task.set_caching_options(False)
        return task

    @dsl.pipeline(
        name="strata-initial",
        description="ingest -> features -> content -> two-tower -> index -> ranker -> gate "
        "-> materialize -> publish -> deploy",
    )
    def initial(
        storage_uri: str,
        dataset: str = "movielens-100k",
        data_path: str = "",
        until: int = 0,
        epochs: int = 0,
        encode: bool = True,
        images: str = "",
        index_kind: str = "",
        serving_url: str = "",
    ) -> dict:
        t_ingest = nocache(
            c["ingest"](storage_uri=storage_uri, dataset=dataset, data_path=data_path, until=until)
        )
        t_feat = nocache(
            c["build_features"](storage_uri=storage_uri, dataset=dataset, until=until)
        ).after(t_ingest)
        t_content = nocache(
            c["encode_content"](
                storage_uri=storage_uri,
                dataset=dataset,
                data_path=data_path,
                images=images,
                enabled=encode,
            )
        ).after(t_feat)
        t_tt = nocache(
            c["train_two_tower"](
                storage_uri=storage_uri, dataset=dataset, until=until, epochs=epochs, images=images
            )
        ).after(t_content)
        t_index = nocache(
            c["build_index"](
                storage_uri=storage_uri, dataset=dataset, candidate=t_tt.output, kind=index_kind
            )
        )
        t_train = nocache(
            c["train_ranker"](storage_uri=storage_uri, dataset=dataset, staged=t_index.output)
        )
        t_gate = nocache(
            c["evaluate_gate"](storage_uri=storage_uri, dataset=dataset, candidate=t_train.output)
        )
        t_mat = nocache(c["materialize_online"](storage_uri=storage_uri, dataset=dataset)).after(
            t_gate
        )
        t_pub = nocache(
            c["publish"](storage_uri=storage_uri, dataset=dataset, decision=t_gate.output)
        ).after(t_mat)
        t_deploy = nocache(c["deploy"](published=t_pub.output, serving_url=serving_url))
        return t_deploy.output

    @dsl.pipeline(
        name="strata-incremental",
        description="land events -> fine-tune query tower + ranker (item tower frozen) -> gate "
        "-> index -> promote -> reload",
    )
    def incremental(
        storage_uri: str,
        dataset: str = "movielens-100k",
        index_kind: str = "",
        serving_url: str = "",
    ) -> dict:
        t_land = nocache(c["land_events"](storage_uri=storage_uri, dataset=dataset))
        t_ft = nocache(c["finetune"](storage_uri=storage_uri, dataset=dataset)).after(t_land)
        t_index = nocache(
            c["build_index"](
                storage_uri=storage_uri, dataset=dataset, candidate=t_ft.output, kind=index_kind
            )
        )
        t_pub = nocache(
            c["publish"](storage_uri=storage_uri, dataset=dataset, decision=t_ft.output)
        ).after(t_index)
        t_deploy = nocache(c["deploy"](published=t_pub.output, serving_url=serving_url))
        return t_deploy.output

    @dsl.pipeline(
        name="strata-ctr-retrain",
        description="warm-start CTR retrain on recent labelled rows -> gate -> publish -> reload",
    )
    def ctr_retrain(storage_uri: str, recent_uri: str, serving_url: str = "") -> dict:
        t_rt = nocache(c["ctr_retrain"](storage_uri=storage_uri, recent_uri=recent_uri))
        t_deploy = nocache(c["deploy"](published=t_rt.output, serving_url=serving_url))
        return t_deploy.output

    return {"initial": initial, "incremental": incremental, "ctr-retrain": ctr_retrain}


def get_pipeline(name: str, image: str) -> Callable[..., Any]:
    """One pipeline by CLI name; ValidationError for an unknown one."""
    from strata.errors import ValidationError

    if name not in PIPELINES:
        raise ValidationError(
            "pipeline", f"unknown pipeline {name!r}; known: {', '.join(PIPELINES)}"
        )
    return make_pipelines(image)[name]


def compile_pipeline(name: str, out: Path, image: str) -> Path:
    """Compile one pipeline to `<out>/<name>.yaml` (written to a temp name, then renamed)."""
    import os

    require_kfp()
    from kfp import compiler

    out.mkdir(parents=True, exist_ok=True)
    dest = out / f"{name}.yaml"
    tmp = out / f".{name}.tmp.yaml"
    try:
        compiler.Compiler().compile(get_pipeline(name, image), str(tmp))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def compile_all(out: Path, image: str) -> list[Path]:
    """Compile every pipeline into `out`: one YAML per pipeline for a KFP cluster."""
    return [compile_pipeline(name, out, image) for name in PIPELINES]
