"""Evaluation (minimal): the live fraud verdicts of a replay against its labels.

``python -m replay evaluate [stream options]`` rebuilds the same merged stream as the
replay (same arguments), takes its orders and their labels (the stream's ``fraud-labels``
events), reads the worker's verdicts from the verdict topic (the latest per order: delivery
is at least once) and reports, for the labelled orders:

* coverage (labelled orders with a verdict), the verdict mix, degraded (rules) verdicts;
* PR-AUC (average precision, as scikit-learn computes it), ROC-AUC, and precision / recall
  at the review and decline thresholds (``score >=`` threshold);
* the same per id namespace (``ef`` real e-commerce fraud data, ``syn`` SYNTHETIC) and, for
  synthetic orders, recall per injected pattern.

The full evaluation, ``python -m replay.evaluate --report docs/EVALUATION.md`` (:func:`main`),
starts a worker of its own (own topics, app id and Redis database, default 8) over the local
stack, replays real data through it and writes a markdown report with PNG plots, compared
with ``docs/models_results.json`` (docs/MODELS.md) within the :data:`TOLERANCES`:

* fraud: ``ecommerce-fraud`` since July 2015 (July warms up the 30-day features), scored on
  Aug + Sep 2015 (MODELS.md's test months); labels are joined here, never published, and the
  worker's label window is off, so the live score is the served model's alone;
* recommendations: the Taobao test period of MODELS.md at a fixed click rate; each next
  click is scored against the newest list emitted for that user before the click was sent
  (HR@k / MRR@k, k = ``REC_TOP_K``);
* pricing: the first ``retail_orders`` Online Retail invoices with their catalog price history,
  merged in time order, priced live by the worker's bandit (``PRICING_POLICY=bandit``): every
  emitted adjustment is checked against the guardrails (step, floor, ceiling) from the
  catalog's own costs and reference prices, and what the bandits learned is summarised.
  Revenue is not compared: the recorded orders do not respond to prices, so that comparison
  needs a demand model (docs/ONLINE.md's simulator does it).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter, defaultdict
from typing import Optional

from features.definitions import FRAUD_VECTOR, LABEL_DELAY_S
from models import scores
from streamscore.events import FraudLabel, Order
from streamscore.settings import Settings
from streamscore.topics import read_topic


def average_precision(y: list[int], s: list[float]) -> Optional[float]:
    """Average precision (:mod:`models.scores`, scikit-learn's); None without positives."""
    return scores.or_none(scores.average_precision(y, s))


def roc_auc(y: list[int], s: list[float]) -> Optional[float]:
    """Probability that a random positive scores above a random negative (ties count half); None with one class."""
    return scores.or_none(scores.roc_auc(y, s))


def _at(y: list[int], s: list[float], threshold: float) -> dict:
    flagged = [label for label, score in zip(y, s) if score >= threshold]
    tp = sum(flagged)
    positives = sum(y)
    return {"threshold": threshold, "flagged": len(flagged),
            "precision": round(tp / len(flagged), 4) if flagged else None,
            "recall": round(tp / positives, 4) if positives else None}


def metrics(rows: list[tuple[int, float, str]], settings: Settings) -> dict:
    """``rows``: (label, score, verdict) of labelled orders with a verdict."""
    y = [r[0] for r in rows]
    s = [r[1] for r in rows]
    ap, auc = average_precision(y, s), roc_auc(y, s)
    return {"orders": len(rows), "fraud": sum(y), "base_rate": round(sum(y) / len(y), 4) if y else None,
            "pr_auc": round(ap, 4) if ap is not None else None, "roc_auc": round(auc, 4) if auc is not None else None,
            "at_review": _at(y, s, settings.fraud_review_threshold),
            "at_decline": _at(y, s, settings.fraud_decline_threshold),
            "verdicts": dict(Counter(r[2] for r in rows))}


def evaluate(events, settings: Settings, wait_s: float = 120.0, idle_s: float = 3.0, keep_rows: bool = False) -> dict:
    """Join the stream's orders and labels with the live verdicts; see the module doc."""
    orders, labels = {}, {}
    for _topic, _key, ev in events:
        if isinstance(ev, Order):
            orders[ev.order_id] = ev
        elif isinstance(ev, FraudLabel):
            labels[ev.order_id] = ev
    wanted = {oid for oid in labels if oid in orders}
    latest: dict[str, dict] = {}  # order id -> its newest verdict (read in offset order)
    seen = 0

    def covered(messages) -> bool:
        nonlocal seen
        for m in messages[seen:]:
            v = json.loads(m.value())
            latest[v["order_id"]] = v
        seen = len(messages)
        return wanted <= latest.keys()

    t0 = time.monotonic()
    messages = read_topic(settings, settings.topic_fraud_verdicts, idle_s=idle_s, limit_s=wait_s, until=covered)
    covered(messages)
    rows, by_ns, by_pattern, missing = [], defaultdict(list), defaultdict(list), []
    degraded = 0
    for oid in sorted(wanted):
        v = latest.get(oid)
        if v is None:
            missing.append(oid)
            continue
        row = (int(labels[oid].is_fraud), float(v["score"]), v["verdict"])
        rows.append(row)
        degraded += bool(v.get("degraded"))
        by_ns[oid.split("-", 1)[0]].append(row)
        if (labels[oid].source or "").startswith("syn:"):
            by_pattern[labels[oid].source.removeprefix("syn:")].append(row)
    patterns = {}
    for pattern, rs in sorted(by_pattern.items()):
        flagged = sum(1 for r in rs if r[1] >= settings.fraud_review_threshold)
        patterns[pattern] = {"orders": len(rs), "flagged_for_review": flagged,
                             "share_flagged": round(flagged / len(rs), 4) if rs else None}
    out = {
        "labelled_orders": len(wanted), "with_verdict": len(rows), "missing_verdicts": len(missing),
        "missing_examples": missing[:5], "degraded_verdicts": degraded,
        "model_versions": dict(Counter(latest[o]["model_version"] for o in wanted if o in latest)),
        "overall": metrics(rows, settings),
        "by_namespace": {ns: metrics(rs, settings) for ns, rs in sorted(by_ns.items())},
        "synthetic_patterns": patterns, "verdict_topic": settings.topic_fraud_verdicts,
        "read_s": round(time.monotonic() - t0, 1),
    }
    if keep_rows:
        out["rows"] = rows
    return out


def markdown(result: dict, command: str) -> str:
    """The report as markdown."""
    def fmt(x):
        return "-" if x is None else (f"{x:.4f}" if isinstance(x, float) else str(x))

    lines = ["# Replay evaluation: live fraud verdicts against labels", "",
             f"Regenerate: `{command}` (after replaying the same stream through a running worker).", "",
             f"Labelled orders: {result['labelled_orders']}, with a live verdict: {result['with_verdict']} "
             f"(missing: {result['missing_verdicts']}), degraded (rules fallback): {result['degraded_verdicts']}. "
             f"Model versions: {', '.join(f'`{k}` ({v})' for k, v in result['model_versions'].items()) or '-'}.", "",
             "| slice | orders | fraud | base rate | PR-AUC | ROC-AUC | P@review | R@review | P@decline | R@decline |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    slices = [("all", result["overall"])] + [(f"`{ns}`" + (" (SYNTHETIC)" if ns == "syn" else ""), m)
                                             for ns, m in result["by_namespace"].items()]
    for name, m in slices:
        lines.append(f"| {name} | {m['orders']} | {m['fraud']} | {fmt(m['base_rate'])} | {fmt(m['pr_auc'])} | "
                     f"{fmt(m['roc_auc'])} | {fmt(m['at_review']['precision'])} | {fmt(m['at_review']['recall'])} | "
                     f"{fmt(m['at_decline']['precision'])} | {fmt(m['at_decline']['recall'])} |")
    if result["synthetic_patterns"]:
        lines += ["", "SYNTHETIC orders by injected pattern (share with score >= the review threshold):", "",
                  "| pattern | orders | flagged | share |", "|---|---|---|---|"]
        for p, v in result["synthetic_patterns"].items():
            lines.append(f"| {p} | {v['orders']} | {v['flagged_for_review']} | {fmt(v['share_flagged'])} |")
    lines += ["", "Not evaluated yet: recommendation hit rate / MRR on the next clicks, revenue under the "
                  "price adjustments; no plots. PR-AUC is average precision (as scikit-learn computes it).", ""]
    return "\n".join(lines)


# --- the full live evaluation: python -m replay.evaluate --report docs/EVALUATION.md ---------------

EVAL_SINCE = "2015-08-01"    # fraud: MODELS.md's test months (Aug + Sep 2015)
# fraud: every purchase is replayed (the long-horizon signals keep 400 days), in chunks of this much
# event time; before a chunk is published, the labels that arrive before its end are applied. A chunk
# no longer than the label delay means every such label's order is in an earlier, already decided chunk.
FRAUD_CHUNK_S = LABEL_DELAY_S
# pricing: events/s of the invoice + catalog replay. The worker evaluates prices on a wall-clock tick
# (PRICE_REFRESH_MAX_ITEMS per PRICE_REFRESH_INTERVAL_S) in event-time windows: a replay at full speed is
# consumed before the first ticks, so each item is evaluated once, at the end, and no window is learned.
PRICING_RATE = 2_000.0
TAOBAO_TEST_FRACTION = 0.2   # recommendations: MODELS.md's Taobao test period (last 20% of the time range)
# The eval worker never learns "silence" (no label within LABEL_WINDOW_S of event time) as legitimate:
# over the replayed months that would make its online model ready and blend it into the scores.
LABEL_WINDOW_OFF_S = 10 * 365 * 86400.0
# Stated before the first run; |live - offline| must not exceed these.
TOLERANCES = {
    "fraud": {"pr_auc": 0.02, "roc_auc": 0.03, "recall_at_review": 0.02, "precision_at_review": 0.10},
    "rec": {"hr": 0.005, "mrr": 0.003},
}


def _ts(day: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc).timestamp()


def check(live: Optional[float], offline: Optional[float], tolerance: float) -> dict:
    """One live-vs-offline comparison: delta and PASS / FAIL (FAIL when either side is missing)."""
    if live is None or offline is None:
        return {"live": live, "offline": offline, "delta": None, "tolerance": tolerance, "pass": False}
    delta = round(live - offline, 4)
    return {"live": live, "offline": offline, "delta": delta, "tolerance": tolerance,
            "pass": abs(delta) <= tolerance + 1e-12, "informative": abs(offline) > tolerance}


def fraud_checks(live: dict, offline: dict, tol: dict = TOLERANCES["fraud"]) -> dict:
    """``live``: :func:`metrics` output; ``offline``: models_results.json fraud.test.neural."""
    return {
        "pr_auc": check(live["pr_auc"], round(offline["pr_auc"], 4), tol["pr_auc"]),
        "roc_auc": check(live["roc_auc"], round(offline["roc_auc"], 4), tol["roc_auc"]),
        "recall_at_review": check(live["at_review"]["recall"] or 0.0, round(offline["at_review"]["recall"], 4),
                                  tol["recall_at_review"]),
        "precision_at_review": check(live["at_review"]["precision"] or 0.0,
                                     round(offline["at_review"]["precision"], 4), tol["precision_at_review"]),
    }


def rec_targets(clicks) -> list[tuple[str, str, float, bool]]:
    """``clicks``: (user, item, sent_ts) in each user's click order. Targets: every click after the
    user's first, consecutive repeats of one item collapsed (as models/sessions.py does):
    (user, item, sent_ts, new) with ``new`` = the item is not among the user's earlier clicks."""
    seen: dict[str, list[str]] = defaultdict(list)
    out = []
    for user, item, sent in clicks:
        history = seen[user]
        if history and history[-1] == item:
            continue
        if history:
            out.append((user, item, sent, item not in history))
        history.append(item)
    return out


def rec_metrics(targets, lists: dict, k: int) -> dict:
    """Hit rate@k and MRR@k of the stored lists. ``lists``: user -> [(ts, items)] sorted by ts;
    a target is scored against the user's newest list with ts <= the target's sent_ts (no list: a miss)."""
    import bisect

    acc = {name: {"targets": 0, "with_list": 0, "hits": 0, "rr": 0.0} for name in ("all", "new")}
    for user, item, sent, new in targets:
        ls = lists.get(user, [])
        i = bisect.bisect_right([t for t, _ in ls], sent) - 1
        items = ls[i][1][:k] if i >= 0 else None
        for name in ("all", "new") if new else ("all",):
            a = acc[name]
            a["targets"] += 1
            if items is None:
                continue
            a["with_list"] += 1
            if item in items:
                a["hits"] += 1
                a["rr"] += 1.0 / (items.index(item) + 1)
    out = {}
    for name, a in acc.items():
        n = a["targets"]
        out[name] = {"targets": n, "with_list": a["with_list"], "hits": a["hits"],
                     f"hr@{k}": round(a["hits"] / n, 4) if n else None,
                     f"mrr@{k}": round(a["rr"] / n, 4) if n else None}
    return out


def rec_checks(live: dict, offline: dict, k: int, tol: dict = TOLERANCES["rec"]) -> dict:
    """``live``: :func:`rec_metrics` ``new`` reading; ``offline``: models_results.json Taobao model ``new``
    (@20: the offline evaluation's cut-off; the live lists hold k items)."""
    return {"hr": check(live[f"hr@{k}"], round(offline["hr@20"], 4), tol["hr"]),
            "mrr": check(live[f"mrr@{k}"], round(offline["mrr@20"], 4), tol["mrr"])}


def pr_curve(y: list[int], s: list[float]) -> tuple[list[float], list[float]]:
    """(recall, precision) points, one per distinct score (descending)."""
    positives = sum(y) or 1
    by_score: dict[float, list[int]] = defaultdict(lambda: [0, 0])
    for label, score in zip(y, s):
        by_score[score][0] += label
        by_score[score][1] += 1
    tp = n = 0
    rec, prec = [0.0], [1.0]
    for score in sorted(by_score, reverse=True):
        tp += by_score[score][0]
        n += by_score[score][1]
        rec.append(tp / positives)
        prec.append(tp / n)
    return rec, prec


def plots(result: dict, img_dir, prefix: str = "eval_") -> list[str]:
    """PNG plots of a :func:`live_evaluation` result; returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pathlib import Path

    img_dir = Path(img_dir)
    img_dir.mkdir(parents=True, exist_ok=True)
    written = []
    rows = result["fraud"].get("rows") or []
    if rows:
        y, s = [r[0] for r in rows], [r[1] for r in rows]
        rec, prec = pr_curve(y, s)
        base = sum(y) / len(y)
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        a1.step(rec, prec, where="post", label=f"live verdicts (PR-AUC {result['fraud']['metrics']['pr_auc']})")
        a1.axhline(base, ls="--", c="grey", label=f"no skill ({base:.3f})")
        a1.set(xlabel="recall", ylabel="precision", title="Fraud, Aug-Sep 2015: live PR curve", ylim=(0, 1))
        a1.legend()
        bins = [i / 200 for i in range(0, 41)]
        a2.hist([v for v, lab in zip(s, y) if not lab], bins=bins, alpha=.6, density=True, label="legitimate")
        a2.hist([v for v, lab in zip(s, y) if lab], bins=bins, alpha=.6, density=True, label="fraud")
        a2.axvline(result["fraud"]["thresholds"]["review"], c="red", ls=":", label="review threshold")
        a2.set(xlabel="live score", ylabel="density", title="Live score by label")
        a2.legend()
        fig.tight_layout()
        fig.savefig(img_dir / f"{prefix}fraud.png", dpi=90)
        plt.close(fig)
        written.append(f"{prefix}fraud.png")
    rec_result = result.get("rec")
    if rec_result:
        k = rec_result["k"]
        names = [f"live HR@{k}", "offline HR@20", f"live MRR@{k}", "offline MRR@20"]
        live, off = rec_result["metrics"]["new"], rec_result["offline_new"]
        vals = [live[f"hr@{k}"] or 0, off["hr@20"], live[f"mrr@{k}"] or 0, off["mrr@20"]]
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.bar(names, vals, color=["tab:blue", "tab:grey", "tab:blue", "tab:grey"])
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.4f}", ha="center", va="bottom")
        ax.set(title="Taobao test period, next clicks on new items", ylabel="rate")
        fig.tight_layout()
        fig.savefig(img_dir / f"{prefix}recommendations.png", dpi=90)
        plt.close(fig)
        written.append(f"{prefix}recommendations.png")
    return written


def _db(url: str, n: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{n}"


def _wait_committed(settings: Settings, group: str, topic: str, n: int, limit_s: float, worker: str) -> int:
    from streamscore import stack as stk
    from streamscore.topics import committed

    end = time.monotonic() + limit_s
    while (done := committed(settings, group, topic)) < n and time.monotonic() < end:
        if not stk.process_alive(worker, settings.run_dir):
            raise RuntimeError(f"worker died:\n{stk.log_tail(worker, settings.run_dir)}")
        time.sleep(0.5)
    return done


def live_evaluation(base: Settings, data_dir, *, redis_db: int = 8, fraud_limit: Optional[int] = None,
                    clicks_limit: Optional[int] = None, click_rate: float = 500.0, wait_s: float = 240.0,
                    retail_orders: int = 3_000, start_stack: bool = True, progress=None,
                    fraud_since=None, pricing_rate: Optional[float] = PRICING_RATE) -> dict:
    """Start a worker on its own topics / app id / Redis db over the local stack, replay real data
    through it and score what it decided (see docs/EVALUATION.md for the method)."""
    import uuid

    import redis

    from streamscore import stack as stk

    from . import sources
    from .load import LagMonitor
    from .publish import publish

    say = progress or (lambda msg: None)
    t0 = time.monotonic()
    run = uuid.uuid4().hex[:8]
    if start_stack:
        say("starting the local stack (broker, valkey, tritonserver) ...")
        stk.LocalStack(base).up(timeout_s=120)
    s = base.replace(
        app_id=f"eval-{run}", redis_url=_db(base.redis_url, redis_db), worker_metrics_port=stk.free_port(),
        label_window_s=LABEL_WINDOW_OFF_S, dev_mode=start_stack or base.dev_mode,  # own stack: local
        **{f: f"eval-{run}-{getattr(base, f)}" for f in (
            "topic_clicks", "topic_orders", "topic_fraud_labels", "topic_catalog", "topic_fraud_verdicts",
            "topic_recommendations", "topic_price_adjustments", "topic_dead_letter")})
    stk.create_topics(s, s.all_topics)
    redis.Redis.from_url(s.redis_url).flushdb()
    worker = f"eval-worker-{run}"
    stk.start_process(worker, [sys.executable, "-m", "streamscore", "worker"], s.to_env(), s.run_dir)
    timings = {}
    try:
        # pricing first (Online Retail is 2010-11, before the fraud data's 2015: event time stays in
        # order on the orders topic): invoices with their catalog history, merged in time order
        t = time.monotonic()
        # the worker's consumer groups joined first: a paced replay is only paced if it is consumed as it is sent
        timings["worker_ready"] = LagMonitor(s, s.input_topics, Counter()).wait_ready(timeout_s=60)
        retail = list(sources.online_retail_orders(data_dir, limit=retail_orders)) if retail_orders else []
        catalog = list(sources.online_retail_catalog(data_dir, until=retail[-1].ts)) if retail else []
        if retail:
            say(f"pricing: replaying {len(retail):,} Online Retail invoices and {len(catalog):,} catalog entries ...")
            merged = sorted([(c.ts, 0, s.topic_catalog, c.item_id, c) for c in catalog]
                            + [(o.ts, 1, s.topic_orders, o.user_id, o) for o in retail], key=lambda e: e[:2])
            publish([(topic, key, e) for _, _, topic, key, e in merged], s, rate=pricing_rate)
            _wait_committed(s, s.consumer_group("pricing"), s.topic_orders, len(retail), wait_s, worker)
            _wait_committed(s, s.consumer_group("pricing"), s.topic_catalog, len(catalog), wait_s, worker)
        timings["pricing_replay_s"] = round(time.monotonic() - t, 1)
        # fraud: every purchase, in chunks of event time; the labels reach the features (fraud links)
        # at their arrival through the fraud role's join_labels, never the worker's online model
        t = time.monotonic()
        fraud, orders = fraud_live(s, data_dir, worker, fraud_limit=fraud_limit, wait_s=wait_s, say=say,
                                   before=len(retail), since=fraud_since)
        timings["fraud_s"] = fraud["replay_s"] = round(time.monotonic() - t, 1)
        # the pricing role reads the orders too (for revenue): let it finish them before the clicks part,
        # so the clicks are not decided next to a backlog of orders in the same worker
        _wait_committed(s, s.consumer_group("pricing"), s.topic_orders, len(retail) + len(orders), wait_s, worker)
        # recommendations: the Taobao test period at click_rate events/s
        clicks = list(sources.taobao_clicks(data_dir))
        t_split = clicks[0].ts + (1 - TAOBAO_TEST_FRACTION) * (clicks[-1].ts - clicks[0].ts)
        test = [c for c in clicks if c.ts >= t_split][:clicks_limit]
        say(f"recommendations: replaying {len(test):,} Taobao clicks (test period) at {click_rate:g}/s ...")
        t = time.monotonic()
        publish([(s.topic_clicks, c.user_id, c) for c in test], s, rate=click_rate)
        group = s.deciding_group(s.topic_clicks)
        done = _wait_committed(s, group, s.topic_clicks, len(test), wait_s, worker)
        time.sleep(2 * s.rec_refresh_interval_s + 1.0)  # the last refresh
        rec = rec_live(s, len(test), done)
        timings["rec_s"] = round(time.monotonic() - t, 1)
        # by now the worker has long evaluated the items the pricing replay touched (one batch of
        # PRICE_REFRESH_MAX_ITEMS per PRICE_REFRESH_INTERVAL_S)
        pricing = pricing_live(s, catalog, len(retail)) if retail else None
        if pricing:
            pricing["rate"] = pricing_rate
    finally:
        log = stk.log_tail(worker, s.run_dir, lines=20)
        stk.stop_process(worker, s.run_dir)
    timings["total_s"] = round(time.monotonic() - t0, 1)
    return {"fraud": {**fraud, "metrics": fraud["overall"], "replayed_orders": len(orders),
                      "thresholds": {"review": s.fraud_review_threshold, "decline": s.fraud_decline_threshold}},
            "rec": rec, "pricing": pricing, "timings": timings, "run": run, "worker_log_tail": log}


def fraud_chunks(orders: list, labels: list, chunk_s: float = FRAUD_CHUNK_S) -> list[tuple[list, list]]:
    """Split event-time ordered ``orders`` into chunks of ``chunk_s``; with each chunk the ``labels``
    (sorted by arrival) that arrive before its end and were not given to an earlier chunk. The labels
    left after the last chunk go with an empty final chunk (they link nothing that is scored).

    >>> from types import SimpleNamespace as N
    >>> os = [N(ts=t) for t in (0, 5, 10, 25)]
    >>> ls = [N(ts=t) for t in (14, 19, 24, 39)]
    >>> [([o.ts for o in c], [l.ts for l in ls_]) for c, ls_ in fraud_chunks(os, ls, 10)]
    [([0, 5], []), ([10], [14, 19]), ([25], [24]), ([], [39])]
    """
    if not orders:
        return [([], sorted(labels, key=lambda lab: lab.ts))] if labels else []
    labels = sorted(labels, key=lambda lab: lab.ts)
    start, out, i, j = orders[0].ts, [], 0, 0
    while i < len(orders):
        end = start + chunk_s
        chunk = []
        while i < len(orders) and orders[i].ts < end:
            chunk.append(orders[i])
            i += 1
        due = []
        while j < len(labels) and labels[j].ts < end:
            due.append(labels[j])
            j += 1
        if chunk or due:
            out.append((chunk, due))
        start = end
    if j < len(labels):
        out.append(([], labels[j:]))
    return out


def apply_labels(s: Settings, labels: list) -> dict[str, dict]:
    """Apply ``labels`` at their arrival time through the fraud role's call
    (:meth:`features.client.FeatureClient.join_labels`: a fraud label links its order's device /
    IP / card from its ts); returns the learn record (the scored feature vector ``x``) of each
    labelled order that had one. Nothing is learned: the worker never sees these labels."""
    import asyncio

    from features.client import FeatureClient

    async def run() -> dict[str, dict]:
        fc = FeatureClient.connect(s)
        out: dict[str, dict] = {}
        try:
            for i in range(0, len(labels), 500):
                chunk = labels[i:i + 500]
                records = await fc.join_labels({lab.order_id: lab.is_fraud for lab in chunk},
                                               at={lab.order_id: lab.ts for lab in chunk})
                out.update({oid: rec for oid, rec in records.items() if rec is not None})
        finally:
            await fc.close()
        return out

    return asyncio.run(run()) if labels else {}


def fraud_live(s: Settings, data_dir, worker: str, *, fraud_limit: Optional[int], wait_s: float, say,
               before: int = 0, since=None) -> tuple[dict, list]:
    """The fraud part of :func:`live_evaluation`: every ``ecommerce-fraud`` purchase replayed into the
    worker's orders topic in chunks of :data:`FRAUD_CHUNK_S` event time (each published as fast as
    possible, then waited for: the worker has committed it), the labels applied at their arrival
    (``LABEL_DELAY_S`` after the purchase, as the offline snapshot does) with :func:`apply_labels`
    before the chunk in which they arrive; the verdicts of the orders since :data:`EVAL_SINCE` are
    joined with their labels (:func:`evaluate`). ``before``: orders already on the topic; ``since``,
    ``fraud_limit``: only the first ``fraud_limit`` purchases from ``since`` on (a shorter run for tests:
    the history before ``since`` is then missing, as it was before every purchase was replayed).
    Also returns the replayed orders; the result's ``live_vectors`` holds each labelled order's
    scored feature vector (for :func:`feature_parity`)."""
    from . import sources
    from .publish import publish

    orders = list(sources.fraud_orders(data_dir, limit=fraud_limit, since=since))
    labels = list(sources.fraud_labels(data_dir, delay_s=LABEL_DELAY_S, limit=fraud_limit, since=since))
    cut = _ts(EVAL_SINCE)
    in_slice = {o.order_id for o in orders if o.ts >= cut}
    chunks = fraud_chunks(orders, labels)
    say(f"fraud: replaying {len(orders):,} orders ({len(in_slice):,} since {EVAL_SINCE}) in {len(chunks)} chunks "
        f"of {FRAUD_CHUNK_S / 86400:g} days, with {len(labels):,} labels at their arrival ...")
    group = s.deciding_group(s.topic_orders)
    vectors: dict[str, dict] = {}
    sent, t_labels = before, 0.0
    for chunk, due in chunks:
        t = time.monotonic()
        vectors.update(apply_labels(s, due))
        t_labels += time.monotonic() - t
        if chunk:
            publish([(s.topic_orders, o.user_id, o) for o in chunk], s)
            sent += len(chunk)
            done = _wait_committed(s, group, s.topic_orders, sent, wait_s, worker)
            if done < sent:
                raise RuntimeError(f"the fraud worker committed {done} of {sent} orders within {wait_s} s")
    fraud = evaluate([("", "", o) for o in orders] + [("", "", lab) for lab in labels if lab.order_id in in_slice],
                     s, wait_s=wait_s, keep_rows=True)
    fraud.update(chunks=len(chunks), labels_applied=len(labels), labels_s=round(t_labels, 1),
                 live_vectors={oid: rec.get("x", {}) for oid, rec in vectors.items() if oid in in_slice})
    return fraud, orders


def feature_parity(live_vectors: dict[str, dict], snapshot) -> dict:
    """Per feature of :data:`FRAUD_VECTOR`: orders whose live vector (the scored ``x``; a NaN is
    left out of it) differs from the offline snapshot's (``snapshot``: a DataFrame with ``order_id``
    and the feature columns) by more than 1e-4, and both means. Orders missing on either side are counted."""
    import math

    off = snapshot.set_index("order_id")
    common = [oid for oid in live_vectors if oid in off.index]
    out = {"orders": len(common), "live_only": len(live_vectors) - len(common), "features": {}}
    if not common:
        return out
    block = off.loc[common]
    for name in FRAUD_VECTOR:
        offline = block[name].tolist()
        live = [live_vectors[oid].get(name, math.nan) for oid in common]
        differ = sum(1 for a, b in zip(live, offline)
                     if not (math.isnan(a) and math.isnan(b)) and not abs(a - b) <= 1e-4)
        mean = (lambda v: round(sum(x for x in v if not math.isnan(x)) / max(1, sum(not math.isnan(x) for x in v)), 4))
        out["features"][name] = {"differ": differ, "live_mean": mean(live), "offline_mean": mean(offline)}
    return out


def pricing_checks(adjustments: list[dict], catalog: dict[str, dict], settings: Settings) -> dict:
    """Guardrail checks of emitted price adjustments against the catalog (item -> {"ref_price",
    "cost"}): at most ``PRICE_MAX_CHANGE_PER_HOUR`` per step (a cent of rounding allowed), never
    below cost x (1 + ``PRICE_MIN_MARGIN``), never above reference price x ``PRICE_MAX_MULTIPLIER``.

    >>> s = Settings()
    >>> cat = {"a": {"ref_price": 10.0, "cost": 6.0}}
    >>> ok = [{"item_id": "a", "old_price": 10.0, "new_price": 11.0}, {"item_id": "a", "old_price": 11.0, "new_price": 12.1}]
    >>> pricing_checks(ok, cat, s)["violations"]
    0
    >>> bad = ok + [{"item_id": "a", "old_price": 12.1, "new_price": 15.5}, {"item_id": "a", "old_price": 6.5, "new_price": 6.2}]
    >>> r = pricing_checks(bad, cat, s); r["violations"], r["by_rule"]
    (2, {'step': 1, 'ceiling': 1, 'floor': 1})
    """
    by_rule: Counter = Counter()
    bad_examples, unknown, violations = [], 0, 0
    step = settings.price_max_change_per_hour
    for a in adjustments:
        c = catalog.get(a["item_id"])
        if c is None:
            unknown += 1
            continue
        old, new = a["old_price"], a["new_price"]
        broken = [rule for rule, hit in (
            ("step", abs(new - old) > old * step + 0.01 + 1e-9),
            ("floor", new < c["cost"] * (1 + settings.price_min_margin) - 0.01 - 1e-9),
            ("ceiling", new > c["ref_price"] * settings.price_max_multiplier + 0.01 + 1e-9)) if hit]
        by_rule.update(broken)
        violations += bool(broken)
        if broken and len(bad_examples) < 5:
            bad_examples.append({**a, "broken": broken})
    return {"adjustments": len(adjustments), "violations": violations, "by_rule": dict(by_rule),
            "unknown_items": unknown, "examples": bad_examples}


def pricing_live(s: Settings, catalog_events, orders_published: int) -> dict:
    """Read back the price adjustments and the bandits' states after the pricing replay."""
    import asyncio

    import redis

    from features.client import FeatureClient
    from features.store import FeatureKeys
    from scorers.pricing_bandit import Period

    catalog: dict[str, dict] = {}
    for c in catalog_events:  # the first price seen is the reference price; the cost is fixed
        catalog.setdefault(c.item_id, {"ref_price": c.price, "cost": c.cost})
    adjustments = [json.loads(m.value()) for m in read_topic(s, s.topic_price_adjustments, idle_s=2.0)]
    r = redis.Redis.from_url(s.redis_url)
    stored_keys = sum(1 for _ in r.scan_iter(FeatureKeys.pattern("i", "bandit"), count=1000))

    async def bandit_states() -> dict:  # read as the worker reads them: the sealed model checked and opened
        fc = FeatureClient.connect(s)
        try:
            return await fc.bandit_states(list(catalog))
        finally:
            await fc.close()

    opened = asyncio.run(bandit_states())
    periods = [None] * (stored_keys - len(opened))  # refused (signature) or not one of the catalog's items
    for fields in opened.values():
        try:
            periods.append(Period.from_fields(fields))
        except Exception:  # reported as unreadable, never silently dropped
            periods.append(None)
    good = [p for p in periods if p is not None]
    arms = Counter(round(p.arm, 2) for p in good if p.arm is not None)
    prices = {}
    for item in catalog:
        raw = r.hget(FeatureKeys.item_catalog(item), "price")
        if raw is not None:
            prices[item] = float(raw) / catalog[item]["ref_price"]
    return {"orders_published": orders_published, "catalog_items": len(catalog),
            "checks": pricing_checks(adjustments, catalog, s), "items_with_bandit": len(good),
            "unreadable_states": len(periods) - len(good), "windows_learned": sum(p.learned for p in good),
            "items_learning": sum(1 for p in good if p.learned > 0),
            "arms_now": dict(sorted(arms.items())),
            "price_vs_reference": {"items": len(prices),
                                   "below": sum(1 for v in prices.values() if v < 0.995),
                                   "at": sum(1 for v in prices.values() if 0.995 <= v <= 1.005),
                                   "above": sum(1 for v in prices.values() if v > 1.005)}}


