"""The spine over the real local stack: broker, worker, Valkey, tritonserver, HTTP service.

Real events from ../shared/data (fraud purchases, Online Retail orders and catalog,
Taobao clicks) plus malformed messages go in; verdicts, recommendations, price
adjustments and dead letters are checked where the shop would read them.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
import urllib.request
from itertools import islice

import httpx
import pytest
import redis
from confluent_kafka import Producer

from conftest import consume_all, wait_healthy
from features.keys import FeatureKeys
from features.privacy import Pseudonymiser
from replay.sources import fraud_orders, online_retail_catalog, online_retail_orders, taobao_clicks
from streamscore import stack as stk
from streamscore.deadletters import DeadLetters
from streamscore.events import DeadLetter, FraudVerdict, Recommendations

pytestmark = pytest.mark.stack

N_FRAUD_ORDERS, N_RETAIL_ORDERS, N_CLICKS = 60, 40, 100

MALFORMED = {
    "garbage": b"\xff\xfe\x00garbage",
    "not_json": b"{not json",
    "missing": json.dumps({"order_id": "bad-1", "ts": 1.5e9}).encode(),
    "wrong_type": json.dumps({"order_id": "bad-2", "user_id": "u", "amount": "lots", "ts": 1.5e9}).encode(),
    "oversized": b'{"order_id": "' + b"x" * 70_000 + b'"}',
}
EXPECTED_REASONS = {"garbage": "not_utf8", "not_json": "not_json", "missing": "missing_field",
                    "wrong_type": "wrong_type",
                    "oversized": "oversized"}


@pytest.fixture(scope="module")
def services(stack_settings):
    """The worker and the HTTP service as real processes over the session's stack."""
    s = stack_settings
    env = s.to_env()
    stk.start_process("worker", [sys.executable, "-m", "streamscore", "worker"], env, s.run_dir)
    stk.start_process("api", [sys.executable, "-m", "streamscore", "serve"], env, s.run_dir)
    base = f"http://127.0.0.1:{s.http_port}"
    wait_healthy(base, "api", s.run_dir, timeout_s=60)
    yield base
    stk.stop_processes(["worker", "api"], s.run_dir)


@pytest.fixture(scope="module")
def replayed(stack_settings, services):
    """Publish malformed messages first, then real events; return what was sent."""
    s = stack_settings
    data = s.data_dir
    orders = sorted(list(fraud_orders(data, limit=N_FRAUD_ORDERS)) + list(online_retail_orders(data, limit=N_RETAIL_ORDERS)),
                    key=lambda o: o.ts)  # in event-time order, as a shop emits them
    retail_items = {line.item_id for o in orders for line in o.items}
    catalog = [c for c in online_retail_catalog(data, limit=5000) if c.item_id in retail_items]
    clicks = list(islice(taobao_clicks(data), N_CLICKS))
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap, "message.max.bytes": 2_000_000})
    for name, raw in MALFORMED.items():
        producer.produce(s.topic_orders, key=name.encode(), value=raw)
    producer.produce(s.topic_clicks, key=b"garbage", value=MALFORMED["garbage"])
    for c in catalog:
        producer.produce(s.topic_catalog, key=c.item_id.encode(), value=c.to_bytes())
    producer.flush(10)
    for o in orders:
        producer.produce(s.topic_orders, key=o.user_id.encode(), value=o.to_bytes())
    for c in clicks:
        producer.produce(s.topic_clicks, key=c.user_id.encode(), value=c.to_bytes())
    assert producer.flush(30) == 0
    return {"orders": orders, "clicks": clicks, "catalog": catalog}


def test_exactly_one_wellformed_verdict_per_order(stack_settings, replayed):
    order_ids = {o.order_id for o in replayed["orders"]}
    consume_all(stack_settings, stack_settings.topic_fraud_verdicts,
                lambda ms: len({m.key() for m in ms}) >= len(order_ids))
    # read again for a few seconds: a duplicate verdict would show up as one message too many
    messages = consume_all(stack_settings, stack_settings.topic_fraud_verdicts,
                           lambda ms: len(ms) > len(order_ids), timeout_s=5)
    verdicts = [FraudVerdict.model_validate_json(m.value()) for m in messages]
    assert len(verdicts) == len(order_ids)
    assert {v.order_id for v in verdicts} == order_ids
    assert all(m.key().decode() == v.order_id for m, v in zip(messages, verdicts))
    assert not any(v.degraded for v in verdicts)
    assert all(v.model_version.startswith("fraud:") for v in verdicts)
    assert {v.verdict for v in verdicts} <= {"approve", "review", "decline"}


