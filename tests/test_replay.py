"""Replay tool: dataset readers, timeline merge, CLI dry run, and a round trip through a real broker."""

from __future__ import annotations

import ipaddress
import json
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd
import pytest

from replay import sources
from replay.__main__ import main as replay_main
from replay.publish import PublishError, publish
from replay.scenario import Source, demo, merge, shift
from streamscore.events import CatalogItem, Click, FraudLabel, Order, parse
from streamscore.settings import Settings

DATA = Path(Settings().data_dir)
START = 1_700_000_000.0


def _sorted(events) -> bool:
    return all(a.ts <= b.ts for a, b in zip(events, events[1:]))


# --- readers ---------------------------------------------------------------------------

def test_taobao_clicks_slice_matches_file():
    counts = Counter()
    clicks = list(sources.taobao_clicks(DATA, limit=1000, counts=counts))
    raw = pd.read_csv(DATA / sources.TAOBAO, nrows=1200)
    kept = raw[raw.behavior_type != "fav"].head(1000)
    assert len(clicks) == 1000 and all(isinstance(c, Click) for c in clicks)
    assert _sorted(clicks)
    assert [c.event_id for c in clicks] == [f"tb-{i}" for i in kept.index]
    assert Counter(c.action for c in clicks) == Counter(kept.behavior_type.map(sources.TAOBAO_ACTIONS))
    assert counts["skipped_fav"] == (raw.loc[: kept.index[-1]].behavior_type == "fav").sum()
    first = kept.iloc[0]
    assert clicks[0].user_id == f"tb:{first.user_id}" and clicks[0].item_id == f"tb:{first.item_id}"
    assert clicks[0].category_id == f"tb:{first.category_id}" and clicks[0].ts == float(first.timestamp)


def test_online_retail_invoice_536365():
    order = next(sources.online_retail_orders(DATA, limit=1))
    assert order.order_id == "or-536365" and order.user_id == "or:17850"
    assert len(order.items) == 7 and order.items[0].item_id == "or:85123A"
    assert order.items[0].price == 2.55 and order.items[0].quantity == 6
    assert order.amount == pytest.approx(139.12, abs=1e-9)
    assert order.amount == pytest.approx(sum(i.price * i.quantity for i in order.items))
    assert order.currency == "GBP" and order.shipping_country == "United Kingdom"
    assert order.ts == pd.Timestamp("2010-12-01 08:26:00", tz="UTC").timestamp()  # UK local time read as UTC


def test_online_retail_orders_slice_groups_invoices():
    counts = Counter()
    orders = list(sources.online_retail_orders(DATA, limit=300, counts=counts))
    assert len(orders) == 300 and _sorted(orders)
    assert len({o.order_id for o in orders}) == 300
    raw = pd.read_csv(DATA / sources.RETAIL, nrows=20_000, dtype={"InvoiceNo": str, "CustomerID": "Int64"})
    ok = raw[raw.InvoiceNo.str[0].str.isdigit() & (raw.Quantity > 0) & (raw.UnitPrice > 0)]
    amounts = (ok.Quantity * ok.UnitPrice).groupby(ok.InvoiceNo).sum()
    customers = ok.groupby("InvoiceNo").CustomerID.first()
    for o in orders:
        inv = o.order_id.removeprefix("or-")
        assert inv.isdigit()  # no cancellations ('C') or adjustments ('A')
        assert o.amount == pytest.approx(amounts[inv]) == pytest.approx(sum(i.price * i.quantity for i in o.items))
        cid = customers[inv]
        assert o.user_id == (f"or:guest-{inv}" if pd.isna(cid) else f"or:{cid}")
    assert any(o.user_id.startswith("or:guest-") for o in orders)
    last = orders[-1].order_id.removeprefix("or-")
    upto = raw.loc[: raw.index[raw.InvoiceNo == last][-1]]
    assert counts["cancelled_lines"] == upto.InvoiceNo.str.startswith("C").sum() > 0


