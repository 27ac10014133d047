"""Publish ``(topic, key, event)`` tuples to Kafka, paced by rate and/or event time.

Every message carries two headers: ``replay-run`` (the run id) and ``replay-seq`` (the
event's index in the merged stream), so a message can be traced to the replay that
wrote it; :mod:`replay.checkpoint` uses them to resume exactly after a hard kill.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from confluent_kafka import Producer

from streamscore.kafka_config import Kafka, resolve

from .checkpoint import RUN_HEADER, SEQ_HEADER, Checkpoint

PRODUCER_CONFIG = {
    "acks": "all",
    "enable.idempotence": True,  # per partition: in order, no duplicates, across retries
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
    skipped: int = 0  # already published by an earlier run (resume)

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> Optional[float]:
        if self.total is None or self.rate <= 0:
            return None
        return max(self.total - self.skipped - self.sent, 0) / self.rate

    def __str__(self) -> str:
        done = f"{self.sent}/{self.total - self.skipped}" if self.total is not None else f"{self.sent}"
        eta = f" eta {self.eta_s:.0f}s" if self.eta_s is not None else ""
        resumed = f" (resumed after {self.skipped})" if self.skipped else ""
        return (f"replay: sent {done}{resumed} delivered {self.delivered} failed {self.failed} "
                f"{self.rate:,.0f} ev/s elapsed {self.elapsed_s:.1f}s{eta}")

    def bar(self, width: int = 30) -> str:
        """One-line progress bar: ``[#####.....]  45% 12,345/27,000 3,210 ev/s eta 5s``."""
        todo = None if self.total is None else max(self.total - self.skipped, 0)
        if not todo:
            return str(self)
        frac = min(self.sent / todo, 1.0)
        fill = int(frac * width)
        eta = f" eta {self.eta_s:.0f}s" if self.eta_s is not None else ""
        return (f"replay [{'#' * fill}{'.' * (width - fill)}] {frac:4.0%} {self.sent:,}/{todo:,} "
                f"{self.rate:,.0f} ev/s delivered {self.delivered:,} failed {self.failed}{eta}")


def stderr_progress(p: Progress) -> None:
    """A line per report; on a terminal, one progress bar redrawn in place."""
    if sys.stderr.isatty():
        print("\r" + p.bar(), end="", file=sys.stderr, flush=True)
    else:
        print(p, file=sys.stderr, flush=True)


def publish(events: Iterable[tuple[str, str, object]], bootstrap: Kafka, rate: Optional[float] = None,
            speed: Optional[float] = None, progress: Optional[Callable[[Progress], None]] = None,
            total: Optional[int] = None, config: Optional[dict] = None, flush_timeout_s: float = 60.0,
            progress_every_s: float = 1.0, checkpoint: Optional[Checkpoint] = None,
            stop: Optional[threading.Event] = None, delivered: Optional[Counter] = None) -> dict:
    """Produce every event (key = ``key``, value = ``event.to_bytes()``) and wait for delivery.

    bootstrap: where to (a bootstrap string for a PLAINTEXT broker, or ``Settings`` / a librdkafka
    mapping with the security settings: :func:`streamscore.kafka_config.resolve`).

    rate: at most this many events/s. speed: event-time speed factor (60 = one event-time
    minute per wall second); with both, each event waits for the later of the two.
    progress: called about every ``progress_every_s`` and once at the end.
    checkpoint: skip the events it marks done, record each delivery report in it, save it
    every ``checkpoint.every_s`` and at the end (``complete``, or ``stopped``).
    stop: when set, no further event is sent; what is in flight is flushed, the checkpoint
    saved, and the stats returned with ``"interrupted": true``. An exception raised while
    iterating ``events`` is handled the same way, then re-raised.
    delivered: a Counter (topic -> acknowledged messages) to fill, e.g. for a lag monitor.
    Returns ``{"sent", "delivered": {topic: n}, "failed": {topic: n}, "elapsed_s",
    "events_per_s", "interrupted", "resumed_from", "run_id"}``; raises
    :class:`PublishError` if any delivery failed.
    """
    delivered = Counter() if delivered is None else delivered
    failed, errors = Counter(), []
    run_id = (checkpoint.run_id if checkpoint else uuid.uuid4().hex).encode()
    confirm = checkpoint.confirm if checkpoint else None

    def on_delivery(index, err, msg):
        if err is None:
            delivered[msg.topic()] += 1
            if confirm is not None:
                confirm(index, msg.topic(), msg.partition(), msg.offset())
        else:
            failed[msg.topic()] += 1
            if len(errors) < 5:
                errors.append(f"{msg.topic()}: {err}")

    producer = Producer(resolve(bootstrap, **PRODUCER_CONFIG, **(config or {})))
    skipped = checkpoint.done_count if checkpoint else 0
    if checkpoint is not None:
        if checkpoint.crcs is None:
            raise ValueError("bind the checkpoint to the stream first (Checkpoint.bind)")
        checkpoint.history.append({"started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                   "resumed_from": skipped})
        checkpoint.save("running")
    t0 = time.monotonic()
    next_report = t0 + progress_every_s
    ts0 = None
    sent = 0
    interrupted = False

    def report():
        if progress:
            progress(Progress(sent, sum(delivered.values()), sum(failed.values()), time.monotonic() - t0, total,
                              skipped))

    def finish(status: str) -> tuple[int, float]:
        remaining = producer.flush(flush_timeout_s)
        if checkpoint is not None:
            status = status if not (remaining or failed) else "stopped"
            checkpoint.history[-1].update(ended_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                          sent=sent, delivered=sum(delivered.values()),
                                          failed=sum(failed.values()), status=status)
            checkpoint.save(status)
        return remaining, time.monotonic() - t0

    try:
        for index, (topic, key, event) in enumerate(events):
            if stop is not None and stop.is_set():
                interrupted = True
                break
            if checkpoint is not None and checkpoint.is_done(index):
                continue
            due = t0 + sent / rate if rate else t0
            if speed:
                ts0 = event.ts if ts0 is None else ts0
                due = max(due, t0 + (event.ts - ts0) / speed)
            while (wait := due - time.monotonic()) > 0 and not (stop is not None and stop.is_set()):
                producer.poll(min(wait, 0.1))
            if stop is not None and stop.is_set():
                interrupted = True
                break
            value = event.to_bytes()
            headers = [(RUN_HEADER, run_id), (SEQ_HEADER, str(index).encode())]
            while True:
                try:
                    producer.produce(topic, key=key.encode(), value=value, headers=headers,
                                     on_delivery=lambda err, msg, i=index: on_delivery(i, err, msg))
                    break
                except BufferError:  # local queue full: serve delivery reports and retry
                    producer.poll(0.05)
            sent += 1
            if sent % 200 == 0:
                producer.poll(0)
                now = time.monotonic()
                if now >= next_report:
                    report()
                    next_report = now + progress_every_s
                if checkpoint is not None:
                    checkpoint.maybe_save()
    except BaseException:
        finish("stopped")
        report()
        raise
    remaining, elapsed = finish("stopped" if interrupted else "complete")
    report()
    stats = {"sent": sent, "delivered": dict(delivered), "failed": dict(failed), "elapsed_s": round(elapsed, 3),
             "events_per_s": round(sent / elapsed, 1) if elapsed > 0 else None, "interrupted": interrupted,
             "resumed_from": skipped, "run_id": run_id.decode()}
    if checkpoint is not None:
        stats.update(checkpoint=str(checkpoint.path), next_index=checkpoint.next_index,
                     done=checkpoint.done_count, total=checkpoint.total)
    if remaining or failed:
        raise PublishError(f"{sum(failed.values())} failed, {remaining} undelivered after flush: {errors}", stats)
    return stats
