"""What every input goes through first: message types, validation, event-time checks, dead letters.

Shared by the three decision processors (:mod:`streams.fraud`, :mod:`streams.clicks`,
:mod:`streams.pricing`): a bad event becomes one dead-letter record with a reason and the worker
carries on; nothing about it reaches features, scores or clocks.

Reasons, beyond those of :func:`streamscore.events.parse` (``empty``, ``oversized``,
``not_utf8``, ``not_json``, ``not_object``, ``wrong_type``, ``out_of_range``, ``missing_field``,
``unknown_field``, ``id_bad_characters``, ``account_after_order``, ``lines_amount_mismatch``,
``cost_above_price``, ``invalid``: see :mod:`streamscore.events` for the rules), each the
``reason`` of the dead-letter record and the ``reason`` label of ``streamscore_dead_letters_total``
(or ``streamscore_ignored_events_total``). The label set is fixed:
:data:`streamscore.events.DEAD_LETTER_REASONS`; a reason outside it would be recorded as ``invalid``.

* ``from_future``: event time more than ``MAX_CLOCK_SKEW_S`` ahead of this worker's wall
  clock. Checked before anything else reads the event time, so such an event never moves a
  watermark (one order dated tomorrow would otherwise make every following order of its
  partition "too late").
* ``too_late``: event time more than ``FEATURE_ALLOWED_LATENESS_S`` behind its partition's
  watermark (the newest event time applied there). Merely out-of-order events are applied and
  counted as late.
* ``processing_error``: the event passed validation but processing it failed on its own (see
  :mod:`streams.runtime`: the rest of its batch is processed normally).

Watermarks live in the worker's memory per ``(topic, partition)`` and restart from the first
events seen; they move only when a batch succeeds (:meth:`Intake.advance`), so a retried batch
is judged exactly as the first time.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

from monitoring.metrics import Metrics
from streamscore.deadletters import DeadLetters
from streamscore.events import DEAD_LETTER_REASONS, InvalidEvent, parse
from streamscore.settings import Settings

log = logging.getLogger(__name__)


class RawMessage(NamedTuple):
    """One Kafka message as the processors see it (a NamedTuple: built per message, 0.9 vs 2.6 us for a
    frozen dataclass)."""

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
    decided_from: float | None = None  # a new decision's input Kafka timestamp: latency observed at the ack


Marks = dict[tuple[str, int], float]


def _known(exc: InvalidEvent) -> InvalidEvent:
    """``exc``, or ``invalid`` in its place when its reason is not one of the fixed set (a metrics label).

    >>> _known(InvalidEvent("wrong_type", "x")).reason, _known(InvalidEvent("made up", "x")).reason
    ('wrong_type', 'invalid')
    """
    return exc if exc.reason in DEAD_LETTER_REASONS else InvalidEvent("invalid", f"{exc.reason}: {exc.detail}")


class Intake:
    """Validates batches of one worker and keeps their partitions' watermarks.

    >>> from streamscore.events import Click
    >>> s = Settings.from_env({}, allowed_lateness_s=60, max_clock_skew_s=300)
    >>> intake = Intake(s, Metrics(), clock=lambda: 1.6e9)
    >>> msgs = [RawMessage("clicks", 0, n, b"u", Click(event_id=f"e{n}", user_id="u", item_id="i",
    ...         action="view", ts=ts).to_bytes(), 0.0) for n, ts in enumerate([1.6e9 - 10, 1.6e9 + 86400, 1.6e9 - 100])]
    >>> good, dead, marks = intake.validate(Click, msgs)
    >>> [e.event_id for _, e in good], [r.reason for r in intake.last_dead], marks
    (['e0'], ['from_future', 'too_late'], {('clicks', 0): 1599999990.0})
    """

    def __init__(self, settings: Settings, metrics: Metrics, clock: Callable[[], float] = time.time):
        self.s = settings
        self.metrics = metrics
        self.clock = clock
        self.watermarks: Marks = {}
        self.last_dead: list = []  # the DeadLetter records of the last validate() call (tests, logs)
        self.letters = DeadLetters(settings)  # pseudonymised key, original encrypted

    def validate(self, model, messages: Sequence[RawMessage], event_time: bool = True, dead_letters: bool = True,
                 after: Marks | None = None):
        """Split a batch into (valid (message, event) pairs, dead-letter outputs, new watermarks).

        ``after``: the watermarks of a batch still being applied, which this one follows (a pipelined
        worker validates its next batch meanwhile, :mod:`streams.runtime`): judged as if that batch had
        already advanced them (if it does not, the runtime validates this one again).

        ``event_time``: apply the ``from_future`` / ``too_late`` checks and compute watermarks.
        ``dead_letters=False``: invalid events are only counted (``streamscore_ignored_events_total``),
        for a role that reads a topic another role owns the dead letters of (pricing reads orders).
        """
        good, dead, marks = [], [], {}
        late_applied: Counter[str] = Counter()  # counted once per batch: a labelled child costs a lookup per inc
        self.last_dead = []
        horizon = self.clock() + self.s.max_clock_skew_s
        for m in messages:
            try:
                event = parse(model, m.value, self.s.max_event_bytes)
                if event_time:
                    if event.ts > horizon:
                        raise InvalidEvent("from_future", f"event time {event.ts} is more than "
                                                          f"{self.s.max_clock_skew_s}s ahead of the wall clock")
                    key = (m.topic, m.partition)
                    mark = marks.get(key)
                    if mark is None:
                        mark = self.watermarks.get(key, event.ts) if after is None else \
                            after.get(key, self.watermarks.get(key, event.ts))
                    if event.ts < mark:
                        if event.ts < mark - self.s.allowed_lateness_s:
                            self.metrics.late_events.labels(m.topic, "dropped").inc()
                            raise InvalidEvent("too_late", f"event time {event.ts} is more than "
                                                           f"{self.s.allowed_lateness_s}s behind the partition's "
                                                           f"newest event time {mark}")
                        late_applied[m.topic] += 1
                    marks[key] = max(mark, event.ts)
            except InvalidEvent as exc:
                exc = _known(exc)
                if dead_letters:
                    dead.append(self.dead(m, exc))
                else:
                    self.metrics.ignored_events.labels(m.topic, exc.reason).inc()
                continue
            good.append((m, event))
        for topic, n in late_applied.items():
            self.metrics.late_events.labels(topic, "applied").inc(n)
        if messages:
            self.metrics.batch_size.labels(messages[0].topic).observe(len(messages))
        return good, dead, marks

    def advance(self, marks: Marks) -> None:
        """The batch succeeded: move its partitions' watermarks forward."""
        self.watermarks.update(marks)

    def newest(self, topic: str) -> float | None:
        """The newest event time applied on any partition of ``topic`` (None before any)."""
        return max((ts for (t, _), ts in self.watermarks.items() if t == topic), default=None)

    def dead(self, m: RawMessage, exc: Exception) -> Output:
        """The dead-letter record of ``m`` (cut to fit the topic, see :class:`~streamscore.events.DeadLetter`)."""
        exc = _known(exc) if isinstance(exc, InvalidEvent) else exc
        try:
            record = self.letters.record(m.topic, m.partition, m.offset, m.key, m.value, exc,
                                         self.s.dead_letter_max_original_bytes)
        except Exception as err:  # a dead letter must never stop the partition: one without the original
            log.exception("dead letter of %s[%d]@%d could not keep the original", m.topic, m.partition, m.offset)
            record = self.letters.record(m.topic, m.partition, m.offset, None, b"", InvalidEvent(
                exc.reason if isinstance(exc, InvalidEvent) else "processing_error",
                f"(original not kept: {type(err).__name__})"))
        self.last_dead.append(record)
        self.metrics.dead_letters.labels(m.topic, record.reason).inc()
        log.warning("dead letter %s[%d]@%d: %s", m.topic, m.partition, m.offset, record.error[:200])
        return Output(self.s.topic_dead_letter, record.key or "", record.to_bytes())
