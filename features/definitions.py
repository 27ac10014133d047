"""Every online feature, defined as code: the one registry used by the stream, the
scorers, training and the docs.

A :class:`Feature` names its entity, window, default and the event that updates it.
Vectors (:data:`FRAUD_VECTOR`, :data:`PRICING_VECTOR`) fix the order in which a
scorer receives them; that order is the contract with the Triton models
(``triton_repo/<model>/config.pbtxt`` and the ``features`` list in each model's meta).

Windows are event-time windows ``[t - window, t)``: a feature read for an event at
time ``t`` sees only events strictly before ``t`` (no leakage from the future, and
the same value whether the event is processed live, replayed, or re-applied after
a crash).
"""

from __future__ import annotations

from dataclasses import dataclass

MINUTE, HOUR, DAY = 60, 3600, 86400

# Long-horizon entity signals (device / IP / card): how long their keys live without a new order
# (each its own retention, not FEATURE_TTL_S), and the cap of the distinct-accounts set.
LIFETIME_RETENTION_S = 400 * DAY
LIFETIME_CAP = 32  # distinct accounts kept per entity (the earliest first seen): the feature saturates at 32
# Training's label timing (the data carry none): a label arrives 14 days after its purchase
# (chargebacks take days to weeks); the offline snapshot replays labels at that time.
LABEL_DELAY_S = 14 * DAY


@dataclass(frozen=True)
class Feature:
    name: str
    entity: str  # user | device | ip | card | item | order
    window_s: int | None  # event-time window in seconds; None = not windowed
    default: float  # value when the entity has no history
    updated_by: str  # clicks | orders | catalog | (derived from the event itself)
    description: str
    # how long the feature's keys live after their last write (seconds); None = FEATURE_TTL_S.
    # Long-horizon features (window_s None: all history kept) carry their own.
    retention_s: int | None = None


_F = Feature

FRAUD_FEATURES: tuple[Feature, ...] = (
    _F("amount_log", "order", None, 0.0, "orders", "log1p(order amount)"),
    _F("account_age_log_s", "user", None, float("nan"), "orders",
       "log1p(seconds since account creation); NaN when unknown (the model imputes its training mean)"),
    _F("account_age_missing", "user", None, 1.0, "orders", "1 when the order carries no account creation time"),
    _F("user_orders_1h", "user", HOUR, 0.0, "orders", "the user's orders in the last hour"),
    _F("user_orders_24h", "user", DAY, 0.0, "orders", "the user's orders in the last 24 h"),
    _F("user_amount_24h_log", "user", DAY, 0.0, "orders", "log1p(sum of the user's order amounts in the last 24 h)"),
    _F("user_orders_30d", "user", 30 * DAY, 0.0, "orders", "the user's orders in the last 30 days"),
    _F("user_amount_zscore", "user", 30 * DAY, 0.0, "orders",
       "(amount - mean) / std of the user's previous order amounts (30 days, needs >= 2 orders, else 0)"),
    _F("device_users_30d", "device", 30 * DAY, 0.0, "orders", "distinct users first seen on this device in the last 30 days"),
    _F("device_orders_1h", "device", HOUR, 0.0, "orders", "orders from this device in the last hour"),
    _F("device_orders_24h", "device", DAY, 0.0, "orders", "orders from this device in the last 24 h"),
    _F("ip_users_30d", "ip", 30 * DAY, 0.0, "orders", "distinct users first seen on this IP in the last 30 days"),
    _F("ip_orders_1h", "ip", HOUR, 0.0, "orders", "orders from this IP in the last hour"),
    _F("ip_orders_24h", "ip", DAY, 0.0, "orders", "orders from this IP in the last 24 h"),
    _F("card_users_30d", "card", 30 * DAY, 0.0, "orders", "distinct users first seen on this payment instrument in 30 days"),
    _F("card_orders_1h", "card", HOUR, 0.0, "orders", "orders with this payment instrument in the last hour"),
    _F("hour_sin", "order", None, 0.0, "orders", "sin(2 pi hour-of-day / 24), UTC event time"),
    _F("hour_cos", "order", None, 1.0, "orders", "cos(2 pi hour-of-day / 24), UTC event time"),
    _F("items_count", "order", None, 0.0, "orders", "number of order lines"),
    _F("device_missing", "order", None, 1.0, "orders", "1 when the order has no device id"),
    _F("ip_missing", "order", None, 1.0, "orders", "1 when the order has no IP"),
) + tuple(
    # long-horizon entity signals (ORDERS script, features.lua): all history, kept LIFETIME_RETENTION_S
    # after the entity's last order; the sets keep the LIFETIME_CAP earliest members (memory bound)
    f for kind, what in (("device", "device"), ("ip", "IP")) for f in (
        _F(f"{kind}_users_ever", kind, None, 0.0, "orders",
           f"distinct accounts seen on this {what} before the order, all history (capped at {LIFETIME_CAP})",
           LIFETIME_RETENTION_S),
        _F(f"{kind}_first_seen_age_log_s", kind, None, 0.0, "orders",
           f"log1p(seconds since this {what}'s first order); 0 when it has none before", LIFETIME_RETENTION_S),
        _F(f"{kind}_orders_ever", kind, None, 0.0, "orders",
           f"orders from this {what} before the order, all history (capped at {LIFETIME_CAP})", LIFETIME_RETENTION_S),
        _F(f"{kind}_fraud_linked", kind, None, 0.0, "labels",
           f"1 when a fraud label of an earlier order on this {what} had arrived before the order "
           "(from the label's arrival time)", LIFETIME_RETENTION_S),
    ))
