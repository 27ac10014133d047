"""The consume -> process -> publish -> commit loop of a worker role, with per-event isolation.

Each role (:mod:`streams.app`) reads its topics with one confluent-kafka consumer in a consumer
group of its own (``<app id>-<role>``), a batch at a time, and hands each topic's slice of the
batch to its processor. Two consumption profiles (:class:`Profile`):

* latency (the fraud role, a checkout waits): block for the first message, then take whatever
  else is already fetched (no batch window), with a short broker fetch wait
  (``FRAUD_FETCH_MAX_WAIT_MS``); under load batches form by themselves while one is processed;
* throughput (clicks, pricing): wait up to ``WORKER_BATCH_WITHIN_S`` to fill ``CLICKS_BATCH_MAX`` (clicks)
  or ``WORKER_BATCH_MAX`` (pricing).

Invariants:

* **At least once, nothing lost.** Offsets are committed only after every output of the batch
  (verdicts, recommendations, dead letters) was acknowledged by the broker. A publish that fails
  is retried until it succeeds (or the worker stops, committing nothing more); an output the
  broker can never take (too large) is replaced by a dead letter saying so. So no offset is
  committed for an event that has neither an output nor a dead letter. Redeliveries are harmless:
  feature writes are idempotent and a redelivered order gets its recorded verdict
  (:mod:`streams.fraud`). Commits are asynchronous (ordered by librdkafka); the last one at
  shutdown is synchronous.
* **One event cannot take its neighbours with it.** When a batch fails for any reason other
  than a dependency outage, each of its events is processed on its own; an event that still
  fails (twice) goes alone to the dead-letter topic as ``processing_error``.
* **A dependency outage (Redis unreachable) waits**: the batch is retried with capped backoff
  until Redis is back; the partition waits and nothing is skipped or dead-lettered.
* A batch's follow-up (:class:`Applied`: the clicks' co-visitation round) runs after the follow-up of the
  batch before, and the batch is published and committed only once it ended. It keeps no watermarks, so the next
  batch is applied meanwhile (:meth:`RoleConsumer._run_pipelined`). A follow-up waits out an outage like a batch;
  one that fails otherwise is given up after SINGLE_EVENT_ATTEMPTS (logged, counted in
  ``streamscore_follow_ups_dropped_total``): its batch's events were applied, only that round is missing.
* Nothing here raises out of the loop for an event or a publish: an agent never crashes on input.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, NamedTuple, Protocol, Sequence

import redis.exceptions
from confluent_kafka import Consumer, KafkaError, TopicPartition

from monitoring.metrics import Metrics
from streams.validation import Marks, Output, RawMessage
from streamscore.collector import freeze_start
from streamscore.deadletters import DeadLetters
from streamscore.events import InvalidEvent
from streamscore.settings import Settings

log = logging.getLogger(__name__)

# The cycle collector of a worker past its start (tune_collector): a young generation of up to this many
# container objects (CPython's default is 700, a young collection every few dozen clicks of a batch being
# planned), and each older generation collected once per 20 collections of the one below (default 10)
COLLECTOR_THRESHOLDS = (10_000, 20, 20)


def tune_collector() -> None:
    """Set up the cycle collector of a worker that has started (once per process, when its roles are built:
    ``streams.app``). What exists now (modules, the app, the
    models: ~95,000 tracked objects in a clicks worker, ~190,000 with the fraud role's) is frozen out of every
    later collection (:func:`streamscore.collector.freeze_start`), and the generations take
    :data:`COLLECTOR_THRESHOLDS`: the collector looks for cycles less often, over fewer objects. The HTTP
    service freezes its start the same way but keeps CPython's thresholds (``serving.app``).

    Measured (bench_scaleout, one clicks worker, 93,209 first-delivery clicks, standalone): full collections
    cost ~16 us a click (of ~60) before, the whole collector 2-4 us after; worker CPU 0.079-0.084 -> 0.051-0.059
    s per 1,000 clicks in alternating runs (BENCHMARKS.md, issue 14 fifth pass). In a fraud worker a full
    collection no longer walks the River models either (a pause on the verdict path; not measured apart).
    """
    freeze_start(COLLECTOR_THRESHOLDS)


SINGLE_EVENT_ATTEMPTS = 2  # an event processed alone is tried this often before its dead letter
MAX_RETRY_DELAY_S = 5.0
POLL_S = 0.2  # longest a consumer call blocks, so a stop request is seen
# Redis unreachable or timing out: wait for it rather than dead-letter good events.
DEPENDENCY_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
MAX_OUTPUT_BYTES = 900_000  # below the producers' 1 MiB request limit (key, headers and framing included)

Handler = Callable[[Sequence[RawMessage]], Awaitable[list[Output]]]
Dead = Callable[[RawMessage, Exception], Output]
Publish = Callable[[Sequence[Output]], Awaitable[None]]


class Applied(NamedTuple):
    """What a :class:`Stage` applied: the batch's outputs, and maybe a follow-up, a last round of writes
    (the clicks' co-visitation pairs, known only from the replies) that moves no watermark and is idempotent
    (a redelivered batch does it again, counting nothing twice). The runtime runs a batch's follow-up after
    the batch before's and while the next batch is applied; the batch is committed after it."""

    outputs: list[Output]
    follow_up: Callable[[], Awaitable[None]] | None = None


class Stage(Protocol):
    """A topic's handler in two halves, for a pipelined role (:meth:`RoleConsumer._run_pipelined`)."""

    def prepare(self, messages: Sequence[RawMessage], after: Marks | None) -> Any:
        """Validate and plan (CPU only: no I/O, no state changed); the result has ``.marks``."""

    async def apply(self, prepared: Any, on_sent: Callable[[], None]) -> Applied:
        """Do what was prepared (I/O, state) and advance its watermarks. ``on_sent()`` once its requests are
        out (may be never called: the runtime also waits for the end)."""


@dataclass
class _InFlight:
    """A batch being applied: its task (-> outputs, once its follow-ups ended too), its offsets, its watermarks,
    whether all went as prepared, set once its requests are out, set once it is applied (all but the
    follow-ups: its watermarks are final)."""

    task: Any
    offsets: dict[tuple[str, int], int]
    marks: Marks
    clean: bool
    sent: asyncio.Event
    applied: asyncio.Event


class Stopping(Exception):
    """The worker is stopping while a batch waits for a dependency: leave it uncommitted."""


@dataclass(frozen=True)
class Profile:
    """How a role consumes: group, topics, broker fetch wait, batch size and window."""

    group: str
    topics: tuple[str, ...]
    fetch_wait_ms: int
    batch_max: int
    within_s: float  # 0: take what is already fetched (latency); > 0: wait up to this to fill a batch
    session_timeout_s: float
    heartbeat_s: float


async def process(handler: Handler, batch: Sequence[RawMessage], dead: Dead, metrics: Metrics,
                  stopping: Callable[[], bool] = lambda: False) -> list[Output]:
    """``handler(batch)``, isolating failures: see the module docstring. Never raises but :class:`Stopping`."""
    delay, attempt = 0.2, 0
    while True:
        attempt += 1
        try:
            out = await handler(batch)
            metrics.events.labels(batch[0].topic).inc(len(batch))  # once per event, retries aside
            return out
        except DEPENDENCY_ERRORS as exc:
            log.warning("batch from %s: dependency unavailable (%s), retry %d in %.1fs", batch[0].topic, exc,
                        attempt, delay)
        except Exception as exc:
            if len(batch) > 1:  # find the event(s) that fail: each of the batch alone
                log.warning("batch of %d from %s failed (%r): processing its events one by one", len(batch),
                            batch[0].topic, exc)
                out = []
                for m in batch:
                    out += await process(handler, [m], dead, metrics, stopping)
                return out
            if attempt >= SINGLE_EVENT_ATTEMPTS:
                log.exception("event %s[%d]@%d failed %d times: dead-lettering it", batch[0].topic,
                              batch[0].partition, batch[0].offset, attempt)
                metrics.events.labels(batch[0].topic).inc()
                return [dead(batch[0], exc)]
            log.warning("event from %s failed (%r), retry in %.1fs", batch[0].topic, exc, delay)
        delay = await _back_off(delay, stopping)


async def _back_off(delay: float, stopping: Callable[[], bool]) -> float:
    """One wait of a retry loop (:func:`process`, a follow-up): :class:`Stopping` when the worker is stopping,
    else sleep ``delay`` s; the next delay (doubled, up to MAX_RETRY_DELAY_S)."""
    if stopping():
        raise Stopping()
    await asyncio.sleep(delay)
    return min(delay * 2, MAX_RETRY_DELAY_S)


def fit_for_topic(record: Output, dead_letter_topic: str, letters: DeadLetters) -> Output:
    """``record``, or a dead letter in its place when the broker could never take it (too large).

    >>> from streamscore.settings import Settings
    >>> r = fit_for_topic(Output("fraud-verdicts", "o1", b"x" * 2_000_000), "dead-letter", DeadLetters(Settings()))
    >>> r.topic, b'"reason":"output_too_large"' in r.value, len(r.value) < 10_000
    ('dead-letter', True, True)
    """
    if len(record.value) + len(record.key.encode()) <= MAX_OUTPUT_BYTES:
        return record
    d = letters.record(record.topic, -1, -1, record.key.encode()[:256], record.value,
                       InvalidEvent("output_too_large", f"output record of {len(record.value)} bytes exceeds "
                                                        f"{MAX_OUTPUT_BYTES}"), max_original_bytes=1024)
    return Output(dead_letter_topic, d.key or "", d.to_bytes())


def consumer_config(settings: Settings, profile: Profile) -> dict:
    """The confluent-kafka consumer configuration of a role (also the benchmark floor's)."""
    return settings.kafka_client_config(**{
        "group.id": profile.group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": int(profile.session_timeout_s * 1000),
        "heartbeat.interval.ms": int(profile.heartbeat_s * 1000),
        # range: each topic's partitions are split among the members (cooperative-sticky balances the
        # count over all topics, and gave one fraud worker every orders partition, the other the labels)
        "partition.assignment.strategy": "range",
        "fetch.wait.max.ms": profile.fetch_wait_ms,
    })


class RoleConsumer:
    """One role's consumer loop: fetch a batch, process each topic's slice, publish, commit."""

    def __init__(self, settings: Settings, profile: Profile, handlers: dict[str, tuple[Handler, Dead]],
                 publish: Publish, metrics: Metrics):
        self.settings = settings
        self.profile = profile
        self.handlers = handlers
        self.publish = publish
        self.metrics = metrics
        # confluent-kafka calls block: run them on one dedicated thread, in order
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"consume-{profile.group}")
        self.consumer = Consumer(consumer_config(settings, profile))
        self.consumer.subscribe(list(profile.topics), on_assign=self._assigned, on_revoke=self._revoked,
                                on_lost=self._revoked)
        self.stopping = False
        self.committed: dict[tuple[str, int], int] = {}  # the offsets whose batches are fully done

    def _assigned(self, consumer, partitions) -> None:
        log.info("%s assigned %s", self.profile.group, ", ".join(f"{p.topic}[{p.partition}]" for p in partitions))

    def _revoked(self, consumer, partitions) -> None:
        log.info("%s revoked %s", self.profile.group, ", ".join(f"{p.topic}[{p.partition}]" for p in partitions))

    async def _call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _fetch(self) -> list:
        """Blocking: the next batch (maybe empty after ``POLL_S``)."""
        p = self.profile
        if p.within_s > 0:
            return self.consumer.consume(p.batch_max, min(p.within_s, POLL_S))
        first = self.consumer.poll(POLL_S)
        if first is None:
            return []
        return [first] + (self.consumer.consume(p.batch_max - 1, 0) if p.batch_max > 1 else [])

    def _split(self, messages: list) -> tuple[dict[str, list[RawMessage]], dict[tuple[str, int], int]]:
        """A fetched batch by topic, and the offset to commit per partition once it is done."""
        by_topic: dict[str, list[RawMessage]] = {}
        offsets: dict[tuple[str, int], int] = {}
        for m in messages:
            if m.error() is not None:
                if m.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error on %s: %s", self.profile.group, m.error())
                continue
            topic, partition, offset = m.topic(), m.partition(), m.offset()  # each accessor once: a C call
            batch = by_topic.get(topic)
            if batch is None:
                batch = by_topic[topic] = []
            batch.append(RawMessage(topic, partition, offset, m.key(), m.value(), m.timestamp()[1] / 1000.0))
            offsets[(topic, partition)] = offset + 1
        return by_topic, offsets

    async def _commit(self, offsets: dict[tuple[str, int], int]) -> None:
        done = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        await self._call(lambda: self.consumer.commit(offsets=done, asynchronous=True))
        self.committed.update(offsets)
        self._record_lag(done)

    async def run(self) -> None:
        """Consume, process, publish and commit until ``stopping`` is set; the batch in hand is finished.

        The next batch is fetched while this one is processed (the consumer thread would otherwise wait
        for the processing's Redis round trips): the fetch and the commit share the consumer thread, so
        a batch's commit follows the fetch of the next one, in order. A fetched batch is applied only
        after the previous one is committed or given up, so a partition is still applied in offset order
        (what the stores' position dedup relies on, :mod:`features.lua`). At a stop the prefetched batch
        is dropped uncommitted (redelivered). A role whose every topic has a :class:`Stage` runs
        :meth:`_run_pipelined` instead.
        """
        if all(len(h) > 2 and h[2] is not None for h in self.handlers.values()):
            return await self._run_pipelined()
        pending: asyncio.Future | None = None
        try:
            while not self.stopping:
                messages = await (pending if pending is not None else self._call(self._fetch))
                pending = None
                by_topic, offsets = self._split(messages)
                if not offsets:
                    continue
                pending = asyncio.ensure_future(self._call(self._fetch))
                try:
                    outputs: list[Output] = []
                    for topic, batch in by_topic.items():
                        handler, dead, *_ = self.handlers[topic]
                        outputs += await process(handler, batch, dead, self.metrics, lambda: self.stopping)
                    await self.publish(outputs)
                except Stopping:
                    log.info("%s stopping with a batch in hand: left uncommitted (it is redelivered)", self.profile.group)
                    return
                await self._commit(offsets)
        finally:
            await self._settle(pending)

    async def _settle(self, pending: asyncio.Future | None) -> None:
        if pending is not None:  # let the consumer thread finish the prefetch before close() uses it
            try:
                await pending
            except Exception as exc:  # the consumer is being torn down: nothing to do with it
                log.debug("prefetch of %s at stop: %r", self.profile.group, exc)

    async def _run_pipelined(self) -> None:
        """:meth:`run` with each batch prepared (validated and planned, :meth:`Stage.prepare`: CPU, no I/O)
        while the batch before is still being applied (its Redis calls run in Redis's process meanwhile):
        on a busy worker neither waits for the other. Order is kept: a batch is applied (its first call
        sent) only after the one before was applied; the next one's preparation judges event time as if that
        one had advanced its watermarks (``after``), and is done again when it did not (a batch that failed and
        went event by event, :func:`process`). A batch applied as prepared whose follow-ups (:class:`Applied`)
        are still running is published and committed once they end, after the next batch was started (which
        runs its own follow-ups after them): Redis has the next batch's calls while the worker commits. A batch
        that did not go as prepared, or whose follow-ups ended already, is committed before the next one is
        applied. So at most three batches are uncommitted, and only while a batch is being started: two
        following up (the older committed once its follow-ups end), one applying."""
        pending: asyncio.Future | None = None
        inflight: _InFlight | None = None  # the batch being applied
        following: list[_InFlight] = []  # batches before it, applied, their follow-ups running: oldest first
        try:
            while not self.stopping:
                messages = await (pending if pending is not None else self._call(self._fetch))
                pending = None
                by_topic, offsets = self._split(messages)
                if not offsets:  # nothing new: finish the batches in flight now (their commits)
                    if not await self._finish_all(*following, inflight):
                        return
                    following, inflight = [], None
                    continue
                pending = asyncio.ensure_future(self._call(self._fetch))
                after = inflight.marks if inflight is not None else None
                prepared = {t: self._prepare(t, batch, after) for t, batch in by_topic.items()}
                if inflight is not None:
                    await inflight.applied.wait()
                    if inflight.clean and not inflight.task.done():
                        following.append(inflight)  # committed once its follow-ups end, after the next is started
                    else:
                        if not await self._finish_all(*following, inflight):
                            return
                        following = []
                        if not inflight.clean:  # judged against watermarks the batch before did not all reach: again
                            prepared = {t: self._prepare(t, batch, None) for t, batch in by_topic.items()}
                inflight = self._start(by_topic, prepared, offsets, following[-1] if following else None)
                # its calls go out before the next batch is prepared (the CPU is then free for it)
                await asyncio.wait((inflight.task, asyncio.ensure_future(inflight.sent.wait())),
                                   return_when=asyncio.FIRST_COMPLETED)
                # then the batches whose follow-ups ended are committed, in order, while Redis works on this one;
                # at most one is left following (it waits for its follow-ups, this one's wait for its)
                while following and (len(following) > 1 or following[0].task.done()):
                    if not await self._finish(following.pop(0)):
                        return
            await self._finish_all(*following, inflight)  # stopping: the batches in hand are finished, in order
        finally:
            # an error out of the loop: let the applying tasks end before close()
            await asyncio.gather(*(f.task for f in (*following, inflight) if f is not None), return_exceptions=True)
            await self._settle(pending)

    def _prepare(self, topic: str, batch: list[RawMessage], after) -> Any:
        """``batch`` prepared by its topic's stage, or None (then :func:`process` takes it whole)."""
        try:
            return self.handlers[topic][2].prepare(batch, after)
        except Exception as exc:  # never out of the loop: process() isolates the event that fails
            log.warning("preparing a batch of %d from %s failed (%r): processing it unprepared", len(batch), topic, exc)
            return None

    def _start(self, by_topic: dict[str, list[RawMessage]], prepared: dict[str, Any],
               offsets: dict[tuple[str, int], int], before: "_InFlight | None") -> "_InFlight":
        """Apply a batch in a task of its own; ``before``: the batch before, whose follow-ups this one's wait for."""
        flight = _InFlight(None, offsets, {}, True, asyncio.Event(), asyncio.Event())
        for p in prepared.values():
            if p is not None:
                flight.marks.update(p.marks)

        async def apply() -> list[Output]:
            outputs: list[Output] = []
            follow_ups: list[tuple[str, Callable[[], Awaitable[None]]]] = []
            try:
                for topic, batch in by_topic.items():
                    handler, dead, stage = self.handlers[topic]
                    p = prepared[topic]
                    if p is not None:
                        try:
                            done = await stage.apply(p, flight.sent.set)
                            outputs += done.outputs
                            if done.follow_up is not None:
                                follow_ups.append((topic, done.follow_up))
                            self.metrics.events.labels(topic).inc(len(batch))
                            continue
                        except Exception as exc:  # an outage or a failing event: process() waits or isolates it
                            log.warning("batch of %d from %s failed (%r): processing it again", len(batch), topic, exc)
                    flight.clean = False
                    flight.sent.set()
                    outputs += await process(handler, batch, dead, self.metrics, lambda: self.stopping)
            finally:
                flight.sent.set()
                flight.applied.set()
            if before is not None:  # a partition's follow-ups in offset order: the batch before's first
                await asyncio.wait((before.task,))
            for topic, follow_up in follow_ups:
                await self._follow_up(topic, follow_up)
            return outputs

        flight.task = asyncio.ensure_future(apply())
        return flight

    async def _follow_up(self, topic: str, follow_up: Callable[[], Awaitable[None]]) -> None:
        """Run a batch's follow-up: an outage is waited out (as :func:`process` waits), another error given up
        after SINGLE_EVENT_ATTEMPTS (the batch's events are applied; only this round is missing). Never raises but
        :class:`Stopping`."""
        delay, attempt = 0.2, 0
        while True:
            attempt += 1
            try:
                return await follow_up()
            except DEPENDENCY_ERRORS as exc:
                log.warning("follow-up of a batch from %s: dependency unavailable (%s), retry %d in %.1fs", topic,
                            exc, attempt, delay)
            except Exception as exc:
                if attempt >= SINGLE_EVENT_ATTEMPTS:
                    log.exception("follow-up of a batch from %s failed %d times: given up", topic, attempt)
                    self.metrics.follow_ups_dropped.labels(topic).inc()
                    return
                log.warning("follow-up of a batch from %s failed (%r), retry in %.1fs", topic, exc, delay)
            delay = await _back_off(delay, lambda: self.stopping)

    async def _finish_all(self, *flights: "_InFlight | None") -> bool:
        """:meth:`_finish` each batch in order; after one left uncommitted, none after it is committed."""
        for flight in flights:
            if flight is not None and not await self._finish(flight):
                return False
        return True

    async def _finish(self, flight: "_InFlight") -> bool:
        """Wait for a batch in flight, publish its outputs, commit it; False when stopping left it uncommitted."""
        try:
            await self.publish(await flight.task)
        except Stopping:
            log.info("%s stopping with a batch in hand: left uncommitted (it is redelivered)", self.profile.group)
            return False
        await self._commit(flight.offsets)
        return True

    def _record_lag(self, done: list[TopicPartition]) -> None:
        """Lag after the batch: the partition's end offset (as of the last fetch) minus our position."""
        for tp in done:
            high = self.consumer.get_watermark_offsets(tp, cached=True)[1]
            if high >= 0:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, high - tp.offset))

    async def close(self) -> None:
        """Commit what is done (synchronously: only fully processed batches), leave the group and free
        the consumer (after :meth:`run` returned)."""
        def finish():
            if self.committed:
                try:
                    self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in self.committed.items()],
                                         asynchronous=False)
                except Exception as exc:  # partitions revoked meanwhile, or the group is gone
                    log.debug("final commit of %s: %s", self.profile.group, exc)
            self.consumer.close()
        await self._call(finish)
        self.executor.shutdown(wait=False)
