"""The offline experiments' machinery (evaluation/), on small slices of the real data: the fraud
drift replay is prequential and learns no label before its delay; the static model sees only the
labels known at deployment; the injected drift is where it says; the pricing simulator's oracle
beats every fixed price; the recommendation replay ranks each click before counting it."""

from __future__ import annotations

import doctest
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluation import common, drift
from features.definitions import DAY, FRAUD_VECTOR
from scorers.online import OnlineFraud


@pytest.fixture(scope="module")
def frame():
    return drift.load_frame()


@pytest.fixture(scope="module")
def wave_end(frame):
    """The real orders of 2015-01-10 .. 2015-01-17: the end of January's fraud wave."""
    f = frame[(frame["ts"] >= drift._ts("2015-01-10")) & (frame["ts"] < drift._ts("2015-01-18"))]
    return f.reset_index(drop=True)


def test_helpers_doctests():
    for mod in (common, drift):
        result = doctest.testmod(mod)
        assert result.failed == 0 and result.attempted > 0, mod.__name__


def test_average_precision_matches_the_models_metric():
    from models import metrics

    rng = np.random.default_rng(3)
    y = rng.random(500) < 0.1
    s = np.round(rng.random(500) + y * 0.3, 2)  # ties included
    assert common.average_precision(y, s) == pytest.approx(metrics.average_precision(y, s), abs=1e-12)
    assert common.relative_log_loss([0, 1, 0, 0], [0.25] * 4) == pytest.approx(1.0)


def _inputs(f: pd.DataFrame):
    xs = [drift.online_vector(r) for r in f[list(FRAUD_VECTOR)].to_dict("records")]
    ts = f["ts"].to_numpy()
    y = f["label"].to_numpy()
    p_static = 1 / (1 + np.exp(-(f["amount_log"].to_numpy() - 3.5)))  # any fixed expert will do
    return xs, ts, y, p_static


@pytest.mark.parametrize("delay_days", [0.5, 1.0, 3.0])
def test_replay_learns_no_label_before_its_delay(wave_end, delay_days):
    xs, ts, y, p_static = _inputs(wave_end)
    delay = delay_days * DAY
    trace = drift.replay(xs, ts, y, p_static, OnlineFraud(), delay)
    # each order is scored having learned exactly the labels that had arrived by its time
    arrived = np.searchsorted(np.sort(ts + delay), ts, side="right")
    assert np.array_equal(trace.learned_before, arrived)
    assert trace.learned_before[-1] < len(ts)  # the last days' labels are still in flight
    for arrival, j in trace.learned:
        assert arrival == ts[j] + delay
    arrivals = [a for a, _ in trace.learned]
    assert arrivals == sorted(arrivals) and len({j for _, j in trace.learned}) == len(trace.learned)
    assert trace.learned_before.max() == len(trace.learned)


def test_replay_is_prequential_and_serves_what_the_worker_serves(wave_end):
    """Order i's River score is that of a model that learned exactly the labels in flight-order up
    to its time, with the static score each was served with; the blend is OnlineFraud.blend."""
    xs, ts, y, p_static = _inputs(wave_end[:600])
    delays = np.where(np.arange(len(ts)) % 3 == 0, 2 * DAY, 0.5 * DAY)  # out-of-order arrivals too
    trace = drift.replay(xs, ts, y, p_static, OnlineFraud(), delays)
    check = OnlineFraud()
    done = 0
    for i in range(len(ts)):
        for arrival, j in trace.learned[done:trace.learned_before[i]]:
            assert arrival <= ts[i] and j < i
            check.learn(xs[j], bool(y[j]), float(p_static[j]))
        done = trace.learned_before[i]
        assert trace.p_river[i] == check.predict(xs[i])
        assert trace.p_blend[i] == check.blend(float(p_static[i]), check.predict(xs[i]))
        assert trace.w_river[i] == check.weights()["river"]
    assert 0 < done < len(ts)
    with pytest.raises(ValueError):
        drift.replay(xs[::-1], ts[::-1], y[::-1], p_static[::-1], OnlineFraud(), DAY)


def test_static_model_sees_only_labels_known_at_deployment(frame):
    f = frame[frame["ts"] < drift._ts("2015-01-12")].reset_index(drop=True)
    train_end = drift._ts("2015-01-07")
    p1 = drift.train_static(f, train_end, 1.0)
    later = f["ts"] >= train_end
    flipped = f.assign(label=np.where(later, 1 - f["label"], f["label"]))
    p2 = drift.train_static(flipped, train_end, 1.0)
    assert np.array_equal(p1, p2)  # labels after train_end change nothing (and training is deterministic)
    earlier = f.assign(label=np.where(f["ts"] < train_end - 2 * DAY, 1 - f["label"], f["label"]))
    assert not np.array_equal(p1, drift.train_static(earlier, train_end, 1.0))