def read_clicks_and_lists(s: Settings) -> tuple[list, dict, list, list]:
    """The replayed clicks and the emitted lists, read back from the topics. -> (clicks: (user
    pseudonym, item, sent_ts) in each user's click order, lists: user pseudonym -> [(ts, items)] by
    ts, the click messages, the recommendation messages)."""
    from features.privacy import Pseudonymiser
    from features.store import FeatureKeys

    keys = FeatureKeys(Pseudonymiser(s.pii_secret.get_secret_value()))
    msgs = read_topic(s, s.topic_clicks, idle_s=2.0)
    per_user: dict[str, list] = defaultdict(list)
    for m in msgs:
        c = json.loads(m.value())
        per_user[c["user_id"]].append((c["ts"], m.offset(), c["item_id"], m.timestamp()[1] / 1000.0))
    clicks = []
    for user, cs in per_user.items():
        uh = keys.user(user)
        clicks += [(uh, item, sent) for _, _, item, sent in sorted(cs)]
    lists: dict[str, list] = defaultdict(list)
    recs = read_topic(s, s.topic_recommendations, idle_s=2.0)
    for m in recs:
        r = json.loads(m.value())
        lists[r["user"]].append((r["ts"], r["items"]))
    for v in lists.values():
        v.sort(key=lambda x: x[0])
    return clicks, lists, msgs, recs


