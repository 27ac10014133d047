"""``python -m models.backtest``: month-by-month fraud backtest, with and without long-horizon signals.

For every test month after January (2015-02 .. 2015-09 on ``ecommerce-fraud``): train on all
earlier orders whose label had arrived by the test month's start, test on that month. Models:
logistic regression, gradient boosting (scikit-learn) and the served torch MLP
(:func:`models.fraud.fit_net`), each on two feature sets:

* ``base``: the 21 features the model served before (the 30-day store);
* ``lifetime``: ``base`` + the long-horizon entity signals (:data:`LIFETIME`: per device and IP,
  distinct accounts ever seen, first-seen age, lifetime orders, linked to a fraud label before).

Metrics per month and pooled over the test months: PR-AUC (average precision) and ROC-AUC with
95% bootstrap intervals (orders resampled, :data:`BOOT` resamples), from :mod:`models.metrics`.

Point in time: every feature of an order is computed as of just before it (events strictly
earlier). Label timing (the dataset has none): a label arrives :data:`LABEL_DELAY_S` (14 days)
after the purchase (chargebacks take days to weeks); a fraud label counts for the "linked to
fraud" signals from its arrival, and a training row is used only when its label had arrived
before the test month begins.

The features come from the point-in-time snapshot (``build/features/fraud_snapshots.parquet``,
the live feature code). When the snapshot lacks the long-horizon columns (a snapshot of the
old store), they are computed here by :func:`lifetime_reference` - a plain-pandas reference
of the same definitions, also used by the tests to check the online store's values.

Writes ``docs/fraud_backtest.json`` (rendered into docs/MODELS.md by :mod:`models.report`) and
prints the table. ``--quick``: a thin slice, small models (tests).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from features.definitions import LABEL_DELAY_S, LIFETIME_CAP
from models import metrics
from streamscore.settings import ROOT, Settings

RESULTS = ROOT / "docs" / "fraud_backtest.json"
SEED = 20240611
BOOT = 200
ENTITIES = ("device", "ip")  # the data has no payment instrument; users order once
LIFETIME = [f"{e}_{s}" for e in ENTITIES for s in ("users_ever", "first_seen_age_log_s", "orders_ever", "fraud_linked")]
MODELS = ("logistic_regression", "gradient_boosting", "neural")
FEATURE_SETS = ("base", "lifetime")


def lifetime_reference(frame: pd.DataFrame, label_delay_s: float = LABEL_DELAY_S, cap: int = LIFETIME_CAP) -> pd.DataFrame:
    """The long-horizon signals of each order as of just before it, in pandas.

    ``frame``: order_id, user_id, device_id, ip (None = absent), ts, label. Per entity e and order
    at t: ``e_users_ever`` distinct users first seen on e before t (capped at ``cap``);
    ``e_first_seen_age_log_s`` log1p(t - e's first order) if that is before t, else 0;
    ``e_orders_ever`` e's orders before t; ``e_fraud_linked`` 1 if a fraud label of one of e's
    orders arrived (order ts + ``label_delay_s``) before t. Absent entity: all 0.
    """
    out = pd.DataFrame(index=frame.index, data={c: 0.0 for c in LIFETIME})
    big = 1e10  # entity code * big + ts: one sorted array answers "same entity, before t" for all at once
    for e, col in (("device", "device_id"), ("ip", "ip")):
        sub = frame[frame[col].notna()]
        if sub.empty:
            continue
        code = sub[col].astype("category").cat.codes.to_numpy(dtype=np.float64)
        t = sub["ts"].to_numpy(dtype=np.float64)
        lo = code * big

        def before(keys: np.ndarray, at: np.ndarray) -> np.ndarray:
            keys = np.sort(keys)
            return np.searchsorted(keys, at, "left") - np.searchsorted(keys, lo, "left")

        first_pair = sub.assign(_c=code, _t=t).groupby(["_c", "user_id"])["_t"].min().reset_index()
        fraud = sub["label"].to_numpy() == 1
        first = pd.Series(t).groupby(code).transform("min").to_numpy()
        out.loc[sub.index, f"{e}_users_ever"] = np.minimum(
            before(first_pair["_c"].to_numpy() * big + first_pair["_t"].to_numpy(), lo + t), cap)
        out.loc[sub.index, f"{e}_orders_ever"] = before(lo + t, lo + t)
        out.loc[sub.index, f"{e}_first_seen_age_log_s"] = np.where(first < t, np.log1p(np.maximum(t - first, 0)), 0.0)
        out.loc[sub.index, f"{e}_fraud_linked"] = (before(lo[fraud] + t[fraud] + label_delay_s, lo + t) > 0).astype(float)
    return out


def order_frame(data_dir) -> pd.DataFrame:
    """The fraud purchases as the online store sees them (ids as :func:`replay.sources.fraud_orders`)."""
    from replay.sources import fraud_labels, fraud_orders

    labels = {lab.order_id: int(lab.is_fraud) for lab in fraud_labels(data_dir)}
    rows = [(o.order_id, o.user_id, o.device_id, o.ip, o.ts, labels[o.order_id]) for o in fraud_orders(data_dir)]
    return pd.DataFrame(rows, columns=["order_id", "user_id", "device_id", "ip", "ts", "label"])


def load(settings: Settings, snapshot: Path | None = None) -> tuple[pd.DataFrame, str]:
    """Snapshot rows (time ordered) with every LIFETIME column; -> (frame, where they came from)."""
    from models import fraud

    snap = fraud.load_snapshot(fraud.ensure_snapshot(Path(snapshot or fraud.DEFAULT_SNAPSHOT)))
    if all(c in snap.columns for c in LIFETIME):
        return snap, "snapshot (online store)"
    ref = order_frame(settings.data_dir)
    ref = pd.concat([ref[["order_id"]], lifetime_reference(ref)], axis=1)
    snap = snap.drop(columns=[c for c in LIFETIME if c in snap.columns]).merge(ref, on="order_id", how="left")
    return snap.sort_values("ts", kind="mergesort").reset_index(drop=True), "pandas reference (models.backtest)"


def _fit_predict(kind: str, X: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray, quick: bool) -> np.ndarray:
    from models import common, evaluate, fraud

    if kind == "neural":
        mod = common.load_model_py(ROOT / "triton_repo", "fraud")
        idx = np.nonzero(tr)[0]
        va = np.zeros(len(y), bool)
        va[idx[int(len(idx) * 0.8):]] = True  # Platt slice (ranking metrics do not depend on it)
        net, _ = fraud.fit_net(mod, X, y, tr, va, seed=SEED, epochs=1 if quick else fraud.EPOCHS)
        Xi = fraud.impute(X[te], net.mean.numpy())
        return mod.predict(net, Xi)[0][:, 0].astype(np.float64)
    evaluate.QUICK["on"] = quick
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(X[tr], axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    Xi = np.where(np.isfinite(X), X, mean)
    model = evaluate._sklearn_model(kind, SEED).fit(Xi[tr], y[tr])
    return model.decision_function(Xi[te]).astype(np.float64)


def _with_ci(y: np.ndarray, s: np.ndarray, n: int, seed: int) -> dict:
    out = {"n": int(len(y)), "positives": int(y.sum()), "fraud_rate": float(y.mean()) if len(y) else None}
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(y), len(y)) for _ in range(n)]
    for name, fn in (("pr_auc", metrics.average_precision), ("roc_auc", metrics.roc_auc)):
        point = fn(y, s)
        vals = [v for v in (fn(y[i], s[i]) for i in draws) if v is not None and np.isfinite(v)]
        lo, hi = np.percentile(vals, [2.5, 97.5]) if vals else (np.nan, np.nan)
        out[name] = point
        out[f"{name}_ci95"] = [float(lo), float(hi)]
    return metrics.rounded(out, 4)


def backtest(df: pd.DataFrame, models=MODELS, label_delay_s: float = LABEL_DELAY_S, boot: int = BOOT,
             quick: bool = False, base: list[str] | None = None) -> dict:
    """Out-of-sample scores month by month (see the module doc) -> results dict."""
    from models import fraud

    base = list(base or fraud.BASE_FEATURES)
    sets = {"base": base, "lifetime": base + [c for c in LIFETIME if c not in base]}
    ts = df["ts"].to_numpy(dtype=np.float64)
    y = df["label"].to_numpy().astype(np.float64)
    months = pd.to_datetime(ts, unit="s", utc=True).strftime("%Y-%m").to_numpy()
    test_months = sorted(set(months))[1:]
    oos = {(m, s): np.full(len(y), np.nan) for m in models for s in sets}
    folds = []
    for month in test_months:
        te = months == month
        start = ts[te].min()
        tr = (ts + label_delay_s) < start  # labels that had arrived when the month began
        if tr.sum() < 50 or len(set(y[tr])) < 2:
            continue
        folds.append({"test_month": month, "n_train": int(tr.sum()), "n_test": int(te.sum()),
                      "test_fraud_rate": round(float(y[te].mean()), 4)})
        for s, cols in sets.items():
            X = df[cols].to_numpy(dtype=np.float32)
            for m in models:
                oos[(m, s)][te] = _fit_predict(m, X, y, tr, te, quick)
    scored = np.isfinite(oos[(models[0], "base")])
    per_month = {}
    for f in folds:
        sel = months == f["test_month"]
        per_month[f["test_month"]] = {f"{m}/{s}": _with_ci(y[sel], oos[(m, s)][sel], boot, SEED)
                                      for m in models for s in sets}
    pooled = {f"{m}/{s}": _with_ci(y[scored], oos[(m, s)][scored], boot, SEED) for m in models for s in sets}
    diffs = {m: {name: metrics.rounded(metrics.paired_bootstrap(y[scored], oos[(m, "lifetime")][scored],
                                                                oos[(m, "base")][scored], fn, n=boot, seed=SEED), 4)
                 for name, fn in (("pr_auc", metrics.average_precision), ("roc_auc", metrics.roc_auc))}
             for m in models}
    return {"folds": folds, "per_month": per_month, "pooled": pooled, "lifetime_minus_base": diffs,
            "feature_sets": sets, "models": list(models)}


def table(result: dict) -> str:
    """Markdown: one row per test month (and pooled), PR-AUC / ROC-AUC [95% CI] per model and set."""
    cols = [f"{m}/{s}" for m in result["models"] for s in FEATURE_SETS]
    short = {"logistic_regression": "LR", "gradient_boosting": "GBM", "neural": "MLP"}

    def cell(r):
        return (f"{r['pr_auc']:.3f} [{r['pr_auc_ci95'][0]:.3f}, {r['pr_auc_ci95'][1]:.3f}] / "
                f"{r['roc_auc']:.3f} [{r['roc_auc_ci95'][0]:.3f}, {r['roc_auc_ci95'][1]:.3f}]")

    head = ["test month", "orders", "fraud rate"] + [f"{short[c.split('/')[0]]} {c.split('/')[1]}" for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = list(result["per_month"].items()) + [("pooled", result["pooled"])]
    for month, r in rows:
        any_ = r[cols[0]]
        lines.append("| " + " | ".join([month, f"{any_['n']:,}", f"{any_['fraud_rate']:.3f}"] + [cell(r[c]) for c in cols]) + " |")
    return "\n".join(lines)


def run(settings: Settings | None = None, quick: bool = False, models=MODELS, snapshot: Path | None = None,
        boot: int = BOOT) -> dict:
    settings = settings or Settings.from_env()
    t0 = time.perf_counter()
    df, source = load(settings, snapshot)
    if quick:
        df = df.iloc[::8].reset_index(drop=True)
    result = backtest(df, models=models, boot=boot, quick=quick)
    result.update({
        "command": "python -m models.backtest",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs ({platform.processor() or platform.system()}), "
                   f"Python {platform.python_version()}",
        "seconds": round(time.perf_counter() - t0, 1),
        "rows": int(len(df)), "lifetime_source": source, "label_delay_days": LABEL_DELAY_S / 86400,
        "bootstrap_resamples": boot,
    })
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.backtest", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="thin slice, small models (format check)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--snapshot", type=Path)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--boot", type=int, default=BOOT)
    args = ap.parse_args(argv)
    result = run(quick=args.quick, models=tuple(args.models.split(",")), snapshot=args.snapshot, boot=args.boot)
    print(table(result))
    print(json.dumps({"lifetime_minus_base": result["lifetime_minus_base"], "seconds": result["seconds"]}, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
