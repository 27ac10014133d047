"""Crash test over the real stack: SIGKILL the worker mid-replay, restart it, and every
feature equals the ground truth computed offline from the same events; on a standalone Valkey
and on a three-primary Redis Cluster (whose live state must equal a replay into a standalone one).

100,000 real events (96,168 Taobao clicks + Online Retail orders) go through their own
topics, consumer groups and Redis database, so the rest of the suite is unaffected.
Ground truth is computed here in plain Python from the events, independently of the
feature code.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.request
from collections import Counter, defaultdict

import pytest
import redis
from confluent_kafka import Producer

from conftest import TOPOLOGIES, assert_clicks_exact, feature_state, free_port, isolated, on_topology, sync_redis
from features.keys import FeatureKeys
from features.privacy import Pseudonymiser
from replay.sources import online_retail_orders, taobao_clicks
from streamscore import stack as stk
from streamscore.topics import committed

pytestmark = pytest.mark.stack

N_EVENTS = 100_000


def _events_processed(port: int) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
    except OSError:
        return 0.0
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("streamscore_events_total{"))


@pytest.fixture(scope="module", params=TOPOLOGIES)
def crashed_and_recovered(request, stack_settings):
    s = isolated(on_topology(request, stack_settings, request.param), f"crash-{request.param}", 3,
                 worker_metrics_port=free_port(), rec_refresh_interval_s=0.0,
                 rec_popular_keep=100_000)  # no popularity shard fills: counts exact
    clicks = list(taobao_clicks(s.data_dir))
    orders = list(online_retail_orders(s.data_dir, limit=N_EVENTS - len(clicks)))
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap, "linger.ms": 20})
    for c in clicks:
        producer.produce(s.topic_clicks, key=c.user_id.encode(), value=c.to_bytes())
    for o in orders:
        producer.produce(s.topic_orders, key=o.user_id.encode(), value=o.to_bytes())
    assert producer.flush(60) == 0

    argv = [sys.executable, "-m", "streamscore", "worker"]
    pid = stk.start_process("crash-worker", argv, s.to_env(), s.run_dir)
    end = time.monotonic() + 120
    while _events_processed(s.worker_metrics_port) < 30_000:  # mid-stream
        assert time.monotonic() < end and stk.process_alive("crash-worker", s.run_dir), \
            stk.log_tail("crash-worker", s.run_dir)
        time.sleep(0.05)
    processed_at_kill = _events_processed(s.worker_metrics_port)
    os.killpg(pid, signal.SIGKILL)
    while stk.process_alive("crash-worker", s.run_dir):
        time.sleep(0.05)
    stk.stop_process("crash-worker", s.run_dir)  # clears the PID file
    assert processed_at_kill < N_EVENTS, "the worker finished before it was killed: no crash was tested"

    stk.start_process("crash-worker", argv, s.to_env(), s.run_dir)
    expected = [(s.deciding_group(t), t, n) for t, n in ((s.topic_orders, len(orders)), (s.topic_clicks, len(clicks)))]
    expected.append((s.consumer_group("pricing"), s.topic_orders, len(orders)))  # the revenue it writes
    end = time.monotonic() + 240
    while any(committed(s, g, t) < n for g, t, n in expected):
        assert time.monotonic() < end, f"worker did not catch up: {stk.log_tail('crash-worker', s.run_dir)}"
        assert stk.process_alive("crash-worker", s.run_dir), stk.log_tail("crash-worker", s.run_dir)
        time.sleep(0.5)
    reprocessed = _events_processed(s.worker_metrics_port)
    stk.stop_process("crash-worker", s.run_dir)
    return s, clicks, orders, processed_at_kill, reprocessed


def test_features_equal_ground_truth_after_sigkill(crashed_and_recovered):
    s, clicks, orders, processed_at_kill, reprocessed = crashed_and_recovered
    # at-least-once: the restarted worker re-read what the killed one had not committed
    print(f"\ncrash test: killed after {processed_at_kill:.0f} events, restarted worker read {reprocessed:.0f} "
          f"({processed_at_kill + reprocessed - N_EVENTS:.0f} read twice)")
    assert processed_at_kill + reprocessed >= N_EVENTS
    assert_clicks_exact(s, clicks)
    pseudo = Pseudonymiser(s.pii_secret.get_secret_value())
    keys = FeatureKeys(pseudo)
    r = sync_redis(s)

    # order features: windows keep [newest - retention, newest]; compare inside that window
    user_orders, item_sales = defaultdict(dict), defaultdict(dict)
    for o in orders:
        user_orders[pseudo("user", o.user_id)][f"{o.order_id}|{o.amount!r}".encode()] = o.ts
        qty = Counter()
        for line in o.items:
            qty[line.item_id] += line.quantity
        for item, q in qty.items():
            item_sales[item][f"{o.order_id}|{q}".encode()] = o.ts
    for truth, key, retention in ((user_orders, keys.user_orders, 30 * 86400), (item_sales, keys.item_sales, 7 * 86400)):
        pipe = r.pipeline()
        expected = []
        for entity, entries in truth.items():
            start = max(entries.values()) - retention
            expected.append({m for m, ts in entries.items() if ts >= start})
            pipe.zrangebyscore(key(entity), start, "+inf")
        got = [set(x) for x in pipe.execute()]
        lost = sum(len(e - g) for e, g in zip(expected, got))
        extra = sum(len(g - e) for e, g in zip(expected, got))
        assert (lost, extra) == (0, 0), f"{key.__name__}: {lost} lost, {extra} extra"


def test_live_path_equals_offline_replay(crashed_and_recovered, stack_settings):
    """Parity on real data: what the (crashed and restarted) stream wrote equals a replay of
    the same events into an empty Redis through the same feature code, key by key."""
    import asyncio

    from features.client import FeatureClient

    s, clicks, orders, *_ = crashed_and_recovered
    offline = s.replace(redis_url=stack_settings.redis_url.rsplit("/", 1)[0] + "/4", redis_topology="standalone")

    async def replay():
        client = FeatureClient.connect(offline)
        await client.redis.flushdb()
        for i in range(0, len(clicks), 500):
            await client.apply_clicks(clicks[i:i + 500], 20)
        for i in range(0, len(orders), 500):
            await client.apply_orders(orders[i:i + 500])
            await client.apply_revenue(orders[i:i + 500])  # the worker's pricing side
        await client.close()

    asyncio.run(replay())
    live = feature_state(sync_redis(s))
    batch = feature_state(redis.Redis.from_url(offline.redis_url))
    assert len(live) > 50_000  # items' small click windows live in their buckets' day hashes
    assert live.keys() == batch.keys()
    differing = [k for k in live if live[k] != batch[k]]
    print(f"\nparity: {len(live)} feature keys compared, {len(differing)} differ")
    assert not differing, differing[:5]