def rec_live(s: Settings, published: int, committed_clicks: int) -> dict:
    """Read the replayed clicks (their send times) and the emitted recommendation lists back from
    the topics and score every next click against the list the user had when it was sent."""
    clicks, lists, msgs, recs = read_clicks_and_lists(s)
    cold = sum(bool(json.loads(m.value())["cold_start"]) for m in recs)
    targets = rec_targets(clicks)
    k = s.rec_top_k
    clicked = {json.loads(m.value())["item_id"] for m in msgs}
    return {"k": k, "clicks_published": published, "clicks_read": len(msgs), "clicks_committed": committed_clicks,
            "users": len({u for u, _, _ in clicks}), "lists": len(recs), "cold_start_lists": cold,
            "vocabulary": vocabulary_overlap(clicked, _served_vocabulary(s)),
            "metrics": rec_metrics(targets, lists, k)}


def _served_vocabulary(s: Settings) -> set[str]:
    """The served recommender's item vocabulary (``triton_repo/<model>/<version>/items.npy``); empty if absent."""
    from pathlib import Path

    import numpy as np

    files = sorted((Path(__file__).resolve().parent.parent / "triton_repo" / s.model_recommender).glob("*/items.npy"))
    return {str(x) for x in np.load(files[-1], allow_pickle=True)} if files else set()