def test_online_retail_catalog_price_changes():
    items = list(sources.online_retail_catalog(DATA, limit=2000))
    assert len(items) == 2000 and _sorted(items) and all(isinstance(i, CatalogItem) for i in items)
    by_item = defaultdict(list)
    for it in items:
        by_item[it.item_id].append(it)
    for seq in by_item.values():
        assert all(a.price != b.price for a, b in zip(seq, seq[1:]))  # only changes are emitted
        assert {i.cost for i in seq} == {round(sources.CATALOG_COST_RATIO * seq[0].price, 4)}
    assert not any(i.item_id.removeprefix("or:") in sources.RETAIL_SERVICE_CODES for i in items)
    until = items[100].ts
    assert max(i.ts for i in sources.online_retail_catalog(DATA, until=until)) <= until


def test_fraud_orders_and_labels():
    orders = list(sources.fraud_orders(DATA, limit=500))
    labels = list(sources.fraud_labels(DATA, delay_s=900.0, limit=500))
    assert len(orders) == len(labels) == 500 and _sorted(orders) and _sorted(labels)
    assert [o.order_id for o in orders] == [lb.order_id for lb in labels]
    assert all(lb.ts - o.ts == 900.0 for o, lb in zip(orders, labels))
    raw = pd.read_csv(DATA / sources.FRAUD)
    for o, lb in zip(orders, labels):
        r = raw.loc[int(o.order_id.removeprefix("ef-"))]
        assert o.user_id == f"ef:{r.user_id}" and o.amount == r.purchase_value and o.currency == "USD"
        assert o.device_id == r.device_id and o.items == []
        assert o.ts == pd.Timestamp(r.purchase_time, tz="UTC").timestamp()
        assert o.account_created_at == pd.Timestamp(r.signup_time, tz="UTC").timestamp() <= o.ts
        assert lb.is_fraud == (r["class"] == 1)
        assert o.ip == (None if pd.isna(r.ip_address) else str(ipaddress.IPv4Address(int(r.ip_address))))
    assert any(o.ip is None for o in orders) and any(o.ip for o in orders)
    row0 = next(o for o in sources.fraud_orders(DATA) if o.order_id == "ef-0")  # ip 732758368.8
    assert row0.ip == "43.173.1.96"
    later = next(sources.fraud_orders(DATA, since="2015-02-01"))
    assert later.ts >= pd.Timestamp("2015-02-01", tz="UTC").timestamp()


# --- merge -----------------------------------------------------------------------------

def _demo(**kw):
    args = dict(clicks=3000, orders=200, fraud_orders=300, label_delay_s=600.0, catalog=True, start_ts=START)
    return list(demo(DATA, **{**args, **kw}))


def test_demo_is_time_ordered_deterministic_and_complete():
    a, b = _demo(), _demo()
    assert [(t, k, e.to_bytes()) for t, k, e in a] == [(t, k, e.to_bytes()) for t, k, e in b]
    assert all(x[2].ts <= y[2].ts for x, y in zip(a, a[1:]))
    per_topic = Counter(t for t, _, _ in a)
    assert per_topic["clicks"] == 3000 and per_topic["orders"] == 500 and per_topic["fraud-labels"] == 300
    assert per_topic["catalog"] > 0
    assert min(e.ts for _, _, e in a) == START
    for topic, key, ev in a:
        parse(type(ev), ev.to_bytes(), Settings().max_event_bytes)
        if topic in ("clicks", "orders"):
            assert key == ev.user_id
        elif topic == "fraud-labels":
            assert key == ev.order_id
        else:
            assert key == ev.item_id
        assert key[:3] in ("tb:", "or:", "or-", "ef:", "ef-")