def test_recommendations_for_every_clicking_user(stack_settings, services, replayed):
    users = {c.user_id for c in replayed["clicks"]}
    pseudo = Pseudonymiser(stack_settings.pii_secret.get_secret_value())
    r = redis.Redis.from_url(stack_settings.redis_url)
    keys = [FeatureKeys(pseudo).recommendations(pseudo("user", u)) for u in users]
    end = time.monotonic() + 60
    while time.monotonic() < end and sum(r.exists(k) for k in keys) < len(keys):
        time.sleep(0.5)
    assert sum(r.exists(k) for k in keys) == len(keys)
    auth = {"Authorization": f"Bearer {stack_settings.api_token.get_secret_value()}"}
    with httpx.Client(base_url=services, headers=auth, timeout=5) as http:
        for u in users:
            body = http.get(f"/v1/recommendations/{u}").json()
            assert body["user_id"] == u and body["items"], body
            assert len(body["items"]) == len(body["scores"]) <= stack_settings.rec_top_k
    topic = consume_all(stack_settings, stack_settings.topic_recommendations,
                        lambda ms: {m.key().decode() for m in ms} >= {pseudo("user", u) for u in users})
    recs = [Recommendations.model_validate_json(m.value()) for m in topic]
    assert {x.user for x in recs} == {pseudo("user", u) for u in users}
    assert not any(u in m.value().decode() for m in topic for u in users), "raw user ids leaked to a topic"


def test_malformed_input_goes_to_dead_letter_and_worker_continues(stack_settings, replayed):
    expected = len(MALFORMED) + 1
    messages = consume_all(stack_settings, stack_settings.topic_dead_letter, lambda ms: len(ms) >= expected)
    opener = DeadLetters(stack_settings)  # the operator's key opens the encrypted original and key
    letters = {(d.topic, (opener.original_key(d) or b"").decode()): d
               for d in (DeadLetter.model_validate_json(m.value()) for m in messages)}
    assert len(messages) == expected
    for name, raw in MALFORMED.items():
        d = letters[(stack_settings.topic_orders, name)]
        assert d.reason == EXPECTED_REASONS[name], d
        assert d.key == opener.pseudonym(name.encode())  # keyed by the pseudonym, never the raw key
        cap = stack_settings.dead_letter_max_original_bytes  # a larger original is cut, its size and hash kept
        assert opener.original(d) == raw[:cap] and d.original_size == len(raw) \
            and d.original_truncated == (len(raw) > cap)
        assert d.original_sha256 == hashlib.sha256(raw).hexdigest()
    assert letters[(stack_settings.topic_clicks, "garbage")].reason == "not_utf8"
    # the good events after the bad ones were processed: see the verdict test; here the counters agree
    body = httpx.get(f"http://127.0.0.1:{stack_settings.worker_metrics_port}/metrics", timeout=5).text
    for reason in ("missing_field", "wrong_type"):
        assert re.search(rf'streamscore_dead_letters_total\{{reason="{reason}",topic="orders"\}} 1\.0', body), body[:2000]


def test_price_adjustments_within_guardrails(stack_settings, replayed):
    catalog = {c.item_id: c for c in replayed["catalog"]}
    messages = consume_all(stack_settings, stack_settings.topic_price_adjustments, lambda ms: len(ms) > 0, 60)
    assert messages, "no price adjustment emitted"
    for m in messages:
        adj = json.loads(m.value())
        assert adj["item_id"] in catalog
        assert abs(adj["new_price"] / adj["old_price"] - 1) <= stack_settings.price_max_change_per_hour + 1e-6


def test_triton_counted_inferences_for_every_model(stack_settings, replayed):
    consume_all(stack_settings, stack_settings.topic_price_adjustments, lambda ms: len(ms) > 0, 60)
    text = urllib.request.urlopen(f"http://{stack_settings.triton_metrics_url}/metrics", timeout=5).read().decode()
    for model in ("fraud", "recommender", "pricing"):
        found = re.findall(rf'nv_inference_request_success\{{model="{model}",version="1"\}} (\d+)', text)
        assert found and int(found[0]) > 0, f"no successful inference counted for {model}"



def _order_body(**over):
    body = {"order_id": "http-1", "user_id": "ef:http-user", "amount": 42.0, "currency": "USD", "device_id": "D1",
            "ip": "10.0.0.1", "account_created_at": 1.5e9 - 30, "ts": 1.5e9}
    body.update(over)
    return body


