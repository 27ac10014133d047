"""Small read-side helpers over the broker: reading a whole topic, what a group committed.

Used by the demo summary, the benchmarks and the tests (not by the hot path).

Measured trap: the local broker (Tansu 0.6) reports a partition's high watermark as the
base offset of its last record batch, not last offset + 1, so ``get_watermark_offsets``
under-counts batched topics. These helpers therefore count what they read or what a
consumer group committed (committed offsets start at 0 and are contiguous, so their sum
is the number of messages consumed), never watermarks.
"""

from __future__ import annotations

import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streamscore.settings import Settings


def committed(settings: Settings, group: str, topic: str) -> int:
    """Messages of ``topic`` that consumer group ``group`` has committed (sum over partitions)."""
    consumer = Consumer(settings.kafka_client_config(**{"group.id": group, "enable.auto.commit": False}))
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        offsets = consumer.committed([TopicPartition(topic, p) for p in parts], timeout=10)
        return sum(max(tp.offset, 0) for tp in offsets)
    finally:
        consumer.close()


def read_topic(settings: Settings, topic: str, idle_s: float = 2.0, limit_s: float = 120,
               until=None) -> list:
    """Every message in ``topic`` (confluent-kafka Message objects), read from the start
    until nothing new arrived for ``idle_s`` (or ``until(messages)`` holds, or ``limit_s``)."""
    consumer = Consumer(settings.kafka_client_config(**{"group.id": "streamscore-reader",
                                                        "enable.auto.commit": False}))
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])  # no group join: no wait
    messages, end, last_new = [], time.monotonic() + limit_s, time.monotonic()
    try:
        while time.monotonic() < end:
            batch = [m for m in consumer.consume(1000, timeout=0.2) if m.error() is None]
            if batch:
                messages += batch
                last_new = time.monotonic()
            if until is not None and until(messages):
                break
            if until is None and time.monotonic() - last_new > idle_s:
                break
    finally:
        consumer.close()
    return messages
