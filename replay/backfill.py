"""Backfill: rebuild the online features in Redis from history, without the topics.

For a cold start or after Redis lost its data. The replay's merged stream (any scenario,
files or synthetic sources, in event-time order) goes straight into the SAME feature code
the worker runs (:class:`features.client.FeatureClient`): clicks through ``apply_clicks``
(with the worker's ``HISTORY_LEN``), orders through ``apply_orders`` and ``apply_revenue`` (the
items' sales value the pricing loop is rewarded with), catalog entries
through ``apply_catalog``, in batches of up to ``batch`` events of one type, each type in
event-time order. Fraud labels go through the fraud role's own call,
:meth:`~features.client.FeatureClient.join_labels`, at their event time (their arrival): a fraud
label links its order's device / IP / card from then on (the ``*_fraud_linked`` features of later
orders, as the offline snapshot builds them); a legitimate label changes no feature and is only counted.

Why per-type batches are faithful: clicks, orders and catalog entries write disjoint keys
(see the key layout in :mod:`features.store`), and the worker consumes the three topics
independently, so only the order within a type matters - and per user or item it is the
stream's order, as on the topics (keyed by entity). Labels are the exception, as they link the
entities of orders: buffered fraud labels are applied before the next order is (an order reads the
links made strictly before its event time, so a label applied early changes nothing for earlier
orders), and the buffered orders are applied first when one of them is a buffered label's own order
(so the label finds the order's entities).

What a backfill does NOT rebuild: decisions and learning state. Recommendations
(``ss:rec:*``) are written by the worker when a user next clicks; the price fields the
pricing loop writes into ``ss:i:{item}:catalog`` (``price`` after an adjustment,
``priced_at``, ``price_changed_at``) come from live decisions (the backfill leaves the
catalog's own price); verdicts by order id (``ss:v:*``), scored orders waiting for their
labels (``ss:o:*``, ``ss:g:pending``), early labels (``ss:l:*``) and online-model checkpoints
(``ss:g:ckpt:*``) belong to the worker's fraud decisions and online learning. A fraud label
applied here does what it does on the stream besides the link: it takes its order's learn record
if there is one (a backfill into a Redis a worker is writing to: that label is then not learned by
River), or keeps the label as an early label for the order's verdict (``LABEL_TTL_S``).

Writes are idempotent (members keyed by event id; counters once per event, as the reply of the
event's own ``ZADD`` says whether it is new: features/lua.py), so a backfill can be re-run or interrupted and
restarted; into a Redis the worker is writing to at the same time it only adds what is
missing. ``PII_HMAC_SECRET`` must be the worker's, or the pseudonymised keys differ.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Callable, Iterable, Optional

from features.client import FeatureClient
from streamscore.events import CatalogItem, Click, FraudLabel, Order
from streamscore.settings import Settings

BATCH = 500


async def backfill(events: Iterable[tuple[str, str, object]], settings: Settings, batch: int = BATCH,
                   progress: Optional[Callable[[dict], None]] = None, total: Optional[int] = None,
                   progress_every_s: float = 1.0, flush_db: bool = False) -> dict:
    """Apply ``events`` (``(topic, key, event)``, event-time ordered) to ``settings.redis_url``."""
    from scorers.recommender import HISTORY_LEN  # the worker's value (it only shapes replies)

    client = FeatureClient.connect(settings)
    applied, ignored = Counter(), Counter()
    buffers: dict[type, list] = {Click: [], Order: [], CatalogItem: []}
    async def apply_orders(batch):
        await client.apply_orders(batch)
        await client.apply_revenue(batch)

    labels: list[FraudLabel] = []  # fraud labels not applied yet (event-time order)

    async def flush_labels() -> None:
        nonlocal labels
        if not labels:
            return
        waiting = {o.order_id for o in buffers[Order]}
        if any(lab.order_id in waiting for lab in labels):
            await flush(Order)  # a label's own order first: the label links its entities
        for i in range(0, len(labels), batch):
            chunk = labels[i:i + batch]
            await client.join_labels({lab.order_id: True for lab in chunk}, at={lab.order_id: lab.ts for lab in chunk})
        applied["fraud_labels"] += len(labels)
        labels = []

    async def apply_clicks(b):  # the click features and the categories' trending items (deduplicated by event id)
        await client.apply_clicks(b, HISTORY_LEN, trends=True)

    appliers = {Click: apply_clicks, Order: apply_orders,
                CatalogItem: client.apply_catalog}
    names = {Click: "clicks", Order: "orders", CatalogItem: "catalog"}
    t0 = time.monotonic()
    next_report = t0 + progress_every_s
    seen = 0

    def report(done: bool = False):
        if progress:
            elapsed = time.monotonic() - t0
            rate = seen / elapsed if elapsed > 0 else 0.0
            progress({"events": seen, "total": total, "applied": dict(applied), "elapsed_s": round(elapsed, 1),
                      "events_per_s": round(rate), "eta_s": round((total - seen) / rate) if total and rate else None,
                      "done": done})

    async def flush(kind: type) -> None:
        buf = buffers[kind]
        if buf:
            await appliers[kind](buf)
            applied[names[kind]] += len(buf)
            buffers[kind] = []

    try:
        if flush_db:
            await client.redis.flushdb()
        keys_before = await client.redis.dbsize()
        for _topic, _key, ev in events:
            seen += 1
            kind = type(ev)
            if kind is Order and labels:  # the links of every earlier label before this order is read
                await flush_labels()
            if kind in buffers:
                buffers[kind].append(ev)
                if len(buffers[kind]) >= batch:
                    await flush(kind)
            elif kind is FraudLabel:
                if ev.is_fraud:
                    labels.append(ev)
                    if len(labels) >= batch:
                        await flush_labels()
                else:
                    ignored["legitimate_labels"] += 1
            else:
                raise TypeError(f"backfill: no feature rule for {kind.__name__}")
            if seen % 1000 == 0 and time.monotonic() >= next_report:
                report()
                next_report = time.monotonic() + progress_every_s
        await flush_labels()
        for kind in buffers:
            await flush(kind)
        keys_after = await client.redis.dbsize()
    finally:
        await client.close()
    elapsed = time.monotonic() - t0
    report(done=True)
    return {"events": seen, "applied": dict(applied), "ignored": dict(ignored),
            "redis_url": _redact(settings.redis_url),
            "keys_before": keys_before, "keys_after": keys_after, "elapsed_s": round(elapsed, 3),
            "events_per_s": round(seen / elapsed, 1) if elapsed > 0 else None}


def _redact(url: str) -> str:
    """A URL without its password (``redis://:secret@host`` -> ``redis://***@host``)."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def run(events, settings: Settings, **kw) -> dict:
    return asyncio.run(backfill(events, settings, **kw))
