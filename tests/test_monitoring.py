"""The operators' view, proven on a real Prometheus.

Without the stack: dashboards are generated from ``monitoring/dashboards.py``; the rules
pass ``promtool check rules`` and ``promtool test rules`` with a firing and a quiet unit
test for every alert; every alert and dashboard is documented in docs/OPERATIONS.md; the
local Prometheus config passes ``promtool check config``; metric definitions carry no
unbounded labels.

Over the real local stack (``stack`` marker): a worker and the HTTP service on their own
topics, consumer groups and Redis database replay real events (Taobao clicks, Online
Retail orders and catalog, e-commerce fraud orders and labels) and serve HTTP requests;
the stack's Prometheus scrapes them, and then every query of every dashboard panel runs
against its HTTP API (/api/v1/query) and must return data. The exception is explicit:
``AWAITING_WIRING`` lists the metrics defined in monitoring/metrics.py that no process
records yet; queries over them must parse and return nothing, and the test fails as soon
as one returns data, so the list cannot go stale.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry, Counter as PromCounter, Gauge
from prometheus_client.parser import text_string_to_metric_families

from conftest import isolated, local_settings
from features.privacy import Pseudonymiser
from monitoring import dashboards as dash
from monitoring.metrics import Metrics
from streamscore import stack as stk
from streamscore.settings import Settings
from streamscore.stack import LocalStack, StackError, duration_s, local_prometheus_config, prometheus_bin
from streamscore.topics import committed
from test_compose import load_compose, metric_names, panels_of, recorded_series

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "monitoring" / "rules"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"

# Label names that would carry an id: one series per user, item, order, device, IP, ...
FORBIDDEN_LABEL = re.compile(r"(^|_)(user|users|uid|customer|item|items|sku|product|order|orders|ip|device|card|"
                             r"email|session|account|event|fingerprint|key)(_|$)", re.IGNORECASE)
MAX_LABEL_VALUES = 50

# Metrics defined in monitoring/metrics.py that no process records yet, with where the
# lead records them (also in docs/OPERATIONS.md, "Metrics awaiting wiring"). Dashboard
# queries over them must parse and return nothing until then; a query that returns data
# fails the test with "remove it from AWAITING_WIRING".
AWAITING_WIRING: dict[str, str] = {}
# Metrics recorded only when something fails or happens that this replay does not cause: they may stay at 0.
RECORDED_ON_FAILURE = {
    "streamscore_degraded_decisions_total": "Triton or Redis failing",
    "streamscore_triton_errors_total": "Triton failing",
    "streamscore_triton_retries_total": "Triton failing",
    "streamscore_late_events_total": "events older than a partition's newest event",
    "streamscore_triton_circuit_open": "1 only while a breaker is open",
    "streamscore_consumer_lag_messages": "0 once the consumers have caught up, as at the end of the replay",
    "streamscore_drift_detections_total": "only when a drift detector fires",
    "streamscore_recommendation_clicks_total": "only when a user clicks an item of their stored list (rare in a "
                                               "2-hour Taobao slice)",
    "streamscore_publish_failures_total": "only when the broker does not acknowledge an output",
    "streamscore_follow_ups_dropped_total": "only when a batch's co-visitation round fails other than by an outage",
    "streamscore_verdicts_reemitted_total": "only for a redelivered order (after a crash or a rebalance)",
    "streamscore_state_refused_total": "only when a stored state's signature fails (tests/test_sealed_state.py)",
    "streamscore_http_rate_limited_total": "only when an API token passes API_RATE_LIMIT_PER_S",
}
# Metrics Triton exposes only where it sees a GPU.
GPU_METRICS = {"nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes"}


# --- helpers ---------------------------------------------------------------------------------

def family_names() -> set[str]:
    """Names of every metric monitoring/metrics.py defines, counters with their ``_total``."""
    return {fam.name + ("_total" if fam.type == "counter" else "") for fam in Metrics().registry.collect()}


def family_of(sample_name: str, families: set[str]) -> str | None:
    """The metric family of a sample name (``x_bucket`` -> ``x``), among ``families``."""
    for suffix in ("", "_bucket", "_count", "_sum", "_info", "_total"):
        if suffix and not sample_name.endswith(suffix):
            continue
        base = sample_name[: len(sample_name) - len(suffix)] if suffix else sample_name
        if base in families:
            return base
    return None


def base_metrics(expr: str, recorded: dict[str, str]) -> set[str]:
    """Metric names ``expr`` depends on, recording rules expanded to what they query."""
    out, todo = set(), list(metric_names(expr))
    while todo:
        name = todo.pop()
        if name in recorded:
            todo.extend(metric_names(recorded[name]) - out)
        else:
            out.add(name)
    return out


def recorded(family: str, texts: list[str]) -> bool:
    """True if a process's /metrics shows something recorded in ``family``: a sample away
    from its default (0, or an Info without labels). Series created at 0 do not count."""
    for text in texts:
        for fam in text_string_to_metric_families(text):
            for sample in fam.samples:
                if family_of(sample.name, {family}) is None:
                    continue
                if sample.name == family + "_info":  # an Info: 1.0 always, recorded once it has labels
                    if sample.labels:
                        return True
                elif sample.value != 0:
                    return True
    return False


def label_violations(families, ids: set[str] = frozenset(), where: str = "") -> list[str]:
    """Labels that would make a metric unbounded: an id-like label name, more than
    ``MAX_LABEL_VALUES`` values of one label of one metric, or a value equal to a known id."""
    out, values = [], defaultdict(set)
    for fam in families:
        for sample in fam.samples:
            for label, value in sample.labels.items():
                if FORBIDDEN_LABEL.search(label):
                    out.append(f"{where}{sample.name}: label {label!r} names an id")
                if value in ids:
                    out.append(f"{where}{sample.name}: label {label}={value!r} is an id from the replay")
                values[(fam.name, label)].add(value)
    for (name, label), vals in sorted(values.items()):
        if len(vals) > MAX_LABEL_VALUES:
            out.append(f"{where}{name}: label {label!r} has {len(vals)} values (> {MAX_LABEL_VALUES})")
    return sorted(set(out))


def prom_query(base: str, expr: str, at: float | None = None) -> dict:
    """``/api/v1/query``; returns the JSON body (``status`` is ``error`` for a bad query)."""
    params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
    try:
        with urllib.request.urlopen(f"{base}/api/v1/query?{urllib.parse.urlencode(params)}", timeout=10) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:  # 400 / 422 carry the parse error as JSON
        return json.loads(exc.read())


def prom_get(base: str, path: str, **params) -> dict:
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]


def scalar(base: str, expr: str) -> float | None:
    result = prom_query(base, expr)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def rule_docs() -> list[dict]:
    return [rule for path in sorted(RULES.glob("*.yml")) for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]


def alerts() -> dict[str, dict]:
    return {r["alert"]: r for r in rule_docs() if "alert" in r}


def dashboard_queries() -> list[tuple[str, str, str, str]]:
    """(dashboard title, panel title, refId, expr with variables set to their defaults)."""
    out = []
    for path in sorted(dash.DASHBOARD_DIR.glob("*.json")):
        d = json.loads(path.read_text())
        variables = {v["name"]: v["current"]["value"] for v in d.get("templating", {}).get("list", [])}
        for p in panels_of(d):
            for t in p.get("targets", []):
                expr = t["expr"]
                for name, value in variables.items():
                    expr = re.sub(rf"\$\{{{name}\}}|\${name}\b", value, expr)
                out.append((d["title"], p["title"], t["refId"], expr))
    return out


# --- without the stack -----------------------------------------------------------------------

def test_dashboards_are_generated_from_the_code():
    assert dash.main(["--check"]) == 0, "run: python -m monitoring.dashboards"
    assert {p.name for p in dash.DASHBOARD_DIR.glob("*.json")} == {
        "overview.json", "fraud.json", "recommendations.json", "pricing.json", "serving.json"}


def test_dashboard_variables_are_only_grafana_builtins_or_defined():
    for title, panel, ref, expr in dashboard_queries():
        left = set(re.findall(r"\$\{?(\w+)", expr)) - {"__rate_interval", "__interval", "__range"}
        assert not left, f"{title} / {panel} / {ref}: undefined variables {left}"


def _promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool missing: `make tools` installs it (Debian package prometheus)"
    return found


def test_promtool_checks_the_rules():
    files = sorted(str(p) for p in RULES.glob("*.yml"))
    assert len(files) >= 2
    proc = subprocess.run([_promtool(), "check", "rules", *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(alerts()) >= 7


def test_promtool_unit_tests_of_every_alert_pass():
    tests = sorted(str(p) for p in (RULES / "tests").glob("*.yml"))
    assert tests, "no promtool unit tests under monitoring/rules/tests"
    proc = subprocess.run([_promtool(), "test", "rules", *tests], capture_output=True, text=True, cwd=RULES / "tests")
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    firing, quiet = set(), set()
    for path in (RULES / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for t in case.get("alert_rule_test", []):
                (firing if t.get("exp_alerts") else quiet).add(t["alertname"])
    names = set(alerts())
    assert names - firing == set(), f"alerts never tested firing: {sorted(names - firing)}"
    assert names - quiet == set(), f"alerts never tested quiet: {sorted(names - quiet)}"
    assert (firing | quiet) - names == set(), f"unit tests of unknown alerts: {sorted((firing | quiet) - names)}"


def test_issue_alerts_exist():
    required = {"StreamscoreConsumerLagGrowing", "StreamscoreDecisionLatencyOverBudget", "StreamscoreDegradedShareHigh",
                "StreamscoreDeadLetterSurge", "StreamscoreDriftDetected", "StreamscoreTritonDown",
                "StreamscoreNoEventsArriving"}
    assert required <= set(alerts())


def test_every_alert_has_severity_annotations_and_a_runbook_entry():
    doc = OPERATIONS.read_text()
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        ann = rule["annotations"]
        assert ann.get("summary") and ann.get("description"), name
        assert ann.get("runbook_url") == f"docs/OPERATIONS.md#{name.lower()}", name
        section = re.search(rf"^### {name}\n(.*?)(?=^#{{2,3}} |\Z)", doc, re.MULTILINE | re.DOTALL)
        assert section, f"docs/OPERATIONS.md has no '### {name}' section"
        assert "**Meaning**" in section.group(1) and "**First response**" in section.group(1), name


def test_every_dashboard_and_row_is_documented():
    doc = OPERATIONS.read_text()
    for path in sorted(dash.DASHBOARD_DIR.glob("*.json")):
        d = json.loads(path.read_text())
        assert f"## {d['title']}" in doc, f"docs/OPERATIONS.md lacks a '## {d['title']}' section"
        for p in d["panels"]:
            if p["type"] == "row":
                assert p["title"] in doc, f"{d['title']}: row {p['title']!r} not described"


def test_awaiting_wiring_is_documented_and_defined():
    doc = OPERATIONS.read_text()
    families = family_names()
    for name in AWAITING_WIRING:
        assert name in families, f"{name} is not defined in monitoring/metrics.py"
        assert f"`{name}`" in doc, f"docs/OPERATIONS.md does not list {name}"


def test_checkout_budget_equals_the_setting():
    budget = dash.budgets()
    assert set(budget) == {"fraud", "fraud_http", "recommendation", "pricing"}
    assert budget["fraud_http"] * 1e3 == Settings().fraud_budget_ms
    api_env = load_compose()["services"]["api"].get("environment", {})
    assert float(api_env.get("FRAUD_BUDGET_MS", Settings().fraud_budget_ms)) == budget["fraud_http"] * 1e3


def test_alert_thresholds_match_the_dashboards():
    rules = alerts()
    assert f"> {dash.DEGRADED_SHARE_MAX}" in rules["StreamscoreDegradedShareHigh"]["expr"]
    assert f"> {dash.DEAD_LETTER_SHARE_MAX}" in rules["StreamscoreDeadLetterSurge"]["expr"]


def test_metric_definitions_follow_conventions():
    families = list(Metrics().registry.collect())
    assert families
    for fam in families:
        assert fam.name.startswith("streamscore_"), fam.name
        assert fam.documentation.strip(), fam.name
        if fam.type == "histogram" and fam.name not in ("streamscore_batch_size_events", "streamscore_fraud_score"):
            assert fam.name.endswith("_seconds"), f"{fam.name}: durations in seconds, named _seconds"
    # label names of every child a process may create: the registry's label names
    m = Metrics()
    for attr, metric in vars(m).items():
        for label in getattr(metric, "_labelnames", ()):
            assert not FORBIDDEN_LABEL.search(label), f"{attr}: label {label!r} would carry an id"


def test_label_checker_catches_unbounded_labels():
    r = CollectorRegistry()
    PromCounter("bad_total", "", ["user_id"], registry=r).labels("u-1").inc()
    wide = Gauge("wide", "", ["bucket"], registry=r)
    for i in range(MAX_LABEL_VALUES + 1):
        wide.labels(str(i)).set(i)
    PromCounter("sneaky_total", "", ["topic"], registry=r).labels("order-123").inc()
    found = label_violations(r.collect(), ids={"order-123"})
    assert any("'user_id' names an id" in v for v in found), found
    assert any("'bucket' has 51 values" in v for v in found), found
    assert any("order-123" in v for v in found), found
    clean = CollectorRegistry()
    PromCounter("ok_total", "", ["topic"], registry=clean).labels("orders").inc()
    assert label_violations(clean.collect(), ids={"order-123"}) == []


def test_local_prometheus_config_is_valid_and_matches_production(tmp_path):
    s = local_settings(tmp_path / "run")
    config = local_prometheus_config(s)
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run([_promtool(), "check", "config", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr and "rules found" in proc.stdout + proc.stderr
    production = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in config["scrape_configs"]}
    assert set(jobs) == {j["job_name"] for j in production["scrape_configs"]}
    assert jobs["worker"] == [f"127.0.0.1:{s.worker_metrics_port}"]
    assert jobs["api"] == [f"{s.http_host}:{s.http_port}"]
    assert jobs["triton"] == [s.triton_metrics_url]
    assert config["rule_files"] == [str(Path(s.run_dir) / "prometheus" / "rules" / "*.yml")]
    as_written = local_prometheus_config(s.replace(local_alert_for_max_s=0))["rule_files"]
    assert as_written == [str(RULES / "*.yml")]
    for path in sorted(RULES.glob("*.yml")):  # the copies differ from the rules only in a shorter `for:`
        original, copy = (yaml.safe_load(p.read_text())["groups"] for p in (path, Path(s.run_dir) / "prometheus" / "rules" / path.name))
        for g, h in zip(original, copy, strict=True):
            for r, c in zip(g["rules"], h["rules"], strict=True):
                assert {k: v for k, v in r.items() if k != "for"} == {k: v for k, v in c.items() if k != "for"}
                if "for" in r:
                    assert duration_s(c["for"]) == min(duration_s(r["for"]), s.local_alert_for_max_s)
    no_worker = local_prometheus_config(s.replace(worker_metrics_port=0))
    assert "worker" not in {j["job_name"] for j in no_worker["scrape_configs"]}


def test_missing_prometheus_names_make_tools(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no prometheus here
    with pytest.raises(StackError, match="make tools"):
        prometheus_bin()
    with pytest.raises(StackError, match="make tools"):
        stk.alertmanager_bin()
    s = local_settings(tmp_path / "run", kafka_bootstrap="192.0.2.1:9092", redis_url="redis://192.0.2.1:6379/0",
                       triton_http_url="triton:8000", triton_grpc_url="triton:8001", triton_metrics_url="triton:8002",
                       alertmanager_url="alertmanager:9093", alert_receiver_url="alert-receiver:9094")
    local = LocalStack(s)
    assert local.local_services() == ["prometheus"]
    with pytest.raises(StackError, match="make tools"):
        local.up(timeout_s=5)
    assert stk.registered(s.run_dir) == []


# --- over the real stack ------------------------------------------------------------------------

N_CLICKS, N_RETAIL_ORDERS, N_FRAUD_ORDERS, N_HTTP_ORDERS, N_HTTP_USERS = 3000, 300, 300, 40, 40
HTTP_GAP_S = 0.1  # requests spread over seconds, as a shop sends them (and over several 1 s scrapes)
MALFORMED = [b"{not json", json.dumps({"order_id": "bad-1", "ts": 1.5e9}).encode()]


def _metrics_text(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def _sample(text: str, name: str, **labels) -> float:
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def _wait(what: str, cond, timeout_s: float, *, alive=()):
    end = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        for name, run_dir in alive:
            assert stk.process_alive(name, run_dir), f"{name} died:\n{stk.log_tail(name, run_dir)}"
        assert time.monotonic() < end, f"timed out after {timeout_s}s waiting for {what}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def monitored(stack_settings):
    """A worker and the HTTP service on their own topics, groups and Redis db (scraped by the
    stack's Prometheus on the session's worker and HTTP ports), after a real replay."""
    from replay.publish import publish
    from replay.scenario import demo

    base = stack_settings
    s = isolated(base, "monitoring", 6, prefix="mon")
    prom = f"http://{s.prometheus_url}"
    env = s.to_env()
    names = ("mon-worker", "mon-api")
    stk.start_process("mon-worker", [sys.executable, "-m", "streamscore", "worker"], env, s.run_dir)
    stk.start_process("mon-api", [sys.executable, "-m", "streamscore", "serve"], env, s.run_dir)
    alive = [(n, s.run_dir) for n in names]
    api = f"http://127.0.0.1:{s.http_port}"
    try:
        def healthy():
            try:
                return httpx.get(f"{api}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        _wait("the HTTP service", healthy, 60, alive=alive)
        _wait("Prometheus to see worker, api and triton up",
              lambda: scalar(prom, 'count(up{job=~"worker|api|triton"} == 1)') == 3, 60, alive=alive)

        t_start = time.time()
        events = list(demo(s.data_dir, settings=s, clicks=N_CLICKS, orders=N_RETAIL_ORDERS,
                           fraud_orders=N_FRAUD_ORDERS, catalog=True,
                           fraud_since="2015-02-01"))  # ~5% fraud: labels of both classes, so online AUC exists
        sent = Counter(topic for topic, _, _ in events)
        producer = Producer({"bootstrap.servers": s.kafka_bootstrap})
        for raw in MALFORMED:
            producer.produce(s.topic_orders, key=b"malformed", value=raw)
        assert producer.flush(10) == 0
        sent[s.topic_orders] += len(MALFORMED)

        # checkout traffic on the HTTP service during the replay, with real orders
        auth = {"Authorization": f"Bearer {s.api_token.get_secret_value()}"}
        orders = [e for topic, _, e in events if topic == s.topic_orders][:N_HTTP_ORDERS]
        users = list(dict.fromkeys(e.user_id for topic, _, e in events if topic == s.topic_clicks))[:N_HTTP_USERS]
        with ThreadPoolExecutor(1) as pool:
            replay = pool.submit(publish, events, s.kafka_bootstrap, rate=1000)
            with httpx.Client(base_url=api, headers=auth, timeout=5) as http:
                for o in orders:
                    r = http.post("/v1/fraud/score", content=o.to_bytes(), headers={"Content-Type": "application/json"})
                    assert r.status_code == 200, r.text
                    time.sleep(HTTP_GAP_S)
                assert http.post("/v1/fraud/score", json={}, headers={"Authorization": "Bearer x"}).status_code == 401
            published = replay.result()

        groups = [(s.deciding_group(t), t) for t in (s.topic_clicks, s.topic_orders, s.topic_catalog,
                                                      s.topic_fraud_labels)]
        _wait("the worker to commit every replayed event",
              lambda: all(committed(s, g, t) >= sent[t] for g, t in groups), 240, alive=alive)

        def decided():
            text = _metrics_text(s.worker_metrics_port)
            return all(_sample(text, "streamscore_decision_latency_seconds_count", decision=d) > 0
                       for d in ("fraud", "recommendation", "pricing"))
        _wait("fraud, recommendation and pricing decisions", decided, 60, alive=alive)
        time.sleep(2 * s.rec_refresh_interval_s + 0.5)  # the last recommendation refresh
        with httpx.Client(base_url=api, headers=auth, timeout=5) as http:  # stored lists, and a cold start
            for u in users + ["never-seen-user"]:
                assert http.get(f"/v1/recommendations/{u}").status_code == 200
                time.sleep(HTTP_GAP_S)

        worker_text, api_text = _metrics_text(s.worker_metrics_port), _metrics_text(s.http_port)
        clicks_in = _sample(worker_text, "streamscore_events_total", topic=s.topic_clicks)
        assert clicks_in >= sent[s.topic_clicks]
        _wait("Prometheus to scrape the final counts", lambda: (scalar(
            prom, f'sum(streamscore_events_total{{job="worker",topic="{s.topic_clicks}"}})') or 0) >= clicks_in, 30)
        for route in ("/v1/fraud/score", "/v1/recommendations/{user_id}"):
            _wait(f"Prometheus to scrape the final count of {route}", lambda: (scalar(
                prom, f'sum(streamscore_http_request_duration_seconds_count{{job="api",route="{route}"}})') or 0)
                >= _sample(api_text, "streamscore_http_request_duration_seconds_count", route=route), 30)
        time.sleep(3)  # two more scrapes and rule evaluations (1 s each locally)

        pseudo = Pseudonymiser(s.pii_secret.get_secret_value())
        ids = set()
        for topic, _, e in events:
            for field in ("user_id", "order_id", "item_id", "device_id", "ip", "event_id", "payment_fingerprint"):
                if (v := getattr(e, field, None)):
                    ids.add(v)
            ids.update(line.item_id for line in getattr(e, "items", []))
        ids |= {pseudo("user", u) for u in {getattr(e, "user_id", None) for _, _, e in events} if u}
        yield {"settings": s, "prom": prom, "t_start": t_start, "sent": sent, "published": published, "ids": ids,
               "worker_text": worker_text, "api_text": api_text}
    finally:
        stk.stop_processes(list(names), s.run_dir)


@pytest.mark.stack
def test_prometheus_scrapes_worker_api_and_triton(monitored):
    targets = prom_get(monitored["prom"], "/api/v1/targets")["activeTargets"]
    health = {t["labels"]["job"]: t["health"] for t in targets}
    assert health == {"prometheus": "up", "worker": "up", "api": "up", "triton": "up"}, targets


@pytest.mark.stack
def test_rules_are_loaded_and_evaluate_without_error(monitored):
    groups = prom_get(monitored["prom"], "/api/v1/rules")["groups"]
    loaded = [r for g in groups for r in g["rules"]]
    expected = rule_docs()
    assert len(loaded) == len(expected)
    assert {r["name"] for r in loaded if r["type"] == "alerting"} == set(alerts())
    bad = [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"]
    assert not bad, bad
    assert scalar(monitored["prom"], "count(streamscore:decision_budget_seconds)") == 4


@pytest.mark.stack
def test_every_dashboard_panel_query_returns_data(monitored):
    """Every query of every panel, run like Grafana over the replay's time range."""
    prom, now = monitored["prom"], time.time()
    window = f"{math.ceil(now - monitored['t_start']) + 10}s"
    recorded = recorded_series()
    families = family_names()
    gpu = bool(scalar(prom, 'count({__name__=~"nv_gpu_.*"})'))
    failures, pending, gpu_only, with_data = [], [], [], []
    panels = Counter()
    for title, panel, ref, expr in dashboard_queries():
        panels[(title, panel)] += 0
        q = re.sub(r"\$(__rate_interval|__interval|__range)\b", window, expr)
        body = prom_query(prom, q, at=now)
        where = f"{title} / {panel} / {ref}"
        if body.get("status") != "success":
            failures.append(f"{where}: does not parse or fails: {body.get('error')}\n    {q}")
            continue
        result = body["data"]["result"]
        values = [float(r["value"][1]) for r in result] if body["data"]["resultType"] == "vector" else []
        data = any(math.isfinite(v) for v in values)
        deps = base_metrics(expr, recorded)
        awaiting = sorted({f for d in deps if (f := family_of(d, families)) in AWAITING_WIRING})
        if awaiting:  # parses; data or not depends on the wiring (test_awaiting_wiring_is_still_awaited)
            pending.append((where, awaiting))
        elif deps & GPU_METRICS and not gpu:
            gpu_only.append(where)
            if result:
                failures.append(f"{where}: GPU query returns data on a host without GPU metrics")
        elif not data:
            failures.append(f"{where}: no data (result {result[:3]})\n    {q}")
        else:
            with_data.append(where)
            panels[(title, panel)] += 1
    complete = sum(1 for (t, p), n in panels.items()
                   if n and not any(w.startswith(f"{t} / {p} /") for w, _ in pending) and
                   not any(w.startswith(f"{t} / {p} /") for w in gpu_only))
    print(f"\ndashboards: {len(panels)} panels, {len(with_data) + len(pending) + len(gpu_only)} queries over a "
          f"{window} window: {len(with_data)} returned data ({complete} panels complete), {len(pending)} await "
          f"wiring, {len(gpu_only)} need a GPU")
    for where, awaiting in pending:
        print(f"  awaiting wiring: {where}: {', '.join(awaiting)}")
    for where in gpu_only:
        print(f"  GPU only: {where}")
    for d in ("fraud", "fraud_http", "recommendation", "pricing"):
        p50, p99 = (scalar(prom, f'histogram_quantile({q}, sum by (le) (rate(streamscore_decision_latency_seconds_bucket'
                                 f'{{decision="{d}"}}[{window}])))') for q in (0.5, 0.99))
        print(f"  {d}: p50 {p50 * 1e3 if p50 is not None else float('nan'):.1f} ms, "
              f"p99 {p99 * 1e3 if p99 is not None else float('nan'):.1f} ms")
    assert not failures, "\n".join(failures)
    assert len(with_data) >= 50, f"only {len(with_data)} queries returned data"