FRAUD_VECTOR: tuple[str, ...] = tuple(f.name for f in FRAUD_FEATURES)

# Order features beyond the fraud model's current vector (read in the same script call).
ORDER_EXTRA_FEATURES: tuple[Feature, ...] = (
    _F("card_orders_24h", "card", DAY, 0.0, "orders", "orders with this payment instrument in the last 24 h"),
    _F("device_orders_10m", "device", 10 * MINUTE, 0.0, "orders", "orders from this device in the last 10 minutes"),
    _F("ip_orders_10m", "ip", 10 * MINUTE, 0.0, "orders", "orders from this IP in the last 10 minutes"),
    _F("card_orders_10m", "card", 10 * MINUTE, 0.0, "orders", "orders with this payment instrument in the last 10 minutes"),
    _F("user_distinct_devices_24h", "user", DAY, 0.0, "orders",
       "distinct devices of the user over the 24 full hours before the order's hour (HyperLogLog, ~0.8% error)"),
    _F("user_distinct_ips_24h", "user", DAY, 0.0, "orders", "distinct IPs of the user, as above (HyperLogLog)"),
    _F("user_distinct_cards_24h", "user", DAY, 0.0, "orders", "distinct payment instruments of the user, as above (HyperLogLog)"),
    # the card's long-horizon signals: computed like the device's, not in the vector (the training data has no cards)
    _F("card_users_ever", "card", None, 0.0, "orders",
       f"distinct accounts seen on this payment instrument before the order (capped at {LIFETIME_CAP})",
       LIFETIME_RETENTION_S),
    _F("card_first_seen_age_log_s", "card", None, 0.0, "orders",
       "log1p(seconds since this payment instrument's first order); 0 when none before", LIFETIME_RETENTION_S),
    _F("card_orders_ever", "card", None, 0.0, "orders",
       f"orders with this payment instrument before the order (capped at {LIFETIME_CAP})", LIFETIME_RETENTION_S),
    _F("card_fraud_linked", "card", None, 0.0, "labels",
       "1 when a fraud label of an earlier order with this payment instrument had arrived before the order",
       LIFETIME_RETENTION_S),
)
ORDER_FEATURES: tuple[Feature, ...] = FRAUD_FEATURES + ORDER_EXTRA_FEATURES

PRICING_FEATURES: tuple[Feature, ...] = (
    _F("log_price", "item", None, 0.0, "catalog", "log(current unit price)"),
    _F("log1p_units_7d", "item", 7 * DAY, 0.0, "orders", "log1p(units of the item sold in the last 7 days)"),
    _F("log1p_orders_7d", "item", 7 * DAY, 0.0, "orders", "log1p(orders containing the item in the last 7 days)"),
    _F("month_sin", "item", None, 0.0, "catalog", "sin(2 pi (month-1) / 12), UTC event time"),
    _F("month_cos", "item", None, 1.0, "catalog", "cos(2 pi (month-1) / 12), UTC event time"),
)
PRICING_VECTOR: tuple[str, ...] = tuple(f.name for f in PRICING_FEATURES)

