"""Batch processors: raw messages of one topic in, output records out.

Each processor validates its batch (bad input becomes a dead-letter record with the
reason and the original bytes, and never stops the batch), updates the online
features in one Redis round trip, calls the scorers once per batch, and returns the
records to publish. They know nothing about Faust: :mod:`streams.app` feeds them and
publishes what they return, so they are tested directly too.

Latency is measured from the Kafka message timestamp (the time the shop produced the
event) to the moment the decision is handed to the producer. Event time (``ts`` in
the payload) is what features use; under a historical replay the two differ.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from itertools import islice
from dataclasses import dataclass
from typing import Sequence

from features.client import FeatureClient
from features.definitions import FRAUD_VECTOR
from monitoring.metrics import Metrics
from scorers.challenger import STATES, Challenger
from scorers.fraud import FraudScorer, verdict_for
from scorers.online import OnlineFraud, river_inputs
from scorers.pricing import Adjustment, PricingScorer
from scorers.pricing_bandit import MODEL_VERSION as BANDIT_VERSION, BanditPricer, Period
from scorers.recommender import COVIS_WINDOW, HISTORY_LEN, Recommender
from streamscore.events import (CatalogItem, Click, FraudLabel, FraudVerdict, InvalidEvent, Order, PriceAdjustment,
                                Recommendations, dead_letter, parse)
from streamscore.settings import Settings

log = logging.getLogger(__name__)

# Items per slice of the pricing bandit's CPU work (~0.5 ms per item: decode, step, encode): the
# event loop runs other agents (orders, whose checkout verdicts wait) between slices.
BANDIT_YIELD_EVERY = 32


@dataclass(frozen=True)
class RawMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float  # Kafka message timestamp, Unix seconds


@dataclass(frozen=True)
class Output:
    topic: str
    key: str
    value: bytes


class Processors:
    def __init__(self, settings: Settings, features: FeatureClient, fraud: FraudScorer, recommender: Recommender,
                 pricing: PricingScorer, metrics: Metrics):
        self.s = settings
        self.features = features
        self.fraud = fraud
        self.recommender = recommender
        self.pricing = pricing
        self.metrics = metrics
        self.online = OnlineFraud()
        self.metrics.drift_detections.labels("fraud")  # the series exists (at 0) before any drift
        self.challenger: Challenger | None = None  # shadow model (FRAUD_CHALLENGER), see scorers/challenger.py
        if settings.fraud_challenger == "on":
            self.challenger = Challenger(min_labels=settings.fraud_challenger_min_labels,
                                         margin=settings.fraud_challenger_margin, z=settings.fraud_challenger_z)
            self._export_challenger()
        self.bandit = BanditPricer(settings)  # PRICING_POLICY=bandit; its state lives in Redis per item
        self.model_versions: dict[str, str] = {}
        # newest event time seen per (topic, partition), for the allowed-lateness rule
        self.watermarks: dict[tuple[str, int], float] = {}
        # items waiting for a price evaluation: item -> (latest event time, first event's Kafka time)
        self.pending_prices: dict[str, tuple[float, float]] = {}
        self.recommended: set[str] = set()  # items this worker has recommended (coverage metric)
        # users waiting for a recommendation refresh: user -> (recent items, first click's Kafka time)
        self.pending_recs: dict[str, tuple[list[str], float]] = {}

    def _validate(self, model, messages: Sequence[RawMessage], event_time: bool = True):
        """Split a batch into (valid (message, event) pairs, dead-letter outputs, new watermarks).

        With ``event_time``, an event older than its partition's newest event time minus
        ``FEATURE_ALLOWED_LATENESS_S`` is dead-lettered as ``too_late``; one that is merely
        out of order is applied (windows are keyed by event time) and counted as late.
        Watermarks live in the worker's memory and restart from the first events seen; they
        advance only when the batch succeeds (:meth:`_advance`), so a retried batch is judged
        exactly as the first time.
        """
        good, dead, marks = [], [], {}
        for m in messages:
            try:
                event = parse(model, m.value, self.s.max_event_bytes)
            except InvalidEvent as exc:
                dead.append(self.dead(m, exc))
                continue
            if event_time:
                key = (m.topic, m.partition)
                mark = marks.get(key, self.watermarks.get(key, event.ts))
                if event.ts < mark:
                    if event.ts < mark - self.s.allowed_lateness_s:
                        self.metrics.late_events.labels(m.topic, "dropped").inc()
                        dead.append(self.dead(m, InvalidEvent(
                            "too_late", f"event time {event.ts} is more than {self.s.allowed_lateness_s}s "
                                        f"behind the partition's newest event time {mark}")))
                        continue
                    self.metrics.late_events.labels(m.topic, "applied").inc()
                marks[key] = max(mark, event.ts)
            good.append((m, event))
        if messages:
            self.metrics.batch_size.labels(messages[0].topic).observe(len(messages))
        return good, dead, marks

    def _advance(self, marks: dict[tuple[str, int], float]) -> None:
        """The batch succeeded: move its partitions' watermarks forward."""
        self.watermarks.update(marks)

    def _model_version(self, decision: str, version: str) -> None:
        """Export the model versions in use (an info metric), when one changes."""
        if self.model_versions.get(decision) != version:
            self.model_versions[decision] = version
            self.metrics.model_info.info(dict(self.model_versions))

    def dead(self, m: RawMessage, exc: Exception) -> Output:
        record = dead_letter(m.topic, m.partition, m.offset, m.key, m.value, exc)
        self.metrics.dead_letters.labels(m.topic, record.reason).inc()
        log.warning("dead letter %s[%d]@%d: %s", m.topic, m.partition, m.offset, record.error[:200])
        return Output(self.s.topic_dead_letter, record.key or "", record.to_bytes())

    def _observe_freshness(self, entity: str, messages: Sequence[RawMessage]) -> None:
        now = time.time()
        histogram = self.metrics.feature_freshness.labels(entity)
        for m in messages:
            histogram.observe(max(0.0, now - m.timestamp))

    async def clicks(self, messages: Sequence[RawMessage]) -> list[Output]:
        """Update click features; mark the clicking users for a recommendation refresh."""
        good, out, marks = self._validate(Click, messages)
        if not good:
            return out
        t0 = time.perf_counter()
        histories, hits = await self.features.apply_clicks([c for _, c in good], HISTORY_LEN)
        self.metrics.rec_clicks.labels("false").inc(hits[0])
        self.metrics.rec_clicks.labels("true").inc(hits[1])
        self.metrics.redis_latency.labels("clicks").observe(time.perf_counter() - t0)
        self._observe_freshness("user", [m for m, _ in good])
        produced_at = {c.user_id: m.timestamp for m, c in good}
        for user_id, history in histories.items():
            first = self.pending_recs.pop(user_id, (None, produced_at[user_id]))[1]
            self.pending_recs[user_id] = (history, first)  # re-insert: oldest waiting users stay first
        self._advance(marks)
        return out

    async def refresh_recommendations(self, max_users: int) -> list[Output]:
        """Recommend for up to ``max_users`` users marked by :meth:`clicks`, oldest first.

        Refreshing apart from click ingestion coalesces a user's clicks into one refresh and
        keeps a slow recommender from holding back feature updates. The pending set lives in
        the worker's memory: after a crash a user's list is refreshed on their next click.
        """
        users = list(islice(self.pending_recs, max_users))
        if not users:
            return []
        batch = {u: self.pending_recs.pop(u) for u in users}
        popular = await self.features.popular_items(self.s.rec_top_k + HISTORY_LEN)
        neighbours = None
        if self.s.rec_online_blend == "on":  # co-visitation of the users' newest items, decayed to the clicks' event time
            now_ts = max((t for (topic, _), t in self.watermarks.items() if topic == self.s.topic_clicks), default=0.0)
            neighbours = await self.features.covis_neighbours(
                [i for h, _ in batch.values() for i in h[:COVIS_WINDOW]], now_ts)
        recs = await self.recommender.recommend({u: h for u, (h, _) in batch.items()}, popular, neighbours)
        now = time.time()
        stored, out = {}, []
        for user_id, rec in recs.items():
            uh = self.features.keys.user(user_id)
            payload = Recommendations(user=uh, items=rec.items, scores=rec.scores, model_version=rec.model_version,
                                      cold_start=rec.cold_start, ts=now)
            stored[uh] = payload.model_dump()
            out.append(Output(self.s.topic_recommendations, uh, payload.to_bytes()))
            self.metrics.recommendations.labels(str(rec.cold_start).lower()).inc()
            self.metrics.decision_latency.labels("recommendation").observe(max(0.0, now - batch[user_id][1]))
        await self.features.store_recommendations(stored)
        for rec in recs.values():
            self._model_version("recommendation", rec.model_version)
            self.recommended.update(rec.items)
        known = await self.features.known_items()
        if known:
            self.metrics.rec_coverage.set(min(1.0, len(self.recommended) / known))
        return out

    async def orders(self, messages: Sequence[RawMessage]) -> list[Output]:
        good, out, marks = self._validate(Order, messages)
        if not good:
            return out
        orders = [o for _, o in good]
        t0 = time.perf_counter()
        features = await self.features.apply_orders(orders)
        self.metrics.redis_latency.labels("orders").observe(time.perf_counter() - t0)
        self._observe_freshness("order", [m for m, _ in good])
        scores = await self.fraud.score(features)
        scored = []
        now = time.time()
        for (m, order), sc, values in zip(good, scores, features):
            x = river_inputs(values, FRAUD_VECTOR)
            score, version = sc.score, sc.model_version
            if not sc.degraded and self.online.ready:  # blend with the River model learning from late labels
                score = self.online.blend(sc.score, self.online.predict(x))
                version = f"{sc.model_version}+river"
            record = {"x": x, "p_triton": sc.score}
            if self.challenger is not None:  # shadow: stored for the label join, never decides
                record.update(p_served=score, p_challenger=self.challenger.predict(x))
            scored.append((order.order_id, record, order.ts))
            verdict_name = verdict_for(score, self.s)
            latency = max(0.0, now - m.timestamp)
            verdict = FraudVerdict(order_id=order.order_id, score=score, verdict=verdict_name, reasons=sc.reasons,
                                   model_version=version, latency_ms=latency * 1e3, degraded=sc.degraded, ts=now)
            out.append(Output(self.s.topic_fraud_verdicts, order.order_id, verdict.to_bytes()))
            self.metrics.verdicts.labels(verdict_name).inc()
            self.metrics.fraud_score.labels("fraud").observe(score)
            self.metrics.decision_latency.labels("fraud").observe(latency)
            self._model_version("fraud", version)
        await self.features.store_scored(scored)
        for (m, o) in good:
            for line in o.items:
                self._mark_price(line.item_id, o.ts, m.timestamp)
        self._advance(marks)
        return out

    async def catalog(self, messages: Sequence[RawMessage]) -> list[Output]:
        good, out, marks = self._validate(CatalogItem, messages)
        if not good:
            return out
        await self.features.apply_catalog([c for _, c in good])
        for m, c in good:
            self._mark_price(c.item_id, c.ts, m.timestamp)
        self._advance(marks)
        return out

    async def fraud_labels(self, messages: Sequence[RawMessage]) -> list[Output]:
        """Join each label to the feature vector its order was scored with, and learn from it."""
        good, out, _ = self._validate(FraudLabel, messages, event_time=False)
        labels = {label.order_id: label.is_fraud for _, label in good}
        if labels:
            self._learn(await self.features.take_scored(list(labels)), labels, "joined")
        return out

    async def learn_unlabelled(self, max_orders: int) -> int:
        """Orders older than ``LABEL_WINDOW_S`` (event time, against the newest order seen) with
        no label are learned as legitimate. Returns how many."""
        newest = max((ts for (topic, _), ts in self.watermarks.items() if topic == self.s.topic_orders), default=None)
        if newest is None:
            return 0
        order_ids = await self.features.unlabelled_before(newest - self.s.label_window_s, max_orders)
        if order_ids:
            self._learn(await self.features.take_scored(order_ids), dict.fromkeys(order_ids, False), "silence")
        return len(order_ids)

    def _learn(self, records: dict[str, dict | None], labels: dict[str, bool], outcome: str) -> None:
        for order_id, record in records.items():
            if record is None:  # never scored here, or its vector expired (LABEL_TTL_S)
                self.metrics.labels.labels("missing").inc()
                continue
            if self.challenger is not None:  # before the champion learns: its served score is the stored one
                served = record.get("p_served")
                if served is None:  # scored before the challenger was on: what the champion serves now
                    served = self.online.blend(record["p_triton"], self.online.predict(record["x"]))
                self.challenger.learn(record["x"], labels[order_id], served, record.get("p_challenger"))
            if self.online.learn(record["x"], labels[order_id], record["p_triton"]):
                self.metrics.drift_detections.labels("fraud").inc()
                log.warning("drift detected in the fraud score's error after %d labels", self.online.n_learned)
            self.metrics.labels.labels(outcome).inc()
        quality = self.online.quality()
        if not math.isnan(quality["roc_auc"]):
            self.metrics.online_auc.labels("fraud").set(quality["roc_auc"])
        self.metrics.online_log_loss.labels("fraud").set(quality["log_loss"])
        for expert, weight in self.online.weights().items():
            self.metrics.blend_weight.labels("fraud", expert).set(weight)
        self._export_challenger()

    def _export_challenger(self) -> None:
        """The challenger's rolling quality (``model="fraud_challenger"``) and its promotion state."""
        if self.challenger is None:
            return
        quality = self.challenger.quality()["challenger"]
        if not math.isnan(quality["roc_auc"]):
            self.metrics.online_auc.labels("fraud_challenger").set(quality["roc_auc"])
        if self.challenger.n_learned:
            self.metrics.online_log_loss.labels("fraud_challenger").set(quality["log_loss"])
        state = self.challenger.state()
        for s in STATES:
            self.metrics.promotion_state.labels("fraud_challenger", s).set(float(s == state))

    async def restore_online(self) -> None:
        """Load the newest River checkpoint, if any (at worker start)."""
        found = await self.features.load_checkpoint("fraud-online")
        if found is not None:
            self.online = OnlineFraud.from_bytes(found[1])
            log.info("restored fraud online model v%d (%d labels learned)", found[0], self.online.n_learned)
        if self.challenger is not None:
            found = await self.features.load_checkpoint("fraud-challenger")
            if found is not None:
                self.challenger = Challenger.from_bytes(found[1])
                self.challenger.set_rule(self.s.fraud_challenger_min_labels, self.s.fraud_challenger_margin,
                                         self.s.fraud_challenger_z)
                self._export_challenger()
                log.info("restored fraud challenger v%d (%d labels learned)", found[0], self.challenger.n_learned)

    async def checkpoint_online(self) -> int:
        """Save the River model (and the challenger, under ``fraud-challenger``) as new checkpoint
        versions; returns the River model's version."""
        if self.challenger is not None:
            await self.features.save_checkpoint("fraud-challenger", self.challenger.to_bytes(),
                                                self.s.online_checkpoints_kept)
        return await self.features.save_checkpoint("fraud-online", self.online.to_bytes(),
                                                   self.s.online_checkpoints_kept)

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
            self._model_version("pricing", a.model_version)
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
