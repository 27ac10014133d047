"""Nothing stored in Redis runs code: planted pickles are refused, counted, never loaded.

Over the real stack (own topics, consumer group and Redis database 14): before a worker (every
role) and the HTTP service start, a pickle that would create a marker file when loaded is planted
in every Redis place state is read from: the fraud River checkpoint (unsigned), the challenger's
checkpoint (signed with another key) and an item's pricing-bandit state (unsigned). The worker
then decides an order and prices that item, and the service answers a score. Checked: the marker
never appears; every refusal shows in ``streamscore_state_refused_total`` (worker and service);
decisions go on (a verdict, a price step) and the item's state is rewritten, sealed with the key.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
import urllib.request

import httpx
import pytest
import redis
from confluent_kafka import Producer

from conftest import free_port, isolated, wait_healthy
from features.keys import FeatureKeys
from features.sealing import RefusedState, Sealer
from streamscore import stack as stk
from streamscore.events import CatalogItem, Order, OrderLine
from streamscore.topics import read_topic

pytestmark = pytest.mark.stack

ITEM = "sealed:item"


class _Marker:
    """Unpickling this runs ``os.system('touch <path>')``: the attack."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def _counter(port: int, name: str, **labels) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name + "{") and all(w in line for w in want))


def _wait(condition, what: str, s, names, limit_s: float = 60) -> None:
    end = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"{what} not within {limit_s:.0f} s\n" +
                                 "\n".join(stk.log_tail(n, s.run_dir) for n in names))
        time.sleep(0.1)


def test_planted_pickles_never_run_and_are_counted(stack_settings, tmp_path):
    s = isolated(stack_settings, "sealed", 14, worker_metrics_port=free_port(), http_port=free_port(),
                 rec_refresh_interval_s=0.0, price_refresh_interval_s=0.05, pricing_policy="bandit")
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Marker(str(marker)))
    assert not marker.exists()
    r = redis.Redis.from_url(s.redis_url)
    ckpt = FeatureKeys.checkpoint
    r.set(ckpt("fraud-online", "latest"), 1)
    r.set(ckpt("fraud-online", 1), evil)  # unsigned
    r.set(ckpt("fraud-challenger", "latest"), 1)
    r.set(ckpt("fraud-challenger", 1), Sealer("not the service's key, but long enough").seal(
        "checkpoint:fraud-challenger", evil))  # signed, with another key
    r.hset(FeatureKeys.item_bandit(ITEM), mapping={"model": evil, "arm": "", "chosen_at": "0", "learned": "0"})
    names = ["sealed-worker", "sealed-api"]
    stk.start_process("sealed-worker", [sys.executable, "-m", "streamscore", "worker"], s.to_env(), s.run_dir)
    stk.start_process("sealed-api", [sys.executable, "-m", "streamscore", "serve"], s.to_env(), s.run_dir)
    try:
        producer = Producer({"bootstrap.servers": s.kafka_bootstrap, "linger.ms": 0})
        now = time.time()
        order = Order(order_id="sealed:o1", user_id="sealed:u1", ts=now, amount=20.0,
                      items=[OrderLine(item_id=ITEM, price=10.0, quantity=2)])
        producer.produce(s.topic_orders, key=order.order_id.encode(), value=order.to_bytes())
        producer.produce(s.topic_catalog, key=ITEM.encode(),
                         value=CatalogItem(item_id=ITEM, price=10.0, cost=5.0, stock=100, ts=now).to_bytes())
        assert producer.flush(10) == 0
        _wait(lambda: r.hget(FeatureKeys.item_catalog(ITEM), "priced_at") is not None
              and r.exists(FeatureKeys.verdict("sealed:o1")), "a verdict and a price step", s, names)
        api = f"http://127.0.0.1:{s.http_port}"
        wait_healthy(api, "sealed-api", s.run_dir)
        verdict = httpx.post(f"{api}/v1/fraud/score", headers={"Authorization": f"Bearer {s.api_token.get_secret_value()}", "Content-Type": "application/json"},
                             content=Order(order_id="sealed:o2", user_id="sealed:u2", ts=time.time(),
                                           amount=5.0).to_bytes(), timeout=5)
        assert verdict.status_code == 200, verdict.text
        time.sleep(0.5)  # any late loader would have run by now

        assert not marker.exists(), "a planted pickle was loaded and ran"
        w, a = s.worker_metrics_port, s.http_port
        refused = "streamscore_state_refused_total"
        assert _counter(w, refused, state="fraud-online", reason="unsigned") >= 1
        assert _counter(w, refused, state="fraud-challenger", reason="bad_signature") >= 1
        assert _counter(w, refused, state="pricing-bandit", reason="unsigned") >= 1
        assert _counter(a, refused, state="fraud-online", reason="unsigned") >= 1
        # decisions went on, and the item's bandit was started afresh and stored sealed with the key
        assert [m for m in read_topic(s, s.topic_fraud_verdicts) if m.key() == b"sealed:o1"]
        stored = r.hget(FeatureKeys.item_bandit(ITEM), "model")
        assert stored != evil and Sealer(s.state_secret.get_secret_value()).open(f"bandit:{ITEM}", stored)
        with pytest.raises(RefusedState):  # sealed for this item only
            Sealer(s.state_secret.get_secret_value()).open("bandit:another-item", stored)
    finally:
        stk.stop_processes(names, s.run_dir)
    assert not marker.exists()



def test_the_refusal_metric_knows_every_sealed_state_and_reason():
    from features import sealing
    from monitoring.metrics import REFUSAL_REASONS, STORED_STATES

    assert set(REFUSAL_REASONS) == set(sealing.REASONS)
    names = {"fraud-online", "fraud-challenger"}  # the checkpoints the fraud role and the API load
    assert names | {"pricing-bandit"} == set(STORED_STATES)
