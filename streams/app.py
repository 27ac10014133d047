"""The Faust app: one agent per input topic, each feeding batches to a processor.

Delivery: at least once. An agent takes up to ``WORKER_BATCH_MAX`` events (or what
arrived within ``WORKER_BATCH_WITHIN_S``), processes them, publishes the outputs, and
only then are the batch's offsets acknowledged (``Stream.take_events`` acks after the
batch is handled) and later committed. After a crash the uncommitted tail is
processed again: feature writes are idempotent (see :mod:`features.store`), and
output records are keyed (verdicts by order id, recommendations by user) so
consumers keep the latest per key.

A batch that fails because Redis is unreachable is retried with capped backoff until
Redis is back: the partition waits and nothing is skipped. A batch that fails for any
other reason is retried ``BATCH_ATTEMPTS`` times, then its events go to the
dead-letter topic with reason ``processing_error`` and the worker moves on. Kafka
transactions are not used (the local broker has none).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Sequence

import faust
import mode
import redis.exceptions
from prometheus_client import start_http_server

from features.client import FeatureClient
from monitoring.metrics import Metrics
from scorers.fraud import FraudScorer
from scorers.pricing import PricingScorer
from scorers.recommender import Recommender
from scorers.triton import TritonScorer
from streams.batch_consumer import BatchConsumer
from streams.transport import App
from streams.processors import Output, Processors, RawMessage
from streamscore.settings import Settings

log = logging.getLogger(__name__)

BATCH_ATTEMPTS = 4  # for errors other than a dependency outage
MAX_RETRY_DELAY_S = 5.0
# Redis unreachable or timing out: wait for it rather than dead-letter good events.
DEPENDENCY_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def build_processors(settings: Settings, metrics: Metrics) -> Processors:
    """Clients and scorers for one worker (must be called inside the running event loop)."""
    triton = TritonScorer(settings, metrics, timeout_ms=settings.stream_triton_timeout_ms)
    return Processors(settings, FeatureClient.connect(settings), FraudScorer(triton, settings),
                      Recommender(triton, settings), PricingScorer(triton, settings), metrics)


def create_app(settings: Settings, metrics: Metrics | None = None) -> faust.App:
    metrics = metrics or Metrics()
    app = App(
        settings.app_id,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        broker=[f"kafka://{h}" for h in settings.kafka_bootstrap.split(",")],
        store="memory://",
        web_enabled=False,
        topic_disable_leader=True,
        topic_allow_declare=False,  # topics are created explicitly (stack up / kafka-init)
        topic_partitions=settings.topic_partitions,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_s,
        broker_commit_every=settings.batch_max,
        producer_acks=-1,
        stream_wait_empty=False,
        logging_config=None,
    )

    def raw_topic(name: str) -> faust.TopicT:
        return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    outputs = {t: raw_topic(t) for t in settings.output_topics}
    state: dict[str, Processors] = {}
    lock = asyncio.Lock()

    async def processors() -> Processors:
        async with lock:
            if "p" not in state:
                p = build_processors(settings, metrics)
                await p.restore_online()
                state["p"] = p
        return state["p"]

    async def publish(records: Sequence[Output]) -> None:
        futures = [await outputs[r.topic].send(key=r.key.encode(), value=r.value) for r in records]
        for f in futures:
            await f  # wait for the broker's ack before the input offsets are acked

    async def run_batch(handler: Callable[[Sequence[RawMessage]], Awaitable[list[Output]]],
                        batch: Sequence[RawMessage], p: Processors) -> list[Output]:
        """Run ``handler``; retry a dependency outage until it ends (the partition waits, nothing
        is skipped), and dead-letter a batch that keeps failing for any other reason."""
        delay, attempt = 0.2, 0
        while True:
            attempt += 1
            try:
                outputs = await handler(batch)
                metrics.events.labels(batch[0].topic).inc(len(batch))  # once per event, retries aside
                return outputs
            except DEPENDENCY_ERRORS as exc:
                log.warning("batch from %s: dependency unavailable (%s), retry %d in %.1fs", batch[0].topic, exc,
                            attempt, delay)
            except Exception as exc:
                if attempt >= BATCH_ATTEMPTS:
                    log.exception("batch of %d from %s failed %d times: dead-lettering", len(batch), batch[0].topic,
                                  attempt)
                    return [p.dead(m, exc) for m in batch]
                log.warning("batch from %s failed (%s), retry %d in %.1fs", batch[0].topic, exc, attempt, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY_S)

    def timer(interval: float):
        """``app.timer`` whose body's failure (e.g. Redis down) is logged, not fatal: an exception
        escaping a Faust timer crashes the whole worker."""
        def register(fn):
            async def guarded():
                try:
                    await fn()
                except Exception:
                    log.exception("timer %s failed; next tick in %.1fs", fn.__name__, interval)
            guarded.__name__ = fn.__name__
            return app.timer(interval=interval)(guarded)
        return register

    def agent_for(topic_name: str, method: str):
        async def agent(stream):
            p = await processors()
            async for events in stream.take_events(settings.batch_max, within=settings.batch_within_s):
                batch = [RawMessage(e.message.topic, e.message.partition, e.message.offset, e.message.key,
                                    e.message.value, e.message.timestamp) for e in events]
                await publish(await run_batch(getattr(p, method), batch, p))

        agent.__name__ = f"{method}_agent"
        agent.__qualname__ = agent.__name__
        return app.agent(raw_topic(topic_name), name=f"streamscore.{method}")(agent)

    def refresher(pending: str, method: str, batch_size: int, drain: bool = True):
        """A timer body draining ``Processors.<pending>`` through ``Processors.<method>``, a batch at a
        time (``drain=False``: one batch per tick, the rest waits, coalesced, for the next ones).
        On failure (Redis or the broker unavailable, shutdown) it stops until the next tick; the
        batch in hand is lost, and those users/items are refreshed on their next event."""
        async def refresh():
            p = await processors()
            while getattr(p, pending) and not app.should_stop:
                await publish(await getattr(p, method)(batch_size))
                if not drain:
                    break
        refresh.__name__ = method
        return refresh

    if settings.rec_refresh_interval_s > 0:
        timer(settings.rec_refresh_interval_s)(
            refresher("pending_recs", "refresh_recommendations", settings.rec_refresh_max_users))
    # Prices: one batch per tick. Pricing works in hours of event time, so under a fast replay it may
    # fall behind in wall time (items stay pending, coalesced) rather than take the CPU that
    # checkout verdicts need: at most PRICE_REFRESH_MAX_ITEMS evaluations per PRICE_REFRESH_INTERVAL_S.
    timer(settings.price_refresh_interval_s)(
        refresher("pending_prices", "refresh_prices", settings.price_refresh_max_items, drain=False))

    @timer(2.0)
    async def record_lag():
        """Consumer lag per assigned partition of the Faust-consumed topics (messages)."""
        for tp in app.consumer.assignment():
            position = await app.consumer.position(tp)
            if position is not None:
                metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                    max(0, app.consumer.highwater(tp) - position))

    @timer(5.0)
    async def learn_silence():
        """Orders whose label window passed in silence are learned as legitimate."""
        p = await processors()
        while await p.learn_unlabelled(1000) == 1000 and not app.should_stop:
            pass

    @timer(settings.online_checkpoint_interval_s)
    async def checkpoint_online():
        p = await processors()
        if p.online.n_learned != state.get("checkpointed_at"):
            await p.checkpoint_online()
            state["checkpointed_at"] = p.online.n_learned

    @app.service
    class CheckpointOnStop(mode.Service):
        """Saves the online models when the worker stops, so a restart loses no learning."""

        async def on_stop(self) -> None:
            if "p" in state and state["p"].online.n_learned != state.get("checkpointed_at"):
                try:
                    version = await state["p"].checkpoint_online()
                    log.info("online models checkpointed at shutdown (v%d)", version)
                except Exception:
                    log.exception("could not checkpoint the online models at shutdown")

    if settings.clicks_consumer == "batch":
        app.service(_batch_service(settings.topic_clicks, "clicks", processors, publish, run_batch))
    else:
        agent_for(settings.topic_clicks, "clicks")
    agent_for(settings.topic_orders, "orders")
    agent_for(settings.topic_catalog, "catalog")
    agent_for(settings.topic_fraud_labels, "fraud_labels")

    return app


def _batch_service(topic: str, method: str, processors, publish, run_batch) -> type[mode.Service]:
    """A Faust app service feeding ``topic`` to ``Processors.<method>`` in batches (see
    :mod:`streams.batch_consumer`)."""

    class BatchTopicService(mode.Service):
        consumer: BatchConsumer | None = None
        running: asyncio.Task | None = None

        async def on_start(self) -> None:
            p = await processors()

            async def handle(batch):
                await publish(await run_batch(getattr(p, method), batch, p))

            self.consumer = BatchConsumer(p.s, topic, handle, p.metrics)
            self.running = asyncio.ensure_future(self.consumer.run())

        async def on_stop(self) -> None:
            if self.consumer is None:
                return
            self.consumer.stopping = True  # finish (and commit) the batch in hand, then leave the group
            try:
                await asyncio.wait_for(asyncio.shield(self.running), timeout=30)
            except Exception:
                log.exception("%s consumer did not stop cleanly", topic)
            await self.consumer.close()

    BatchTopicService.__name__ = f"{method.title()}BatchService"
    return BatchTopicService


def run_worker(settings: Settings) -> None:
    """Run one worker process until SIGTERM/SIGINT (``python -m streamscore worker``)."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    metrics = Metrics()
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port, addr="0.0.0.0", registry=metrics.registry)
    app = create_app(settings, metrics)
    from faust.worker import Worker

    Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False).execute_from_commandline()
