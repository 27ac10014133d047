"""The pricing role: catalog entries and orders -> each item's price, inside guardrails.

It reads the ``catalog`` topic (prices, costs, stock) and the ``orders`` topic in a consumer
group of its own: from orders it records each item's sales value per order
(``ss:i:{item}:revenue``, the pricing bandit's reward; idempotent per order) and marks the
items for an evaluation. Invalid orders are skipped here without a dead letter: the fraud
role owns the orders' dead letters. Evaluations run apart from ingestion, one batch per
``PRICE_REFRESH_INTERVAL_S`` (:meth:`PricingProcessor.refresh_prices`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from itertools import islice
from typing import Sequence

from features.client import FeatureClient
from monitoring.metrics import Metrics
from scorers.pricing import Adjustment, PricingScorer
from scorers.pricing_bandit import MODEL_VERSION as BANDIT_VERSION, BanditPricer, Period
from streams.validation import Intake, Output, RawMessage
from streamscore.events import CatalogItem, Order, PriceAdjustment
from streamscore.settings import Settings

log = logging.getLogger(__name__)

# Items per slice of the pricing bandit's CPU work (~0.5 ms per item: decode, step, encode): the
# event loop runs other work between slices.
BANDIT_YIELD_EVERY = 32


class PricingProcessor:
    def __init__(self, settings: Settings, features: FeatureClient, pricing: PricingScorer, metrics: Metrics,
                 intake: Intake | None = None):
        self.s = settings
        self.features = features
        self.pricing = pricing
        self.metrics = metrics
        self.intake = intake or Intake(settings, metrics)
        self.bandit = BanditPricer(settings)  # PRICING_POLICY=bandit; its state lives in Redis per item
        # items waiting for a price evaluation: item -> (latest event time, first event's Kafka time)
        self.pending_prices: dict[str, tuple[float, float]] = {}

    async def orders(self, messages: Sequence[RawMessage]) -> list[Output]:
        """Record each order's sales value per item and mark its items for a price evaluation."""
        good, _, marks = self.intake.validate(Order, messages, dead_letters=False)  # from_future moves no clock
        if good:
            await self.features.apply_revenue([o for _, o in good])
            for m, o in good:
                for line in o.items:
                    self._mark_price(line.item_id, o.ts, m.timestamp)
        self.intake.advance(marks)
        return []

    async def catalog(self, messages: Sequence[RawMessage]) -> list[Output]:
        good, out, marks = self.intake.validate(CatalogItem, messages)
        if not good:
            return out
        await self.features.apply_catalog([c for _, c in good])
        for m, c in good:
            self._mark_price(c.item_id, c.ts, m.timestamp)
        self.intake.advance(marks)
        return out


    def _mark_price(self, item_id: str, ts: float, produced_at: float) -> None:
        """Queue the item for a price evaluation, first touched first served: a pending item keeps
        its place (a hot item is not pushed back by its own sales), with its newest event time."""
        prev = self.pending_prices.get(item_id)
        self.pending_prices[item_id] = (ts, produced_at) if prev is None else (max(prev[0], ts), prev[1])

    async def refresh_prices(self, max_items: int) -> list[Output]:
        """Re-evaluate the prices of up to ``max_items`` items touched by orders or catalog
        updates (oldest first), in one Triton call; emit the ones that change.

        Apart from the order path so verdicts never wait for pricing, and coalescing an
        item's many sales into one evaluation. Items evaluated less than
        ``PRICE_EVAL_INTERVAL_S`` of event time ago are skipped.
        """
        item_ids = list(islice(self.pending_prices, max_items))
        if not item_ids:
            return []
        batch = {i: self.pending_prices.pop(i) for i in item_ids}
        ts = max(t for t, _ in batch.values())
        produced_at = min(p for _, p in batch.values())
        states = {i: st for i, st in (await self.features.pricing_states(item_ids, ts)).items()
                  if ts - st.get("priced_at", -math.inf) >= self.s.price_eval_interval_s}
        vectors = {i: self.features.plans.pricing_vector(st) for i, st in states.items()}
        if self.s.pricing_policy == "bandit":
            adjustments = await self._bandit_prices(states, vectors, ts)
        else:
            adjustments = await self.pricing.propose(states, vectors, ts)
        await self.features.set_prices({a.item_id: a.new_price for a in adjustments}, list(states), ts)
        now = time.time()
        out = []
        for a in adjustments:
            record = PriceAdjustment(item_id=a.item_id, old_price=a.old_price, new_price=a.new_price, reason=a.reason,
                                     guardrail=a.guardrail, model_version=a.model_version, ts=now)
            out.append(Output(self.s.topic_price_adjustments, a.item_id, record.to_bytes()))
            self.metrics.price_changes.labels(a.guardrail or "none").inc()
            self.metrics.model_version("pricing", a.model_version)
            self.metrics.decision_latency.labels("pricing").observe(max(0.0, now - produced_at))
        return out

    async def _bandit_prices(self, states: dict[str, dict[str, float]], vectors: dict[str, list[float]],
                             ts: float) -> list[Adjustment]:
        """One evaluation step of each item's bandit (:class:`scorers.pricing_bandit.BanditPricer`):
        read the items' bandit states and their sales value since their last evaluation; step;
        write the states back. Three round trips plus one Triton call whose demand
        forecast only feeds the expected-revenue metrics."""
        if not states:
            return []
        periods: dict[str, Period] = {}
        for n, (item, fields) in enumerate((await self.features.bandit_states(list(states))).items(), start=1):
            try:
                periods[item] = Period.from_fields(fields)
            except Exception as exc:  # an unreadable state must not stop pricing: start the item afresh
                log.warning("pricing bandit state of %s unreadable (%s): starting afresh", item, exc)
            if n % BANDIT_YIELD_EVERY == 0:
                await asyncio.sleep(0)
        windows = {i: start for i, p in periods.items() if (start := self.bandit.needs_revenue(p)) is not None}
        revenue = await self.features.revenue_between(windows, ts) if windows else {}
        predicted = await self.pricing.demand(list(states), vectors, decides=False)
        out, save = [], {}
        for row, (item, st) in enumerate(states.items()):
            if row and row % BANDIT_YIELD_EVERY == 0:
                await asyncio.sleep(0)
            before = periods.get(item)
            window_out_of_stock = before is not None and before.stockout  # step() updates the period in place
            period, d, reward = self.bandit.step(item, st, before, revenue.get(item), ts)
            save[item] = period.to_fields()
            if reward is not None:
                self.metrics.price_bandit.labels("learned").inc()
            elif window_out_of_stock:
                self.metrics.price_bandit.labels("not_learned").inc()
            if period.chosen_at == ts and d.guardrail != "out_of_stock":
                self.metrics.price_bandit.labels("chosen").inc()
            if d.guardrail is not None:
                self.metrics.price_guardrail_hits.labels(d.guardrail).inc()
            if abs(d.price - st["price"]) >= 0.005:
                if predicted is not None:
                    self.pricing.record_expected_revenue(st["price"], d.price, predicted[1][row], predicted[2][row])
                out.append(Adjustment(item, st["price"], d.price, f"bandit arm {d.multiplier:g}x reference price",
                                      d.guardrail, BANDIT_VERSION))
        await self.features.save_bandit_states(save)
        return out
