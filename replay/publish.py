"""Publish ``(topic, key, event)`` tuples to Kafka, paced by rate and/or event time."""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from confluent_kafka import Producer

PRODUCER_CONFIG = {
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 5,
    "compression.type": "lz4",
    "client.id": "streamscore-replay",
}


class PublishError(RuntimeError):
    """Some messages were not delivered; ``stats`` holds the per-topic counts."""

    def __init__(self, message: str, stats: dict):
        super().__init__(message)
        self.stats = stats


@dataclass
class Progress:
    sent: int
    delivered: int
    failed: int
    elapsed_s: float
    total: Optional[int] = None

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> Optional[float]:
        if self.total is None or self.rate <= 0:
            return None
        return max(self.total - self.sent, 0) / self.rate

    def __str__(self) -> str:
        done = f"{self.sent}/{self.total}" if self.total is not None else f"{self.sent}"
        eta = f" eta {self.eta_s:.0f}s" if self.eta_s is not None else ""
        return (f"replay: sent {done} delivered {self.delivered} failed {self.failed} "
                f"{self.rate:,.0f} ev/s elapsed {self.elapsed_s:.1f}s{eta}")


def stderr_progress(p: Progress) -> None:
    print(p, file=sys.stderr, flush=True)


def publish(events: Iterable[tuple[str, str, object]], bootstrap: str, rate: Optional[float] = None,
            speed: Optional[float] = None, progress: Optional[Callable[[Progress], None]] = None,
            total: Optional[int] = None, config: Optional[dict] = None, flush_timeout_s: float = 60.0,
            progress_every_s: float = 1.0) -> dict:
    """Produce every event (key = ``key``, value = ``event.to_bytes()``) and wait for delivery.

    rate: at most this many events/s. speed: event-time speed factor (60 = one event-time
    minute per wall second); with both, each event waits for the later of the two.
    progress: called about every ``progress_every_s`` and once at the end.
    Returns ``{"sent", "delivered": {topic: n}, "failed": {topic: n}, "elapsed_s",
    "events_per_s"}``; raises :class:`PublishError` if any delivery failed.
    """
    delivered, failed, errors = Counter(), Counter(), []

    def on_delivery(err, msg):
        if err is None:
            delivered[msg.topic()] += 1
        else:
            failed[msg.topic()] += 1
            if len(errors) < 5:
                errors.append(f"{msg.topic()}: {err}")

    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_CONFIG, **(config or {})})
    t0 = time.monotonic()
    next_report = t0 + progress_every_s
    ts0 = None
    sent = 0

    def report():
        if progress:
            progress(Progress(sent, sum(delivered.values()), sum(failed.values()), time.monotonic() - t0, total))

    for topic, key, event in events:
        due = t0 + sent / rate if rate else t0
        if speed:
            ts0 = event.ts if ts0 is None else ts0
            due = max(due, t0 + (event.ts - ts0) / speed)
        while (wait := due - time.monotonic()) > 0:
            producer.poll(min(wait, 0.1))
        value = event.to_bytes()
        while True:
            try:
                producer.produce(topic, key=key.encode(), value=value, on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: serve delivery reports and retry
                producer.poll(0.05)
        sent += 1
        if sent % 200 == 0:
            producer.poll(0)
            if time.monotonic() >= next_report:
                report()
                next_report = time.monotonic() + progress_every_s
    remaining = producer.flush(flush_timeout_s)
    elapsed = time.monotonic() - t0
    report()
    stats = {"sent": sent, "delivered": dict(delivered), "failed": dict(failed), "elapsed_s": round(elapsed, 3),
             "events_per_s": round(sent / elapsed, 1) if elapsed > 0 else None}
    if remaining or failed:
        raise PublishError(f"{sum(failed.values())} failed, {remaining} undelivered after flush: {errors}", stats)
    return stats