def vocabulary_overlap(clicked: set[str], vocab: set[str]) -> dict:
    """Distinct clicked item ids found in the model vocabulary as sent, and with the replay's id
    namespace (``tb:``) stripped: a diagnostic for id mismatches between the live path and the model."""
    stripped = {c.split(":", 1)[-1] for c in clicked}
    return {"distinct_clicked": len(clicked), "vocabulary": len(vocab),
            "in_vocabulary_as_sent": len(clicked & vocab), "in_vocabulary_namespace_stripped": len(stripped & vocab),
            "example_sent": min(clicked) if clicked else None, "example_vocabulary": min(vocab) if vocab else None}


def _status(ok: bool) -> str:
    return "**PASS**" if ok else "**FAIL**"


def _result(c: dict) -> str:
    """PASS / FAIL of one check; a PASS is marked uninformative when the offline figure itself is
    within the tolerance of 0 (a live 0 would pass too)."""
    return _status(c["pass"]) + ("" if c.get("informative", True) or not c["pass"]
                                 else " (uninformative: the offline figure is within the tolerance of 0)")


def snapshot_parity(live_vectors: dict[str, dict], path=None) -> dict:
    """:func:`feature_parity` against the snapshot file at ``path`` (default: features.snapshot's output)."""
    from features.snapshot import DEFAULT_OUT

    path = DEFAULT_OUT if path is None else path
    if not path.exists():
        return {"why": f"no snapshot at {path}: `python -m features.snapshot fraud` writes it"}
    import pandas as pd

    from streamscore.settings import ROOT

    parity = feature_parity(live_vectors, pd.read_parquet(path, columns=["order_id", *FRAUD_VECTOR]))
    shown = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
    return {**parity, "snapshot": str(shown)}


