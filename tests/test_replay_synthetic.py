"""The SYNTHETIC generator (replay/synthetic.py): labelled, seeded, patterns present."""

from __future__ import annotations

import ipaddress
import json
from collections import defaultdict

import pytest

from replay import synthetic as syn
from replay.__main__ import main as replay_main
from streamscore.events import CatalogItem, FraudLabel, Order, parse

SYN_NET = ipaddress.ip_network("198.18.0.0/15")


@pytest.fixture(scope="module")
def fraud():
    return syn.fraud(11, syn.FraudConfig(users=300, days=5, card_testing=4, takeovers=5, velocity=4))


def _bytes(events) -> list[bytes]:
    return [e.to_bytes() for e in events]


def test_fraud_is_reproducible_for_a_seed(fraud):
    again = syn.fraud(11, syn.FraudConfig(users=300, days=5, card_testing=4, takeovers=5, velocity=4))
    assert _bytes(again.orders) == _bytes(fraud.orders) and _bytes(again.labels) == _bytes(fraud.labels)
    assert again.incidents == fraud.incidents
    other = syn.fraud(12, syn.FraudConfig(users=300, days=5, card_testing=4, takeovers=5, velocity=4))
    assert _bytes(other.orders) != _bytes(fraud.orders)


def test_everything_is_labelled_synthetic_and_valid(fraud):
    assert len(fraud.orders) == len(fraud.labels) == len(fraud.pattern) > 300
    for o in fraud.orders:
        parse(Order, o.to_bytes(), 1 << 16)
        assert o.order_id.startswith("syn-fraud-") and o.user_id.startswith("syn:")
        assert o.device_id.startswith("syn:") and o.payment_fingerprint.startswith("syn:")
        assert ipaddress.ip_address(o.ip) in SYN_NET
        assert all(li.item_id.startswith("syn:") for li in o.items)
        assert o.amount == pytest.approx(sum(li.price * li.quantity for li in o.items))
        assert o.account_created_at <= o.ts
    assert all(a.ts <= b.ts for a, b in zip(fraud.orders, fraud.orders[1:]))
    by_id = {o.order_id: o for o in fraud.orders}
    for lb in fraud.labels:
        parse(FraudLabel, lb.to_bytes(), 1 << 16)
        assert lb.source == f"syn:{fraud.pattern[lb.order_id]}"
        assert lb.is_fraud == (fraud.pattern[lb.order_id] != "legit")
        assert lb.ts == by_id[lb.order_id].ts + 3600.0


def test_card_testing_bursts(fraud):
    bursts = [i for i in fraud.incidents if i["pattern"] == "card_testing"]
    assert len(bursts) == 4
    by_id = {o.order_id: o for o in fraud.orders}
    for b in bursts:
        orders = [by_id[i] for i in b["order_ids"]]
        assert len(orders) == b["orders"] >= 12
        assert {o.payment_fingerprint for o in orders} == {b["card"]}  # one card ...
        assert len({o.user_id for o in orders}) >= 3  # ... many accounts, each its own device
        assert len({o.device_id for o in orders}) == len({o.user_id for o in orders})
        assert max(o.ts for o in orders) - min(o.ts for o in orders) <= 600  # within minutes
        assert all(o.amount < 5 for o in orders)  # small amounts
    # and nowhere else does one card serve several users
    users_per_card = defaultdict(set)
    for o in fraud.orders:
        if fraud.pattern[o.order_id] != "card_testing":
            users_per_card[o.payment_fingerprint].add(o.user_id)
    assert max(len(u) for u in users_per_card.values()) == 1


def test_account_takeover(fraud):
    takeovers = [i for i in fraud.incidents if i["pattern"] == "account_takeover"]
    assert len(takeovers) == 5
    for inc in takeovers:
        (user,) = inc["users"]
        history = [o for o in fraud.orders if o.user_id == user]
        first_fraud = min(history, key=lambda o: (fraud.pattern[o.order_id] == "legit", o.ts))
        assert fraud.pattern[first_fraud.order_id] == "account_takeover"
        before = [o for o in history if o.ts < first_fraud.ts]
        assert before and all(fraud.pattern[o.order_id] == "legit" for o in before)  # an old, used account
        assert first_fraud.ts - first_fraud.account_created_at >= 180 * 86400
        assert first_fraud.device_id not in {o.device_id for o in before}  # new device ...
        assert first_fraud.ip not in {o.ip for o in before}  # ... and new IP ...
        assert first_fraud.amount >= 8 * max(o.amount for o in before)  # ... and a large amount
        assert {fraud.pattern[i] for i in inc["order_ids"]} == {"account_takeover"}


