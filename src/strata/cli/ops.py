"""Command groups of the `strata` CLI besides the recommender's: `strata ctr` (the ranking-only
CTR system), `strata index`, `strata export` and `strata pipeline`. Thin like the rest of the
CLI: each command forwards to one library function."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from strata.cli.common import print_json, settings

if TYPE_CHECKING:
    from strata.ctr.service import CtrService
    from strata.serving.ctr_runtime import RetrainFactory

# --- ctr -----------------------------------------------------------------------------------

ctr_app = typer.Typer(help="Ranking-only CTR system on Criteo-format logs.", no_args_is_help=True)


@ctr_app.command("train")
def ctr_train(
    data: Annotated[Path, typer.Option(help="Criteo TSV or Parquet (file or folder).")],
    model: Annotated[str | None, typer.Option(help="dcn | dcnv2 (default: config).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs (early stopping).")] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Serve the version even if it does not beat the hashed-LR baseline."
        ),
    ] = False,
    baseline: Annotated[  # the baseline always runs now; the flag is kept for old scripts
        bool, typer.Option("--baseline", hidden=True, help="No-op: the baseline always runs.")
    ] = False,
    nproc: Annotated[
        int, typer.Option(help="Data-parallel ranks on this machine (torchrun; gloo/NCCL).")
    ] = 1,
    device: Annotated[
        str | None, typer.Option(help="cpu | cuda | auto (default: ctr.train.device).")
    ] = None,
) -> None:
    """Train DCN / DCN-v2 and a hashed LR on the same rows, export ONNX, and serve the version
    only if its validation AUC beats the LR's (else exit 3: recorded, not served)."""
    from strata.cli.common import distributed
    from strata.ctr.data import resolve_source
    from strata.ctr.promote import refusal_line, run_ctr_train
    from strata.ctr.train import shard_steps
    from strata.errors import EXIT_NOT_PROMOTED
    from strata.training.distributed import in_worker

    s = settings()
    if device is not None:
        tc = s.ctr.train.model_copy(update={"device": device})
        s = s.model_copy(update={"ctr": s.ctr.model_copy(update={"train": tc})})
    if not in_worker():
        source = resolve_source(data, s)  # a TSV is converted here once, not by every rank
        if nproc > 1:
            shard_steps(source, s.ctr, nproc)  # too little data per rank: fail before launching
    rank = distributed(nproc, s.ctr.train.device, "ctr training", "ctr.train.device", False)
    out = run_ctr_train(s, data, model, epochs, force, rank)  # it leaves the group itself
    if out is not None:  # only the main rank publishes and prints
        print_json(out)
        if not out["promoted"]:
            sys.stderr.write(refusal_line(out) + "\n")
            raise SystemExit(EXIT_NOT_PROMOTED)


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

    s = settings()
    factory: RetrainFactory | None = None
    if s.pipelines.kfp_host:
        # Drift submits the `ctr-retrain` pipeline to KFP (the lease keeps it to one run per
        # cluster); every replica then follows the version it promotes.
        from strata.pipelines.runner import make_ctr_retrain

        def factory(service: CtrService) -> Callable[[], dict[str, Any]]:
            return make_ctr_retrain(service, s)

    serve_ctr(s, host, port, retrain_factory=factory)


# --- index ---------------------------------------------------------------------------------

index_app = typer.Typer(help="ANN index over item embeddings.", no_args_is_help=True)


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
    follow: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            help="Keep running: export the serving version whenever it changes, "
            "polling the registry every this many seconds (a Triton sidecar).",
        ),
    ] = None,
) -> None:
    """Write a Triton model repository (config.pbtxt + 1/model.onnx) for a registry version."""
    from pydantic import ValidationError as PydanticValidationError

    from strata.config import TritonExportConfig
    from strata.errors import ConfigError, ValidationError
    from strata.serving.triton import export_triton, follow_exports

    s = settings()
    update = {"instances": instances, "max_batch_size": max_batch_size}
    cfg = s.triton_export.model_dump() | {k: v for k, v in update.items() if v is not None}
    try:
        export_cfg = TritonExportConfig(**cfg)
    except PydanticValidationError as exc:
        raise ConfigError(f"triton export: {exc.errors()[0]['msg']}") from None
    s = s.model_copy(update={"triton_export": export_cfg})
    if follow is not None:
        if version is not None:
            raise ValidationError("--follow", "follows the serving version; drop --version")
        follow_exports(s, dataset, out, follow)
        return
    res = export_triton(s, dataset, out, version)
    print_json({"out": str(res.out), "models": list(res.models), "version": res.version})


# --- pipeline ------------------------------------------------------------------------------

pipeline_app = typer.Typer(help="Kubeflow pipelines: compile, run, schedule.", no_args_is_help=True)


@pipeline_app.command("compile")
def pipeline_compile(
    out: Annotated[Path, typer.Option("--out", help="Folder for one YAML per pipeline.")],
    image: Annotated[str | None, typer.Option(help="Component image (default: config).")] = None,
) -> None:
    """Compile initial, incremental and ctr-retrain to KFP v2 YAML."""
    from strata.pipelines.pipelines import compile_all

    cfg = settings().pipelines
    paths = compile_all(out, cfg.model_copy(update={"image": image}) if image else cfg)
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
    unless_serving: Annotated[
        bool,
        typer.Option(
            "--unless-serving",
            help="initial: do nothing when --dataset already has a serving "
            "version in the storage's registry (a bootstrap that is safe to rerun).",
        ),
    ] = False,
) -> None:
    """Run a pipeline locally (--local) or submit it to a KFP host (--host)."""
    from strata.cli.common import parse_ts
    from strata.errors import ValidationError
    from strata.pipelines.runner import pipeline_params, run_local, submit
    from strata.pipelines.storage import resolve_uri, serving_version

    s = settings()
    kfp_host = host or (None if local else s.pipelines.kfp_host)
    if local == (kfp_host is not None):
        raise ValidationError("--local/--host", "give exactly one of --local or --host URL")
    if unless_serving:
        if name != "initial" or not dataset or kfp_host is not None:
            # with --host a local path names the cluster's volume, which this machine cannot see
            raise ValidationError("--unless-serving", "applies to `initial --local --dataset`")
        current = serving_version(resolve_uri(s, storage), dataset)
        if current is not None:
            print_json({"pipeline": name, "skipped": True, "serving": current,
                        "reason": f"{dataset} already serves {current}"})  # fmt: skip
            return
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
