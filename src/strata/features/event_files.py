"""Events in batch: ingest a JSONL file through `EventIngestor`, and land the durable event log
in the offline store (checkpointed, idempotent) for the next incremental training."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.progress import TaskID

from strata.atomic import atomic_write_text
from strata.errors import DataError, ValidationError
from strata.features.events import EventIngestor, EventLog, IngestReport
from strata.features.online import bulk_config, open_online_store
from strata.progress import task

if TYPE_CHECKING:
    import pandas as pd

    from strata.config import Settings

log = logging.getLogger(__name__)


def iter_jsonl(path: Path, report: IngestReport) -> Iterator[Any]:
    """Objects from a JSONL file; unparsable lines are counted as rejected (field `json`)."""
    if not Path(path).exists():
        raise DataError(path, "no such file")
    with Path(path).open("rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                report.reject(f"line {lineno}", ValidationError("json", exc.msg))
                continue
            except UnicodeDecodeError:  # json.loads(bytes) decodes first
                report.reject(f"line {lineno}", ValidationError("json", "not UTF-8 text"))
                continue
            except ValueError as exc:  # an integer beyond Python's digit limit
                report.reject(f"line {lineno}", ValidationError("json", str(exc).split(";")[0]))
                continue
            except RecursionError:
                report.reject(f"line {lineno}", ValidationError("json", "nested too deeply"))
                continue
            yield obj


def ingest_file(settings: Settings, path: Path, ingestor: EventIngestor | None = None) -> dict:
    """Ingest a JSONL file of events in batches with a progress bar; returns the report dict."""
    # A batch job, off the request path: Valkey calls may take the bulk timeout.
    ing = ingestor
    if ing is None:
        from strata.features.offline import OfflineStore

        # the served dataset's event types (what its offline log may hold)
        types = OfflineStore(settings).event_types(settings.serve.dataset)
        store = open_online_store(bulk_config(settings.online))
        ing = EventIngestor(settings, store=store, event_types=types)
    if ingestor is None and ing._stream is None:
        # Embedded mode starts empty in every process: rebuild the idempotency marks first.
        ing.recover()
    report = IngestReport()
    batch: list[Any] = []
    size = ing.config.batch_size
    with task(f"ingest {Path(path).name}") as (bar, tid):
        for obj in iter_jsonl(path, report):
            batch.append(obj)
            if len(batch) >= size:
                report.merge(ing.ingest(batch))
                bar.advance(TaskID(tid), len(batch))
                batch = []
        if batch:
            report.merge(ing.ingest(batch))
            bar.advance(TaskID(tid), len(batch))
    return report.as_dict()


def events_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Log records as an interactions table (contract columns of `strata.datasets.base`)."""
    import pandas as pd

    df = pd.DataFrame(
        {
            "event_id": pd.Series([r["event_id"] for r in records], dtype=object),
            "user_id": np.array([r["user_id"] for r in records], dtype=np.int64),
            "item_id": np.array([r["item_id"] for r in records], dtype=np.int64),
            "event_type": pd.Series([r["type"] for r in records], dtype=object),
            "value": np.array([r.get("value", 1.0) for r in records], dtype=np.float32),
            "ts": np.array([r["ts"] for r in records], dtype=np.int64),
            "device": pd.Series(
                [str(r.get("context", {}).get("device", "unknown")) for r in records], dtype=object
            ),
        }
    )
    return df.drop_duplicates("event_id", keep="first").reset_index(drop=True)


def event_logs(settings: Settings, log_name: str = "events") -> list[Path]:
    """Every event log in `events_dir`: the single process's `<log_name>.jsonl` and each
    replica's `<log_name>.<replica>.jsonl` (outboxes are not logs: they drain into them)."""
    folder = settings.events_dir
    if not folder.is_dir():
        return []
    logs = list(folder.glob(f"{log_name}.jsonl"))
    logs += [p for p in folder.glob(f"{log_name}.*.jsonl") if not p.name.endswith(".outbox.jsonl")]
    return sorted(logs)


def land_events(settings: Settings, dataset: str, log_name: str = "events") -> int:
    """Append logged events not yet landed, from every replica's log, to the offline store;
    returns rows handed over.

    Each log's landed byte offset is kept in `<events_dir>/<log file stem>.landed-<dataset>` and
    replaced atomically after `OfflineStore.append_events` (idempotent by event_id) succeeded, so
    a crash in between only re-sends events the offline store then ignores; an event logged by
    two replicas (posted to both) lands once for the same reason.
    """
    from strata.features.offline import OfflineStore

    total = 0
    for path in event_logs(settings, log_name):
        mark = path.with_name(f"{path.name.removesuffix('.jsonl')}.landed-{dataset}")
        offset = int(mark.read_text()) if mark.exists() else 0
        records, end = EventLog(path, writer=False).read(offset)
        if not records:
            continue
        OfflineStore(settings).append_events(dataset, events_frame(records))
        atomic_write_text(mark, str(end))
        total += len(records)
    return total
