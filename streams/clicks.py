"""The clicks role: clicks -> click features and trends (one Redis round trip per batch, and one more for the
co-visitation pairs its replies name) -> recommendations.

Clicks arrive an order of magnitude faster than orders and may batch longer
(``CLICKS_BATCH_MAX`` / ``WORKER_BATCH_WITHIN_S``: fewer script calls per click). Each click goes to
the store with its Kafka position, so the counts that are not idempotent count it once however often it is redelivered
(after a crash, or when its partition moves to another worker), with no key per event. A clicking user is marked for a
recommendation refresh, done apart from ingestion by a timer (``REC_REFRESH_INTERVAL_S``):
a user's clicks coalesce into one refresh and a slow recommender never holds back features.
Views also count in their categories' trending items (``ss:cat:{c}:trend``), from which a user the
model cannot know gets a cold-start list (:mod:`scorers.recommender`).
The co-visitation round is the batch's follow-up (:class:`streams.runtime.Applied`): a pipelined worker sends
the next batch's calls while it runs, and commits the batch once it ended.
"""

from __future__ import annotations

import time
from functools import partial
from itertools import islice
from typing import Callable, NamedTuple, Sequence

from features.client import FeatureClient
from features.store import ClickWave
from monitoring.metrics import Metrics
from scorers.recommender import COVIS_WINDOW, HISTORY_LEN, ColdStart, Recommender
from streams.runtime import Applied
from streams.validation import Intake, Marks, Output, RawMessage
from streamscore.events import Click, Recommendations
from streamscore.settings import Settings


class PreparedClicks(NamedTuple):
    """A click batch validated and planned (:meth:`ClickProcessor.prepare`), not yet applied."""

    good: list  # (message, Click) of the valid clicks
    out: list[Output]  # their dead letters
    marks: Marks  # the watermarks the batch moves to once applied
    waves: list[ClickWave]  # its store calls (features.client.FeatureClient.plan_clicks)


class ClickProcessor:
    def __init__(self, settings: Settings, features: FeatureClient, recommender: Recommender, metrics: Metrics,
                 intake: Intake | None = None):
        self.s = settings
        self.features = features
        self.recommender = recommender
        self.metrics = metrics
        self.intake = intake or Intake(settings, metrics)
        self.recommended: set[str] = set()  # items this worker has recommended (coverage metric)
        # users waiting for a recommendation refresh: user -> (recent items, first click's Kafka time); kept
        # only while the refresh timer drains it (REC_REFRESH_INTERVAL_S > 0): with no refresh nothing would,
        # and a worker's heap would grow by every user it ever saw
        self.refreshing = settings.rec_refresh_interval_s > 0
        self.pending_recs: dict[str, tuple[list[str], float]] = {}

    async def clicks(self, messages: Sequence[RawMessage]) -> list[Output]:
        """Update click features (their co-visitation round included); mark the clicking users for a
        recommendation refresh."""
        done = await self.apply(self.prepare(messages))
        if done.follow_up is not None:
            await done.follow_up()
        return done.outputs

    def prepare(self, messages: Sequence[RawMessage], after: Marks | None = None) -> PreparedClicks:
        """The pure half of :meth:`clicks` (no I/O, nothing changed): validation (``after``: the
        watermarks of the batch before, still being applied) and the batch's store calls. A pipelined
        worker prepares its next batch while Redis runs this one (:mod:`streams.runtime`)."""
        good, out, marks = self.intake.validate(Click, messages, after=after)
        clicks = [c for _, c in good]
        # positions: each count once per event (features.lua); the categories' trends in the same round trip
        fields: dict[tuple[str, int], str] = {}  # '<topic>:<partition>', built once per partition
        positions = []
        for m, _ in good:
            f = fields.get((m.topic, m.partition))
            if f is None:
                f = fields[(m.topic, m.partition)] = f"{m.topic}:{m.partition}"
            positions.append((f, m.offset))
        waves = self.features.plan_clicks(clicks, HISTORY_LEN, positions, trends=True)
        return PreparedClicks(good, out, marks, waves)

    async def apply(self, p: PreparedClicks, on_sent: Callable[[], None] | None = None) -> Applied:
        """The I/O half of :meth:`clicks`: send the prepared calls (``on_sent()`` once they are out), then
        mark the users and advance the watermarks. The batch's co-visitation pairs (known from the replies) are
        its follow-up (:class:`streams.runtime.Applied`): a pipelined worker adds them while its next batch's
        calls run."""
        if not p.good:
            return Applied(p.out)
        t0 = time.perf_counter()
        sent = await self.features.send_clicks(p.waves, on_sent)
        self.metrics.rec_clicks.labels("false").inc(sent.hits[0])
        self.metrics.rec_clicks.labels("true").inc(sent.hits[1])
        self.metrics.redis_latency.labels("clicks").observe(time.perf_counter() - t0)
        now, freshness = time.time(), self.metrics.feature_freshness.labels("user")
        for m, _ in p.good:
            freshness.observe(max(0.0, now - m.timestamp))
        if self.refreshing:
            produced_at = {c.user_id: m.timestamp for m, c in p.good}
            for user_id, history in sent.recent.items():
                first = self.pending_recs.pop(user_id, (None, produced_at[user_id]))[1]
                self.pending_recs[user_id] = (history, first)  # re-insert: oldest waiting users stay first
        self.intake.advance(p.marks)
        return Applied(p.out, partial(self._covisitation, sent.pairs) if sent.pairs else None)

    async def _covisitation(self, pairs: list[list[str]]) -> None:
        t0 = time.perf_counter()
        await self.features.add_covisitation(pairs)
        self.metrics.redis_latency.labels("covisitation").observe(time.perf_counter() - t0)

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
        now_ts = self.intake.newest(self.s.topic_clicks) or 0.0  # the clicks' event time: decays are to it
        n = self.s.rec_top_k + HISTORY_LEN
        # popular and global trending items and the users' category counts: one round trip
        popular, trending, categories = await self.features.cold_start_reads(users, n, now_ts)
        cold = None
        if self.s.rec_cold_trends:  # the cold users' categories' trends: one more read, after Triton, if any
            cold = ColdStart(categories, lambda cats: self.features.category_trends(cats, n, now_ts), trending)
        neighbours = None
        if self.s.rec_online_blend:  # co-visitation of the users' newest items
            neighbours = await self.features.covis_neighbours(
                [i for h, _ in batch.values() for i in h[:COVIS_WINDOW]], now_ts)
        recs = await self.recommender.recommend({u: h for u, (h, _) in batch.items()}, popular, neighbours, cold)
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
            self.metrics.model_version("recommendation", rec.model_version)
            self.recommended.update(rec.items)
        known = await self.features.known_items()
        if known:
            self.metrics.rec_coverage.set(min(1.0, len(self.recommended) / known))
        return out
