"""Running the pipelines: locally with KFP's SubprocessRunner, or on a KFP API server.

`run_local` executes the same compiled components on this machine (each step in a subprocess of
this interpreter, no containers, no network); a file lock on the storage makes a second run of
the same pipeline fail fast instead of interleaving. `submit` / `schedule` talk to a KFP host.
`make_ctr_retrain` is what the CTR drift monitor's `RetrainTrigger` runs: it hands the service's
recent labelled rows to the ctr-retrain pipeline (on the KFP host when configured, locally
otherwise) and hot-reloads the service when a new version was published; the trigger's lock
keeps it to one run at a time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from strata.errors import StrataError, ValidationError
from strata.pipelines.pipelines import PIPELINES, compile_pipeline, get_pipeline, require_kfp
from strata.pipelines.storage import is_remote, local_path, resolve_uri

if TYPE_CHECKING:
    from strata.config import Settings
    from strata.ctr.service import CtrService

log = logging.getLogger(__name__)


class PipelineError(StrataError):
    """A pipeline run failed, is already running, or the KFP host refused it."""


def pipeline_params(
    name: str, storage_uri: str, **given: str | int | bool | None
) -> dict[str, str | int | bool]:
    """The run's parameters: storage plus the given ones this pipeline declares (None dropped)."""
    if name not in PIPELINES:
        raise ValidationError(
            "pipeline", f"unknown pipeline {name!r}; known: {', '.join(PIPELINES)}"
        )
    accepted = {
        "initial": {"dataset", "data_path", "until", "epochs", "encode", "images", "index_kind",
                    "serving_url"},
        "incremental": {"dataset", "index_kind", "serving_url"},
        "ctr-retrain": {"recent_uri", "serving_url"},
    }[name]  # fmt: skip
    unknown = sorted(k for k, v in given.items() if v is not None and k not in accepted)
    if unknown:
        raise ValidationError(unknown[0], f"not a parameter of pipeline {name!r}")
    params: dict[str, str | int | bool] = {"storage_uri": storage_uri}
    params.update({k: v for k, v in given.items() if v is not None})
    if name == "ctr-retrain" and not params.get("recent_uri"):
        raise ValidationError("recent_uri", "ctr-retrain needs the recent labelled data (--data)")
    return params


@contextlib.contextmanager
def _run_lock(storage_uri: str, name: str) -> Iterator[None]:
    """Exclusive per-pipeline lock on local storage (remote storage: the caller serialises)."""
    if is_remote(storage_uri):
        yield
        return
    import fcntl

    root = local_path(storage_uri)
    root.mkdir(parents=True, exist_ok=True)
    with (root / f".pipeline-{name}.lock").open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PipelineError(f"pipeline {name!r} is already running on {storage_uri}") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_local(
    name: str, params: dict[str, Any], settings: Settings, work_dir: Path | None = None
) -> dict[str, Any]:
    """Run pipeline `name` on this machine with KFP's SubprocessRunner; its final output."""
    require_kfp()
    from kfp import local

    storage = str(params["storage_uri"])
    if work_dir is None:
        work_dir = (
            Path(tempfile.mkdtemp(prefix="strata-kfp-"))
            if is_remote(storage)
            else local_path(storage) / "kfp-local"
        )
    pipeline = get_pipeline(name, settings.pipelines.image)
    with _run_lock(storage, name):
        # use_venv=False: steps run with this interpreter and its installed strata, offline.
        local.init(
            runner=local.SubprocessRunner(use_venv=False),
            pipeline_root=str(work_dir),
            raise_on_error=True,
        )
        t0 = time.perf_counter()
        try:
            # KFP's local runner prints step logs to stdout; keep stdout for the result JSON.
            with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
                # The steps run in this interpreter on purpose (the image is for clusters).
                warnings.filterwarnings("ignore", "You may be attemping", RuntimeWarning)
                task = pipeline(**params)
        except RuntimeError as exc:  # kfp reports a failed step this way; its log is above
            raise PipelineError(f"pipeline {name!r} failed: {exc}") from None
    out = dict(task.output)
    log.info("pipeline %s finished locally in %.1fs", name, time.perf_counter() - t0)
    return out


# --- KFP host ------------------------------------------------------------------------------


def _host_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the KFP host is unreachable or refused the call."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    return (OSError, urllib3.exceptions.HTTPError, ApiException)


def _client(host: str) -> Any:
    require_kfp()
    import kfp

    with warnings.catch_warnings():
        # kfp warns on every client that it needs a v2 server; ours is, and stderr stays clean.
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(host=host)


