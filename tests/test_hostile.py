"""Hostile input over the real stack: one bad event never stops a partition, takes its batch
neighbours with it, collides with an internal key, moves a clock, or makes an invalid score.

Sent on the same keys (so the same partitions) as the valid traffic, before and between it:
an order dated a day ahead, an order with id ``pending``, orders and clicks whose ids hold ``:``,
``{``, ``}``, spaces and a ``:t`` suffix (an item ``x:t`` next to an item ``x``), an 800 kB
message on each input topic, and an order whose blended score would exceed 1 (a device shared by
25 accounts saturates the Triton model at 1.0; a planted River checkpoint predicts 1.0 with blend
weights that sum to 1 + 2e-16). Then 200 valid real orders (e-commerce fraud purchases) and 1,000
valid real clicks (Taobao). Every valid event must be processed, every invalid one dead-lettered
with its reason, and the worker must never crash.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from itertools import islice

import pytest
from confluent_kafka import Producer

from conftest import consume_all, free_port, isolated, views_counted
from features.client import FeatureClient
from replay.sources import fraud_orders, taobao_clicks
from scorers.online import OnlineFraud
from streamscore import stack as stk
from streamscore.deadletters import DeadLetters
from streamscore.events import CatalogItem, Click, DeadLetter, FraudVerdict, Order

pytestmark = pytest.mark.stack

N_ORDERS, N_CLICKS, HOT_DEVICE_USERS = 200, 1000, 25
ODD_IDS = ["pending", "a:b", "{tag}", "x:t", "x", "sp ace id", "o}{:t", "100%", "k|v"]
BIG = b'{"order_id": "' + b"x" * 800_000 + b'"}'
# Blend weights (from these expert losses) that sum to 1.0000000000000002: 1.0 blended with 1.0
# exceeded 1 before scores were clipped (scorers/online.py, scorers/fraud.py).
OVER_ONE_LOSSES = {"triton": 0.6669556854389801, "river": 2.891365251167496}


def _saturating_river() -> bytes:
    online = OnlineFraud()
    online.model["LogisticRegression"].intercept = 100.0  # P(fraud) = 1.0 in float64, whatever x
    online.n_learned = 1000  # ready: takes part in the served score
    online.loss = dict(OVER_ONE_LOSSES)
    w = online.weights()
    assert w["triton"] * 1.0 + w["river"] * 1.0 > 1.0  # the case this test exists for
    return online.to_bytes()


@pytest.fixture(scope="module")
def hostile_run(stack_settings):
    s = isolated(stack_settings, "hostile", 9, worker_metrics_port=free_port(), rec_refresh_interval_s=0.5)
    now = time.time()

    async def plant():
        fc = FeatureClient.connect(s)
        await fc.save_checkpoint("fraud-online", _saturating_river(), 5)
        await fc.close()
    asyncio.run(plant())

    # 200 valid real orders, moved to the last minutes (live, not historical), in event-time order
    real = list(islice(fraud_orders(s.data_dir), N_ORDERS - len(ODD_IDS) - HOT_DEVICE_USERS - 1))
    span = real[-1].ts - real[0].ts or 1.0
    valid = []
    for o in real:
        ts = now - 600 + 500 * (o.ts - real[0].ts) / span
        created = None if o.account_created_at is None else o.account_created_at + (ts - o.ts)
        valid.append(o.model_copy(update={"ts": ts, "account_created_at": created}))
    t_odd = now - 60
    odd = [Order(order_id=oid, user_id=f"user {oid}", amount=10.0 + n, device_id=f"dev{{{oid}}}", ip=f"ip:{oid}",
                 payment_fingerprint=f"card:{oid}:t", items=[{"item_id": oid, "price": 10.0 + n, "quantity": 1}],
                 ts=t_odd + n) for n, oid in enumerate(ODD_IDS)]
    hot = [Order(order_id=f"hot-{n}", user_id=f"hot-user-{n}", amount=30.0, device_id="hot-device", ip="10.0.0.9",
                 ts=t_odd + 20 + n) for n in range(HOT_DEVICE_USERS)]
    over_one = Order(order_id="over-one", user_id="hot-user-x", amount=30.0, device_id="hot-device", ip="10.0.0.9",
                     ts=t_odd + 50)
    orders = valid + odd + hot + [over_one]
    assert len(orders) == N_ORDERS
    future = valid[0].model_copy(update={"order_id": "from-the-future", "ts": now + 86400})

    clicks = [c.model_copy(update={"ts": now - 300 + n * 0.1})
              for n, c in enumerate(islice(taobao_clicks(s.data_dir), N_CLICKS - len(ODD_IDS)))]
    odd_clicks = [Click(event_id=f"ev:{oid}", user_id=clicks[0].user_id, item_id=oid, category_id=f"cat:{oid}",
                        action="view", ts=now - 200 + n) for n, oid in enumerate(ODD_IDS)]
    clicks += odd_clicks

    producer = Producer({"bootstrap.servers": s.kafka_bootstrap, "message.max.bytes": 2_000_000, "linger.ms": 5})
    # hostile first, on the keys of the valid traffic, so the valid events share their partitions
    producer.produce(s.topic_orders, key=future.user_id.encode(), value=future.to_bytes())
    for topic, key in ((s.topic_orders, valid[1].user_id), (s.topic_clicks, clicks[0].user_id),
                       (s.topic_fraud_labels, valid[2].order_id), (s.topic_catalog, "x:t")):
        producer.produce(topic, key=key.encode(), value=BIG)
    producer.produce(s.topic_catalog, key=b"x:t", value=CatalogItem(item_id="x:t", price=10.0, cost=5.0, stock=3,
                                                                    ts=now - 100).to_bytes())
    for n, o in enumerate(orders):
        producer.produce(s.topic_orders, key=o.user_id.encode(), value=o.to_bytes())
        if n == N_ORDERS // 2:  # a second future order mid-stream, on a busy key
            producer.produce(s.topic_orders, key=valid[3].user_id.encode(),
                             value=future.model_copy(update={"order_id": "future-2", "user_id": valid[3].user_id}
                                                     ).to_bytes())
    for c in clicks:
        producer.produce(s.topic_clicks, key=c.user_id.encode(), value=c.to_bytes())
    assert producer.flush(30) == 0

    stk.start_process("hostile-worker", [sys.executable, "-m", "streamscore", "worker"], s.to_env(), s.run_dir)
    try:
        verdicts = consume_all(s, s.topic_fraud_verdicts, lambda ms: len({m.key() for m in ms}) >= N_ORDERS,
                               timeout_s=120)
        dead = consume_all(s, s.topic_dead_letter, lambda ms: len(ms) >= 6, timeout_s=30)
        time.sleep(2)  # let the click batches land
        alive = stk.process_alive("hostile-worker", s.run_dir)
    finally:
        stk.stop_process("hostile-worker", s.run_dir)
    log = stk.log_file("hostile-worker", s.run_dir).read_text()
    return s, orders, clicks, verdicts, dead, alive, log


def test_every_valid_order_gets_one_verdict(hostile_run):
    s, orders, _, messages, _, alive, _ = hostile_run
    verdicts = {m.key().decode(): FraudVerdict.model_validate_json(m.value()) for m in messages}
    assert alive
    assert set(verdicts) == {o.order_id for o in orders}, set(o.order_id for o in orders) - set(verdicts)
    assert "from-the-future" not in verdicts and "future-2" not in verdicts
    assert all(0.0 <= v.score <= 1.0 for v in verdicts.values())
    over = verdicts["over-one"]  # Triton 1.0, River 1.0, weights summing to 1 + 2e-16
    assert over.score == 1.0 and over.verdict == "decline" and over.model_version.endswith("+river")
    assert verdicts["pending"].order_id == "pending" and not any(v.degraded for v in verdicts.values())


def test_every_invalid_event_is_dead_lettered_with_its_reason(hostile_run):
    s, _, _, _, messages, _, _ = hostile_run
    letters = [DeadLetter.model_validate_json(m.value()) for m in messages]
    by_reason: dict[str, list[DeadLetter]] = {}
    for d in letters:
        by_reason.setdefault(d.reason, []).append(d)
    opener = DeadLetters(s)
    assert sorted(json.loads(opener.original(d))["order_id"] for d in by_reason["from_future"]) == \
        ["from-the-future", "future-2"]
    big = by_reason["oversized"]
    assert {d.topic for d in big} == set(s.input_topics)  # each input topic's 800 kB message
    for d in big:
        assert d.original_truncated and d.original_size == len(BIG) \
            and len(opener.original(d)) == s.dead_letter_max_original_bytes
    assert set(by_reason) == {"from_future", "oversized"}, {r: len(v) for r, v in by_reason.items()}
    assert all(len(m.value()) < 200_000 for m in messages)  # every dead letter fits the topic


def test_clicks_with_odd_ids_are_counted_apart_and_their_neighbours_too(hostile_run):
    s, _, clicks, _, _, _, _ = hostile_run
    expected, got = views_counted(s, clicks)
    assert got == expected  # x and x:t, pending, {tag}... each its own keys; every batch applied


def test_worker_log_shows_no_crash(hostile_run):
    *_, alive, log = hostile_run
    assert alive
    for marker in ("consumer crashed", "Crashed reason", "CRITICAL", "WRONGTYPE", "processing its events one by one"):
        assert marker not in log, marker
