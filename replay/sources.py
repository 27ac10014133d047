"""Dataset readers: each yields the typed events of one real dataset in event-time order.

Id scheme, so that datasets never collide once merged: entity ids (users, items,
categories) are ``"<ns>:<original id>"``; record ids (``event_id``, ``order_id``) are
``"<ns>-<n>"`` where ``n`` is the 0-based data row (Taobao, fraud) or the invoice number
(Online Retail). Namespaces: ``tb`` Taobao, ``or`` Online Retail, ``ef`` e-commerce fraud.

Times become Unix seconds UTC floats. ``limit`` counts yielded events. Readers take an
optional ``counts`` Counter that they fill with what they skipped and why.
"""

from __future__ import annotations

import calendar
import csv
import functools
import gzip
import ipaddress
import math
import time
from collections import Counter
from pathlib import Path
from typing import Iterator, Optional

import pandas as pd

from streamscore.events import MAX_COST_TO_PRICE, CatalogItem, Click, FraudLabel, Order, OrderLine

TAOBAO = "taobao-userbehavior-sample/UserBehavior_first96k.csv.gz"
RETAIL = "online-retail-uci/online_retail_2010-12-01_to_2011-11-09.csv.gz"
FRAUD = "ecommerce-fraud/fraud_data_2015-01_to_09.csv.gz"

# Taobao behaviour -> Click.action. "fav" (add to favourites) has no Click action: skipped.
TAOBAO_ACTIONS = {"pv": "view", "cart": "add_to_cart", "buy": "purchase"}

MAX_ORDER_LINES = 1000  # Order.items max_length in streamscore.events
DEFAULT_LABEL_DELAY_S = 3600.0  # demo default; real chargebacks arrive days to weeks later

# ASSUMPTIONS of the derived catalog (the data has no cost or stock):
CATALOG_COST_RATIO = 0.6  # cost = 0.6 * the first price seen for the item, fixed thereafter,
# but never above MAX_COST_TO_PRICE * the current price (the contract's cost_above_price rule): one
# StockCode's price varies up to 41x in Online Retail (pack vs single, damaged stock), so a cost
# frozen at 0.6 x its first price reached 24.8 x a later price (54 of 153,454 price changes > 10x).
CATALOG_STOCK = 10_000  # constant stock
# Stock codes that are services/fees, not products: kept in orders, left out of the catalog.
RETAIL_SERVICE_CODES = frozenset(
    {"POST", "DOT", "M", "m", "C2", "BANK CHARGES", "AMAZONFEE", "S", "D", "B", "CRUK"})


def _open_csv(data_dir, rel: str) -> Iterator[dict]:
    with gzip.open(Path(data_dir) / rel, "rt", encoding="utf-8", newline="") as fh:
        yield from csv.DictReader(fh)


@functools.lru_cache(maxsize=4096)
def _utc_seconds(text: str, fmt: str) -> float:
    """Naive 'YYYY-MM-DD HH:MM[:SS]' read as UTC -> Unix seconds."""
    return float(calendar.timegm(time.strptime(text, fmt)))


def _since(since) -> Optional[float]:
    if since is None or isinstance(since, (int, float)):
        return since
    return pd.Timestamp(since, tz="UTC").timestamp()


def _check_order(prev: float, ts: float, where: str) -> None:
    if ts < prev:
        raise ValueError(f"{where}: time goes backwards ({ts} < {prev}); the reader expects a time-sorted file")


