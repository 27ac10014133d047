"""Merge several event sources onto one timeline, and the named replay scenarios.

Each source is time-shifted so that its first event lands on ``start_ts`` (relative
times inside a source are kept, every time field is shifted: ``ts`` and
``account_created_at``). Sources sharing a ``clock`` (e.g. fraud orders and their labels)
share one shift, so the gaps between them survive. The merge is by event time; ties go
to the source listed first, then to the order within the source, so it is deterministic.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Optional, Sequence, Union

from streamscore.events import MAX_TS, MIN_TS, CatalogItem, Click, FraudLabel, Order
from streamscore.settings import Settings

from . import sources

Event = Union[Click, Order, FraudLabel, CatalogItem]
TIME_FIELDS = ("ts", "account_created_at")


@dataclass(frozen=True)
class Source:
    """A time-sorted event stream bound for ``topic``.

    clock: sources with the same clock share one time shift (default: their topic).
    namespace: if set, every key must start with ``"<ns>:"`` or ``"<ns>-"``.
    """

    topic: str
    events: Iterable[Event]
    clock: Optional[str] = None
    namespace: Optional[str] = None


def event_key(event: Event) -> str:
    """Message key: clicks and orders by user, labels by order, catalog by item."""
    if isinstance(event, (Click, Order)):
        return event.user_id
    if isinstance(event, FraudLabel):
        return event.order_id
    if isinstance(event, CatalogItem):
        return event.item_id
    raise TypeError(f"no key rule for {type(event).__name__}")


def shift(event: Event, offset: float) -> Event:
    """A copy of ``event`` with every time field moved by ``offset`` seconds."""
    update = {}
    for name in TIME_FIELDS:
        value = getattr(event, name, None)
        if value is not None:
            value += offset
            if not MIN_TS <= value <= MAX_TS:
                raise ValueError(f"shifted {name}={value} of {event!r} is outside the valid event-time range")
            update[name] = value
    return event.model_copy(update=update)


def _checked(src: Source, events: Iterator[Event], offset: float, index: int):
    prev = -math.inf
    for ev in events:
        if ev.ts < prev:
            raise ValueError(f"source {index} ({src.topic}) is not time-sorted: {ev.ts} < {prev}")
        prev = ev.ts
        key = event_key(ev)
        if src.namespace and not key.startswith((src.namespace + ":", src.namespace + "-")):
            raise ValueError(f"key {key!r} of source {index} ({src.topic}) is outside namespace {src.namespace!r}")
        yield src.topic, key, shift(ev, offset) if offset else ev


# The default start lies this far behind the wall clock, so that a replayed history (the longest
# slices span about a year, plus label delays) stays in the past: workers dead-letter events more
# than MAX_CLOCK_SKEW_S ahead of the wall clock as ``from_future``.
DEFAULT_BACKDATE_S = 2 * 365 * 86400


def default_start() -> float:
    """Where a replay starts when no start is given: :data:`DEFAULT_BACKDATE_S` before now, whole seconds."""
    return float(int(time.time()) - DEFAULT_BACKDATE_S)


def merge(streams: Union[Mapping[str, Iterable[Event]], Sequence[Source]],
          start_ts: Optional[float] = None, keep_times: bool = False) -> Iterator[tuple[str, str, Event]]:
    """Merge sources by event time into ``(topic, key, event)``.

    ``streams``: ``{topic: events}`` (each its own clock) or a list of :class:`Source`.
    ``start_ts``: where every clock's first event lands (default: :func:`default_start`).
    ``keep_times``: no shift at all; every event keeps its recorded time.
    """
    if isinstance(streams, Mapping):
        streams = [Source(topic, events) for topic, events in streams.items()]
    if keep_times and start_ts is not None:
        raise ValueError("start_ts and keep_times exclude each other")
    start = default_start() if start_ts is None else float(start_ts)
    peeked, first_ts = [], {}
    for src in streams:
        it = iter(src.events)
        head = next(it, None)
        if head is None:
            continue
        clock = src.clock or src.topic
        first_ts[clock] = min(first_ts.get(clock, math.inf), head.ts)
        peeked.append((src, itertools.chain([head], it), clock))
    gens = [_checked(src, it, 0.0 if keep_times else start - first_ts[clock], i)
            for i, (src, it, clock) in enumerate(peeked)]
    return heapq.merge(*gens, key=lambda item: item[2].ts)


def demo(data_dir, *, settings: Optional[Settings] = None, clicks: int = 20_000, orders: int = 2_000,
         fraud_orders: int = 2_000, label_delay_s: float = sources.DEFAULT_LABEL_DELAY_S,
         catalog: bool = False, fraud_since=None, start_ts: Optional[float] = None,
         counts: Optional[Counter] = None) -> Iterator[tuple[str, str, Event]]:
    """Several real datasets merged onto one timeline (they share no users or items); see
    :func:`demo_sources`."""
    return merge(demo_sources(data_dir, settings=settings, clicks=clicks, orders=orders, fraud_orders=fraud_orders,
                              label_delay_s=label_delay_s, catalog=catalog, fraud_since=fraud_since, counts=counts),
                 start_ts=start_ts)


def demo_sources(data_dir, *, settings: Optional[Settings] = None, clicks: int = 20_000, orders: int = 2_000,
                 fraud_orders: int = 2_000, label_delay_s: float = sources.DEFAULT_LABEL_DELAY_S,
                 catalog: bool = False, fraud_since=None, counts: Optional[Counter] = None) -> list[Source]:
    """The sources of the ``demo`` scenario: several real datasets for one timeline.

    Taobao clicks, Online Retail orders, e-commerce fraud orders and their labels
    (``label_delay_s`` after each purchase); optionally the derived Online Retail catalog
    (price changes up to the last replayed order; cost and stock are assumptions). Each
    dataset starts at ``start_ts`` and keeps its own pace: the default slices span about
    28 minutes of clicks, 44 days of retail orders (Dec 2010 .. mid Jan 2011, with the
    shop's Christmas break) and 9 days of fraud orders (the January 2015 fraud wave:
    96% fraud; pass ``fraud_since="2015-02-01"`` for the ~4-5% regime).
    """
    s = settings or Settings()
    counts = Counter() if counts is None else counts
    retail = sources.online_retail_orders(data_dir, limit=orders, counts=counts) if orders else iter(())
    srcs = []
    if catalog and (retail := list(retail)):  # the catalog stops at the last replayed order
        srcs.append(Source(s.topic_catalog, sources.online_retail_catalog(data_dir, until=retail[-1].ts),
                           clock="or", namespace="or"))
    if clicks:
        srcs.append(Source(s.topic_clicks, sources.taobao_clicks(data_dir, limit=clicks, counts=counts),
                           clock="tb", namespace="tb"))
    srcs.append(Source(s.topic_orders, retail, clock="or", namespace="or"))
    if fraud_orders:
        srcs.append(Source(s.topic_orders, sources.fraud_orders(data_dir, limit=fraud_orders, since=fraud_since),
                           clock="ef", namespace="ef"))
        srcs.append(Source(s.topic_fraud_labels, sources.fraud_labels(
            data_dir, delay_s=label_delay_s, limit=fraud_orders, since=fraud_since), clock="ef", namespace="ef"))
    return srcs


# name -> function returning the scenario's list of Source (same keyword arguments as demo_sources)
SCENARIOS = {"demo": demo_sources}
