"""Champion / challenger (scorers/challenger.py): shadow scoring, the promotion rule, checkpoints."""

from __future__ import annotations

import asyncio
import json
import math
import random

import pytest

from features.definitions import FRAUD_VECTOR
from monitoring.metrics import Metrics
from scorers.challenger import Challenger
from scorers.fraud import FraudDecider, Score
from streams.fraud import FraudProcessor
from streams.validation import RawMessage
from streamscore.events import FraudLabel, Order
from streamscore.settings import Settings


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def _stream(n: int, seed: int = 1):
    """(x, y, true P(fraud | x)): fraud depends on two of the vector's features."""
    rng = random.Random(seed)
    for _ in range(n):
        x = {"amount_log": rng.gauss(3, 1), "device_users_30d": rng.expovariate(0.5), "noise": rng.gauss(0, 1)}
        p = _sigmoid(2.0 * (x["amount_log"] - 3) + 1.5 * (x["device_users_30d"] - 2) - 1.0)
        yield x, rng.random() < p, p


def _run(c: Challenger, champion, n: int = 1500, seed: int = 1) -> Challenger:
    for x, y, p in _stream(n, seed):
        c.learn(x, y, p_champion=champion(x, p), p_challenger=c.predict(x))
    return c


def test_promotion_fires_when_the_challenger_is_clearly_better():
    c = _run(Challenger(min_labels=500, window=1000), lambda x, p: 0.35)  # a champion that knows only the base rate
    paired = c.paired()
    assert paired["n"] == 1000 and paired["gain"] > 0.05 and paired["t"] > 5
    assert c.should_promote() and c.state() == "promote"
    q = c.quality()
    assert q["challenger"]["roc_auc"] > 0.8 > q["champion"]["roc_auc"]  # a constant scores AUC 0.5
    assert q["challenger"]["log_loss"] < q["champion"]["log_loss"]


def test_no_promotion_against_a_better_or_equal_champion_or_too_early():
    better = _run(Challenger(min_labels=500, window=1000), lambda x, p: p)  # the champion knows the true P
    assert better.paired()["gain"] < 0 and not better.should_promote() and better.state() == "hold"

    twin = Challenger(min_labels=200, window=500)  # champion's score = the challenger's own: no gain at all
    for x, y, _ in _stream(600):
        p = twin.predict(x)
        twin.learn(x, y, p_champion=p, p_challenger=p)
    assert twin.paired()["gain"] == 0 and not twin.should_promote()

    early = _run(Challenger(min_labels=500, window=1000), lambda x, p: 0.35, n=300)  # clearly better, too few labels
    assert early.paired()["gain"] > 0 and not early.should_promote() and early.state() == "collecting"

    small = _run(Challenger(min_labels=500, window=1000, margin=0.5), lambda x, p: 0.35)  # gain below the margin
    assert 0 < small.paired()["gain"] < 0.5 and not small.should_promote()


def test_checkpoint_round_trip_predicts_and_judges_the_same():
    c = _run(Challenger(min_labels=300, window=500), lambda x, p: 0.35, n=800)
    restored = Challenger.from_bytes(c.to_bytes())
    probe = [x for x, _, _ in _stream(200, seed=9)]
    assert [restored.predict(x) for x in probe] == [c.predict(x) for x in probe]
    assert restored.paired() == c.paired() and restored.quality() == c.quality()
    assert restored.state() == c.state()
    for x, y, _ in _stream(100, seed=5):  # and they keep learning identically
        for m in (c, restored):
            m.learn(x, y, p_champion=0.35, p_challenger=m.predict(x))
    assert [restored.predict(x) for x in probe] == [c.predict(x) for x in probe]
    with pytest.raises(TypeError):
        Challenger.from_bytes(__import__("pickle").dumps({"not": "a challenger"}))


def test_set_rule_widens_the_paired_window():
    c = Challenger(min_labels=10, window=20)
    c.set_rule(50, 0.02, 3.0)
    assert c.diffs.maxlen == 50 and (c.min_labels, c.margin, c.z) == (50, 0.02, 3.0)


# --- through the worker's processors ------------------------------------------------------------

class FakeFeatures:
    """The FeatureClient calls orders() and fraud_labels() make, in memory."""

    def __init__(self):
        self.stored: dict[str, dict] = {}

    async def apply_orders(self, orders):
        return [{n: (math.log1p(o.amount) if n == "amount_log" else 0.0) for n in FRAUD_VECTOR} for o in orders]

    async def apply_orders_checked(self, orders):
        return await self.apply_orders(orders), {}

    async def record_verdicts(self, entries):
        for order_id, verdict, record, _ in entries:
            self.stored[order_id] = json.loads(json.dumps(record))  # as Redis keeps it
        return [(verdict, None) for _, verdict, _, _ in entries]

    async def join_labels(self, labels, at=None):
        return {o: self.stored.pop(o, None) for o in labels}


