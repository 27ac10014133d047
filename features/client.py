"""Executes feature plans against Redis (``redis.asyncio``), standalone or Redis Cluster, one round trip per batch.

Used by the stream agents (reads and writes), the HTTP service (reads only) and the
offline snapshots. A batch is one non-transactional pipeline of Lua script calls, each
touching one hash slot (a bucket of entities, :mod:`features.keys`) and covering up to
``SCRIPT_CHUNK`` events: every call is atomic and short, so concurrent reads are not held up.
Click batches, the largest, go as CLICK_WAVES concurrent pipelines of disjoint buckets, each sent
while the next is built (:meth:`FeatureClient.apply_clicks`). With ``REDIS_TOPOLOGY=cluster`` the
same calls go through redis-py's cluster client, which routes each to its slot's primary (one
pipeline per primary, sent together).
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import time
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import hiredis
import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from features import lua
from features.privacy import Pseudonymiser
from features.sealing import RefusedState, Sealer
from features.store import ClickWave, FeatureKeys, FeaturePlans, Op, Position, _score_pairs

from streamscore.events import CatalogItem, Click, Order
from streamscore.settings import Settings

log = logging.getLogger(__name__)

CLICK_WAVES = 8  # parts of disjoint buckets a click batch is sent in, each while the next is built


class ClicksSent(NamedTuple):
    """What a batch's click calls answered (:meth:`FeatureClient.send_clicks`)."""

    recent: dict[str, list[str]]  # each clicking user's newest viewed items, newest first
    hits: list[int]  # first-delivery clicks on items of the user's stored recommendations: [model, cold start]
    pairs: list[list[str]]  # co-visitation pairs (a, b, weight, ts, position field, offset), for add_covisitation


class _CPacking:
    """Packs commands with hiredis's C packer. redis-py's asyncio connections pack in Python, argument by
    argument: ~12% of a clicks worker's CPU (py-spy, BENCHMARKS.md); the bytes sent are the same."""

    def pack_command(self, *args) -> list[bytes]:
        if isinstance(args[0], str) and " " in args[0]:  # 'SCRIPT LOAD': the server wants the words apart
            args = (*args[0].split(), *args[1:])
        return [hiredis.pack_command(args)]


# the connection class redis-py picks for the URL's scheme -> the same with the C packer
_PACKED = {cls: type(f"Packed{cls.__name__}", (_CPacking, cls), {})
           for cls in (aioredis.Connection, aioredis.SSLConnection, aioredis.UnixDomainSocketConnection)}


def connect_redis(settings: Settings, **kw) -> aioredis.Redis | RedisCluster:
    """The asyncio client of ``REDIS_URL``: a cluster client with ``REDIS_TOPOLOGY=cluster``; either way its
    connections pack commands in C (:class:`_CPacking`), swapped in before the first connection opens."""
    kw = {"socket_timeout": 5, "socket_connect_timeout": 2, **kw}
    if settings.redis_topology == "cluster":
        client = RedisCluster.from_url(settings.redis_url, **kw)
        # the cluster client takes no connection class: its nodes' and the nodes it discovers later
        packed = _PACKED[client.connection_kwargs["connection_class"]]
        for kwargs in (client.connection_kwargs, client.nodes_manager.connection_kwargs):
            kwargs["connection_class"] = packed
        for node in client.nodes_manager.startup_nodes.values():
            node.connection_class = packed
        return client
    client = aioredis.Redis.from_url(settings.redis_url, **kw)
    pool = client.connection_pool
    pool.connection_class = _PACKED[pool.connection_class]
    return client


def _ordered(groups: Sequence[Sequence[int]], replies: Sequence[Any], n: int) -> list[Any]:
    """Per-call replies (each a list answering the indices of its group) back in input order."""
    out: list[Any] = [None] * n
    for idx, reply in zip(groups, replies):
        for i, r in zip(idx, reply):
            out[i] = r
    return out


