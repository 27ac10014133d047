"""Train the `fraud` model: a small calibrated MLP over the 29 point-in-time order features
(``features.definitions.FRAUD_VECTOR``: the 21 of the 30-day store and the 8 long-horizon device / IP
signals, chosen by the month-by-month backtest ``python -m models.backtest``).

Data: the point-in-time feature snapshot of the ecommerce-fraud purchases written by
``python -m features.snapshot fraud`` (``build/features/fraud_snapshots.parquet``: the FEATURES
columns + ``label`` + ``ts`` + ``order_id``); ``--snapshot`` takes another .parquet or .csv.

Method:
* time-ordered split by calendar month of ``ts``: the last two months are the test period,
  the month before them the validation slice, everything earlier is training;
* standardisation with the training mean/std (stored in meta.json and in the weights); a
  feature that is constant in training is switched off (its input is multiplied by 0), so a
  live value the model never saw cannot move the score through untrained weights;
* class-weighted BCE (pos_weight = negatives/positives of the training months), Adam, fixed
  epochs, seeded and deterministic;
* Platt calibration (a * logit + b) fitted on the validation month, unweighted;
* approve / review / decline thresholds on the calibrated probability from the documented
  costs in :data:`COSTS` (see :func:`decision_thresholds`), written into meta.json
  ``"thresholds"``;
* ROC-AUC, PR-AUC, recall at 1% FPR, precision / recall / F1 at both thresholds, Brier, log
  loss, calibration error and expected cost per order on the test period, in meta.json.

Baselines (logistic regression, gradient boosting) and the January / later-months backtest
are in ``python -m models.evaluate fraud`` (docs/MODELS.md).

Usage: ``python -m models.fraud [--snapshot PATH] [--repo DIR]``
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from features.definitions import FRAUD_VECTOR
from models import common, metrics
from streamscore.settings import ROOT, Settings

NAME = "fraud"
BASE_FEATURES = [
    "amount_log", "account_age_log_s", "account_age_missing", "user_orders_1h", "user_orders_24h",
    "user_amount_24h_log", "user_orders_30d", "user_amount_zscore", "device_users_30d",
    "device_orders_1h", "device_orders_24h", "ip_users_30d", "ip_orders_1h", "ip_orders_24h",
    "card_users_30d", "card_orders_1h", "hour_sin", "hour_cos", "items_count", "device_missing",
    "ip_missing",
]  # fmt: skip  (the vector served before the long-horizon signals: the backtest's "base" set)
FEATURES = list(FRAUD_VECTOR)  # the registry's vector: BASE_FEATURES + the long-horizon entity signals
assert FEATURES[:len(BASE_FEATURES)] == BASE_FEATURES
DEFAULT_SNAPSHOT = ROOT / "build" / "features" / "fraud_snapshots.parquet"
SOURCE = Path("ecommerce-fraud") / "fraud_data_2015-01_to_09.csv.gz"  # what the snapshot is built from

SEED = 20240601
HIDDEN = [32, 16]
EPOCHS = 12
BATCH = 512
LR = 3e-3
WEIGHT_DECAY = 1e-4

# Costs of the three decisions (USD per order; the data's median order is USD 34). They set the
# thresholds; change them here, not the thresholds.
#   missed_fraud: an approved fraudulent order: goods shipped (~ the median order, 35) plus a
#                 chargeback fee (15);
#   blocked_good: a declined legitimate order: the lost margin (~ 30% of 34, 10) plus the
#                 customer's goodwill / future orders (10);
#   review:       a manual review: ~5 minutes of an analyst (3); it resolves the order correctly.
COSTS = {"missed_fraud": 50.0, "blocked_good": 20.0, "review": 3.0}


def decision_thresholds(costs: dict[str, float] = COSTS) -> dict[str, float]:
    """Bayes-optimal thresholds on a calibrated probability p of fraud.

    Expected cost of each decision: approve p * missed_fraud, review = review, decline
    (1 - p) * blocked_good. Review beats approve when p >= review / missed_fraud; decline beats
    review when p >= 1 - review / blocked_good. (When review costs more than the crossing point
    of approve and decline, review is never best and both thresholds are that crossing point.)
    """
    c_fn, c_fp, c_r = costs["missed_fraud"], costs["blocked_good"], costs["review"]
    review, decline = c_r / c_fn, 1.0 - c_r / c_fp
    if review >= decline:
        review = decline = c_fp / (c_fp + c_fn)
    return {"review": review, "decline": decline}


THRESHOLDS = decision_thresholds()


def expected_cost(y: np.ndarray, p: np.ndarray, thresholds: dict[str, float] = THRESHOLDS,
                  costs: dict[str, float] = COSTS, weights: np.ndarray | None = None) -> dict:
    """Realised cost per order of the decisions ``p`` and ``thresholds`` imply on labelled orders,
    next to the same orders all approved."""
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, dtype=np.float64)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    decline = p >= thresholds["decline"]
    review = (p >= thresholds["review"]) & ~decline
    approve = ~(decline | review)
    cost = (w * (approve & y)).sum() * costs["missed_fraud"] + (w * (decline & ~y)).sum() * costs["blocked_good"] \
        + (w * review).sum() * costs["review"]
    total = w.sum()
    return {
        "cost_per_order": float(cost / total),
        "approve_all_cost_per_order": float((w * y).sum() * costs["missed_fraud"] / total),
        "share_review": float((w * review).sum() / total),
        "share_decline": float((w * decline).sum() / total),
    }


def load_snapshot(path: Path) -> pd.DataFrame:
    path = Path(path)
    if path.suffix == ".csv" or path.name.endswith(".csv.gz"):
        df = pd.read_csv(path)
    else:
        try:
            df = pd.read_parquet(path)
        except ImportError as exc:  # e.g. a pyarrow built for numpy>=2 next to numpy 1.26
            raise ImportError(f"cannot read {path}: {exc} (install a pyarrow that matches numpy)") from exc
    missing = [c for c in FEATURES + ["label", "ts"] if c not in df.columns]
    if missing:
        raise ValueError(f"{path} lacks columns {missing}")
    return df.sort_values("ts", kind="mergesort").reset_index(drop=True)


def ensure_snapshot(path: Path) -> Path:
    """Return the snapshot path, building the default one with features.snapshot if missing."""
    if path.exists():
        return path
    if path.resolve() == DEFAULT_SNAPSHOT.resolve() and (ROOT / "features" / "snapshot.py").exists():
        print(f"[fraud] {path} missing: running python -m features.snapshot fraud", flush=True)
        subprocess.run([sys.executable, "-m", "features.snapshot", "fraud"], cwd=ROOT, check=True)
        if path.exists():
            return path
    raise FileNotFoundError(
        f"fraud training data {path} not found: build it with `python -m features.snapshot fraud` "
        "or pass --snapshot PATH"
    )


def split_by_month(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    months = pd.to_datetime(ts, unit="s", utc=True).strftime("%Y-%m").to_numpy()
    uniq = sorted(set(months))
    if len(uniq) < 4:
        raise ValueError(f"need >= 4 calendar months for a train/val/test split, got {uniq}")
    test_m, val_m = uniq[-2:], uniq[-3]
    train = np.isin(months, uniq[:-3])
    val = months == val_m
    test = np.isin(months, test_m)
    info = {"train_months": uniq[:-3], "val_month": val_m, "test_months": test_m}
    return train, val, test, info


def fit_platt(raw: np.ndarray, y: np.ndarray, iters: int = 50, weights: np.ndarray | None = None) -> tuple[float, float]:
    """Logistic regression of y on the raw logit (Newton's method with step halving when a full
    step would raise the loss, float64, tiny ridge; optional sample weights)."""
    X = np.stack([raw.astype(np.float64), np.ones(len(raw))], axis=1)
    sw = np.ones(len(raw)) if weights is None else np.asarray(weights, dtype=np.float64)

    def loss(w):
        z = X @ w
        return float(np.sum(sw * (np.logaddexp(0.0, z) - y * z)) + 0.5e-6 * w @ w)

    w = np.array([1.0, 0.0])
    cur = loss(w)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(X @ w, -500.0, 500.0)))
        g = X.T @ (sw * (p - y)) + 1e-6 * w
        H = (X * (sw * p * (1 - p))[:, None]).T @ X + 1e-6 * np.eye(2)
        step = np.linalg.solve(H, g)
        t = 1.0
        while t > 1e-6 and loss(w - t * step) > cur:
            t /= 2
        w = w - t * step
        cur = loss(w)
        if np.abs(t * step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])


def binary_metrics(y: np.ndarray, p: np.ndarray, weights: np.ndarray | None = None,
                   thresholds: dict[str, float] | None = THRESHOLDS) -> dict:
    """ROC-AUC, PR-AUC, recall at 1% FPR, P/R/F1 at the thresholds, Brier, log loss, ECE,
    expected cost (rounded for meta.json)."""
    p64 = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    out = metrics.binary_report(y, p64, weights, thresholds)
    out["fraud_rate"] = out.pop("positive_rate")
    if thresholds:
        out["cost"] = expected_cost(y, p64, thresholds, COSTS, weights)
    return metrics.rounded(out)


def impute(X: np.ndarray, mean: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(X), X, mean).astype(np.float32)


def fit_net(mod, X: np.ndarray, y: np.ndarray, tr: np.ndarray, va: np.ndarray, seed: int = SEED,
            epochs: int = EPOCHS, val_weights: np.ndarray | None = None):
    """Train a FraudNet on rows ``tr`` and Platt-calibrate it on rows ``va`` (deterministic for a
    given seed; ``val_weights``: sample weights of the ``va`` rows for the calibration). X may
    hold NaN (imputed with the training mean). -> (net, info)."""
    import torch

    common.seed_everything(seed)
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(X[tr], axis=0).astype(np.float32)
        std = np.nanstd(X[tr], axis=0).astype(np.float32)
    mean = np.where(np.isfinite(mean), mean, 0.0).astype(np.float32)
    active = np.isfinite(std) & (std > 1e-6)
    std = np.where(active, std, 1.0).astype(np.float32)
    X = impute(X, mean)

    net = mod.FraudNet(X.shape[1], HIDDEN)
    net.mean.copy_(torch.from_numpy(mean))
    net.std.copy_(torch.from_numpy(std))
    net.active.copy_(torch.from_numpy(active.astype(np.float32)))

    Xtr, ytr = torch.from_numpy(X[tr]), torch.from_numpy(y[tr])
    pos = float(ytr.sum())
    pos_weight = (len(ytr) - pos) / max(pos, 1.0)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight))
    opt = torch.optim.Adam(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _epoch in range(epochs):
        perm = torch.randperm(len(Xtr), generator=gen)
        for i in range(0, len(perm), BATCH):
            idx = perm[i : i + BATCH]
            opt.zero_grad()
            loss = loss_fn(net.raw_logit(Xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        raw_va = net.raw_logit(torch.from_numpy(X[va])).numpy()
    a, b = fit_platt(raw_va, y[va].astype(np.float64), weights=val_weights)
    net.calib.copy_(torch.tensor([a, b], dtype=torch.float32))
    info = {"mean": mean, "std": std, "active": active, "pos_weight": pos_weight, "platt": (a, b)}
    return net, info


def train(snapshot: Path, repo: Path, settings: Settings) -> dict:
    import torch

    t = common.timer()
    mod = common.load_model_py(repo, NAME)
    df = load_snapshot(snapshot)
    X = df[FEATURES].to_numpy(dtype=np.float32)
    y = df["label"].to_numpy().astype(np.float32)
    tr, va, te, split = split_by_month(df["ts"].to_numpy())
    net, info = fit_net(mod, X, y, tr, va)
    mean, std, active, pos_weight, (a, b) = (info["mean"], info["std"], info["active"], info["pos_weight"],
                                             info["platt"])
    X = impute(X, mean)

    score_tr, _ = mod.predict(net, X[tr])
    score_va, _ = mod.predict(net, X[va])
    score_te, contrib_te = mod.predict(net, X[te])
    months = pd.to_datetime(df["ts"].to_numpy(), unit="s", utc=True).strftime("%Y-%m").to_numpy()
    metrics = {
        "test": binary_metrics(y[te], score_te[:, 0]),
        "test_by_month": {m: binary_metrics(y[te & (months == m)], score_te[(months == m)[te], 0])
                          for m in split["test_months"]},
        "val_calibrated": binary_metrics(y[va], score_va[:, 0]),
        "train_in_sample": binary_metrics(y[tr], score_tr[:, 0]),
    }
    # which features carry the score on the test period (mean |contribution|)
    imp = np.abs(contrib_te).mean(axis=0)
    metrics["mean_abs_contrib_test"] = {f: round(float(v), 5) for f, v in zip(FEATURES, imp)}

    state = net.state_dict()
    digest = common.state_digest(state)
    vdir = common.version_dir(repo, NAME)
    common.save_state(vdir, mod.WEIGHTS, state)
    meta = {
        "model": NAME,
        "version": common.model_version_string(NAME, digest),
        "triton_version": common.TRITON_VERSION,
        "weights_sha256": digest,
        "features": FEATURES,
        "inputs": {"FEATURES": {"dtype": "TYPE_FP32", "dims": [len(FEATURES)]}},
        "outputs": {
            "SCORE": {"dtype": "TYPE_FP32", "dims": [1], "meaning": "calibrated P(fraud)"},
            "CONTRIB": {
                "dtype": "TYPE_FP32",
                "dims": [len(FEATURES)],
                "meaning": "d(calibrated logit)/dx * (x - mean): contribution to the logit vs an average order",
            },
            "META": {"dtype": "TYPE_STRING", "dims": [1],
                     "meaning": "JSON of this meta's model, version, features and thresholds, only when requested: "
                                "the start-up contract check"},
        },
        "hidden": HIDDEN,
        "mean": common.round_floats(mean, 8),
        "std": common.round_floats(std, 8),
        "inactive_features": [f for f, a_ in zip(FEATURES, active) if not a_],
        "calibration": {"method": "platt", "a": a, "b": b, "fitted_on": split["val_month"]},
        "thresholds": {
            "review": round(THRESHOLDS["review"], 6),
            "decline": round(THRESHOLDS["decline"], 6),
            "rule": "calibrated SCORE >= decline -> decline; >= review -> review; else approve",
            "costs_usd": COSTS,
            "derivation": "Bayes-optimal on a calibrated P(fraud): review = review / missed_fraud, "
                          "decline = 1 - review / blocked_good (models.fraud.decision_thresholds)",
            "settings": {"FRAUD_REVIEW_THRESHOLD": round(THRESHOLDS["review"], 6),
                         "FRAUD_DECLINE_THRESHOLD": round(THRESHOLDS["decline"], 6)},
        },
        "class_weight": {"pos_weight": round(pos_weight, 5)},
        "split": split | {"n_train": int(tr.sum()), "n_val": int(va.sum()), "n_test": int(te.sum())},
        "data_sha256": common.sha256_file(snapshot),
        "data_files": [common.data_file_entry(snapshot, settings)] + [
            common.data_file_entry(p, settings) for p in [Path(settings.data_dir) / SOURCE] if p.exists()
        ],
        "metrics": metrics,
        "hyperparams": {"seed": SEED, "epochs": EPOCHS, "batch": BATCH, "lr": LR, "weight_decay": WEIGHT_DECAY},
        "torch": torch.__version__,
        "train_seconds": t.seconds(),
    }
    common.write_meta(vdir, meta)
    return meta


def main(argv: list[str] | None = None) -> dict:
    return common.train_main(
        "python -m models.fraud", __doc__, argv, train, lambda args, s: ensure_snapshot(args.snapshot),
        extra_args=lambda ap: ap.add_argument("--snapshot", type=Path, default=DEFAULT_SNAPSHOT,
                                              help="feature snapshot (.parquet or .csv)"))


if __name__ == "__main__":
    main()