class FakeFraud:
    async def score(self, features, **_):
        return [Score(min(0.99, f["amount_log"] / 10), "approve", [], "fraud:1", False) for f in features]


def _orders(n: int, start: int = 0):
    return [Order(order_id=f"o{i}", user_id=f"u{i % 7}", amount=float(1 + (i * 37) % 500), ts=1.6e9 + i,
                  items=[{"item_id": "i1", "price": float(1 + (i * 37) % 500), "quantity": 1}])
            for i in range(start, start + n)]


def _messages(topic, events):
    return [RawMessage(topic, 0, n, b"k", e.to_bytes(), 0.0) for n, e in enumerate(events)]


def _scores(outputs):
    return {json.loads(o.value)["order_id"]: json.loads(o.value)["score"] for o in outputs}


def test_shadow_score_is_stored_never_served_and_learns_from_the_labels():
    async def run(mode: bool):
        s = Settings.from_env({}, fraud_challenger=mode, fraud_challenger_min_labels=20)
        p = FraudProcessor(s, FakeFeatures(), FraudDecider(FakeFraud(), s), Metrics())
        # warm both River models so the champion blends and the challenger disagrees with it
        for i, x in enumerate({"amount_log": a / 10} for a in range(120)):
            p.online.learn(x, i % 3 == 0, p_triton=0.3)
            if p.challenger is not None:
                p.challenger.learn(x, i % 2 == 0, p_champion=0.3)
        orders = _orders(60)
        served = _scores(await p.orders(_messages("orders", orders)))
        stored = dict(p.features.stored)
        labels = [FraudLabel(order_id=o.order_id, is_fraud=o.amount > 250, ts=o.ts) for o in orders]
        await p.fraud_labels(_messages("fraud-labels", labels))
        return p, served, stored

    on, served_on, stored_on = asyncio.run(run(True))
    off, served_off, stored_off = asyncio.run(run(False))
    assert on.online.ready and served_on == served_off  # the challenger never changes a served score
    # without a challenger: no shadow score (p_served is the served score, for the thresholds' precision)
    assert off.challenger is None and all(set(r) == {"x", "p_triton", "p_served"} for r in stored_off.values())
    for order_id, record in stored_on.items():
        assert record["p_served"] == pytest.approx(served_on[order_id])
        assert record["p_challenger"] != pytest.approx(record["p_served"])  # it really scored, in shadow
    assert on.challenger.n_learned == 120 + 60 and len(on.challenger.diffs) == 180
    m = on.metrics
    assert m.online_log_loss.labels("fraud_challenger")._value.get() == pytest.approx(
        on.challenger.quality()["challenger"]["log_loss"])
    assert m.online_auc.labels("fraud_challenger")._value.get() == pytest.approx(
        on.challenger.quality()["challenger"]["roc_auc"])
    state = on.challenger.state()
    assert state in ("hold", "promote")
    assert {s: m.promotion_state.labels("fraud_challenger", s)._value.get()
            for s in ("collecting", "hold", "promote")} == {s: float(s == state) for s in ("collecting", "hold",
                                                                                            "promote")}


def test_worker_checkpoints_and_restores_the_challenger():
    class Checkpoints(FakeFeatures):
        def __init__(self):
            super().__init__()
            self.ckpt: dict[str, list[bytes]] = {}

        async def save_checkpoint(self, name, state, keep):
            self.ckpt.setdefault(name, []).append(state)
            return len(self.ckpt[name])

        async def load_checkpoint(self, name):
            versions = self.ckpt.get(name)
            return (len(versions), versions[-1]) if versions else None

    async def run():
        store = Checkpoints()
        s = Settings.from_env({}, fraud_challenger_min_labels=30)
        p = FraudProcessor(s, store, FraudDecider(FakeFraud(), s), Metrics())
        for x, y, _ in _stream(300):
            p.challenger.learn(x, y, p_champion=0.35, p_challenger=p.challenger.predict(x))
        assert await p.checkpoint_online() == 1 and set(store.ckpt) == {"fraud-online", "fraud-challenger"}
        s40 = Settings.from_env({}, fraud_challenger_min_labels=40)
        fresh = FraudProcessor(s40, store, FraudDecider(FakeFraud(), s40), Metrics())
        await fresh.restore_online()
        return p, fresh

    p, fresh = asyncio.run(run())
    probe = [x for x, _, _ in _stream(50, seed=3)]
    assert [fresh.challenger.predict(x) for x in probe] == [p.challenger.predict(x) for x in probe]
    assert fresh.challenger.n_learned == 300 and fresh.challenger.min_labels == 40  # the rule comes from settings
    assert fresh.metrics.promotion_state.labels("fraud_challenger", p.challenger.state())._value.get() == 1
