"""Replay through a live worker over the real local stack: load mode (events/s and consumer
lag from committed offsets), then a backfill of the same events into an empty Redis
database, which must hold what the worker wrote, key by key.

Own topics, app id (consumer groups) and Redis databases 6 (worker) and 7 (backfill).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

from conftest import TOPOLOGIES, feature_state, free_port, isolated, on_topology, sync_redis
from features.keys import FeatureKeys, esc
from streamscore import stack as stk

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parent.parent
STREAM = ["--scenario", "demo", "--clicks", "4000", "--orders", "300", "--fraud-orders", "400", "--catalog",
          "--synthetic", "fraud", "--synthetic", "demand", "--syn-users", "100", "--syn-days", "3", "--syn-items", "3",
          "--start-ts", "1700000000"]
# Worker state that is not features, so a backfill does not rebuild it: recommendations
# (ss:rec:), scored orders awaiting their labels (ss:o:, ss:g:pending), verdicts and early labels
# (ss:v:, ss:l:), online-model checkpoints (ss:g:ckpt:) and the catalog fields the pricing loop
# writes (conftest.NOT_FEATURES). Any other key family must match.


def _db(url: str, n: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{n}"


def _run(args: list[str], env: dict, timeout: float = 300) -> tuple[dict, str]:
    p = subprocess.run([sys.executable, "-m", "replay", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout), p.stderr


@pytest.fixture(scope="module", params=TOPOLOGIES)
def live(request, stack_settings, tmp_path_factory):
    run = uuid.uuid4().hex[:8]
    s = isolated(on_topology(request, stack_settings, request.param), f"rplive-{run}", 6, worker_metrics_port=free_port(),
                 rec_refresh_interval_s=0.0)
    name = f"rplive-worker-{run}"
    stk.start_process(name, [sys.executable, "-m", "streamscore", "worker"], s.to_env(), s.run_dir)
    env = {**os.environ, **s.to_env()}
    report = tmp_path_factory.mktemp("load") / "load.json"
    try:
        out, err = _run([*STREAM, "--load", "--sample-interval", "0.5", "--drain-timeout", "240",
                         "--report", str(report)], env)
        assert stk.process_alive(name, s.run_dir), stk.log_tail(name, s.run_dir)
    finally:
        lines = 40
        pid = stk.process_alive(name, s.run_dir)
        if pid and report.exists() and not json.loads(report.read_text())["worker"]["drained"]:
            # a worker that stopped catching up: Faust's SIGUSR1 writes every task's and thread's stack to its
            # log (mode.Worker, logging.cry); no stacks after it means its event loop was blocked
            os.kill(pid, signal.SIGUSR1)
            time.sleep(3)
            lines = 400
        log = stk.log_tail(name, s.run_dir, lines=lines)
        stk.stop_process(name, s.run_dir)
    yield s, out, err, json.loads(report.read_text()), env, log


def test_load_mode_reports_rate_and_lag(live):
    s, out, err, report, _, log = live
    total = sum(out["delivered"].values())
    assert out["sent"] == total > 9000 and out["failed"] == {}
    assert report["worker_ready"]["ready"], report["worker_ready"]  # measured after the worker joined
    worker = report["worker"]
    assert worker["drained"], f"worker did not catch up: {worker['final_lag']}\n{log}"
    assert set(worker["groups"]) == {s.topic_clicks, s.topic_orders, s.topic_fraud_labels, s.topic_catalog}
    assert worker["groups"][s.topic_clicks] == f"{s.app_id}-clicks"  # the clicks role
    assert worker["groups"][s.topic_orders] == f"{s.app_id}-fraud"  # the fraud role decides orders
    assert worker["final_lag"] == {t: 0 for t in worker["groups"]}
    last = report["samples"][-1]
    assert last["consumed"] == last["published"] == last["consumed_check"] == {
        t: out["delivered"][t] for t in worker["groups"]}  # committed offsets = every replayed event
    assert max(sum(r["lag"].values()) for r in report["samples"]) > 0  # lag was seen, then drained
    assert report["publish"]["events_per_s"] > 0 and worker["events_per_s"] > 0
    assert "lag " + s.topic_clicks in err  # the table on stderr
    assert out["load"]["worker"]["drained"] and out["load"]["samples"] == len(report["samples"])
    print(f"\nload: {total} events published at {report['publish']['events_per_s']} ev/s; worker caught up after "
          f"{worker['caught_up_after_s']} s = {worker['events_per_s']} ev/s end to end; max lag {worker['max_lag']}")


def test_backfill_equals_what_the_live_worker_wrote(live, stack_settings):
    """On either topology the backfill goes into a standalone Valkey: a cluster's state equals it too."""
    s, out, _, _, env, _ = live
    offline = _db(stack_settings.redis_url, 7)
    result, err = _run(["backfill", *STREAM, "--redis-url", offline, "--flush-db", "--batch", "300"],
                       {**env, "REDIS_TOPOLOGY": "standalone"})
    assert result["keys_before"] == 0 and result["events"] == out["sent"]
    assert result["applied"]["clicks"] == out["delivered"][s.topic_clicks]
    assert result["applied"]["orders"] == out["delivered"][s.topic_orders]
    assert result["applied"]["catalog"] == out["delivered"][s.topic_catalog]
    labels = out["delivered"][s.topic_fraud_labels]  # fraud ones applied (their links), legitimate ones counted
    assert result["applied"]["fraud_labels"] > 0
    assert result["applied"]["fraud_labels"] + result["ignored"]["legitimate_labels"] == labels
    assert "backfill:" in err
    live_state = feature_state(sync_redis(s))
    backfilled = feature_state(redis.Redis.from_url(offline))
    assert len(live_state) > 10_000
    assert sorted(set(live_state) ^ set(backfilled))[:10] == []
    differing = [k for k in live_state if live_state[k] != backfilled[k]]
    kinds = {k.split(":")[1] for k in live_state}
    print(f"\nbackfill: {result['events']} events at {result['events_per_s']} ev/s; {len(live_state)} feature keys "
          f"({', '.join(sorted(kinds))}) compared with the live worker's, {len(differing)} differ")
    assert not differing, [(k, live_state[k], backfilled[k]) for k in differing[:3]]
    # the synthetic (labelled) items and users went through both paths too
    assert any(k.startswith(FeatureKeys.prefix("i")) and ":" + esc("syn:ditem-") in k for k in live_state)


