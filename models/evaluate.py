"""``python -m models.evaluate [fraud] [recommender] [pricing]``: the numbers of docs/MODELS.md.

Evaluates the served models (the artefacts ``python -m models`` wrote into the Triton
repository) and honest baselines on the same splits, writes every number into
``docs/models_results.json`` (one section per model; a run of some sections keeps the others)
and regenerates ``docs/MODELS.md`` from that file (:mod:`models.report`). Slow parts (gradient
boosting, a backtest with 11 refits, V-SKNN, a YooChoose model) live here, not in
``python -m models``; CI does not run this (about 3-4 minutes on 2 cores).

Sections:

* ``fraud``: the served split (train Jan-Jun, calibrate Jul, test Aug-Sep) for the served
  neural model, logistic regression and gradient boosting (scikit-learn) on the same
  features (the registry's ``FRAUD_VECTOR``), each Platt-calibrated on July; an expanding-window backtest (refit at Jan 8, 15, 22
  and at each month start Feb..Sep, the last 25% of the orders before each origin for
  calibration) reported for January (8-31) and for Feb-Sep; reliability of the served model;
  the ULB credit-card check (legitimate rows weighted 41.1).
* ``recommender``: HR@20 / MRR@20 on YooChoose (published split), Taobao and Diginetica (time
  splits), both readings of :mod:`models.sessions`, for the model, popularity, first-order Markov,
  item-kNN and V-SKNN (:mod:`models.rec_baselines`). The Taobao model row is the served
  artefact; the others are what ``streamscore train-recommender --dataset NAME`` writes
  (:func:`models.recommender.train_log`, re-visit weight chosen on a validation split), trained
  into a scratch repository.
* ``pricing``: the served demand model vs the naive forecast on online-retail-uci, and the
  elasticity fits of :mod:`models.elasticity` (online-retail within-item, retail-price per
  category, avocado-prices per region).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit

from models import common, metrics
from streamscore.settings import ROOT, Settings

RESULTS = ROOT / "docs" / "models_results.json"
DOC = ROOT / "docs" / "MODELS.md"
SECTIONS = ("fraud", "recommender", "pricing")
SEED = 20240610

ULB = Path("ulb-creditcard") / "creditcard_allfraud_plus_sample.raw.csv.gz"
ULB_LEGIT_WEIGHT = 284315 / 6917  # the full file's legitimate rows / this sample's


# --- fraud --------------------------------------------------------------------------------------


QUICK = {"on": False}  # tests: a format check on thin data with small models


def _sklearn_model(kind: str, seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "logistic_regression":
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000))
    if kind == "gradient_boosting":
        return HistGradientBoostingClassifier(learning_rate=0.05, max_iter=20 if QUICK["on"] else 300, max_leaf_nodes=15, min_samples_leaf=40,
                                              l2_regularization=1.0, class_weight="balanced", early_stopping=False,
                                              random_state=seed)
    raise ValueError(kind)


FRAUD_MODELS = ("neural", "logistic_regression", "gradient_boosting")


def fit_fraud_model(kind: str, mod, X: np.ndarray, y: np.ndarray, tr: np.ndarray, va: np.ndarray,
                    val_weights: np.ndarray | None = None, seed: int = SEED):
    """Fit one fraud model on rows ``tr``, Platt-calibrate on ``va`` -> predict(X) -> P(fraud)."""
    from models import fraud

    if kind == "neural":
        net, _ = fraud.fit_net(mod, X, y, tr, va, seed=seed, val_weights=val_weights,
                               epochs=1 if QUICK["on"] else fraud.EPOCHS)
        return lambda Z: mod.predict(net, np.asarray(Z, dtype=np.float32))[0][:, 0].astype(np.float64)
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(X[tr], axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    Xi = np.where(np.isfinite(X), X, mean)
    model = _sklearn_model(kind, seed).fit(Xi[tr], y[tr])
    a, b = fraud.fit_platt(model.decision_function(Xi[va]), y[va].astype(np.float64), weights=val_weights)

    def predict(Z):
        Z = np.where(np.isfinite(Z), Z, mean)
        return expit(a * model.decision_function(Z) + b)

    return predict


def _month(ts: np.ndarray) -> np.ndarray:
    return pd.to_datetime(ts, unit="s", utc=True).strftime("%Y-%m").to_numpy()


def backtest_origins(ts: np.ndarray) -> list[float]:
    """Refit times: Jan 8, 15, 22 (the January wave moves fast) and the first of every later month."""
    t0 = pd.Timestamp(int(ts.min()), unit="s", tz="UTC").normalize()
    first_month = t0.replace(day=1)
    origins = [first_month + pd.Timedelta(days=d) for d in (7, 14, 21)]
    m = first_month + pd.offsets.MonthBegin(1)
    end = pd.Timestamp(int(ts.max()), unit="s", tz="UTC")
    while m <= end:
        origins.append(m)
        m = m + pd.offsets.MonthBegin(1)
    return [o.timestamp() for o in origins]


def evaluate_fraud(settings: Settings, repo: Path, quick: bool = False) -> dict:
    from models import fraud

    mod = common.load_model_py(repo, "fraud")
    meta = common.read_meta(repo, "fraud")
    snapshot = fraud.ensure_snapshot(fraud.DEFAULT_SNAPSHOT)
    df = fraud.load_snapshot(snapshot)
    if quick:  # format check only (tests): a thin time-ordered sample
        df = df.iloc[::10].reset_index(drop=True)
    X = df[fraud.FEATURES].to_numpy(dtype=np.float32)
    y = df["label"].to_numpy().astype(np.float64)
    ts = df["ts"].to_numpy()
    months = _month(ts)
    tr, va, te, split = fraud.split_by_month(ts)
    thresholds = fraud.THRESHOLDS

    # 1. the served split: served model (its artefacts) + baselines fitted the same way
    served = common.load_model_py(repo, "fraud")
    net, _ = served.load(str(common.version_dir(repo, "fraud")))
    scores = {"neural": served.predict(net, X[te])[0][:, 0].astype(np.float64)}
    for kind in FRAUD_MODELS[1:]:
        scores[kind] = fit_fraud_model(kind, mod, X, y, tr, va)(X[te])
    main = {k: fraud.binary_metrics(y[te], s) for k, s in scores.items()}
    # is the difference to each baseline more than noise? paired bootstrap over the test orders
    significance = {k: {name: metrics.paired_bootstrap(y[te], scores["neural"], scores[k], fn,
                                                       n=20 if quick else 300, seed=SEED)
                        for name, fn in (("pr_auc", metrics.average_precision), ("roc_auc", metrics.roc_auc))}
                    for k in FRAUD_MODELS[1:]}
    # where the signal is: the later months, by the features that carry fraud
    later_all = months != months.min()
    f_ = fraud.FEATURES
    signal = []
    for label, mask in (("all orders", np.ones(len(y), bool)),
                        ("purchase within 60 s of signup", X[:, f_.index("account_age_log_s")] <= np.log1p(60)),
                        ("device seen with another user in 30 days", X[:, f_.index("device_users_30d")] > 0),
                        ("IP seen with another user in 30 days", X[:, f_.index("ip_users_30d")] > 0)):
        row = {"slice": label}
        for period, pm in (("january", ~later_all), ("later_months", later_all)):
            sel = pm & mask
            row[period] = {"orders": int(sel.sum()), "fraud_rate": float(y[sel].mean()) if sel.any() else None}
        signal.append(row)
    by_month = {k: {m: fraud.binary_metrics(y[te][months[te] == m], s[months[te] == m], thresholds=None)
                    for m in split["test_months"]} for k, s in scores.items()}
    reliability = metrics.rounded(metrics.reliability(y[te], scores["neural"], 10))

    # 2. expanding-window backtest: January vs later months
    origins = backtest_origins(ts)
    oos = {k: np.full(len(y), np.nan) for k in FRAUD_MODELS}
    folds = []
    for i, origin in enumerate(origins):
        nxt = origins[i + 1] if i + 1 < len(origins) else np.inf
        before = np.nonzero(ts < origin)[0]
        test = (ts >= origin) & (ts < nxt)
        if len(before) < 20 or not test.any():
            continue
        cut = before[int(len(before) * 0.75)]
        ftr = ts < ts[cut]
        fva = (ts >= ts[cut]) & (ts < origin)
        for kind in FRAUD_MODELS:
            oos[kind][test] = fit_fraud_model(kind, mod, X, y, ftr, fva)(X[test])
        folds.append({"origin": pd.Timestamp(origin, unit="s", tz="UTC").strftime("%Y-%m-%d"),
                      "n_train": int(ftr.sum()), "n_calibration": int(fva.sum()), "n_test": int(test.sum()),
                      "test_fraud_rate": float(y[test].mean())})
    jan = (months == months.min()) & np.isfinite(oos["neural"])
    later = (months != months.min()) & np.isfinite(oos["neural"])
    periods = {}
    for name, mask in (("january", jan), ("later_months", later)):
        periods[name] = {k: fraud.binary_metrics(y[mask], oos[k][mask]) for k in FRAUD_MODELS}
    scored = np.isfinite(oos["neural"])
    per_month = {m: {k: fraud.binary_metrics(y[scored & (months == m)], oos[k][scored & (months == m)], thresholds=None)
                     for k in FRAUD_MODELS}
                 for m in sorted(set(months[scored]))}
    for m in per_month:
        for k in FRAUD_MODELS:
            per_month[m][k] = {x: per_month[m][k][x] for x in ("n", "positives", "fraud_rate", "roc_auc", "pr_auc")}

    # 3. ULB credit cards (secondary): time order, 60 / 15 / 25 %, legit rows weighted
    ulb = evaluate_ulb(settings, mod, quick)

    return {
        "served_version": meta["version"],
        "served_train_seconds": meta["train_seconds"],
        "data": {"snapshot_sha256": common.sha256_file(snapshot), "rows": int(len(df)),
                 "fraud_rate": float(y.mean()), "features": len(fraud.FEATURES)},
        "split": split | {"n_train": int(tr.sum()), "n_val": int(va.sum()), "n_test": int(te.sum())},
        "costs_usd": fraud.COSTS,
        "thresholds": thresholds,
        "test": main,
        "neural_minus_baseline": significance,
        "signal": signal,
        "test_by_month": by_month,
        "reliability_neural": reliability,
        "backtest": {"folds": folds, "periods": periods, "per_month": per_month},
        "ulb": ulb,
    }


def evaluate_ulb(settings: Settings, mod, quick: bool = False) -> dict:
    path = Path(settings.data_dir) / ULB
    df = pd.read_csv(path)
    cols = [f"V{i}" for i in range(1, 29)]
    X = np.c_[df[cols].to_numpy(np.float64), np.log1p(df["Amount"].to_numpy(np.float64))].astype(np.float32)
    y = df["Class"].to_numpy().astype(np.float64)
    w = np.where(y == 1, 1.0, ULB_LEGIT_WEIGHT)
    # No time split here: this sample's legitimate rows are only the first ~2.5 hours of the two
    # days (Time <= 9188 s) while the frauds span both days, so any later-time test part would be
    # almost all fraud. A seeded split stratified by class instead (Time is not a feature).
    rng = np.random.default_rng(SEED)
    part = np.empty(len(y), dtype=np.int8)
    for cls in (0.0, 1.0):
        idx = rng.permutation(np.nonzero(y == cls)[0])
        a, b = int(0.60 * len(idx)), int(0.75 * len(idx))
        part[idx[:a]], part[idx[a:b]], part[idx[b:]] = 0, 1, 2
    tr, va, te = part == 0, part == 1, part == 2
    legit_time_max = float(df.loc[y == 0, "Time"].max())
    fraud_time_max = float(df.loc[y == 1, "Time"].max())
    out = {}
    for kind in FRAUD_MODELS:
        p = fit_fraud_model(kind, mod, X, y, tr, va, val_weights=w[va])(X[te])
        r = metrics.binary_report(y[te], np.clip(p, 1e-7, 1 - 1e-7), w[te])
        out[kind] = metrics.rounded({k: r[k] for k in ("roc_auc", "pr_auc", "recall_at_0.01_fpr", "brier", "ece")})
    return {"file": str(ULB), "sha256": common.sha256_file(path), "legit_weight": round(ULB_LEGIT_WEIGHT, 3),
            "split": "seeded split stratified by class: 60% train, 15% calibration, 25% test (not by time: "
                     f"the legitimate rows only cover Time 0 .. {legit_time_max:.0f} s, the frauds 0 .. "
                     f"{fraud_time_max:.0f} s)",
            "n_test": int(te.sum()), "frauds_test": int(y[te].sum()),
            "weighted_fraud_rate_test": round(float((w[te] * y[te]).sum() / w[te].sum()), 6),
            "features": "V1..V28, log1p(Amount)", "models": out}


# --- recommender -------------------------------------------------------------------------------


REC_DATASETS = ("yoochoose", "taobao", "diginetica")


def evaluate_recommender(settings: Settings, repo: Path, quick: bool = False) -> dict:
    import shutil

    from models import rec_baselines, recommender

    rmeta = common.read_meta(repo, "recommender")
    out = {"served_version": rmeta["version"], "served_train_seconds": rmeta["train_seconds"],
           "served_repeat": rmeta.get("repeat"), "datasets": {}}
    for name in REC_DATASETS:
        log = recommender.named_log(name, settings.data_dir)
        data = log.load(False)
        if quick:  # format check only (tests): the first 300 targets
            data.prefixes, data.prefix_ids = data.prefixes[:300], data.prefix_ids[:300]
            data.targets, data.target_ids = data.targets[:300], data.target_ids[:300]
        new = data.new_mask()
        rows, seconds = {}, {}
        for cls in rec_baselines.BASELINES:
            t = time.perf_counter()
            m = cls(data)
            top_all = np.stack([m.recommend(p, 20) for p in data.prefixes])
            top_new = np.stack([m.recommend(p, 20, exclude=p) for p, nw in zip(data.prefixes, new) if nw])
            a = metrics.hr_mrr(top_all, data.targets)
            b = metrics.hr_mrr(top_new, data.targets[new])
            rows[cls.name] = {"all": {"hr@20": a["hr"], "mrr@20": a["mrr"]}, "new": {"hr@20": b["hr"], "mrr@20": b["mrr"]}}
            seconds[cls.name] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        if name == rmeta.get("dataset", "taobao"):  # the served artefacts
            mod = common.load_model_py(repo, "recommender")
            rec = mod.Recommender(str(common.version_dir(repo, "recommender")))
            how, meta = "served artefact (python -m models)", rmeta
        else:  # the same command (train_log: validation-chosen re-visit weight) into a scratch repository
            tmp = common.scratch_repo(repo, "recommender")
            if quick:
                log.params = {**log.params, "epochs": 1}
            meta = recommender.train_log(log, tmp, settings)
            mod = common.load_model_py(tmp, "recommender")
            rec = mod.Recommender(str(common.version_dir(tmp, "recommender")))
            shutil.rmtree(tmp, ignore_errors=True)
            how = f"`streamscore train-recommender --dataset {name}` into a scratch repository (same code)"
        r = recommender.served_readings(rec, data, log.id_prefix)
        rows["model"] = {k: {"hr@20": v["hr@20"], "mrr@20": v["mrr@20"]} for k, v in r.items()}
        seconds["model"] = round(time.perf_counter() - t, 1)
        out["datasets"][name] = {"info": data.info, "model": how, "params": log.params, "repeat": meta["repeat"],
                                 "version": meta["version"], "train_seconds": meta["train_seconds"],
                                 "results": metrics.rounded(rows), "seconds": seconds}
    return out


# --- pricing -----------------------------------------------------------------------------------


def evaluate_pricing(settings: Settings, repo: Path, quick: bool = False) -> dict:
    from models import elasticity, pricing

    meta = common.read_meta(repo, "pricing")
    m = meta["metrics"]
    return {
        "served_version": meta["version"],
        "served_train_seconds": meta["train_seconds"],
        "online_retail": {"panel": meta["panel"], "test": m["test"], "elasticity_served": meta["elasticity"],
                          "within_item": elasticity.online_retail_within_item(settings.data_dir)},
        "retail_price": elasticity.retail_price(settings.data_dir),
        "avocado": elasticity.avocado(settings.data_dir),
        "naive": "units of the same item in the previous period",
        "model_doc": pricing.__doc__.split("\n")[0],
    }


# --- driver ------------------------------------------------------------------------------------


def run(sections: list[str], settings: Settings | None = None, repo: Path | None = None, quick: bool = False) -> dict:
    settings = settings or Settings.from_env()
    repo = Path(repo or settings.triton_repo)
    fns = {"fraud": evaluate_fraud, "recommender": evaluate_recommender, "pricing": evaluate_pricing}
    out = {}
    QUICK["on"] = quick
    for s in sections:
        t = time.perf_counter()
        common.seed_everything(SEED)
        res = metrics.rounded(fns[s](settings, repo, quick))
        res["command"] = f"python -m models.evaluate {s}"
        res["seconds"] = round(time.perf_counter() - t, 1)
        out[s] = res
        print(f"[evaluate] {s}: {res['seconds']} s", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamscore evaluate-models", description=__doc__.split("\n")[0])
    ap.add_argument("sections", nargs="*", metavar="SECTION", help=f"any of {', '.join(SECTIONS)} (default: all)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="results JSON (other sections are kept)")
    ap.add_argument("--doc", type=Path, default=DOC, help="markdown regenerated from the results")
    ap.add_argument("--repo", type=Path, default=None, help="Triton model repository (default: settings.triton_repo)")
    args = ap.parse_args(argv)
    bad = [s for s in args.sections if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {bad}; choose from {SECTIONS}")
    from models import report

    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    results.update(run(args.sections or list(SECTIONS), repo=args.repo))
    results = {k: results[k] for k in SECTIONS if k in results}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.results.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, args.results)
    args.doc.write_text(report.render(results))
    print(f"wrote {args.results} and {args.doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