@pytest.mark.stack
def test_awaiting_wiring_is_still_awaited(monitored):
    """Fails once the worker or the HTTP service records a metric of AWAITING_WIRING: then
    remove it from there (and from docs/OPERATIONS.md), and its panels must return data."""
    texts = [monitored["worker_text"], monitored["api_text"]]
    recorded_now = sorted(name for name in AWAITING_WIRING if recorded(name, texts))
    assert not recorded_now, f"recorded now, remove from AWAITING_WIRING: {recorded_now}"
    never = sorted(name for name in family_names() - set(AWAITING_WIRING) - set(RECORDED_ON_FAILURE)
                   if not recorded(name, texts))
    assert not never, f"defined, not awaiting wiring, yet nothing recorded by the replay: {never}"


@pytest.mark.stack
def test_no_metric_carries_an_unbounded_label(monitored):
    found = []
    for where, text in (("worker ", monitored["worker_text"]), ("api ", monitored["api_text"])):
        families = list(text_string_to_metric_families(text))
        assert any(f.name.startswith("streamscore_") and f.samples for f in families), where
        found += label_violations(families, monitored["ids"], where)
    # the same over everything Prometheus holds for the workers and the HTTP service
    series = prom_get(monitored["prom"], "/api/v1/series", **{"match[]": '{job=~"worker|api"}'})
    values = defaultdict(set)
    for labels in series:
        for k, v in labels.items():
            if k in ("job", "instance", "__name__"):
                continue
            if FORBIDDEN_LABEL.search(k):
                found.append(f"prometheus {labels['__name__']}: label {k!r} names an id")
            if v in monitored["ids"]:
                found.append(f"prometheus {labels['__name__']}: {k}={v!r} is an id")
            values[(labels["__name__"], k)].add(v)
    found += [f"prometheus {n}: label {k!r} has {len(v)} values" for (n, k), v in values.items()
              if len(v) > MAX_LABEL_VALUES]
    assert not found, "\n".join(found)
    assert len(series) > 100  # it did look at real series
