"""Replay of any CSV / JSONL / Parquet file given a column mapping (replay/files.py).

Real data: the OTTO fixture (../shared/data/otto-fixture, CC BY 4.0) and the Online Retail
file (cross-checked against the dedicated reader). Hand-made: tests/fixtures/replay_*.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from replay import sources
from replay.__main__ import main as replay_main
from replay.files import FileSource, MappingError, load_mapping, read_file
from replay.scenario import Source, merge
from streamscore.events import Click, FraudLabel, Order, OrderLine, parse
from streamscore.settings import Settings

DATA = Path(Settings().data_dir)
OTTO = DATA / "otto-fixture" / "otto_train_fixture_events.csv.gz"
FIXTURES = Path(__file__).parent / "fixtures"
SHOP = FIXTURES / "replay_shop.mapping.yaml"
OTTO_ACTIONS = {"clicks": "view", "carts": "add_to_cart", "orders": "purchase"}
OTTO_ARGS = ["--file", str(OTTO), "--topic", "clicks", "--map", "user_id=session,item_id=aid,action=type,ts=ts",
             "--values", "action=clicks:view;carts:add_to_cart;orders:purchase", "--time-unit", "ms",
             "--namespace", "otto", "--sort"]


def _utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def _otto_source(**kw) -> FileSource:
    args = dict(file=str(OTTO), topic="clicks", namespace="otto", sort=True, time={"unit": "ms"},
                map={"user_id": "session", "item_id": "aid", "action": "type", "ts": "ts"},
                values={"action": dict(OTTO_ACTIONS)})
    return FileSource(**{**args, **kw})


# --- OTTO (real, CC BY 4.0) --------------------------------------------------------------

def test_otto_clicks_match_the_file():
    clicks = list(read_file(_otto_source()))
    raw = pd.read_csv(OTTO)
    assert len(clicks) == len(raw) == 862 and all(isinstance(c, Click) for c in clicks)
    assert all(a.ts <= b.ts for a, b in zip(clicks, clicks[1:]))  # sorted (the file is by session)
    assert Counter(c.action for c in clicks) == Counter({"view": 800, "add_to_cart": 52, "purchase": 10})
    assert len({c.user_id for c in clicks}) == 20 and len({c.item_id for c in clicks}) == 510
    for c in clicks:  # every click is its row: event_id = "otto-<row>"
        row = raw.loc[int(c.event_id.removeprefix("otto-"))]
        assert c.user_id == f"otto:{row.session}" and c.item_id == f"otto:{row.aid}"
        assert c.action == OTTO_ACTIONS[row.type] and c.ts == row.ts / 1000
    assert clicks[0].ts == raw.ts.min() / 1000 == _utc("2022-07-31 22:00:00.025")
    # stable sort: equal times keep file order
    same = [c for c in clicks if c.ts == clicks[0].ts]
    assert [c.event_id for c in same] == sorted((c.event_id for c in same), key=lambda e: int(e.split("-")[1]))


def test_otto_unsorted_file_is_refused_without_sort():
    with pytest.raises(MappingError, match="not sorted by time"):
        list(read_file(_otto_source(sort=False)))


def test_otto_value_map_can_skip_rows():
    counts = Counter()
    src = _otto_source()
    src.values["action"]["carts"] = None  # carts -> skipped, counted
    clicks = list(read_file(src, counts=counts))
    assert len(clicks) == 810 and counts == Counter({"skipped_action_carts": 52})


def test_cli_dry_run_of_otto_and_yaml_mapping_agree(tmp_path, capsys):
    assert replay_main([*OTTO_ARGS, "--start-ts", "1700000000", "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["topics"] == {"clicks": {"events": 862, "keys": 20, "first_ts": 1_700_000_000.0,
                                        "last_ts": pytest.approx(1_700_000_000.0 + 2_419_197.86)}}
    mapping = tmp_path / "otto.json"
    mapping.write_text(json.dumps({"file": str(OTTO), "topic": "clicks", "namespace": "otto", "sort": True,
                                   "time": {"unit": "ms"}, "values": {"action": OTTO_ACTIONS},
                                   "map": {"user_id": "session", "item_id": "aid", "action": "type", "ts": "ts"}}))
    from_flags = [e.to_bytes() for e in read_file(_otto_source())]
    (from_file,) = load_mapping(mapping)
    assert [e.to_bytes() for e in read_file(from_file)] == from_flags


# --- hand-made JSONL ---------------------------------------------------------------------

def test_shop_fixture_orders_lines_nested_fields_and_labels():
    orders_src, labels_src = load_mapping(SHOP)
    orders = list(read_file(orders_src))
    assert orders == [
        Order(order_id="fx-A1", user_id="fx:7", currency="EUR", amount=15.0, device_id="d-1",
              items=[OrderLine(item_id="fx:X", price=2.5, quantity=2),
                     OrderLine(item_id="fx:Y", price=10.0, quantity=1)],
              shipping_country="DE", account_created_at=_utc("2023-05-01 10:00:00"), ts=_utc("2024-03-01 09:00:00")),
        Order(order_id="fx-B2", user_id="fx:8", currency="EUR", amount=10.0,
              items=[OrderLine(item_id="fx:X", price=2.5, quantity=4)], ts=_utc("2024-03-01 09:05:30")),
        Order(order_id="fx-C3", user_id="fx:7", currency="EUR", amount=99.99, device_id="d-2",
              items=[OrderLine(item_id="fx:Z", price=99.99, quantity=1)], shipping_country="DE",
              account_created_at=_utc("2023-05-01 10:00:00"), ts=_utc("2024-03-01 10:00:00")),  # naive = UTC
    ]
    labels = list(read_file(labels_src))
    feed = "chargeback-feed"
    assert labels == [FraudLabel(order_id="fx-A1", is_fraud=False, ts=_utc("2024-03-02 09:00:00"), source=feed),
                      FraudLabel(order_id="fx-C3", is_fraud=True, ts=_utc("2024-03-02 10:00:00"), source=feed)]
    # one clock: after the shift every label is still exactly one day after its order
    merged = list(merge([Source("orders", read_file(orders_src), clock=orders_src.clock, namespace="fx"),
                         Source("fraud-labels", read_file(labels_src), clock=labels_src.clock, namespace="fx")],
                        start_ts=1_700_000_000.0))
    shifted = {e.order_id: e.ts for t, _, e in merged if t == "orders"}
    assert [(t, k) for t, k, _ in merged] == [("orders", "fx:7"), ("orders", "fx:8"), ("orders", "fx:7"),
                                              ("fraud-labels", "fx-A1"), ("fraud-labels", "fx-C3")]
    assert all(e.ts - shifted[e.order_id] == 86_400 for t, _, e in merged if t == "fraud-labels")
    assert merged[0][2].ts == 1_700_000_000.0


def test_cli_mapping_dry_run_validates_as_a_consumer(capsys):
    assert replay_main(["--mapping", str(SHOP), "--keep-times", "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {t: v["events"] for t, v in out["topics"].items()} == {"orders": 3, "fraud-labels": 2}
    assert out["topics"]["orders"]["first_ts"] == _utc("2024-03-01 09:00:00")  # --keep-times: no shift


def test_parquet_and_csv_give_the_same_events(tmp_path):
    rows = [json.loads(line) for line in (FIXTURES / "replay_orders.jsonl").read_text().splitlines() if line.strip()]
    flat = pd.DataFrame([{"order": r["order"], "customer_id": r["customer"]["id"], "sku": r["sku"],
                          "unit_price": r["unit_price"], "qty": r["qty"], "at": r["at"]} for r in rows])
    flat.to_parquet(tmp_path / "o.parquet", index=False)
    flat.to_csv(tmp_path / "o.csv.gz", index=False)
    common = dict(topic="orders", namespace="fx", time={"unit": "iso"}, const={"currency": "EUR"},
                  map={"order_id": "order", "user_id": "customer_id", "ts": "at"},
                  lines={"item_id": "sku", "price": "unit_price", "quantity": "qty"})
    pq_orders = list(read_file(FileSource(file=str(tmp_path / "o.parquet"), **common)))
    csv_orders = list(read_file(FileSource(file=str(tmp_path / "o.csv.gz"), **common)))
    assert [o.to_bytes() for o in pq_orders] == [o.to_bytes() for o in csv_orders]
    assert [(o.order_id, o.user_id, o.amount) for o in pq_orders] == [("fx-A1", "fx:7", 15.0), ("fx-B2", "fx:8", 10.0),
                                                                       ("fx-C3", "fx:7", 99.99)]


def test_invalid_rows_fail_or_are_skipped_and_counted(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"u": "a", "i": "x", "t": 1700000000}\n{"u": "b", "i": "", "t": 1700000001}\n'
                 '{"u": "c", "i": "y", "t": "soon"}\n{"u": "d", "i": "z", "t": 1700000002}\n')
    src = dict(file=str(f), topic="clicks", map={"user_id": "u", "item_id": "i", "ts": "t"}, const={"action": "view"})
    with pytest.raises(MappingError, match=r"row 1: item_id: Field required"):
        list(read_file(FileSource(**src)))
    counts, examples = Counter(), []
    got = list(read_file(FileSource(**src, on_invalid="skip"), counts=counts, examples=examples))
    assert [c.user_id for c in got] == ["a", "d"] and [c.event_id for c in got] == ["0", "3"]
    assert counts == Counter({"invalid_rows": 2}) and len(examples) == 2 and "row 2" in examples[1]
    for c in got:
        parse(Click, c.to_bytes(), 1 << 16)


def test_mapping_errors_are_caught_before_reading(tmp_path):
    with pytest.raises(MappingError, match="unknown field 'colour'"):
        FileSource(file="x.csv", topic="clicks", map={"colour": "c", "user_id": "u", "item_id": "i", "action": "a",
                                                       "ts": "t"})
    with pytest.raises(MappingError, match="required field"):
        FileSource(file="x.csv", topic="orders", map={"order_id": "o", "ts": "t"})
    with pytest.raises(MappingError, match="format"):
        FileSource(file="x.xlsx", topic="clicks", map={"user_id": "u", "item_id": "i", "action": "a", "ts": "t"})
    with pytest.raises(MappingError, match="not in the header"):
        list(read_file(FileSource(file=str(OTTO), topic="clicks", map={"user_id": "sess", "item_id": "aid",
                                                                          "action": "type", "ts": "ts"})))
    lines = tmp_path / "split.csv"
    lines.write_text("o,u,i,p,q,t\n1,a,x,1,1,1700000010\n2,a,x,1,1,1700000011\n1,a,y,1,1,1700000012\n")
    src = dict(file=str(lines), topic="orders", map={"order_id": "o", "user_id": "u", "ts": "t"},
               lines={"item_id": "i", "price": "p", "quantity": "q"}, time={"unit": "s"})
    with pytest.raises(MappingError, match="not contiguous"):
        list(read_file(FileSource(**src)))
    assert replay_main(["--file", str(lines), "--topic", "orders", "--map", "order_id=o,ts=t", "--dry-run"]) == 2


def test_generic_mapping_of_online_retail_equals_the_dedicated_reader():
    """The same real invoices through the generic path and through replay.sources agree."""
    src = FileSource(file=str(DATA / sources.RETAIL), topic="orders", namespace="or", on_invalid="skip",
                     map={"order_id": "InvoiceNo", "user_id": "CustomerID", "ts": "InvoiceDate",
                          "shipping_country": "Country"},
                     lines={"item_id": "StockCode", "price": "UnitPrice", "quantity": "Quantity"},
                     const={"currency": "GBP"}, time={"format": "%Y-%m-%d %H:%M:%S"})
    generic = {o.order_id: o for o in read_file(src, limit=400)}
    dedicated = {o.order_id: o for o in sources.online_retail_orders(DATA, limit=400)}
    both = set(generic) & set(dedicated)
    assert len(both) >= 250  # the generic path drops invoices with an invalid line (or no customer)
    # the dedicated reader also leaves out free (price 0) lines, which are valid order lines
    paid = {k: generic[k].model_copy(update={"items": [li for li in generic[k].items if li.price > 0]}) for k in both}
    assert all(paid[k] == dedicated[k] for k in both)
