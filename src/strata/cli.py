"""The `strata` command line: a thin typer layer over library functions (no logic lives here).

Every `StrataError` (bad input, missing file, unknown dataset) becomes one line on stderr and exit
code 2; usage errors also exit 2. Heavy libraries are imported inside the commands that use them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from strata.config import Settings
from strata.errors import StrataError

app = typer.Typer(
    name="strata",
    help="Multistage multimodal recommender and CTR service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Acquire and inspect datasets.", no_args_is_help=True)
features_app = typer.Typer(help="Offline and online feature store.", no_args_is_help=True)
events_app = typer.Typer(help="Event ingestion.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
app.add_typer(events_app, name="events")


def settings() -> Settings:
    """Settings from the environment (STRATA_*); built per command, never held globally."""
    return Settings()


def print_json(obj: object) -> None:
    """Write one JSON document to stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


# --- demo ----------------------------------------------------------------------------------


@app.command()
def demo(
    dataset: Annotated[str, typer.Option(help="Dataset to run on.")] = "movielens-100k",
    no_serve: Annotated[
        bool, typer.Option("--no-serve", help="Run the offline path and print a summary.")
    ] = False,
    images: Annotated[
        Path | None, typer.Option(help="Folder of <item_id>.jpg posters (optional).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Two-tower epochs.")] = None,
) -> None:
    """Run the main job end to end on embedded defaults."""
    from strata.demo import run_demo

    run_demo(settings(), dataset=dataset, serve=not no_serve, images=images, epochs=epochs)


# --- data ----------------------------------------------------------------------------------


def _dataset_info(ds: object) -> dict[str, object]:
    """Counts plus a few facts about a `RecDataset` (what `data info` prints)."""
    from strata.datasets import RecDataset

    assert isinstance(ds, RecDataset)
    inter = ds.interactions
    info: dict[str, object] = {"name": ds.name, **ds.summary()}
    info["items_with_image"] = int(ds.items["image_path"].notna().sum())
    info["event_types"] = {str(k): int(v) for k, v in inter["event_type"].value_counts().items()}
    info["ts_min"] = int(inter["ts"].min()) if len(inter) else None
    info["ts_max"] = int(inter["ts"].max()) if len(inter) else None
    return info


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="movielens-100k | synthetic")],
    path: Annotated[
        Path | None, typer.Option(help="Local copy (GroupLens u.* or RecBole ml-100k.* files).")
    ] = None,
    images: Annotated[Path | None, typer.Option(help="Folder of <item_id>.jpg posters.")] = None,
) -> None:
    """Acquire a dataset into the cache ($STRATA_HOME/datasets) and print a one-line summary."""
    from strata.datasets import fetch, load

    s = settings()
    where = fetch(name, path, s)
    ds = load(name, path, images, s)
    info = _dataset_info(ds)
    sys.stdout.write(
        f"{name}: {info['users']} users, {info['items']} items, {info['interactions']} "
        f"interactions, {info['items_with_image']} with images"
        + (f" (cache: {where})" if where is not None else " (generated)")
        + "\n"
    )


