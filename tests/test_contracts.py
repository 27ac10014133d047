"""Settings and event contracts: parsing, validation reasons, documentation in sync."""

from __future__ import annotations

import json
import random
from typing import Optional

import pytest

from scorers.pricing import apply_guardrails
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from streamscore import events as ev
from streamscore.deadletters import DeadLetters
from streamscore.events import PARSE_REASONS, CatalogItem, Click, FraudLabel, InvalidEvent, Order, parse
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
    for env, bad in (("PRICING_POLICY", "greedy"), ("PRICE_BANDIT_OBJECTIVE", "profit")):
        with pytest.raises(ValueError, match=f"{env}='{bad}': expected one of"):
            Settings.from_env({env: bad})
    for env, bad in (("REC_ONLINE_BLEND", "yes"), ("FRAUD_CHALLENGER", "2")):  # booleans: on/off, true/false, 1/0
        with pytest.raises(ValueError, match=f"{env}='{bad}': expected on/off"):
            Settings.from_env({env: bad})


def test_config_doc_is_generated_from_settings():
    assert describe() in (ROOT / "docs" / "CONFIG.md").read_text()


@pytest.mark.parametrize("raw,reason", [
    (b"", "empty"), (b"\xff\xfe", "not_utf8"), (b"{oops", "not_json"), (b"[1]", "not_object"),
    (json.dumps({**GOOD_ORDER, "amount": "x"}).encode(), "wrong_type"),
    (json.dumps({k: v for k, v in GOOD_ORDER.items() if k != "user_id"}).encode(), "missing_field"),
    (json.dumps({**GOOD_ORDER, "surprise": 1}).encode(), "unknown_field"),
    (json.dumps({**GOOD_ORDER, "ts": 5}).encode(), "out_of_range"),
    (json.dumps({**GOOD_ORDER, "currency": "pounds"}).encode(), "invalid"),
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
    # silence + thresholds + checkpoint; recs + the funnel fold; prices
    assert timers == {"fraud": 3, "clicks": 2, "pricing": 1, "all": 6}
    assert create_app(s, role="fraud").conf.id == "streamscore-fraud"
    groups = {role: profile(s, role) for role in ("fraud", "clicks", "pricing")}
    assert {r: p.group for r, p in groups.items()} == {r: f"streamscore-{r}" for r in groups}
    assert groups["fraud"].topics == (s.topic_orders, s.topic_fraud_labels) and groups["fraud"].within_s == 0
    assert groups["clicks"].topics == (s.topic_clicks,) and groups["pricing"].topics == (s.topic_catalog, s.topic_orders)
    t = s.replace(clicks_batch_max=2345, batch_max=67, fraud_batch_max=89)  # each role its own batch size
    assert [profile(t, r).batch_max for r in ("clicks", "pricing", "fraud")] == [2345, 67, 89]
    assert s.deciding_group(s.topic_orders) == "streamscore-fraud" == s.deciding_group(s.topic_fraud_labels)


# --- strict contracts: one test per rule, a good and a bad case each, with the dead-letter reason ---

GOOD = {
    Click: {"event_id": "e1", "user_id": "u1", "item_id": "i1", "category_id": "c1", "action": "view", "ts": 1.6e9},
    Order: {**GOOD_ORDER, "currency": "GBP", "payment_fingerprint": "card:1", "device_id": "dev-1", "ip": "10.0.0.1",
            "shipping_country": "United Kingdom", "account_created_at": 1.5e9},
    FraudLabel: {"order_id": "o1", "is_fraud": True, "ts": 1.6e9, "source": "chargeback"},
    CatalogItem: {"item_id": "i1", "price": 10.0, "cost": 6.0, "stock": 10, "category_id": "c1", "ts": 1.6e9},
}
ID_FIELDS = {Click: ("event_id", "user_id", "item_id", "category_id"),
             Order: ("order_id", "user_id", "payment_fingerprint", "device_id", "ip", "shipping_country"),
             FraudLabel: ("order_id", "source"), CatalogItem: ("item_id", "category_id")}


def _reason(model, values) -> str | None:
    """None when ``values`` (a dict, sent as JSON) parse; else the dead-letter reason."""
    try:
        parse(model, json.dumps(values).encode(), 65536)
    except InvalidEvent as exc:
        assert exc.reason in PARSE_REASONS
        assert DeadLetters(Settings()).record("t", 0, 0, None, b"x", exc).reason == exc.reason
        return exc.reason
    return None


def test_good_events_of_every_topic_parse():
    for model, values in GOOD.items():
        assert _reason(model, values) is None, model
        assert parse(model, model.model_validate(values).to_bytes(), 65536) == model.model_validate(values)


@pytest.mark.parametrize("model,field,good,bad", [
    (Order, "amount", [10.5, 10], ["10.5", True, None, [10.5]]),  # an int is a number; a string or bool is not
    (Order, "ts", [1.6e9, 1_600_000_000], ["1.6e9", False]),
    (Order, "items", [[{"item_id": "i1", "price": 10.5, "quantity": 1}]],
     [[{"item_id": "i1", "price": "10.5", "quantity": 1}], [{"item_id": "i1", "price": 10.5, "quantity": 1.0}],
      [{"item_id": "i1", "price": 10.5, "quantity": "1"}], [{"item_id": "i1", "price": 10.5, "quantity": True}], "i1"]),
    (FraudLabel, "is_fraud", [True, False], ["yes", "true", 1, 0, None]),
    (CatalogItem, "stock", [0, 10], [10.0, "10", True]),
    (CatalogItem, "cost", [0, 6], ["6", False]),
    (Click, "user_id", ["u1", "user {1}: café"], [1, 1.5, True, ["u1"], {"id": 1}]),
    (Click, "action", ["view"], [1, True]),
])
def test_strict_types_wrong_type(model, field, good, bad):
    for value in good:
        values = {**GOOD[model], field: value}
        if field == "amount":
            values["items"] = [{"item_id": "i1", "price": value, "quantity": 1}]
        assert _reason(model, values) is None, value
    for value in bad:
        assert _reason(model, {**GOOD[model], field: value}) == "wrong_type", value


@pytest.mark.parametrize("model,field,good,bad", [
    (Order, "amount", [ev.MIN_AMOUNT, 1e8], [4.9e-324, 0.009, 0, -1, 1e8 + 1, 1e400]),
    (CatalogItem, "price", [ev.MIN_PRICE, 10.0], [4.9e-324, 0.0009, 0, -0.01, 1e7 + 1]),
    (CatalogItem, "cost", [0, ev.MIN_COST, 0.0006], [4.9e-324, 0.00009, -1]),
    (CatalogItem, "stock", [0, ev.MAX_STOCK], [-1, ev.MAX_STOCK + 1, 10**40, 10**400]),
    (Order, "ts", [ev.MIN_TS, ev.MAX_TS], [5, ev.MAX_TS + 1, 1e400]),
    (Order, "user_id", ["u" * 128], ["", "  ", "u" * 129]),
    (Order, "device_id", ["d"], [""]),
])
def test_ranges_and_money_floors_out_of_range(model, field, good, bad):
    def values(v):
        out = {**GOOD[model], field: v}
        if field == "amount":
            out.pop("items")
        if field == "ts":
            out.pop("account_created_at")
        if field == "price":
            out["cost"] = 0
        return out
    for value in good:
        assert _reason(model, values(value)) is None, value
    for value in bad:
        assert _reason(model, values(value)) == "out_of_range", value
    if model.model_fields[field].annotation not in (float, Optional[float]):
        return
    for token in (b"NaN", b"Infinity", b"-Infinity"):  # JSON extensions pydantic would read: refused
        raw = json.dumps(values(123.0)).encode().replace(b"123.0", token)
        with pytest.raises(InvalidEvent) as err:
            parse(model, raw, 65536)
        assert err.value.reason == "out_of_range", (field, token)


def test_line_price_may_be_zero_but_not_a_denormal():
    free = {"item_id": "gift", "price": 0, "quantity": 1}
    assert _reason(Order, {**GOOD_ORDER, "items": GOOD_ORDER["items"] + [free]}) is None
    tiny = {"item_id": "i1", "price": 5e-324, "quantity": 1}
    assert _reason(Order, {**GOOD_ORDER, "items": GOOD_ORDER["items"] + [tiny]}) == "out_of_range"
    assert _reason(Order, {**GOOD_ORDER, "items": [{"item_id": "p", "price": ev.MIN_PRICE, "quantity": 10}],
                           "amount": 0.01}) is None  # Online Retail's 0.001 GBP pads


BAD_CHARS = ["\x00", "\x07", "\x1b[31m", "\x7f", "\x85", "\u200b", "\u200d", "\u200e", "\u202a", "\u202e",
             "\u2066", "\u2069", "\ufeff", "\u2028", "\u2029", "\n", "\t", "\r"]


@pytest.mark.parametrize("model", list(ID_FIELDS))
def test_ids_without_control_or_bidi_characters(model):
    for field in ID_FIELDS[model]:
        for good in ("a:b", "{tag}", "sp ace", "café", "用户", "o}{:t", "100%", "k|v", "  padded  ", "emoji\U0001f600"):
            assert _reason(model, {**GOOD[model], field: good[:60]}) is None, (field, good)
        for ch in BAD_CHARS:
            assert _reason(model, {**GOOD[model], field: f"id{ch}x"}) == "id_bad_characters", (field, ch)
    # a lone surrogate cannot be sent as UTF-8 bytes, and its JSON escape is refused by the parser
    raw = json.dumps({**GOOD[model], ID_FIELDS[model][0]: "PLACEHOLDER"}).encode().replace(b"PLACEHOLDER", b"a\\ud800")
    with pytest.raises(InvalidEvent) as err:
        parse(model, raw, 65536)
    assert err.value.reason == "not_json"
    with pytest.raises(ValueError, match="string_unicode"):  # constructed in Python: refused too
        model.model_validate({**GOOD[model], ID_FIELDS[model][0]: "a\ud800b"})


def test_account_created_before_the_order():
    ok = [1.5e9, GOOD_ORDER["ts"], GOOD_ORDER["ts"] + ev.ACCOUNT_CLOCK_SKEW_S]  # same minute (real data), skew
    for created in ok:
        assert _reason(Order, {**GOOD[Order], "account_created_at": created}) is None, created
    for created in (GOOD_ORDER["ts"] + ev.ACCOUNT_CLOCK_SKEW_S + 1, GOOD_ORDER["ts"] + 86400):
        assert _reason(Order, {**GOOD[Order], "account_created_at": created}) == "account_after_order", created
    with pytest.raises(ValueError, match="account_after_order"):
        Order.model_validate({**GOOD[Order], "account_created_at": GOOD_ORDER["ts"] + 86400})


def test_line_totals_against_the_amount():
    lines = [{"item_id": "i1", "price": 5.25, "quantity": 2}, {"item_id": "POST", "price": 18.0, "quantity": 1}]
    total = 28.5
    for amount in (total, total + 0.01, total - 0.01, total * 1.0099, total * 0.9901):  # 0.01 or 1%
        assert _reason(Order, {**GOOD_ORDER, "items": lines, "amount": amount}) is None, amount
    for amount in (total * 1.02, total * 0.98, 0.01, 1e6):
        assert _reason(Order, {**GOOD_ORDER, "items": lines, "amount": amount}) == "lines_amount_mismatch", amount
    small = [{"item_id": "i", "price": 0.1, "quantity": 1}]  # below 1 the absolute 0.01 decides
    assert _reason(Order, {**GOOD_ORDER, "items": small, "amount": 0.11}) is None
    assert _reason(Order, {**GOOD_ORDER, "items": small, "amount": 0.12}) == "lines_amount_mismatch"
    no_items = {k: v for k, v in GOOD_ORDER.items() if k != "items"}  # e-commerce fraud purchases have none
    assert _reason(Order, {**no_items, "amount": 1234.5}) is None


def test_cost_not_above_price_beyond_clearance():
    for cost in (0, 6.0, 10.0, 25.0, 10.0 * ev.MAX_COST_TO_PRICE):  # below cost: clearance
        assert _reason(CatalogItem, {**GOOD[CatalogItem], "cost": cost}) is None, cost
    for cost in (10.0 * ev.MAX_COST_TO_PRICE + 0.01, 1e7):
        assert _reason(CatalogItem, {**GOOD[CatalogItem], "cost": cost}) == "cost_above_price", cost


def test_stock_bounded():
    assert _reason(CatalogItem, {**GOOD[CatalogItem], "stock": 10**9}) is None
    assert _reason(CatalogItem, {**GOOD[CatalogItem], "stock": 10**40}) == "out_of_range"


def test_missing_and_unknown_fields():
    for model, values in GOOD.items():
        required = [f for f, info in model.model_fields.items() if info.is_required()]
        for field in required:
            assert _reason(model, {k: v for k, v in values.items() if k != field}) == "missing_field", field
        assert _reason(model, {**values, "surprise": 1}) == "unknown_field"


def test_every_reason_is_documented():
    documented = (ev.__doc__ or "") + (parse.__doc__ or "")
    for reason in ev.DEAD_LETTER_REASONS:
        assert f"``{reason}``" in documented, reason
    from streams import validation
    for reason in ev.STREAM_REASONS - {"output_too_large"}:
        assert f"``{reason}``" in validation.__doc__, reason


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30), st.integers(),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0, 1, -1, 5e-324, 1e308, 1.6e9, 1e7, 10**9]),
    st.text(max_size=20), st.sampled_from(["", " ", "5", "1.6e9", "true", "yes", "a\u202eb", "x\x00", "\ufeff"]))