def test_time_shift_keeps_relative_gaps_and_all_time_fields():
    merged = _demo()
    originals = {
        "tb": list(sources.taobao_clicks(DATA, limit=3000)),
        "or": list(sources.online_retail_orders(DATA, limit=200)),
        "ef": list(sources.fraud_orders(DATA, limit=300)),
        "ef-labels": list(sources.fraud_labels(DATA, delay_s=600.0, limit=300)),
    }
    shifted = {
        "tb": [e for t, _, e in merged if t == "clicks"],
        "or": [e for t, _, e in merged if t == "orders" and e.order_id.startswith("or-")],
        "ef": [e for t, _, e in merged if t == "orders" and e.order_id.startswith("ef-")],
        "ef-labels": [e for t, _, e in merged if t == "fraud-labels"],
    }
    for name, orig in originals.items():
        new = shifted[name]
        assert len(new) == len(orig)
        offsets = {n.ts - o.ts for o, n in zip(orig, new)}
        assert len(offsets) == 1, name  # one shift per source: every gap kept exactly
    assert originals["tb"][0].ts + (START - originals["tb"][0].ts) == shifted["tb"][0].ts == START
    # fraud orders and labels share a clock: the label delay survives the shift
    orders = {o.order_id: o for o in shifted["ef"]}
    assert all(lb.ts - orders[lb.order_id].ts == 600.0 for lb in shifted["ef-labels"])
    # account_created_at moves with ts
    for o, n in zip(originals["ef"], shifted["ef"]):
        assert n.ts - n.account_created_at == o.ts - o.account_created_at


def test_merge_tie_breaks_checks_and_mapping_form():
    def click(i, ts, ns="tb"):
        return Click(event_id=f"{ns}-{i}", user_id=f"{ns}:u{i}", item_id=f"{ns}:i", action="view", ts=ts)

    a = [click(1, 1.2e9), click(2, 1.2e9 + 5)]
    b = [click(3, 1.0e9), click(4, 1.0e9 + 5)]
    out = list(merge({"x": a, "y": b}, start_ts=START))
    # both sources start at START; at equal times the source listed first wins
    assert [(t, e.event_id, e.ts) for t, _, e in out] == [
        ("x", "tb-1", START), ("y", "tb-3", START), ("x", "tb-2", START + 5), ("y", "tb-4", START + 5)]
    with pytest.raises(ValueError, match="not time-sorted"):
        list(merge({"x": [click(1, START + 5), click(2, START)]}, start_ts=START))
    with pytest.raises(ValueError, match="namespace"):
        list(merge([Source("x", [click(1, START, ns="or")], namespace="tb")], start_ts=START))
    with pytest.raises(ValueError, match="outside"):
        shift(click(1, START), 1e10)
    assert list(merge({"x": []}, start_ts=START)) == []


def test_cli_dry_run_counts_per_topic(capsys):
    rc = replay_main(["--scenario", "demo", "--clicks", "500", "--orders", "50", "--fraud-orders", "40",
                      "--start-ts", str(START), "--dry-run"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    topics = out["topics"]
    assert topics["clicks"]["events"] == 500 and topics["orders"]["events"] == 90
    assert topics["fraud-labels"]["events"] == 40 and "catalog" not in topics
    assert topics["clicks"]["first_ts"] == START
    assert out["skipped"]["skipped_fav"] > 0


def test_progress_line_and_bar():
    from replay.publish import Progress

    p = Progress(sent=500, delivered=480, failed=0, elapsed_s=2.0, total=1500, skipped=500)
    assert p.rate == 250 and p.eta_s == 2.0
    assert "sent 500/1000 (resumed after 500)" in str(p) and "eta 2s" in str(p)
    assert p.bar(10).startswith("replay [#####.....]  50% 500/1,000 250 ev/s")


def test_publish_failure_raises():
    ev = next(sources.fraud_orders(DATA, limit=1))
    with pytest.raises(PublishError) as info:
        publish([("orders", ev.user_id, ev)], "127.0.0.1:1", config={"message.timeout.ms": 500},
                flush_timeout_s=10)
    assert info.value.stats["failed"] == {"orders": 1}


# --- real broker -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bootstrap(stack_settings):
    """The session's local stack broker; every test here uses topics of its own."""
    return stack_settings.kafka_bootstrap


def _create_topics(addr: str, names: list[str], partitions: int = 4) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": addr})  # keep a reference until the futures resolve
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names])
    for f in futures.values():
        f.result(30)