@data_app.command("info")
def data_info(
    name: Annotated[str, typer.Argument(help="movielens-100k | synthetic")],
    path: Annotated[
        Path | None, typer.Option(help="Read this folder instead of the cache.")
    ] = None,
    images: Annotated[Path | None, typer.Option(help="Folder of <item_id>.jpg posters.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Row counts and basic facts of a dataset (fetching it first when not cached)."""
    from strata.datasets import load

    info = _dataset_info(load(name, path, images, settings()))
    if as_json:
        print_json(info)
    else:
        for key, value in info.items():
            sys.stdout.write(f"{key}: {value}\n")


@data_app.command("criteo-parquet")
def data_criteo_parquet(
    src: Annotated[Path, typer.Argument(help="Criteo TSV (label, I1..I13, C1..C26; .gz ok).")],
    out: Annotated[Path, typer.Argument(help="Output folder of part-NNNNN.parquet files.")],
    chunk_rows: Annotated[int, typer.Option(min=1, help="Rows per Parquet part.")] = 1_000_000,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Stream a Criteo TSV into partitioned Parquet in bounded memory; print a JSON summary."""
    from dataclasses import asdict

    from strata.datasets.criteo import criteo_to_parquet

    info = criteo_to_parquet(src, out, chunk_rows, overwrite=overwrite)
    print_json({**asdict(info), "ctr": round(info.ctr, 6)})


# --- features ------------------------------------------------------------------------------


@features_app.command("build")
def features_build(
    dataset: Annotated[str, typer.Option(help="Dataset name, e.g. movielens-100k.")],
    until: Annotated[
        str | None,
        typer.Option(help="Ignore events at or after this time (unix seconds or ISO date)."),
    ] = None,
    path: Annotated[
        Path | None, typer.Option(help="Explicit dataset folder (else cache/fetch).")
    ] = None,
) -> None:
    """Ingest a dataset into the offline store and build its feature tables; print a summary."""
    from strata.features.offline import build_dataset, parse_ts

    until_ts = parse_ts(until, "--until")  # validated before any loading or writing
    print_json(build_dataset(settings(), dataset, until=until_ts, path=path))


@features_app.command("sql")
def features_sql(
    dialect: Annotated[str, typer.Option(help="athena | trino | duckdb")] = "duckdb",
) -> None:
    """Print every feature definition as SQL in the given dialect."""
    from strata.features.definitions import render_all

    for name, sql in render_all(dialect).items():
        sys.stdout.write(f"-- {name}\n{sql};\n\n")


# --- features (online) ---------------------------------------------------------------------


def _with_online(online: str | None) -> Settings:
    """Settings from the environment, with `--online memory|valkey://...` applied when given."""
    from strata.config import online_config_from_url

    base = settings()
    if online is None:
        return base
    chosen = online_config_from_url(online)
    if chosen.type == "valkey" and base.online.type == "valkey":
        # Keep the environment's prefix, timeouts and TTL; the flag only picks the server.
        chosen = base.online.model_copy(update={"url": chosen.url})
    return base.model_copy(update={"online": chosen})


OnlineOpt = Annotated[
    str | None,
    typer.Option("--online", help="Online store: 'memory' or valkey://host:port/db."),
]


@features_app.command("materialize")
def features_materialize(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset in the offline store.")],
    online: OnlineOpt = None,
) -> None:
    """Copy the latest user/item features online as a new version, switched atomically."""
    from strata.features.materialize import materialize

    print_json(materialize(_with_online(online), dataset))


# --- features (content) --------------------------------------------------------------------


@features_app.command("encode")
def features_encode(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset name, e.g. movielens-100k.")],
    images: Annotated[
        Path | None, typer.Option("--images", help="Folder of posters named <item_id>.jpg.")
    ] = None,
    path: Annotated[
        Path | None, typer.Option(help="Explicit dataset folder (else cache/fetch).")
    ] = None,
    backend: Annotated[str, typer.Option(help="Encoder runtime: onnx | torch.")] = "onnx",
) -> None:
    """Embed item text and posters (cached by content hash) into the store's item_content."""
    from strata.errors import ValidationError
    from strata.features.content import encode_and_store

    if backend not in ("onnx", "torch"):
        raise ValidationError("--backend", f"expected onnx or torch, got {backend!r}")
    summary = encode_and_store(
        settings(),
        dataset,
        images=images,
        path=path,
        backend="torch" if backend == "torch" else "onnx",
    )
    print_json(summary)


# --- events --------------------------------------------------------------------------------


@events_app.command("ingest")
def events_ingest(
    file: Annotated[Path, typer.Argument(help="JSONL file, one event per line.")],
    online: OnlineOpt = None,
) -> None:
    """Ingest events (idempotent by event_id): durable log, live features, Bloom filters."""
    from strata.features.event_files import ingest_file

    print_json(ingest_file(_with_online(online), file))


@events_app.command("land")
def events_land(
    dataset: Annotated[str, typer.Option("--dataset", help="Offline dataset to append to.")],
) -> None:
    """Append logged events that are not yet in the offline store (idempotent)."""
    from strata.features.event_files import land_events

    print_json({"dataset": dataset, "landed": land_events(settings(), dataset)})


# --- train ---------------------------------------------------------------------------------


@app.command("train")
def train_cmd(
    dataset: Annotated[str, typer.Option(help="Dataset name.")] = "movielens-100k",
    until: Annotated[
        str | None, typer.Option(help="Train on events before this (ts or date).")
    ] = None,
    images: Annotated[Path | None, typer.Option(help="Poster folder for image embeddings.")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Two-tower epochs.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Train the two-tower and the DCN-v2 ranker, export, register and promote a version."""
    from strata.features.offline import parse_ts
    from strata.training.train import train

    res = train(settings(), dataset, until=parse_ts(until), images=images, epochs=epochs)
    out = {"version": res.version, "path": str(res.path), "metrics": res.metrics}
    if as_json:
        print_json(out)
    else:
        typer.echo(f"{dataset} {res.version} -> {res.path}")
        for name, value in res.metrics.items():
            typer.echo(f"  {name:32s} {value:.4f}")


@app.command("recommend")
def recommend_cmd(
    users_file: Annotated[Path, typer.Option("--users-file", help="One user id per line.")],
    out: Annotated[Path, typer.Option(help="Output JSONL path.")],
    dataset: Annotated[str, typer.Option(help="Dataset name.")] = "movielens-100k",
    k: Annotated[int, typer.Option(min=1, help="Items per user.")] = 10,
    stage: Annotated[str, typer.Option(help="retrieval | full")] = "full",
    version: Annotated[str | None, typer.Option(help="Model version (default: serving).")] = None,
) -> None:
    """Write top-k recommendations per user as JSON lines."""
    from strata.serving.batch import recommend_file

    if stage not in ("retrieval", "full"):
        raise typer.BadParameter("expected retrieval or full", param_hint="--stage")
    n = recommend_file(settings(), dataset, users_file, k, out, stage, version)  # type: ignore[arg-type]
    typer.echo(f"wrote {n} users to {out}", err=True)


@app.command("finetune")
def finetune_cmd(
    since: Annotated[str, typer.Option(help="Fine-tune on events from this ts/date on.")],
    dataset: Annotated[str, typer.Option(help="Dataset name.")] = "movielens-100k",
) -> None:
    """Fine-tune the serving version on recent events; promote only if the gate passes."""
    from strata.features.offline import parse_ts
    from strata.training.finetune import finetune

    ts = parse_ts(since, "--since")
    assert ts is not None  # parse_ts returns None only for None input
    r = finetune(settings(), dataset, ts)
    print_json(
        {
            "accepted": r.accepted,
            "serving_version": r.serving_version,
            "new_version": r.new_version,
            "metrics_serving": r.metrics_serving,
            "metrics_candidate": r.metrics_candidate,
        }
    )


# --- evaluate ------------------------------------------------------------------------------


@app.command("evaluate")
def evaluate_cmd(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset name, e.g. movielens-100k.")],
    until: Annotated[str, typer.Option(help="Split time: unix seconds or ISO date.")],
    path: Annotated[
        Path | None, typer.Option(help="Explicit dataset folder (else cache/fetch).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Report folder (default <home>/reports/<dataset>/).")
    ] = None,
    baselines_only: Annotated[
        bool, typer.Option("--baselines-only", help="Skip the trained model.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = False,
) -> None:
    """Temporal-split evaluation of the trained model and baselines; writes JSON + PNG."""
    from strata.features.offline import parse_ts
    from strata.training.evaluate import format_table, run_evaluation

    until_ts = parse_ts(until, "--until") or 0  # a required option: never None here
    report = run_evaluation(
        settings(), dataset, until_ts, out_dir=out, path=path, include_model=not baselines_only
    )
    if as_json:
        print_json(report)
    else:
        sys.stdout.write(format_table(report) + "\n")


# --- ctr -----------------------------------------------------------------------------------

ctr_app = typer.Typer(help="Ranking-only CTR system on Criteo-format logs.", no_args_is_help=True)
app.add_typer(ctr_app, name="ctr")


@ctr_app.command("train")
def ctr_train(
    data: Annotated[Path, typer.Option(help="Criteo TSV or Parquet (file or folder).")],
    model: Annotated[str | None, typer.Option(help="dcn | dcnv2 (default: config).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs (early stopping).")] = None,
    baseline: Annotated[
        bool, typer.Option("--baseline", help="Also train a hashed LR on the same split.")
    ] = False,
) -> None:
    """Train DCN / DCN-v2, evaluate on the held-out split, export ONNX and serve the version."""
    from strata.ctr.train import run_ctr_train

    print_json(run_ctr_train(settings(), data, model, epochs, baseline))


@ctr_app.command("evaluate")
def ctr_evaluate(
    data: Annotated[Path, typer.Option(help="Criteo TSV or Parquet with labels.")],
    version: Annotated[str | None, typer.Option(help="Model version (default: serving).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """AUC / logloss of the serving CTR model on a labelled file."""
    from strata.ctr.service import evaluate_data

    out = evaluate_data(settings(), data, version)
    if as_json:
        print_json(out)
    else:
        sys.stdout.write(
            f"{out['version']}: auc={out['auc']:.4f} logloss={out['logloss']:.4f} "
            f"rows={out['rows']}\n"
        )


@ctr_app.command("demo")
def ctr_demo(
    out: Annotated[Path, typer.Option(help="Folder for the plot, log and report.")] = Path(
        "ctr-demo"
    ),
    rows: Annotated[int, typer.Option(help="Training rows before the stream.")] = 30_000,
    before: Annotated[int, typer.Option(help="Served rows before the teacher shift.")] = 5_000,
    after: Annotated[int, typer.Option(help="Served rows after the teacher shift.")] = 15_000,
) -> None:
    """Drift story on synthetic Criteo traffic: drop, trigger, retrain, recovery; writes a PNG."""
    from strata.ctr.demo import run_ctr_demo

    report = run_ctr_demo(settings(), out, n_train=rows, n_before=before, n_after=after)
    print_json(report.to_dict())


@ctr_app.command("serve")
def ctr_serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: config).")] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port (default: config, 8001).")
    ] = None,
) -> None:
    """Serve only the CTR API (/ctr/predict, /ctr/feedback, /ctr/status, /metrics)."""
    from strata.serving.ctr_api import serve_ctr

    serve_ctr(settings(), host, port)


# --- index ---------------------------------------------------------------------------------

index_app = typer.Typer(help="ANN index over item embeddings.", no_args_is_help=True)
app.add_typer(index_app, name="index")


@index_app.command("build")
def index_build(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset name in the registry.")],
    version: Annotated[str | None, typer.Option(help="Model version (default: serving).")] = None,
    kind: Annotated[
        str | None, typer.Option(help="auto | flat | ivf | hnsw (default: config, auto).")
    ] = None,
) -> None:
    """Build, tune (recall@100 >= target) and save the ANN index next to a version's embeddings."""
    from strata.training.index_build import build_version_index

    print_json(build_version_index(settings(), dataset, version, kind))


# --- export --------------------------------------------------------------------------------

export_app = typer.Typer(help="Export models for other serving runtimes.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("triton")
def export_triton_cmd(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset name in the registry.")],
    out: Annotated[Path, typer.Option("--out", help="Triton model repository folder.")],
    version: Annotated[str | None, typer.Option(help="Model version (default: serving).")] = None,
    instances: Annotated[
        int | None, typer.Option(min=1, help="CPU instances per model (default: config).")
    ] = None,
    max_batch_size: Annotated[
        int | None, typer.Option(min=1, help="Triton max_batch_size (default: config).")
    ] = None,
) -> None:
    """Write a Triton model repository (config.pbtxt + 1/model.onnx) for a registry version."""
    from pydantic import ValidationError as PydanticValidationError

    from strata.config import TritonExportConfig
    from strata.errors import ConfigError
    from strata.serving.triton import export_triton

    s = settings()
    update = {"instances": instances, "max_batch_size": max_batch_size}
    cfg = s.triton_export.model_dump() | {k: v for k, v in update.items() if v is not None}
    try:
        export_cfg = TritonExportConfig(**cfg)
    except PydanticValidationError as exc:
        raise ConfigError(f"triton export: {exc.errors()[0]['msg']}") from None
    s = s.model_copy(update={"triton_export": export_cfg})
    res = export_triton(s, dataset, out, version)
    print_json({"out": str(res.out), "models": list(res.models), "version": res.version})


# --- serve ---------------------------------------------------------------------------------


@app.command("serve")
def serve_cmd(
    dataset: Annotated[str | None, typer.Option(help="Dataset to serve (default: config).")] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default: 127.0.0.1).")] = None,
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Port (default: 8000).")
    ] = None,
    online: OnlineOpt = None,
) -> None:
    """Serve recommendations over HTTP (/recommend, /events, /items, /metrics, /admin/reload)."""
    from strata.serving.app import serve

    s = _with_online(online)
    if dataset is not None:
        s = s.model_copy(update={"serve": s.serve.model_copy(update={"dataset": dataset})})
    serve(s, host, port)


# --- pipeline ------------------------------------------------------------------------------

pipeline_app = typer.Typer(help="Kubeflow pipelines: compile, run, schedule.", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")


@pipeline_app.command("compile")
def pipeline_compile(
    out: Annotated[Path, typer.Option("--out", help="Folder for one YAML per pipeline.")],
    image: Annotated[str | None, typer.Option(help="Component image (default: config).")] = None,
) -> None:
    """Compile initial, incremental and ctr-retrain to KFP v2 YAML."""
    from strata.pipelines.pipelines import compile_all

    paths = compile_all(out, image or settings().pipelines.image)
    print_json({"compiled": [str(p) for p in paths]})


@pipeline_app.command("run")
def pipeline_run(
    name: Annotated[str, typer.Argument(help="initial | incremental | ctr-retrain")],
    local: Annotated[bool, typer.Option("--local", help="Run on this machine.")] = False,
    host: Annotated[str | None, typer.Option(help="KFP API server URL to submit to.")] = None,
    storage: Annotated[
        str | None, typer.Option(help="Storage URI: folder or s3://... (default: config/home).")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset (initial, incremental).")] = None,
    data_path: Annotated[
        str | None, typer.Option("--data-path", help="Explicit dataset folder (initial).")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="initial: history cut (unix seconds or ISO date).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="initial: two-tower epochs.")] = None,
    no_encode: Annotated[
        bool, typer.Option("--no-encode", help="initial: skip the content encoders.")
    ] = False,
    data: Annotated[
        str | None, typer.Option(help="ctr-retrain: recent labelled rows (.npz, TSV, Parquet).")
    ] = None,
    serving_url: Annotated[
        str | None, typer.Option(help="Serving app to reload after a promotion.")
    ] = None,
    wait: Annotated[bool, typer.Option(help="--host: wait for the run to finish.")] = False,
) -> None:
    """Run a pipeline locally (--local) or submit it to a KFP host (--host)."""
    from strata.errors import ValidationError
    from strata.features.offline import parse_ts
    from strata.pipelines.runner import pipeline_params, run_local, submit
    from strata.pipelines.storage import resolve_uri

    s = settings()
    kfp_host = host or (None if local else s.pipelines.kfp_host)
    if local == (kfp_host is not None):
        raise ValidationError("--local/--host", "give exactly one of --local or --host URL")
    params = pipeline_params(
        name, resolve_uri(s, storage), dataset=dataset, data_path=data_path,
        until=parse_ts(until, "--until"), epochs=epochs, encode=False if no_encode else None,
        recent_uri=data, serving_url=serving_url,
    )  # fmt: skip
    if kfp_host is None:
        print_json(run_local(name, params, s))
    else:
        print_json(submit(name, params, kfp_host, s, wait=wait))


@pipeline_app.command("schedule")
def pipeline_schedule(
    name: Annotated[str, typer.Argument(help="Pipeline to schedule (incremental).")],
    cron: Annotated[str, typer.Option(help="Cron expression, 5 or 6 fields.")],
    host: Annotated[str | None, typer.Option(help="KFP API server URL (default: config).")] = None,
    storage: Annotated[str | None, typer.Option(help="Storage URI (default: config).")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset.")] = None,
    serving_url: Annotated[
        str | None, typer.Option(help="Serving app to reload after a promotion.")
    ] = None,
) -> None:
    """Create a recurring run of a pipeline on a KFP host."""
    from strata.errors import ValidationError
    from strata.pipelines.runner import kfp_cron, pipeline_params, schedule
    from strata.pipelines.storage import resolve_uri

    s = settings()
    kfp_host = host or s.pipelines.kfp_host
    if kfp_host is None:
        raise ValidationError("--host", "needs a KFP host (--host or pipelines.kfp_host)")
    kfp_cron(cron)  # reject a bad expression before compiling anything
    params = pipeline_params(
        name, resolve_uri(s, storage), dataset=dataset, serving_url=serving_url
    )
    print_json(schedule(name, cron, params, kfp_host, s))


def main() -> None:
    """Entry point: run the app and turn domain errors into one line and exit code 2.

    Usage errors are typer's own (exit 2 with the usage line); anything else is a bug and keeps
    its traceback.
    """
    from pydantic import ValidationError

    try:
        app()
    except StrataError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        sys.stderr.write(f"error: {loc}: {first['msg']}\n")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
