"""Online feature store in Redis: key layout, batched idempotent writes, one-round-trip reads.

Key layout (``{h}`` = pseudonymised id, see :func:`features.privacy.pseudonymise`;
items are not personal data and keep their id). Every key has a TTL of
``settings.feature_ttl_s``, refreshed on write.

=====================================  =====  =================================================
key                                    type   members -> score
=====================================  =====  =================================================
``ss:u:{h}:orders``                    ZSET   ``{order_id}|{amount}`` -> event ts
``ss:u:{h}:c:{action}``                ZSET   click ``event_id`` -> event ts (24 h kept)
``ss:u:{h}:recent``                    ZSET   item id -> latest view ts (50 newest kept)
``ss:{device|ip|card}:{h}:users``      ZSET   user ``{h}`` -> first-seen ts
``ss:{device|ip|card}:{h}:orders``     ZSET   order id -> event ts
``ss:i:{item}:c:{action}``             ZSET   click ``event_id`` -> event ts (24 h kept)
``ss:i:{item}:sales``                  ZSET   ``{order_id}|{quantity}`` -> event ts (7 d kept)
``ss:i:{item}:catalog``                HASH   price, cost, stock, ref_price, price_changed_at, ts
``ss:popular``                         ZSET   item id -> view count (approximate)
``ss:rec:{h}``                         STR    JSON recommendations (``settings.rec_ttl_s``)
=====================================  =====  =================================================

Invariants:

* **Idempotent writes.** Every windowed write is a ``ZADD`` of a member derived from the
  event's own id, so re-applying an event (at-least-once redelivery after a crash) changes
  nothing. ``ss:popular`` (``ZINCRBY``) is the one approximate exception, documented as such.
* **Point in time.** Reads for an event at ``t`` count members with score in ``[t-W, t)``.
  Within a batch the pipeline runs each event's reads before its writes, in event order,
  so the stream, a replay and an offline snapshot compute identical vectors.
* **One round trip.** A batch of N events is one pipeline (reads and writes together).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Sequence

from features.definitions import DAY, FRAUD_FEATURES, FRAUD_VECTOR, HOUR, PRICING_VECTOR
from features.privacy import Pseudonymiser
from streamscore.events import CatalogItem, Click, Order

RECENT_ITEMS = 50
CLICK_RETENTION_S = DAY
SALES_RETENTION_S = 7 * DAY
ORDER_RETENTION_S = 30 * DAY

Op = tuple  # a Redis command: (name, *args)


def _hour_features(ts: float) -> tuple[float, float]:
    hour = datetime.fromtimestamp(ts, tz=timezone.utc)
    angle = 2 * math.pi * (hour.hour + hour.minute / 60) / 24
    return math.sin(angle), math.cos(angle)


def _month_features(ts: float) -> tuple[float, float]:
    month = datetime.fromtimestamp(ts, tz=timezone.utc).month
    angle = 2 * math.pi * (month - 1) / 12
    return math.sin(angle), math.cos(angle)


def _window_ops(key: str, member: str, ts: float, retention_s: float, ttl_s: int, flag: str | None = None) -> list[Op]:
    """ZADD one member (idempotent), trim what fell out of retention, refresh the TTL."""
    zadd = ("ZADD", key, flag, ts, member) if flag else ("ZADD", key, ts, member)
    return [zadd, ("ZREMRANGEBYSCORE", key, "-inf", f"({ts - retention_s}"), ("EXPIRE", key, ttl_s)]


def _score_pairs(reply: Sequence[Any]) -> list[tuple[bytes, float]]:
    """(member, score) pairs of a WITHSCORES reply, flat (RESP2) or already paired (client callback)."""
    if reply and isinstance(reply[0], (list, tuple)):
        return [(m, float(sc)) for m, sc in reply]
    return [(m, float(sc)) for m, sc in zip(reply[::2], reply[1::2])]


class FeatureKeys:
    """Builds key names; identifiers of people are pseudonymised here and nowhere else."""

    def __init__(self, pseudo: Pseudonymiser):
        self.pseudo = pseudo

    def user(self, user_id: str) -> str:
        return self.pseudo("user", user_id)

    def user_orders(self, uh: str) -> str:
        return f"ss:u:{uh}:orders"

    def user_clicks(self, uh: str, action: str) -> str:
        return f"ss:u:{uh}:c:{action}"

    def user_recent(self, uh: str) -> str:
        return f"ss:u:{uh}:recent"

    def entity(self, kind: str, raw_id: str) -> str:
        return f"ss:{kind}:{self.pseudo(kind, raw_id)}"

    @staticmethod
    def item_clicks(item_id: str, action: str) -> str:
        return f"ss:i:{item_id}:c:{action}"

    @staticmethod
    def item_sales(item_id: str) -> str:
        return f"ss:i:{item_id}:sales"

    @staticmethod
    def item_catalog(item_id: str) -> str:
        return f"ss:i:{item_id}:catalog"

    popular = "ss:popular"

    def recommendations(self, uh: str) -> str:
        return f"ss:rec:{uh}"


class FeaturePlans:
    """Pure functions from events to Redis commands and from replies to feature values.

    Nothing here does I/O: :class:`features.client.FeatureClient` (asyncio) and the offline
    snapshot code both execute these plans, which is what keeps online and offline equal.
    """

    def __init__(self, keys: FeatureKeys, ttl_s: int):
        self.keys = keys
        self.ttl_s = ttl_s

    # -- clicks -------------------------------------------------------------------------
    def click_writes(self, click: Click) -> list[Op]:
        uh, ts, ttl = self.keys.user(click.user_id), click.ts, self.ttl_s
        ops = _window_ops(self.keys.user_clicks(uh, click.action), click.event_id, ts, CLICK_RETENTION_S, ttl)
        ops += _window_ops(self.keys.item_clicks(click.item_id, click.action), click.event_id, ts, CLICK_RETENTION_S, ttl)
        if click.action == "view":
            recent = self.keys.user_recent(uh)
            ops += [("ZADD", recent, "GT", ts, click.item_id), ("ZREMRANGEBYRANK", recent, 0, -(RECENT_ITEMS + 1)),
                    ("EXPIRE", recent, ttl), ("ZINCRBY", self.keys.popular, 1, click.item_id)]
        return ops

    def recent_items_read(self, user_id: str, n: int) -> Op:
        return ("ZREVRANGE", self.keys.user_recent(self.keys.user(user_id)), 0, n - 1)

    # -- orders -------------------------------------------------------------------------
    def _order_entities(self, order: Order) -> list[tuple[str, str | None]]:
        return [("device", order.device_id), ("ip", order.ip), ("card", order.payment_fingerprint)]

    def order_reads(self, order: Order) -> list[Op]:
        """Commands whose replies :meth:`fraud_vector` turns into the order's feature vector."""
        ts = order.ts
        uh = self.keys.user(order.user_id)
        ops: list[Op] = [("ZRANGEBYSCORE", self.keys.user_orders(uh), ts - ORDER_RETENTION_S, f"({ts}", "WITHSCORES")]
        for kind, raw in self._order_entities(order):
            if raw is None:
                continue
            base = self.keys.entity(kind, raw)
            ops += [("ZCOUNT", f"{base}:users", ts - 30 * DAY, f"({ts}"),
                    ("ZCOUNT", f"{base}:orders", ts - HOUR, f"({ts}"),
                    ("ZCOUNT", f"{base}:orders", ts - DAY, f"({ts}")]
        return ops

    def order_writes(self, order: Order) -> list[Op]:
        ts, ttl = order.ts, self.ttl_s
        uh = self.keys.user(order.user_id)
        ops = _window_ops(self.keys.user_orders(uh), f"{order.order_id}|{order.amount!r}", ts, ORDER_RETENTION_S, ttl)
        for kind, raw in self._order_entities(order):
            if raw is None:
                continue
            base = self.keys.entity(kind, raw)
            ops += _window_ops(f"{base}:users", uh, ts, ORDER_RETENTION_S, ttl, flag="LT")
            ops += _window_ops(f"{base}:orders", order.order_id, ts, ORDER_RETENTION_S, ttl)
        quantities: dict[str, int] = {}
        for line in order.items:
            quantities[line.item_id] = quantities.get(line.item_id, 0) + line.quantity
        for item_id, qty in quantities.items():
            ops += _window_ops(self.keys.item_sales(item_id), f"{order.order_id}|{qty}", ts, SALES_RETENTION_S, ttl)
        return ops

    def fraud_features(self, order: Order, replies: Sequence[Any]) -> dict[str, float]:
        """Feature values (name -> float) from the replies to :meth:`order_reads`."""
        ts = order.ts
        values = {f.name: f.default for f in FRAUD_FEATURES}
        amounts_30d, n_1h, n_24h, amount_24h = [], 0, 0, 0.0
        for member, score in _score_pairs(replies[0]):
            amount, at = float(member.rsplit(b"|", 1)[1]), float(score)
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
        i = 1
        for kind, raw in self._order_entities(order):
            if raw is None:
                continue
            users, o1h, o24h = replies[i:i + 3]
            i += 3
            if kind == "card":
                values.update(card_users_30d=users, card_orders_1h=o1h)
            else:
                values.update({f"{kind}_users_30d": users, f"{kind}_orders_1h": o1h, f"{kind}_orders_24h": o24h})
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

    # -- catalog & pricing ------------------------------------------------------------------
    def catalog_writes(self, item: CatalogItem) -> list[Op]:
        key = self.keys.item_catalog(item.item_id)
        return [("HSET", key, "price", item.price, "cost", item.cost, "stock", item.stock, "ts", item.ts),
                ("HSETNX", key, "ref_price", item.price), ("EXPIRE", key, self.ttl_s)]

    def pricing_reads(self, item_id: str, ts: float) -> list[Op]:
        return [("HGETALL", self.keys.item_catalog(item_id)),
                ("ZRANGEBYSCORE", self.keys.item_sales(item_id), ts - SALES_RETENTION_S, f"({ts}")]

    @staticmethod
    def pricing_state(item_id: str, ts: float, replies: Sequence[Any]) -> dict[str, float] | None:
        """Catalog state plus the pricing vector's values; None when the item has no catalog entry."""
        catalog = {k.decode(): float(v) for k, v in replies[0].items()}
        if "price" not in catalog:
            return None
        sales = replies[1]
        units = sum(int(m.rsplit(b"|", 1)[1]) for m in sales)
        month_sin, month_cos = _month_features(ts)
        catalog.update(log_price=math.log(catalog["price"]), log1p_units_7d=math.log1p(units),
                       log1p_orders_7d=math.log1p(len(sales)), month_sin=month_sin, month_cos=month_cos)
        return catalog

    @staticmethod
    def pricing_vector(state: dict[str, float]) -> list[float]:
        return [state[name] for name in PRICING_VECTOR]
