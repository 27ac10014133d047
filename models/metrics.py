"""Evaluation metrics of the three models (ROC-AUC, average precision and log loss are
scikit-learn's, through :mod:`models.scores`; the rest plain numpy).

Binary (fraud): ROC-AUC, average precision (PR-AUC), recall at a false-positive rate,
confusion counts / precision / recall / F1 at a threshold, Brier score, log loss and a
reliability table with its expected calibration error. Every binary metric takes optional
``weights`` (per-row sample weights: the ULB credit-card sample re-weights its legitimate
rows by ~41 to restore the true fraud rate).

Ranking (recommendations): HR@k and MRR@k from top-k lists.

Regression (pricing demand): MAE, RMSE, WAPE, RMSE on log1p, Poisson deviance, bias.

tests/test_models_metrics.py checks each against values computed by hand.
"""

from __future__ import annotations

import numpy as np

from models import scores


def _prep(y, s, weights=None):
    y = np.asarray(y).astype(bool).reshape(-1)
    s = np.asarray(s, dtype=np.float64).reshape(-1)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if not (len(y) == len(s) == len(w)):
        raise ValueError(f"length mismatch: y {len(y)}, scores {len(s)}, weights {len(w)}")
    return y, s, w


def _curve(y, s, w):
    """Cumulative weighted TP / FP counted from the highest score down, one point per distinct
    score (ties form one block). -> (thresholds desc, tp, fp, total_pos, total_neg)."""
    order = np.argsort(-s, kind="mergesort")
    s, y, w = s[order], y[order], w[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # end of each tie block
    tp = np.cumsum(w * y)[last]
    fp = np.cumsum(w * ~y)[last]
    return s[last], tp, fp, float(np.sum(w * y)), float(np.sum(w * ~y))


def roc_auc(y, s, weights=None) -> float:
    """Area under the ROC curve; ties count one half; NaN with one class (:mod:`models.scores`)."""
    return scores.roc_auc(y, s, weights)


def average_precision(y, s, weights=None) -> float:
    """PR-AUC as average precision (scikit-learn's, :mod:`models.scores`); NaN without positives."""
    return scores.average_precision(y, s, weights)


def recall_at_fpr(y, s, max_fpr: float = 0.01, weights=None) -> dict:
    """The highest recall of a rule ``score >= t`` whose false-positive rate is <= max_fpr.
    -> {'recall', 'fpr', 'threshold'} (threshold inf when no positive can be flagged)."""
    y, s, w = _prep(y, s, weights)
    thr, tp, fp, P, N = _curve(y, s, w)
    ok = fp / max(N, 1e-300) <= max_fpr + 1e-12
    if P == 0 or not ok.any():
        return {"recall": 0.0, "fpr": 0.0, "threshold": float("inf")}
    i = np.nonzero(ok)[0].max()  # fp is non-decreasing: the last admissible block
    return {"recall": float(tp[i] / P), "fpr": float(fp[i] / max(N, 1e-300)), "threshold": float(thr[i])}


def at_threshold(y, s, threshold: float, weights=None) -> dict:
    """Confusion counts of the rule ``score >= threshold`` and its precision / recall / F1 / FPR.
    Precision is 0 when nothing is flagged (and F1 then 0)."""
    y, s, w = _prep(y, s, weights)
    flag = s >= threshold
    tp = float(np.sum(w * (flag & y)))
    fp = float(np.sum(w * (flag & ~y)))
    fn = float(np.sum(w * (~flag & y)))
    tn = float(np.sum(w * (~flag & ~y)))
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / (tp + fn) if tp + fn > 0 else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"threshold": float(threshold), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "flagged_share": (tp + fp) / max(tp + fp + fn + tn, 1e-300),
            "precision": precision, "recall": recall, "f1": f1, "fpr": fp / (fp + tn) if fp + tn > 0 else 0.0}


def brier(y, p, weights=None) -> float:
    y, p, w = _prep(y, p, weights)
    return float(np.sum(w * (p - y) ** 2) / np.sum(w))


def log_loss(y, p, weights=None, eps: float = 1e-7) -> float:
    return scores.log_loss(y, p, weights, eps)


def reliability(y, p, bins: int = 10, weights=None) -> dict:
    """Equal-count bins of the predicted probability (rows sorted by p, split into ``bins``
    nearly equal groups) -> per bin: n, mean predicted, observed rate; and the expected
    calibration error ECE = sum_b (weight_b / total) * |mean predicted_b - observed_b|."""
    y, p, w = _prep(y, p, weights)
    order = np.argsort(p, kind="mergesort")
    rows, ece, total = [], 0.0, float(np.sum(w))
    for idx in np.array_split(order, min(bins, max(len(order), 1))):
        if len(idx) == 0:
            continue
        wb = float(np.sum(w[idx]))
        pred = float(np.sum(w[idx] * p[idx]) / wb)
        obs = float(np.sum(w[idx] * y[idx]) / wb)
        rows.append({"n": int(len(idx)), "p_min": float(p[idx].min()), "p_max": float(p[idx].max()),
                     "mean_predicted": pred, "observed": obs})
        ece += wb / total * abs(pred - obs)
    return {"bins": rows, "ece": float(ece)}


