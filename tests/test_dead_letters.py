"""Dead letters keep no personal data in clear, and an operator with the key can inspect and replay them.

Over the real stack (own topics, group and Redis database 7): a fraud worker whose
``MAX_EVENT_BYTES`` is too small for real orders dead-letters them as ``oversized``; the letters
are keyed by the pseudonym, hold no user id, IP, device or card in clear, and ``streamscore
dead-letters list`` shows none either. ``show`` (with ``DEAD_LETTER_KEY``) gives the originals
back; with another key it refuses. After the fix (the limit raised, the worker restarted),
``replay --reason oversized`` re-publishes them with their original keys and each gets a verdict.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from confluent_kafka import Producer

from conftest import consume_all, free_port, isolated
from streamscore import stack as stk
from streamscore.deadletters import DeadLetters, redacted
from streamscore.events import DeadLetter, Order, OrderLine
from streamscore.topics import read_topic

pytestmark = pytest.mark.stack

N = 5


def _orders(now: float) -> list[Order]:
    return [Order(order_id=f"dl:o{i}", user_id=f"dl-alice-{i}", ts=now, amount=12.5, ip=f"203.0.113.{i + 10}",
                  device_id=f"dl-device-{i}", payment_fingerprint=f"dl-card-{i}", shipping_country="GB",
                  items=[OrderLine(item_id=f"dl:item{i}", price=12.5, quantity=1)]) for i in range(N)]


def _cli(s, *args, env_over: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamscore", "dead-letters", *args, "--read-s", "20"],
                          env={**s.to_env(), **(env_over or {})}, capture_output=True, text=True, timeout=120)


def test_dead_letters_hide_personal_data_and_replay_after_a_fix(stack_settings):
    s = isolated(stack_settings, "deadl", 7, worker_metrics_port=free_port(), fraud_challenger=False,
                 max_event_bytes=200)  # too small for these orders: each one is dead-lettered as oversized
    orders = _orders(time.time())
    personal = [v for o in orders for v in (o.user_id, o.ip, o.device_id, o.payment_fingerprint)]
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap, "linger.ms": 0})
    for o in orders:
        assert len(o.to_bytes()) > s.max_event_bytes
        producer.produce(s.topic_orders, key=o.user_id.encode(), value=o.to_bytes())
    assert producer.flush(10) == 0
    worker = ["deadl-worker"]
    stk.start_process(worker[0], [sys.executable, "-m", "streamscore", "worker", "--role", "fraud"], s.to_env(),
                      s.run_dir)
    try:
        messages = consume_all(s, s.topic_dead_letter, lambda ms: len(ms) >= N)
        assert len(messages) == N
        letters = DeadLetters(s)
        for m in messages:
            raw = m.value() + (m.key() or b"")
            assert not [v for v in personal if v.encode() in raw], "personal data in clear in a dead letter"
            d = DeadLetter.model_validate_json(m.value())
            assert d.reason == "oversized" and not d.original_truncated
            original = letters.original(d)
            assert m.key().decode() == d.key == letters.pseudonym(json.loads(original)["user_id"].encode())
            assert json.loads(d.original_redacted)["user_id"] == "<encrypted>" == json.loads(d.original_redacted)["ip"]
            assert d.original_redacted == redacted(original)

        listed = _cli(s, "list", "--topic", s.topic_orders)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.count("\toversized\t") == N
        assert not [v for v in personal if v in listed.stdout]
        one = _cli(s, "list", "--key", orders[0].user_id)  # found by the raw key, compared as its pseudonym
        assert one.stdout.count("\toversized\t") == 1, one.stdout

        shown = _cli(s, "show", "--reason", "oversized")
        assert shown.returncode == 0, shown.stderr
        opened = [json.loads(line) for line in shown.stdout.splitlines()]
        assert sorted(json.loads(x["original"])["order_id"] for x in opened) == sorted(o.order_id for o in orders)
        assert {x["original_key"] for x in opened} == {o.user_id for o in orders}
        wrong = _cli(s, "show", env_over={"DEAD_LETTER_KEY": "another key, long enough to be a real one"})
        assert wrong.returncode == 2 and "does not open" in wrong.stderr and "Traceback" not in wrong.stderr

        # the fix: a limit that fits real orders; then the operator replays what was rejected
        stk.stop_process(worker[0], s.run_dir)
        fixed = s.replace(max_event_bytes=65536)
        stk.start_process(worker[0], [sys.executable, "-m", "streamscore", "worker", "--role", "fraud"],
                          fixed.to_env(), s.run_dir)
        dry = _cli(fixed, "replay", "--reason", "oversized", "--dry-run")
        assert dry.stdout.count("would re-publish") == N, dry.stdout
        replayed = _cli(fixed, "replay", "--reason", "oversized")
        assert replayed.returncode == 0 and f"re-published {N} of {N}" in replayed.stdout, replayed.stdout + replayed.stderr
        verdicts = consume_all(s, s.topic_fraud_verdicts, lambda ms: len(ms) >= N)
        assert sorted(m.key().decode() for m in verdicts) == sorted(o.order_id for o in orders)
        # re-published with their original keys: the same partitions as the user's other orders
        again = [m for m in read_topic(s, s.topic_orders) if m.key() == orders[0].user_id.encode()]
        assert len(again) == 2 and again[0].partition() == again[1].partition()
    finally:
        stk.stop_processes(worker, s.run_dir)
