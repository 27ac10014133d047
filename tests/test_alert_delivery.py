"""Alerts reach someone: Prometheus -> Alertmanager -> the project's webhook receiver, over the real stack.

The session's local stack runs Prometheus (the project's rules), Alertmanager and the receiver. The
HTTP service is started on the port Prometheus scrapes, over a Redis database (12) where an
unsigned fraud checkpoint was planted: it refuses it (``streamscore_state_refused_total``), the
``StreamscoreStoredStateRefused`` rule fires, and the receiver gets the alert with its labels,
severity, summary and runbook link, logs it and stores it; ``streamscore alerts list`` shows it.
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
