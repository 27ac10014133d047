"""Render docs/MODELS.md from docs/models_results.json (written by ``python -m models.evaluate``).

``python -m models.report`` re-renders the markdown from the JSON without evaluating anything.
Every number and every "beats / loses" sentence in the document comes from the JSON, so the
document cannot disagree with the evaluation it was generated from
(tests/test_models_report.py checks that the committed pair is in sync).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from streamscore.settings import ROOT

RESULTS = ROOT / "docs" / "models_results.json"
DOC = ROOT / "docs" / "MODELS.md"

FRAUD_NAMES = {"neural": "neural MLP (served)", "logistic_regression": "logistic regression",
               "gradient_boosting": "gradient boosting"}
REC_NAMES = {"popularity": "popularity", "markov": "first-order Markov (last-item successors)",
             "item_knn": "item-kNN (session co-occurrence)", "v_sknn": "V-SKNN (session-kNN, decay)",
             "model": "served model (neural + re-visit mixture)"}
REC_BASELINES = ("popularity", "markov", "item_knn", "v_sknn")


def f(x, nd: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.{nd}f}"


def _secs(x) -> str:
    return "n/a" if x is None else f"{x:.0f} s"


def pct(x, nd: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{nd}f}%"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]


# --- fraud ---------------------------------------------------------------------------------------


def _fraud(r: dict) -> list[str]:
    models = list(FRAUD_NAMES)
    t = r["test"]
    th = r["thresholds"]
    c = r["costs_usd"]
    sp = r["split"]
    out = ["## Fraud", "",
           f"Command: `{r['command']}` ({r['seconds']:.0f} s; the served model itself: `python -m models.fraud`, "
           f"{_secs(r.get('served_train_seconds'))}). "
           f"Served version `{r['served_version']}`.", "",
           f"Data: the point-in-time feature snapshot (`build/features/fraud_snapshots.parquet`, sha256 "
           f"`{r['data']['snapshot_sha256'][:12]}`, {f(r['data']['rows'])} orders) of `ecommerce-fraud`; the model "
           f"reads the {r['data']['features']} columns of the registry's `FRAUD_VECTOR`. All three models see the same "
           f"{r['data']['features']} features and are "
           f"Platt-calibrated on the same month.", "",
           f"### Served split: train {sp['train_months'][0]} .. {sp['train_months'][-1]} "
           f"({f(sp['n_train'])}), calibrate {sp['val_month']} ({f(sp['n_val'])}), test "
           f"{' + '.join(sp['test_months'])} ({f(sp['n_test'])} orders, {f(t['neural']['positives'])} frauds)", ""]
    rows = []
    spec = [("ROC-AUC", "roc_auc", 3), ("PR-AUC (average precision)", "pr_auc", 3),
            ("recall at 1% FPR", "recall_at_0.01_fpr", 3), ("Brier score", "brier", 4),
            ("expected calibration error (10 bins)", "ece", 4), ("log loss", "log_loss", 4)]
    for label, key, nd in spec:
        rows.append([label] + [f(t[m][key], nd) for m in models])
    for name in ("review", "decline"):
        for key in ("precision", "recall", "f1"):
            rows.append([f"{key} at score >= {name} ({th[name]:.3g})"] + [f(t[m][f'at_{name}'][key], 3) for m in models])
        rows.append([f"orders flagged >= {name}"] + [pct(t[m][f'at_{name}']['flagged_share'], 2) for m in models])
    rows.append(["cost per order, USD (approve all: "
                 f"{t['neural']['cost']['approve_all_cost_per_order']:.3f})"] +
                [f(t[m]["cost"]["cost_per_order"], 3) for m in models])
    out += _table(["metric"] + [FRAUD_NAMES[m] for m in models], rows)
    rate = t["neural"]["fraud_rate"]
    best = max(models[1:], key=lambda m: t[m]["pr_auc"])
    d = t["neural"]["pr_auc"] - t[best]["pr_auc"]
    out += [f"No-skill reference: PR-AUC = the fraud rate = {rate:.3f}, ROC-AUC = 0.5. "
            f"Main metric (PR-AUC on the later months): the served neural model "
            + (f"beats the strongest baseline ({FRAUD_NAMES[best]}) by {d:.3f}." if d > 0 else
               f"trails the strongest baseline ({FRAUD_NAMES[best]}) by {-d:.3f}."), ""]
    sig = r["neural_minus_baseline"]
    out += ["Neural minus baseline, with 95% paired-bootstrap intervals over the test orders "
            f"({sig[best]['pr_auc']['resamples']} resamples): "
            + "; ".join(f"{FRAUD_NAMES[k]}: PR-AUC {v['pr_auc']['diff']:+.3f} "
                        f"[{v['pr_auc']['ci95'][0]:+.3f}, {v['pr_auc']['ci95'][1]:+.3f}], ROC-AUC "
                        f"{v['roc_auc']['diff']:+.3f} [{v['roc_auc']['ci95'][0]:+.3f}, {v['roc_auc']['ci95'][1]:+.3f}]"
                        for k, v in sig.items())
            + ". An interval that contains 0 means the test months cannot tell the two models apart.", ""]
    out += [f"Where the signal is (fraud rate by slice of the features; January vs the later months):", ""]
    out += _table(["slice", "January orders", "January fraud rate", "Feb..Sep orders", "Feb..Sep fraud rate"],
                  [[s["slice"], f(s["january"]["orders"]), f(s["january"]["fraud_rate"], 3),
                    f(s["later_months"]["orders"]), f(s["later_months"]["fraud_rate"], 3)] for s in r["signal"]])
    out += ["After January the purchases in the signup minute are gone, and the only slice with a raised fraud "
            "rate in these features is the small one of shared devices: that is where the long-horizon device / "
            "IP signals (accounts ever seen on a device, its first-seen age, a fraud label linked to it before) "
            "add what the 30-day windows miss (the backtest below).", ""]
    by = r["test_by_month"]
    out += ["Per test month (ROC-AUC / PR-AUC):", ""]
    out += _table(["month", "fraud rate"] + [FRAUD_NAMES[m] for m in models],
                  [[m, f(by["neural"][m]["fraud_rate"], 3)] +
                   [f"{f(by[k][m]['roc_auc'])} / {f(by[k][m]['pr_auc'])}" for k in models] for m in by["neural"]])

    # thresholds
    out += ["### Thresholds (approve / review / decline)", "",
            "Costs per order (`models/fraud.py` `COSTS`, USD; the data's median order is USD 34): "
            f"a missed fraud costs {c['missed_fraud']:g} (goods shipped ~35 + chargeback fee 15), a blocked "
            f"legitimate order {c['blocked_good']:g} (lost margin ~10 + goodwill ~10), a manual review "
            f"{c['review']:g} (~5 analyst minutes; it resolves the order correctly). With a calibrated "
            "P(fraud) = p the expected costs are approve p * missed, review = review, decline (1 - p) * blocked, "
            "so the cheapest decision is:", "",
            f"- review when p >= review / missed = {c['review']:g} / {c['missed_fraud']:g} = **{th['review']:.4g}**",
            f"- decline when p >= 1 - review / blocked = 1 - {c['review']:g} / {c['blocked_good']:g} = "
            f"**{th['decline']:.4g}**", "",
            "They are written into `triton_repo/fraud/1/meta.json` (`thresholds`, with the settings names "
            "`FRAUD_REVIEW_THRESHOLD` / `FRAUD_DECLINE_THRESHOLD`). They are only as good as the calibration: "
            "the reliability of the served model on the test months is", ""]
    rel = r["reliability_neural"]
    out += _table(["bin (equal counts)", "orders", "score range", "mean predicted", "observed fraud rate"],
                  [[str(i + 1), f(b["n"]), f"{b['p_min']:.3f} .. {b['p_max']:.3f}", f(b["mean_predicted"], 4),
                    f(b["observed"], 4)] for i, b in enumerate(rel["bins"])])
    out += [f"ECE {rel['ece']:.4f}.", ""]

    # backtest
    bt = r["backtest"]
    out += ["### January vs later months (expanding-window backtest)", "",
            "Every model is refitted at each origin (" + ", ".join(fd["origin"] for fd in bt["folds"]) +
            ") on the orders before it (the last 25% of them for calibration) and scores the orders up to the "
            "next origin, so every score below is out of time. January is the fraud wave (purchases in the "
            "signup minute); the later months are the normal regime.", ""]
    rows = []
    for period, label in (("january", "January (8-31)"), ("later_months", "Feb .. Sep")):
        for m in models:
            x = bt["periods"][period][m]
            rows.append([label, FRAUD_NAMES[m], f(x["n"]), f(x["fraud_rate"], 3), f(x["roc_auc"]), f(x["pr_auc"]),
                         f(x["recall_at_0.01_fpr"]), f(x["brier"], 4),
                         "/".join(f(x["at_review"][k], 2) for k in ("precision", "recall", "f1")),
                         "/".join(f(x["at_decline"][k], 2) for k in ("precision", "recall", "f1"))])
    out += _table(["period", "model", "orders", "fraud rate", "ROC-AUC", "PR-AUC", "recall @1% FPR", "Brier",
                   "P/R/F1 >= review", "P/R/F1 >= decline"], rows)
    out += ["Per month of the backtest (ROC-AUC / PR-AUC; January from its first origin on):", ""]
    pm = bt["per_month"]
    out += _table(["month", "orders", "fraud rate"] + [FRAUD_NAMES[m] for m in models],
                  [[mo, f(pm[mo]["neural"]["n"]), f(pm[mo]["neural"]["fraud_rate"], 3)] +
                   [f"{f(pm[mo][m]['roc_auc'])} / {f(pm[mo][m]['pr_auc'])}" for m in models] for mo in pm])

    u = r["ulb"]
    out += ["### Secondary check: ULB credit cards", "",
            f"`{u['file']}` ({u['features']}); {u['split']}; {f(u['n_test'])} test rows with {u['frauds_test']} "
            f"frauds. The file holds every fraud but only ~2.4% of the legitimate rows, so legitimate rows weigh "
            f"{u['legit_weight']:g} in calibration and in every metric (weighted fraud rate in the test part "
            f"{u['weighted_fraud_rate_test']:.4f}). Same model code, fitted on these features. Because the legitimate "
            "rows come from the first hours only, the V features may partly tell that window from the rest of the "
            "two days: read these numbers as an optimistic check that the training code finds signal where there "
            "is some, not as an estimate for production.", ""]
    out += _table(["model", "ROC-AUC", "PR-AUC", "recall @1% FPR", "Brier", "ECE"],
                  [[FRAUD_NAMES[m].replace(" (served)", ""), f(u["models"][m]["roc_auc"]), f(u["models"][m]["pr_auc"]),
                    f(u["models"][m]["recall_at_0.01_fpr"]), f(u["models"][m]["brier"], 5),
                    f(u["models"][m]["ece"], 5)] for m in models])
    return out


# --- recommender ---------------------------------------------------------------------------------


def _rec(r: dict) -> list[str]:
    ds = r["datasets"]
    names = list(ds)
    cols = [(n, reading, k) for n in names for reading in ("all", "new") for k in ("hr@20", "mrr@20")]
    best = {c: max(ds[c[0]]["results"][m][c[1]][c[2]] for m in [*REC_BASELINES, "model"]) for c in cols}
    rows = []
    for m in [*REC_BASELINES, "model"]:
        row = [REC_NAMES[m]]
        for c in cols:
            v = ds[c[0]]["results"][m][c[1]][c[2]]
            s = f(v, 4)
            row.append(f"**{s}**" if v == best[c] else s)
        rows.append(row)
    label = {"yoochoose": "YooChoose", "taobao": "Taobao", "diginetica": "Diginetica"}
    header = ["method"] + [f"{label.get(n, n)} {reading} {k.upper()}" for n, reading, k in cols]
    out = ["## Recommendations", "",
           f"Command: `{r['command']}` ({r['seconds']:.0f} s; the served model itself: `python -m models.recommender`, "
           f"{_secs(r.get('served_train_seconds'))}; any dataset or click file: `streamscore train-recommender`). "
           f"Served version `{r['served_version']}` (trained on Taobao: the demo's live click stream).", "",
           "HR@20 and MRR@20 over every next click of every test session (`models/sessions.py`). "
           "**all**: every next click; every method may recommend items already in the session (the baselines as "
           "in the published benchmarks; the model's row is its served list, with the re-visit mixture). "
           "**new**: the next clicks on an item not yet in the session, every method with the session's items "
           "excluded (the model: the same served computation with the history masked, `repeat=False`). "
           "Best per column in bold. Each model row is what `streamscore train-recommender` writes for that "
           "dataset, read through `model.py`'s `Recommender` (the computation Triton runs).", ""]
    out += _table(header, rows)
    for n in names:
        d = ds[n]
        i = d["info"]
        rep = d.get("repeat") or {}
        grid = ", ".join(f"{w}: {v:.4f}" for w, v in (rep.get("grid") or {}).items())
        out.append(f"- {label.get(n, n)}: {i['split']}; {f(i['train_sessions'])} training sessions "
                   f"({f(i['train_clicks'])} clicks, {f(i['items'])} items), {f(i['test_sessions'])} test sessions, "
                   f"{f(i['targets'])} targets, of which {f(i['targets_repeat'])} "
                   f"({pct(i['targets_repeat'] / max(i['targets'], 1))}) re-click an item already in the session and "
                   f"{f(i['targets_unseen_in_training'])} ({pct(i['targets_unseen_in_training'] / max(i['targets'], 1))}) "
                   f"are items never seen in training (a miss for every method). Model row: {d['model']}, version "
                   f"`{d.get('version', '?')}`, {_secs(d.get('train_seconds'))} to train; parameters "
                   f"{json.dumps(d['params'])}; re-visit weight {rep.get('weight', 0):g}, chosen on "
                   f"`{rep.get('validation')}` by MRR@20 over every next click ({grid})"
                   + (f"; items outside the vocabulary re-visited too: {'yes' if rep.get('unknown') else 'no'} "
                      f"(known items only: {rep['known_only']:.4f})" if rep.get("known_only") is not None else "")
                   + ".")
    out.append("")
    out.append("Verdicts (computed from the table):")
    out.append("")
    for n in names:
        res = ds[n]["results"]
        for reading in ("all", "new"):
            parts = []
            for k in ("hr@20", "mrr@20"):
                bm = max(REC_BASELINES, key=lambda m: res[m][reading][k])
                d = res["model"][reading][k] - res[bm][reading][k]
                rel = d / res[bm][reading][k] if res[bm][reading][k] else float("nan")
                parts.append(f"{k.upper()} {'beats' if d > 0 else 'loses to'} the strongest baseline "
                             f"({REC_NAMES[bm]}, {res[bm][reading][k]:.4f}) by {abs(d):.4f} ({rel:+.0%})")
            out.append(f"- {label.get(n, n)}, {reading}: the model " + "; ".join(parts) + ".")
    out.append("")
    out += ["Model (`triton_repo/recommender/1/model.py` `RecNet`, trained by `models/recommender.py`): item + "
            "category embeddings, user vector = last item + tanh(W [last item; position-weighted pooling of the "
            "history]), full softmax over the vocabulary with the history masked, a learned category-affinity "
            "term, popularity fallback for histories with no known item. Re-visits: the network never scores the "
            "session's own items; a re-visit table counted on the training sessions, P(the next click returns to "
            "the r-th newest distinct history item | L history items), does, and the list ranks the mixture "
            "w x P(re-visit of h) against (1 - P(any re-visit)) x the network's softmax (renormalised), w chosen on "
            "the validation split above (0, the old never-repeat contract, is one of the choices), and so is "
            "whether history items outside the vocabulary come back too (as their own ids). Architecture and "
            "hyper-parameters were chosen on validation splits carved out of the training data "
            "(`sessions.load(..., validation=True)`), never on these test targets; Diginetica uses fixed "
            "parameters (not tuned). A learned blend of item-kNN co-occurrence scores inside the model was tried "
            "there and left out (no gain, 3x slower training).", "",
            "Users the model cannot place (and everyone while Triton is down) get the trending items of the "
            "categories they viewed instead of global popularity: measured on the cold-start slices of Taobao and "
            "Diginetica in docs/ONLINE.md (Cold start, `python -m evaluation.recs_coldstart`).", ""]
    return out


# --- pricing -------------------------------------------------------------------------------------


def _pricing(r: dict) -> list[str]:
    o = r["online_retail"]
    t = o["test"]
    rp = r["retail_price"]
    av = r["avocado"]
    w = o["within_item"]
    out = ["## Pricing", "",
           f"Command: `{r['command']}` ({r['seconds']:.0f} s; the served model itself: `python -m models.pricing`, "
           f"{_secs(r.get('served_train_seconds'))}). "
           f"Served version `{r['served_version']}`. Naive baseline: {r['naive']}.", ""]
    rows = [
        ["online-retail-uci (served model): weekly units per item, test = last 13 weeks from "
         f"{o['panel']['test_first_day']}, {f(t['n'])} item-weeks, mean {t['mean_units']:.1f} units",
         "MAE / RMSE / WAPE / RMSE log1p / Poisson deviance",
         " / ".join(f(t["model"][k], 3) for k in ("mae", "rmse", "wape", "rmse_log1p", "poisson_deviance")),
         " / ".join(f(t["naive_last_week"][k], 3) for k in ("mae", "rmse", "wape", "rmse_log1p", "poisson_deviance")),
         f"served (one for all items): {o['elasticity_served']:.2f}; within-item (item + week effects, "
         f"{f(w['items'])} items with price changes): {w['elasticity']:.2f} (s.e. {w['se_clustered_by_item']:.2f})"],
        [f"retail-price: monthly qty per product, test = {', '.join(rp['test_months'])}, {f(rp['test_rows'])} "
         f"product-months, mean {rp['test']['mean_qty']:.1f}",
         "MAE / RMSE / WAPE / RMSE log1p / Poisson deviance",
         " / ".join(f(rp["test"]["model"][k], 3) for k in ("mae", "rmse", "wape", "rmse_log1p", "poisson_deviance")),
         " / ".join(f(rp["test"]["naive_last_month"][k], 3)
                    for k in ("mae", "rmse", "wape", "rmse_log1p", "poisson_deviance")),
         f"common {rp['elasticity_common']:.2f}; per category "
         + ", ".join(f"{c} {v['elasticity']:.2f}" for c, v in rp["elasticity_by_category"].items())
         + f"; competitor price {rp['cross_elasticity_competitor']:+.2f}"],
        [f"avocado-prices: weekly volume per region x type ({av['series']} series), test = {av['test_period']}, "
         f"{f(av['test_rows'])} series-weeks", "WAPE / RMSE log",
         " / ".join(f(av["test"]["model"][k], 3) for k in ("wape", "rmse_log")),
         " / ".join(f(av["test"]["naive_last_week"][k], 3) for k in ("wape", "rmse_log")),
         "; ".join(f"{typ}: median {s['median']:.2f} (IQR {s['p25']:.2f} .. {s['p75']:.2f}, "
                   f"{pct(s['share_negative'], 0)} negative)" for typ, s in av["elasticity_by_type"].items())
         + "; TotalUS " + ", ".join(f"{k} {v:.2f}" for k, v in av["elasticity_total_us"].items())],
    ]
    out += _table(["data, target, out-of-time test", "error metrics", "model", "naive (last period)",
                   "elasticity"], rows)
    verdicts = []
    for label, m, n, keys in (("online-retail-uci", t["model"], t["naive_last_week"],
                               ("mae", "rmse", "rmse_log1p", "poisson_deviance")),
                              ("retail-price", rp["test"]["model"], rp["test"]["naive_last_month"],
                               ("mae", "rmse", "rmse_log1p", "poisson_deviance")),
                              ("avocado-prices", av["test"]["model"], av["test"]["naive_last_week"],
                               ("wape", "rmse_log"))):
        won = [k for k in keys if m[k] < n[k]]
        lost = [k for k in keys if m[k] >= n[k]]
        verdicts.append(f"- {label}: the model beats the naive forecast on {', '.join(won) or 'nothing'}"
                        + (f" and loses on {', '.join(lost)}" if lost else "") + ".")
    ratio = o["elasticity_served"] / w["elasticity"] if w["elasticity"] else float("nan")
    if abs(o["elasticity_served"]) < abs(w["elasticity"]):
        why = ("it also learns from cheap items selling more than dear ones, so it understates how much an item's "
               "own demand drops when its price rises, and price increases look more profitable to it than the "
               "price changes in the data support")
    else:
        why = "it is at least as price-sensitive as the items' own price changes suggest"
    verdicts.append(f"- online-retail-uci elasticity: the served model's single elasticity ({o['elasticity_served']:.2f}) "
                    f"is {ratio:.0%} of the within-item estimate ({w['elasticity']:.2f}): {why}. Its mean error on "
                    f"the test weeks is {t['model']['bias']:+.1f} units per item-week "
                    f"(naive {t['naive_last_week']['bias']:+.1f}).")
    out += ["Verdicts (computed from the table):", ""] + verdicts + [""]
    out += ["Methods: online-retail-uci: the served `pricing` model (`models/pricing.py`: log E[units] = "
            "MLP(last week's units and orders, month) + elasticity * log price, Poisson loss); the within-item "
            f"elasticity is {w['method']} (`models/elasticity.py`). retail-price: {rp['method']}. avocado-prices: "
            f"{av['method']}.", ""]
    return out


BACKTEST = ROOT / "docs" / "fraud_backtest.json"


def _backtest(bt: dict) -> list[str]:
    from models.backtest import table

    out = ["### Month-by-month backtest: the long-horizon entity signals", "",
           f"Command: `{bt['command']}` ({bt['seconds']:.0f} s, {bt['date']}, {bt['machine']}); results in "
           "`docs/fraud_backtest.json`. Each test month: train on every earlier order whose label had arrived "
           f"when the month began (labels arrive {bt['label_delay_days']:g} days after the purchase), test on the "
           "month. `base` = the 21 features of the 30-day store; `lifetime` = base + the 8 long-horizon device / "
           "IP signals (distinct accounts ever, first-seen age, lifetime orders, linked to a fraud label before; "
           f"values from the {bt['lifetime_source']}). Cells: PR-AUC [95% CI] / ROC-AUC [95% CI] "
           f"({bt['bootstrap_resamples']} bootstrap resamples of the month's orders). LR = logistic regression, "
           "GBM = gradient boosting, MLP = the served torch model's code.", "", table(bt), ""]
    diffs = bt["lifetime_minus_base"]
    out.append("Pooled lifetime minus base (paired bootstrap, 95% CI): " + "; ".join(
        f"{m}: PR-AUC {d['pr_auc']['diff']:+.3f} [{d['pr_auc']['ci95'][0]:+.3f}, {d['pr_auc']['ci95'][1]:+.3f}], "
        f"ROC-AUC {d['roc_auc']['diff']:+.3f} [{d['roc_auc']['ci95'][0]:+.3f}, {d['roc_auc']['ci95'][1]:+.3f}]"
        for m, d in diffs.items()) + ".")
    out.append("")
    return out


def render(results: dict, backtest: dict | None = None) -> str:
    """``backtest``: the month-by-month backtest (default: docs/fraud_backtest.json when present)."""
    if backtest is None and BACKTEST.exists():
        backtest = json.loads(BACKTEST.read_text())
    out = ["# Models: evaluation", "",
           "<!-- generated by `python -m models.evaluate` (or `python -m models.report`) from "
           "docs/models_results.json: do not edit by hand -->", "",
           "Every number below is written by `python -m models.evaluate [fraud|recommender|pricing]` into "
           "`docs/models_results.json` and this page is rendered from that file. The served models are "
           "trained first by `python -m models` (all three; `make models`); the evaluation reads their "
           "artefacts in `triton_repo/<model>/1/` and fits the baselines on the same splits. Metric code: "
           "`models/metrics.py` (checked against hand-computed values in `tests/test_models_metrics.py`).", ""]
    if "fraud" in results:
        out += _fraud(results["fraud"])
    if backtest:
        out += _backtest(backtest)
    if "recommender" in results:
        out += _rec(results["recommender"])
    if "pricing" in results:
        out += _pricing(results["pricing"])
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamscore report", description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--doc", type=Path, default=DOC)
    args = ap.parse_args(argv)
    args.doc.write_text(render(json.loads(args.results.read_text())))
    print(f"wrote {args.doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