def _consume_all(addr: str, topics: list[str], expected: int, timeout_s: float = 60.0):
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": addr, "group.id": f"replay-test-{uuid.uuid4().hex}",
                  "enable.auto.commit": False})
    meta = c.list_topics(timeout=10).topics
    c.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in meta[t].partitions])
    got, deadline = [], time.monotonic() + timeout_s
    try:
        while len(got) < expected and time.monotonic() < deadline:
            for m in c.consume(1000, timeout=0.5):
                assert m.error() is None, m.error()
                got.append(m)
        for m in c.consume(1000, timeout=1.0):  # anything beyond `expected` is a duplicate
            got.append(m)
    finally:
        c.close()
    return got


MODELS = {"clicks": Click, "orders": Order, "fraud-labels": FraudLabel, "catalog": CatalogItem}


def _event_id(ev) -> str:
    return ev.event_id if isinstance(ev, Click) else ev.order_id


@pytest.mark.stack
def test_publish_round_trip_exactly_once_per_key_order(bootstrap):
    run = uuid.uuid4().hex[:8]
    settings = Settings(topic_clicks=f"clicks-{run}", topic_orders=f"orders-{run}",
                        topic_fraud_labels=f"fraud-labels-{run}", topic_catalog=f"catalog-{run}")
    kinds = {settings.topic_clicks: "clicks", settings.topic_orders: "orders",
             settings.topic_fraud_labels: "fraud-labels", settings.topic_catalog: "catalog"}
    _create_topics(bootstrap, list(kinds))
    events = list(demo(DATA, settings=settings, clicks=5000, orders=300, fraud_orders=1000, catalog=True,
                       start_ts=START))
    lines = []
    stats = publish(events, bootstrap, progress=lines.append, total=len(events))
    print(f"\npublished {stats['sent']} events in {stats['elapsed_s']} s = {stats['events_per_s']} ev/s")
    assert stats["sent"] == len(events) and sum(stats["delivered"].values()) == len(events)
    assert lines and lines[-1].sent == len(events) and lines[-1].eta_s == 0

    got = _consume_all(bootstrap, list(kinds), len(events))
    sent_by_key, got_by_key = defaultdict(list), defaultdict(list)
    for topic, key, ev in events:
        sent_by_key[(topic, key)].append(ev.to_bytes())
    partitions_of_key = defaultdict(set)
    for m in sorted(got, key=lambda m: (m.topic(), m.partition(), m.offset())):
        key = m.key().decode()
        ev = parse(MODELS[kinds[m.topic()]], m.value(), settings.max_event_bytes)
        assert ev.to_bytes() == m.value()
        got_by_key[(m.topic(), key)].append(m.value())
        partitions_of_key[(m.topic(), key)].add(m.partition())
    assert len(got) == len(events)
    ids = Counter((m.topic(), _event_id(parse(MODELS[kinds[m.topic()]], m.value(), 1 << 20)))
                  for m in got if kinds[m.topic()] != "catalog")
    assert max(ids.values()) == 1  # every click, order and label exactly once (catalog: by key below)
    assert got_by_key == sent_by_key  # same events per key, in the same order
    assert all(len(p) == 1 for p in partitions_of_key.values())
    assert len({m.partition() for m in got if m.topic() == settings.topic_clicks}) == 4
    # every message names its replay run and its index in the merged stream
    assert {dict(m.headers())["replay-run"] for m in got} == {stats["run_id"].encode()}
    assert sorted(int(dict(m.headers())["replay-seq"]) for m in got) == list(range(len(events)))


@pytest.mark.stack
def test_publish_pacing_rate_and_speed(bootstrap):
    topic = f"pace-{uuid.uuid4().hex[:8]}"
    _create_topics(bootstrap, [topic])
    clicks = [Click(event_id=f"tb-{i}", user_id="tb:u", item_id="tb:i", action="view", ts=START + 2 * i)
              for i in range(5)]  # 8 s of event time
    t = time.monotonic()
    publish([(topic, c.user_id, c) for c in clicks], bootstrap, speed=16.0)  # -> 0.5 s
    assert 0.45 <= time.monotonic() - t < 3.0
    t = time.monotonic()
    publish([(topic, c.user_id, c) for c in clicks * 10], bootstrap, rate=100.0)  # 50 events -> ~0.49 s
    assert 0.45 <= time.monotonic() - t < 3.0
    assert len(_consume_all(bootstrap, [topic], 55)) == 55