_WINDOWS = (("5m", 5 * MINUTE), ("1h", HOUR), ("24h", DAY))
USER_CLICK_FEATURES: tuple[Feature, ...] = tuple(
    _F(f"user_{noun}_{label}", "user", w, 0.0, "clicks", f"the user's {what} in the last {label} (event time)")
    for noun, what in (("views", "item views"), ("carts", "add-to-cart clicks"), ("purchases", "purchase clicks"))
    for label, w in _WINDOWS) + (
    _F("user_recent_items", "user", None, 0.0, "clicks", "how many of the user's 50 most recently viewed items are kept"),
    _F("funnel_state", "user", None, 0.0, "clicks", "the user's funnel state: 0 start, 1 browse, 2 cart, 3 purchase"),
    _F("funnel_purchase_prob", "user", None, 0.0, "clicks",
       "P(next step is a purchase | funnel state), from Markov transition counts over all users"),
    _F("top_category_share", "user", None, 0.0, "clicks", "share of the user's views in their most viewed category"),
)
# The checkout vector: everything the order path can read in one round trip.
CHECKOUT_VECTOR: tuple[str, ...] = tuple(f.name for f in ORDER_FEATURES + USER_CLICK_FEATURES)

ITEM_FEATURES: tuple[Feature, ...] = (
    _F("item_views_1h", "item", HOUR, 0.0, "clicks", "views of the item in the last hour"),
    _F("item_views_24h", "item", DAY, 0.0, "clicks", "views of the item in the last 24 h"),
    _F("item_carts_24h", "item", DAY, 0.0, "clicks", "add-to-cart clicks on the item in the last 24 h"),
    _F("item_purchases_24h", "item", DAY, 0.0, "clicks", "purchase clicks on the item in the last 24 h"),
    _F("item_conversion_24h", "item", DAY, 0.0, "clicks", "purchases / views over the last 24 h (0 without views)"),
    _F("popular_items", "item", None, 0.0, "clicks",
       "items ranked by views (counted once per event id): the REC_POPULAR_KEEP most viewed of each of the 64 shards, "
       "by Space-Saving (a count may be high by at most the count its item took over when it came in)"),
)

def lifetime_retention_s() -> int:
    """The retention of the long-horizon entity keys, from the registry (one value for all of them)."""
    values = {f.retention_s for f in ORDER_FEATURES if f.name.endswith(("_ever", "_first_seen_age_log_s", "_fraud_linked"))}
    assert len(values) == 1, values
    return int(values.pop())


REGISTRY: dict[str, Feature] = {
    f.name: f for f in ORDER_FEATURES + PRICING_FEATURES + USER_CLICK_FEATURES + ITEM_FEATURES}


def describe() -> str:
    """Markdown tables of every feature, by vector (docs/FEATURES.md is generated from this)."""
    def window(f: Feature) -> str:
        if f.window_s is None:
            return "-"
        for unit, size in (("d", DAY), ("h", HOUR), ("min", MINUTE)):
            if f.window_s % size == 0:
                return f"{f.window_s // size} {unit}"
        return f"{f.window_s} s"

    sections = [(f"Order features (fraud model input: the first {len(FRAUD_VECTOR)}, in order)", ORDER_FEATURES),
                ("User click features", USER_CLICK_FEATURES), ("Item features", ITEM_FEATURES),
                ("Pricing model input (in order)", PRICING_FEATURES)]
    out = []
    for title, feats in sections:
        out += [f"## {title}", "", "| name | entity | window | retention | default | updated by | meaning |",
                "|---|---|---|---|---|---|---|"]
        out += [f"| `{f.name}` | {f.entity} | {window(f) if f.window_s or f.retention_s is None else 'all history'} | "
                f"{'FEATURE_TTL_S' if f.retention_s is None else str(f.retention_s // DAY) + ' d'} | {f.default} | "
                f"{f.updated_by} | {f.description} |" for f in feats]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":  # python -m features.definitions > docs/FEATURES.md
    print("# Online features\n\nGenerated from `features/definitions.py` (`python -m features.definitions > "
          "docs/FEATURES.md`). Windows are event-time windows `[t - window, t)`: a read for an event at `t` sees "
          "only events strictly before it. Redis key layout, TTLs and the idempotency invariant: "
          "`features/store.py` and `features/lua.py`. The checkout vector (order + user click features, "
          f"{len(CHECKOUT_VECTOR)} values) is read in one round trip.\n")
    print(describe())
