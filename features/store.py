"""Online feature store in Redis: key layout, idempotent point-in-time plans.

Key layout (:mod:`features.keys` builds every name): ``ss:<kind>:<id>[:<suffix>]``, where the id
is escaped (:func:`features.keys.esc`: every byte outside ``[A-Za-z0-9._-]`` as ``%XX``), so no
id, whatever characters it holds, can reach into another key; keys that belong to no id sit
under the reserved kind ``g``. Below, ``{h}`` is a pseudonymised id (:mod:`features.privacy`,
hex: unchanged by the escape) and ``{item}``, ``{event_id}``, ``{order_id}``, ``{name}`` are
escaped ids; members, fields and values hold ids raw (``tb:123``). Every key has a TTL
(``FEATURE_TTL_S``, refreshed on write) unless noted.

==========================================  =====  ===================================================
key                                         type   content
==========================================  =====  ===================================================
``ss:u:{h}:c:{action}``                     ZSET   click ``event_id`` -> event ts (24 h kept)
``ss:u:{h}:recent``                         ZSET   item id -> newest view ts (50 newest kept)
``ss:u:{h}:cats``                           ZSET   category -> views (counted once per event id)
``ss:u:{h}:funnel``                         STR    the user's funnel state (browse, cart, purchase)
``ss:u:{h}:orders``                         ZSET   ``{order_id}|{amount}`` -> event ts (30 d kept)
``ss:u:{h}:hll:{device|ip|card}:{hour}``    HLL    the user's devices / IPs / cards in that UTC hour (25 h TTL)
``ss:{device|ip|card}:{h}:users``           ZSET   user ``{h}`` -> first-seen ts (30 d kept)
``ss:{device|ip|card}:{h}:orders``          ZSET   order id -> event ts (30 d kept)
``ss:{device|ip|card}:{h}:lusers``          ZSET   user ``{h}`` -> first-seen ts, all history: the ``LIFETIME_CAP`` earliest kept (TTL ``LIFETIME_RETENTION_S``)
``ss:{device|ip|card}:{h}:lorders``         ZSET   order id -> event ts, all history: the ``LIFETIME_CAP`` earliest kept (TTL ``LIFETIME_RETENTION_S``)
``ss:{device|ip|card}:{h}:fraud``           ZSET   order id -> arrival ts of its fraud label: the ``LIFETIME_CAP`` earliest kept (TTL ``LIFETIME_RETENTION_S``)
``ss:o:{order_id}:ents``                    STR    the order's ``device|ip|card`` hashes, for its label to link them (``LABEL_TTL_S``)
``ss:i:{item}:c:{action}``                  ZSET   click ``event_id`` -> event ts (24 h kept)
``ss:i:{item}:sales``                       ZSET   ``{order_id}|{quantity}`` -> event ts (7 d kept)
``ss:i:{item}:catalog``                     HASH   price, cost, stock, ts, ref_price, price_changed_at, priced_at
``ss:i:{item}:revenue``                     ZSET   ``{order_id}|{revenue}`` -> event ts (7 d kept): the item's sales value per order
``ss:i:{item}:bandit``                      HASH   the item's pricing bandit (sealed pickle: features/sealing.py) and decision period (scorers/pricing_bandit.py)
``ss:cv:{item}``                            ZSET   co-visited item -> raw decayed weight (100 strongest kept; below)
``ss:cv:{item}:t``                          STR    epoch of ``ss:cv:{item}``'s raw weights (event ts, Unix s)
``ss:seen:{event_id}``                      STR    marks a click as counted (``FEATURE_SEEN_TTL_S``)
``ss:rec:{h}``                              STR    JSON recommendations (``REC_TTL_S``)
``ss:rec:{h}:items``                        HASH   recommended item -> 1 if from a cold-start list (``REC_TTL_S``)
``ss:o:{order_id}``                         STR    a scored order's learn record (JSON) until its label (``LABEL_TTL_S``)
``ss:v:{order_id}``                         STR    the order's verdict as published, so a redelivered order gets the same one (``VERDICT_TTL_S``)
``ss:l:{order_id}``                         STR    an early label (``1`` fraud, ``0`` legitimate) that came before the order's verdict (``LABEL_TTL_S``)
``ss:g:popular``                            ZSET   item id -> views (counted once per event id)
``ss:g:funnel``                             HASH   ``{from}>{to}`` -> transitions over all users (once per event id)
``ss:g:pending``                            ZSET   order id -> event ts of the orders with a learn record (no TTL: a member leaves with its label or when learned as legitimate after silence)
``ss:g:ckpt:{name}:{version}``              STR    an online model's checkpoint (sealed pickle: features/sealing.py; no TTL; the ``ONLINE_CHECKPOINTS_KEPT`` newest), with ``:seq`` and ``:latest``
==========================================  =====  ===================================================

Co-visitation (``REC_ONLINE_BLEND=on``): each first-delivered view of item b by a user adds
1/d both ways between b and the user's d-th previous distinct view (d <= 5, views of the last
30 min of event time, from ``ss:u:{h}:recent``). A weight added at ts is stored as
w * 2^((ts - epoch) / ``REC_COVIS_HALF_LIFE_S``), so its value at read time t is
raw * 2^((epoch - t) / half-life) (:func:`decay_factor`): a time-decayed count, with one
epoch per item, moved to the newest ts (raw weights rescaled) once 32 half-lives old.

Invariants:

* **Idempotent writes.** Windowed members are keyed by the event's own id, so applying an
  event twice (redelivery after a crash: offsets are committed after the writes) changes
  nothing. The counters that are not idempotent by nature (popularity, funnel transitions,
  category counts, co-visitation) run once per event id (``ss:seen``). Holds on Apache Kafka and on the
  local broker alike, with no Kafka transactions.
* **No shared keys.** Ids are escaped in every key (:mod:`features.keys`), here and in the Lua
  scripts alike: an order called ``pending`` or an item ``x:t`` has keys of its own.
* **Point in time.** A read for an event at ``t`` counts members with score in
  ``[t - W, t)``: events at or after ``t`` are never seen, whatever arrived first. The
  user HyperLogLogs cover the 24 full hours before ``t``'s hour for the same reason.
  Funnel state, category counts and popularity are "as of now" (documented per feature).
* **One round trip.** A batch is one pipeline of Lua calls (:mod:`features.lua`), each
  atomic and covering up to ``SCRIPT_CHUNK`` events; within a call each order's reads run
  before its writes, in event order, so the stream, replays and offline snapshots compute
  identical values.
* **Retention.** Windowed sets are trimmed to their longest window on every write; a
  member can outlive its trim only outside every read window. Long-horizon sets (``lusers``,
  ``lorders``, ``fraud``) have no window: they keep their ``LIFETIME_CAP`` earliest members (so a
  read "before t" is exact up to the cap, ~2.7 KB per entity at the cap, see tests/test_lifetime.py)
  and live ``LIFETIME_RETENTION_S`` after the entity's last write, both from the registry.
* **Labels link from their arrival.** A fraud label marks its order's device / IP / card with the
  label's own ts, so an order sees the link only when the label arrived before it.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any, Sequence

from features.definitions import (DAY, FRAUD_VECTOR, HOUR, LIFETIME_CAP, MINUTE, ORDER_FEATURES, PRICING_VECTOR,
                                  REGISTRY, lifetime_retention_s)
from features.keys import FeatureKeys  # noqa: F401  (the key builder; imported from here too)
from streamscore.events import CatalogItem, Click, Order

RECENT_ITEMS = 50
CLICK_RETENTION_S = DAY
SALES_RETENTION_S = 7 * DAY
ORDER_RETENTION_S = REGISTRY["user_orders_30d"].window_s
ENTITY_USERS_WINDOW_S = REGISTRY["device_users_30d"].window_s
ENTITY_ORDER_WINDOWS_S = tuple(REGISTRY[f"device_orders_{w}"].window_s for w in ("10m", "1h", "24h"))
USER_HLL_HOURS = REGISTRY["user_distinct_devices_24h"].window_s // HOUR
LIFETIME_RETENTION_S = lifetime_retention_s()
assert ENTITY_ORDER_WINDOWS_S == (10 * MINUTE, HOUR, DAY) and ORDER_RETENTION_S == 30 * DAY

COVIS_KEEP = 100  # neighbours kept per item (the strongest by raw weight)
COVIS_WINDOW = 5  # a view pairs with up to this many previous distinct views; reads use this many history items
COVIS_GAP_S = 30 * 60  # ... of at most this much earlier event time (the sessions' gap)
COVIS_RESCALE = 32  # half-lives after which an item's raw weights move to a new epoch
COVIS_READ = 50  # neighbours read per history item

Op = tuple  # a Redis command: (name, *args)


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


FUNNEL_STATES = ("start", "browse", "cart", "purchase")


class FeaturePlans:
    """Pure functions from events to Redis calls and from replies to feature values.

    Nothing here does I/O: :class:`features.client.FeatureClient` executes the plans (the
    stream, the HTTP service and the offline snapshots all go through it), which is what
    keeps online and offline equal. ``("SCRIPT", name, argv)`` ops run the Lua scripts
    of :mod:`features.lua`; other ops are plain commands.
    """

    def __init__(self, keys: FeatureKeys, ttl_s: int, seen_ttl_s: int = DAY, covis: bool = False,
                 covis_half_life_s: float = 0.0, label_ttl_s: int = 60 * DAY):
        self.keys = keys
        self.label_ttl_s = label_ttl_s  # how long an order's entities wait for its label (ss:o:{id}:ents)
        self.ttl_s = ttl_s
        self.seen_ttl_s = seen_ttl_s
        self.covis = covis  # count co-visitation (``ss:cv:*``) in the CLICKS script
        self.covis_half_life_s = covis_half_life_s

    # -- clicks -------------------------------------------------------------------------
    def clicks_script(self, clicks: Sequence[Click], recent_return: int) -> Op:
        """One CLICKS script call; its reply lists each distinct user's newest items."""
        argv: list = [self.ttl_s, CLICK_RETENTION_S, RECENT_ITEMS, self.seen_ttl_s, recent_return,
                      "1" if self.covis else "0", repr(float(self.covis_half_life_s)), COVIS_KEEP, COVIS_WINDOW,
                      COVIS_GAP_S, COVIS_RESCALE]
        for c in clicks:
            argv += [c.event_id, self.keys.user(c.user_id), c.item_id, c.action, repr(c.ts), c.category_id or ""]
        return ("SCRIPT", "clicks", argv)

    @staticmethod
    def covis_script(item_ids: Sequence[str], n: int = COVIS_READ) -> Op:
        """One COVIS read: each item's ``n`` strongest co-visited neighbours, raw, with its epoch."""
        return ("SCRIPT", "covis", [n, *item_ids])

    def covis_neighbours(self, item_ids: Sequence[str], reply: Sequence[Any], ts: float) -> dict[str, list[tuple[str, float]]]:
        """item -> [(neighbour, weight decayed to event time ``ts``)], strongest first; items
        without counts are left out."""
        out = {}
        for item, (epoch, flat) in zip(item_ids, reply):
            if flat:
                f = decay_factor(float(epoch), ts, self.covis_half_life_s)
                out[item] = [(m.decode(), float(w) * f) for m, w in zip(flat[::2], flat[1::2])]
        return out

    def user_clicks_script(self, user_id: str, ts: float) -> Op:
        return ("SCRIPT", "user_clicks", [self.keys.user(user_id), repr(ts)])

    @staticmethod
    def user_click_features(reply: Sequence[Any]) -> dict[str, float]:
        """Click features of a user from the USER_CLICKS reply (see :data:`~features.definitions.USER_CLICK_FEATURES`)."""
        counts = [float(x) for x in reply[:9]]
        names = [f"user_{a}_{w}" for a in ("views", "carts", "purchases") for w in ("5m", "1h", "24h")]
        values = dict(zip(names, counts))
        values["user_recent_items"] = float(reply[9])
        state = reply[10].decode() if isinstance(reply[10], bytes) else str(reply[10])
        transitions = _pairs_dict(reply[11])
        out_of_state = {k: v for k, v in transitions.items() if k.startswith(f"{state}>")}
        total = sum(out_of_state.values())
        values["funnel_state"] = float(FUNNEL_STATES.index(state)) if state in FUNNEL_STATES else 0.0
        values["funnel_purchase_prob"] = out_of_state.get(f"{state}>purchase", 0.0) / total if total else 0.0
        cats = _score_pairs(reply[12])
        all_views = sum(sc for _, sc in cats)
        values["top_category_share"] = cats[0][1] / all_views if all_views else 0.0
        return values

    # -- orders -------------------------------------------------------------------------
    def orders_script(self, orders: Sequence[Order], write: bool) -> Op:
        """One ORDERS script call: per order, read its features as of just before it, then
        (``write``) record it. The reply has one entry per order, see :meth:`fraud_features`."""
        argv: list = [self.ttl_s, "1" if write else "0", ENTITY_USERS_WINDOW_S, *ENTITY_ORDER_WINDOWS_S,
                      ORDER_RETENTION_S, SALES_RETENTION_S, USER_HLL_HOURS, LIFETIME_RETENTION_S, LIFETIME_CAP,
                      self.label_ttl_s]
        for o in orders:
            quantities: dict[str, int] = {}
            for line in o.items:
                quantities[line.item_id] = quantities.get(line.item_id, 0) + line.quantity
            argv += [o.order_id, self.keys.user(o.user_id), repr(o.amount), repr(o.ts),
                     *(self.keys.pseudo(kind, raw) if raw is not None else "" for kind, raw in _entities(o)),
                     len(quantities)]
            for item, qty in quantities.items():
                argv += [item, qty]
        return ("SCRIPT", "orders", argv)

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
    @staticmethod
    def record_verdicts_script(entries: Sequence[tuple[str, bytes, dict, float]], verdict_ttl_s: int,
                               label_ttl_s: int) -> Op:
        """One RECORD_VERDICTS call for ``(order_id, verdict, learn record, event ts)`` entries."""
        args: list[Any] = [verdict_ttl_s, label_ttl_s]
        for order_id, verdict, record, ts in entries:
            args += [order_id, verdict, json.dumps(record), repr(float(ts))]
        return ("SCRIPT", "record_verdicts", args)

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

    @staticmethod
    def join_labels_script(labels: Sequence[tuple[str, bool, float]], label_ttl_s: int) -> Op:
        """One JOIN_LABELS call for ``(order_id, is_fraud, label ts)`` labels (a fraud label links the
        order's device / IP / card from its ts)."""
        args: list[Any] = [label_ttl_s, LIFETIME_RETENTION_S, LIFETIME_CAP]
        for order_id, is_fraud, at in labels:
            args += [order_id, "1" if is_fraud else "0", repr(float(at))]
        return ("SCRIPT", "join_labels", args)

    @staticmethod
    def joined_records(reply: Sequence[Any]) -> list[dict | None]:
        """Each label's learn record (None: none stored, the label was kept as an early label)."""
        return [json.loads(r) if r else None for r in reply]

    # -- catalog & pricing ------------------------------------------------------------------
    def catalog_script(self, items: Sequence[CatalogItem]) -> Op:
        """One CATALOG script call: price, cost, stock and ts of each item, ``ref_price`` = the first
        price seen. Monotonic in event time: an entry older than the stored one changes nothing, and
        its price is taken only if newer than the pricing loop's last change (``price_changed_at``)."""
        args: list[Any] = [self.ttl_s]
        for item in items:
            args += [item.item_id, repr(item.price), repr(item.cost), item.stock, repr(item.ts)]
        return ("SCRIPT", "catalog", args)

    def revenue_script(self, orders: Sequence[Order]) -> Op:
        """One REVENUE script call: each order's sales value per item (price x quantity over its
        lines) as a member ``{order_id}|{revenue}``, so re-applying an order adds nothing."""
        args: list[Any] = [self.ttl_s, SALES_RETENTION_S]
        for order in orders:
            per_item: dict[str, float] = {}
            for line in order.items:
                per_item[line.item_id] = per_item.get(line.item_id, 0.0) + line.price * line.quantity
            for item_id, revenue in per_item.items():
                args += [self.keys.item_revenue(item_id), repr(order.ts), f"{order.order_id}|{revenue:.4f}"]
        return ("SCRIPT", "revenue", args)

    @staticmethod
    def revenue_sum(members: Sequence[bytes]) -> float:
        """Total of ``{order_id}|{revenue}`` members."""
        return sum(float(m.rsplit(b"|", 1)[1]) for m in members)

    @staticmethod
    def items_script(item_ids: Sequence[str], ts: float) -> Op:
        """One ITEMS script call: each item's click windows, catalog entry and 7-day sales."""
        return ("SCRIPT", "items", [repr(ts), *item_ids])

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
