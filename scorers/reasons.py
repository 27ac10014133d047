"""The reasons of a fraud verdict in plain words: one template per feature, kept here and nowhere else.

A verdict's ``reason_codes`` are the feature names that pushed its score up most (the model's
``CONTRIB``, or the rules that fired on the degraded path; at most three); its ``reasons`` are
the same signals as sentences a shop's staff can read, with the order's values:

>>> from streamscore.events import Order
>>> o = Order(order_id="o1", user_id="u", amount=1250.0, currency="GBP", ts=1.7e9, account_created_at=1.7e9 - 240)
>>> f = {"amount_log": math.log1p(1250.0), "device_users_30d": 3.0, "ip_orders_1h": 4.0,
...      "account_age_log_s": math.log1p(240), "hour_sin": 0.0, "hour_cos": 1.0}
>>> sentences(["amount_log", "device_users_30d", "ip_orders_1h"], f, o)
['order amount 1,250.00 GBP', 'device used by 3 accounts in the last 30 days', '4 orders from this IP in the last hour']
>>> sentences(["account_age_log_s", "hour_cos"], f, o)
['account created 4 minutes before the order', 'order placed at 22:13 UTC']

A feature without a template (another feature added to the model) still reads: its registry
description and its value (:func:`generic`), and a name the registry does not know, its name:

>>> sentences(["user_distinct_ips_24h", "brand_new_signal"], {"user_distinct_ips_24h": 2.0, "brand_new_signal": 0.25}, o)
['distinct IPs of the user, as above (HyperLogLog): 2', 'brand_new_signal: 0.25']

Only string formatting, for at most three signals a verdict: no lookup beyond the order and the
features already read for the score.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Mapping, Sequence

from features.definitions import REGISTRY
from streamscore.events import Order

Template = Callable[[Mapping[str, float], Order], str]


def _count(x: float) -> str:
    return f"{int(round(x)):,}"


def _plural(n: float, one: str, many: str) -> str:
    return f"{_count(n)} {one if int(round(n)) == 1 else many}"


def _money(x: float, currency: str) -> str:
    return f"{x:,.2f} {currency}"


def _duration(seconds: float) -> str:
    """
    >>> _duration(30), _duration(240), _duration(7200), _duration(3 * 86400)
    ('30 seconds', '4 minutes', '2 hours', '3 days')
    """
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            return _plural(math.floor(seconds / size + 1e-6), unit, unit + "s")
    return _plural(max(0.0, seconds), "second", "seconds")


def _hour(order: Order) -> str:
    return time.strftime("%H:%M", time.gmtime(order.ts))


def _entity_users(what: str) -> Template:
    name = {"device": "device", "ip": "IP address", "card": "payment card"}[what]
    return lambda f, o, k=f"{what}_users_30d": (
        f"{name} used by {_plural(f[k], 'account', 'accounts')} in the last 30 days" if f.get(k, 0.0) >= 0.5
        else f"{name} not seen in the last 30 days")


_ENTITY = {"device": "device", "ip": "IP address", "card": "payment card"}


def _entity_lifetime(what: str) -> dict[str, Template]:
    """Templates of an entity's long-horizon signals (features/definitions.py: ``<kind>_*_ever`` ...)."""
    name = _ENTITY[what]
    return {
        f"{what}_users_ever": lambda f, o, k=f"{what}_users_ever": (
            f"{name} used by {_plural(f[k], 'account', 'accounts')} before this order" if f.get(k, 0.0) >= 0.5
            else f"{name} never seen before"),
        f"{what}_orders_ever": lambda f, o, k=f"{what}_orders_ever": (
            f"{_plural(f[k], 'earlier order', 'earlier orders')} from this {name}" if f.get(k, 0.0) >= 0.5
            else f"no earlier order from this {name}"),
        f"{what}_first_seen_age_log_s": lambda f, o, k=f"{what}_first_seen_age_log_s": (
            f"{name} first seen {_duration(math.expm1(f[k]))} before the order" if f.get(k, 0.0) > 0
            else f"{name} never seen before"),
        f"{what}_fraud_linked": lambda f, o, k=f"{what}_fraud_linked": (
            f"{name} linked to a confirmed fraud before" if f.get(k, 0.0) > 0
            else f"{name} never linked to a confirmed fraud"),
    }


