"""The online recommendation signal: co-visitation counted per click in Redis, rank-fused with the
Triton model's list.

* the blend (pure functions shared by the live worker and ``evaluation.recs_online``);
* the Redis counts (CLICKS Lua script) equal the offline experiment's mirror on real Taobao clicks,
  and a redelivered batch changes nothing;
* over the real stack (own topics, app id and Redis db 10): after real Taobao clicks and a burst
  of users viewing a brand-new item X right after item A, a new user who views A gets X in their
  stored recommendations within seconds, and a user whose only view is X (unknown to the model)
  gets co-visited items instead of popularity alone.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import numpy as np
import pytest
import redis
from confluent_kafka import Producer

from conftest import free_port, isolated
from evaluation.recs_online import CoVisitation
from features.client import FeatureClient
from features.keys import FeatureKeys
from features.privacy import Pseudonymiser
from features.snapshot import temporary_redis
from features.store import COVIS_KEEP
from models import common
from replay.sources import taobao_clicks
from scorers.recommender import blend, covis_candidates
from streamscore import stack as stk
from streamscore.events import Click
from streamscore.settings import ROOT, Settings
from streamscore.topics import committed


# -- the blend ----------------------------------------------------------------------------------------

def test_blend_keeps_the_model_list_at_weight_zero_and_admits_a_strong_new_item():
    base = [f"m{i}" for i in range(20)]
    assert [j for j, _ in blend(base, [("new", 5.0)], 10, 0.0)] == base[:10]
    fused = [j for j, _ in blend(base, [("new", 5.0), ("m15", 1.0)], 10, 0.5)]
    # m15 is in both lists: it rises from rank 16 to the top; "new" ties with m0 and ties go to the model's order
    assert len(fused) == 10 and fused[:3] == ["m15", "m0", "new"]
    assert [j for j, _ in blend([], [("a", 1.0), ("b", 0.5)], 10, 0.5)] == ["a", "b"]  # no base list: co-visitation


def test_covis_candidates_weigh_newer_history_items_more_and_never_return_history():
    nb = {"new": [("x", 1.0), ("old", 4.0)], "old": [("y", 1.8), ("new", 4.0)]}
    assert covis_candidates(["new", "old"], nb) == [("x", 1.0), ("y", 0.9)]
    assert covis_candidates(["old", "new"], nb) == [("y", 1.8), ("x", 0.5)]
    assert covis_candidates(["a"] * 5 + ["new"], nb) == []  # only the 5 newest history items count


# -- Redis counts == the offline mirror ---------------------------------------------------------------

def test_redis_covisitation_equals_the_offline_mirror_and_is_idempotent():
    clicks = list(taobao_clicks(Settings.from_env().data_dir, limit=6000))
    half_life = 5.0  # seconds: decay and epoch rescaling both happen within these ~7 minutes

    async def scenario(url):
        s = Settings.from_env({}, redis_url=url, rec_covis_half_life_s=half_life)
        client = FeatureClient.connect(s)
        await client.redis.flushdb()
        try:
            for i in range(0, len(clicks), 500):
                await client.apply_clicks(clicks[i:i + 500], 20)
            items = sorted({c.item_id for c in clicks})
            ts = clicks[-1].ts
            first = await client.covis_neighbours(items, ts)
            await client.apply_clicks(clicks[-1500:], 20)  # redelivered: counted once
            again = await client.covis_neighbours(items, ts)
            ttls = [await client.redis.ttl(k) async for k in client.redis.scan_iter(FeatureKeys.pattern("cv"))]
            return items, ts, first, again, ttls, s
        finally:
            await client.close()

    with temporary_redis() as url:
        items, ts, live, again, ttls, s = asyncio.run(scenario(url))
    mirror = CoVisitation(half_life)
    for c in clicks:
        if c.action == "view":
            mirror.view(Pseudonymiser(s.pii_secret.get_secret_value())("user", c.user_id), c.item_id, ts=c.ts)
    offline = mirror.neighbours(items, ts)
    assert len(live) > 500 and set(live) == set(offline)
    for item in offline:
        assert [j for j, _ in live[item]] == [j for j, _ in offline[item]], item
        assert [w for _, w in live[item]] == pytest.approx([w for _, w in offline[item]], rel=1e-9, abs=1e-300)
    assert again == live
    assert ttls and all(0 < t <= s.feature_ttl_s for t in ttls)
    assert max(len(v) for v in mirror.weights.values()) <= COVIS_KEEP


# -- live, over the real stack --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def recs_settings(stack_settings):
    s = isolated(stack_settings, "recson", 10, worker_metrics_port=free_port(), http_port=free_port(),
                 rec_online_blend=True)
    yield s
    stk.stop_processes(["recson-worker"], s.run_dir)


def _publish(s, clicks) -> None:
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap})
    for c in clicks:
        producer.produce(s.topic_clicks, key=c.user_id.encode(), value=c.to_bytes())
    assert producer.flush(30) == 0


def _wait_committed(s, n: int) -> None:
    end = time.monotonic() + 120
    while committed(s, s.deciding_group(s.topic_clicks), s.topic_clicks) < n:  # the clicks role's group
        assert time.monotonic() < end and stk.process_alive("recson-worker", s.run_dir), \
            stk.log_tail("recson-worker", s.run_dir)
        time.sleep(0.2)


def _stored(r, pseudo, user: str) -> dict | None:
    raw = r.get(FeatureKeys(pseudo).recommendations(pseudo("user", user)))
    return json.loads(raw) if raw else None


@pytest.mark.stack
def test_new_item_reaches_a_new_user_within_seconds(recs_settings):
    s = recs_settings
    vocab = np.load(common.version_dir(ROOT / "triton_repo", "recommender") / "items.npy").tolist()
    real = list(taobao_clicks(s.data_dir, limit=2000))
    a, x = vocab[0], "tb:brand-new-item-x"  # A: an item the model knows; X: one it cannot know
    assert x not in vocab
    t0 = max(c.ts for c in real) + 10
    burst = [Click(event_id=f"burst-{u}-{k}", user_id=f"burst-user-{u}", item_id=item, action="view", ts=t0 + u + k)
             for u in range(30) for k, item in enumerate((a, x))]
    stk.start_process("recson-worker", [sys.executable, "-m", "streamscore", "worker"], s.to_env(), s.run_dir)
    _publish(s, real + burst)
    _wait_committed(s, len(real) + len(burst))

    r, pseudo = redis.Redis.from_url(s.redis_url), Pseudonymiser(s.pii_secret.get_secret_value())
    assert r.zscore(FeatureKeys.covis(a), x) == pytest.approx(30, rel=0.01)  # 30 users, 1 each, decay ~ 0 over 30 s
    warm = Click(event_id="new-user-a", user_id="new-user-warm", item_id=a, action="view", ts=t0 + 60)
    cold = Click(event_id="new-user-x", user_id="new-user-cold", item_id=x, action="view", ts=t0 + 60)
    start = time.monotonic()
    _publish(s, [warm, cold])
    recs, end = {}, start + 60
    while time.monotonic() < end and len(recs) < 2:
        for u in ("new-user-warm", "new-user-cold"):
            if u not in recs and (got := _stored(r, pseudo, u)) is not None:
                recs[u] = (got, time.monotonic() - start)
        time.sleep(0.05)
    assert len(recs) == 2, stk.log_tail("recson-worker", s.run_dir)
    (w, w_s), (c, c_s) = recs["new-user-warm"], recs["new-user-cold"]
    print(f"time to appear: warm user {w_s:.2f} s, cold user {c_s:.2f} s")
    # the model knows A and ranks its own 20 items; X comes from the co-visitation counts alone
    assert x in w["items"] and w["items"].index(x) < 3, w
    assert not w["cold_start"] and w["model_version"].startswith("recommender:") and w["model_version"].endswith("+covis")
    assert len(w["items"]) == s.rec_top_k and a not in w["items"]
    # the model knows nothing of X (and X has no category): the global trending items, with X's co-visited A
    # fused in first (tests/test_cold_start.py: a user with category views gets their categories' trends)
    assert c["cold_start"] and c["model_version"] == "trending+covis", c
    assert c["items"][0] == a and x not in c["items"]