json_values = st.recursive(json_scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                                 st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                           max_leaves=8)
TOKENS = [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-0", b"1" * 400]


@hsettings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=st.sampled_from(list(GOOD)), data=st.data())
def test_parse_never_raises_anything_but_invalid_event(model, data):
    """Property: whatever JSON-ish value any field holds (or is missing, or added), parse() returns
    a valid event or raises InvalidEvent with a documented reason, never another exception."""
    values = dict(GOOD[model])
    for field in data.draw(st.lists(st.sampled_from([*model.model_fields, "items.0.price", "extra"]), max_size=3)):
        action = data.draw(st.sampled_from(["set", "set", "set", "drop", "token"]))
        if field == "items.0.price" and model is Order:
            values["items"] = [{**GOOD_ORDER["items"][0], "price": data.draw(json_values)}]
        elif action == "drop":
            values.pop(field, None)
        elif action == "token":
            values[field] = "__TOKEN__"
        else:
            values[field] = data.draw(json_values)
    raw = json.dumps(values).encode().replace(b'"__TOKEN__"', data.draw(st.sampled_from(TOKENS)))
    try:
        event = parse(model, raw, 65536)
    except InvalidEvent as exc:
        assert exc.reason in PARSE_REASONS, exc.reason
        return
    assert isinstance(event, model) and parse(model, event.to_bytes(), 65536) == event  # valid: it round-trips
