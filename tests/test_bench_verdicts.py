"""The verdict benchmark's own pieces (bench/bench_verdicts.py, bench/http_load.py): percentiles,
matching sends to receipts, live event bytes, the open-loop HTTP generator, and a tiny run over
the real stack that must get every verdict (and every pass-through copy) back.

No timing is asserted anywhere: only counts and correctness.
"""

from __future__ import annotations

import doctest
import json
import math
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import bench_verdicts as bv  # noqa: E402
from bench import http_load  # noqa: E402
from conftest import free_port, isolated  # noqa: E402
from streamscore import stack as stk  # noqa: E402
from streamscore.events import Click, Order  # noqa: E402


@pytest.mark.parametrize("module", [bv, http_load], ids=lambda m: m.__name__)
def test_doctests(module):
    failed, tried = doctest.testmod(module)
    assert tried > 0 and failed == 0


def test_percentile_nearest_rank():
    values = list(range(1000, 0, -1))  # 1..1000, unsorted
    assert http_load.percentile(values, 0.5) == 500
    assert http_load.percentile(values, 0.99) == 990
    assert http_load.percentile(values, 1.0) == 1000
    assert http_load.percentile(values, 0.0) == 1
    assert http_load.percentile([3.5, 1.5], 0.99) == 3.5
    assert math.isnan(http_load.percentile([], 0.99))


def test_tracker_counts_only_measured_sends_and_first_receipts():
    t = bv.Tracker()
    for i in range(10):
        t.send(f"w{i}".encode(), 100.0, measured=False)  # warm-up
    for i in range(100):
        t.send(f"m{i}".encode(), 200.0 + i, measured=True)
    for i in range(10):
        t.receive(f"w{i}".encode(), 105.0)  # warm-up receipts: not in the figures
    for i in range(99):  # m99 is lost
        t.receive(f"m{i}".encode(), 200.0 + i + (i + 1) / 1000, b"v%d" % i)  # latency (i + 1) ms
    t.receive(b"m0", 999.0)  # a duplicate keeps the first receipt
    t.receive(b"other", 300.0)
    assert t.outstanding() == 1
    s = t.summary()
    assert (s["n"], s["received"], s["lost"], s["duplicates"], s["unknown"]) == (100, 99, 1, 1, 1)
    assert s["p50_ms"] == pytest.approx(50.0, abs=1e-6)
    assert s["p99_ms"] == pytest.approx(99.0, abs=1e-6)
    assert s["max_ms"] == pytest.approx(99.0, abs=1e-6)
    assert t.values[b"m0"] == b"v0"


def test_live_orders_and_clicks_are_real_rows_with_new_ids_and_now():
    data = bv.Settings.from_env().data_dir
    templates = bv.order_templates(data, limit=50)
    from replay.sources import fraud_orders, taobao_clicks

    originals = list(fraud_orders(data, limit=50, since=bv.ORDERS_SINCE))
    now = time.time()
    for i, (tpl, real) in enumerate(zip(templates, originals)):
        o = Order.model_validate_json(bv.order_bytes(tpl, f"run-{i}", now))
        assert o.order_id == f"run-{i}" and o.ts == now
        assert (o.user_id, o.amount, o.currency, o.device_id, o.ip) == (real.user_id, real.amount, real.currency,
                                                                        real.device_id, real.ip)
        if real.account_created_at is not None:  # the real signup-to-purchase gap, moved to now
            assert o.ts - o.account_created_at == pytest.approx(real.ts - real.account_created_at)
    clicks = bv.click_templates(data, limit=20)
    for i, (tpl, real) in enumerate(zip(clicks, taobao_clicks(data, limit=20))):
        c = Click.model_validate_json(bv.click_bytes(tpl, f"e-{i}", now))
        assert (c.event_id, c.ts) == (f"e-{i}", now)
        assert (c.user_id, c.item_id, c.category_id, c.action) == (real.user_id, real.item_id, real.category_id,
                                                                   real.action)


def test_paced_sends_every_item_in_order():
    seen = []
    rate = bv.paced(1000.0, 50, seen.append)
    assert seen == list(range(50)) and rate > 0


async def test_http_load_counts_requests_degraded_and_errors():
    port = free_port()
    server = await http_load.start_trivial_server(port, body=b'{"degraded":true}')
    try:
        out = await http_load.run_http_load(f"http://127.0.0.1:{port}", "t", [b"{}"], rate=200.0, duration_s=0.25,
                                            warmup_s=0.05)
    finally:
        server.close()
        await server.wait_closed()
    assert (out["n"], out["errors"], out["degraded_share"]) == (50, 0, 1.0)
    assert out["p50_ms"] <= out["p99_ms"] <= out["max_ms"]

    closed = free_port()  # nothing listens there: every request is an error, none is dropped silently
    out = await http_load.run_http_load(f"http://127.0.0.1:{closed}", "t", [b"{}"], rate=100.0, duration_s=0.2)
    assert out["n"] == out["errors"] == 20 and math.isnan(out["p50_ms"])


async def test_generator_capacity_against_trivial_server():
    port = free_port()
    server = await http_load.start_trivial_server(port)
    try:
        out = await http_load.closed_loop_capacity(f"http://127.0.0.1:{port}", "t", [b"{}"], duration_s=0.3,
                                                   concurrency=4)
    finally:
        server.close()
        await server.wait_closed()
    assert out["requests_per_s"] > 0 and out["cpu_us_per_request"] > 0


@pytest.mark.stack
def test_tiny_run_gets_every_verdict_and_copy_back(stack_settings):
    """1 s at 20 orders/s through the worker (as the bench starts it) and through the pass-through:
    every order comes back exactly once, matched by order id."""
    s = isolated(stack_settings, "benchv", 13)
    data = s.data_dir
    orders = bv.order_templates(data, limit=200)
    procs, _ = bv.worker_commands(["fraud"])
    out = bv.run_orders(s, procs, s.topic_fraud_verdicts, orders, rate=20.0, seconds=1.0, warmup=0.0,
                        tag=f"t{time.time_ns()}")
    assert (out["n"], out["received"], out["lost"], out["duplicates"]) == (20, 20, 0, 0)
    assert out["degraded"] == 0 and all(v.startswith("fraud:") for v in out["model_versions"])
    assert sum(out["verdict_mix"].values()) == 20

    dst = f"{s.topic_orders}-copy"
    stk.create_topics(s.kafka_bootstrap, {dst: s.topic_partitions})
    copier = [("passthrough", [sys.executable, str(ROOT / "bench" / "bench_verdicts.py"), "passthrough",
                               "--dst", dst, "--fetch-wait-ms", "5", "--batch-max", "256", "--batch-within-s", "0.05"])]
    out = bv.run_orders(s, copier, dst, orders, rate=20.0, seconds=1.0, warmup=0.0, tag=f"f{time.time_ns()}",
                        keep_values=False)
    assert (out["n"], out["received"], out["lost"], out["duplicates"]) == (20, 20, 0, 0)
    assert not stk.process_alive("passthrough", s.run_dir)
    assert json.loads(json.dumps(out))  # the figures are plain JSON