def taobao_clicks(data_dir, limit: Optional[int] = None, counts: Optional[Counter] = None) -> Iterator[Click]:
    """Taobao UserBehavior as clicks (streamed; the file is time-sorted).

    pv -> view, cart -> add_to_cart, buy -> purchase; fav is skipped (no such action)
    but keeps its row number, so ``event_id = "tb-<row>"`` is stable whatever is skipped.
    """
    counts = Counter() if counts is None else counts
    n, prev = 0, -math.inf
    for row, r in enumerate(_open_csv(data_dir, TAOBAO)):
        if limit is not None and n >= limit:
            return
        ts = float(r["timestamp"])
        _check_order(prev, ts, f"{TAOBAO} row {row}")
        prev = ts
        action = TAOBAO_ACTIONS.get(r["behavior_type"])
        if action is None:
            counts[f"skipped_{r['behavior_type']}"] += 1
            continue
        yield Click(event_id=f"tb-{row}", user_id=f"tb:{r['user_id']}", item_id=f"tb:{r['item_id']}",
                    category_id=f"tb:{r['category_id']}", action=action, ts=ts)
        n += 1


def _retail_lines(data_dir, counts: Counter) -> Iterator[tuple[str, float, dict]]:
    """Valid sale lines of Online Retail as (invoice, ts, row), in file (= time) order.

    Skips cancellation ('C') and bad-debt adjustment ('A') invoices and lines with
    quantity <= 0 or unit price <= 0, counting each. InvoiceDate is UK local time
    without a zone: it is read AS UTC (up to 1 h off during British Summer Time).
    """
    prev = -math.inf
    for r in _open_csv(data_dir, RETAIL):
        inv = r["InvoiceNo"]
        ts = _utc_seconds(r["InvoiceDate"], "%Y-%m-%d %H:%M:%S")
        _check_order(prev, ts, f"{RETAIL} invoice {inv}")
        prev = ts
        if inv.startswith("C"):
            counts["cancelled_lines"] += 1
        elif inv.startswith("A"):
            counts["adjustment_lines"] += 1
        elif int(r["Quantity"]) <= 0 or float(r["UnitPrice"]) <= 0:
            counts["nonpositive_lines"] += 1
        else:
            yield inv, ts, r


def online_retail_orders(data_dir, limit: Optional[int] = None, counts: Optional[Counter] = None) -> Iterator[Order]:
    """Online Retail invoices as orders (streamed; invoice lines are contiguous in the file).

    One Order per invoice: ``order_id = "or-<InvoiceNo>"``, ts = the invoice's first line
    time (a few invoices span two minutes), amount = sum(price * quantity) of its kept
    lines, currency GBP, shipping_country = Country, user ``"or:<CustomerID>"`` or
    ``"or:guest-<InvoiceNo>"`` when CustomerID is missing. Repeated item lines stay
    separate. Invoices with more than 1000 kept lines (Order.items limit) are skipped
    and counted as ``oversized_invoices``.
    """
    counts = Counter() if counts is None else counts
    n, seen = 0, set()
    cur: Optional[str] = None
    lines: list[dict] = []
    first_ts = 0.0

    def build() -> Optional[Order]:
        if len(lines) > MAX_ORDER_LINES:
            counts["oversized_invoices"] += 1
            counts["oversized_lines"] += len(lines)
            return None
        items = [OrderLine(item_id=f"or:{r['StockCode']}", price=float(r["UnitPrice"]), quantity=int(r["Quantity"]))
                 for r in lines]
        cid, head = lines[0]["CustomerID"], lines[0]
        return Order(order_id=f"or-{cur}", user_id=f"or:{cid}" if cid else f"or:guest-{cur}", items=items,
                     amount=round(sum(i.price * i.quantity for i in items), 4), currency="GBP",
                     shipping_country=head["Country"] or None, ts=first_ts)

    for inv, ts, r in _retail_lines(data_dir, counts):
        if inv != cur:
            if cur is not None and (order := build()) is not None:
                yield order
                n += 1
                if limit is not None and n >= limit:
                    return
            if inv in seen:
                raise ValueError(f"{RETAIL}: invoice {inv} is not contiguous")
            seen.add(inv)
            cur, lines, first_ts = inv, [], ts
        lines.append(r)
    if cur is not None and (limit is None or n < limit) and (order := build()) is not None:
        yield order


