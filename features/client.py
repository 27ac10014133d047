"""Executes feature plans against Redis (``redis.asyncio``), one pipeline per batch.

Used by the stream agents (reads and writes) and the HTTP service (reads only). The
pipeline is non-transactional: commands of one batch run in order on one connection,
which is all the point-in-time invariant needs (see :mod:`features.store`).
"""

from __future__ import annotations

import json
import time
from typing import Any, Sequence

import redis.asyncio as aioredis

from features.privacy import Pseudonymiser
from features.store import FeatureKeys, FeaturePlans, Op
from streamscore.events import CatalogItem, Click, Order
from streamscore.settings import Settings


class FeatureClient:
    def __init__(self, redis: aioredis.Redis, settings: Settings):
        self.redis = redis
        self.settings = settings
        self.keys = FeatureKeys(Pseudonymiser(settings.pii_secret))
        self.plans = FeaturePlans(self.keys, settings.feature_ttl_s)

    @classmethod
    def connect(cls, settings: Settings) -> "FeatureClient":
        return cls(aioredis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2), settings)

    async def close(self) -> None:
        await self.redis.aclose()

    async def run(self, ops: Sequence[Op]) -> list[Any]:
        if not ops:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for op in ops:
            pipe.execute_command(*op)
        return await pipe.execute()

    # -- stream path ------------------------------------------------------------------------
    async def apply_clicks(self, clicks: Sequence[Click], recent_n: int) -> dict[str, list[str]]:
        """Write a batch of clicks; return each clicking user's newest ``recent_n`` viewed items."""
        ops: list[Op] = [op for c in clicks for op in self.plans.click_writes(c)]
        users = list(dict.fromkeys(c.user_id for c in clicks))
        ops += [self.plans.recent_items_read(u, recent_n) for u in users]
        replies = await self.run(ops)
        recent = replies[len(replies) - len(users):]
        return {u: [i.decode() for i in items] for u, items in zip(users, recent)}

    async def apply_orders(self, orders: Sequence[Order]) -> list[dict[str, float]]:
        """Read each order's fraud features as of just before it, then write it; one round trip."""
        ops: list[Op] = []
        spans = []
        for order in orders:
            reads = self.plans.order_reads(order)
            spans.append((len(ops), len(reads)))
            ops += reads + self.plans.order_writes(order)
        replies = await self.run(ops)
        return [self.plans.fraud_features(o, replies[s:s + n]) for o, (s, n) in zip(orders, spans)]

    async def read_order(self, order: Order) -> dict[str, float]:
        """Fraud features for an order without recording it (the synchronous HTTP path)."""
        return self.plans.fraud_features(order, await self.run(self.plans.order_reads(order)))

    async def apply_catalog(self, items: Sequence[CatalogItem]) -> None:
        await self.run([op for item in items for op in self.plans.catalog_writes(item)])

    async def pricing_states(self, item_ids: Sequence[str], ts: float) -> dict[str, dict[str, float]]:
        ops = [op for i in item_ids for op in self.plans.pricing_reads(i, ts)]
        replies = await self.run(ops)
        states = {}
        for n, item_id in enumerate(item_ids):
            state = self.plans.pricing_state(item_id, ts, replies[2 * n:2 * n + 2])
            if state is not None:
                states[item_id] = state
        return states

    async def set_prices(self, prices: dict[str, float], changed_at: float) -> None:
        """Record new prices (item -> price) and when they changed (event time, for the hourly guardrail)."""
        await self.run([("HSET", self.keys.item_catalog(i), "price", p, "price_changed_at", changed_at)
                        for i, p in prices.items()])

    # -- recommendations ----------------------------------------------------------------------
    async def store_recommendations(self, recs: dict[str, dict]) -> None:
        """``recs``: pseudonymised user -> JSON-able payload; each key expires after rec_ttl_s."""
        ttl = self.settings.rec_ttl_s
        await self.run([("SET", self.keys.recommendations(uh), json.dumps(p), "EX", ttl) for uh, p in recs.items()])

    async def recommendations(self, user_id: str) -> dict | None:
        raw = await self.redis.get(self.keys.recommendations(self.keys.user(user_id)))
        return json.loads(raw) if raw else None

    async def popular_items(self, n: int) -> list[tuple[str, float]]:
        rows = await self.redis.zrevrange(self.keys.popular, 0, n - 1, withscores=True)
        return [(i.decode(), s) for i, s in rows]

    async def ping_ms(self) -> float:
        t0 = time.perf_counter()
        await self.redis.ping()
        return (time.perf_counter() - t0) * 1e3