def test_velocity_abuse(fraud):
    bursts = [i for i in fraud.incidents if i["pattern"] == "velocity"]
    assert len(bursts) == 4
    by_id = {o.order_id: o for o in fraud.orders}
    for b in bursts:
        orders = [by_id[i] for i in b["order_ids"]]
        assert len(orders) >= 8 and len({o.user_id for o in orders}) == 1
        assert max(o.ts for o in orders) - min(o.ts for o in orders) <= 40 * 60
        assert len({o.payment_fingerprint for o in orders}) >= 2
    legit_per_user_hour = defaultdict(int)
    for o in fraud.orders:
        if fraud.pattern[o.order_id] == "legit":
            legit_per_user_hour[(o.user_id, int(o.ts // 3600))] += 1
    assert max(legit_per_user_hour.values()) < 8  # legitimate customers never look like this


def test_demand_follows_the_stated_elasticities():
    small = syn.DemandConfig(items=2, days=6)
    assert _bytes(syn.demand(5, small).orders) == _bytes(syn.demand(5, small).orders)  # reproducible
    assert _bytes(syn.demand(5, small).catalog) == _bytes(syn.demand(5, small).catalog)
    assert _bytes(syn.demand(6, small).orders) != _bytes(syn.demand(5, small).orders)
    d = syn.demand(5, syn.DemandConfig(items=5, days=100, base_orders_per_day=(60, 120)))
    for ci in d.catalog:
        parse(CatalogItem, ci.to_bytes(), 1 << 16)
        assert ci.item_id.startswith("syn:")
        assert ci.cost == pytest.approx(0.6 * d.truth[ci.item_id]["base_price"], abs=0.01)
    assert all(o.order_id.startswith("syn-demand-") and o.user_id.startswith("syn:") for o in d.orders)
    assert all(a.ts <= b.ts for a, b in zip(d.orders, d.orders[1:]))
    # every order is bought at the price in force at that moment
    changes = defaultdict(list)
    for ci in d.catalog:
        changes[ci.item_id].append((ci.ts, ci.price))
    for o in d.orders[::50]:
        line = o.items[0]
        assert line.price == max((t, p) for t, p in changes[line.item_id] if t <= o.ts)[1]
    fitted = syn.fit_elasticity(d)
    errors = {i: abs(fitted[i] - t["elasticity"]) for i, t in d.truth.items()}
    assert max(errors.values()) < 0.3, errors
    assert len({t["elasticity"] for t in d.truth.values()}) == 5  # distinct curves, not one constant


def test_cli_labels_synthetic_runs(tmp_path, capsys):
    truth = tmp_path / "truth.json"
    rc = replay_main(["--synthetic", "fraud", "--synthetic", "demand", "--seed", "3", "--syn-users", "50",
                      "--syn-days", "2", "--syn-items", "2", "--start-ts", "1700000000", "--dry-run",
                      "--synthetic-truth", str(truth)])
    captured = capsys.readouterr()
    assert rc == 0 and "SYNTHETIC" in captured.err
    out = json.loads(captured.out)
    assert set(out["synthetic"]) == {"fraud", "demand"} and out["synthetic"]["fraud"]["fraud"] > 0
    assert set(out["topics"]) == {"orders", "fraud-labels", "catalog"}  # no scenario: only synthetic
    data = json.loads(truth.read_text())
    assert data["synthetic"] is True and len(data["demand"]["truth"]) == 2
    assert set(data["fraud"]["pattern"].values()) == set(syn.PATTERNS)


def test_evaluation_metrics_match_scikit_learn():
    import numpy as np
    from sklearn.metrics import average_precision_score, roc_auc_score

    from replay.evaluate import average_precision, roc_auc

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500).tolist()
    s = np.round(rng.random(500) * 0.5 + np.array(y) * 0.3, 2).tolist()  # coarse scores: many ties
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s))
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert average_precision([0, 0], [0.1, 0.2]) is None and roc_auc([1, 1], [0.1, 0.2]) is None