def test_injected_drift_is_where_it_says(frame):
    f = frame[(frame["ts"] >= drift._ts("2015-05-01")) & (frame["ts"] < drift._ts("2015-07-01"))]
    change = drift._ts("2015-06-01")
    g = drift.inject(f.reset_index(drop=True), change)
    assert g.equals(drift.inject(f.reset_index(drop=True), change))  # seeded
    before = g["ts"] < change
    assert set(g.loc[before, "ring"]) == {"", "A"} and set(g.loc[~before, "ring"]) == {"", "B"}
    assert (g["label"].to_numpy() == f["label"].to_numpy()).all()
    fraud = g["label"] == 1
    share = (g.loc[fraud, "ring"] != "").mean()
    noise = (g.loc[~fraud, "ring"] != "").mean()
    assert abs(share - drift.RING_SHARE) < 0.08 and noise < 0.03
    a, b = g["ring"] == "A", g["ring"] == "B"
    assert (g.loc[a, "device_users_30d"] >= 1).all()
    hours = np.degrees(np.arctan2(g.loc[b, "hour_sin"], g.loc[b, "hour_cos"])) / 15
    assert ((hours >= drift.NIGHT_HOURS[0] - 1e-9) & (hours <= drift.NIGHT_HOURS[1] + 1e-9)).all()
    untouched = ~(a | b)
    cols = list(FRAUD_VECTOR)
    assert np.array_equal(g.loc[untouched, cols].to_numpy(), f.reset_index(drop=True).loc[untouched, cols].to_numpy())


def test_natural_drift_on_real_data_static_decays_river_stays_calibrated(frame):
    """A short natural-drift run (orders up to 2015-02-10): after the wave the static model's log
    loss is far worse than a constant predictor's while River's and the blend's are not."""
    short = frame[frame["ts"] < drift._ts("2015-02-10")].reset_index(drop=True)
    r = drift.run_scenario(short, drift.NATURAL, window=300)
    a = r["arms"]
    assert r["n_pre"] > 500 and r["n_post"] > 500 and r["rate_pre"] > 0.8 > 0.1 > r["rate_post"]
    assert a["static"]["rll_post"] > 2 * max(a["river"]["rll_post"], a["blend"]["rll_post"])
    assert a["river"]["rll_post"] < 1.5 and a["blend"]["rll_post"] < 1.5
    assert all(math.isfinite(a[arm]["pr_auc_post"]) for arm in drift.ARMS)
    # the static model and River's warm start used only labels that had arrived at deployment
    assert r["train_end"] + r["delay_days"] * DAY <= r["deploy"] == drift._ts(drift.NATURAL.deploy)
    assert r["n_train"] == int((short["ts"] < r["train_end"]).sum()) and r["ts"][0] >= r["deploy"]
    assert r["learned"] == int(np.searchsorted(r["ts"] + r["delay_days"] * DAY, r["ts"][-1], side="right"))


# -- pricing simulator -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def avocado_curves():
    from evaluation import pricing_sim
    from streamscore.settings import Settings

    curves, _ = pricing_sim.fit_avocado(Path(Settings.from_env().data_dir))
    return curves


def test_avocado_fits_are_real_and_downward(avocado_curves):
    assert len(avocado_curves) >= 3
    for c in avocado_curves:
        assert c.params["b"] < 0 and c.params["se"] > 0 and c.rate > 0 and 0.5 < c.ref_price < 3
        assert c.units(0.9) > c.units(1.0) > c.units(1.1)


def test_oracle_revenue_beats_any_fixed_price(avocado_curves):
    """Expected-demand simulation: the oracle's fixed price earns at least what any other fixed
    price earns, through the same guardrails and stock-outs, on real and synthetic curves."""
    from evaluation import pricing_sim
    from streamscore.settings import Settings

    s = Settings()
    for curve in [avocado_curves[0], *pricing_sim.SYNTHETIC]:
        m_star = curve.oracle(s)
        lo, hi = curve.bounds(s)
        assert lo - 1e-9 <= m_star <= hi + 1e-9
        oracle = pricing_sim.simulate(curve, pricing_sim.Fixed(m_star), days=20, noise=False, settings=s)
        assert not oracle.violations and oracle.revenue == pytest.approx(oracle.expected)
        for m in [0.5, lo, 0.7, 0.85, 0.95, 1.0, 1.05, 1.2, 1.35, hi, 2.0, m_star * 0.98, m_star * 1.02]:
            fixed = pricing_sim.simulate(curve, pricing_sim.Fixed(m), days=20, noise=False, settings=s)
            assert oracle.revenue >= fixed.revenue - 1e-6 * oracle.revenue, (curve.name, m)