def binary_report(y, p, weights=None, thresholds: dict[str, float] | None = None, max_fpr: float = 0.01) -> dict:
    """Everything the fraud tables show for one model on one period."""
    y_, p_, w_ = _prep(y, p, weights)
    out = {
        "n": int(len(y_)),
        "positives": int(y_.sum()),
        "positive_rate": float(np.sum(w_ * y_) / np.sum(w_)),
        "roc_auc": roc_auc(y_, p_, w_),
        "pr_auc": average_precision(y_, p_, w_),
        f"recall_at_{max_fpr:g}_fpr": recall_at_fpr(y_, p_, max_fpr, w_)["recall"],
        "brier": brier(y_, p_, w_),
        "log_loss": log_loss(y_, p_, w_),
        "ece": reliability(y_, p_, 10, w_)["ece"],
        "mean_score": float(np.sum(w_ * p_) / np.sum(w_)),
    }
    for name, t in (thresholds or {}).items():
        out[f"at_{name}"] = at_threshold(y_, p_, t, w_)
    return out


def paired_bootstrap(y, s1, s2, metric, n: int = 200, seed: int = 0, weights=None) -> dict:
    """metric(y, s1) - metric(y, s2) and its 95% percentile interval over ``n`` bootstrap
    resamples of the rows (the same resample for both scores)."""
    y, s1, w = _prep(y, s1, weights)
    s2 = np.asarray(s2, dtype=np.float64).reshape(-1)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        i = rng.integers(0, len(y), len(y))
        if y[i].all() or not y[i].any():
            continue
        diffs.append(metric(y[i], s1[i], w[i]) - metric(y[i], s2[i], w[i]))
    lo, hi = np.percentile(diffs, [2.5, 97.5]) if diffs else (float("nan"), float("nan"))
    return {"diff": float(metric(y, s1, w) - metric(y, s2, w)), "ci95": [float(lo), float(hi)], "resamples": len(diffs)}


# --- ranking ---------------------------------------------------------------------------------


def hit_and_rr(top: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """top [N, k] recommended indices, target [N] -> (hit [N] bool, reciprocal rank [N])."""
    top = np.asarray(top)
    target = np.asarray(target).reshape(-1, 1)
    hit = top == target
    any_hit = hit.any(1)
    rank = hit.argmax(1) + 1
    return any_hit, np.where(any_hit, 1.0 / rank, 0.0)


def hr_mrr(top: np.ndarray, target: np.ndarray) -> dict:
    """HR@k (share of targets in the top k) and MRR@k (mean 1/rank, 0 outside the top k)."""
    if len(target) == 0:
        return {"hr": float("nan"), "mrr": float("nan"), "n": 0}
    hit, rr = hit_and_rr(top, target)
    return {"hr": float(hit.mean()), "mrr": float(rr.mean()), "n": int(len(target))}


# --- regression ------------------------------------------------------------------------------


def demand_errors(y, pred) -> dict:
    """Errors of a demand forecast (units). Poisson deviance needs pred > 0 (clipped at 1e-9)."""
    y = np.asarray(y, dtype=np.float64)
    p = np.maximum(np.asarray(pred, dtype=np.float64), 1e-9)
    with np.errstate(divide="ignore", invalid="ignore"):
        dev = np.where(y > 0, y * np.log(np.where(y > 0, y, 1.0) / p), 0.0) - (y - p)
    return {
        "mae": float(np.mean(np.abs(y - p))),
        "rmse": float(np.sqrt(np.mean((y - p) ** 2))),
        "wape": float(np.sum(np.abs(y - p)) / max(float(np.sum(y)), 1e-9)),
        "rmse_log1p": float(np.sqrt(np.mean((np.log1p(y) - np.log1p(p)) ** 2))),
        "poisson_deviance": float(2 * np.mean(dev)),
        "bias": float(np.mean(p - y)),
    }


def rounded(obj, nd: int = 5):
    """Round every float in a nested dict / list (for JSON that diffs well)."""
    if isinstance(obj, float):
        return round(obj, nd) if np.isfinite(obj) else None
    if isinstance(obj, (np.floating,)):
        return rounded(float(obj), nd)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, dict):
        return {k: rounded(v, nd) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, nd) for v in obj]
    return obj
