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

Not (yet) evaluated: recommendation hit rate / MRR on the next clicks, revenue under the
price adjustments; no plots (matplotlib is not a dependency). The report says so.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from typing import Optional

from streamscore.events import FraudLabel, Order
from streamscore.settings import Settings
from streamscore.topics import read_topic


def average_precision(y: list[int], s: list[float]) -> Optional[float]:
    """Average precision: sum over distinct scores (descending) of recall step * precision."""
    positives = sum(y)
    if not positives:
        return None
    by_score: dict[float, list[int]] = defaultdict(lambda: [0, 0])
    for label, score in zip(y, s):
        by_score[score][0] += label
        by_score[score][1] += 1
    tp = n = 0
    ap = 0.0
    for score in sorted(by_score, reverse=True):
        pos, cnt = by_score[score]
        tp += pos
        n += cnt
        ap += (pos / positives) * (tp / n)
    return ap


def roc_auc(y: list[int], s: list[float]) -> Optional[float]:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos = sum(y)
    neg = len(y) - pos
    if not pos or not neg:
        return None
    order = sorted(range(len(s)), key=lambda i: s[i])
    ranks = [0.0] * len(s)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and s[order[j + 1]] == s[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, label in zip(ranks, y) if label)
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


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


def evaluate(events, settings: Settings, wait_s: float = 120.0, idle_s: float = 3.0) -> dict:
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
    return {
        "labelled_orders": len(wanted), "with_verdict": len(rows), "missing_verdicts": len(missing),
        "missing_examples": missing[:5], "degraded_verdicts": degraded,
        "model_versions": dict(Counter(latest[o]["model_version"] for o in wanted if o in latest)),
        "overall": metrics(rows, settings),
        "by_namespace": {ns: metrics(rs, settings) for ns, rs in sorted(by_ns.items())},
        "synthetic_patterns": patterns, "verdict_topic": settings.topic_fraud_verdicts,
        "read_s": round(time.monotonic() - t0, 1),
    }


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
