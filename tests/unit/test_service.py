"""RecommendationPipeline on a real tiny registry version with the embedded online store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from strata.config import DiversityConfig, ValkeyOnlineConfig
from strata.engine.order import genre_capped, sampled, top_k
from strata.errors import StoreUnavailableError, ValidationError
from strata.features.events import EventIngestor
from strata.features.materialize import materialize_frame
from strata.features.online.memory import MemoryOnlineStore
from strata.models.space import query_features_from_rows
from strata.serving.online import OnlineLink, StoreBreaker
from strata.serving.service import STAGES, RecommendationPipeline

from .serving_support import DATASET, serving_settings, tiny_world


@pytest.fixture
def pipe(tmp_path: Path) -> RecommendationPipeline:
    s = serving_settings(tmp_path)
    return RecommendationPipeline.load(s, DATASET, link=OnlineLink.open(s, MemoryOnlineStore()))


def _history(pipe: RecommendationPipeline, user: int) -> set[int]:
    keys = pipe.history.keys
    mine = keys[(keys >> 32) == user]
    return set((mine & 0xFFFFFFFF).tolist())


# --- breaker ---------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_breaker_fails_fast_then_probes_once_and_closes() -> None:
    clock = _Clock()
    b = StoreBreaker(0.1, 0.4, clock=clock)
    calls: list[str] = []

    def down() -> None:
        calls.append("down")
        raise StoreUnavailableError("refused")

    def up() -> str:
        calls.append("up")
        return "ok"

    with pytest.raises(StoreUnavailableError):
        b.call(down)
    assert b.is_open and "refused" in b.last_error
    # While open, nothing reaches the store.
    with pytest.raises(StoreUnavailableError, match="skipped"):
        b.call(up)
    assert calls == ["down"]
    clock.t = 0.11  # backoff passed: one probe, which fails -> backoff doubles
    with pytest.raises(StoreUnavailableError):
        b.call(down)
    clock.t = 0.11 + 0.19
    with pytest.raises(StoreUnavailableError, match="skipped"):
        b.call(up)
    clock.t = 0.11 + 0.21
    assert b.call(up) == "ok" and not b.is_open
    assert calls == ["down", "down", "up"]
    # The backoff is capped at max_s.
    for _ in range(10):
        with pytest.raises(StoreUnavailableError):
            clock.t += 10
            b.call(down)
    clock.t += 0.41
    assert b.call(up) == "ok"


# --- order helpers ---------------------------------------------------------------------------


def test_top_k_and_genre_cap() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], np.float32)
    genre = np.array([0, 0, 0, 1, -1, 1])
    assert top_k(scores[::-1].copy(), 3).tolist() == [5, 4, 3]
    pick = genre_capped(scores, genre, 4, cap=2)
    # Third genre-0 item moves behind the others; genre -1 is never capped.
    assert pick.tolist() == [0, 1, 3, 4]
    assert genre_capped(scores, genre, 6, cap=1).tolist() == [0, 3, 4, 1, 2, 5]
    s = sampled(scores, 4, DiversityConfig(type="sample", temperature=1.0))
    assert len(set(s.tolist())) == 4 and s.max() < len(scores)
    # Log-odds past float32 saturation (fused ranker logits) keep their order when sampled cold:
    # as probabilities the first three would all be 1.0 and tie.
    logit = np.array([30.0, 25.0, 20.0, 1.0, 0.0])
    cold = DiversityConfig(type="sample", temperature=0.01)
    assert sampled(logit, 3, cold, logits=True).tolist() == [0, 1, 2]
    assert (1.0 / (1.0 + np.exp(-logit[:3].astype(np.float32)))).tolist() == [1.0, 1.0, 1.0]


# --- pipeline --------------------------------------------------------------------------------


def test_recommend_orders_times_and_excludes_history(pipe: RecommendationPipeline) -> None:
    rec = pipe.recommend(1, 8, ts=1_000_100_000, device="mobile")
    assert rec.item_ids.dtype == np.int64 and len(rec.item_ids) == 8
    assert len(set(rec.item_ids.tolist())) == 8
    assert (np.diff(rec.scores) <= 1e-6).all()
    assert rec.ranker_scores is not None and np.allclose(rec.scores, rec.ranker_scores)
    assert not set(rec.item_ids.tolist()) & _history(pipe, 1)
    assert set(STAGES) <= set(rec.timings_ms) and rec.timings_ms["total"] > 0
    assert rec.model_version == "v0001" and rec.user_source == "snapshot"
    assert not rec.degraded and rec.candidates["after_filter"] <= rec.candidates["retrieved"]
    retr = pipe.recommend(1, 8, stage="retrieval")
    assert retr.ranker_scores is None and (np.diff(retr.retrieval_scores) <= 1e-6).all()


def test_cold_anonymous_and_bad_requests(pipe: RecommendationPipeline) -> None:
    cold = pipe.recommend(424242, 5)
    anon = pipe.recommend(None, 5)
    assert cold.user_source == "cold" and anon.user_source == "anonymous"
    # An unknown user and an anonymous one both get the masked defaults: same query, same items.
    assert cold.item_ids.tolist() == anon.item_ids.tolist()
    for kwargs, name in (({"k": 0}, "k"), ({"k": 10_000}, "k"), ({"device": "fridge"}, "device"),
                         ({"ts": -5}, "ts")):  # fmt: skip
        with pytest.raises(ValidationError) as err:
            pipe.recommend(1, **kwargs)
        assert err.value.field == name


def test_online_rows_match_the_snapshot(tmp_path: Path) -> None:
    """Materialized rows read back from the store give the same query as the version snapshot."""
    s = serving_settings(tmp_path)
    store = MemoryOnlineStore()
    snap = pd.read_parquet(s.registry_dir / DATASET / "v0001" / "user_features.parquet")
    materialize_frame(store, "user", snap, "user_id")
    online = RecommendationPipeline.load(s, DATASET, link=OnlineLink.open(s, store))
    offline = RecommendationPipeline.load(s, DATASET, link=OnlineLink.open(s, MemoryOnlineStore()))
    users = snap["user_id"].to_numpy()[:5]
    for u in users.tolist():
        a = online.recommend(u, 10, ts=1_000_000_000)
        b = offline.recommend(u, 10, ts=1_000_000_000)
        assert a.user_source == "online" and b.user_source == "snapshot"
        assert a.item_ids.tolist() == b.item_ids.tolist()
        assert a.feature_versions["user"] is not None


def test_events_feed_bloom_and_history(pipe: RecommendationPipeline) -> None:
    s = pipe.settings
    ing = EventIngestor(s, store=pipe.link.store, bloom=pipe.link.bloom)
    before = pipe.recommend(7, 10)
    clicked = int(before.item_ids[0])
    rep = ing.ingest(
        [{"event_id": "x1", "user_id": 7, "item_id": clicked, "type": "click", "ts": 1_000_000}]
    )
    assert rep.new == 1
    after = pipe.recommend(7, 10)
    assert clicked not in after.item_ids.tolist()  # Bloom filter: recently interacted
    # The live recent item enters the query tower's history (in the snapshot or cold path).
    ts, dev = np.array([1_000_000]), np.array(["unknown"], dtype=object)
    q, _, _ = pipe._query_features(7, ts, dev, [])
    row, _ = pipe.space.item_rows(np.array([clicked]))
    assert pipe.space.t["item_idx"][row[0]] in q.hist[0].tolist() or row[0] == 0
    # A user with no stored features but live events is no longer the anonymous query.
    ing.ingest([{"event_id": "x2", "user_id": 555, "item_id": clicked, "type": "view", "ts": 5}])
    q_new, source, _ = pipe._query_features(555, ts, dev, [])
    anon = query_features_from_rows(pipe.space, {}, np.zeros(1, bool), ts, dev, np.array([-1]))
    assert source == "cold" and not np.array_equal(q_new.hist, anon.hist)


def test_store_down_degrades_and_fails_open(tmp_path: Path) -> None:
    """A real Valkey client against a closed port: answers keep coming, flagged degraded."""
    from .serving_support import free_port

    s = serving_settings(tmp_path)
    cfg = ValkeyOnlineConfig(url=f"redis://127.0.0.1:{free_port()}/0", timeout_ms=50)
    s = s.model_copy(update={"online": cfg})
    p = RecommendationPipeline.load(s, DATASET)
    rec = p.recommend(1, 5)
    assert len(rec.item_ids) == 5 and rec.degraded
    assert any("Bloom filter skipped" in r for r in rec.degraded_reasons)
    assert rec.user_source == "snapshot"  # cached features of the version
    assert not set(rec.item_ids.tolist()) & _history(p, 1)  # exact history filter still applies
    again = p.recommend(1, 5)  # breaker open: no store round trip, same answer
    assert again.degraded and again.item_ids.tolist() == rec.item_ids.tolist()


def test_diversity_genre_cap(tmp_path: Path) -> None:
    s = serving_settings(tmp_path, diversity=DiversityConfig(type="genre_cap", genre_cap=2))
    p = RecommendationPipeline.load(s, DATASET, link=OnlineLink.open(s, MemoryOnlineStore()))
    plain = RecommendationPipeline.load(
        serving_settings(tmp_path), DATASET, link=OnlineLink.open(s, MemoryOnlineStore())
    )
    for user in (1, 2, 3, 4):
        rec = p.recommend(user, 4)
        pos, _ = p.catalog.positions(rec.item_ids)
        counts = np.bincount(p.catalog.primary_genre[pos] + 1)
        assert counts.max() <= 2  # 50 candidates always span more than two genres
        # Same candidates, only the order stage differs: the best item stays first.
        assert rec.item_ids[0] == plain.recommend(user, 4).item_ids[0]


def test_catalog_cache_follows_the_item_feature_version(pipe: RecommendationPipeline) -> None:
    ds = tiny_world()
    items = pd.DataFrame(
        {"item_id": ds.items["item_id"], "item_n_events": np.arange(len(ds.items), dtype=np.int64)}
    )
    store = pipe.link.store
    assert pipe.catalog.item(3) is not None and pipe.catalog.item(3)["features"] == {}
    materialize_frame(store, "item", items, "item_id")
    assert pipe.catalog.refresh() and not pipe.catalog.refresh()  # reload once per version
    info = pipe.catalog.item(3)
    assert info is not None and info["features"]["item_n_events"] == 2
    assert pipe.catalog.feature_version == store.active_version("item")
    # The ranker now sees live popularity: features differ from the as-of-cut table.
    ids = np.array([3, 4])
    live = pipe.engine.items.features(ids).item_num
    base = pipe.space.items(pipe.space.item_rows(ids)[0]).item_num
    assert not np.allclose(live, base)
    assert pipe.catalog.item(10**9) is None


def test_cli_serve_without_a_model_exits_2_with_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {"STRATA_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [sys.executable, "-m", "strata.cli", "serve", "--dataset", "nothing-here"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
    assert "nothing-here" in r.stderr and "strata train" in r.stderr


def test_batch_pipeline_rejects_unknown_users(pipe: RecommendationPipeline) -> None:
    out = pipe.recommend_many(np.array([1, 2]), 3, stage="retrieval")
    assert [len(r.item_ids) for r in out] == [3, 3]
    assert all(r.ranker_scores is None for r in out)
    with pytest.raises(ValidationError, match="424242"):
        pipe.recommend_many(np.array([1, 424242]), 3)