def test_simulator_bandit_run_is_guarded_seeded_and_learns(avocado_curves):
    from evaluation import pricing_sim
    from scorers.bandit import PricingBandit
    from streamscore.settings import Settings

    s = Settings()
    curve = pricing_sim.SYNTHETIC[1]  # elastic: the static price earns half the oracle's
    runs = [pricing_sim.simulate(curve, pricing_sim.Bandit(PricingBandit(seed=4)), days=60, settings=s)
            for _ in range(2)]
    assert runs[0].revenue == runs[1].revenue and runs[0].arms == runs[1].arms  # deterministic
    assert not runs[0].violations and runs[0].changes > 0
    assert runs[0].guards.get("out_of_stock", 0) > 0  # stock-out days happened, and froze the price
    static = pricing_sim.simulate(curve, pricing_sim.Fixed(1.0), days=60, settings=s)
    assert runs[0].revenue > 1.3 * static.revenue
    # the simulator's own check catches a policy that breaks a guardrail

    class Reckless(pricing_sim.Fixed):
        def price(self, state, m, ts, settings):
            return round(state["ref_price"] * m, 2), None

    bad = pricing_sim.simulate(avocado_curves[0], Reckless(1.4), days=3, settings=s)
    assert {v[2] for v in bad.violations} >= {"step larger than allowed"}


# -- recommendations online signal -------------------------------------------------------------------

def _stream(sessions, items, ts, target_from=0):
    return pd.DataFrame({"session": sessions, "user": [f"u{x}" for x in sessions], "item": items, "ts": ts,
                         "view": True, "target_period": [t >= target_from for t in ts]})


def test_recs_replay_ranks_each_click_before_counting_it():
    from evaluation import recs_online

    ev = _stream([1, 1, 2, 2, 3, 3, 3], ["A", "B", "A", "B", "A", "C", "B"], [1, 2, 3, 4, 5, 6, 7])
    targets, histories, _, cands = recs_online.replay(ev, half_life_s=0)
    assert targets == ["B", "B", "C", "B"]
    assert cands[0] == []  # the first A->B has nothing to go on: its own click is not counted yet
    assert cands[1] == [("B", 1.0)]  # the second one has learned from the first
    assert histories[3] == ["C", "A"] and not {"A", "C"} & {j for j, _ in cands[3]}
    # the test period starts later: earlier clicks still teach the counts, only later ones are targets
    targets, _, _, cands = recs_online.replay(_stream([1, 1, 2, 2, 3, 3, 3], ["A", "B", "A", "B", "A", "C", "B"],
                                                      [1, 2, 3, 4, 5, 6, 7], target_from=4), half_life_s=0)
    assert targets == ["B", "C", "B"] and cands[0] == [("B", 1.0)]


def test_recs_replay_on_real_clicks_never_sees_the_future():
    from evaluation import recs_online
    from models.sessions import TAOBAO, taobao_events
    from streamscore.settings import Settings

    ev = taobao_events(Path(Settings.from_env().data_dir) / TAOBAO)
    ev = ev[ev["timestamp"] < ev["timestamp"].min() + 1800]
    t_split = float(ev["timestamp"].quantile(0.5))
    stream = pd.DataFrame({"session": ev["session"].to_numpy(), "user": ev["user_id"].to_numpy(),
                           "item": ev["item_id"].to_numpy(), "ts": ev["timestamp"].astype(float).to_numpy(),
                           "view": True, "target_period": (ev["timestamp"] >= t_split).to_numpy()})
    targets, histories, _, cands = recs_online.replay(stream, half_life_s=3600)
    assert len(targets) > 100
    clicks = ev["item_id"].value_counts()
    for h, c in zip(histories, cands):
        assert not set(h) & {j for j, _ in c}  # never recommends the session's own items
    # an item clicked once in the whole slice can only be a candidate if its own click leaked in
    once = [i for i, t in enumerate(targets) if clicks[t] == 1]
    assert len(once) > 50 and all(targets[i] not in {j for j, _ in cands[i]} for i in once)
    assert sum(bool(c) for c in cands) > 10  # the counts did produce candidates
