"""Settings and event contracts: parsing, validation reasons, documentation in sync."""

from __future__ import annotations

import json
import random

import pytest

from scorers.pricing import apply_guardrails
from streamscore.deadletters import DeadLetters
from streamscore.events import Click, InvalidEvent, Order, parse
from streamscore.settings import ROOT, Settings, describe

GOOD_ORDER = {"order_id": "o1", "user_id": "u1", "amount": 10.5, "ts": 1.6e9,
              "items": [{"item_id": "i1", "price": 5.25, "quantity": 2}]}


def test_settings_from_env_and_clear_error():
    s = Settings.from_env({"TOPIC_PARTITIONS": "8", "FRAUD_BUDGET_MS": "80", "KAFKA_BOOTSTRAP": "k:9092"})
    assert (s.topic_partitions, s.fraud_budget_ms, s.kafka_bootstrap) == (8, 80.0, "k:9092")
    assert set(s.all_topics.values()) == {8} and len(s.all_topics) == 8
    with pytest.raises(ValueError, match="TOPIC_PARTITIONS='many'"):
        Settings.from_env({"TOPIC_PARTITIONS": "many"})
    assert Settings.from_env(s.to_env()) == s
    for env, bad in (("PRICING_POLICY", "greedy"), ("PRICE_BANDIT_OBJECTIVE", "profit"), ("REC_ONLINE_BLEND", "yes"),
                     ("FRAUD_CHALLENGER", "1")):
        with pytest.raises(ValueError, match=f"{env}='{bad}': expected one of"):
            Settings.from_env({env: bad})


def test_config_doc_is_generated_from_settings():
    assert describe() in (ROOT / "docs" / "CONFIG.md").read_text()


@pytest.mark.parametrize("raw,reason", [
    (b"", "empty"), (b"\xff\xfe", "not_utf8"), (b"{oops", "not_json"), (b"[1]", "not_object"),
    (json.dumps({**GOOD_ORDER, "amount": "x"}).encode(), "invalid"),
    (json.dumps({k: v for k, v in GOOD_ORDER.items() if k != "user_id"}).encode(), "invalid"),
    (json.dumps({**GOOD_ORDER, "surprise": 1}).encode(), "invalid"),
    (json.dumps({**GOOD_ORDER, "ts": 5}).encode(), "invalid"),
    (b"{" + b" " * 70_000 + b"}", "oversized"),
])
def test_parse_rejects_with_reason(raw, reason):
    with pytest.raises(InvalidEvent) as err:
        parse(Order, raw, 65536)
    assert err.value.reason == reason
    letters = DeadLetters(Settings())
    letter = letters.record("orders", 1, 7, b"k", raw, err.value)  # kept whole up to 64 kB, cut beyond
    assert letter.reason == reason and letters.original(letter) == raw[:65536] and letter.offset == 7
    assert letter.original_size == len(raw) and letter.original_truncated == (len(raw) > 65536)


def test_parse_round_trip():
    order = parse(Order, json.dumps(GOOD_ORDER).encode(), 65536)
    assert order.items[0].quantity == 2 and parse(Order, order.to_bytes(), 65536) == order
    click = Click(event_id="e", user_id="u", item_id="i", action="view", ts=1.6e9)
    assert parse(Click, click.to_bytes(), 1000) == click


def test_price_guardrails_hold_whatever_is_proposed():
    """Property: for random states and proposals, no guardrail is ever violated."""
    s = Settings()
    rng = random.Random(7)
    for _ in range(20_000):
        cost = rng.uniform(0, 50)
        ref = cost * rng.uniform(1.06, 3)
        price = max(cost * (1 + s.price_min_margin), min(ref * s.price_max_multiplier, ref * rng.uniform(0.5, 1.6)))
        price = round(price, 2)
        state = {"price": price, "cost": cost, "ref_price": ref, "stock": rng.choice([0, 1, 50])}
        if rng.random() < 0.3:
            state["price_changed_at"] = 1000 - rng.uniform(0, 7200)
        proposed = rng.choice([0.0, price * rng.uniform(0, 3), 1e9, -5.0])
        new, guard = apply_guardrails(state, proposed, 1000.0, s)
        if state["stock"] == 0 or (state.get("price_changed_at") is not None and 1000 - state["price_changed_at"] < 3600):
            assert new == price
            continue
        if new != price:
            assert abs(new / price - 1) <= s.price_max_change_per_hour + 1e-9
            assert new >= round(cost * (1 + s.price_min_margin), 2) - 1e-9
            assert new <= round(ref * s.price_max_multiplier, 2) + 1e-9


