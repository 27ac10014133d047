"""Alerts reach someone: Prometheus -> Alertmanager -> the project's webhook receiver, over the real stack.

The session's local stack runs Prometheus (the project's rules), Alertmanager and the receiver. The
HTTP service is started on the port Prometheus scrapes, over a Redis database (12) where an
unsigned fraud checkpoint was planted: it refuses it (``streamscore_state_refused_total``), the
``StreamscoreStoredStateRefused`` rule fires, and the receiver gets the alert with its labels,
severity, summary and runbook link, logs it and stores it; ``streamscore alerts list`` shows it.

The tests' stack loads the rules with every ``for:`` cut to ``LOCAL_ALERT_FOR_MAX_S`` (5 s,
tests/conftest.py; :func:`streamscore.stack.local_rule_files`): a stopped worker raises
``StreamscoreNoWorkerUp`` (``for: 2m`` in production) at the receiver within that plus
``DELIVERY_MARGIN_S`` (a scrape, a rule evaluation, Alertmanager's group wait and a busy machine), and
its resolution arrives once the worker is back.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from conftest import isolated, wait_healthy
from features.keys import FeatureKeys
from streamscore import stack as stk

pytestmark = pytest.mark.stack


# Seconds an alert may take beyond its `for:` to reach the receiver: a 1 s scrape and evaluation, a
# 1 s group wait, a 5 s group interval (resolutions), and a slow shared machine.
DELIVERY_MARGIN_S = 30.0


def _received(s) -> list[dict]:
    with urllib.request.urlopen(f"http://{s.alert_receiver_url}/alerts?n=1000", timeout=5) as r:
        return json.loads(r.read())


def test_a_firing_alert_is_delivered_to_the_receiver(stack_settings):
    s = isolated(stack_settings, "alerts", 12)  # the HTTP port of the stack's Prometheus `api` job
    r = redis.Redis.from_url(s.redis_url)
    r.set(FeatureKeys.checkpoint("fraud-online", "latest"), 1)
    r.set(FeatureKeys.checkpoint("fraud-online", 1), b"\x80\x04not signed")
    name = "alerts-api"
    stk.start_process(name, [sys.executable, "-m", "streamscore", "serve"], s.to_env(), s.run_dir)
    try:
        wait_healthy(f"http://127.0.0.1:{s.http_port}", name, s.run_dir)
        end, found = time.monotonic() + 90, []
        while not found:
            assert time.monotonic() < end, ("no alert delivered", _received(s),
                                            stk.log_tail("alertmanager", s.run_dir), stk.log_tail(name, s.run_dir))
            found = [a for a in _received(s) if a["labels"].get("alertname") == "StreamscoreStoredStateRefused"
                     and a["labels"].get("job") == "api" and a["status"] == "firing"]
            time.sleep(0.5)
        alert = found[0]
        assert alert["labels"]["state"] == "fraud-online" and alert["labels"]["reason"] == "unsigned"
        assert alert["labels"]["severity"] == "critical"
        assert "fraud-online" in alert["annotations"]["summary"]
        runbook = alert["annotations"]["runbook_url"]
        assert runbook.startswith("docs/OPERATIONS.md#")
        stored = [json.loads(line) for line in s.alert_store_path.read_text().splitlines()]
        assert any(a["fingerprint"] == alert["fingerprint"] for a in stored)  # kept on disk too
        assert "FIRING critical StreamscoreStoredStateRefused" in stk.log_tail("alert-receiver", s.run_dir, 200)
        listed = subprocess.run([sys.executable, "-m", "streamscore", "alerts", "list", "-n", "1000"],
                                env=s.to_env(), capture_output=True, text=True, timeout=30)
        assert listed.returncode == 0 and "StreamscoreStoredStateRefused" in listed.stdout, listed.stderr
    finally:
        stk.stop_processes([name], s.run_dir)


def test_the_local_alertmanager_config_is_valid_and_routes_to_the_receiver(stack_settings):
    config = stk.local_alertmanager_config(stack_settings)
    assert config["receivers"][0]["webhook_configs"][0]["url"] == f"http://{stack_settings.alert_receiver_url}/alerts"
    written = Path(stack_settings.run_dir) / "alertmanager" / "alertmanager.yml"
    out = subprocess.run(["amtool", "check-config", str(written)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr


def _rule_for_s(settings, name: str) -> float:
    """The `for:` (s) of alert ``name`` as the local Prometheus loaded it."""
    for g in json.loads(urllib.request.urlopen(f"http://{settings.prometheus_url}/api/v1/rules", timeout=5)
                        .read())["data"]["groups"]:
        for rule in g["rules"]:
            if rule["name"] == name:
                return float(rule["duration"])
    raise AssertionError(f"{name} not loaded by Prometheus")


def _worker_up(s, name: str) -> None:
    end = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{s.worker_metrics_port}/metrics", timeout=1).close()
            return
        except OSError:
            assert stk.process_alive(name, s.run_dir), stk.log_tail(name, s.run_dir)
            assert time.monotonic() < end, stk.log_tail(name, s.run_dir)
            time.sleep(0.3)


def _prometheus_alerts(s) -> dict[str, str]:
    """alertname -> state ('pending' / 'firing') of every active alert in the local Prometheus."""
    data = json.loads(urllib.request.urlopen(f"http://{s.prometheus_url}/api/v1/alerts", timeout=5).read())["data"]
    return {a["labels"]["alertname"]: a["state"] for a in data["alerts"]}


def _delivered(s, status: str, after: float, what, starts_at: str | None = None) -> tuple[dict, float]:
    """The first ``StreamscoreNoWorkerUp`` alert with ``status`` (and ``starts_at``: that episode) the
    receiver got after ``after`` (epoch s), and when (waits up to 120 s; the test asserts a tighter bound)."""
    end = time.monotonic() + 120
    while True:
        found = [a for a in _received(s) if a["labels"].get("alertname") == "StreamscoreNoWorkerUp"
                 and a["status"] == status and a["received_at"] > after
                 and starts_at in (None, a["startsAt"])]
        if found:
            return found[0], found[0]["received_at"]
        if time.monotonic() > end:
            pytest.fail(json.dumps({
                "wanted": f"{status} StreamscoreNoWorkerUp received after {what} at {after}",
                "received": [a for a in _received(s) if a["labels"].get("alertname") == "StreamscoreNoWorkerUp"],
                "prometheus": _prometheus_alerts(s)}, indent=1)
                        + stk.log_tail("alertmanager", s.run_dir))
        time.sleep(0.25)


def test_a_stopped_worker_raises_no_worker_up_and_its_return_resolves_it(stack_settings):
    """Over the real stack: the only worker stops -> StreamscoreNoWorkerUp fires and reaches the receiver
    within its `for:` plus DELIVERY_MARGIN_S; the worker comes back -> the receiver gets it resolved."""
    s = isolated(stack_settings, "alerts-worker", 12)  # its metrics on the port of Prometheus's `worker` job
    stk.register_workers(s, {})  # no other worker target: this worker is the only one
    for_s = _rule_for_s(s, "StreamscoreNoWorkerUp")
    assert for_s == min(120.0, s.local_alert_for_max_s) > 0
    name, argv = "alerts-worker", [sys.executable, "-m", "streamscore", "worker", "--role", "pricing"]
    stk.start_process(name, argv, s.to_env(), s.run_dir)
    try:
        _worker_up(s, name)
        end = time.monotonic() + 60
        while "StreamscoreNoWorkerUp" in _prometheus_alerts(s):  # Prometheus has scraped the worker
            assert time.monotonic() < end, ("the worker never counted as up", stk.log_tail(name, s.run_dir))
            time.sleep(0.25)
        started = time.time()
        stk.stop_processes([name], s.run_dir)
        stopped = time.time()  # the worker's metrics endpoint is gone from here on
        firing, fired_at = _delivered(s, "firing", stopped, "the worker stopped")
        assert fired_at - stopped <= for_s + DELIVERY_MARGIN_S, (fired_at - stopped, for_s)
        assert firing["labels"]["severity"] == "critical"
        assert firing["annotations"]["runbook_url"] == "docs/OPERATIONS.md#streamscorenoworkerup"
        assert "FIRING critical StreamscoreNoWorkerUp" in stk.log_tail("alert-receiver", s.run_dir, 400)
        assert started < fired_at  # this episode, not an earlier one of the session
        stk.start_process(name, argv, s.to_env(), s.run_dir)
        _worker_up(s, name)
        back = time.time()
        resolved, resolved_at = _delivered(s, "resolved", back, "the worker came back", firing["startsAt"])
        assert resolved["fingerprint"] == firing["fingerprint"]
        assert resolved_at - back <= DELIVERY_MARGIN_S, resolved_at - back
        print(f"StreamscoreNoWorkerUp (for: {for_s:g}s): firing at the receiver {fired_at - stopped:.1f}s after "
              f"the stop, resolved {resolved_at - back:.1f}s after the return")
    finally:
        stk.stop_processes([name], s.run_dir)
