"""The fraud role's decisions over real Redis: stable under redelivery, labels that arrive first,
scores that are always probabilities."""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from conftest import consume_all, free_port, isolated
from features.client import FeatureClient
from features.definitions import FRAUD_FEATURES
from monitoring.metrics import Metrics
from scorers.challenger import Challenger
from scorers.fraud import Decision, FraudDecider, Score, as_probability
from scorers.online import OnlineFraud
from streams.fraud import FraudProcessor
from streams.validation import RawMessage
from streamscore import stack as stk
from streamscore.events import FraudLabel, FraudVerdict, Order
from streamscore.settings import Settings


class FixedDecider:
    """Every order gets ``verdict`` (a decider that would decide differently on a second try)."""

    def __init__(self, verdict: str, score: float):
        self.verdict, self.score = verdict, score

    async def decide(self, orders, features, online, **_):
        return [Decision(self.score, self.verdict, ["amount_log"], "fixed:1", False, self.score, {"amount_log": 1.0})
                for _ in orders]


def _orders(n: int, prefix: str = "st") -> list[Order]:
    now = time.time()
    return [Order(order_id=f"{prefix}-{i}", user_id=f"u{i % 5}", amount=10.0 + i, ts=now - 100 + i) for i in range(n)]


def _messages(topic: str, events) -> list[RawMessage]:
    return [RawMessage(topic, 0, n, b"k", e.to_bytes(), time.time()) for n, e in enumerate(events)]


@pytest.mark.stack
def test_a_redelivered_order_gets_the_verdict_it_got_first(stack_settings):
    s = isolated(stack_settings, "stable", 11)

    async def run():
        fc = FeatureClient.connect(s)
        try:
            first = FraudProcessor(s, fc, FixedDecider("approve", 0.01), Metrics())
            orders = _orders(20)
            out1 = await first.orders(_messages(s.topic_orders, orders))
            # a crash before the commit, then another worker (deciding differently) reads the same orders
            second = FraudProcessor(s, fc, FixedDecider("decline", 0.99), Metrics())
            out2 = await second.orders(_messages(s.topic_orders, orders[5:] + _orders(3, "new")))
            return out1, out2, second.metrics.verdicts_reemitted._value.get()
        finally:
            await fc.close()

    out1, out2, reemitted = asyncio.run(run())
    first = {o.key: o.value for o in out1}
    again = {o.key: o.value for o in out2}
    assert len(first) == 20 and all(again[k] == first[k] for k in list(first)[5:])  # byte for byte
    assert {FraudVerdict.model_validate_json(again[f"new-{i}"]).verdict for i in range(3)} == {"decline"}
    assert reemitted == 15


@pytest.mark.stack
def test_labels_that_arrive_before_their_orders_are_learned_when_the_verdict_is_made(stack_settings):
    s = isolated(stack_settings, "early", 12, worker_metrics_port=free_port(), fraud_challenger=False)
    orders = _orders(60, "early")
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": s.kafka_bootstrap})
    for o in orders:  # every label first, then the orders
        producer.produce(s.topic_fraud_labels, key=o.order_id.encode(),
                         value=FraudLabel(order_id=o.order_id, is_fraud=o.amount > 40, ts=o.ts + 1).to_bytes())
    assert producer.flush(10) == 0
    stk.start_process("early-worker", [sys.executable, "-m", "streamscore", "worker", "--role", "fraud"], s.to_env(),
                      s.run_dir)
    try:
        end = time.monotonic() + 60
        while _metric(s, 'streamscore_fraud_labels_total{outcome="kept"}') < len(orders):
            assert time.monotonic() < end and stk.process_alive("early-worker", s.run_dir), \
                stk.log_tail("early-worker", s.run_dir)
            time.sleep(0.3)
        for o in orders:
            producer.produce(s.topic_orders, key=o.user_id.encode(), value=o.to_bytes())
        assert producer.flush(10) == 0
        verdicts = consume_all(s, s.topic_fraud_verdicts, lambda ms: len(ms) >= len(orders), timeout_s=60)
        end = time.monotonic() + 30
        while _metric(s, 'streamscore_fraud_labels_total{outcome="early"}') < len(orders):
            assert time.monotonic() < end, stk.log_tail("early-worker", s.run_dir)
            time.sleep(0.3)
        missing = _metric(s, 'streamscore_fraud_labels_total{outcome="missing"}')
    finally:
        stk.stop_process("early-worker", s.run_dir)
    assert len({m.key() for m in verdicts}) == len(orders)
    assert missing == 0

    async def checkpoint():
        fc = FeatureClient.connect(s)
        try:
            return await fc.load_checkpoint("fraud-online")
        finally:
            await fc.close()
    found = asyncio.run(checkpoint())  # written at shutdown
    assert found is not None and OnlineFraud.from_bytes(found[1]).n_learned == len(orders)


