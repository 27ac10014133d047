"""SYNTHETIC events, only for what no real dataset here has: labelled fraud patterns and
demand with known elasticities. Seeded (numpy PCG64): the same seed and configuration give
byte-identical events.

Everything generated is labelled synthetic: user, item, device and card ids are
``"syn:..."``, order ids ``"syn-fraud-<n>"`` / ``"syn-demand-<n>"``, labels carry
``source="syn:<pattern>"``, and IPs come from 198.18.0.0/15 (RFC 2544's benchmarking
range, never routed). The replay CLI prints a warning and lists what it generated
whenever synthetic events are part of a run.

**Fraud** (:func:`fraud`): legitimate customers (old accounts, one device, one IP, one
card each; orders at a Poisson rate) plus injected incidents, each order labelled
(``FraudLabel`` ``label_delay_s`` after the order) with its pattern:

* ``card_testing``: one stolen card tried by 3-6 fresh accounts (each its own device and
  IP) in a burst of 12-25 orders of 0.50-4.99 within 3-10 minutes;
* ``account_takeover``: an account at least 180 days old, with earlier orders, orders from
  a device and an IP it never used, for 8-20x its largest earlier order, then 0-2 more
  orders from the same device within the hour;
* ``velocity``: a fresh account places 8-20 mid-priced orders within 10-40 minutes from one
  device, rotating over 2-5 cards.

**Demand** (:func:`demand`): items with a base price ``p0``, a base demand ``q0`` (orders
per day at ``p0``) and a constant price elasticity ``e``; the price changes every
``change_every_days`` (a ``CatalogItem`` event, price ``p0`` times a uniform multiplier),
and while price ``p`` holds, orders (one unit each) arrive as a Poisson process of rate
``q0 * (p / p0) ** e`` per day. The truth (``p0``, ``q0``, ``e`` per item) is returned, so a
pricing model's estimates can be checked against it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from streamscore.events import CatalogItem, FraudLabel, Order, OrderLine

NS = "syn"
BASE_TS = 1_704_067_200.0  # 2024-01-01T00:00:00Z; replays shift it to their start anyway
DAY, HOUR, MINUTE = 86_400.0, 3_600.0, 60.0
_IP_BASE = int(ipaddress.IPv4Address("198.18.0.0"))  # 198.18.0.0/15: 131,072 addresses
PATTERNS = ("legit", "card_testing", "account_takeover", "velocity")


def _ip(n: int) -> str:
    return str(ipaddress.IPv4Address(_IP_BASE + 1 + n % 131_070))


# --- fraud ------------------------------------------------------------------------------

@dataclass(frozen=True)
class FraudConfig:
    users: int = 400  # legitimate customers
    days: float = 7.0
    orders_per_user_day: float = 0.2
    card_testing: int = 3  # bursts
    takeovers: int = 5
    velocity: int = 3  # bursts
    label_delay_s: float = 3_600.0
    start_ts: float = BASE_TS


@dataclass
class SyntheticFraud:
    orders: list[Order]  # time-sorted
    labels: list[FraudLabel]  # time-sorted, one per order
    pattern: dict[str, str]  # order id -> pattern (see PATTERNS)
    incidents: list[dict]  # each injected incident: pattern, order ids, users, cards, devices
    config: dict = field(default_factory=dict)

    def summary(self) -> dict:
        counts = {p: 0 for p in PATTERNS}
        for p in self.pattern.values():
            counts[p] += 1
        return {"orders": len(self.orders), "fraud": len(self.orders) - counts["legit"], "orders_by_pattern": counts,
                "incidents": len(self.incidents), "config": self.config}


def fraud(seed: int, config: FraudConfig = FraudConfig()) -> SyntheticFraud:
    """Orders of legitimate customers plus labelled card-testing, takeover and velocity incidents."""
    rng = np.random.default_rng([seed, 1])
    c = config
    t0, span = c.start_ts, c.days * DAY
    pool = np.round(rng.lognormal(np.log(20.0), 0.6, 300), 2).clip(0.5, None)  # everyday items
    luxury = np.round(rng.lognormal(np.log(400.0), 0.3, 40), 2)  # takeover loot
    raw: list[tuple[float, dict, str]] = []  # (ts, order fields without order_id, pattern)
    n_ip = [0]
    n_user = [0]

    def next_ip() -> str:
        n_ip[0] += 1
        return _ip(n_ip[0])

    def new_user() -> str:
        n_user[0] += 1
        return f"{NS}:u{n_user[0]}"

    def lines(prices, items, quantities):
        return [OrderLine(item_id=item, price=float(p), quantity=int(q))
                for p, item, q in zip(prices, items, quantities)]

    def add(ts, user, created, device, ip, card, order_lines, pattern, country="GB"):
        raw.append((round(float(ts), 3), dict(
            user_id=user, items=order_lines, amount=round(sum(li.price * li.quantity for li in order_lines), 2),
            currency="GBP", payment_fingerprint=card, device_id=device, ip=ip, shipping_country=country,
            account_created_at=round(float(created), 3)), pattern))

    customers = []
    for _ in range(c.users):
        user = new_user()
        cust = dict(user=user, created=t0 - rng.uniform(30, 1500) * DAY, device=f"{NS}:dev-{user[4:]}",
                    ip=next_ip(), card=f"{NS}:card-{user[4:]}", country=str(rng.choice(["GB", "DE", "FR", "NL"])),
                    orders=[])
        customers.append(cust)
        for ts in np.sort(rng.uniform(t0, t0 + span, rng.poisson(c.orders_per_user_day * c.days))):
            k = int(rng.integers(1, 4))
            idx = rng.choice(len(pool), k, replace=False)
            order_lines = lines(pool[idx], [f"{NS}:item-{i}" for i in idx], rng.integers(1, 3, k))
            add(ts, user, cust["created"], cust["device"], cust["ip"], cust["card"], order_lines, "legit",
                cust["country"])
            cust["orders"].append((float(ts), sum(li.price * li.quantity for li in order_lines)))
    incidents = []

    for b in range(c.card_testing):
        start = rng.uniform(t0 + HOUR, t0 + span - HOUR)
        card = f"{NS}:card-stolen-{b}"
        users = []
        for _ in range(int(rng.integers(3, 7))):
            user = new_user()
            users.append(dict(user=user, created=start - rng.uniform(0.1, 48) * HOUR, device=f"{NS}:dev-{user[4:]}",
                              ip=next_ip()))
        n = int(rng.integers(12, 26))
        times = np.sort(start + rng.uniform(0, rng.uniform(3, 10) * MINUTE, n))
        for j, ts in enumerate(times):
            u = users[j % len(users)] if j < len(users) else users[int(rng.integers(len(users)))]
            price = round(float(rng.uniform(0.5, 4.99)), 2)
            add(ts, u["user"], u["created"], u["device"], u["ip"], card,
                lines([price], [f"{NS}:item-gift-{int(rng.integers(5))}"], [1]), "card_testing")
        incidents.append(dict(pattern="card_testing", card=card, users=[u["user"] for u in users],
                              start_ts=float(times[0]), end_ts=float(times[-1]), orders=n))

    # takeovers: old accounts with at least one earlier order (each account taken over once)
    eligible = [cu for cu in customers
                if cu["orders"] and t0 - cu["created"] >= 180 * DAY and cu["orders"][0][0] < t0 + span - 2 * HOUR]
    victims = rng.choice(len(eligible), min(c.takeovers, len(eligible)), replace=False) if eligible else []
    for a, v in enumerate(victims):
        cust = eligible[int(v)]
        ts = rng.uniform(cust["orders"][0][0] + MINUTE, t0 + span - HOUR)
        before = [amt for t, amt in cust["orders"] if t < ts]
        target = rng.uniform(8, 20) * max(before)
        device, ip = f"{NS}:dev-ato-{a}", _ip(100_000 + a)  # 198.19.x.x: never given to a customer
        n_follow = int(rng.integers(0, 3))
        times = [ts] + sorted(ts + rng.uniform(1, 60, n_follow) * MINUTE)
        for k, when in enumerate(times):
            idx = int(rng.integers(len(luxury)))
            qty = max(1, int(np.ceil(target / luxury[idx]))) if k == 0 else 1
            add(when, cust["user"], cust["created"], device, ip, cust["card"],
                lines([luxury[idx]], [f"{NS}:item-lux-{idx}"], [qty]), "account_takeover", cust["country"])
        incidents.append(dict(pattern="account_takeover", users=[cust["user"]], device=device, ip=ip,
                              start_ts=float(times[0]), end_ts=float(times[-1]), orders=len(times),
                              largest_previous_amount=round(float(max(before)), 2)))

    for v in range(c.velocity):
        start = rng.uniform(t0 + HOUR, t0 + span - HOUR)
        user = new_user()
        created = start - rng.uniform(1, 72) * HOUR
        device, ip = f"{NS}:dev-{user[4:]}", next_ip()
        cards = [f"{NS}:card-vel-{v}-{k}" for k in range(int(rng.integers(2, 6)))]
        n = int(rng.integers(8, 21))
        times = np.sort(start + rng.uniform(0, rng.uniform(10, 40) * MINUTE, n))
        for j, ts in enumerate(times):
            price = round(float(rng.lognormal(np.log(90.0), 0.3)), 2)
            add(ts, user, created, device, ip, cards[j % len(cards)],
                lines([price], [f"{NS}:item-{int(rng.integers(len(pool)))}"], [1]), "velocity")
        incidents.append(dict(pattern="velocity", users=[user], cards=cards, device=device,
                              start_ts=float(times[0]), end_ts=float(times[-1]), orders=n))

    raw.sort(key=lambda r: r[0])  # stable: ties keep generation order
    orders, labels, pattern = [], [], {}
    for n, (ts, values, pat) in enumerate(raw):
        order = Order(order_id=f"{NS}-fraud-{n}", ts=ts, **values)
        orders.append(order)
        pattern[order.order_id] = pat
        labels.append(FraudLabel(order_id=order.order_id, is_fraud=pat != "legit", ts=ts + c.label_delay_s,
                                 source=f"{NS}:{pat}"))
    ids_by_incident = {}
    for order in orders:
        ids_by_incident.setdefault((pattern[order.order_id], order.user_id), []).append(order.order_id)
    for inc in incidents:  # attach order ids (takeover: only the victim's orders of that pattern)
        inc["order_ids"] = [oid for u in inc["users"] for oid in ids_by_incident.get((inc["pattern"], u), [])]
    return SyntheticFraud(orders, labels, pattern, incidents, config={"seed": seed, **asdict(c)})


# --- demand -----------------------------------------------------------------------------

@dataclass(frozen=True)
class DemandConfig:
    items: int = 10
    days: float = 28.0
    change_every_days: float = 2.0
    price_multiplier: tuple[float, float] = (0.75, 1.25)
    elasticity: tuple[float, float] = (-3.0, -0.5)
    base_orders_per_day: tuple[float, float] = (20.0, 80.0)
    base_price: tuple[float, float] = (5.0, 50.0)
    cost_ratio: float = 0.6
    stock: int = 10_000
    buyers: int = 5_000
    start_ts: float = BASE_TS


@dataclass
class SyntheticDemand:
    catalog: list[CatalogItem]  # time-sorted price changes
    orders: list[Order]  # time-sorted, one unit each
    truth: dict[str, dict]  # item id -> {"base_price", "base_orders_per_day", "elasticity"}
    config: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"items": len(self.truth), "price_changes": len(self.catalog), "orders": len(self.orders),
                "truth": self.truth, "config": self.config}


def demand(seed: int, config: DemandConfig = DemandConfig()) -> SyntheticDemand:
    """Price changes and orders following ``q = q0 * (p / p0) ** e`` per item."""
    rng = np.random.default_rng([seed, 2])
    c = config
    catalog, raw, truth = [], [], {}
    segments = int(np.ceil(c.days / c.change_every_days))
    for k in range(c.items):
        item = f"{NS}:ditem-{k}"
        p0 = round(float(rng.uniform(*c.base_price)), 2)
        q0 = float(rng.uniform(*c.base_orders_per_day))
        e = round(float(rng.uniform(*c.elasticity)), 2)
        truth[item] = {"base_price": p0, "base_orders_per_day": round(q0, 3), "elasticity": e}
        cost = round(c.cost_ratio * p0, 2)
        for s in range(segments):
            start = c.start_ts + s * c.change_every_days * DAY
            length = min(c.change_every_days, c.days - s * c.change_every_days) * DAY
            price = p0 if s == 0 else round(p0 * float(rng.uniform(*c.price_multiplier)), 2)
            catalog.append(CatalogItem(item_id=item, price=price, cost=cost, stock=c.stock,
                                       category_id=f"{NS}:cat-{k % 3}", ts=start))
            rate = q0 * (price / p0) ** e / DAY
            for ts in np.sort(rng.uniform(start + 1e-3, start + length, rng.poisson(rate * length))):
                raw.append((round(float(ts), 3), item, price, f"{NS}:buyer-{int(rng.integers(c.buyers))}"))
    catalog.sort(key=lambda ci: ci.ts)
    raw.sort(key=lambda r: r[0])
    orders = [Order(order_id=f"{NS}-demand-{n}", user_id=user, items=[OrderLine(item_id=item, price=price, quantity=1)],
                    amount=price, currency="GBP", ts=ts)
              for n, (ts, item, price, user) in enumerate(raw)]
    return SyntheticDemand(catalog, orders, truth, config={"seed": seed, **asdict(c)})


def fit_elasticity(data: SyntheticDemand) -> dict[str, Optional[float]]:
    """Least-squares slope of log(orders per day) on log(price) per item over its price
    segments: an independent check that the orders follow the stated curve."""
    end = data.config.get("start_ts", BASE_TS) + data.config.get("days", 0.0) * DAY
    changes: dict[str, list[CatalogItem]] = {}
    for ci in data.catalog:
        changes.setdefault(ci.item_id, []).append(ci)
    times: dict[str, list[float]] = {}
    for o in data.orders:
        times.setdefault(o.items[0].item_id, []).append(o.ts)
    out: dict[str, Optional[float]] = {}
    for item_id, mine in changes.items():
        bounds = [ci.ts for ci in mine] + [end]
        idx = np.searchsorted(np.asarray(times.get(item_id, []), dtype=float), bounds)
        xs, ys = [], []
        for ci, start, stop, lo, hi in zip(mine, bounds[:-1], bounds[1:], idx[:-1], idx[1:]):
            if hi > lo and stop > start:
                xs.append(np.log(ci.price))
                ys.append(np.log((hi - lo) / ((stop - start) / DAY)))
        out[item_id] = float(np.polyfit(xs, ys, 1)[0]) if len(set(xs)) >= 2 else None
    return out
