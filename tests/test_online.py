"""Online fraud learning over the real stack: late labels join their scored vectors after a
worker restart, the River model is checkpointed, and a restarted worker serves exactly what
the checkpoint predicts.

Own topics, consumer groups and Redis database, so the rest of the suite is unaffected.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request

import httpx
import pytest
from confluent_kafka import Producer

from conftest import TOPOLOGIES, free_port, isolated, on_topology, sync_redis, wait_healthy
from features.keys import FeatureKeys
from features.sealing import Sealer
from replay.sources import fraud_labels, fraud_orders
from scorers.online import OnlineFraud
from streamscore import stack as stk
from streamscore.topics import committed, read_topic

pytestmark = pytest.mark.stack

N = 300


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


@pytest.fixture(scope="module", params=TOPOLOGIES)
def online_settings(request, stack_settings):
    s = isolated(on_topology(request, stack_settings, request.param), f"online-{request.param}", 5,
                 worker_metrics_port=free_port(), http_port=free_port(), rec_refresh_interval_s=0.0)
    yield s
    stk.stop_processes(["online-worker", "online-api"], s.run_dir)


def _run_worker_until(s, topic: str, n: int) -> None:
    stk.start_process("online-worker", [sys.executable, "-m", "streamscore", "worker"], s.to_env(), s.run_dir)
    end = time.monotonic() + 120
    while committed(s, s.deciding_group(topic), topic) < n:
        assert time.monotonic() < end and stk.process_alive("online-worker", s.run_dir), \
            stk.log_tail("online-worker", s.run_dir)
        time.sleep(0.3)


def _publish(s, topic: str, events, key) -> None:
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap})
    for e in events:
        producer.produce(topic, key=key(e).encode(), value=e.to_bytes())
    assert producer.flush(30) == 0


def test_labels_after_restart_join_and_restored_model_predicts_the_same(online_settings):
    s = online_settings
    # January's fraud wave, then the calmer months: both classes, in event-time order
    orders = list(fraud_orders(s.data_dir, limit=N // 2)) + list(fraud_orders(s.data_dir, since="2015-02-01",
                                                                                 limit=N // 2 + 50))
    labels = list(fraud_labels(s.data_dir, limit=N // 2)) + list(fraud_labels(s.data_dir, since="2015-02-01",
                                                                                limit=N // 2))
    scored, fresh = orders[:N], orders[N:]
    assert {lab.is_fraud for lab in labels} == {True, False}
    _publish(s, s.topic_orders, scored, lambda o: o.user_id)
    _run_worker_until(s, s.topic_orders, N)
    stk.stop_process("online-worker", s.run_dir)  # SIGTERM: vectors are in Redis, not in the worker

    _publish(s, s.topic_fraud_labels, labels, lambda lab: lab.order_id)
    _run_worker_until(s, s.topic_fraud_labels, N)
    joined = _metric(s.worker_metrics_port, 'streamscore_fraud_labels_total{outcome="joined"}')
    assert joined == N, f"{joined} of {N} labels found their scored vector after the restart"
    auc = _metric(s.worker_metrics_port, 'streamscore_model_online_auc{model="fraud"}')
    stk.stop_process("online-worker", s.run_dir)  # checkpoint on shutdown

    r = sync_redis(s)
    ckpt = FeatureKeys.checkpoint
    version = int(r.get(ckpt("fraud-online", "latest")))
    saved = OnlineFraud.from_bytes(Sealer(s.state_secret.get_secret_value()).open("checkpoint:fraud-online", r.get(ckpt("fraud-online", version))))
    assert saved.n_learned == N
    assert r.get(ckpt("fraud-challenger", "latest")) is not None  # the shadow challenger is checkpointed too
    assert saved.quality()["roc_auc"] == pytest.approx(auc) and 0.5 < auc <= 1  # prequential, exported

    # a third worker restores the checkpoint: its served scores are the saved model's blend
    _publish(s, s.topic_orders, fresh, lambda o: o.user_id)
    _run_worker_until(s, s.topic_orders, N + len(fresh))
    verdicts = {json.loads(m.value())["order_id"]: json.loads(m.value()) for m in read_topic(s, s.topic_fraud_verdicts)}
    for o in fresh:
        record = json.loads(r.get(FeatureKeys.order_record(o.order_id)))
        expected = saved.blend(record["p_triton"], saved.predict(record["x"]))
        assert verdicts[o.order_id]["score"] == pytest.approx(expected, abs=1e-9)
        assert verdicts[o.order_id]["model_version"].endswith("+river")
    assert int(r.get(ckpt("fraud-online", "latest"))) == version  # nothing new learned: no new version

    # the checkout path blends the same checkpoint: same order, same score as the stream's verdict
    stk.start_process("online-api", [sys.executable, "-m", "streamscore", "serve"], s.to_env(), s.run_dir)
    try:
        base, body = f"http://127.0.0.1:{s.http_port}", None
        wait_healthy(base, "online-api", s.run_dir, timeout_s=60)
        o = fresh[0]
        body = httpx.post(f"{base}/v1/fraud/score", content=o.to_bytes(), timeout=5,
                          headers={"Authorization": f"Bearer {s.api_token.get_secret_value()}", "Content-Type": "application/json"}).json()
        assert body["model_version"].endswith("+river"), body
        assert body["score"] == pytest.approx(verdicts[o.order_id]["score"], abs=1e-6)
    finally:
        stk.stop_process("online-api", s.run_dir)
