"""The worker: a Faust app running one or all of three roles, each its own consumer group.

===========  ==========================  ==============================================  ===========
role         consumes                    decides / writes                                profile
===========  ==========================  ==============================================  ===========
``fraud``    ``orders``, ``fraud-labels``  verdicts (:mod:`streams.fraud`), order features   latency
``clicks``   ``clicks``                  click features, recommendations (:mod:`streams.clicks`)  throughput
``pricing``  ``catalog``, ``orders``     revenue per item, prices (:mod:`streams.pricing`)  throughput
===========  ==========================  ==============================================  ===========

The decision a checkout waits for never shares an event loop with throughput work: production
(``docker-compose.yml``) and the demo run each role as its own process (``streamscore worker
--role fraud``), scaled on its own; ``--role all`` runs the three in one process for development
(still three consumer groups, so switching between the two keeps every offset).

Consumption goes through :class:`streams.runtime.RoleConsumer` (confluent-kafka, a batch at a
time) rather than Faust agents: Faust hands events to an agent one at a time (a task switch and
a queue hand-off per event, measured ~4-5k events/s per worker on 2 cores), and ``take()``'s
batch window adds its ``within`` to every verdict. Faust runs the rest: the services, the
timers (recommendation and price refreshes, label silence, checkpoints), the producer
(acks=all) and signal handling. Delivery is at least once: see :mod:`streams.runtime`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Sequence

import faust
import faust.app.base
import mode
from prometheus_client import start_http_server

from features.client import FeatureClient
from monitoring.metrics import Metrics
from scorers.recommender import Recommender
from scorers.triton import TritonScorer
from streams.clicks import ClickProcessor
from streams.runtime import Profile, RoleConsumer, Stopping, fit_for_topic, tune_collector
from streams.validation import Output
from streamscore import logs
from streamscore.deadletters import DeadLetters
from streamscore.kafka_config import faust_credentials
from streamscore.settings import Settings

log = logging.getLogger(__name__)

ROLES = ("fraud", "clicks", "pricing")


class _Boot(faust.app.base.BootStrategy):
    """Faust without its own consumer: every input is read by :class:`~streams.runtime.RoleConsumer`."""

    enable_kafka_consumer = False


class WorkerApp(faust.App):
    BootStrategy = _Boot
MAX_PUBLISH_DELAY_S = 5.0
FUNNEL_FOLD_S = 2.0  # how old (s) the funnel transitions checkout reads may be (features.client.fold_globals)


def roles_of(role: str) -> tuple[str, ...]:
    """The roles ``role`` stands for (``all``: every role)."""
    return ROLES if role == "all" else (role,)


def profile(settings: Settings, role: str) -> Profile:
    """The consumer profile of ``role``: its group, topics and latency/throughput tuning."""
    group = f"{settings.app_id}-{role}"
    if role == "fraud":
        return Profile(group, (settings.topic_orders, settings.topic_fraud_labels), settings.fraud_fetch_max_wait_ms,
                       settings.fraud_batch_max, 0.0, settings.fraud_session_timeout_s, settings.fraud_heartbeat_s)
    topics = (settings.topic_clicks,) if role == "clicks" else (settings.topic_catalog, settings.topic_orders)
    batch_max = settings.clicks_batch_max if role == "clicks" else settings.batch_max
    return Profile(group, topics, settings.fetch_max_wait_ms, batch_max, settings.batch_within_s,
                   settings.session_timeout_s, settings.heartbeat_s)


class Roles:
    """The processors of the roles one worker runs, built inside the running event loop."""

    def __init__(self, settings: Settings, metrics: Metrics, roles: Sequence[str]):
        self.features = FeatureClient.connect(settings, metrics)
        self.fraud = self.clicks = self.pricing = None
        # a role's own modules are imported only by a worker that runs it: the fraud and pricing
        # scorers load River (and with it scikit-learn and SciPy), ~1.9 s of a clicks worker's start
        if "fraud" in roles:
            from scorers.fraud import FraudDecider, FraudScorer
            from streams.fraud import FraudProcessor

            triton = TritonScorer(settings, metrics, timeout_ms=settings.fraud_triton_timeout_ms)
            self.fraud = FraudProcessor(settings, self.features, FraudDecider(FraudScorer(triton, settings), settings),
                                        metrics)
        if "clicks" in roles or "pricing" in roles:
            triton = TritonScorer(settings, metrics, timeout_ms=settings.stream_triton_timeout_ms)
            if "clicks" in roles:
                self.clicks = ClickProcessor(settings, self.features, Recommender(triton, settings), metrics)
            if "pricing" in roles:
                from scorers.pricing import PricingScorer
                from streams.pricing import PricingProcessor

                self.pricing = PricingProcessor(settings, self.features, PricingScorer(triton, settings), metrics)

    def handlers(self, settings: Settings, role: str) -> dict:
        """topic -> (batch handler, dead-letter builder[, stage]) of ``role``: a role whose topics all have a
        :class:`~streams.runtime.Stage` prepares each batch while the one before is applied."""
        if role == "fraud":
            p = self.fraud
            return {settings.topic_orders: (p.orders, p.intake.dead),
                    settings.topic_fraud_labels: (p.fraud_labels, p.intake.dead)}
        if role == "clicks":
            return {settings.topic_clicks: (self.clicks.clicks, self.clicks.intake.dead, self.clicks)}
        p = self.pricing
        return {settings.topic_catalog: (p.catalog, p.intake.dead), settings.topic_orders: (p.orders, p.intake.dead)}


def create_app(settings: Settings, metrics: Metrics | None = None, role: str | None = None) -> faust.App:
    """The Faust app of one worker running ``role`` (default ``WORKER_ROLE``)."""
    metrics = metrics or Metrics()
    role = role or settings.worker_role
    roles = roles_of(role)
    app = WorkerApp(
        f"{settings.app_id}-{role}",
        broker=[f"kafka://{h}" for h in settings.kafka_bootstrap.split(",")],
        broker_credentials=faust_credentials(settings),  # the producer authenticates like the consumers
        store="memory://",
        web_enabled=False,
        topic_disable_leader=True,
        topic_allow_declare=False,  # topics are created explicitly (stack up / kafka-init)
        topic_partitions=settings.topic_partitions,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_s,
        producer_acks=-1,
        logging_config=None,
    )

    def raw_topic(name: str) -> faust.TopicT:
        return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    outputs = {t: raw_topic(t) for t in settings.output_topics}
    state: dict = {}
    lock = asyncio.Lock()

    async def built() -> Roles:
        async with lock:
            if "r" not in state:
                r = Roles(settings, metrics, roles)
                if r.fraud is not None:
                    await r.fraud.start()  # the model's input contract (a mismatch: refuse to serve), thresholds
                    await r.fraud.restore_online()
                tune_collector()  # once per process, what start built (restored models included) frozen
                state["r"] = r
        return state["r"]

    letters = DeadLetters(settings)

    async def publish(records: Sequence[Output]) -> None:
        """Send ``records`` and wait for the broker's acks; retry what failed until it is acked.
        A record the broker could never take is replaced by a dead letter (:func:`fit_for_topic`)."""
        pending = [fit_for_topic(r, settings.topic_dead_letter, letters) for r in records]
        delay = 0.2
        while pending:
            sent = []
            for r in pending:
                try:
                    sent.append((r, await outputs[r.topic].send(key=r.key.encode(), value=r.value)))
                except Exception as exc:  # the producer refused it before sending (buffer, size, stopping)
                    sent.append((r, exc))
            failed = []
            for r, fut in sent:
                if isinstance(fut, Exception):
                    failed.append((r, fut))
                    continue
                try:
                    await fut  # the broker's ack: only then may the input offsets be committed
                except Exception as exc:
                    failed.append((r, exc))
                else:
                    if r.decided_from is not None:  # order's Kafka timestamp -> the verdict acked
                        metrics.decision_latency.labels("fraud").observe(max(0.0, time.time() - r.decided_from))
            if not failed:
                return
            for r, exc in failed:
                metrics.publish_failures.labels(r.topic, "retried").inc()
            log.warning("%d of %d records not acknowledged (%r); retry in %.1fs", len(failed), len(pending),
                        failed[0][1], delay)
            if app.should_stop:
                raise Stopping()
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_PUBLISH_DELAY_S)
            pending = [r for r, _ in failed]

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

    for r in roles:
        app.service(_consumer_service(settings, r, built, publish, metrics))

    if "clicks" in roles and settings.rec_refresh_interval_s > 0:
        @timer(settings.rec_refresh_interval_s)
        async def refresh_recommendations():
            """Recommendations of the users who clicked, a batch at a time until none waits. On failure
            (Redis or the broker unavailable, shutdown) the batch in hand is lost; those users are
            refreshed on their next click."""
            c = (await built()).clicks
            while c.pending_recs and not app.should_stop:
                await publish(await c.refresh_recommendations(settings.rec_refresh_max_users))

    if "clicks" in roles:
        @timer(FUNNEL_FOLD_S)
        async def fold_funnel():
            """The funnel transitions of every user bucket summed into the one hash checkout reads."""
            await (await built()).features.fold_globals()

    if "pricing" in roles:
        # Prices: one batch per tick. Pricing works in hours of event time, so under a fast replay it may
        # fall behind in wall time (items stay pending, coalesced): at most PRICE_REFRESH_MAX_ITEMS
        # evaluations per PRICE_REFRESH_INTERVAL_S.
        @timer(settings.price_refresh_interval_s)
        async def refresh_prices():
            p = (await built()).pricing
            if p.pending_prices and not app.should_stop:
                await publish(await p.refresh_prices(settings.price_refresh_max_items))

    if "fraud" in roles:
        @timer(5.0)
        async def learn_silence():
            """Orders whose label window passed in silence are learned as legitimate."""
            f = (await built()).fraud
            while await f.learn_unlabelled(1000) == 1000 and not app.should_stop:
                pass

        @timer(settings.fraud_threshold_refresh_s)
        async def publish_thresholds():
            """The thresholds in use, for the HTTP service (and a restarted worker)."""
            await (await built()).fraud.publish_thresholds()

        @timer(settings.online_checkpoint_interval_s)
        async def checkpoint_online():
            f = (await built()).fraud
            if f.online.n_learned != state.get("checkpointed_at"):
                await f.checkpoint_online()
                state["checkpointed_at"] = f.online.n_learned

        @app.service
        class CheckpointOnStop(mode.Service):
            """Saves the online models when the worker stops, so a restart loses no learning."""

            async def on_stop(self) -> None:
                f = state["r"].fraud if "r" in state else None
                if f is not None and f.online.n_learned != state.get("checkpointed_at"):
                    try:
                        version = await f.checkpoint_online()
                        log.info("online models checkpointed at shutdown (v%d)", version)
                    except Exception:
                        log.exception("could not checkpoint the online models at shutdown")

    return app


def _consumer_service(settings: Settings, role: str, built, publish, metrics: Metrics) -> type[mode.Service]:
    """A Faust app service running ``role``'s :class:`~streams.runtime.RoleConsumer`."""

    class RoleService(mode.Service):
        consumer: RoleConsumer | None = None
        running: asyncio.Task | None = None

        async def on_start(self) -> None:
            r = await built()
            self.consumer = RoleConsumer(settings, profile(settings, role), r.handlers(settings, role), publish,
                                         metrics)
            self.running = asyncio.ensure_future(self.consumer.run())
            self.running.add_done_callback(self._ended)

        def _ended(self, task: asyncio.Task) -> None:
            if not task.cancelled() and task.exception() is not None:  # a bug: say so loudly, stop the worker
                log.critical("%s consumer crashed", role, exc_info=task.exception())
                self.crash(task.exception())

        async def on_stop(self) -> None:
            if self.consumer is None:
                return
            self.consumer.stopping = True  # finish (and commit) the batch in hand, then leave the group
            try:
                await asyncio.wait_for(asyncio.shield(self.running), timeout=30)
            except Exception:
                log.exception("%s consumer did not stop cleanly", role)
            await self.consumer.close()

    RoleService.__name__ = f"{role.title()}Consumer"
    return RoleService


def run_worker(settings: Settings, role: str | None = None) -> None:
    """Run one worker process until SIGTERM/SIGINT (``python -m streamscore worker [--role R]``)."""
    logs.configure(settings)
    if settings.worker_nice:
        os.nice(settings.worker_nice)  # below the fraud role's processes on a shared host
    metrics = Metrics()
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port, addr="0.0.0.0", registry=metrics.registry)
    app = create_app(settings, metrics, role)
    from faust.worker import Worker

    # override_logging=False: Faust keeps streamscore.logs' configuration (LOG_FORMAT) instead of its own;
    # no terminal spinner (its control codes would land in the log; Faust's own set-up used to drop it)
    worker = Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False, override_logging=False)
    worker.spinner = None
    worker.execute_from_commandline()