def test_evaluate_live_verdicts_against_labels(live, tmp_path):
    s, out, _, _, env, _ = live
    result, _ = _run(["evaluate", *STREAM, "--wait", "60", "--out", str(tmp_path / "eval.md"),
                      "--json", str(tmp_path / "eval.json")], env)
    labels = out["delivered"][s.topic_fraud_labels]
    assert result["labelled_orders"] == result["with_verdict"] == labels and result["missing_verdicts"] == 0
    assert set(result["by_namespace"]) == {"ef", "syn"}  # real fraud data and the SYNTHETIC orders
    assert set(result["synthetic_patterns"]) == {"legit", "card_testing", "account_takeover", "velocity"}
    overall = result["overall"]
    assert overall["orders"] == labels and 0 < overall["fraud"] < labels
    assert 0 <= overall["pr_auc"] <= 1 and 0 <= overall["roc_auc"] <= 1
    assert sum(overall["verdicts"].values()) == labels
    report = (tmp_path / "eval.md").read_text()
    assert "python -m replay evaluate --scenario demo" in report and "SYNTHETIC" in report
    assert json.loads((tmp_path / "eval.json").read_text())["overall"] == overall
    print(f"\nevaluate: {labels} labelled orders, PR-AUC {overall['pr_auc']} ROC-AUC {overall['roc_auc']} "
          f"(ef {result['by_namespace']['ef']['pr_auc']}, syn {result['by_namespace']['syn']['pr_auc']}); "
          f"synthetic patterns flagged { {p: v['share_flagged'] for p, v in result['synthetic_patterns'].items()} }")
