"""A batch-level path from a Kafka topic into a processor, for the high-volume click stream.

Faust hands events to agents one at a time (a task switch and queue hand-off per event);
measured on 2 cores that caps an agent at ~4-5k events/s whatever the agent does (see
``BENCHMARKS.md``). Clicks arrive an order of magnitude faster than orders, so by default
(``CLICKS_CONSUMER=batch``) the worker consumes them with a confluent-kafka consumer that
fetches up to ``WORKER_BATCH_MAX`` messages per call and hands the whole list to
:meth:`streams.processors.Processors.clicks`. It runs as a service of the Faust app: it
starts and stops with the worker, and its outputs go through the same producer.

Delivery: at least once. Offsets are committed (synchronously) only after a batch's
outputs were acknowledged by the broker; the consumer group is ``<app id>.<topic>``
(separate from Faust's own group, which uses its own partition assignor). After a crash
the uncommitted tail is re-read; the click feature writes are idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Awaitable, Callable, Sequence

from confluent_kafka import Consumer, KafkaError, TopicPartition

from monitoring.metrics import Metrics
from streams.processors import RawMessage
from streamscore.settings import Settings

log = logging.getLogger(__name__)


class BatchConsumer:
    def __init__(self, settings: Settings, topic: str, handle: Callable[[Sequence[RawMessage]], Awaitable[None]],
                 metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.topic = topic
        self.handle = handle
        # confluent-kafka calls block: run them on one dedicated thread, in order
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"consume-{topic}")
        self.consumer = Consumer({
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"{settings.app_id}.{topic}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": int(settings.session_timeout_s * 1000),
            "heartbeat.interval.ms": int(settings.heartbeat_s * 1000),
            "partition.assignment.strategy": "cooperative-sticky",
            "fetch.wait.max.ms": settings.fetch_max_wait_ms,
        })
        self.consumer.subscribe([topic])
        self.stopping = False

    async def _call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def run(self) -> None:
        """Consume, process and commit until ``stopping`` is set; the batch in hand is finished first."""
        while not self.stopping:
            messages = await self._call(self.consumer.consume, self.settings.batch_max, self.settings.batch_within_s)
            batch, offsets = [], {}
            for m in messages:
                if m.error() is not None:
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("consumer error on %s: %s", self.topic, m.error())
                    continue
                batch.append(RawMessage(m.topic(), m.partition(), m.offset(), m.key(), m.value(),
                                        m.timestamp()[1] / 1000.0))
                offsets[m.partition()] = m.offset() + 1
            if not batch:
                continue
            await self.handle(batch)
            done = [TopicPartition(self.topic, p, o) for p, o in offsets.items()]
            await self._call(lambda: self.consumer.commit(offsets=done, asynchronous=False))
            self._record_lag(done)

    def _record_lag(self, done: list[TopicPartition]) -> None:
        """Lag after the batch: the partition's end offset (as of the last fetch) minus our position."""
        for tp in done:
            high = self.consumer.get_watermark_offsets(tp, cached=True)[1]
            if high >= 0:
                self.metrics.consumer_lag.labels(self.topic, str(tp.partition)).set(max(0, high - tp.offset))

    async def close(self) -> None:
        """Leave the group and free the consumer (after :meth:`run` returned)."""
        await self._call(self.consumer.close)
        self.executor.shutdown(wait=False)