def _entity_orders(key: str, where: str, window: str) -> Template:
    return lambda f, o: f"{_plural(f[key], 'order', 'orders')} {where} in the last {window}"


TEMPLATES: dict[str, Template] = {
    "amount_log": lambda f, o: f"order amount {_money(o.amount, o.currency)}",
    "account_age_log_s": lambda f, o: (("account created with the order" if f["account_age_log_s"] < math.log1p(1.0)
                                        else f"account created {_duration(math.expm1(f['account_age_log_s']))} "
                                             "before the order")
                                       if math.isfinite(f.get("account_age_log_s", math.nan))
                                       else "account age unknown"),
    "account_age_missing": lambda f, o: "no account creation time on the order",
    "user_orders_1h": lambda f, o: f"{_plural(f['user_orders_1h'], 'earlier order', 'earlier orders')} "
                                   "by this account in the last hour",
    "user_orders_24h": lambda f, o: f"{_plural(f['user_orders_24h'], 'earlier order', 'earlier orders')} "
                                    "by this account in the last 24 hours",
    "user_orders_30d": lambda f, o: f"{_plural(f['user_orders_30d'], 'earlier order', 'earlier orders')} "
                                    "by this account in the last 30 days",
    "user_amount_24h_log": lambda f, o: f"{_money(math.expm1(f['user_amount_24h_log']), o.currency)} spent by this "
                                        "account in the last 24 hours",
    "user_amount_zscore": lambda f, o: f"amount {f['user_amount_zscore']:.1f} standard deviations from this "
                                       "account's usual orders",
    "device_users_30d": _entity_users("device"),
    "ip_users_30d": _entity_users("ip"),
    "card_users_30d": _entity_users("card"),
    "device_orders_1h": _entity_orders("device_orders_1h", "from this device", "hour"),
    "device_orders_24h": _entity_orders("device_orders_24h", "from this device", "24 hours"),
    "ip_orders_1h": _entity_orders("ip_orders_1h", "from this IP", "hour"),
    "ip_orders_24h": _entity_orders("ip_orders_24h", "from this IP", "24 hours"),
    "card_orders_1h": _entity_orders("card_orders_1h", "with this payment card", "hour"),
    "card_orders_24h": _entity_orders("card_orders_24h", "with this payment card", "24 hours"),
    "hour_sin": lambda f, o: f"order placed at {_hour(o)} UTC",
    "hour_cos": lambda f, o: f"order placed at {_hour(o)} UTC",
    "items_count": lambda f, o: _plural(f["items_count"], "order line", "order lines"),
    "device_missing": lambda f, o: "no device id on the order",
    "ip_missing": lambda f, o: "no IP address on the order",
    **_entity_lifetime("device"), **_entity_lifetime("ip"), **_entity_lifetime("card"),
}


def _value(x: float) -> str:
    """
    >>> _value(2.0), _value(0.254), _value(1234.5)
    ('2', '0.25', '1,234.5')
    """
    if not math.isfinite(x):
        return "unknown"
    if float(x).is_integer():
        return _count(x)
    return f"{x:,.2f}".rstrip("0").rstrip(".") if abs(x) < 1000 else f"{x:,.1f}"


def generic(name: str, features: Mapping[str, float]) -> str:
    """A feature without a template: its registry description and its value."""
    feature = REGISTRY.get(name)
    label = feature.description if feature is not None else name
    return f"{label}: {_value(features.get(name, math.nan))}"


def sentence(name: str, features: Mapping[str, float], order: Order) -> str:
    template = TEMPLATES.get(name)
    if template is None:
        return generic(name, features)
    try:
        return template(features, order)
    except (KeyError, ValueError, OverflowError, TypeError):  # a value the template cannot read
        return generic(name, features)


def sentences(codes: Sequence[str], features: Mapping[str, float], order: Order) -> list[str]:
    """The plain-words reasons of ``codes`` (in order), the hour said once even if both of its features are."""
    out: list[str] = []
    for code in codes:
        s = sentence(code, features, order)
        if s not in out:
            out.append(s)
    return out