def submit(
    name: str, params: dict[str, Any], host: str, settings: Settings, wait: bool = False
) -> dict[str, Any]:
    """Compile `name` and submit one run to the KFP host (optionally wait for it to finish)."""
    cfg = settings.pipelines
    with tempfile.TemporaryDirectory(prefix="strata-kfp-") as tmp:
        package = compile_pipeline(name, Path(tmp), cfg)
        try:
            client = _client(host)
            run = client.create_run_from_pipeline_package(
                str(package), arguments=params, experiment_name=cfg.experiment,
                enable_caching=False,
            )  # fmt: skip
            out: dict[str, Any] = {"pipeline": name, "host": host, "run_id": run.run_id}
            if wait:
                done = client.wait_for_run_completion(run.run_id, timeout=cfg.run_timeout_s)
                out["state"] = str(getattr(done, "state", "unknown"))
        except _host_errors() as exc:
            raise PipelineError(f"KFP host {host}: {_first_line(exc)}") from None
    if wait and out["state"] != "SUCCEEDED":
        raise PipelineError(f"KFP run {out['run_id']} of {name!r} ended {out['state']}")
    return out


def kfp_cron(cron: str) -> str:
    """A KFP cron expression (seconds first, 6 fields) from a 5- or 6-field one."""
    fields = cron.split()
    if len(fields) == 5:
        return "0 " + " ".join(fields)
    if len(fields) == 6:
        return " ".join(fields)
    raise ValidationError("--cron", f"expected 5 or 6 space-separated fields, got {cron!r}")


def schedule(
    name: str, cron: str, params: dict[str, Any], host: str, settings: Settings
) -> dict[str, Any]:
    """Create a recurring run of `name` on the KFP host."""
    cfg = settings.pipelines
    expr = kfp_cron(cron)
    with tempfile.TemporaryDirectory(prefix="strata-kfp-") as tmp:
        package = compile_pipeline(name, Path(tmp), cfg)
        try:
            client = _client(host)
            exp = client.create_experiment(cfg.experiment)
            job = client.create_recurring_run(
                experiment_id=exp.experiment_id, job_name=f"strata-{name}", cron_expression=expr,
                pipeline_package_path=str(package), params=params, enable_caching=False,
                max_concurrency=1,
            )  # fmt: skip
        except _host_errors() as exc:
            raise PipelineError(f"KFP host {host}: {_first_line(exc)}") from None
    return {"pipeline": name, "host": host, "cron": expr, "recurring_run_id": job.recurring_run_id}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --- drift monitor -> ctr-retrain ----------------------------------------------------------


def make_ctr_retrain(
    service: CtrService,
    settings: Settings,
    storage_uri: str | None = None,
    host: str | None = None,
    serving_url: str = "",
) -> Callable[[], dict[str, Any]]:
    """The `RetrainTrigger` job: run the ctr-retrain pipeline on the service's recent labelled
    rows (KFP host if given or configured, else locally) and reload the service on success."""
    uri = resolve_uri(settings, storage_uri)
    kfp_host = host or settings.pipelines.kfp_host

    def retrain() -> dict[str, Any]:
        from strata.ctr.artifacts import ctr_registry
        from strata.ctr.service import ServedModel

        recent = service.recent_labelled()
        name = f"recent-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.npz"
        recent_uri = _write_recent(recent, uri, name)
        params = pipeline_params("ctr-retrain", uri, recent_uri=recent_uri, serving_url=serving_url)
        if kfp_host:
            return submit("ctr-retrain", params, kfp_host, settings, wait=True)
        out = run_local("ctr-retrain", params, settings)
        decision = out.get("decision", {})
        if decision.get("published") and not is_remote(uri):
            # Same machine: load the new version into the running service right away.
            s = settings.model_copy(update={"home": local_path(uri)})
            reg = ctr_registry(s)
            version = str(decision["version"])
            service.reload(ServedModel.load(reg.path(version), version))
        return out

    return retrain


def _write_recent(batch: Any, storage_uri: str, name: str) -> str:
    """Write the recent labelled batch under `<storage>/ctr/recent/` and return its URI."""
    if not is_remote(storage_uri):
        path = local_path(storage_uri) / "ctr" / "recent" / name
        batch.to_npz(path)
        return str(path)
    import fsspec

    with tempfile.TemporaryDirectory(prefix="strata-recent-") as tmp:
        local = Path(tmp) / name
        batch.to_npz(local)
        dest = storage_uri.rstrip("/") + f"/ctr/recent/{name}"
        fs, rpath = fsspec.core.url_to_fs(dest)
        fs.put(str(local), rpath)
    return dest
