"""The fraud role: orders -> verdicts, fraud labels -> online learning.

Per batch of orders (two Redis round trips and one Triton call):

1. validate (:class:`streams.validation.Intake`): a bad order is one dead letter;
2. ``apply_orders_checked`` (one round trip): each order's features as of just before it, then the
   order recorded (idempotent), and any verdict already recorded for it: an order that has one (a
   redelivery after a crash or a rebalance) gets that verdict again, unchanged, and nothing else;
3. :class:`scorers.fraud.FraudDecider`: the same decision function checkout calls;
4. ``record_verdicts``: each verdict is kept by order id (``SET NX``: if another worker decided
   the same order first, its verdict is the one emitted), and so is what River learns from;
   a label that arrived before its verdict is joined here and learned at once.

Thresholds (:mod:`scorers.thresholds`): every batch's served scores go into this worker's
:class:`~scorers.thresholds.RollingThresholds` (and each label, with the score its order was
served, into its precision estimate); the next batch is decided with the thresholds that follow.
:meth:`FraudProcessor.publish_thresholds` (a timer, ``FRAUD_THRESHOLD_REFRESH_S``) stores them in
Redis, where the HTTP service reads them, and a restarted worker starts from them.

``latency_ms`` of a verdict runs from the order's Kafka timestamp to the moment the verdict,
already stored, is handed to the producer; ``streamscore_decision_latency_seconds{decision="fraud"}``
is observed when the broker has acknowledged it (:mod:`streams.runtime`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Sequence

from monitoring.metrics import Metrics
from scorers.challenger import STATES, Challenger
from scorers.fraud import FraudDecider, settings_thresholds
from scorers.online import OnlineFraud
from scorers.thresholds import RollingThresholds, Thresholds
from streams.validation import Intake, Output, RawMessage
from streamscore.events import FraudLabel, FraudVerdict, Order
from streamscore.settings import Settings

log = logging.getLogger(__name__)


class FraudProcessor:
    def __init__(self, settings: Settings, features, decider: FraudDecider | None, metrics: Metrics,
                 intake: Intake | None = None):
        self.s = settings
        self.features = features
        self.decider = decider
        self.metrics = metrics
        self.intake = intake or Intake(settings, metrics)
        self.online = OnlineFraud()
        self.metrics.drift_detections.labels("fraud")  # the series exists (at 0) before any drift
        self.challenger: Challenger | None = None  # shadow model (FRAUD_CHALLENGER), see scorers/challenger.py
        if settings.fraud_challenger:
            self.challenger = Challenger(min_labels=settings.fraud_challenger_min_labels,
                                         margin=settings.fraud_challenger_margin, z=settings.fraud_challenger_z)
            self._export_challenger()
        for outcome in ("joined", "kept", "early", "missing", "silence"):
            self.metrics.labels.labels(outcome)
        self.rolling = RollingThresholds(settings.fraud_threshold_window, settings.fraud_review_rate,
                                         settings.fraud_decline_rate, settings.fraud_threshold_min_scores,
                                         settings_thresholds(settings), precision=settings.fraud_decline_precision,
                                         min_labels=settings.fraud_threshold_min_labels)
        self._use(self.rolling.current())

    def _use(self, t: Thresholds) -> None:
        if self.decider is not None:
            self.decider.thresholds = t
        self.metrics.export_thresholds(t, self.s.fraud_review_rate, self.s.fraud_decline_rate)

    async def start(self) -> None:
        """At worker start: check the served model's input order (:class:`~scorers.fraud.ContractMismatch`
        refuses to serve), take its metadata's thresholds as the defaults, then the thresholds last
        stored in Redis (until this worker has seen ``FRAUD_THRESHOLD_MIN_SCORES`` scores of its own)."""
        scorer = getattr(self.decider, "scorer", None)
        if scorer is not None and hasattr(scorer, "check_contract"):
            meta = await scorer.check_contract()
            if meta is not None:
                self.rolling.set_defaults(Thresholds.from_meta(meta, self.rolling.defaults))
            else:
                self._contract_task = asyncio.ensure_future(self._follow_contract(scorer))
        stored = await self.features.load_thresholds()
        if stored is not None and stored.source == "live" and self.rolling.current().source != "live":
            self.rolling.resume(stored)
        self._use(self.rolling.current())

    async def _follow_contract(self, scorer) -> None:
        await scorer.follow_contract()
        if scorer.meta is not None:
            self.rolling.set_defaults(Thresholds.from_meta(scorer.meta, self.rolling.defaults))
            self._use(self.rolling.current())

    async def publish_thresholds(self) -> Thresholds | None:
        """Store the live thresholds in Redis (the HTTP service's, and a restarted worker's); before
        there are live ones nothing is stored: the HTTP service uses the model metadata's, as we do."""
        t = self.rolling.current()
        if t.source != "live":
            return None
        await self.features.store_thresholds(t)
        return t

    async def orders(self, messages: Sequence[RawMessage]) -> list[Output]:
        good, out, marks = self.intake.validate(Order, messages)
        if not good:
            return out
        orders = [o for _, o in good]
        t0 = time.perf_counter()
        features, stored = await self.features.apply_orders_checked(orders)  # one round trip
        self.metrics.redis_latency.labels("orders").observe(time.perf_counter() - t0)
        fresh, seen = [], set()
        for (m, order), values in zip(good, features):
            if order.order_id in stored:  # decided before (a redelivery): the same verdict again
                self.metrics.verdicts_reemitted.inc()
                out.append(Output(self.s.topic_fraud_verdicts, order.order_id, stored[order.order_id]))
            elif order.order_id in seen:  # the same order twice in one batch: decided and emitted once
                self.metrics.verdicts_reemitted.inc()
            else:
                seen.add(order.order_id)
                fresh.append((m, order, values))
        if fresh:
            out += await self._decide(fresh)
        self.intake.advance(marks)
        return out

    async def _decide(self, good: list[tuple[RawMessage, Order, dict[str, float]]]) -> list[Output]:
        orders = [o for _, o, _ in good]
        now = time.time()
        for m, _, _ in good:
            self.metrics.feature_freshness.labels("order").observe(max(0.0, now - m.timestamp))
        decisions = await self.decider.decide(orders, [v for _, _, v in good], self.online, decision="fraud")
        self.rolling.add(d.score for d in decisions)  # the next batch is decided with what follows
        self._use(self.rolling.current())
        now = time.time()  # latency up to the verdict being stored (one round trip) and handed to the producer
        verdicts, entries = [], []
        for (m, order, _), d in zip(good, decisions):
            record = {"x": d.x, "p_triton": d.p_model, "p_served": d.score}  # p_served: the thresholds' precision
            if self.challenger is not None:  # shadow: stored for the label join, never decides
                record.update(p_challenger=self.challenger.predict(d.x))
            verdict = FraudVerdict(order_id=order.order_id, score=d.score, verdict=d.verdict, reasons=d.reasons,
                                   reason_codes=d.reason_codes, model_version=d.model_version, latency_ms=max(0.0, now - m.timestamp) * 1e3,
                                   degraded=d.degraded, ts=now)
            verdicts.append((m, verdict, record))
            entries.append((order.order_id, verdict.to_bytes(), record, order.ts))
        recorded = await self.features.record_verdicts(entries)
        out, early_records, early_labels = [], {}, {}
        for (m, verdict, record), (oid, mine, _, _), (emitted, label) in zip(verdicts, entries, recorded):
            if emitted != mine:  # another worker decided this order first: its verdict stands
                out.append(Output(self.s.topic_fraud_verdicts, oid, emitted))
                self.metrics.verdicts_reemitted.inc()
                continue
            out.append(Output(self.s.topic_fraud_verdicts, oid, emitted, decided_from=m.timestamp))
            if label is not None:  # its label came first and waited: learn now
                early_records[oid], early_labels[oid] = record, label
            self.metrics.verdicts.labels(verdict.verdict).inc()
            self.metrics.fraud_score.labels("fraud").observe(verdict.score)
            self.metrics.model_version("fraud", verdict.model_version)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("verdict %s", verdict.verdict, extra={"order_id": oid, "topic": m.topic, "partition": m.partition,
                                                                "offset": m.offset, "score": round(verdict.score, 6),
                                                                "degraded": verdict.degraded, "decision": "fraud"})
        if early_records:
            self._learn(early_records, early_labels, "early")
        return out

    async def fraud_labels(self, messages: Sequence[RawMessage]) -> list[Output]:
        """Join each label to the feature vector its order was scored with, and learn from it; a label
        whose order has no verdict yet is kept (``LABEL_TTL_S``) and joined when the verdict is made."""
        good, out, _ = self.intake.validate(FraudLabel, messages, event_time=False)
        labels = {label.order_id: label.is_fraud for _, label in good}
        if labels:
            records = await self.features.join_labels(  # None: kept until the order's verdict
                labels, at={label.order_id: label.ts for _, label in good})  # a fraud label links from its ts
            self.metrics.labels.labels("kept").inc(sum(r is None for r in records.values()))
            self._learn({o: r for o, r in records.items() if r is not None}, labels, "joined")
        return out

    async def learn_unlabelled(self, max_orders: int) -> int:
        """Orders older than ``LABEL_WINDOW_S`` (event time, against the newest order seen) with
        no label are learned as legitimate. Returns how many."""
        newest = self.intake.newest(self.s.topic_orders)
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
            if record.get("p_served") is not None:
                self.rolling.add_labels([(record["p_served"], bool(labels[order_id]))])
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

