"""Live fuzz over the real stack: one worker (all roles) under 5,000 hostile messages per input topic.

On every input topic (clicks, orders, fraud-labels, catalog), seeded hostile messages (not JSON,
random bytes, JSON that is no object, wrong types, bad ids with control/bidi characters, huge and
denormal numbers, NaN, missing and unknown fields, cross-field violations: account created after
its order, lines against the amount, cost above price, empty and oversized values) are interleaved,
on the same keys (so the same partitions), with valid real events (e-commerce fraud and Online
Retail orders, their labels, Taobao clicks, the Online Retail catalog). Each hostile message is
checked to be refused by :func:`streamscore.events.parse` here first, which gives its expected
reason. Then: the worker never crashed, every valid order got one verdict, every valid click is
counted, the deciding groups committed every offset, and exactly the hostile messages are on the
dead-letter topic, each with the reason ``parse`` gave (a documented one).
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from collections import Counter
from itertools import islice

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from conftest import consume_all, free_port, isolated, views_counted
from replay.sources import fraud_labels, fraud_orders, online_retail_catalog, online_retail_orders, taobao_clicks
from streamscore import stack as stk
from streamscore.events import (DEAD_LETTER_REASONS, PARSE_REASONS, CatalogItem, Click, DeadLetter, FraudLabel,
                                InvalidEvent, Order, parse)

pytestmark = pytest.mark.stack

N_HOSTILE = 5000  # per input topic
N_FRAUD_ORDERS, N_RETAIL_ORDERS, N_CLICKS, N_CATALOG = 200, 100, 400, 200
SEED = 15

BAD_CHARS = ["\x00", "\x01", "\x07", "\x1b[2J", "\x7f", "\x85", "\x9b", "\u200b", "\u200c", "\u200d", "\u200e",
             "\u202a", "\u202b", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069", "\ufeff", "\u2028",
             "\u2029", "\u00ad", "\n", "\r", "\t"]
HOSTILE_NUMBERS = ["5", "1.5", "", "yes", "true", True, False, None, [], {}, [1], {"v": 1}, -1, 0, -1e308, 4.9e-324,
                   5e-324, 1e-300, 1e308, 10**40, -(10**40), 2**63, 2**64, 1.5e9 * 1000]
TOKENS = [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"9" * 500]
ID_FIELDS = {Click: ("event_id", "user_id", "item_id", "category_id"),
             Order: ("order_id", "user_id", "payment_fingerprint", "device_id", "ip", "shipping_country"),
             FraudLabel: ("order_id", "source"), CatalogItem: ("item_id", "category_id")}


def _reason(model, raw: bytes, max_bytes: int) -> str | None:
    try:
        parse(model, raw, max_bytes)
    except InvalidEvent as exc:
        return exc.reason
    return None


def _mutate(rng: random.Random, model, good: dict, now: float) -> bytes:
    """One hostile value of ``model``'s topic, built from a valid event's fields ``good``."""
    kind = rng.randrange(14)
    v = dict(good)
    fields = list(model.model_fields)
    if kind == 0:  # not JSON
        return rng.choice([b"{", b"{oops", b'{"a": }', b"<xml/>", b"\x00\x01", b"{'single': 1}",
                           json.dumps(v).encode()[:-1], b"NaN", b"{} {}"]) + bytes([rng.randrange(33, 127)])
    if kind == 1:  # random bytes (most are not UTF-8)
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    if kind == 2:  # JSON, but no object
        return json.dumps(rng.choice([[v], 5, "text", None, True, [], 1.5, [1, 2]])).encode()
    if kind == 3:  # a number or boolean field of the wrong type, out of range, or denormal
        numeric = [f for f in fields if f in ("amount", "ts", "price", "cost", "stock", "is_fraud",
                                              "account_created_at", "quantity")]
        v[rng.choice(numeric)] = rng.choice(HOSTILE_NUMBERS)
    elif kind == 4:  # NaN / inf / huge tokens
        numeric = [f for f in fields if f in ("amount", "ts", "price", "cost", "stock", "account_created_at")]
        v[rng.choice(numeric)] = "__TOKEN__"
        return json.dumps(v).encode().replace(b'"__TOKEN__"', rng.choice(TOKENS))
    elif kind == 5:  # an id with a control, format or bidi character inside
        f = rng.choice(ID_FIELDS[model])
        base = str(v.get(f) or "id")[:40]
        cut = rng.randrange(len(base) + 1)
        v[f] = base[:cut] + rng.choice(BAD_CHARS) + "x" + base[cut:]
    elif kind == 6:  # an id of the wrong type, empty or too long
        v[rng.choice(ID_FIELDS[model])] = rng.choice([1, 2.5, True, None, ["a"], {"id": 1}, "", " ", "x" * 200])
    elif kind == 7:  # a required field missing
        v.pop(rng.choice([f for f, info in model.model_fields.items() if info.is_required()]))
    elif kind == 8:  # an unknown field
        v[rng.choice(["surprise", "Amount", "user", "is_fraud ", "\u202eid"])] = rng.choice([1, "x", None])
    elif kind == 9:  # a bad enum / pattern value
        if model is Click:
            v["action"] = rng.choice(["jump", "VIEW", "", 1, None])
        elif model is Order:
            v["currency"] = rng.choice(["gbp", "POUND", "", "G\u200bB", 826])
        else:
            v["ts"] = rng.choice([0, 5, 946_684_799, 4_102_444_801, "now"])
    elif kind == 10:  # cross-field violations
        if model is Order:
            if rng.random() < 0.5:
                v["account_created_at"] = v["ts"] + rng.choice([301, 3600, 86400 * 365])
            else:
                v["items"] = [{"item_id": "fz:i", "price": 10.0, "quantity": rng.randrange(1, 5)}]
                v["amount"] = rng.choice([0.01, 1.0, 100000.0, 10.0 * rng.randrange(6, 50)])
        elif model is CatalogItem:
            v["cost"] = v["price"] * rng.choice([10.5, 20, 1000]) + 1
        else:
            v["ts"] = rng.choice([-1, 1e12])
    elif kind == 11:  # an order line of the wrong type or out of range
        if model is Order:
            v["items"] = [{"item_id": "fz:i", "price": rng.choice(["1", True, -1, 5e-324, 1e8]),
                           "quantity": rng.choice([0, 1.0, "1", 10**6, True])}]
            v["amount"] = 1.0
        else:
            v = {"surprise": True, **v}
    elif kind == 12:  # empty or oversized
        if rng.random() < 0.9:
            return rng.choice([b"", b" ", b"\n"])
        return rng.choice([b"{" + b" " * 70_000 + b"}", b'{"x": "' + b"y" * 66_000 + b'"}'])
    else:  # many things wrong at once
        for f in rng.sample(fields, k=min(3, len(fields))):
            v[f] = rng.choice(HOSTILE_NUMBERS + ["\u202e", "a\x00"])
    return json.dumps(v).encode()


def _interleave(rng: random.Random, valid: list, hostile: list) -> list:
    """``valid`` and ``hostile`` merged at random, each in its own order."""
    out, i, j = [], 0, 0
    while i < len(valid) or j < len(hostile):
        if j >= len(hostile) or (i < len(valid) and rng.random() < (len(valid) - i) / (len(valid) - i + len(hostile) - j)):
            out.append(valid[i])
            i += 1
        else:
            out.append(hostile[j])
            j += 1
    return out


def _shift(events: list, now: float, start: float, span: float) -> list:
    """Event times moved into ``[now - start, now - start + span]``, order kept (live, not history)."""
    t0, t1 = events[0].ts, events[-1].ts
    scale = span / ((t1 - t0) or 1.0)
    return [e.model_copy(update={"ts": now - start + (e.ts - t0) * scale}) for e in events]


def _committed_cover(s, group: str, topic: str, timeout_s: float = 30) -> tuple[bool, dict]:
    c = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        parts = [TopicPartition(topic, p) for p in range(s.topic_partitions)]
        end = time.monotonic() + timeout_s
        while True:
            highs = {p.partition: c.get_watermark_offsets(p, timeout=5)[1] for p in parts}
            done = {p.partition: p.offset for p in c.committed(parts, timeout=5)}
            if all(done[p] >= h for p, h in highs.items() if h > 0) or time.monotonic() > end:
                return all(done[p] >= h for p, h in highs.items() if h > 0), {"high": highs, "committed": done}
            time.sleep(0.5)
    finally:
        c.close()


@pytest.fixture(scope="module")
def fuzz_run(stack_settings):
    s = isolated(stack_settings, "fuzz", 4, worker_metrics_port=free_port())
    rng = random.Random(SEED)
    now = time.time()

    fraud = list(islice(fraud_orders(s.data_dir, since="2015-03-01"), N_FRAUD_ORDERS))
    shifted = _shift(fraud, now, 600, 400)
    fraud = [o.model_copy(update={"account_created_at": None if o.account_created_at is None
                                  else min(o.account_created_at + (n.ts - o.ts), n.ts), "ts": n.ts})
             for o, n in zip(fraud, shifted)]
    retail = _shift(list(islice(online_retail_orders(s.data_dir), N_RETAIL_ORDERS)), now, 590, 400)
    orders = sorted(fraud + retail, key=lambda o: o.ts)
    by_id = {o.order_id: o for o in fraud}
    labels = [lb.model_copy(update={"ts": by_id[lb.order_id].ts + 30})
              for lb in islice(fraud_labels(s.data_dir, since="2015-03-01"), N_FRAUD_ORDERS)]
    labels.sort(key=lambda lb: lb.ts)
    clicks = _shift(list(islice(taobao_clicks(s.data_dir), N_CLICKS)), now, 500, 300)
    catalog = _shift(list(islice(online_retail_catalog(s.data_dir), N_CATALOG)), now, 500, 300)

    plan = {  # topic: (model, valid events, their keys)
        s.topic_orders: (Order, orders, [o.user_id for o in orders]),
        s.topic_fraud_labels: (FraudLabel, labels, [lb.order_id for lb in labels]),
        s.topic_clicks: (Click, clicks, [c.user_id for c in clicks]),
        s.topic_catalog: (CatalogItem, catalog, [c.item_id for c in catalog]),
    }
    expected: dict[str, Counter] = {}  # topic -> Counter of (sha256 of the original, reason)
    sends: dict[str, list] = {}
    for topic, (model, events, keys) in plan.items():
        hostile, expected[topic] = [], Counter()
        while len(hostile) < N_HOSTILE:
            n = rng.randrange(len(events))
            base = json.loads(events[n].to_bytes())
            raw = _mutate(rng, model, base, now)
            reason = _reason(model, raw, s.max_event_bytes)
            if reason is None:
                continue  # the mutation happened to be valid: not hostile
            assert reason in PARSE_REASONS
            key = keys[n].encode() if rng.random() < 0.9 else bytes(rng.randrange(256) for _ in range(8))
            hostile.append((key, raw))
            expected[topic][(hashlib.sha256(raw).hexdigest(), reason)] += 1
        valid = [(k.encode(), e.to_bytes()) for k, e in zip(keys, events)]
        sends[topic] = _interleave(rng, valid, hostile)

    producer = Producer({"bootstrap.servers": s.kafka_bootstrap, "message.max.bytes": 2_000_000, "linger.ms": 20,
                         "queue.buffering.max.messages": 200_000})
    longest = max(len(m) for m in sends.values())
    for start in range(0, longest, 50):  # the topics interleaved too, 50 messages of each in turn
        for topic, messages in sends.items():
            for key, value in messages[start:start + 50]:
                producer.produce(topic, key=key, value=value)
            producer.poll(0)
    assert producer.flush(60) == 0

    n_hostile = N_HOSTILE * len(plan)
    t0 = time.monotonic()
    stk.start_process("fuzz-worker", [sys.executable, "-m", "streamscore", "worker"], s.to_env(), s.run_dir)
    try:
        verdicts = consume_all(s, s.topic_fraud_verdicts, lambda ms: len({m.key() for m in ms}) >= len(orders),
                               timeout_s=90)
        dead = consume_all(s, s.topic_dead_letter, lambda ms: len(ms) >= n_hostile, timeout_s=60)
        covered = {t: _committed_cover(s, s.deciding_group(t), t) for t in plan}
        elapsed = time.monotonic() - t0
        alive = stk.process_alive("fuzz-worker", s.run_dir)
    finally:
        stk.stop_process("fuzz-worker", s.run_dir)
    log = stk.log_file("fuzz-worker", s.run_dir).read_text(errors="replace")
    return dict(s=s, plan=plan, expected=expected, verdicts=verdicts, dead=dead, covered=covered, alive=alive,
                log=log, elapsed=elapsed, orders=orders, clicks=clicks)


def test_live_fuzz(fuzz_run):
    r = fuzz_run
    letters = [DeadLetter.model_validate_json(m.value()) for m in r["dead"]]
    got: dict[str, Counter] = {t: Counter() for t in r["plan"]}
    for d in letters:
        got.setdefault(d.topic, Counter())[(d.original_sha256, d.reason)] += 1
    verdicts = {m.key().decode() for m in r["verdicts"]}
    by_reason = Counter((d.topic.removeprefix("fuzz-"), d.reason) for d in letters)
    print(f"\nlive fuzz: worker up {r['elapsed']:.1f}s; hostile sent per topic: "
          f"{ {t.removeprefix('fuzz-'): sum(c.values()) for t, c in r['expected'].items()} }; valid sent: "
          f"{ {t.removeprefix('fuzz-'): len(p[1]) for t, p in r['plan'].items()} }")
    print(f"dead letters: {len(letters)}, by reason: {dict(Counter(d.reason for d in letters).most_common())}")
    print(f"dead letters by topic and reason: {dict(sorted(by_reason.items()))}")
    print(f"verdicts: {len(verdicts)} for {len(r['orders'])} valid orders; offsets covered: "
          f"{ {t.removeprefix('fuzz-'): ok for t, (ok, _) in r['covered'].items()} }")

    assert r["alive"], r["log"][-3000:]
    for marker in ("Traceback", "consumer crashed", "Crashed reason", "CRITICAL", "processing its events one by one"):
        assert marker not in r["log"], (marker, r["log"][r["log"].find(marker) - 500:][:3000])
    assert verdicts == {o.order_id for o in r["orders"]}, len(verdicts)
    for topic, (ok, detail) in r["covered"].items():
        assert ok, (topic, detail)
    for topic, want in r["expected"].items():  # exactly the hostile ones, each with parse()'s reason
        assert got[topic] == want, (topic, sum(got[topic].values()), sum(want.values()),
                                    list((want - got[topic]).items())[:5], list((got[topic] - want).items())[:5])
    assert {d.reason for d in letters} <= PARSE_REASONS <= DEAD_LETTER_REASONS


def test_live_fuzz_valid_clicks_all_counted(fuzz_run):
    expected, got = views_counted(fuzz_run["s"], fuzz_run["clicks"])
    assert got == expected
