"""Incremental fine-tuning with a gate: serving version -> fine-tune query tower + ranker on recent
events plus a replay sample (item tower frozen so the ANN index stays valid) -> compare against
serving on the newest events -> write version N+1 only when it is not worse."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from strata.engine.stages import PairSetFilter
from strata.errors import ValidationError
from strata.training.loops import RetrievalData

if TYPE_CHECKING:
    from strata.config import Settings
    from strata.training.data import Tables

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneResult:
    """The gate decision, both versions' metrics, and the new version when one was written."""

    accepted: bool
    serving_version: str
    new_version: str | None
    metrics_serving: dict[str, float]
    metrics_candidate: dict[str, float]
    reasons: list[str] = field(default_factory=list)  # why the gate refused (empty if accepted)


def gate_metrics(
    tt: Any, rk: Any, space: Any, item_emb: np.ndarray, gate: RetrievalData, rows: Any, k: int = 50
) -> dict[str, float]:
    """Hit rate@k of each gate event's item among all items, and ranker AUC on fixed gate rows
    (`rows`: the same positives and negatives for both models, rescored with each query tower)."""
    from strata.models.infer import embed_queries, score_ranker
    from strata.training.data import RankData
    from strata.training.metrics import auc

    q = embed_queries(tt, gate.query)
    sc = q @ item_emb.T  # (G, I)
    pos = sc[np.arange(len(q)), gate.item_rows - 1]
    hit = float(((sc > pos[:, None]).sum(1) < k).mean())
    score = np.einsum("rd,rd->r", q[rows.qi], item_emb[rows.item_rows - 1]).astype(np.float32)
    rd = RankData(rows.query, rows.qi, rows.item_rows, score, rows.label)
    p = score_ranker(rk, rd.batch(space, np.arange(len(rd))))
    return {f"hit_rate@{k}": hit, "ranker_auc": auc(rd.label, p)}


def finetune(
    settings: Settings,
    dataset: str,
    since: int,
    tables: Tables | None = None,
    promote: bool = True,
) -> FinetuneResult:
    """Fine-tune the serving version on events since `since` and, if the gate passes, write it
    (promoted unless `promote=False`: pipelines promote only after its ANN index is built)."""
    from strata.models.infer import embed_queries
    from strata.registry import Registry
    from strata.training.data import (
        popularity_at,
        positive_rows,
        prepare_store,
        rank_data,
        retrieval_data,
    )
    from strata.training.export import write_version
    from strata.training.gates import finetune_gate
    from strata.training.loops import seed_everything
    from strata.training.recommender import load_recommender
    from strata.training.train import fit_ranker, fit_two_tower

    cfg = settings.training
    seed = settings.seed
    seed_everything(seed, cfg.num_threads)
    reg = Registry(settings.registry_dir, dataset)
    rec = load_recommender(settings, dataset)
    store = prepare_store(settings, dataset, tables=tables)
    # Point-in-time features of every event in the log (the offline store's training set), so
    # recent events see their full history; the examples are the dataset's positives, weighted.
    ev = positive_rows(store.training_set(dataset), store.dataset_meta(dataset).get("positives"))
    ts = ev["ts"].to_numpy(np.int64)
    new_idx = np.flatnonzero(ts >= since)
    if len(new_idx) < 10:
        raise ValidationError("--since", f"only {len(new_idx)} events since {since}; need >= 10")
    space, item_emb = rec.space, rec.model_version.item_embeddings
    data = retrieval_data(space, ev)
    # The gate holds out the newest events; training uses the rest of the new ones plus replay.
    n_gate = max(int(len(new_idx) * cfg.gate_fraction), 5)
    gate_idx, fit_new = new_idx[-n_gate:], new_idx[:-n_gate]
    rng = np.random.default_rng(seed)
    old_idx = np.flatnonzero(ts < since)
    n_replay = min(len(old_idx), int(len(fit_new) * cfg.replay_ratio))
    fit_idx = np.sort(np.r_[fit_new, rng.choice(old_idx, n_replay, replace=False)]).astype(np.int64)
    before_gate = ev.iloc[: gate_idx[0]]
    seen = PairSetFilter(before_gate["user_id"].to_numpy(), before_gate["item_id"].to_numpy())
    gate = data.take(gate_idx)
    gate_users = ev["user_id"].to_numpy(np.int64)[gate_idx]
    gate_q = embed_queries(rec.two_tower, gate.query)
    rng_gate = np.random.default_rng(seed + 7)
    gate_rows = rank_data(
        space, gate_q, gate.query, gate.item_rows, gate_users, item_emb, seen, cfg, rng_gate
    )
    old = gate_metrics(rec.two_tower, rec.ranker, space, item_emb, gate, gate_rows)

    tt, rk = copy.deepcopy(rec.two_tower), copy.deepcopy(rec.ranker)
    fit = data.take(fit_idx)
    snaps = popularity_at(store, dataset, space, ts[fit_idx], int(ts.max()) + 1,
                          cfg.popularity_snapshots)  # fmt: skip
    fit_two_tower(
        tt, space, fit, cfg, seed, cfg.finetune_epochs, cfg.finetune_lr, freeze_items=True,
        snapshots=snaps,
    )  # fmt: skip
    fit_users = ev["user_id"].to_numpy(np.int64)[fit_idx]
    rd = rank_data(space, embed_queries(tt, fit.query), fit.query, fit.item_rows, fit_users,
                   item_emb, seen, cfg, rng)  # fmt: skip
    fit_ranker(rk, space, rd, cfg, seed, cfg.finetune_epochs, cfg.finetune_lr)
    new = gate_metrics(tt, rk, space, item_emb, gate, gate_rows)

    tol = cfg.gate_tolerance
    verdict = finetune_gate(old, new, tol)
    accepted = verdict.accepted
    decision = {
        "accepted": accepted,
        "reasons": verdict.reasons,
        "since": since,
        "serving_version": rec.version,
        "metrics_serving": old,
        "metrics_candidate": new,
        "gate_events": int(n_gate),
        "fit_events": {"new": len(fit_new), "replay": int(n_replay)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    reg.append_log(decision)
    new_version = None
    if accepted:
        cut = int(ts.max()) + 1
        manifest = {
            "created": decision["created"],
            "kind": "finetune",
            "parent": rec.version,
            "data_range": {
                "min_ts": int(ts.min()),
                "max_ts": int(ts.max()),
                "until": cut,
                "since": since,
                "events": len(ev),
            },
            "metrics": new,
            "finetune": decision,
            "seed": seed,
        }
        snapshot = store.latest_user_features(dataset, as_of=cut)
        new_version, _ = write_version(
            settings, dataset, space, tt, rk, item_emb, snapshot,
            ev["user_id"].to_numpy(np.int64), ev["item_id"].to_numpy(np.int64), manifest,
        )  # fmt: skip
        if promote:
            reg.promote(new_version)
    log.info("finetune %s since %s: accepted=%s old=%s new=%s", dataset, since, accepted, old, new)
    return FinetuneResult(accepted, rec.version, new_version, old, new, verdict.reasons)
