"""Online feature store in Redis (standalone or Redis Cluster): key layout, idempotent point-in-time plans.

Key layout (:mod:`features.keys` builds every name): ``ss:<kind>:{<tag>}:<id>[:<suffix>]``, where
the id is escaped (:func:`features.keys.esc`: every byte outside ``[A-Za-z0-9._-]`` as ``%XX``), so
no id, whatever characters it holds, can reach into another key, and ``{<tag>}`` is the hash tag of
the id's bucket (``{u.17}``: Redis Cluster keeps every key of a tag in one slot). Keys that belong
to no id sit under the reserved kind ``g``, sharded per bucket (``ss:g:<name>:{<tag>}``) where every
event updates them. Below, ``{h}`` is a pseudonymised id (:mod:`features.privacy`) and ``{item}``,
``{order_id}``, ``{name}`` escaped ids, each key carrying its tag (left out here); members, fields and
values hold ids raw (``tb:123``). Every key has a TTL (``FEATURE_TTL_S``, refreshed on write) unless noted.

==========================================  =====  ===================================================
key                                         type   content
==========================================  =====  ===================================================
``ss:u:{h}:c:{action}``                     ZSET   click ``event_id`` -> event ts (CLICK_RETENTION_S, 24 h, kept), once the user has more than
                                                   INLINE_WINDOW_MAX of that action in the window (until then: ``e`` fields of the state hash)
``ss:u:{h}:state``                          HASH   ``s``: the user's funnel state (``b`` browse, ``c`` cart, ``p`` purchase); ``n``: views with a category;
                                                   ``c{category}``: views of that category (once per event; the CATS_KEEP largest kept);
                                                   ``r{item}``: the newest ts the user viewed the item (the RECENT_ITEMS newest kept);
                                                   ``e{action letter}{event_id}``: event ts of a click of a small window (v, a, r, p: ACTION_LETTER)
``ss:u:{h}:orders``                         ZSET   ``{order_id}|{amount}`` -> event ts (30 d kept)
``ss:u:{h}:hll:{device|ip|card}:{hour}``    HLL    the user's devices / IPs / cards in that UTC hour (25 h TTL)
``ss:{device|ip|card}:{h}:users``           ZSET   user ``{h}`` -> first-seen ts (30 d kept)
``ss:{device|ip|card}:{h}:orders``          ZSET   order id -> event ts (30 d kept)
``ss:{device|ip|card}:{h}:lusers``          ZSET   user ``{h}`` -> first-seen ts, all history: the ``LIFETIME_CAP`` earliest kept (TTL ``LIFETIME_RETENTION_S``)
``ss:{device|ip|card}:{h}:lorders``         ZSET   order id -> event ts, all history: the ``LIFETIME_CAP`` earliest kept (TTL ``LIFETIME_RETENTION_S``)
``ss:{device|ip|card}:{h}:fraud``           ZSET   order id -> arrival ts of its fraud label: the ``LIFETIME_CAP`` earliest kept (TTL ``LIFETIME_RETENTION_S``)
``ss:o:{order_id}:ents``                    STR    the order's ``device|ip|card`` hashes, for its label to link them (``LABEL_TTL_S``)
``ss:i:{item}:c:{action}``                  ZSET   click ``event_id`` -> event ts (24 h kept), once the item has more than INLINE_WINDOW_MAX
                                                   of that action on one UTC day (until then: its field in the bucket's day hash)
``ss:g:iw:{i.n}:{day}``                     HASH   ``{action letter}{item}`` -> ``event_id<TAB>s into the day<TAB>...``: bucket n's items' clicks of UTC day
                                                   ``day`` while few (``S``: moved to the item's ``c:{action}``); deleted two days later
``ss:i:{item}:sales``                       ZSET   ``{order_id}|{quantity}`` -> event ts (7 d kept)
``ss:i:{item}:catalog``                     HASH   price, cost, stock, ts, ref_price, price_changed_at, priced_at
``ss:i:{item}:revenue``                     ZSET   ``{order_id}|{revenue}`` -> event ts (7 d kept): the item's sales value per order
``ss:i:{item}:bandit``                      HASH   the item's pricing bandit (sealed pickle: features/sealing.py) and decision period (scorers/pricing_bandit.py)
``ss:cv:{item}``                            ZSET   co-visited item -> raw decayed weight (COVIS_KEEP strongest kept; below), and
                                                   the item itself -> minus the epoch of the raw weights (event ts, Unix s)
``ss:rec:{h}``                              STR    JSON recommendations (``REC_TTL_S``; the user's tag)
``ss:rec:{h}:items``                        HASH   recommended item -> 1 if from a cold-start list (``REC_TTL_S``)
``ss:o:{order_id}``                         STR    a scored order's learn record (JSON) until its label (``LABEL_TTL_S``)
``ss:v:{order_id}``                         STR    the order's verdict as published, so a redelivered order gets the same one (``VERDICT_TTL_S``)
``ss:l:{order_id}``                         STR    an early label (``1`` fraud, ``0`` legitimate) that came before the order's verdict (``LABEL_TTL_S``)
``ss:l:{order_id}:at``                      STR    arrival ts of a fraud label that came before its order (``LABEL_TTL_S``)
``ss:g:popular:{i.n}``                      ZSET   item id -> views of bucket n's items (once per event): the ``REC_POPULAR_KEEP`` most viewed, counted
                                                   with Space-Saving (a newcomer to a full shard takes the weakest's place and count: features.lua)
``ss:g:viewed:{i.n}``                       HLL    bucket n's distinct viewed items (the coverage denominator: known_items)
``ss:g:funnel:{u.n}``                       HASH   ``{from}>{to}`` -> transitions of bucket n's users (once per event)
``ss:g:funnel``                             HASH   the sum of the funnel shards, what checkout reads (folded every few seconds; no TTL)
``ss:g:off:{u.n}``, ``ss:g:off:{i.n}``      HASH   ``<topic>:<partition>`` (``cv|...`` for co-visitation) -> newest Kafka offset applied to the bucket
``ss:g:pending:{o.n}``                      ZSET   order id -> event ts of bucket n's orders with a learn record (no TTL: a member leaves with its label or when learned as legitimate after silence)
``ss:g:ckpt:{name}:{version}``              STR    an online model's checkpoint (sealed pickle: features/sealing.py; no TTL; the ``ONLINE_CHECKPOINTS_KEPT`` newest), with ``:seq`` and ``:latest``
``ss:cat:{category}:trend``                 ZSET   item id -> raw decayed views of the category's items (once per event; the ``REC_TREND_KEEP`` strongest kept), and
                                                   ``""`` -> minus the epoch of the raw weights (decay: ``REC_TREND_HALF_LIFE_S``, as co-visitation)
``ss:g:trend:{cat.n}``                      ZSET   item id -> raw decayed views of the items viewed in bucket n's categories (once per event; the TREND_SHARD_KEEP strongest), ``""`` -> minus the epoch
``ss:g:trend-seen:{cat.n}``                 ZSET   click ``event_id`` -> event ts of bucket n's views counted without a Kafka position (their deduplication; 24 h kept)
``ss:g:off:{cat.n}``                        HASH   ``<topic>:<partition>`` -> newest Kafka offset applied to the category bucket's trends
==========================================  =====  ===================================================

Co-visitation (``REC_ONLINE_BLEND=on``): each first-delivered view of item b by a user adds
1/d both ways between b and the user's d-th previous distinct view (d <= 5, views of the last
30 min of event time, from the ``r{item}`` fields of ``ss:u:{h}:state``). A weight added at ts is stored as
w * 2^((ts - epoch) / ``REC_COVIS_HALF_LIFE_S``), so its value at read time t is
raw * 2^((epoch - t) / half-life) (:func:`decay_factor`): a time-decayed count, with one
epoch per item, moved to the newest ts (raw weights rescaled) once 32 half-lives old. The pairs leave
CLICKS_USERS and are added by COVIS_ADD in a round of their own, a batch's follow-up that a worker runs while
its next batch's calls run (:mod:`streams.runtime`). A view redelivered after a crash gets its pairs computed
again from the user's ``r`` fields as they are then, which may already hold views of the batches after it:
a pair whose earlier item the user viewed again since is lost. The crash test's parity leaves ``ss:cv:*`` out.

Category trends (``REC_COLD_TRENDS=on``; the cold-start lists of :mod:`scorers.recommender`): each
first-delivered view adds 1 to its item in ``ss:cat:{category}:trend`` and in its category bucket's
global shard ``ss:g:trend:{cat.n}`` (a view without a category: the shard of its item's bucket only),
stored as 2^((ts - epoch) / ``REC_TREND_HALF_LIFE_S``) against the key's epoch (the member ``""``,
rank 0; rescaled past TREND_RESCALE half-lives), the strongest few kept. A view counts once: by its
Kafka position in ``ss:g:off:{cat.n}``, or without one by its event id in ``ss:g:trend-seen:{cat.n}``
(CATEGORY_TRENDS_ADD, one call per category bucket, a round trip after the clicks' own). A newcomer
enters a full category once its decayed weight passes the weakest kept one (a view weighs 2x more
per half-life). Feeding one store both from Kafka and from files would count a view once per mode.

Invariants:

* **Idempotent writes, no key per event.** Windowed members are keyed by the event's own id, so
  applying an event twice (redelivery after a crash or a rebalance: offsets are committed after the
  writes) changes nothing. The counts that are not idempotent by nature (popularity, funnel
  transitions, category counts, co-visitation) count an event once: a clicks bucket keeps the
  newest Kafka offset it applied per partition (``ss:g:off``), and without a position (a replay
  from files) the reply of the event's own ``ZADD`` says whether it is new (:mod:`features.lua`).
  Holds on Apache Kafka and on the local broker alike, with no Kafka transactions.
* **One slot per call.** Every script call declares its keys, all of one bucket's tag, so the
  same calls run on a standalone Redis and on a Redis Cluster (:mod:`features.client`).
* **No shared keys.** Ids are escaped in every key (:mod:`features.keys`): an order called
  ``pending`` or an item ``x:t`` has keys of its own.
* **Point in time.** A read for an event at ``t`` counts members with score in
  ``[t - W, t)``: events at or after ``t`` are never seen, whatever arrived first. The
  user HyperLogLogs cover the 24 full hours before ``t``'s hour for the same reason.
  Funnel state, category counts and popularity are "as of now" (documented per feature); the
  funnel transitions checkout reads as of the last fold.
* **One round trip.** A batch is one pipeline of Lua calls (:mod:`features.lua`), each
  atomic and covering up to ``SCRIPT_CHUNK`` events of one bucket; within a call each order's
  reads run before its writes, in event order, so the stream, replays and offline snapshots
  compute identical values. A click batch goes as a few concurrent pipelines of disjoint buckets
  (:meth:`FeaturePlans.click_waves`): no key is in two of them, so their order does not matter.
* **Bounded.** Windowed sets are trimmed to their longest window on every write; a member can
  outlive its trim only outside every read window. Recent items, category counts, popularity
  shards (Space-Saving) and co-visitation keep their largest few. An item bucket's day hash holds a
  field per item clicked that day (items / 64 of them: a shop with 10 million items clicked a day has
  ~156,000 fields, ~10 MB, per day hash) and is deleted (``UNLINK``: freed in the background) once the
  bucket's clicks are two UTC days past it. Long-horizon sets (``lusers``, ``lorders``,
  ``fraud``) keep their ``LIFETIME_CAP`` earliest members (so a read "before t" is exact up to
  the cap, ~2.7 KB per entity at the cap, see tests/test_lifetime.py) and live
  ``LIFETIME_RETENTION_S`` after the entity's last write, both from the registry.
* **Labels link from their arrival.** A fraud label marks its order's device / IP / card with the
  label's own ts, so an order sees the link only when the label arrived before it.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any, Iterator, Sequence

import orjson

from features.definitions import (DAY, FRAUD_VECTOR, HOUR, LIFETIME_CAP, MINUTE, ORDER_FEATURES, PRICING_VECTOR,
                                  REGISTRY, lifetime_retention_s)
from features.keys import FeatureKeys, bucket_of_tag  # FeatureKeys: the key builder, imported from here too
from streamscore.events import CatalogItem, Click, Order

RECENT_ITEMS = 50
# A user's clicks of one action stay inline in the user's state hash ('e' fields) while at most this
# many; more move into the action's sorted set (features.lua CLICKS_USERS): most users click a few times.
INLINE_WINDOW_MAX = 8
ACTION_LETTER = {"view": "v", "add_to_cart": "a", "remove_from_cart": "r", "purchase": "p"}  # 'e' field prefixes
CATS_KEEP = 32  # category counts kept per user (the largest); the views with a category are counted apart
USER_CLICK_WINDOWS_S = tuple(REGISTRY[f"user_views_{w}"].window_s for w in ("5m", "1h", "24h"))
CLICK_RETENTION_S = max(f.window_s for f in REGISTRY.values() if f.updated_by == "clicks" and f.window_s)
ITEM_SHORT_WINDOW_S = REGISTRY["item_views_1h"].window_s
ITEM_DAY_WINDOW_S = REGISTRY["item_views_24h"].window_s
SALES_RETENTION_S = REGISTRY["log1p_units_7d"].window_s
ORDER_RETENTION_S = REGISTRY["user_orders_30d"].window_s
ENTITY_USERS_WINDOW_S = REGISTRY["device_users_30d"].window_s
ENTITY_ORDER_WINDOWS_S = tuple(REGISTRY[f"device_orders_{w}"].window_s for w in ("10m", "1h", "24h"))
USER_HLL_HOURS = REGISTRY["user_distinct_devices_24h"].window_s // HOUR
LIFETIME_RETENTION_S = lifetime_retention_s()
assert ENTITY_ORDER_WINDOWS_S == (10 * MINUTE, HOUR, DAY) and ORDER_RETENTION_S == 30 * DAY
assert all(REGISTRY[f"user_{n}_{w}"].window_s == s for n in ("carts", "purchases")
           for w, s in zip(("5m", "1h", "24h"), USER_CLICK_WINDOWS_S))
assert CLICK_RETENTION_S >= max(USER_CLICK_WINDOWS_S + (ITEM_DAY_WINDOW_S,))
# items' inline clicks: a read looks in its UTC day's hash and the day before's, and a day hash goes two days on
assert CLICK_RETENTION_S <= DAY

COVIS_KEEP = 100  # neighbours kept per item (the strongest by raw weight)
COVIS_WINDOW = 5  # a view pairs with up to this many previous distinct views; reads use this many history items
COVIS_GAP_S = 30 * 60  # ... of at most this much earlier event time (the sessions' gap)
COVIS_RESCALE = 32  # half-lives after which an item's raw weights move to a new epoch
COVIS_READ = 50  # neighbours read per history item
SCRIPT_CHUNK = 100  # events per script call (a call blocks its server while it runs)
TREND_SHARD_KEEP = 127  # items kept per global trending shard (ss:g:trend:{cat.n}): BUCKETS x this in all; with
# the epoch member a shard holds <= 128 entries, Redis's compact (listpack) encoding: ~20 bytes an item, not ~80
TREND_RESCALE = 32  # half-lives after which a trend key's raw weights move to a new epoch

Op = tuple  # a Redis command: (name, *args), or ("SCRIPT", name, keys, argv)
Position = tuple  # (field '<topic>:<partition>', offset) of an event read from Kafka
# one part of a click batch (FeaturePlans.click_waves): its calls, and (rank, users) of each of its user calls
ClickWave = tuple[list[Op], list[tuple[int, list[str]]]]


def decay_factor(epoch: float, ts: float, half_life_s: float) -> float:
    """Multiplier turning a raw stored co-visitation weight (relative to its item's ``epoch``, Unix
    seconds) into its value at event time ``ts``; ``half_life_s`` <= 0 means no decay.

    >>> decay_factor(1000.0, 4600.0, 3600.0)
    0.5
    >>> decay_factor(1000.0, 4600.0, 0)
    1.0
    """
    return 2.0 ** ((epoch - ts) / half_life_s) if half_life_s > 0 else 1.0


def _hour_features(ts: float) -> tuple[float, float]:
    hour = datetime.fromtimestamp(ts, tz=timezone.utc)
    angle = 2 * math.pi * (hour.hour + hour.minute / 60) / 24
    return math.sin(angle), math.cos(angle)


def _month_features(ts: float) -> tuple[float, float]:
    month = datetime.fromtimestamp(ts, tz=timezone.utc).month
    angle = 2 * math.pi * (month - 1) / 12
    return math.sin(angle), math.cos(angle)


def _score_pairs(reply: Sequence[Any]) -> list[tuple[bytes, float]]:
    """(member, score) pairs of a WITHSCORES reply, flat (from scripts) or already paired."""
    if reply and isinstance(reply[0], (list, tuple)):
        return [(m, float(sc)) for m, sc in reply]
    return [(m, float(sc)) for m, sc in zip(reply[::2], reply[1::2])]


def _pairs_dict(reply: Sequence[Any]) -> dict[str, float]:
    """A flat HGETALL-style reply (field, value, ...) or a dict, as {str: float}."""
    if isinstance(reply, dict):
        items = reply.items()
    else:
        items = zip(reply[::2], reply[1::2])
    return {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in items}


def _entities(order: Order) -> list[tuple[str, str | None]]:
    return [("device", order.device_id), ("ip", order.ip), ("card", order.payment_fingerprint)]


def utc_day(ts: float) -> int:
    """The UTC day of an event ts (Unix seconds): ``floor(ts / 86400)``, the day hashes' number.

    >>> utc_day(1511658000.0), utc_day(86399.9), utc_day(86400.0)
    (17496, 0, 1)
    """
    return int(ts // DAY)


def ts_text(ts: float) -> str:
    """An event ts (Unix seconds) as script text: whole seconds without the ``.0`` (a Redis hash keeps an
    integer string as a 1-9 byte integer, ``1511658033.0`` as 12 bytes of text), else ``repr`` (exact).

    >>> ts_text(1511658033.0), ts_text(1511658033.25)
    ('1511658033', '1511658033.25')
    """
    return str(int(ts)) if ts.is_integer() else repr(ts)


def _json(rows: list) -> bytes:
    """Rows as one script argument (JSON, decoded by the script's ``cjson``): raw UTF-8, compact, the bytes
    ``json.dumps(rows, ensure_ascii=False, separators=(",", ":"))`` makes, by orjson (17x faster a row).
    The rows hold strings and integers (a float, such as a ts, goes as text): no NaN can reach them.

    >>> _json([[1, "tb:1", "café"], []])
    b'[[1,"tb:1","caf\xc3\xa9"],[]]'
    """
    return orjson.dumps(rows)


def _groups(tags: Sequence[str], chunk: int = SCRIPT_CHUNK) -> list[tuple[str, list[int]]]:
    """Indices grouped by tag (first appearance order; in order within a group), each group cut
    into chunks of at most ``chunk``: one script call each.

    >>> _groups(["a", "b", "a", "a"], chunk=2)
    [('a', [0, 2]), ('a', [3]), ('b', [1])]
    """
    by: dict[str, list[int]] = {}
    for n, t in enumerate(tags):
        by.setdefault(t, []).append(n)
    return [(t, idx[i:i + chunk]) for t, idx in by.items() for i in range(0, len(idx), chunk)]


def _distinct(values) -> tuple[list[str], list[int]]:
    """The distinct values in first-appearance order, and each value's number (0-based) among them.

    >>> _distinct(["b", "a", "b"])
    (['b', 'a'], [0, 1, 0])
    """
    ids: dict[str, int] = {}
    nums = [ids.setdefault(v, len(ids)) for v in values]
    return list(ids), nums


FUNNEL_STATES = ("start", "browse", "cart", "purchase")


class FeaturePlans:
    """Pure functions from events to Redis calls and from replies to feature values.

    Nothing here does I/O: :class:`features.client.FeatureClient` executes the plans (the
    stream, the HTTP service and the offline snapshots all go through it), which is what
    keeps online and offline equal. ``("SCRIPT", name, keys, argv)`` ops run the Lua scripts
    of :mod:`features.lua`, one hash slot each; other ops are plain commands.
    """

    def __init__(self, keys: FeatureKeys, ttl_s: int, covis: bool = False, covis_half_life_s: float = 0.0,
                 label_ttl_s: int = 60 * DAY, popular_keep: int = 128):
        self.keys = keys
        self.popular_keep = popular_keep  # items counted per popularity shard (REC_POPULAR_KEEP)
        self.label_ttl_s = label_ttl_s  # how long an order's entities wait for its label (ss:o:{id}:ents)
        self.ttl_s = ttl_s
        self.covis = covis  # count co-visitation (``ss:cv:*``) from the clicks
        self.covis_half_life_s = covis_half_life_s

    # -- clicks -------------------------------------------------------------------------
    def click_waves(self, clicks: Sequence[Click], recent_return: int, positions: Sequence[Position] | None = None,
                    trends: tuple[float, int] | None = None, waves: int = 1) -> Iterator[ClickWave]:
        """A batch's calls in ``waves`` parts, built one part at a time (a generator): the CLICKS_USERS calls
        then the CLICKS_ITEMS calls, and with ``trends`` (half-life s, keep) the CATEGORY_TRENDS_ADD calls,
        of the buckets ``n`` with ``n % waves == w``; with the rank of each user call among all the batch's
        user calls (their order with ``waves=1``) and its users (raw ids). Co-visitation
        pairs go on in that rank order whatever the parts, so the float sums they make do not depend on
        how buckets fall into parts.

        Parts touch disjoint keys (a bucket's keys all carry its tag, and each bucket of each family is in one
        part), so they may run concurrently, in any order: the client sends a part while it builds the next
        (:meth:`features.client.FeatureClient.apply_clicks`). Within a part, a bucket's calls keep event order.
        """
        k = self.keys
        pos = positions or [("", 0)] * len(clicks)
        # each entity's keys once per batch (most of a first delivery's ids are new to any cache):
        # raw user id -> (pseudonym, tag, state, recommended items, click window prefix); item -> (tag, prefix)
        users: dict[str, tuple[str, str, str, str, str]] = {}
        items: dict[str, tuple[str, str]] = {}
        ukeys, ikeys = [], []
        for c in clicks:
            u = users.get(c.user_id)
            if u is None:
                uh = k.user(c.user_id)
                u = users[c.user_id] = (uh, *k.user_click_keys(uh))
            ukeys.append(u)
            i = items.get(c.item_id)
            if i is None:
                i = items[c.item_id] = k.item_click_keys(c.item_id)
            ikeys.append(i)
        tss = [ts_text(c.ts) for c in clicks]  # once per click, for the users' and the trends' calls
        parts: list[list[tuple[str, str, list[int], int]]] = [[] for _ in range(waves)]
        for family, tags in (("u", [u[1] for u in ukeys]), ("i", [i[0] for i in ikeys])):
            for rank, (tag, idx) in enumerate(_groups(tags)):
                parts[bucket_of_tag(tag) % waves].append((family, tag, idx, rank))
        if trends is not None:
            views = [n for n, c in enumerate(clicks) if c.action == "view"]
            for tag, sub in _groups([k.trend_tag(clicks[n].category_id, clicks[n].item_id) for n in views]):
                parts[bucket_of_tag(tag) % waves].append(("cat", tag, [views[j] for j in sub], 0))
        for part in parts:
            ops: list[Op] = []
            users_of_call: list[tuple[int, list[str]]] = []
            for family, tag, idx, rank in part:
                if family == "u":
                    ops.append(self._users_call(clicks, ukeys, pos, tag, idx, recent_return, tss))
                    users_of_call.append((rank, list(dict.fromkeys(clicks[n].user_id for n in idx))))
                elif family == "i":
                    ops.append(self._items_call(clicks, ikeys, pos, tag, idx))
                else:
                    ops.append(self._trends_call(clicks, pos, tag, idx, *trends, tss))
            yield ops, users_of_call

    def _users_call(self, clicks: Sequence[Click], ukeys: Sequence[tuple], pos: Sequence[Position], tag: str,
                    idx: Sequence[int], recent_return: int, tss: Sequence[str]) -> Op:
        """The CLICKS_USERS call of the clicks ``idx`` (of one user bucket ``tag``; users in first-click order;
        ``ukeys`` each click's user keys, as :meth:`click_waves` builds them; ``tss`` the clicks' ts as
        :func:`ts_text`)."""
        k = self.keys
        keys = [k.positions(tag), k.funnel_shard(tag)]
        user_num: dict[str, int] = {}
        nums = []
        for n in idx:
            uk = ukeys[n]
            u = user_num.get(uk[0])
            if u is None:
                u = user_num[uk[0]] = len(user_num)
                keys += [uk[2], uk[3]]
            nums.append(u)
        windows, wnums = _distinct(ukeys[n][4] + clicks[n].action for n in idx)
        first = len(keys) + 1  # KEYS index (1-based) of the first window
        keys += windows
        argv: list = [self.ttl_s, CLICK_RETENTION_S, RECENT_ITEMS, recent_return, CATS_KEEP,
                      "1" if self.covis else "0", COVIS_WINDOW, COVIS_GAP_S, len(user_num), INLINE_WINDOW_MAX]
        argv.append(_json([[u, first + w, clicks[n].event_id, clicks[n].item_id, ACTION_LETTER[clicks[n].action],
                            clicks[n].action, tss[n], clicks[n].category_id or "", pos[n][0],
                            str(pos[n][1])]
                           for n, u, w in zip(idx, nums, wnums)]))
        return ("SCRIPT", "clicks_users", keys, argv)

    def _items_call(self, clicks: Sequence[Click], ikeys: Sequence[tuple[str, str]], pos: Sequence[Position],
                    tag: str, idx: Sequence[int]) -> Op:
        """The CLICKS_ITEMS call of the clicks ``idx`` (of one item bucket ``tag``; ``ikeys`` each click's
        item keys, as :meth:`click_waves` builds them)."""
        k = self.keys
        day_of = [int(clicks[n].ts // DAY) for n in idx]  # utc_day, inline: once per click
        days, dnums = _distinct(day_of)
        windows, wnums = _distinct(ikeys[n][1] + clicks[n].action for n in idx)
        keys = [k.positions(tag), k.popular_shard(tag), k.viewed_shard(tag), k.item_day_clicks(tag, max(days) - 2),
                *(k.item_day_clicks(tag, d) for d in days)]
        first = len(keys) + 1  # KEYS index (1-based) of the first sorted set
        keys += windows
        argv: list = [self.ttl_s, CLICK_RETENTION_S, self.popular_keep, INLINE_WINDOW_MAX]
        # ts - its day's start is exact (Sterbenz: the two are within a factor 2), and so is start + that
        argv.append(_json([[first + w, 5 + d, clicks[n].event_id, clicks[n].item_id, ACTION_LETTER[clicks[n].action],
                            clicks[n].action, ts_text(clicks[n].ts - day * DAY), *pos[n]]
                           for n, w, d, day in zip(idx, wnums, dnums, day_of)]))
        argv.append(_json([d * DAY for d in days]))
        return ("SCRIPT", "clicks_items", keys, argv)

    def covis_add_scripts(self, pairs: Sequence[Sequence[str]]) -> list[Op]:
        """COVIS_ADD calls for ``(a, b, weight, ts, field, offset)`` pairs of strings (as CLICKS_USERS returns
        them), one per bucket of ``a`` (chunked), in order."""
        k = self.keys
        ops: list[Op] = []
        for tag, idx in _groups([k.tag("cv", p[0]) for p in pairs], chunk=4 * SCRIPT_CHUNK):
            items, nums = _distinct(pairs[n][0] for n in idx)
            keys = [k.positions(tag)] + [k.covis(i) for i in items]
            argv: list = [self.ttl_s, repr(float(self.covis_half_life_s)), COVIS_KEEP, COVIS_RESCALE]
            argv.append(_json([[i, *pairs[n]] for n, i in zip(idx, nums)]))
            ops.append(("SCRIPT", "covis_add", keys, argv))
        return ops

    def covis_scripts(self, item_ids: Sequence[str], n: int = COVIS_READ) -> tuple[list[Op], list[list[int]]]:
        """COVIS reads (one per item bucket chunk): each item's ``n`` strongest co-visited neighbours,
        raw, with its epoch; and the indices of ``item_ids`` each call answers."""
        k = self.keys
        groups = _groups([k.tag("cv", i) for i in item_ids])
        return ([("SCRIPT", "covis", [k.covis(item_ids[j]) for j in idx], [n, *(item_ids[j] for j in idx)])
                 for _, idx in groups], [idx for _, idx in groups])

    def covis_neighbours(self, item_ids: Sequence[str], reply: Sequence[Any], ts: float) -> dict[str, list[tuple[str, float]]]:
        """item -> [(neighbour, weight decayed to event time ``ts``)], strongest first; items
        without counts are left out."""
        out = {}
        for item, (epoch, flat) in zip(item_ids, reply):
            if flat:
                f = decay_factor(float(epoch), ts, self.covis_half_life_s)
                out[item] = [(m.decode(), float(w) * f) for m, w in zip(flat[::2], flat[1::2])]
        return out

    # -- category trends (cold start) ---------------------------------------------------------
    def category_trends_scripts(self, clicks: Sequence[Click], half_life_s: float, keep: int,
                                positions: Sequence[Position] | None = None) -> list[Op]:
        """CATEGORY_TRENDS_ADD calls (one per category bucket chunk) for the views of a batch: each view
        counts once (its position, or without one its event id in ``ss:g:trend-seen``) as 1, decayed
        with ``half_life_s`` (0 = none), in its category's ``ss:cat:{c}:trend`` (the ``keep`` strongest)
        and in its bucket's global trending shard (the TREND_SHARD_KEEP strongest). A view without a
        category counts in the global trending only, in its item's bucket (:meth:`FeatureKeys.trend_tag`)."""
        pos = positions or [("", 0)] * len(clicks)
        views = [n for n, c in enumerate(clicks) if c.action == "view"]
        tss = [ts_text(c.ts) for c in clicks]
        return [self._trends_call(clicks, pos, tag, [views[j] for j in sub], half_life_s, keep, tss)
                for tag, sub in _groups([self.keys.trend_tag(clicks[n].category_id, clicks[n].item_id) for n in views])]

    def _trends_call(self, clicks: Sequence[Click], pos: Sequence[Position], tag: str, idx: Sequence[int],
                     half_life_s: float, keep: int, tss: Sequence[str]) -> Op:
        """The CATEGORY_TRENDS_ADD call of the views ``idx`` (of one category bucket ``tag``)."""
        k = self.keys
        cats, nums = _distinct(clicks[n].category_id for n in idx if clicks[n].category_id is not None)
        it = iter(nums)
        rows = [[next(it) if clicks[n].category_id is not None else -1, clicks[n].event_id, clicks[n].item_id,
                 tss[n], *pos[n]] for n in idx]
        keys = [k.positions(tag), k.trend_shard(tag), k.trend_seen(tag), *(k.category_trend(c) for c in cats)]
        argv: list = [self.ttl_s, repr(float(half_life_s)), keep, TREND_SHARD_KEEP, TREND_RESCALE,
                      CLICK_RETENTION_S, _json(rows)]
        return ("SCRIPT", "category_trends_add", keys, argv)

    def trends_scripts(self, trend_keys: Sequence[str], n: int) -> tuple[list[Op], list[list[int]]]:
        """TRENDS reads (one per hash slot chunk) of decayed-count keys (``ss:cat:{c}:trend``,
        ``ss:g:trend:{cat.n}``): each key's ``n`` strongest members, raw, with its epoch; and the
        indices of ``trend_keys`` each call answers."""
        groups = _groups([key[key.index("{"):key.index("}") + 1] for key in trend_keys])
        return ([("SCRIPT", "trends", [trend_keys[j] for j in idx], [n]) for _, idx in groups],
                [idx for _, idx in groups])

    @staticmethod
    def decayed_rows(reply: Sequence[Any], ts: float, half_life_s: float) -> list[tuple[str, float]]:
        """One TRENDS reply ``(epoch, flat member/raw weight)`` as [(member, weight decayed to event time
        ``ts``)], strongest first (empty without counts).

        >>> FeaturePlans.decayed_rows([b"100", [b"a", b"4", b"b", b"2"]], 3700.0, 3600.0)
        [('a', 2.0), ('b', 1.0)]
        >>> FeaturePlans.decayed_rows([b"", []], 0.0, 3600.0)
        []
        """
        epoch, flat = reply
        if not flat:
            return []
        f = decay_factor(float(epoch), ts, half_life_s)
        return [((m.decode() if isinstance(m, bytes) else m), float(w) * f) for m, w in zip(flat[::2], flat[1::2])]

    def user_categories_op(self, user_id: str) -> Op:
        """HGETALL of the user's state hash (``ss:u:{h}:state``): its ``c{category}`` view counts."""
        return ("HGETALL", self.keys.user_state(self.keys.user(user_id)))

    @staticmethod
    def user_categories(reply: Any) -> list[tuple[str, float]]:
        """The user's category view counts from their state hash (fields ``c{category}``; ``s`` and ``n``
        are not categories), largest first, ties by category (as USER_CLICKS picks the top one).

        >>> FeaturePlans.user_categories({b"s": b"browse", b"n": b"5", b"cb": b"2", b"ca": b"2", b"cx:{1}": b"1"})
        [('a', 2.0), ('b', 2.0), ('x:{1}', 1.0)]
        """
        items = (reply or {}).items() if isinstance(reply, dict) or not reply else zip(reply[::2], reply[1::2])
        rows = [(f.decode()[1:], float(v)) for f, v in ((f if isinstance(f, bytes) else f.encode(), v) for f, v in items)
                if f[:1] == b"c"]
        return sorted(rows, key=lambda r: (-r[1], r[0]))

    def user_clicks_script(self, user_id: str, ts: float) -> Op:
        """USER_CLICKS: one user's click windows, recent items, funnel state and top category."""
        k, uh = self.keys, self.keys.user(user_id)
        keys = [k.user_clicks(uh, a) for a in ("view", "add_to_cart", "purchase")]
        keys.append(k.user_state(uh))
        return ("SCRIPT", "user_clicks", keys, [repr(ts), *USER_CLICK_WINDOWS_S])

    @staticmethod
    def user_click_features(reply: Sequence[Any], transitions: Any) -> dict[str, float]:
        """Click features of a user from the USER_CLICKS reply and the funnel transitions over all
        users (the folded ``ss:g:funnel``; see :data:`~features.definitions.USER_CLICK_FEATURES`)."""
        counts = [float(x) for x in reply[:9]]
        names = [f"user_{a}_{w}" for a in ("views", "carts", "purchases") for w in ("5m", "1h", "24h")]
        values = dict(zip(names, counts))
        values["user_recent_items"] = float(reply[9])
        state = reply[10].decode() if isinstance(reply[10], bytes) else str(reply[10])
        out_of_state = {k: v for k, v in _pairs_dict(transitions).items() if k.startswith(f"{state}>")}
        total = sum(out_of_state.values())
        values["funnel_state"] = float(FUNNEL_STATES.index(state)) if state in FUNNEL_STATES else 0.0
        values["funnel_purchase_prob"] = out_of_state.get(f"{state}>purchase", 0.0) / total if total else 0.0
        views, top = float(reply[11]), _score_pairs(reply[12])
        values["top_category_share"] = top[0][1] / views if views and top else 0.0
        return values

    # -- orders -------------------------------------------------------------------------
    def orders_scripts(self, orders: Sequence[Order], write: bool) -> tuple[list[Op], Any]:
        """The calls of a batch of orders: ORDERS_USERS per user bucket, ORDERS_ENTITIES per device /
        IP / card bucket (each order's reads, then (``write``) its writes, in event order), and with
        ``write`` ORDERS_META per order bucket and the items' sales (WINDOW_ADD per item bucket).
        Returns the ops and what :meth:`orders_replies` needs to put each order's reply together."""
        k = self.keys
        uhs = [k.user(o.user_id) for o in orders]
        ents = [[(kind, k.pseudo(kind, raw) if raw is not None else None) for kind, raw in _entities(o)]
                for o in orders]
        ops: list[Op] = []
        layout: list[tuple[str, list]] = []  # per op: what it answers
        for _, idx in _groups([k.tag("u", uh) for uh in uhs]):
            keys, argv = [], [self.ttl_s, "1" if write else "0", ORDER_RETENTION_S, USER_HLL_HOURS]
            for n in idx:
                o, uh = orders[n], uhs[n]
                hour = int(math.floor(o.ts / HOUR))
                keys.append(k.user_orders(uh))
                for kind in ("device", "ip", "card"):
                    keys += [k.user_hll(uh, kind, h) for h in range(hour - USER_HLL_HOURS, hour)]
                keys += [k.user_hll(uh, kind, hour) for kind in ("device", "ip", "card")]
                argv += [o.order_id, repr(o.amount), repr(o.ts), *(h or "" for _, h in ents[n])]
            ops.append(("SCRIPT", "orders_users", keys, argv))
            layout.append(("user", idx))
        for e, kind in enumerate(("device", "ip", "card")):
            have = [n for n in range(len(orders)) if ents[n][e][1] is not None]
            for _, sub in _groups([k.tag(kind, ents[n][e][1]) for n in have]):
                idx = [have[j] for j in sub]
                keys, argv = [], [self.ttl_s, "1" if write else "0", ENTITY_USERS_WINDOW_S, *ENTITY_ORDER_WINDOWS_S,
                                  ORDER_RETENTION_S, LIFETIME_RETENTION_S, LIFETIME_CAP]
                for n in idx:
                    h = ents[n][e][1]
                    keys += [k.entity_users(kind, h), k.entity_orders(kind, h),
                             *(k.entity_lifetime(kind, h, w) for w in ("lusers", "lorders", "fraud"))]
                    argv += [orders[n].order_id, uhs[n], repr(orders[n].ts)]
                ops.append(("SCRIPT", "orders_entities", keys, argv))
                layout.append((kind, idx))
        if write:
            for _, idx in _groups([k.tag("o", o.order_id) for o in orders]):
                keys, argv = [], [self.label_ttl_s]
                for n in idx:
                    keys += [k.order_entities(orders[n].order_id), k.early_fraud_at(orders[n].order_id)]
                    linked = [h or "" for _, h in ents[n]]
                    argv += [orders[n].order_id, "|".join(linked) if any(linked) else ""]
                ops.append(("SCRIPT", "orders_meta", keys, argv))
                layout.append(("meta", idx))
            sales = []
            for o in orders:
                quantities: dict[str, int] = {}
                for line in o.items:
                    quantities[line.item_id] = quantities.get(line.item_id, 0) + line.quantity
                sales += [(k.item_sales(item), o.ts, f"{o.order_id}|{qty}") for item, qty in quantities.items()]
            ops += self._window_adds(sales, SALES_RETENTION_S)
        return ops, (len(orders), layout, ents, [(o.order_id, o.ts) for o in orders])

    def orders_replies(self, plan: Any, replies: Sequence[Any]) -> tuple[list[list], list[tuple[str, str, float]]]:
        """Each order's reply in the layout :meth:`order_features` reads (user history, then for
        device, ip, card: users_30d and the three order counts, then the three HLL counts, then for
        device, ip, card: users ever, first order ts, orders ever, fraud links), and the fraud links
        to make now ``(kind, entity hash, order id, ts)`` for orders whose fraud label came first (from
        the later of the label's arrival and the order)."""
        n_orders, layout, ents, ids = plan
        user: list = [None] * n_orders
        ent: list = [[[0, 0, 0, 0, 0, "", 0, 0] for _ in range(3)] for _ in range(n_orders)]
        early: list = []
        kinds = {"device": 0, "ip": 1, "card": 2}
        for (what, idx), reply in zip(layout, replies):
            for n, r in zip(idx, reply):
                if what == "user":
                    user[n] = r
                elif what == "meta":
                    if r not in (b"", ""):
                        early.append((n, float(r)))
                else:
                    ent[n][kinds[what]] = r
        out = [[u[0], *(x for e in ent[n] for x in e[:4]), *u[1:4], *(x for e in ent[n] for x in e[4:])]
               for n, u in enumerate(user)]
        links = [(kind, h, ids[n][0], max(ids[n][1], at)) for n, at in early for kind, h in ents[n] if h is not None]
        return out, links

    def link_fraud_scripts(self, links: Sequence[tuple[str, str, str, float]]) -> list[Op]:
        """LINK_FRAUD calls for ``(kind, entity hash, order id, ts)`` links, one per entity bucket chunk."""
        k = self.keys
        ops: list[Op] = []
        for _, idx in _groups([k.tag(kind, h) for kind, h, _, _ in links]):
            keys = [k.entity_lifetime(links[n][0], links[n][1], "fraud") for n in idx]
            argv: list = [LIFETIME_RETENTION_S, LIFETIME_CAP]
            for n in idx:
                argv += [links[n][2], repr(float(links[n][3]))]
            ops.append(("SCRIPT", "link_fraud", keys, argv))
        return ops

    @staticmethod
    def order_features(order: Order, reply: Sequence[Any]) -> dict[str, float]:
        """Every order feature (the fraud vector and more) from one order's ORDERS reply."""
        ts = order.ts
        values = {f.name: f.default for f in ORDER_FEATURES}
        amounts_30d, n_1h, n_24h, amount_24h = [], 0, 0, 0.0
        for member, at in _score_pairs(reply[0]):
            amount = float(member.rsplit(b"|", 1)[1])
            amounts_30d.append(amount)
            if at >= ts - DAY:
                n_24h += 1
                amount_24h += amount
                if at >= ts - HOUR:
                    n_1h += 1
        values.update(user_orders_1h=n_1h, user_orders_24h=n_24h, user_orders_30d=len(amounts_30d),
                      user_amount_24h_log=math.log1p(amount_24h))
        if len(amounts_30d) >= 2:
            mean = sum(amounts_30d) / len(amounts_30d)
            std = math.sqrt(sum((a - mean) ** 2 for a in amounts_30d) / (len(amounts_30d) - 1))
            values["user_amount_zscore"] = (order.amount - mean) / std if std > 0 else 0.0
        for n, (kind, _) in enumerate(_entities(order)):
            users, o10m, o1h, o24h = (int(x) for x in reply[1 + 4 * n:5 + 4 * n])
            values.update({f"{kind}_users_30d": users, f"{kind}_orders_10m": o10m, f"{kind}_orders_1h": o1h,
                           f"{kind}_orders_24h": o24h})
        for n, kind in enumerate(("devices", "ips", "cards")):
            values[f"user_distinct_{kind}_24h"] = int(reply[13 + n])
        for n, (kind, _) in enumerate(_entities(order) if len(reply) >= 28 else ()):  # a shorter (empty) reply: defaults
            users, first, orders_ever, links = reply[16 + 4 * n:20 + 4 * n]
            first = first.decode() if isinstance(first, bytes) else first
            values.update({f"{kind}_users_ever": int(users), f"{kind}_orders_ever": int(orders_ever),
                           f"{kind}_fraud_linked": 1.0 if int(links) > 0 else 0.0,
                           f"{kind}_first_seen_age_log_s": math.log1p(max(0.0, ts - float(first))) if first else 0.0})
        values["amount_log"] = math.log1p(order.amount)
        if order.account_created_at is not None:
            values["account_age_log_s"] = math.log1p(max(0.0, ts - order.account_created_at))
            values["account_age_missing"] = 0.0
        values["hour_sin"], values["hour_cos"] = _hour_features(ts)
        values["items_count"] = float(len(order.items))
        values["device_missing"] = 0.0 if order.device_id is not None else 1.0
        values["ip_missing"] = 0.0 if order.ip is not None else 1.0
        return {k: float(v) for k, v in values.items()}

    @staticmethod
    def fraud_vector(features: dict[str, float]) -> list[float]:
        return [features[name] for name in FRAUD_VECTOR]

    # -- verdicts, learn records, labels (one order's steps are atomic: one script call) ----------

    # -- verdicts, learn records, labels (one order's steps are atomic: one script call) ----------
    def record_verdicts_scripts(self, entries: Sequence[tuple[str, bytes, dict, float]], verdict_ttl_s: int,
                                label_ttl_s: int) -> tuple[list[Op], list[list[int]]]:
        """RECORD_VERDICTS calls (one per order bucket chunk) for ``(order_id, verdict, learn record,
        event ts)`` entries, and the entry indices each answers."""
        k = self.keys
        groups = _groups([k.tag("o", e[0]) for e in entries])
        ops: list[Op] = []
        for tag, idx in groups:
            keys, args = [k.pending_shard(tag)], [verdict_ttl_s, label_ttl_s]
            for n in idx:
                order_id, verdict, record, ts = entries[n]
                keys += [k.verdict(order_id), k.early_label(order_id), k.order_record(order_id)]
                args += [order_id, verdict, json.dumps(record), repr(float(ts))]
            ops.append(("SCRIPT", "record_verdicts", keys, args))
        return ops, [idx for _, idx in groups]

    @staticmethod
    def recorded_verdicts(entries: Sequence[tuple[str, bytes, dict, float]],
                          reply: Sequence[Any]) -> list[tuple[bytes, bool | None]]:
        """Per entry: ``(the verdict already recorded, None)`` when there was one (nothing stored);
        ``(verdict, label)`` when an early label was waiting (taken; no learn record stored);
        otherwise ``(verdict, None)`` (learn record stored, order pending)."""
        out: list[tuple[bytes, bool | None]] = []
        for (_, verdict, _, _), (status, value) in zip(entries, reply):
            status = int(status)
            if status == 0:
                out.append((value, None))
            elif status == 2:
                out.append((verdict, value in (b"1", "1")))
            else:
                out.append((verdict, None))
        return out

    def join_labels_scripts(self, labels: Sequence[tuple[str, bool, float]],
                            label_ttl_s: int) -> tuple[list[Op], list[list[int]]]:
        """JOIN_LABELS calls (one per order bucket chunk) for ``(order_id, is_fraud, label ts)``, and the
        label indices each answers."""
        k = self.keys
        groups = _groups([k.tag("o", lab[0]) for lab in labels])
        ops: list[Op] = []
        for tag, idx in groups:
            keys, args = [k.pending_shard(tag)], [label_ttl_s]
            for n in idx:
                oid, is_fraud, at = labels[n]
                keys += [k.order_record(oid), k.early_label(oid), k.order_entities(oid), k.early_fraud_at(oid)]
                args += [oid, "1" if is_fraud else "0", repr(float(at))]
            ops.append(("SCRIPT", "join_labels", keys, args))
        return ops, [idx for _, idx in groups]

    @staticmethod
    def joined(labels: Sequence[tuple[str, bool, float]], reply: Sequence[Any]) -> tuple[dict | None, list]:
        """One label's learn record (None: none stored, the label was kept as an early label) and the
        fraud links it makes ``(kind, entity hash, order id, label ts)``."""
        (oid, _, at), (rec, ents) = labels, reply
        ents = ents.decode() if isinstance(ents, bytes) else ents
        links = [(kind, h, oid, at) for kind, h in zip(("device", "ip", "card"), ents.split("|")) if h] if ents else []
        return (json.loads(rec) if rec else None), links

    def store_recs_scripts(self, recs: dict[str, dict], ttl_s: int) -> list[Op]:
        """STORE_RECS calls (one per user bucket chunk): pseudonymised user -> payload (``items``, ``cold_start``)."""
        k, users = self.keys, list(recs)
        ops: list[Op] = []
        for _, idx in _groups([k.tag("rec", uh) for uh in users]):
            keys, args = [], [ttl_s]
            for n in idx:
                uh, p = users[n], recs[users[n]]
                keys += [k.recommendations(uh), k.recommended_items(uh)]
                args += [json.dumps(p), "1" if p["cold_start"] else "0", len(p["items"]), *p["items"]]
            ops.append(("SCRIPT", "store_recs", keys, args))
        return ops

    # -- catalog & pricing ------------------------------------------------------------------
    def catalog_scripts(self, items: Sequence[CatalogItem]) -> list[Op]:
        """CATALOG calls (one per item bucket chunk): price, cost, stock and ts of each item, ``ref_price``
        = the first price seen. Monotonic in event time: an entry older than the stored one changes
        nothing, and its price is taken only if newer than the pricing loop's last change
        (``price_changed_at``)."""
        k = self.keys
        ops: list[Op] = []
        for _, idx in _groups([k.tag("i", it.item_id) for it in items]):
            args: list[Any] = [self.ttl_s]
            for n in idx:
                it = items[n]
                args += [repr(it.price), repr(it.cost), it.stock, repr(it.ts)]
            ops.append(("SCRIPT", "catalog", [k.item_catalog(items[n].item_id) for n in idx], args))
        return ops

    def _window_adds(self, entries: Sequence[tuple[str, float, str]], retention_s: int) -> list[Op]:
        """WINDOW_ADD calls for ``(key, event ts, member)`` entries, one per hash slot chunk (keys of one
        tag share a slot)."""
        ops: list[Op] = []
        for _, idx in _groups([e[0][e[0].index("{"):e[0].index("}") + 1] for e in entries]):
            args: list[Any] = [self.ttl_s, retention_s]
            for n in idx:
                args += [repr(entries[n][1]), entries[n][2]]
            ops.append(("SCRIPT", "window_add", [entries[n][0] for n in idx], args))
        return ops

    def revenue_scripts(self, orders: Sequence[Order]) -> list[Op]:
        """WINDOW_ADD calls: each order's sales value per item (price x quantity over its lines) as a
        member ``{order_id}|{revenue}``, so re-applying an order adds nothing."""
        entries = []
        for order in orders:
            per_item: dict[str, float] = {}
            for line in order.items:
                per_item[line.item_id] = per_item.get(line.item_id, 0.0) + line.price * line.quantity
            entries += [(self.keys.item_revenue(item_id), order.ts, f"{order.order_id}|{revenue:.4f}")
                        for item_id, revenue in per_item.items()]
        return self._window_adds(entries, SALES_RETENTION_S)

    @staticmethod
    def revenue_sum(members: Sequence[bytes]) -> float:
        """Total of ``{order_id}|{revenue}`` members."""
        return sum(float(m.rsplit(b"|", 1)[1]) for m in members)

    def items_scripts(self, item_ids: Sequence[str], ts: float) -> tuple[list[Op], list[list[int]]]:
        """ITEMS reads (one per item bucket chunk): each item's click windows, catalog entry and sales
        in the sales window; and the indices of ``item_ids`` each call answers."""
        k = self.keys
        groups = _groups([k.tag("i", i) for i in item_ids])
        day = utc_day(ts)
        ops = [("SCRIPT", "items", [k.item_day_clicks(tag, day), k.item_day_clicks(tag, day - 1)] + [x for n in idx for x in (
            k.item_clicks(item_ids[n], "view"), k.item_clicks(item_ids[n], "add_to_cart"),
            k.item_clicks(item_ids[n], "purchase"), k.item_catalog(item_ids[n]), k.item_sales(item_ids[n]))],
                [repr(ts), ITEM_SHORT_WINDOW_S, ITEM_DAY_WINDOW_S, SALES_RETENTION_S, day * DAY, (day - 1) * DAY,
                 *(item_ids[n] for n in idx)])
               for tag, idx in groups]
        return ops, [idx for _, idx in groups]

    @staticmethod
    def item_features(reply: Sequence[Any]) -> dict[str, float]:
        """Item features (see :data:`~features.definitions.ITEM_FEATURES`) from one item's ITEMS reply."""
        views_1h, views_24h, carts, purchases = (float(x) for x in reply[:4])
        catalog = _pairs_dict(reply[4])
        return {"item_views_1h": views_1h, "item_views_24h": views_24h, "item_carts_24h": carts,
                "item_purchases_24h": purchases, "item_conversion_24h": purchases / views_24h if views_24h else 0.0,
                **{k: catalog[k] for k in ("price", "cost", "stock") if k in catalog}}

    @staticmethod
    def pricing_state(ts: float, reply: Sequence[Any]) -> dict[str, float] | None:
        """Catalog state plus the pricing vector's values; None when the item has no catalog entry."""
        catalog = _pairs_dict(reply[4])
        if "price" not in catalog:
            return None
        sales = reply[5]
        units = sum(int(m.rsplit(b"|", 1)[1]) for m in sales)
        month_sin, month_cos = _month_features(ts)
        catalog.update(log_price=math.log(catalog["price"]), log1p_units_7d=math.log1p(units),
                       log1p_orders_7d=math.log1p(len(sales)), month_sin=month_sin, month_cos=month_cos)
        return catalog

    @staticmethod
    def pricing_vector(state: dict[str, float]) -> list[float]:
        return [state[name] for name in PRICING_VECTOR]