def online_retail_catalog(data_dir, limit: Optional[int] = None, until: Optional[float] = None,
                          counts: Optional[Counter] = None) -> Iterator[CatalogItem]:
    """Item prices derived from Online Retail sale lines (streamed).

    Emits a CatalogItem when an item's unit price first appears or differs from its
    previous line's price (``item_id = "or:<StockCode>"``); stops after ``until`` (Unix s).
    ASSUMED, not in the data: cost = 0.6 * first seen price (at most 10 x the current
    price, see ``CATALOG_COST_RATIO``), stock = 10,000.
    Service codes (postage, fees, manual lines) are left out.
    """
    counts = Counter() if counts is None else counts
    last: dict[str, tuple[float, float]] = {}  # item -> (price, cost)
    n = 0
    for _inv, ts, r in _retail_lines(data_dir, counts):
        if until is not None and ts > until:
            return
        code = r["StockCode"]
        if code in RETAIL_SERVICE_CODES:
            counts["service_lines"] += 1
            continue
        price = float(r["UnitPrice"])
        prev = last.get(code)
        if prev is not None and prev[0] == price:
            continue
        cost = prev[1] if prev else round(CATALOG_COST_RATIO * price, 4)
        last[code] = (price, cost)
        yield CatalogItem(item_id=f"or:{code}", price=price, cost=min(cost, round(MAX_COST_TO_PRICE * price, 4)),
                          stock=CATALOG_STOCK, ts=ts)
        n += 1
        if limit is not None and n >= limit:
            return


@functools.lru_cache(maxsize=2)
def _fraud_frame(path: str) -> pd.DataFrame:
    """The fraud file sorted by purchase time (stable: ties keep the original row order)."""
    df = pd.read_csv(path, dtype={"device_id": str})
    df = df.rename(columns={"class": "label"})
    df["row"] = range(len(df))
    for col in ("signup_time", "purchase_time"):
        t = pd.to_datetime(df[col], format="%Y-%m-%d %H:%M", utc=True)
        df[col + "_s"] = (t - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return df.sort_values("purchase_time_s", kind="stable").reset_index(drop=True)


def _fraud_rows(data_dir, limit, since):
    df = _fraud_frame(str(Path(data_dir) / FRAUD))
    since = _since(since)
    if since is not None:
        df = df[df["purchase_time_s"] >= since]
    return df if limit is None else df.head(limit)


def _ip(value) -> Optional[str]:
    """The dataset's float IPv4 (rounded to ~10 significant digits) as a dotted quad."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    n = int(value)
    return str(ipaddress.IPv4Address(n)) if 0 <= n < 2**32 else None


def fraud_orders(data_dir, limit: Optional[int] = None, since=None) -> Iterator[Order]:
    """E-commerce fraud purchases as orders, sorted by purchase time.

    ``order_id = "ef-<row>"`` (0-based row of the original file), user ``"ef:<user_id>"``,
    amount = purchase_value USD, no items (the data has none), account_created_at =
    signup_time. ``since`` (ISO date or Unix s) skips earlier purchases: the first
    ~3,500 purchases (Jan 2015) are a fraud wave, 77% fraud.
    """
    for r in _fraud_rows(data_dir, limit, since).itertuples(index=False):
        yield Order(order_id=f"ef-{r.row}", user_id=f"ef:{r.user_id}", amount=float(r.purchase_value),
                    currency="USD", device_id=r.device_id, ip=_ip(r.ip_address),
                    account_created_at=r.signup_time_s, ts=r.purchase_time_s)


def fraud_labels(data_dir, delay_s: float = DEFAULT_LABEL_DELAY_S, limit: Optional[int] = None,
                 since=None) -> Iterator[FraudLabel]:
    """One label per :func:`fraud_orders` order (same slice), at purchase time + ``delay_s``."""
    for r in _fraud_rows(data_dir, limit, since).itertuples(index=False):
        yield FraudLabel(order_id=f"ef-{r.row}", is_fraud=bool(r.label == 1),
                         ts=r.purchase_time_s + delay_s, source="ecommerce-fraud")