class FeatureClient:
    def __init__(self, redis: aioredis.Redis | RedisCluster, settings: Settings, metrics=None):
        """``metrics`` (a :class:`monitoring.metrics.Metrics`, optional): where refused states are counted."""
        self.redis = redis
        self.settings = settings
        self.metrics = metrics
        # model and bandit state: signed when stored, checked when read
        self.sealer = Sealer(settings.state_secret.get_secret_value())
        self.keys = FeatureKeys(Pseudonymiser(settings.pii_secret.get_secret_value()))
        self.plans = FeaturePlans(self.keys, settings.feature_ttl_s, covis=settings.rec_online_blend,
                                  covis_half_life_s=settings.rec_covis_half_life_s, label_ttl_s=settings.label_ttl_s,
                                  popular_keep=settings.rec_popular_keep)
        self.scripts = dict(lua.SCRIPTS)
        self.shas: dict[str, str] = {}

    @classmethod
    def connect(cls, settings: Settings, metrics=None) -> "FeatureClient":
        return cls(connect_redis(settings), settings, metrics)

    def _open(self, state: str, purpose: str, blob: bytes) -> bytes | None:
        """The payload of a sealed state, or None (logged and counted) when its signature fails."""
        try:
            return self.sealer.open(purpose, blob)
        except RefusedState as exc:
            log.error("refused the stored %s state (%s): not loaded, going on without it", state, exc.reason)
            if self.metrics is not None:
                self.metrics.state_refused.labels(state, exc.reason).inc()
            return None

    async def close(self) -> None:
        await self.redis.aclose()

    async def run(self, ops: Sequence[Op]) -> list[Any]:
        if not ops:
            return []
        if not self.shas:
            await self._load_scripts()
        try:
            return await self._pipeline(ops)
        except NoScriptError:  # the server restarted and lost its script cache
            await self._load_scripts()
            return await self._pipeline(ops)

    async def _load_scripts(self) -> None:
        """Load every script (on a cluster: on every primary, redis-py sends SCRIPT LOAD to all)."""
        self.shas = {name: await self.redis.script_load(src) for name, src in self.scripts.items()}

    async def _pipeline(self, ops: Sequence[Op]) -> list[Any]:
        pipe = (self.redis.pipeline() if isinstance(self.redis, RedisCluster)
                else self.redis.pipeline(transaction=False))
        for op in ops:
            if op[0] == "SCRIPT":
                _, name, keys, argv = op
                pipe.execute_command("EVALSHA", self.shas[name], len(keys), *keys, *argv)
            else:
                pipe.execute_command(*op)
        return await pipe.execute()

    # -- stream path ------------------------------------------------------------------------
    async def apply_clicks(self, clicks: Sequence[Click], recent_n: int,
                           positions: Sequence[Position] | None = None,
                           trends: bool = False) -> tuple[dict[str, list[str]], list[int]]:
        """Write a batch of clicks. ``positions``: each click's ``('<topic>:<partition>', offset)`` when read
        from Kafka (the deduplication of the counts, :mod:`features.lua`); None for a replay from files.
        Returns each clicking user's newest ``recent_n`` viewed items, and the clicks (first
        deliveries only) on items of the user's stored recommendations: ``[from a model list, from a
        cold-start list]``. ``trends``: also count the views in their categories' trending items (what
        :meth:`apply_category_trends` does), with the clicks' own calls. The calls are built one part at a
        time as they are sent (:meth:`run_clicks`)."""
        if not clicks:
            return {}, [0, 0]
        return await self.run_clicks(self._click_waves(clicks, recent_n, positions, trends))

    def plan_clicks(self, clicks: Sequence[Click], recent_n: int, positions: Sequence[Position] | None = None,
                    trends: bool = False) -> list[ClickWave]:
        """The calls :meth:`apply_clicks` sends, built now and sent later by :meth:`run_clicks` (pure, no I/O):
        a worker builds its next batch's while Redis runs the current one (:mod:`streams.runtime`)."""
        return list(self._click_waves(clicks, recent_n, positions, trends)) if clicks else []

    def _click_waves(self, clicks, recent_n, positions, trends) -> Iterator[ClickWave]:
        trend = self._trend_args() if trends else None
        return self.plans.click_waves(clicks, recent_n, positions, trend, CLICK_WAVES)

    async def run_clicks(self, waves: Iterable[ClickWave], on_sent: Callable[[], None] | None = None
                         ) -> tuple[dict[str, list[str]], list[int]]:
        """Send click calls (:meth:`plan_clicks`, or a generator building them) and read what they answer
        (as :meth:`apply_clicks`): :meth:`send_clicks`, then its co-visitation round (:meth:`add_covisitation`)."""
        sent = await self.send_clicks(waves, on_sent)
        await self.add_covisitation(sent.pairs)
        return sent.recent, sent.hits

    async def send_clicks(self, waves: Iterable[ClickWave], on_sent: Callable[[], None] | None = None) -> ClicksSent:
        """The click calls of a batch and what they answer, without its co-visitation round. The parts
        (CLICK_WAVES, of disjoint buckets) go as concurrent pipelines, each as soon as it is there, so Redis runs a
        part while the next is built or sent; ``on_sent`` is called once every part is out (the caller may then use
        the CPU while Redis works). The co-visitation pairs come back in rank order (a co-visitation bucket takes
        pairs from users of every part), for :meth:`add_covisitation`; a worker sends them while its next batch's
        calls run (:mod:`streams.runtime`)."""
        sent = []
        recent: dict[str, list[str]] = {}
        hits, ranked = [0, 0], []
        try:
            for ops, users_of_call in waves:
                sent.append((users_of_call, asyncio.ensure_future(self.run(ops))))
                await asyncio.sleep(0)  # let the part go out before building (or sending) the next
            if on_sent is not None:
                await asyncio.sleep(0)  # the last part's first step: its calls written
                on_sent()
            for users_of_call, part in sent:
                for (rank, users), reply in zip(users_of_call, await part):  # the user calls come first in a part
                    *lists, call_hits, flat = orjson.loads(reply)  # an empty list comes as {} (features.lua)
                    recent.update(zip(users, (items or [] for items in lists)))
                    hits = [hits[0] + int(call_hits[0]), hits[1] + int(call_hits[1])]
                    if flat:
                        ranked.append((rank, flat))
        finally:  # a part (or building one) failed: the sent ones finish before the batch is retried
            await asyncio.gather(*(part for _, part in sent), return_exceptions=True)
        ranked.sort(key=lambda r: r[0])
        return ClicksSent(recent, hits, [flat[j:j + 6] for _, flat in ranked for j in range(0, len(flat), 6)])

    async def add_covisitation(self, pairs: Sequence[Sequence[str]]) -> None:
        """Count co-visitation pairs (:attr:`ClicksSent.pairs`) in their items' neighbours (``ss:cv:{item}``):
        idempotent, each pair once per Kafka position (``cv|<topic>:<partition>``, :mod:`features.lua`). Pairs
        of one partition must be added in offset order: a batch's after the batch before's."""
        if pairs:
            await self.run(self.plans.covis_add_scripts(pairs))

    async def apply_category_trends(self, clicks: Sequence[Click], positions: Sequence[Position] | None = None) -> int:
        """Count the batch's views in the trending items of their categories (``ss:cat:{c}:trend``) and
        in the global trending shards (``ss:g:trend:{cat.n}``), decayed with ``REC_TREND_HALF_LIFE_S``,
        each view once (``positions`` as for :meth:`apply_clicks`; None: deduplicated by event id).
        One round trip of its own (the stream and the backfill send these calls with the clicks' own,
        ``apply_clicks(..., trends=True)``). Returns the views counted; nothing with
        ``REC_COLD_TRENDS=off``."""
        ops = self._trend_ops(clicks, positions) if clicks else []
        return sum(int(r) for r in await self.run(ops))

    def _trend_args(self) -> tuple[float, int] | None:
        """(half-life s, keep per category) of the views' trend counts; None with ``REC_COLD_TRENDS=off``."""
        s = self.settings
        return (s.rec_trend_half_life_s, s.rec_trend_keep) if s.rec_cold_trends else None

    def _trend_ops(self, clicks: Sequence[Click], positions: Sequence[Position] | None) -> list:
        """The CATEGORY_TRENDS_ADD calls of a batch (none with ``REC_COLD_TRENDS=off``)."""
        args = self._trend_args()
        return self.plans.category_trends_scripts(clicks, *args, positions) if args else []

    async def cold_start_reads(self, user_ids: Sequence[str], n: int, ts: float | None
                               ) -> tuple[list[tuple[str, float]], list[tuple[str, float]], dict[str, list[tuple[str, float]]]]:
        """What cold-start lists need before the model runs, in one round trip: the ``n`` most viewed
        items (as :meth:`popular_items`), the ``n`` global trending items with their views decayed to event
        time ``ts`` (merged over the shards: an item's weights summed; None: to the newest shard's epoch,
        for a reader that does not know the stream's event time: the ranking is the same), and each user's
        category view counts (largest first, from ``ss:u:{h}:state``). Without ``REC_COLD_TRENDS`` the last
        two are empty."""
        k = self.keys
        pop_ops = [("ZREVRANGE", key, 0, n - 1, "WITHSCORES") for key in k.shards("popular", "i")]
        trend_ops, groups, users = [], [], list(dict.fromkeys(user_ids))
        if self.settings.rec_cold_trends:
            trend_ops, groups = self.plans.trends_scripts(k.shards("trend", "cat"), n)
            trend_ops += [self.plans.user_categories_op(u) for u in users]
        replies = await self.run(pop_ops + trend_ops)
        rows = [row for r in replies[:len(pop_ops)] for row in _score_pairs(r)]
        rows.sort(key=lambda r: (r[1], r[0]), reverse=True)
        popular = [(i.decode(), sc) for i, sc in rows[:n]]
        if not self.settings.rec_cold_trends:
            return popular, [], {}
        shards = [shard for call in replies[len(pop_ops):len(pop_ops) + len(groups)] for shard in call]
        hl = self.settings.rec_trend_half_life_s
        if ts is None:  # decays cancel in the ranking: the newest epoch keeps the factors near 1 (no underflow)
            ts = max((float(shard[0]) for shard in shards if shard[0]), default=0.0)
        merged: dict[str, float] = {}
        for shard in shards:
            for item, w in self.plans.decayed_rows(shard, ts, hl):
                merged[item] = merged.get(item, 0.0) + w
        trending = sorted(merged.items(), key=lambda r: (-r[1], r[0]))[:n]
        cats = {u: self.plans.user_categories(r) for u, r in zip(users, replies[len(pop_ops) + len(groups):])}
        return popular, trending, cats

    async def category_trends(self, category_ids: Sequence[str], n: int, ts: float) -> dict[str, list[tuple[str, float]]]:
        """The ``n`` trending items of each category (views decayed to event time ``ts``), strongest first;
        categories without counts are left out. One round trip."""
        cats = list(dict.fromkeys(category_ids))
        if not cats:
            return {}
        ops, groups = self.plans.trends_scripts([self.keys.category_trend(c) for c in cats], n)
        replies = _ordered(groups, await self.run(ops), len(cats))
        hl = self.settings.rec_trend_half_life_s
        out = {c: self.plans.decayed_rows(r, ts, hl) for c, r in zip(cats, replies)}
        return {c: rows for c, rows in out.items() if rows}

    async def fold_globals(self) -> dict[str, int]:
        """Sum the funnel transitions of every user bucket into ``ss:g:funnel``, what checkout reads (the
        clicks role does this every few seconds); returns the sums."""
        counts = await self.funnel_counts()
        if counts:
            await self.redis.hset(self.keys.funnel, mapping=counts)
        return counts

    async def funnel_counts(self) -> dict[str, int]:
        """Funnel transitions ``'{from}>{to}'`` over all users, from the shards (exact, as of now)."""
        total: dict[str, int] = {}
        for shard in await self.run([("HGETALL", k) for k in self.keys.shards("funnel", "u")]):
            for f, v in shard.items():
                total[f.decode()] = total.get(f.decode(), 0) + int(v)
        return total

    async def _orders(self, orders: Sequence[Order], write: bool, extra: Sequence[Op] = ()) -> tuple[list, list]:
        """Order features of ``orders`` (reads, then with ``write`` the writes) and the replies of
        ``extra`` ops sent in the same round trip; fraud links of early labels in a second one."""
        ops, plan = self.plans.orders_scripts(orders, write)
        replies = await self.run(ops + list(extra))
        per_order, links = self.plans.orders_replies(plan, replies[:len(plan[1])])
        if links:
            await self.run(self.plans.link_fraud_scripts(links))
        return [self.plans.order_features(o, r) for o, r in zip(orders, per_order)], replies[len(ops):]

    async def apply_orders_checked(self, orders: Sequence[Order]) -> tuple[list[dict[str, float]], dict[str, bytes]]:
        """:meth:`apply_orders` and :meth:`stored_verdicts` of the same orders in one round trip (the
        fraud role's first step: a redelivered order's features are re-applied, which changes nothing)."""
        ids, reads = self._verdict_reads(o.order_id for o in orders)
        features, replies = await self._orders(orders, True, reads)
        return features, self._found_verdicts(ids, replies)

    async def apply_orders(self, orders: Sequence[Order]) -> list[dict[str, float]]:
        """Read each order's features as of just before it, then record it; one round trip.
        (The items' sales value, the pricing bandit's reward, is :meth:`apply_revenue`'s.)"""
        return (await self._orders(orders, write=True))[0]

    async def apply_revenue(self, orders: Sequence[Order]) -> None:
        """Record each order's sales value per item (``ss:i:{item}:revenue``, the pricing bandit's
        reward); idempotent per order and item; one round trip."""
        await self.run(self.plans.revenue_scripts(orders))

    async def read_order(self, order: Order) -> dict[str, float]:
        """Order features without recording the order (the synchronous HTTP path)."""
        return (await self._orders([order], write=False))[0][0]

    async def read_checkout(self, order: Order) -> dict[str, float]:
        """The whole checkout vector (order, device/IP/card and the user's click features), one round trip."""
        features, (clicks_reply, transitions) = await self._orders(
            [order], False, [self.plans.user_clicks_script(order.user_id, order.ts), ("HGETALL", self.keys.funnel)])
        return {**features[0], **self.plans.user_click_features(clicks_reply, transitions)}

    async def apply_catalog(self, items: Sequence[CatalogItem]) -> None:
        await self.run(self.plans.catalog_scripts(items))

    async def _items(self, item_ids: Sequence[str], ts: float) -> list[Any]:
        ops, groups = self.plans.items_scripts(item_ids, ts)
        return _ordered(groups, await self.run(ops), len(item_ids))

    async def item_features(self, item_ids: Sequence[str], ts: float) -> dict[str, dict[str, float]]:
        """Item features as of ``ts`` for each item, one round trip."""
        return {i: self.plans.item_features(r) for i, r in zip(item_ids, await self._items(item_ids, ts))}

    async def pricing_states(self, item_ids: Sequence[str], ts: float) -> dict[str, dict[str, float]]:
        """Catalog state and pricing features of the items that have a catalog entry."""
        states = {}
        for item_id, reply in zip(item_ids, await self._items(item_ids, ts)):
            state = self.plans.pricing_state(ts, reply)
            if state is not None:
                states[item_id] = state
        return states

    async def set_prices(self, prices: dict[str, float], evaluated: Sequence[str], ts: float) -> None:
        """Record new prices (item -> price) and when they changed, and when each ``evaluated``
        item was last priced (event time: the hourly guardrail and the evaluation interval)."""
        await self.run([("HSET", self.keys.item_catalog(i), "price", p, "price_changed_at", ts)
                        for i, p in prices.items()] +
                       [("HSET", self.keys.item_catalog(i), "priced_at", ts) for i in evaluated])

    # -- pricing bandit: sales value per item and each item's bandit state --------------
    async def revenue_between(self, since: dict[str, float], ts: float) -> dict[str, float]:
        """Sales value of each item over its event-time window ``[since[item], ts)``, one round trip."""
        items = list(since)
        replies = await self.run([("ZRANGE", self.keys.item_revenue(i), repr(since[i]), f"({ts!r}", "BYSCORE")
                                  for i in items])
        return {i: self.plans.revenue_sum(r) for i, r in zip(items, replies)}

    async def bandit_states(self, item_ids: Sequence[str]) -> dict[str, dict[bytes, bytes]]:
        """The stored ``ss:i:{item}:bandit`` hash of each item that has one, its ``model`` field
        unsealed; an item whose model's signature fails is left out (it starts afresh) and counted."""
        replies = await self.run([("HGETALL", self.keys.item_bandit(i)) for i in item_ids])
        out = {}
        for i, r in zip(item_ids, replies):
            if not r:
                continue
            if b"model" in r:
                model = self._open("pricing-bandit", f"bandit:{i}", r[b"model"])
                if model is None:
                    continue
                r = {**r, b"model": model}
            out[i] = r
        return out

    async def save_bandit_states(self, states: dict[str, dict[str, Any]]) -> None:
        """Write each item's bandit hash; its ``model`` (bytes) is sealed for that item."""
        def sealed(i, fields):
            if "model" in fields:
                fields = {**fields, "model": self.sealer.seal(f"bandit:{i}", fields["model"])}
            return [v for kv in fields.items() for v in kv]
        await self.run([op for i, fields in states.items() for op in
                        (("HSET", self.keys.item_bandit(i), *sealed(i, fields)),
                         ("EXPIRE", self.keys.item_bandit(i), self.settings.feature_ttl_s))])

    # -- verdicts by order id, learn records waiting for labels, early labels -------------------
    async def stored_verdicts(self, order_ids: Sequence[str]) -> dict[str, bytes]:
        """The verdict already recorded (``ss:v:{order_id}``) of each order id that has one; one round trip."""
        id_chunks, reads = self._verdict_reads(order_ids)
        return self._found_verdicts(id_chunks, await self.run(reads))

    def _verdict_reads(self, order_ids) -> tuple[list[list[str]], list[Op]]:
        """The distinct ids, and one GET of each one's ``ss:v:`` key (keys of many slots: no MGET)."""
        ids = list(dict.fromkeys(order_ids))
        return ids, [("GET", self.keys.verdict(o)) for o in ids]

    @staticmethod
    def _found_verdicts(ids: list[str], replies: Sequence[Any]) -> dict[str, bytes]:
        return {o: v for o, v in zip(ids, replies) if v is not None}

    async def record_verdicts(self, entries: Sequence[tuple[str, bytes, dict, float]]) -> list[tuple[bytes, bool | None]]:
        """Record ``(order_id, verdict_bytes, learn_record, event_ts)`` entries; one round trip, each
        order atomic (RECORD_VERDICTS). Per entry, in order:

        * ``(existing_bytes, None)``: a verdict was already recorded for the order (a redelivery):
          that one is returned and nothing else is stored;
        * ``(verdict_bytes, is_fraud)``: its label came first (an early label, see :meth:`join_labels`):
          taken, so learn now; the learn record is not stored;
        * ``(verdict_bytes, None)``: the learn record is stored (``ss:o:{order_id}``, ``LABEL_TTL_S``)
          and the order is pending (``ss:g:pending``) until its label or silence.

        The verdict is kept ``VERDICT_TTL_S``."""
        entries = list(entries)
        ops, groups = self.plans.record_verdicts_scripts(entries, self.settings.verdict_ttl_s, self.settings.label_ttl_s)
        replies = _ordered(groups, await self.run(ops), len(entries))
        return self.plans.recorded_verdicts(entries, replies)

    async def join_labels(self, labels: dict[str, bool], at: dict[str, float] | None = None) -> dict[str, dict | None]:
        """Per label (order id -> is_fraud), atomically (JOIN_LABELS): take the order's learn record
        and remove it from the pending set, and return it; when there is none, keep the label as
        an early label (``ss:l:{order_id}``, ``LABEL_TTL_S``) for :meth:`record_verdicts` and return
        None for it. A fraud label also links the order's device / IP / card to fraud from the
        label's event time ``at[order_id]`` (default: now), the ``*_fraud_linked`` features of later
        orders. One round trip."""
        now = time.time()
        items = [(oid, is_fraud, (at or {}).get(oid, now)) for oid, is_fraud in labels.items()]
        ops, groups = self.plans.join_labels_scripts(items, self.settings.label_ttl_s)
        joined = [self.plans.joined(lab, r) for lab, r in zip(items, _ordered(groups, await self.run(ops), len(items)))]
        links = [link for _, found in joined for link in found]
        if links:  # in the entities' buckets (re-linking changes nothing, so a crash between the two is harmless)
            await self.run(self.plans.link_fraud_scripts(links))
        return {oid: rec for (oid, _, _), (rec, _) in zip(items, joined)}

    async def store_scored(self, records: Sequence[tuple[str, dict, float]]) -> None:
        """Keep each scored order's ``(order_id, record, event ts)`` until its label arrives:
        ``ss:o:{order_id}`` (JSON, ``LABEL_TTL_S``) and ``ss:g:pending`` (order id -> event ts).
        (The stream's path before :meth:`record_verdicts`, which does this too.)"""
        ops: list[Op] = []
        for order_id, record, ts in records:
            ops += [("SET", self.keys.order_record(order_id), json.dumps(record), "EX", self.settings.label_ttl_s),
                    ("ZADD", self.keys.pending_of(order_id), ts, order_id)]
        await self.run(ops)

    async def take_scored(self, order_ids: Sequence[str]) -> dict[str, dict | None]:
        """Remove and return the stored records of ``order_ids`` (None when expired or unknown);
        labels go through :meth:`join_labels`, this is for orders learned as legitimate after silence."""
        ops: list[Op] = []
        for oid in order_ids:
            ops += [("GETDEL", self.keys.order_record(oid)), ("ZREM", self.keys.pending_of(oid), oid)]
        replies = await self.run(ops)
        return {oid: json.loads(r) if r else None for oid, r in zip(order_ids, replies[::2])}

    async def unlabelled_before(self, ts: float, limit: int) -> list[str]:
        """Order ids scored before ``ts`` (event time) that never got a label."""
        shards = await self.run([("ZRANGE", k, "-inf", f"({ts}", "BYSCORE", "LIMIT", 0, limit, "WITHSCORES")
                                 for k in self.keys.shards("pending", "o")])
        rows = heapq.merge(*([(sc, m) for m, sc in _score_pairs(r)] for r in shards))
        return [m.decode() for _, m in list(rows)[:limit]]

    # -- model checkpoints -----------------------------------------------------------------------
    async def save_checkpoint(self, name: str, state: bytes, keep: int) -> int:
        """Store a new version of ``name``'s state, sealed; keep the ``keep`` newest; return the version."""
        k = self.keys.checkpoint
        version = await self.redis.incr(k(name, "seq"))
        await self.run([("SET", k(name, version), self.sealer.seal(f"checkpoint:{name}", state)),
                        ("SET", k(name, "latest"), version), ("DEL", k(name, version - keep))])
        return version

    async def load_checkpoint(self, name: str) -> tuple[int, bytes] | None:
        """``(version, state)`` of ``name``'s newest checkpoint; None when there is none or its
        signature fails (refused: logged, counted, never parsed)."""
        version = await self.redis.get(self.keys.checkpoint(name, "latest"))
        try:
            version = int(version) if version is not None else None
        except ValueError:  # not a number: nothing of ours
            version = None
        if version is None:
            return None
        state = await self.redis.get(self.keys.checkpoint(name, version))
        if state is None:
            return None
        state = self._open(name, f"checkpoint:{name}", state)
        return (version, state) if state is not None else None

    # -- fraud thresholds (scorers.thresholds) ---------------------------------------------------
    async def store_thresholds(self, thresholds) -> None:
        """The fraud thresholds in use, sealed, for the HTTP service and a restarted worker."""
        await self.redis.set(self.keys.fraud_thresholds(), self.sealer.seal("fraud-thresholds", thresholds.to_bytes()))

    async def load_thresholds(self):
        """The stored fraud thresholds (:class:`scorers.thresholds.Thresholds`); None when there are
        none, their signature fails or they do not parse (logged)."""
        from scorers.thresholds import Thresholds

        raw = await self.redis.get(self.keys.fraud_thresholds())
        if raw is None:
            return None
        raw = self._open("fraud-thresholds", "fraud-thresholds", raw)
        if raw is None:
            return None
        try:
            return Thresholds.from_bytes(raw)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("stored fraud thresholds do not parse (%s): ignored", exc)
            return None

    # -- recommendations ----------------------------------------------------------------------
    async def store_recommendations(self, recs: dict[str, dict]) -> None:
        """``recs``: pseudonymised user -> payload (a :class:`~streamscore.events.Recommendations`
        dump); each user's keys expire after ``REC_TTL_S``."""
        await self.run(self.plans.store_recs_scripts(recs, self.settings.rec_ttl_s))

    async def recommendations(self, user_id: str) -> dict | None:
        raw = await self.redis.get(self.keys.recommendations(self.keys.user(user_id)))
        return json.loads(raw) if raw else None

    async def known_items(self) -> int:
        """How many distinct items have been viewed (the denominator of recommendation coverage): the sum of
        the buckets' HyperLogLogs (~0.8% error; a bucket's items are its own, so the sum counts each once)."""
        return sum(await self.run([("PFCOUNT", k) for k in self.keys.shards("viewed", "i")]))

    async def popular_items(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` most viewed items (views counted once per event), merged from every shard's top
        ``n``: strongest first, ties by id descending (as one ``ZREVRANGE``)."""
        shards = await self.run([("ZREVRANGE", k, 0, n - 1, "WITHSCORES") for k in self.keys.shards("popular", "i")])
        rows = [row for r in shards for row in _score_pairs(r)]
        rows.sort(key=lambda r: (r[1], r[0]), reverse=True)
        return [(i.decode(), sc) for i, sc in rows[:n]]

    async def covis_neighbours(self, item_ids: Sequence[str], ts: float) -> dict[str, list[tuple[str, float]]]:
        """Co-visited neighbours of ``item_ids`` (``ss:cv:{item}``; raw ids in and out) with weights decayed to event time
        ``ts``, strongest first; one round trip."""
        item_ids = list(dict.fromkeys(item_ids))
        ops, groups = self.plans.covis_scripts(item_ids)
        return self.plans.covis_neighbours(item_ids, _ordered(groups, await self.run(ops), len(item_ids)), ts)

    async def ping_ms(self) -> float:
        t0 = time.perf_counter()
        await self.redis.ping()
        return (time.perf_counter() - t0) * 1e3
