"""The live pricing bandit over the real stack (``PRICING_POLICY=bandit``).

A closed loop, hour by hour of event time: the test publishes each item's catalog entry (at the
price the worker last set) and the hour's orders, whose quantity follows a known demand curve
(SYNTHETIC, deterministic, labelled as such); the worker's bandit prices the items, learning
from the revenue of the orders that follow each price. Checked:

* every price adjustment keeps the guardrails (at most 10% per step, at most one step per hour,
  floor at cost + minimum margin, ceiling, an out-of-stock item never moves);
* rewards are the orders' revenue per hour over the window each arm held its price;
* after a few days the bandit prefers the reference price (or lower) for an item whose demand
  collapses above it, and a higher price for an item whose demand ignores price;
* the bandit's state lives in Redis: a worker restart continues learning where it stopped.

Own topics, consumer group and Redis database (11).
"""

from __future__ import annotations

import json
import sys
import time

import pytest
import redis
from confluent_kafka import Producer

from conftest import free_port, isolated
from features.keys import FeatureKeys
from features.sealing import Sealer
from scorers.pricing_bandit import Period
from streamscore import stack as stk
from streamscore.events import CatalogItem, Order, OrderLine
from streamscore.topics import read_topic

pytestmark = pytest.mark.stack

T0 = 1_699_999_200  # 2023-11-14 22:00 UTC, on the hour
HOURS = 96
RESTART_AT = 48
PERIOD_H = 3

# SYNTHETIC demand curves (units per hour at a price), deterministic so the test cannot be lucky
ITEMS = {
    "syn:elastic": dict(ref=10.0, cost=6.0, stock=1000, units=lambda p: 20 if p <= 10.0 + 1e-9 else 2),
    "syn:inelastic": dict(ref=4.0, cost=2.0, stock=1000, units=lambda p: 10),
    "syn:out-of-stock": dict(ref=5.0, cost=3.0, stock=0, units=lambda p: 0),
}


@pytest.fixture(scope="module")
def bandit_settings(stack_settings):
    s = isolated(stack_settings, "bandit", 11, worker_metrics_port=free_port(), rec_refresh_interval_s=0.0,
                 price_refresh_interval_s=0.05, pricing_policy="bandit", price_bandit_period_s=PERIOD_H * 3600.0)
    yield s
    stk.stop_processes(["bandit-worker"], s.run_dir)


def _start(s):
    stk.start_process("bandit-worker", [sys.executable, "-m", "streamscore", "worker"], s.to_env(), s.run_dir)


def _price(r, item, spec) -> float:
    raw = r.hget(FeatureKeys.item_catalog(item), "price")
    return float(raw) if raw else spec["ref"]


def _wait(s, r, hour, condition, limit_s: float = 60) -> None:
    end = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < end and stk.process_alive("bandit-worker", s.run_dir), \
            f"hour {hour}: {[r.hgetall(FeatureKeys.item_catalog(i)) for i in ITEMS]}\n" + stk.log_tail("bandit-worker", s.run_dir)
        time.sleep(0.02)


def _period(r, item, secret: str) -> Period | None:
    fields = r.hgetall(FeatureKeys.item_bandit(item))
    if not fields:
        return None
    return Period.from_fields({**fields, b"model": Sealer(secret).open(f"bandit:{item}", fields[b"model"])})


def test_bandit_prices_within_guardrails_and_learns_from_revenue(bandit_settings):
    s = bandit_settings
    r = redis.Redis.from_url(s.redis_url)
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap, "linger.ms": 0})
    revenue: dict[str, list[tuple[float, float]]] = {i: [] for i in ITEMS}  # item -> (event ts, revenue)
    learned_before_restart = {}
    _start(s)
    for h in range(HOURS):
        if h == RESTART_AT:
            learned_before_restart = {i: _period(r, i, s.state_secret.get_secret_value()).learned for i in ITEMS}
            stk.stop_process("bandit-worker", s.run_dir)
            _start(s)
        t = T0 + h * 3600
        # 1. the shop's catalog entry at the price the worker last set: the worker evaluates each
        #    item's price at t (its pending orders, if any, are in: waited for last hour)
        for item, spec in ITEMS.items():
            producer.produce(s.topic_catalog, key=item.encode(), value=CatalogItem(
                item_id=item, price=_price(r, item, spec), cost=spec["cost"], stock=spec["stock"], ts=t).to_bytes())
        assert producer.flush(10) == 0
        _wait(s, r, h, lambda: all(float(r.hget(FeatureKeys.item_catalog(i), "priced_at") or 0) >= t for i in ITEMS))
        # 2. the hour's orders, at the price that now holds, after the evaluation
        placed = []
        for item, spec in ITEMS.items():
            price = _price(r, item, spec)
            units = spec["units"](price)
            if units:
                order = Order(order_id=f"syn:o:{item}:{h}", user_id=f"syn:u:{h}", ts=t + 1800,
                              items=[OrderLine(item_id=item, price=price, quantity=units)], amount=price * units)
                producer.produce(s.topic_orders, key=order.order_id.encode(), value=order.to_bytes())
                revenue[item].append((t + 1800, price * units))
                placed.append(FeatureKeys.order_record(order.order_id))
        assert producer.flush(10) == 0
        _wait(s, r, h, lambda: r.exists(*placed) == len(placed))
    stk.stop_process("bandit-worker", s.run_dir)

    # guardrails, read from what the shop consumes: the price-adjustments topic
    adjustments: dict[str, list[dict]] = {i: [] for i in ITEMS}
    for m in read_topic(s, s.topic_price_adjustments):
        a = json.loads(m.value())
        adjustments[a["item_id"]].append(a)
    for item, spec in ITEMS.items():
        floor, ceiling = spec["cost"] * (1 + s.price_min_margin), spec["ref"] * s.price_max_multiplier
        previous = spec["ref"]
        for a in adjustments[item]:
            assert a["model_version"] == "pricing-bandit" and a["reason"].startswith("bandit arm")
            assert a["old_price"] == pytest.approx(previous), (item, a)  # one chain: nothing skipped
            assert abs(a["new_price"] / a["old_price"] - 1) <= s.price_max_change_per_hour + 1e-9, (item, a)
            assert floor - 1e-9 <= a["new_price"] <= ceiling + 1e-9, (item, a)
            previous = a["new_price"]
        assert len(adjustments[item]) <= HOURS  # at most one change per evaluated hour
    assert adjustments["syn:out-of-stock"] == []
    assert len(adjustments["syn:elastic"]) >= 5 and len(adjustments["syn:inelastic"]) >= 5

    elastic, inelastic, oos = (_period(r, i, s.state_secret.get_secret_value()) for i in ITEMS)
    # it learned across the restart: the state is in Redis, not in the worker
    for item, p in (("syn:elastic", elastic), ("syn:inelastic", inelastic)):
        assert learned_before_restart[item] >= 3 and p.learned >= learned_before_restart[item] + 3, (item, p)
        # the last reward is the orders' revenue per hour over the window the arm held its price
        start, stop = p.last_window
        paid = sum(v for ts, v in revenue[item] if start <= ts < stop)
        assert p.last_reward == pytest.approx(paid / ((stop - start) / 3600), rel=1e-6), (item, p)
    assert oos.learned == 0 and oos.stockout
    assert elastic.bandit.best("syn:elastic") <= 1.0  # demand collapses above the reference price
    assert inelastic.bandit.best("syn:inelastic") > 1.0  # demand ignores price: charge more