def _metric(s: Settings, series: str) -> float:
    import urllib.request

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{s.worker_metrics_port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


# --- every score is a probability ---------------------------------------------------------------

probabilities = st.floats(min_value=0.0, max_value=1.0)
losses = st.floats(min_value=0.0, max_value=50.0, allow_nan=False)


@hsettings(max_examples=500, deadline=None)
@given(p_triton=probabilities, p_river=probabilities, loss_t=losses, loss_r=losses)
def test_blend_is_a_probability(p_triton, p_river, loss_t, loss_r):
    online = OnlineFraud()
    online.n_learned = online.min_labels
    online.loss = {"triton": loss_t, "river": loss_r}
    assert 0.0 <= online.blend(p_triton, p_river) <= 1.0


def test_blend_of_certainties_is_exactly_one():
    """The case found in the demo: weights summing to 1 + 2e-16 made 1.0 blended with 1.0 exceed 1."""
    online = OnlineFraud()
    online.n_learned = online.min_labels
    online.loss = {"triton": 0.6669556854389801, "river": 2.891365251167496}
    assert sum(online.weights().values()) > 1.0
    assert online.blend(1.0, 1.0) == 1.0


@hsettings(max_examples=60, deadline=None)
@given(xs=st.lists(st.tuples(st.floats(-1e6, 1e6), st.floats(0, 1e9), st.booleans()), min_size=1, max_size=40),
       probe=st.tuples(st.floats(-1e12, 1e12), st.floats(0, 1e12)))
def test_challenger_predicts_probabilities_even_far_outside_its_data(xs, probe):
    c = Challenger(min_labels=10)
    for a, d, y in xs:
        c.learn({"amount_log": a, "device_users_30d": d}, y, p_champion=0.5)
    p = c.predict({"amount_log": probe[0], "device_users_30d": probe[1]})
    assert 0.0 <= p <= 1.0 and not math.isnan(p)


class _Triton:
    class metrics:
        class degraded:
            @staticmethod
            def labels(_):
                return type("C", (), {"inc": staticmethod(lambda n=1: None)})


class _Scorer:
    """Triton's answer is ``score`` (or unavailable: rules, degraded)."""

    triton = _Triton()

    def __init__(self, score: float | None):
        self.value = score

    def rules(self, f):
        return Score(0.01, "approve", [], "rules-v1", True)

    async def score(self, features, **_):
        if self.value is None:
            return [self.rules(f) for f in features]
        return [Score(self.value, "x", [], "fraud:1", False) for _ in features]


@hsettings(max_examples=200, deadline=None)
@given(p=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(1.0000000000000002)),
       floor=st.sampled_from(["approve", "review", "decline"]))
def test_decider_serves_probabilities_and_degraded_verdicts_respect_the_floor(p, floor):
    s = Settings.from_env({}, fraud_degraded_floor=floor)
    order = _orders(1)[0]
    feats = [{f.name: f.default for f in FRAUD_FEATURES}]
    [d] = asyncio.run(FraudDecider(_Scorer(p), s).decide([order], feats, None))
    assert 0.0 <= d.score <= 1.0
    if math.isnan(p):  # the model's NaN is never served: the rules decide, degraded
        assert d.degraded and d.model_version == "rules-v1"
    [down] = asyncio.run(FraudDecider(_Scorer(None), s).decide([order], None, None))  # no features, no model
    order_of = ["approve", "review", "decline"]
    assert down.degraded and order_of.index(down.verdict) >= order_of.index(floor)


def test_as_probability_refuses_nan():
    with pytest.raises(ValueError):
        as_probability(float("nan"))
    assert json.dumps(as_probability(1.0000000000000002)) == "1.0"