def test_features_doc_is_generated_from_registry():
    from features.definitions import CHECKOUT_VECTOR, FRAUD_VECTOR, REGISTRY, describe

    assert describe() in (ROOT / "docs" / "FEATURES.md").read_text()
    assert set(CHECKOUT_VECTOR) <= set(REGISTRY) and FRAUD_VECTOR == CHECKOUT_VECTOR[:len(FRAUD_VECTOR)]
    assert len(CHECKOUT_VECTOR) >= 40


def test_late_events_applied_within_allowed_lateness_dead_lettered_beyond():
    from monitoring.metrics import Metrics
    from streams.validation import Intake, RawMessage

    s = Settings.from_env({}, allowed_lateness_s=60)
    p = Intake(s, Metrics())
    clicks = [Click(event_id=f"e{i}", user_id="u", item_id="i", action="view", ts=ts)
              for i, ts in enumerate([1.6e9, 1.6e9 + 100, 1.6e9 + 50, 1.6e9 + 10, 1.6e9 + 200])]
    msgs = [RawMessage("clicks", 0, n, b"u", c.to_bytes(), 0.0) for n, c in enumerate(clicks)]
    good, dead, marks = p.validate(Click, msgs)
    p.advance(marks)
    assert [e.event_id for _, e in good] == ["e0", "e1", "e2", "e4"]  # e2 is 50 s late: applied
    assert len(dead) == 1 and b"too_late" in dead[0].value  # e3 is 90 s behind the newest: beyond 60 s
    assert p.metrics.late_events.labels("clicks", "applied")._value.get() == 1
    other_partition = RawMessage("clicks", 1, 0, b"u", clicks[3].to_bytes(), 0.0)
    assert len(p.validate(Click, [other_partition])[0]) == 1  # watermarks are per partition
    fresh = Intake(s, Metrics())
    first, second = fresh.validate(Click, msgs), fresh.validate(Click, msgs)  # a retried batch (no advance)
    assert [e.event_id for _, e in first[0]] == [e.event_id for _, e in second[0]] == ["e0", "e1", "e2", "e4"]


def test_event_from_the_future_is_dead_lettered_and_moves_no_watermark():
    import time

    from monitoring.metrics import Metrics
    from streams.validation import Intake, RawMessage

    s = Settings.from_env({}, max_clock_skew_s=300)
    p = Intake(s, Metrics())
    now = time.time()
    ts = [now - 10, now + 86400, now + 299, now - 5]  # a day ahead; within the skew; a little older
    msgs = [RawMessage("orders", 0, n, b"u", Order(order_id=f"o{n}", user_id="u", amount=1.0, ts=t).to_bytes(), 0.0)
            for n, t in enumerate(ts)]
    good, dead, marks = p.validate(Order, msgs)
    assert [e.order_id for _, e in good] == ["o0", "o2", "o3"]
    assert [json.loads(d.value)["reason"] for d in dead] == ["from_future"]
    assert marks[("orders", 0)] == pytest.approx(now + 299)  # the future order moved nothing


def test_dead_letter_of_a_huge_message_fits_the_topic():
    import hashlib

    from monitoring.metrics import Metrics
    from streams.validation import Intake, RawMessage
    from streamscore.events import DeadLetter

    s = Settings()
    raw = b'{"order_id": "' + b"x" * 800_000 + b'"}'
    dead = Intake(s, Metrics()).validate(Order, [RawMessage("orders", 0, 1, b"k" * 100_000, raw, 0.0)])[1]
    record = DeadLetter.model_validate_json(dead[0].value)
    assert record.reason == "oversized" and record.original_truncated and record.original_size == len(raw)
    assert DeadLetters(s).original(record) == raw[:s.dead_letter_max_original_bytes]
    assert record.original_sha256 == hashlib.sha256(raw).hexdigest()
    assert len(dead[0].value) + len(dead[0].key) < 200_000  # far below the producers' 1 MiB request limit


def test_worker_app_builds_for_every_role():
    """The Faust app is assembled at start of the worker: a mistake there kills every worker."""
    from streams.app import create_app, profile

    s = Settings()
    timers = {role: len(create_app(s, role=role)._app_tasks) for role in ("fraud", "clicks", "pricing", "all")}
    assert timers == {"fraud": 2, "clicks": 1, "pricing": 1, "all": 4}  # silence + checkpoint; recs; prices
    assert create_app(s, role="fraud").conf.id == "streamscore-fraud"
    groups = {role: profile(s, role) for role in ("fraud", "clicks", "pricing")}
    assert {r: p.group for r, p in groups.items()} == {r: f"streamscore-{r}" for r in groups}
    assert groups["fraud"].topics == (s.topic_orders, s.topic_fraud_labels) and groups["fraud"].within_s == 0
    assert groups["clicks"].topics == (s.topic_clicks,) and groups["pricing"].topics == (s.topic_catalog, s.topic_orders)
    assert s.deciding_group(s.topic_orders) == "streamscore-fraud" == s.deciding_group(s.topic_fraud_labels)