def fraud_markdown(f: dict, offline: dict, fc: dict, images: list[str]) -> list[str]:
    """The fraud section of docs/EVALUATION.md (``f``: the result's ``fraud`` part; ``fc``: :func:`fraud_checks`)."""
    def fmt(x, nd=4):
        return "-" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))

    fm = f["metrics"]
    off_f = offline["fraud"]["test"]["neural"]
    lines = ["## Fraud: live verdicts against the labels", "",
             f"Real data: `ecommerce-fraud`, every purchase ({f['replayed_orders']:,} orders, 2015-01 .. 2015-09) "
             f"replayed into the orders topic at their recorded event times, in {f.get('chunks', '-')} chunks of "
             f"{FRAUD_CHUNK_S / 86400:g} days of event time (each published as fast as possible, then waited for until "
             f"the worker has committed it), so the long-horizon device / IP signals (all history, 400-day retention) "
             f"see the history the offline snapshot sees. The labels ({f.get('labels_applied', 0):,}) arrive "
             f"{LABEL_DELAY_S / 86400:g} days after each purchase, as in the offline snapshot "
             "(`features/snapshot.py`): before a chunk is published, the labels arriving before its end are applied "
             "through the fraud role's own call (`FeatureClient.join_labels`, the `*_fraud_linked` links from the "
             "label's arrival time); their orders are in earlier, already decided chunks. The labels are not "
             "published to the worker and its label window (no label = legitimate) is off, so its online (River) "
             "model never learns or blends in and the score is the served Triton model's: the comparison is live "
             f"path vs offline evaluation of the same model (the blended score is not evaluated here). Scored: the "
             f"orders since {EVAL_SINCE} (MODELS.md's test months Aug + Sep 2015) joined with their labels. The fraud "
             f"part took {f.get('replay_s', '-')} s of this run (labels: {f.get('labels_s', '-')} s).", "",
             f"Orders scored: {f['labelled_orders']:,}, with a live verdict: {f['with_verdict']:,} (missing "
             f"{f['missing_verdicts']}), degraded (rules fallback): {f['degraded_verdicts']}; model versions: "
             + (", ".join(f"`{k}` ({v:,})" for k, v in f["model_versions"].items()) or "-")
             + f"; offline served version `{offline['fraud'].get('served_version', '-')}`.", "",
             "| metric | live (replay) | offline (MODELS.md, neural, test months) | delta | tolerance | result |",
             "|---|---|---|---|---|---|",
             f"| orders / frauds | {fm['orders']:,} / {fm['fraud']:,} | {off_f['n']:,} / {off_f['positives']:,} | | | |"]
    names = {"pr_auc": "PR-AUC (average precision)", "roc_auc": "ROC-AUC",
             "recall_at_review": f"recall at score >= review ({f['thresholds']['review']})",
             "precision_at_review": f"precision at score >= review ({f['thresholds']['review']})"}
    for key, c in fc.items():
        lines.append(f"| {names[key]} | {fmt(c['live'])} | {fmt(c['offline'])} | {fmt(c['delta'])} | "
                     f"<= {c['tolerance']} | {_result(c)} |")
    dec = fm["at_decline"]
    lines += [f"| flagged >= review / >= decline ({f['thresholds']['decline']}) | {fm['at_review']['flagged']:,} / "
              f"{dec['flagged']:,} | {off_f['at_review']['tp'] + off_f['at_review']['fp']:.0f} / "
              f"{off_f['at_decline']['tp'] + off_f['at_decline']['fp']:.0f} | | (info) | |",
              f"| verdict mix (the worker's live thresholds) | "
              f"{', '.join(f'{k} {v:,}' for k, v in sorted(fm['verdicts'].items()))} | | | | |", ""]
    parity = f.get("parity")
    if parity and parity.get("features"):
        differing = {n: v for n, v in parity["features"].items() if v["differ"]}
        lines += [f"Feature parity: the live feature vector each test order was scored with (its learn record) "
                  f"against the offline snapshot's (`{parity.get('snapshot', 'build/features/fraud_snapshots.parquet')}`) "
                  f"for the same {parity['orders']:,} orders, feature by feature (a difference: more than 1e-4): "
                  + (f"{len(parity['features']) - len(differing)} of {len(parity['features'])} features agree on "
                     "every order." if differing else f"all {len(parity['features'])} features agree on every order."),
                  ""]
        if differing:
            lines += ["| feature | orders differing | live mean | offline mean |", "|---|---|---|---|"]
            lines += [f"| `{n}` | {v['differ']:,} | {v['live_mean']} | {v['offline_mean']} |" for n, v in differing.items()]
            lines += ["", "Not traced order by order; the expected cause: a chunk's orders go into the orders topic's "
                          "partitions by user and the worker consumes the partitions concurrently, so the orders of two "
                          "users on one device may be decided out of event order (the offline snapshot applies them "
                          "strictly in order).", ""]
    elif parity is not None:
        lines += [f"Feature parity: not compared ({parity.get('why', 'no snapshot')}).", ""]
    if "eval_fraud.png" in images:
        lines += ["![fraud PR curve and score distributions](img/eval_fraud.png)", ""]
    lines += [f"Reading: the later months carry little signal in the model's {len(FRAUD_VECTOR)} features (MODELS.md), "
              "so agreement here means the live path computes the same features and scores as the offline "
              "evaluation, not that much fraud is caught.", ""]
    return lines


