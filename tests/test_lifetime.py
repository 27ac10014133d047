"""Long-horizon entity signals over a real Valkey (point in time, labels from their arrival, memory
bound), the same values as the backtest's pandas reference on real data, the backtest on a slice,
and the one metric module."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pandas as pd
import pytest

from conftest import with_feature_client
from features.client import FeatureClient
from features.definitions import FRAUD_VECTOR, LABEL_DELAY_S, LIFETIME_CAP, REGISTRY, lifetime_retention_s
from features.snapshot import order_snapshots, temporary_redis
from models import backtest, scores
from replay.sources import fraud_labels, fraud_orders
from streamscore.events import Order
from streamscore.settings import Settings

DAY = 86400


@pytest.fixture(scope="module")
def redis_url():
    with temporary_redis() as url:
        yield url


def _order(oid, ts, user, device="d1", ip=None, card=None):
    return Order(order_id=oid, user_id=user, amount=10.0, device_id=device, ip=ip, payment_fingerprint=card, ts=ts)


def test_registry_gives_each_long_horizon_feature_its_retention():
    life = [f for f in REGISTRY.values() if f.name.endswith(("_ever", "_first_seen_age_log_s", "_fraud_linked"))]
    assert len(life) == 12 and all(f.retention_s == lifetime_retention_s() > 30 * DAY and f.window_s is None for f in life)
    assert [n for n in FRAUD_VECTOR if n in backtest.LIFETIME] == backtest.LIFETIME


def test_point_in_time_and_labels_count_from_their_arrival(redis_url):
    t = 1.6e9

    async def scenario(c: FeatureClient):
        a = await c.apply_orders([_order("a", t, "u1", card="c1")])
        # 40 days later (beyond every 30-day window): the device remembers u1
        b = await c.apply_orders([_order("b", t + 40 * DAY, "u2", card="c1")])
        # a's fraud label arrives at t + 41 d: b (earlier) keeps its features, c (later) sees the link
        await c.join_labels({"a": True}, at={"a": t + 41 * DAY})
        b_again = await c.apply_orders([_order("b", t + 40 * DAY, "u2", card="c1")])  # redelivery
        probe_before = await c.read_order(_order("p", t + 41 * DAY, "u3"))  # at the label's own ts: not yet
        cc = await c.apply_orders([_order("c", t + 42 * DAY, "u3", card="c1")])
        late = await c.apply_orders([_order("z", t + 20 * DAY, "u9")])  # out of order: sees only a
        # a label that comes before its order is recorded links the order's entities when it is
        await c.join_labels({"e": True}, at={"e": t + 50 * DAY})
        await c.apply_orders([_order("e", t + 49 * DAY, "u5", device="d2")])
        d2 = await c.read_order(_order("q", t + 51 * DAY, "u6", device="d2"))
        d2_before = await c.read_order(_order("q", t + 50 * DAY - 1, "u6", device="d2"))
        return a[0], b[0], b_again[0], probe_before, cc[0], late[0], d2, d2_before

    a, b, b_again, probe, c, late, d2, d2_before = asyncio.run(with_feature_client(redis_url, scenario))
    assert (a["device_users_ever"], a["device_orders_ever"], a["device_first_seen_age_log_s"]) == (0, 0, 0)
    assert b["device_users_30d"] == 0 and b["device_users_ever"] == 1 and b["device_orders_ever"] == 1
    assert b["device_first_seen_age_log_s"] == pytest.approx(math.log1p(40 * DAY))
    assert b["card_users_ever"] == 1 and b["device_fraud_linked"] == 0
    assert b_again == b  # the label arrived after b: b's features do not change
    assert probe["device_fraud_linked"] == 0  # strictly before: a read at the label's ts does not see it
    assert c["device_fraud_linked"] == c["card_fraud_linked"] == 1 and c["device_users_ever"] == 2
    assert c["ip_fraud_linked"] == 0 and c["device_orders_ever"] == 2
    assert late["device_users_ever"] == 1 and late["device_fraud_linked"] == 0
    assert d2["device_fraud_linked"] == 1 and d2_before["device_fraud_linked"] == 0


def test_memory_per_entity_is_bounded(redis_url):
    t = 1.7e9
    n = 200  # far beyond the cap: a device shared by 200 accounts, each with an order and a fraud label

    async def scenario(c: FeatureClient):
        orders = [_order(f"o{i}", t + i * 60, f"user-{i}", device="busy") for i in range(n)]
        await c.apply_orders(orders)
        await c.join_labels({o.order_id: True for o in orders}, at={o.order_id: o.ts + DAY for o in orders})
        h = c.keys.pseudo("device", "busy")
        sizes = {w: await c.redis.memory_usage(c.keys.entity_lifetime("device", h, w)) for w in ("lusers", "lorders", "fraud")}
        cards = {w: await c.redis.zcard(c.keys.entity_lifetime("device", h, w)) for w in sizes}
        ttl = await c.redis.ttl(c.keys.entity_lifetime("device", h, "lusers"))
        one = await c.read_order(_order("x", t + n * 60 + 2 * DAY, "new", device="busy"))
        return sizes, cards, ttl, one

    sizes, cards, ttl, one = asyncio.run(with_feature_client(redis_url, scenario))
    total = sum(sizes.values())
    print(f"\nlong-horizon memory per entity at the cap ({LIFETIME_CAP}): {sizes} = {total} bytes")
    assert set(cards.values()) == {LIFETIME_CAP}
    assert total < 4096  # listpack-encoded sets: ~1 KB each at the cap, whatever the entity's history
    assert lifetime_retention_s() - 60 <= ttl <= lifetime_retention_s()
    assert one["device_users_ever"] == one["device_orders_ever"] == LIFETIME_CAP and one["device_fraud_linked"] == 1


def test_online_store_equals_the_backtest_reference_on_real_data():
    settings = Settings.from_env()
    n = 4000
    with temporary_redis() as url:
        online = asyncio.run(order_snapshots(fraud_orders(settings.data_dir, limit=n), Settings.from_env({}, redis_url=url),
                                             fraud_labels(settings.data_dir, delay_s=LABEL_DELAY_S, limit=n)))
    ref = backtest.order_frame(settings.data_dir)
    ref = ref[ref.order_id.isin(set(online.order_id))].reset_index(drop=True)
    ref = pd.concat([ref[["order_id"]], backtest.lifetime_reference(ref)], axis=1).set_index("order_id").loc[online.order_id]
    for col in backtest.LIFETIME:
        np.testing.assert_allclose(online[col].to_numpy(), ref[col].to_numpy(), atol=1e-9, err_msg=col)
    assert (online["device_users_ever"] > 0).sum() > 100 and online["device_fraud_linked"].sum() > 10


def test_backtest_on_a_slice():
    result = backtest.run(quick=True, models=("logistic_regression", "gradient_boosting"), boot=20)
    assert result["folds"] and set(result["pooled"]) == {f"{m}/{s}" for m in ("logistic_regression", "gradient_boosting")
                                                          for s in backtest.FEATURE_SETS}
    r = result["pooled"]["gradient_boosting/lifetime"]
    assert 0 <= r["pr_auc"] <= 1 and r["pr_auc_ci95"][0] <= r["pr_auc"] <= r["pr_auc_ci95"][1]
    assert "| pooled |" in backtest.table(result)


def test_one_metric_implementation_matches_sklearn_and_the_edge_cases():
    from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

    from evaluation import common as ecommon
    from models import common as mcommon, metrics
    from replay import evaluate as rev

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300), 2)  # ties
    for fn in (scores.average_precision, metrics.average_precision, mcommon.average_precision, ecommon.average_precision,
               rev.average_precision):
        assert fn(list(y), list(s)) == pytest.approx(average_precision_score(y, s))
    for fn in (scores.roc_auc, metrics.roc_auc, mcommon.roc_auc, rev.roc_auc):
        assert fn(list(y), list(s)) == pytest.approx(roc_auc_score(y, s))
    assert metrics.log_loss(y, s) == pytest.approx(log_loss(y, np.clip(s, 1e-7, 1 - 1e-7)))
    assert ecommon.log_loss(y, s) == pytest.approx(log_loss(y, np.clip(s, 1e-6, 1 - 1e-6)))
    # one class: NaN for the numpy callers, None for the live report
    assert math.isnan(scores.roc_auc([1, 1], [0.1, 0.2])) and math.isnan(scores.average_precision([0, 0], [0.1, 0.2]))
    assert rev.roc_auc([0, 0], [0.1, 0.2]) is None and rev.average_precision([0, 0], [0.1, 0.2]) is None
    assert math.isfinite(scores.log_loss([1, 1], [0.9, 0.8]))


def test_a_backfill_rebuilds_the_fraud_links_the_offline_snapshot_has():
    """``replay.backfill`` over real purchases and their labels (+14 days, in one event-time ordered
    stream) into an empty Valkey: every order's long-horizon values, read back as of its time, equal the
    offline snapshot's (features.snapshot), the fraud links among them; without the labels they would not."""
    from replay.backfill import backfill

    settings = Settings.from_env()
    n = 4000
    orders = list(fraud_orders(settings.data_dir, limit=n))
    labels = list(fraud_labels(settings.data_dir, delay_s=LABEL_DELAY_S, limit=n))
    stream = sorted([(lab.ts, 0, ("fraud-labels", lab.order_id, lab)) for lab in labels]
                    + [(o.ts, 1, ("orders", o.user_id, o)) for o in orders], key=lambda e: e[:2])
    with temporary_redis() as url:
        offline = asyncio.run(order_snapshots(orders, Settings.from_env({}, redis_url=url), labels)).set_index("order_id")

    async def read_back(url):
        client = FeatureClient.connect(Settings.from_env({}, redis_url=url))
        try:
            return {o.order_id: await client.read_order(o) for o in orders}
        finally:
            await client.close()

    def rebuilt(events):
        with temporary_redis() as url:
            result = asyncio.run(backfill([e for *_, e in events], Settings.from_env({}, redis_url=url), batch=300))
            return result, asyncio.run(read_back(url))

    result, online = rebuilt(stream)
    frauds = sum(lab.is_fraud for lab in labels)
    assert result["applied"] == {"orders": n, "fraud_labels": frauds}
    assert result["ignored"] == {"legitimate_labels": n - frauds}
    for col in backtest.LIFETIME:
        live = np.array([online[o.order_id][col] for o in orders])
        np.testing.assert_allclose(live, offline.loc[[o.order_id for o in orders], col].to_numpy(), atol=1e-9,
                                   err_msg=col)
    linked = sum(online[o.order_id]["device_fraud_linked"] for o in orders)
    assert linked == offline["device_fraud_linked"].sum() > 10
    _, unlabelled = rebuilt([e for e in stream if e[1] == 1])  # orders only: no links (what a backfill did before)
    assert sum(unlabelled[o.order_id]["device_fraud_linked"] for o in orders) == 0