def test_http_fraud_score_auth_and_validation(stack_settings, services):
    auth = {"Authorization": f"Bearer {stack_settings.api_token.get_secret_value()}"}
    with httpx.Client(base_url=services, timeout=5) as http:
        assert http.post("/v1/fraud/score", json=_order_body()).status_code == 401
        assert http.post("/v1/fraud/score", json=_order_body(), headers={"Authorization": "Bearer nope"}).status_code == 401
        ok = http.post("/v1/fraud/score", json=_order_body(), headers=auth)
        assert ok.status_code == 200, ok.text
        verdict = FraudVerdict.model_validate(ok.json())
        assert verdict.degraded is False and verdict.model_version.startswith("fraud:")
        assert verdict.latency_ms < stack_settings.fraud_budget_ms
        for bad in (b"{nope", json.dumps({"order_id": "x"}).encode(), json.dumps(_order_body(amount="x")).encode(),
                    json.dumps(_order_body(extra=1)).encode()):
            r = http.post("/v1/fraud/score", content=bad, headers={**auth, "Content-Type": "application/json"})
            assert r.status_code == 422 and r.json()["detail"], r.text
        big = http.post("/v1/fraud/score", content=b"{" + b" " * 100_000 + b"}",
                        headers={**auth, "Content-Type": "application/json"})
        assert big.status_code == 413 and "larger" in big.json()["detail"]
        assert http.get("/openapi.json").json()["paths"]["/v1/fraud/score"]
        assert "streamscore_http_request_duration_seconds" in http.get("/metrics").text


def test_a_user_without_a_list_gets_what_the_worker_gives_a_user_without_history(stack_settings, services, replayed):
    """The global trending items (the replayed views, decayed), then the popular ones: the worker's fill."""
    import asyncio

    from features.client import FeatureClient
    from scorers.recommender import cold_fill, cold_list

    async def expected():
        client = FeatureClient.connect(stack_settings)
        try:
            popular, trending, _ = await client.cold_start_reads([], stack_settings.rec_top_k, None)
        finally:
            await client.close()
        fill, version = cold_fill(trending, popular)
        return cold_list([], [], fill, stack_settings.rec_top_k, version), trending

    end = time.monotonic() + 60
    before, trending = asyncio.run(expected())
    while True:  # until the clicks worker is done with the replayed views (two reads a second apart agree)
        time.sleep(1.0)
        rec, trending = asyncio.run(expected())
        if trending and rec == before:
            break
        assert time.monotonic() < end, "the trending items never settled"
        before = rec
    auth = {"Authorization": f"Bearer {stack_settings.api_token.get_secret_value()}"}
    body = httpx.get(f"{services}/v1/recommendations/never-seen-user", headers=auth, timeout=5).json()
    assert body["cold_start"] is True and body["model_version"] == "trending" == rec.model_version
    assert body["items"] == rec.items and len(body["items"]) == stack_settings.rec_top_k


def test_fraud_score_degrades_within_budget_when_triton_is_down(stack, stack_settings, services, replayed):
    """Runs last in this module: stops tritonserver, then restores it."""
    auth = {"Authorization": f"Bearer {stack_settings.api_token.get_secret_value()}"}
    stk.stop_process("triton", stack_settings.run_dir)
    try:
        with httpx.Client(base_url=services, headers=auth, timeout=5) as http:
            for n in range(10):  # first calls fail on the socket, later ones on the open circuit breaker
                t0 = time.perf_counter()
                r = http.post("/v1/fraud/score", json=_order_body(order_id=f"down-{n}"))
                elapsed_ms = (time.perf_counter() - t0) * 1e3
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["degraded"] is True and body["model_version"] == "rules-v1"
                assert body["latency_ms"] <= stack_settings.fraud_budget_ms
                assert elapsed_ms < stack_settings.fraud_budget_ms + 100  # budget + HTTP/loopback overhead
    finally:
        stack.up(timeout_s=120)


def test_redis_outage_delays_but_loses_nothing(stack, stack_settings, services, replayed):
    """Runs after the Triton test: stops Valkey, publishes orders, restarts it (empty)."""
    s = stack_settings
    dead_before = len(consume_all(s, s.topic_dead_letter, lambda ms: False, timeout_s=3))
    orders = [o for o in fraud_orders(s.data_dir, limit=N_FRAUD_ORDERS + 20)][N_FRAUD_ORDERS:]
    stk.stop_process("redis", s.run_dir)
    try:
        producer = Producer({"bootstrap.servers": s.kafka_bootstrap})
        for o in orders:
            producer.produce(s.topic_orders, key=o.user_id.encode(), value=o.to_bytes())
        assert producer.flush(10) == 0
        time.sleep(3)  # the worker is retrying: no verdict, no dead letter yet
    finally:
        stack.up(timeout_s=60)
    ids = {o.order_id for o in orders}
    got = consume_all(s, s.topic_fraud_verdicts, lambda ms: ids <= {m.key().decode() for m in ms})
    assert ids <= {m.key().decode() for m in got}
    assert len(consume_all(s, s.topic_dead_letter, lambda ms: False, timeout_s=3)) == dead_before
