"""The `strata` command line: a thin typer layer over library functions (no logic lives here).

Every `StrataError` (bad input, missing file, unknown dataset) becomes one line on stderr and exit
code 2; usage errors also exit 2. Heavy libraries are imported inside the commands that use them.
The recommender's commands live here; the CTR, index, export and pipeline groups in
`strata.cli.ops`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from strata.cli.common import print_json, settings
from strata.cli.items import items_app
from strata.cli.ops import ctr_app, export_app, index_app, pipeline_app
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
app.add_typer(ctr_app, name="ctr")
app.add_typer(index_app, name="index")
app.add_typer(export_app, name="export")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(items_app, name="items")


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


@data_app.command("add")
def data_add(
    name: Annotated[str, typer.Argument(help="Name to register the dataset under.")],
    spec: Annotated[
        Path | None, typer.Option(help="Dataset spec (YAML): files, columns, attributes.")
    ] = None,
    recbole: Annotated[
        Path | None,
        typer.Option(help="Instead of --spec: RecBole atomic files (dir/name -> name.inter...)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the whole report as JSON.")
    ] = False,
) -> None:
    """Check a dataset spec and its files, report on the data, and register it (nothing is
    registered when a check fails: exit 2 naming the file, row and field)."""
    from strata.datasets.recbole import register_recbole
    from strata.datasets.spec import register_spec

    if (spec is None) == (recbole is None):
        raise typer.BadParameter("give exactly one of --spec and --recbole", param_hint="--spec")
    if recbole is not None:
        report = register_recbole(settings(), name, recbole)
    else:
        assert spec is not None
        report = register_spec(settings(), name, spec)
    if as_json:
        print_json(report)
        return
    it = report["interactions"]
    typer.echo(
        f"{name}: {it['rows']} interactions, {it['users']} users, {it['items']} items "
        f"({report['items']['rows']} in the catalogue), span {it['time_span']}; "
        f"usable {report['usable_interactions']}, unknown item {it['rows_with_unknown_item']}, "
        f"unknown user {it['rows_with_unknown_user']}, undeclared event type "
        f"{it['rows_with_undeclared_event_type']}; registered at {report['spec']}"
    )


@data_app.command("generate")
def data_generate(
    out: Annotated[Path, typer.Option(help="Folder to write the files and spec.yaml into.")],
    users: Annotated[int, typer.Option(min=1, help="Customers.")] = 400,
    items: Annotated[int, typer.Option(min=1, help="Products.")] = 300,
    events: Annotated[int, typer.Option(min=1, help="Events.")] = 12_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    images: Annotated[bool, typer.Option(help="Draw product images.")] = True,
    zipf: Annotated[
        float, typer.Option(min=0.0, help="Popularity fall-off (lower: taste matters more).")
    ] = 1.0,
) -> None:
    """Write the synthetic world as a shop's files plus a dataset spec (then `strata data add`)."""
    from strata.datasets.shop import write_shop

    spec = write_shop(out, users, items, events, seed, images, zipf)
    typer.echo(f"wrote a shop of {users} customers, {items} products, {events} events; "
               f"spec: {spec}")  # fmt: skip


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
    engine: Annotated[
        str | None,
        typer.Option(help="duckdb | spark | athena (default: offline.engine, duckdb)."),
    ] = None,
    training_set: Annotated[
        str | None,
        typer.Option(help="Also write the point-in-time training set here (athena: s3:// prefix)."),
    ] = None,
) -> None:
    """Ingest a dataset into the offline store and build its feature tables; print a summary."""
    from strata.cli.common import parse_ts
    from strata.features.engines import build_dataset, check_engine

    until_ts = parse_ts(until, "--until")  # validated before any loading or writing
    cfg = settings()
    name = check_engine(engine, cfg)
    print_json(build_dataset(cfg, dataset, until_ts, path, name, training_set))


@features_app.command("sql")
def features_sql(
    dialect: Annotated[str, typer.Option(help="duckdb | spark | trino | athena")] = "duckdb",
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
    from strata.training.content import encode_and_store

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
    nproc: Annotated[
        int, typer.Option(help="Data-parallel ranks on this machine (torchrun; gloo/NCCL).")
    ] = 1,
    device: Annotated[
        str | None, typer.Option(help="cpu | cuda | auto (default: training.device).")
    ] = None,
    promote: Annotated[
        bool, typer.Option("--promote/--no-promote", help="Serve the new version.")
    ] = True,
) -> None:
    """Train the two-tower and the DCN-v2 ranker, export, register and promote a version."""
    from strata.cli.common import distributed, parse_ts
    from strata.training.distributed import leaving_group
    from strata.training.train import train

    s = settings()
    if device is not None:
        s = s.model_copy(update={"training": s.training.model_copy(update={"device": device})})
    rank = distributed(nproc, s.training.device, "training")
    with leaving_group():
        res = train(s, dataset, parse_ts(until), images, epochs, promote=promote)
    if rank is not None and not rank.main:
        return  # rank 0 wrote the version and prints it
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
    from strata.cli.common import parse_ts
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
    from strata.cli.common import parse_ts
    from strata.training.evaluate import format_table, run_evaluation

    until_ts = parse_ts(until, "--until") or 0  # a required option: never None here
    report = run_evaluation(
        settings(), dataset, until_ts, out_dir=out, path=path, include_model=not baselines_only
    )
    if as_json:
        print_json(report)
    else:
        sys.stdout.write(format_table(report) + "\n")


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


def main() -> None:
    """Entry point: run the app and turn domain errors into one line and exit code 2.

    Usage errors are typer's own (exit 2 with the usage line); a full or read-only disk
    (ENOSPC, EDQUOT, EROFS) is one line and exit 2 too; anything else is a bug and keeps its
    traceback.
    """
    from pydantic import ValidationError

    try:
        app()
    except StrataError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None
    except OSError as exc:
        from strata.atomic import STORAGE_ERRNOS

        if exc.errno not in STORAGE_ERRNOS:
            raise  # not the disk's doing: a bug, with its traceback
        # A full or read-only disk is the operator's to fix; every write commits by rename,
        # so what failed left the previous state in place.
        sys.stderr.write(f"error: {exc.filename or 'write'}: {exc.strerror}\n")
        raise SystemExit(2) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        msg = first["msg"]
        if first["type"] == "union_tag_not_found":  # e.g. STRATA_ONLINE__URL without the type
            env = "STRATA_" + "__".join(str(p).upper() for p in first["loc"]) + "__TYPE"
            msg = f"{loc}.type is not set ({env}): it is needed with any other {loc} setting"
        sys.stderr.write(f"error: {loc}: {msg}\n")
        raise SystemExit(2) from None
