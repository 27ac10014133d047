"""Failover of the fraud role over the real stack: two fraud workers share the orders' partitions;
one is SIGKILLed mid-stream. Every order still gets a verdict, no order gets two different
verdicts (a redelivered order is answered with the verdict recorded the first time), and the
verdict gap is reported (the longest order -> verdict time of the orders sent after the kill).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from itertools import islice

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from conftest import free_port, isolated
from replay.sources import fraud_orders
from streamscore import stack as stk
from streamscore.events import FraudVerdict

pytestmark = pytest.mark.stack

RATE, SECONDS, KILL_AT_S = 40, 24, 8


def _receiver(s, received: dict, ready: threading.Event, stop: threading.Event) -> None:
    """Every verdict with its receive time; partitions assigned directly (no group join to wait for)."""
    consumer = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": f"failover-rx-{time.time_ns()}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 5})
    consumer.assign([TopicPartition(s.topic_fraud_verdicts, p, OFFSET_BEGINNING) for p in range(s.topic_partitions)])
    consumer.consume(1, 0.5)
    ready.set()
    try:
        while not stop.is_set():
            for m in consumer.consume(500, 0.1):
                if m.error() is None:
                    received.setdefault(m.key().decode(), []).append((time.time(), m.value()))
    finally:
        consumer.close()


def _assigned(name: str, run_dir, topic: str) -> bool:
    """Whether the worker's last assignment holds a partition of ``topic``."""
    try:
        lines = [ln for ln in stk.log_file(name, run_dir).read_text().splitlines() if " assigned " in ln]
    except FileNotFoundError:
        return False
    return bool(lines) and f"{topic}[" in lines[-1]


def test_sigkill_of_one_fraud_worker(stack_settings):
    s = isolated(stack_settings, "failover", 10, fraud_challenger=False)
    argv = [sys.executable, "-m", "streamscore", "worker", "--role", "fraud"]
    pids = [stk.start_process(f"failover-{n}", argv, {**s.to_env(), "WORKER_METRICS_PORT": str(free_port())},
                              s.run_dir) for n in range(2)]
    received: dict[str, list] = {}
    ready, stop = threading.Event(), threading.Event()
    rx = threading.Thread(target=_receiver, args=(s, received, ready, stop), daemon=True)
    rx.start()
    try:
        end = time.monotonic() + 60
        while not all(_assigned(f"failover-{n}", s.run_dir, s.topic_orders) for n in range(2)):  # both share them
            assert time.monotonic() < end, stk.log_tail("failover-0", s.run_dir)
            time.sleep(0.2)
        assert ready.wait(30)
        producer = Producer({"bootstrap.servers": s.kafka_bootstrap, "linger.ms": 0})
        base = list(islice(fraud_orders(s.data_dir), RATE * SECONDS))
        sent: dict[str, float] = {}
        t0, killed_at = time.time(), None
        for n, o in enumerate(base):
            due = t0 + n / RATE
            time.sleep(max(0.0, due - time.time()))
            if killed_at is None and time.time() - t0 >= KILL_AT_S:
                os.kill(pids[0], signal.SIGKILL)
                killed_at = time.time()
            order = o.model_copy(update={"order_id": f"fo-{n}", "ts": time.time(), "account_created_at": None})
            producer.produce(s.topic_orders, key=order.user_id.encode(), value=order.to_bytes())
            producer.poll(0)
            sent[order.order_id] = time.time()
        assert producer.flush(10) == 0
        end = time.monotonic() + 60
        while set(received) < set(sent) and time.monotonic() < end:
            time.sleep(0.2)
        time.sleep(1.0)  # any duplicate still on its way
    finally:
        stop.set()
        rx.join(5)
        stk.stop_processes(["failover-0", "failover-1"], s.run_dir)
    assert not stk.process_alive("failover-0", s.run_dir)
    missing = set(sent) - set(received)
    assert not missing, f"{len(missing)} orders without a verdict; {stk.log_tail('failover-1', s.run_dir)}"
    decisions = {oid: {(v.verdict, v.score, v.model_version) for v in
                       (FraudVerdict.model_validate_json(raw) for _, raw in rows)} for oid, rows in received.items()}
    flipped = {oid: d for oid, d in decisions.items() if len(d) > 1}
    assert not flipped, flipped
    after = [received[oid][0][0] - t for oid, t in sent.items() if t >= killed_at]
    before = [received[oid][0][0] - t for oid, t in sent.items() if t < killed_at]
    redelivered = sum(len(rows) > 1 for rows in received.values())
    first_after = min(received[oid][0][0] for oid, t in sent.items() if t >= killed_at)
    print(f"\ntraffic from {time.strftime('%H:%M:%S', time.localtime(t0))}.{int(t0 % 1 * 1000):03d}, kill at "
          f"{time.strftime('%H:%M:%S', time.localtime(killed_at))}.{int(killed_at % 1 * 1000):03d}; "
          f"latency p50 before the kill {sorted(before)[len(before) // 2] * 1e3:.0f} ms")
    print(f"failover: {len(sent)} orders at {RATE}/s, worker killed after {KILL_AT_S}s; verdict gap "
          f"(longest order -> verdict after the kill) {max(after):.2f}s; before the kill max "
          f"{max(before) * 1e3:.0f} ms; first verdict of an order sent after the kill {first_after - killed_at:.2f}s "
          f"after it; {redelivered} orders answered twice (same verdict)")