def report_markdown(result: dict, offline: dict, command: str, images: list[str]) -> str:
    """docs/EVALUATION.md from a :func:`live_evaluation` result and docs/models_results.json."""
    def fmt(x, nd=4):
        return "-" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))

    f = result["fraud"]
    fc = fraud_checks(f["metrics"], offline["fraud"]["test"]["neural"])
    lines = ["# Evaluation: what the live system decided on replayed real data", "",
             "<!-- generated by `python -m replay.evaluate`: do not edit by hand -->", "",
             f"Regenerate: `{command}` (starts the local stack if needed, runs its own worker on its own topics, "
             f"consumer groups and Redis database, and stops that worker at the end; "
             f"{result['timings']['total_s']} s for this run).", "",
             "Offline reference: `docs/models_results.json` (rendered in [MODELS.md](MODELS.md)). Tolerances were "
             "fixed in `replay/evaluate.py` (`TOLERANCES`) before the first run.", ""]
    lines += fraud_markdown(f, offline, fc, images)
    # recommendations
    r = result.get("rec")
    if r:
        k = r["k"]
        tb = offline["recommender"]["datasets"]["taobao"]
        off_new = tb["results"]["model"]["new"]
        r["offline_new"] = off_new
        rc = rec_checks(r["metrics"]["new"], off_new, k)
        m = r["metrics"]
        lines += ["## Recommendations: the stored list against the next click", "",
                  f"Real data: the Taobao test period of MODELS.md (the clicks after `t_split` = "
                  f"{tb['info']['t_split']}, the last {TAOBAO_TEST_FRACTION:.0%} of the sample's time range): "
                  f"{r['clicks_published']:,} clicks of {r['users']:,} users replayed at a fixed rate into the clicks "
                  f"topic (the worker committed {r['clicks_committed']:,}); the worker emitted {r['lists']:,} lists "
                  f"({r['cold_start_lists']:,} cold-start) of {k} items.", "",
                  "Method: per user, in click order, consecutive repeats of one item collapsed (as offline); every "
                  "click after the user's first is a target, scored against the newest list the worker had emitted "
                  "for that user before the click was sent (list `ts` <= the click message's broker timestamp; no "
                  f"list yet: a miss). HR@{k} = share of targets in the list, MRR@{k} = mean reciprocal rank (0 when "
                  "absent). **new**: targets on an item the user had not clicked before in the replay; the served "
                  "model never recommends a history item, so that is the reading MODELS.md compares like for like.", "",
                  f"| reading | targets | with a list | hits | HR@{k} | MRR@{k} |", "|---|---|---|---|---|---|"]
        for name in ("all", "new"):
            x = m[name]
            lines.append(f"| {name} | {x['targets']:,} | {x['with_list']:,} | {x['hits']:,} | {fmt(x[f'hr@{k}'])} | "
                         f"{fmt(x[f'mrr@{k}'])} |")
        lines += ["", f"| metric | live @{k} (new) | offline @20 (MODELS.md, Taobao new, served model) | delta | "
                      f"tolerance | result |", "|---|---|---|---|---|---|"]
        for key, c in rc.items():
            lines.append(f"| {key.upper()} | {fmt(c['live'])} | {fmt(c['offline'])} | {fmt(c['delta'])} | "
                         f"<= {c['tolerance']} | {_result(c)} |")
        v = r.get("vocabulary") or {}
        mismatch = v.get("in_vocabulary_as_sent", 0) == 0 and v.get("in_vocabulary_namespace_stripped", 0) > 0
        if r["lists"] and r["cold_start_lists"] / r["lists"] > 0.5 and not mismatch:
            lines += ["", f"{r['cold_start_lists']:,} of {r['lists']:,} live lists are cold-start (popularity: the "
                          f"model knew none of the user's history items): of {v.get('distinct_clicked', 0):,} "
                          f"distinct clicked items, {v.get('in_vocabulary_as_sent', 0):,} are in the served "
                          f"model's vocabulary ({v.get('vocabulary', 0):,} ids, e.g. `{v.get('example_vocabulary')}`), "
                          "as expected from a 2-hour sample where most items are seen once."]
        if r["lists"] and r["cold_start_lists"] / r["lists"] > 0.5 and mismatch:
            lines += ["", f"**Finding: {r['cold_start_lists']:,} of {r['lists']:,} live lists are cold-start** "
                          "(popularity fallback: the model knew none of the user's history items). Item ids: of "
                          f"{v.get('distinct_clicked', 0):,} distinct clicked items, "
                          f"{v.get('in_vocabulary_as_sent', 0):,} are in the served model's vocabulary "
                          f"({v.get('vocabulary', 0):,} ids) as the live path sends them (e.g. "
                          f"`{v.get('example_sent')}`), {v.get('in_vocabulary_namespace_stripped', 0):,} once the "
                          f"replay's id namespace is stripped (vocabulary ids look like `{v.get('example_vocabulary')}`). "
                          "So the live path does not score with the served model as MODELS.md evaluated it; the "
                          "FAIL above is that mismatch, not noise."]
        lines += ["", f"Differences that the tolerance has to absorb, stated: the live lists hold {k} items, the "
                      "offline figures are @20 (HR@10 <= HR@20 for the same ranking); offline history is the "
                      f"user's session (30-minute gap), live history is everything the worker stored; the offline "
                      f"run has {tb['info']['targets']:,} targets (sessions may start before `t_split`), this one "
                      f"{m['all']['targets']:,}; the replay compresses time (a list emitted after a click was sent "
                      "cannot count). Most targets are items the model never saw in training (MODELS.md: 72%), a "
                      "miss for any method, so both figures are small and the tolerance is absolute (about three "
                      "binomial standard errors at this many targets).", ""]
        if "eval_recommendations.png" in images:
            lines += ["![live vs offline hit rate and MRR](img/eval_recommendations.png)", ""]
    p = result.get("pricing")
    lines += ["## Pricing", ""]
    if p:
        c = p["checks"]
        pv = p["price_vs_reference"]
        lines += [f"Real data: the first {p['orders_published']:,} Online Retail invoices and their catalog price "
                  f"history ({p['catalog_items']:,} items; cost = 60% of an item's first price, stock 10,000: "
                  "assumed, not in the data), merged in time order, published at "
                  + (f"{p['rate']:,.0f} events/s" if p.get("rate") else "full speed") +
                  " and priced live by the worker's bandit (`PRICING_POLICY=bandit`). The worker evaluates prices "
                  "on a wall-clock tick (`PRICE_REFRESH_MAX_ITEMS` items per `PRICE_REFRESH_INTERVAL_S`) in "
                  "event-time windows, so a replay at full speed is consumed before the first ticks: each item is "
                  "then evaluated once, at the end, and no window is learned. Every adjustment on the price-adjustments topic is checked "
                  "against the guardrails from the catalog's own costs and reference prices (a cent of rounding "
                  "allowed).", "",
                  "| measure | value |", "|---|---|",
                  f"| price adjustments emitted | {c['adjustments']:,} |",
                  f"| guardrail violations (step > {Settings().price_max_change_per_hour:.0%}, below floor, above "
                  f"ceiling) | {c['violations']:,} {dict(c['by_rule']) or ''} |",
                  f"| items with a bandit state (unreadable) | {p['items_with_bandit']:,} ({p['unreadable_states']}) |",
                  f"| items whose bandit has learned / windows learned | {p['items_learning']:,} / "
                  f"{p['windows_learned']:,} |",
                  f"| items priced below / at / above their reference price now | {pv['below']:,} / {pv['at']:,} / "
                  f"{pv['above']:,} |", ""]
        if c["examples"]:
            lines += ["Violations (first 5): " + "; ".join(json.dumps(e) for e in c["examples"]), ""]
        lines += ["Revenue is not compared here: the recorded orders do not respond to the prices the bandit "
                  "sets, so revenue at its prices against the recorded ones needs a demand model. docs/ONLINE.md's "
                  "simulator makes that comparison on demand curves fitted to this data and others.", ""]
    else:
        lines += ["Not run (`--retail-orders 0`).", ""]
    fraud_ok = all(c["pass"] for c in fc.values())
    rec_ok = all(c["pass"] for c in rec_checks(r["metrics"]["new"], r["offline_new"], r["k"]).values()) if r else False
    pricing_ok = bool(p) and p["checks"]["violations"] == 0 and p["checks"]["adjustments"] > 0
    lines += ["## Summary", "", f"- fraud vs MODELS.md: {_status(fraud_ok)}",
              f"- recommendations vs MODELS.md: {_status(rec_ok)}",
              f"- pricing guardrails on live adjustments: {_status(pricing_ok) if p else 'not run'}", ""]
    return "\n".join(lines)


