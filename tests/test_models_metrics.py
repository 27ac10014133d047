"""models.metrics and the fraud decision rule against values computed by hand (no data, no artefacts)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models import fraud, metrics

# A small scored set with a tie across classes (two rows at 0.4: one negative, and see below).
Y = np.array([0, 0, 1, 1, 0, 1])
S = np.array([0.1, 0.4, 0.35, 0.8, 0.4, 0.9])


def test_roc_auc_by_hand():
    # positive/negative pairs: 3 x 3 = 9. 0.9 and 0.8 beat every negative (6); 0.35 beats 0.1 only (1)
    assert metrics.roc_auc(Y, S) == pytest.approx(7 / 9)
    # a tie between a positive and a negative counts one half
    assert metrics.roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert metrics.roc_auc([0, 1, 1], [0.2, 0.2, 0.9]) == pytest.approx((0.5 + 1) / 2)
    assert math.isnan(metrics.roc_auc([1, 1], [0.1, 0.2]))


def test_roc_auc_weighted_equals_repeated_rows():
    # weight 3 on the first negative == that row three times
    w = np.array([3, 1, 1, 1, 1, 1])
    rep_y = np.r_[Y, [0, 0]]
    rep_s = np.r_[S, [0.1, 0.1]]
    assert metrics.roc_auc(Y, S, w) == pytest.approx(metrics.roc_auc(rep_y, rep_s))
    # by hand: negatives 0.1 (w 3), 0.4, 0.4 -> weight 5; pairs won: 0.9, 0.8 beat all (2 x 5),
    # 0.35 beats 0.1 (3) -> 13 / 15
    assert metrics.roc_auc(Y, S, w) == pytest.approx(13 / 15)


def test_average_precision_by_hand():
    # ranking 0.9+ 0.8+ {0.4- 0.4-} 0.35+ 0.1-: recall steps 1/3 at precision 1, 1/3 at 1, 1/3 at 3/5
    assert metrics.average_precision(Y, S) == pytest.approx((1 + 1 + 3 / 5) / 3)
    # a positive tied with a negative at the top: one block, precision 1/2
    assert metrics.average_precision([1, 0, 0], [0.9, 0.9, 0.1]) == pytest.approx(0.5)
    # weights: the negatives in the 0.4 block weigh 2 each -> precision at 0.35 = 3 / (3 + 4)
    w = np.array([1, 2, 1, 1, 2, 1])
    assert metrics.average_precision(Y, S, w) == pytest.approx((1 + 1 + 3 / 7) / 3)


def test_recall_at_fpr_by_hand():
    y = np.array([1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1])
    s = np.array([0.99, 0.95, 0.9, 0.85, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    # 8 negatives: FPR <= 0.125 allows one false positive -> flag >= 0.85: recall 3/4
    r = metrics.recall_at_fpr(y, s, 0.125)
    assert r["recall"] == pytest.approx(3 / 4) and r["fpr"] == pytest.approx(1 / 8) and r["threshold"] == 0.85
    # FPR <= 0.01 allows none -> flag >= 0.95: recall 2/4
    assert metrics.recall_at_fpr(y, s, 0.01)["recall"] == pytest.approx(0.5)
    # the top score is a negative: nothing can be flagged
    assert metrics.recall_at_fpr([0, 1], [0.9, 0.1], 0.01)["recall"] == 0.0


def test_at_threshold_by_hand():
    r = metrics.at_threshold(Y, S, 0.4)  # flags 0.4, 0.8, 0.4, 0.9 -> tp 2, fp 2, fn 1, tn 1
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (2, 2, 1, 1)
    assert r["precision"] == pytest.approx(0.5) and r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert r["fpr"] == pytest.approx(2 / 3) and r["flagged_share"] == pytest.approx(4 / 6)
    none = metrics.at_threshold(Y, S, 2.0)
    assert none["precision"] == 0 and none["recall"] == 0 and none["f1"] == 0


def test_brier_log_loss_reliability_by_hand():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.8, 0.2, 0.6, 0.4])
    assert metrics.brier(y, p) == pytest.approx((0.04 + 0.04 + 0.16 + 0.16) / 4)
    assert metrics.log_loss(y, p) == pytest.approx(-(2 * math.log(0.8) + 2 * math.log(0.6)) / 4)
    rel = metrics.reliability(y, p, bins=2)  # sorted p: [0.2 0.4 | 0.6 0.8]
    assert [b["n"] for b in rel["bins"]] == [2, 2]
    assert rel["bins"][0]["mean_predicted"] == pytest.approx(0.3) and rel["bins"][0]["observed"] == 0.0
    assert rel["bins"][1]["mean_predicted"] == pytest.approx(0.7) and rel["bins"][1]["observed"] == 1.0
    assert rel["ece"] == pytest.approx(0.5 * 0.3 + 0.5 * 0.3)
    # perfectly calibrated bins -> ECE 0
    assert metrics.reliability([0, 1, 0, 1], [0.5] * 4, bins=1)["ece"] == pytest.approx(0.0)


def test_binary_report_keys_and_values():
    r = metrics.binary_report(Y, S, thresholds={"review": 0.4})
    assert r["roc_auc"] == pytest.approx(7 / 9) and r["n"] == 6 and r["positives"] == 3
    assert r["at_review"]["tp"] == 2 and r["positive_rate"] == pytest.approx(0.5)


def test_paired_bootstrap_identical_scores_is_exactly_zero():
    b = metrics.paired_bootstrap(Y, S, S, metrics.average_precision, n=50, seed=1)
    assert b["diff"] == 0 and b["ci95"] == [0.0, 0.0]
    better = metrics.paired_bootstrap(Y, Y.astype(float), 1 - Y.astype(float), metrics.roc_auc, n=50, seed=1)
    assert better["diff"] == pytest.approx(1.0) and better["ci95"][0] > 0


def test_hr_mrr_by_hand():
    top = np.array([[5, 3, 9], [1, 2, 4], [7, 8, 6], [2, 2, 2]])
    target = np.array([3, 4, 1, 2])  # ranks 2, 3, miss, 1
    r = metrics.hr_mrr(top, target)
    assert r["hr"] == pytest.approx(3 / 4)
    assert r["mrr"] == pytest.approx((1 / 2 + 1 / 3 + 0 + 1) / 4)
    assert r["n"] == 4


def test_demand_errors_by_hand():
    y = np.array([0.0, 2.0, 4.0])
    p = np.array([1.0, 2.0, 2.0])
    e = metrics.demand_errors(y, p)
    assert e["mae"] == pytest.approx(1.0)
    assert e["rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert e["wape"] == pytest.approx(3 / 6)
    assert e["bias"] == pytest.approx(-1 / 3)
    # Poisson deviance 2 * mean(y log(y/p) - (y - p)), with 0 log 0 = 0
    dev = 2 * np.mean([0 - (0 - 1), 0 - 0, 4 * math.log(2) - 2])
    assert e["poisson_deviance"] == pytest.approx(dev)


def test_rounded_makes_json_safe_values():
    assert metrics.rounded({"a": np.float64(1 / 3), "b": [float("nan"), float("inf")], "c": np.int64(3)}, 3) == \
        {"a": 0.333, "b": [None, None], "c": 3}


# --- the fraud decision rule -----------------------------------------------------------------


def test_decision_thresholds_from_costs_by_hand():
    th = fraud.decision_thresholds({"missed_fraud": 50.0, "blocked_good": 20.0, "review": 3.0})
    assert th == {"review": pytest.approx(3 / 50), "decline": pytest.approx(1 - 3 / 20)}
    assert fraud.THRESHOLDS == fraud.decision_thresholds(fraud.COSTS)
    # at each threshold the two neighbouring decisions cost the same
    c = fraud.COSTS
    assert th["review"] * c["missed_fraud"] == pytest.approx(c["review"])
    assert (1 - th["decline"]) * c["blocked_good"] == pytest.approx(c["review"])
    # review dearer than the approve/decline break-even: no review band, one threshold
    one = fraud.decision_thresholds({"missed_fraud": 10.0, "blocked_good": 10.0, "review": 8.0})
    assert one["review"] == one["decline"] == pytest.approx(0.5)


def test_expected_cost_by_hand():
    costs = {"missed_fraud": 50.0, "blocked_good": 20.0, "review": 3.0}
    th = {"review": 0.06, "decline": 0.85}
    y = np.array([1, 1, 0, 0, 1])
    p = np.array([0.01, 0.5, 0.9, 0.02, 0.95])  # approve (missed), review, decline (good), approve, decline
    c = fraud.expected_cost(y, p, th, costs)
    assert c["cost_per_order"] == pytest.approx((50 + 3 + 20) / 5)
    assert c["approve_all_cost_per_order"] == pytest.approx(3 * 50 / 5)
    assert c["share_review"] == pytest.approx(1 / 5) and c["share_decline"] == pytest.approx(2 / 5)


def test_platt_recovers_known_parameters():
    rng = np.random.default_rng(0)
    raw = rng.normal(0, 2, 20000)
    y = (rng.random(len(raw)) < 1 / (1 + np.exp(-(0.5 * raw - 1.0)))).astype(float)
    a, b = fraud.fit_platt(raw, y)
    assert a == pytest.approx(0.5, abs=0.05) and b == pytest.approx(-1.0, abs=0.08)
    # separable data with huge logits: step halving keeps it finite and increasing
    a2, b2 = fraud.fit_platt(np.r_[-np.full(50, 60.0), np.full(50, 60.0)], np.r_[np.zeros(50), np.ones(50)])
    assert np.isfinite([a2, b2]).all() and a2 > 0
    # weights: weighting the negatives by k is the same as repeating them k times
    w = np.where(y == 0, 3.0, 1.0)
    rep = np.r_[raw, raw[y == 0], raw[y == 0]]
    yrep = np.r_[y, y[y == 0], y[y == 0]]
    assert fraud.fit_platt(raw, y, weights=w) == pytest.approx(fraud.fit_platt(rep, yrep), abs=1e-6)
