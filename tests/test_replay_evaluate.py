"""replay/evaluate.py: the metric and report code on tiny hand-made inputs (no stack), and one
small live evaluation on the session stack (marked ``stack``; own topics, app id, Redis db 9)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from replay import evaluate as ev
from streamscore.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_average_precision_and_roc_auc_by_hand():
    y, s = [1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]
    # ranks: P@1 = 1 (recall .5), P@3 = 2/3 (recall 1) -> AP = .5 * 1 + .5 * 2/3
    assert ev.average_precision(y, s) == pytest.approx(0.5 + 1 / 3)
    # pairs (pos, neg): (.9,.8) (.9,.1) (.7,.1) won, (.7,.8) lost -> 3/4
    assert ev.roc_auc(y, s) == pytest.approx(0.75)
    assert ev.roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)  # ties count half
    rec, prec = ev.pr_curve(y, s)
    assert rec == [0.0, 0.5, 0.5, 1.0, 1.0] and prec[1:] == pytest.approx([1.0, 0.5, 2 / 3, 0.5])


def test_check_pass_fail_and_fraud_checks():
    assert ev.check(0.055, 0.054, 0.002)["pass"] and not ev.check(0.06, 0.054, 0.002)["pass"]
    assert ev.check(None, 0.05, 1.0)["pass"] is False
    live = ev.metrics([(1, 0.9, "decline"), (0, 0.07, "review"), (1, 0.01, "approve"), (0, 0.02, "approve")],
                      Settings())
    offline = {"pr_auc": 0.0, "roc_auc": 0.5, "at_review": {"recall": 0.5, "precision": 0.5}}
    checks = ev.fraud_checks(live, offline)
    assert checks["recall_at_review"]["pass"] and checks["precision_at_review"]["pass"]
    assert not checks["pr_auc"]["pass"] and checks["pr_auc"]["delta"] == live["pr_auc"]


def test_rec_targets_collapse_repeats_and_mark_new_items():
    clicks = [("u", "a", 1.0), ("u", "a", 2.0), ("u", "b", 3.0), ("v", "x", 3.5), ("u", "a", 4.0)]
    assert ev.rec_targets(clicks) == [("u", "b", 3.0, True), ("u", "a", 4.0, False)]


def test_rec_metrics_use_the_newest_list_sent_before_the_click():
    targets = [("u", "b", 3.0, True), ("u", "c", 5.0, True), ("w", "z", 9.0, True), ("u", "a", 6.0, False)]
    lists = {"u": [(2.0, ["x", "b"]), (4.0, ["c", "y", "z"]), (5.5, ["q"])]}
    m = ev.rec_metrics(targets, lists, k=2)
    # b: list@2.0 rank 2; c: list@4.0 rank 1; z: no list; a: list@5.5, miss
    assert m["all"] == {"targets": 4, "with_list": 3, "hits": 2, "hr@2": 0.5, "mrr@2": round(1.5 / 4, 4)}
    assert m["new"]["targets"] == 3 and m["new"]["hits"] == 2 and m["new"]["mrr@2"] == 0.5
    assert ev.rec_metrics(targets, {"u": [(2.0, ["x", "y", "b"])]}, k=2)["all"]["hits"] == 0  # cut at k


def test_vocabulary_overlap_spots_a_namespace_mismatch():
    v = ev.vocabulary_overlap({"tb:1", "tb:2", "tb:9"}, {"1", "2", "3"})
    assert v["in_vocabulary_as_sent"] == 0 and v["in_vocabulary_namespace_stripped"] == 2


def _fake_result() -> dict:
    rows = [(1, 0.9, "decline"), (0, 0.07, "review"), (1, 0.05, "approve"), (0, 0.02, "approve")]
    m = ev.metrics(rows, Settings())
    rec = {"k": 10, "clicks_published": 5, "clicks_read": 5, "clicks_committed": 5, "users": 2, "lists": 4,
           "cold_start_lists": 4, "vocabulary": ev.vocabulary_overlap({"tb:1"}, {"1"}),
           "metrics": ev.rec_metrics([("u", "b", 3.0, True)], {"u": [(1.0, ["b"])]}, 10)}
    return {"fraud": {"labelled_orders": 4, "with_verdict": 4, "missing_verdicts": 0, "degraded_verdicts": 0,
                      "model_versions": {"fraud:1": 4}, "overall": m, "metrics": m, "rows": rows,
                      "replayed_orders": 6, "thresholds": {"review": 0.06, "decline": 0.85}},
            "rec": rec, "timings": {"total_s": 1.0}}


def test_report_and_plots_from_a_hand_made_result(tmp_path):
    offline = json.loads((ROOT / "docs" / "models_results.json").read_text())
    result = _fake_result()
    result["rec"]["offline_new"] = offline["recommender"]["datasets"]["taobao"]["results"]["model"]["new"]
    images = ev.plots(result, tmp_path / "img")
    assert images == ["eval_fraud.png", "eval_recommendations.png"]
    assert all((tmp_path / "img" / i).stat().st_size > 1000 for i in images)
    md = ev.report_markdown(result, offline, "python -m replay.evaluate", images)
    assert "## Fraud" in md and "## Recommendations" in md and "## Pricing" in md
    assert "img/eval_fraud.png" in md and "**FAIL**" in md  # toy numbers are far from MODELS.md
    assert "4 of 4 live lists are cold-start" in md  # the id-mismatch finding is reported
    assert "| HR | 1.0000 | 0.0068 |" in md


@pytest.mark.stack
def test_small_live_evaluation(stack_settings, tmp_path):
    import asyncio
    from conftest import free_port
    from features.definitions import LABEL_DELAY_S
    from features.snapshot import order_snapshots, temporary_redis
    from replay.sources import fraud_labels, fraud_orders

    # price ticks 5x as often as by default: the 300 invoices (52 h of event time) paced at 500 events/s
    # span ~40 ticks, so items are evaluated again an hour or more of event time after their first time
    s = stack_settings.replace(worker_metrics_port=free_port(), price_refresh_interval_s=0.2)
    result = ev.live_evaluation(s, s.data_dir, redis_db=9, fraud_limit=7_500, clicks_limit=1_500,
                                click_rate=1_000, wait_s=120, retail_orders=300, start_stack=False,
                                fraud_since="2015-07-01", pricing_rate=500.0)
    f = result["fraud"]
    assert f["replayed_orders"] == 7_500 and f["labelled_orders"] > 500  # July + the first August orders
    assert f["with_verdict"] == f["labelled_orders"] and f["degraded_verdicts"] == 0
    # every label applied at its arrival, in event-time chunks; each scored order's live vector came back
    assert f["chunks"] >= 3 and f["labels_applied"] == 7_500 and len(f["live_vectors"]) == f["labelled_orders"]
    # the offline snapshot of the same purchases and labels (features.snapshot, in a throwaway Valkey): the
    # live vectors match it feature by feature (a replay across 4 partitions may reorder a shared device's
    # orders of different users within a chunk: at most 1% of the orders per feature)
    orders = list(fraud_orders(s.data_dir, limit=7_500, since="2015-07-01"))
    labels = list(fraud_labels(s.data_dir, delay_s=LABEL_DELAY_S, limit=7_500, since="2015-07-01"))
    with temporary_redis() as url:
        snapshot = asyncio.run(order_snapshots(orders, s.replace(redis_url=url), labels))
    parity = ev.feature_parity(f["live_vectors"], snapshot)
    print({n: v for n, v in parity["features"].items() if v["differ"]})
    assert parity["orders"] == f["labelled_orders"] and parity["live_only"] == 0
    assert all(v["differ"] <= 0.01 * parity["orders"] for v in parity["features"].values()), parity
    snapshot.loc[snapshot["order_id"] == next(iter(f["live_vectors"])), "device_orders_ever"] += 1  # it can fail
    assert ev.feature_parity(f["live_vectors"], snapshot)["features"]["device_orders_ever"]["differ"] == \
        parity["features"]["device_orders_ever"]["differ"] + 1
    assert f["metrics"]["roc_auc"] is not None and all("+river" not in v for v in f["model_versions"])
    r = result["rec"]
    assert r["clicks_read"] == r["clicks_committed"] == 1_500 and r["lists"] > 0
    assert r["metrics"]["all"]["targets"] > 0
    p = result["pricing"]  # real Online Retail invoices priced by the live bandit, within the guardrails
    assert p["orders_published"] == 300 and p["catalog_items"] > 100
    assert p["checks"]["adjustments"] > 0 and p["checks"]["violations"] == 0 and p["checks"]["unknown_items"] == 0
    assert p["items_with_bandit"] > 0 and p["unreadable_states"] == 0
    # paced, the replay spans several price ticks: items are evaluated again after their first window (at
    # full speed every item was evaluated once, at the end: 0 windows learned)
    assert p["windows_learned"] > 0 and p["items_learning"] > 0, p