KEPT_SECTIONS = ("recs-yoochoose",)  # generated by their own commands (evaluation/recs_live.py)


def _kept_sections(report) -> str:
    """The ``BEGIN/END generated:<name>`` blocks of :data:`KEPT_SECTIONS` already in ``report``, to be
    appended to the rewritten page ('' when there are none)."""
    import re

    text = report.read_text() if report.exists() else ""
    blocks = [m.group(0) for name in KEPT_SECTIONS for m in re.finditer(
        rf"<!-- BEGIN generated:{re.escape(name)} -->.*?<!-- END generated:{re.escape(name)} -->", text, re.S)]
    return "".join(f"\n{b}\n" for b in blocks)


def main(argv=None) -> int:
    import argparse
    import shlex
    from pathlib import Path

    settings = Settings.for_command(argv, "replay.evaluate")
    ap = argparse.ArgumentParser(prog="streamscore evaluate",
                                 description="Replay real data through a worker on the live local stack and write "
                                             "an evaluation report (markdown + PNG plots) against docs/MODELS.md.")
    ap.add_argument("--report", type=Path, default=Path("docs/EVALUATION.md"))
    ap.add_argument("--img-dir", type=Path, default=None, help="default: img/ next to the report")
    ap.add_argument("--results", type=Path, default=Path("docs/models_results.json"))
    ap.add_argument("--json", type=Path, default=None, help="also write the raw result here")
    ap.add_argument("--snapshot", type=Path, default=None,
                    help="offline fraud snapshot to compare the live feature vectors with (default: "
                         "build/features/fraud_snapshots.parquet, as `python -m features.snapshot fraud` writes it)")
    ap.add_argument("--data-dir", default=settings.data_dir)
    ap.add_argument("--redis-db", type=int, default=8)
    ap.add_argument("--fraud-limit", type=int, default=None, help="at most this many fraud orders (testing)")
    ap.add_argument("--clicks-limit", type=int, default=None, help="at most this many clicks (testing)")
    ap.add_argument("--click-rate", type=float, default=500.0)
    ap.add_argument("--retail-orders", type=int, default=3_000,
                    help="Online Retail invoices for the pricing part (0: skip it)")
    ap.add_argument("--pricing-rate", type=float, default=PRICING_RATE,
                    help="events/s of the pricing replay (0: as fast as possible; then no bandit window is learned)")
    ap.add_argument("--wait", type=float, default=240.0)
    ap.add_argument("--no-stack", action="store_true", help="do not start the local stack (it is running)")
    args = ap.parse_args(argv)

    def say(msg):
        print(f"evaluate: {msg}", file=sys.stderr, flush=True)

    result = live_evaluation(settings, args.data_dir, redis_db=args.redis_db, fraud_limit=args.fraud_limit,
                             clicks_limit=args.clicks_limit, click_rate=args.click_rate, wait_s=args.wait,
                             retail_orders=args.retail_orders, pricing_rate=args.pricing_rate or None,
                             start_stack=not args.no_stack, progress=say)
    offline = json.loads(args.results.read_text())
    result["fraud"]["parity"] = snapshot_parity(result["fraud"].pop("live_vectors", {}), args.snapshot)
    img_dir = args.img_dir or args.report.parent / "img"
    if result["rec"]:
        result["rec"]["offline_new"] = offline["recommender"]["datasets"]["taobao"]["results"]["model"]["new"]
    images = plots(result, img_dir)
    command = "python -m replay.evaluate " + shlex.join(argv if argv is not None else sys.argv[1:])
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(report_markdown(result, offline, command, images) + _kept_sections(args.report))
    summary = {"fraud": result["fraud"]["metrics"], "rec": result["rec"] and result["rec"]["metrics"],
               "pricing": result["pricing"] and result["pricing"]["checks"],
               "timings": result["timings"], "report": str(args.report), "images": images}
    if args.json:
        args.json.write_text(json.dumps({k: v for k, v in result.items()}, indent=1, default=str))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
