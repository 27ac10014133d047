"""Grafana dashboards as code: every dashboard of ``monitoring/grafana/dashboards/``.

The JSON files are generated from this module and committed (Grafana provisions them
read-only, see ``monitoring/grafana/provisioning/dashboards/dashboards.yml``)::

    python -m monitoring.dashboards          # rewrite the JSON files
    python -m monitoring.dashboards --check  # exit 1 if a file differs (tests/test_monitoring.py)

Queries use only metrics defined in :mod:`monitoring.metrics`, Triton's own ``:8002``
metrics (``nv_*``), Prometheus' ``up`` and the recording rules of
``monitoring/rules/recording.yml`` (latency budgets among them: a budget is changed
there, and both the dashboards and the alerts follow). Rates whose counters only appear
with their first event (errors, dead letters, degraded decisions) fall back to 0 per
label so that a healthy system shows a flat line, not "No data".

Every panel's queries run against a real Prometheus after a real replay in
``tests/test_monitoring.py``; docs/OPERATIONS.md explains what each dashboard shows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
DASHBOARD_DIR = HERE / "grafana" / "dashboards"
RULES_DIR = HERE / "rules"

DS = {"type": "prometheus", "uid": "prometheus"}
RI = "$__rate_interval"
SCHEMA_VERSION = 39
DEGRADED_SHARE_MAX = 0.05      # = StreamscoreDegradedShareHigh
DEAD_LETTER_SHARE_MAX = 0.01   # = StreamscoreDeadLetterSurge


def budgets() -> dict[str, float]:
    """decision -> latency budget (s), from the ``streamscore:decision_budget_seconds`` rules."""
    out = {}
    doc = yaml.safe_load((RULES_DIR / "recording.yml").read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("record") == "streamscore:decision_budget_seconds":
                out[rule["labels"]["decision"]] = float(rule["expr"].strip()[len("vector("):-1])
    return out


# --- query helpers ---------------------------------------------------------------------------

def rate(metric: str, selector: str = "", window: str = RI) -> str:
    return f"rate({metric}{selector}[{window}])"


def quantile(q: float, metric: str, by: str, selector: str = "") -> str:
    """``histogram_quantile`` of histogram ``metric`` (without ``_bucket``) per ``by``."""
    group = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) ({rate(metric + '_bucket', selector)}))"


def sum_rate(metric: str, by: str = "", selector: str = "") -> str:
    return f"sum by ({by}) ({rate(metric, selector)})" if by else f"sum({rate(metric, selector)})"


def or_zero(expr: str, like: str) -> str:
    """``expr``, or 0 for every label set of ``like`` that ``expr`` does not have (a counter
    that appears with its first increment would otherwise leave the panel empty)."""
    return f"({expr}) or ({like} * 0)"


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False, fmt: str | None = None) -> dict:
    t = {"refId": ref, "datasource": dict(DS), "expr": expr, "legendFormat": legend or "__auto",
         "range": not instant, "instant": instant, "editorMode": "code"}
    if fmt:
        t["format"] = fmt
    return t


def targets(*specs) -> list[dict]:
    """``(expr, legend)`` pairs -> targets with refIds A, B, ..."""
    return [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(specs)]


def _thresholds(red: float | None, yellow: float | None = None) -> dict:
    steps = [{"color": "green", "value": None}]
    if yellow is not None:
        steps.append({"color": "yellow", "value": yellow})
    if red is not None:
        steps.append({"color": "red", "value": red})
    return {"mode": "absolute", "steps": steps}


# --- panels ----------------------------------------------------------------------------------

def timeseries(title: str, description: str, tgts: list[dict], unit: str, *, red: float | None = None,
               stack: bool = False, bars: bool = False, min_: float | None = None, max_: float | None = None,
               budget_override: bool = False) -> dict:
    custom = {"drawStyle": "bars" if bars else "line", "lineWidth": 1, "fillOpacity": 60 if bars else 10,
              "showPoints": "never", "spanNulls": False,
              "stacking": {"mode": "normal" if stack else "none", "group": "A"},
              "thresholdsStyle": {"mode": "dashed" if red is not None else "off"}}
    defaults = {"unit": unit, "custom": custom, "thresholds": _thresholds(red), "color": {"mode": "palette-classic"}}
    if min_ is not None:
        defaults["min"] = min_
    if max_ is not None:
        defaults["max"] = max_
    overrides = []
    if budget_override:  # the budget series: a dashed red line
        overrides.append({"matcher": {"id": "byRegexp", "options": "^budget .*"},
                          "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
                                         {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                                         {"id": "custom.fillOpacity", "value": 0}]})
    return {"type": "timeseries", "title": title, "description": description, "datasource": dict(DS),
            "fieldConfig": {"defaults": defaults, "overrides": overrides},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}},
            "targets": tgts}


def stat(title: str, description: str, expr: str, unit: str, *, red: float | None = None,
         yellow: float | None = None, decimals: int | None = None) -> dict:
    defaults = {"unit": unit, "thresholds": _thresholds(red, yellow), "color": {"mode": "thresholds"}}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {"type": "stat", "title": title, "description": description, "datasource": dict(DS),
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "background", "graphMode": "area", "justifyMode": "auto",
                        "textMode": "value", "orientation": "auto"},
            "targets": [target(expr)]}


def table(title: str, description: str, expr: str, hide: list[str]) -> dict:
    """An instant query shown as a table, one row per series (labels as columns)."""
    return {"type": "table", "title": title, "description": description, "datasource": dict(DS),
            "fieldConfig": {"defaults": {"custom": {"align": "auto"}}, "overrides": []},
            "options": {"showHeader": True, "cellHeight": "sm"},
            "transformations": [{"id": "organize", "options": {"excludeByName": {h: True for h in hide}}}],
            "targets": [target(expr, instant=True, fmt="table")]}


def heatmap(title: str, description: str, expr: str) -> dict:
    """A Prometheus histogram's bucket rates as a heatmap (``format: heatmap``)."""
    return {"type": "heatmap", "title": title, "description": description, "datasource": dict(DS),
            "fieldConfig": {"defaults": {"custom": {"scaleDistribution": {"type": "linear"}}}, "overrides": []},
            "options": {"calculate": False, "cellGap": 1, "color": {"mode": "scheme", "scheme": "Oranges",
                                                                     "steps": 64},
                        "yAxis": {"axisPlacement": "left", "unit": "percentunit"},
                        "tooltip": {"mode": "single", "yHistogram": True}, "legend": {"show": True}},
            "targets": [{**target(expr, "{{le}}", fmt="heatmap")}]}


def row(title: str) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


# --- layout ----------------------------------------------------------------------------------

def dashboard(uid: str, title: str, description: str, sections: list[tuple[str | None, list[tuple[dict, int, int]]]],
              variables: list[dict] | None = None, refresh: str = "30s") -> dict:
    """Lay ``sections`` (row title, [(panel, width, height)]) out left to right, top to bottom."""
    panels, y, next_id = [], 0, 1
    for section, items in sections:
        if section:
            panels.append({**row(section), "id": next_id, "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}})
            next_id += 1
            y += 1
        x, line_h = 0, 0
        for panel, w, h in items:
            if x + w > 24:
                x, y, line_h = 0, y + line_h, 0
            panels.append({"id": next_id, **panel, "gridPos": {"x": x, "y": y, "w": w, "h": h}})
            next_id += 1
            x, line_h = x + w, max(line_h, h)
        y += line_h
    return {
        "uid": uid, "title": title, "description": description, "tags": ["streamscore"],
        "timezone": "browser", "editable": False, "graphTooltip": 1, "refresh": refresh,
        "schemaVersion": SCHEMA_VERSION, "version": 1, "time": {"from": "now-1h", "to": "now"},
        "timepicker": {}, "templating": {"list": variables or []},
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": [{"title": "streamscore", "type": "dashboards", "tags": ["streamscore"], "asDropdown": True,
                   "includeVars": False, "keepTime": True}],
        "panels": panels,
    }


def model_variable(name: str, label: str, default: str) -> dict:
    """A text box holding a Triton model name (the MODEL_* setting), default = the setting's default."""
    return {"type": "textbox", "name": name, "label": label, "query": default, "hide": 0,
            "current": {"text": default, "value": default}, "options": [{"selected": True, "text": default,
                                                                          "value": default}]}


# --- shared panels ---------------------------------------------------------------------------

LAT = "streamscore_decision_latency_seconds"
REVENUE = "streamscore_price_expected_revenue_total"
REVIEW_DECLINE = '{verdict=~"review|decline"}'
COLD = '{cold_start="true"}'
BOUND = '{guardrail!="none"}'
NEW_PRICE, OLD_PRICE = '{price="new"}', '{price="old"}'
BUDGET = "streamscore:decision_budget_seconds"


def latency_vs_budget(title: str, description: str, decisions: str) -> dict:
    sel = f'{{decision=~"{decisions}"}}'
    return timeseries(title, description, targets(
        (quantile(0.5, LAT, "decision", sel), "p50 {{decision}}"),
        (quantile(0.99, LAT, "decision", sel), "p99 {{decision}}"),
        (f"{BUDGET}{sel}", "budget {{decision}}")), "s", budget_override=True)


def degraded_share(by: str = "decision", selector: str = "") -> str:
    degraded = sum_rate("streamscore_degraded_decisions_total", by, selector)
    decided = sum_rate(f"{LAT}_count", by, selector)
    return or_zero(f"clamp_max({degraded} / {decided}, 1)", decided)


def triton_model_panels(var: str) -> list[tuple[dict, int, int]]:
    """Client-side (streamscore) and server-side (Triton :8002) view of one model."""
    sel = f'{{model="${var}"}}'
    client = timeseries(
        "Triton call p50 / p99 (client)",
        "Duration of the gRPC inference call as the workers and the HTTP service see it "
        "(streamscore_triton_request_seconds), including retries' individual calls.",
        targets((quantile(0.5, "streamscore_triton_request_seconds", "model", sel), "p50 {{model}}"),
                (quantile(0.99, "streamscore_triton_request_seconds", "model", sel), "p99 {{model}}")), "s")
    server = timeseries(
        "Triton queue and compute per request (server)",
        "Triton's own view (nv_inference_*): average time a request waited in the model's queue and "
        "spent in compute (input + infer + output), per request.",
        targets((f"sum({rate('nv_inference_queue_duration_us', sel)}) / sum({rate('nv_inference_request_success', sel)}) / 1e6",
                 "queue"),
                (f"(sum({rate('nv_inference_compute_input_duration_us', sel)}) + sum({rate('nv_inference_compute_infer_duration_us', sel)})"
                 f" + sum({rate('nv_inference_compute_output_duration_us', sel)})) / sum({rate('nv_inference_request_success', sel)}) / 1e6",
                 "compute")), "s")
    return [(client, 12, 8), (server, 12, 8)]


# --- the dashboards --------------------------------------------------------------------------

def overview() -> dict:
    b = budgets()
    events = "streamscore_events_total"
    return dashboard(
        "streamscore-overview", "streamscore / Overview",
        "Is it flowing, is it fast, is it right: throughput, lag, decision latency against budget, "
        "errors and degraded decisions.",
        [
            ("At a glance", [
                (stat("Events in / s", "Input events consumed per second by all workers.",
                      sum_rate(events), "ops"), 4, 4),
                (stat("Consumer lag (messages)", "Messages not yet consumed, all input partitions.",
                      "sum(streamscore:consumer_lag_messages:max)", "short", yellow=1000, red=10000), 4, 4),
                (stat("Checkout fraud p99", f"p99 of POST /v1/fraud/score; budget {b['fraud_http'] * 1e3:.0f} ms.",
                      quantile(0.99, LAT, "", '{decision="fraud_http"}'), "s", red=b["fraud_http"]), 4, 4),
                (stat("Degraded share", "Share of decisions made by a fallback (all decisions).",
                      or_zero(f"clamp_max(sum({rate('streamscore_degraded_decisions_total')}) / sum({rate(LAT + '_count')}), 1)",
                              f"sum({rate(LAT + '_count')})"),
                      "percentunit", red=DEGRADED_SHARE_MAX, decimals=2), 4, 4),
                (stat("Dead letters / s", "Input events sent to the dead-letter topic per second.",
                      or_zero(sum_rate("streamscore_dead_letters_total"), sum_rate(events)), "ops"), 4, 4),
                (stat("Targets down", "Worker, API and Triton scrape targets that do not answer.",
                      'count(up{job=~"worker|api|triton"} == 0) or vector(0)', "short", red=1), 4, 4),
            ]),
            ("Flow", [
                (timeseries("Events consumed / s by topic", "Input events consumed by all workers "
                            "(streamscore_events_total).", targets((sum_rate(events, "topic"), "{{topic}}")), "ops"),
                 12, 8),
                (timeseries("Consumer lag by topic", "Messages between the workers' positions and the end of "
                            "each input topic (sum over partitions).",
                            targets(("sum by (topic) (streamscore:consumer_lag_messages:max)", "{{topic}}")), "short"),
                 12, 8),
            ]),
            ("Decisions", [
                (latency_vs_budget("Decision latency p50 / p99 against budget",
                                   "Event (Kafka timestamp) or request to decision emitted, per decision; the "
                                   "dashed lines are the budgets (streamscore:decision_budget_seconds).",
                                   "fraud|fraud_http|recommendation|pricing"), 12, 8),
                (timeseries("Fraud verdict mix", "Verdicts per second by outcome, stream and HTTP.",
                            targets((sum_rate("streamscore_verdicts_total", "verdict"), "{{verdict}}")), "ops",
                            stack=True), 6, 8),
                (timeseries("Degraded share by decision", "Share of each decision made by a fallback (rules "
                            "score, popular items, no price change) because Triton or Redis failed.",
                            targets((degraded_share(), "{{decision}}")), "percentunit", red=DEGRADED_SHARE_MAX,
                            min_=0), 6, 8),
            ]),
            ("Errors", [
                (timeseries("Dead letters / s by topic and reason", "Invalid, oversized, too late or "
                            "unprocessable input events sent to the dead-letter topic.",
                            targets((or_zero(sum_rate("streamscore_dead_letters_total", "topic, reason"),
                                             sum_rate(events, "topic")), "{{topic}} {{reason}}")), "ops"), 8, 8),
                (timeseries("Triton errors / s and open breakers by model",
                            "Failed Triton calls (after timeout) and circuit breakers open right now.",
                            targets((or_zero(sum_rate("streamscore_triton_errors_total", "model"),
                                             sum_rate("streamscore_triton_request_seconds_count", "model")),
                                     "errors/s {{model}}"),
                                    ("sum by (model) (streamscore_triton_circuit_open)", "open {{model}}")),
                            "short"), 8, 8),
                (timeseries("HTTP request p99 by route", "Duration of each HTTP route (the fraud route's budget "
                            "is the red line).",
                            targets((quantile(0.99, "streamscore_http_request_duration_seconds", "route"),
                                     "{{route}}")), "s", red=b["fraud_http"]), 8, 8),
                (timeseries("Scrape targets up", "Targets answering Prometheus, per job.",
                            targets(('sum by (job) (up{job=~"worker|api|triton"})', "{{job}}")), "short", min_=0),
                 24, 6),
            ]),
        ])


def fraud() -> dict:
    v = "fraud_model"
    verdicts = "streamscore_verdicts_total"
    return dashboard(
        "streamscore-fraud", "streamscore / Fraud",
        "Fraud verdicts: mix, score distribution, latency against budget, online model quality and drift.",
        [
            ("Verdicts", [
                (timeseries("Verdicts / s by outcome", "Approve, review and decline verdicts per second (topic "
                            "and HTTP).", targets((sum_rate(verdicts, "verdict"), "{{verdict}}")), "ops",
                            stack=True), 8, 8),
                (timeseries("Review and decline share", "Share of verdicts that are review or decline: a jump "
                            "is an attack or a broken feature.",
                            targets((f"sum by (verdict) ({rate(verdicts, REVIEW_DECLINE)}) "
                                     f"/ ignoring (verdict) group_left sum({rate(verdicts)})", "{{verdict}}")),
                            "percentunit", min_=0, max_=1), 8, 8),
                (heatmap("Fraud score distribution", "Scores emitted per second by score bucket "
                         "(streamscore_fraud_score); review at 0.5, decline at 0.85 by default.",
                         f"sum by (le) ({rate('streamscore_fraud_score_bucket')})"), 8, 8),
            ]),
            ("Latency and fallbacks", [
                (latency_vs_budget("Fraud latency p50 / p99 against budget",
                                   "fraud: order event to verdict on the topic; fraud_http: POST /v1/fraud/score "
                                   "end to end. Dashed: budgets.", "fraud|fraud_http"), 12, 8),
                (timeseries("Degraded fraud share and mean score",
                            "Share of fraud verdicts from the rules fallback, and the mean score per path.",
                            targets((degraded_share(selector='{decision=~"fraud|fraud_http"}'), "degraded {{decision}}"),
                                    (f"sum by (decision) ({rate('streamscore_fraud_score_sum')}) "
                                     f"/ sum by (decision) ({rate('streamscore_fraud_score_count')})",
                                     "mean score {{decision}}")),
                            "percentunit", min_=0), 12, 8),
            ]),
            ("Model quality", [
                (timeseries("Online AUC and log-loss", "Prequential (test-then-train) ROC AUC and log-loss on "
                            "labelled feedback (fraud-labels), per model.",
                            targets(("streamscore_model_online_auc", "AUC {{model}} {{instance}}"),
                                    ("streamscore_model_online_log_loss", "log-loss {{model}} {{instance}}")),
                            "short", min_=0), 12, 8),
                (timeseries("Drift detections", "Drift detections per model over the interval.",
                            targets((f"sum by (model) (increase(streamscore_drift_detections_total[{RI}]))",
                                     "{{model}}")), "short", bars=True, min_=0), 12, 8),
            ]),
            ("Model in Triton", triton_model_panels(v)),
        ],
        variables=[model_variable(v, "fraud model", "fraud")])


def recommendations() -> dict:
    v = "rec_model"
    recs = "streamscore_recommendations_total"
    route = '{route="/v1/recommendations/{user_id}"}'
    return dashboard(
        "streamscore-recommendations", "streamscore / Recommendations",
        "Recommendation lists: freshness (latency), cold-start share, catalog coverage, click-through.",
        [
            ("Lists", [
                (timeseries("Lists written / s", "Recommendation lists stored per second, personalised or "
                            "cold start (popular items).",
                            targets((sum_rate(recs, "cold_start"), "cold_start={{cold_start}}")), "ops",
                            stack=True), 6, 8),
                (timeseries("Cold-start share", "Share of lists written from popular items (users without "
                            "history, or the recommender unavailable).",
                            targets((f"({sum_rate(recs, '', COLD)} or {sum_rate(recs)} * 0) "
                                     f"/ {sum_rate(recs)}", "cold start")), "percentunit", min_=0, max_=1), 6, 8),
                (timeseries("Catalog coverage", "Share of known catalog items present in at least one stored "
                            "list (streamscore_recommendation_coverage_ratio).",
                            targets(("max(streamscore_recommendation_coverage_ratio)", "coverage")),
                            "percentunit", min_=0, max_=1), 6, 8),
                (timeseries("Click-through rate", "Clicks on a recommended item per recommended item served "
                            "over HTTP, personalised vs cold start.",
                            targets((f"{sum_rate('streamscore_recommendation_clicks_total', 'cold_start')} "
                                     f"/ {sum_rate('streamscore_recommendation_impressions_total', 'cold_start')}",
                                     "cold_start={{cold_start}}")), "percentunit", min_=0), 6, 8),
            ]),
            ("Latency and fallbacks", [
                (latency_vs_budget("Click to refreshed list p50 / p99 against budget",
                                   "From the first click of a user (Kafka timestamp) to the refreshed list "
                                   "stored. Dashed: budget.", "recommendation"), 8, 8),
                (timeseries("GET /v1/recommendations p50 / p99", "Duration of the read endpoint.",
                            targets((quantile(0.5, "streamscore_http_request_duration_seconds", "route", route), "p50"),
                                    (quantile(0.99, "streamscore_http_request_duration_seconds", "route", route), "p99")),
                            "s"), 8, 8),
                (timeseries("Degraded recommendations share", "Share of lists from the popular-items fallback "
                            "because the recommender failed.",
                            targets((degraded_share(selector='{decision="recommendation"}'), "degraded")),
                            "percentunit", red=DEGRADED_SHARE_MAX, min_=0), 8, 8),
            ]),
            ("Model in Triton", triton_model_panels(v)),
        ],
        variables=[model_variable(v, "recommender model", "recommender")])


def pricing() -> dict:
    v = "pricing_model"
    changes = "streamscore_price_changes_total"
    return dashboard(
        "streamscore-pricing", "streamscore / Pricing",
        "Price adjustments: how many, which guardrails bound them, expected revenue effect, latency.",
        [
            ("Changes and guardrails", [
                (timeseries("Price changes / s by guardrail", "Adjustments emitted, by the guardrail that bound "
                            "the proposal (none = the model's price).",
                            targets((sum_rate(changes, "guardrail"), "{{guardrail}}")), "ops", stack=True), 8, 8),
                (timeseries("Share of changes bound by a guardrail", "Adjustments whose price a guardrail "
                            "(floor, ceiling, at most 10%/hour) clipped.",
                            targets((f"({sum_rate(changes, '', BOUND)} or {sum_rate(changes)} * 0) "
                                     f"/ {sum_rate(changes)}", "bound")), "percentunit", min_=0, max_=1), 8, 8),
                (timeseries("Guardrail hits / s (incl. blocked)", "Every evaluation bound or blocked by a "
                            "guardrail, including proposals that produced no change (infeasible, out of stock).",
                            targets((sum_rate("streamscore_price_guardrail_hits_total", "guardrail"),
                                     "{{guardrail}}")), "ops", stack=True), 8, 8),
            ]),
            ("Pricing bandit", [
                (timeseries("Bandit arms chosen and rewards learned / s", "PRICING_POLICY=bandit. chosen: an arm "
                            "(multiplier of the reference price) pulled for an item; learned: an evaluation window's "
                            "sales fed back; not_learned: a window that began out of stock (skipped). See docs/ONLINE.md.",
                            targets((sum_rate("streamscore_price_bandit_events_total", "step"), "{{step}}")),
                            "ops"), 24, 8),
            ]),
            ("Expected revenue", [
                (timeseries("Expected revenue of adjusted items (per hour)", "Demand model's expected revenue "
                            "per hour of the adjusted items at their old and new prices, per second of changes.",
                            targets((sum_rate("streamscore_price_expected_revenue_total", "price"), "{{price}} price")),
                            "short"), 12, 8),
                (timeseries("Expected revenue uplift", "Expected revenue at the new prices over the old ones, "
                            "minus 1, for the items adjusted.",
                            targets((f"{sum_rate(REVENUE, '', NEW_PRICE)} "
                                     f"/ {sum_rate(REVENUE, '', OLD_PRICE)} - 1",
                                     "uplift")), "percentunit"), 12, 8),
            ]),
            ("Latency and fallbacks", [
                (latency_vs_budget("Event to price change p50 / p99 against budget",
                                   "From the first order or catalog event touching an item to its adjustment "
                                   "emitted. Dashed: budget.", "pricing"), 12, 8),
                (timeseries("Degraded price evaluations / s", "Items not repriced because the demand model was "
                            "unavailable (no change is the fallback).",
                            targets((or_zero(sum_rate("streamscore_degraded_decisions_total", "", '{decision="pricing"}'),
                                             sum_rate(f"{LAT}_count", "", '{decision="pricing"}')), "degraded")),
                            "ops"), 12, 8),
            ]),
            ("Model in Triton", triton_model_panels(v)),
        ],
        variables=[model_variable(v, "pricing model", "pricing")])


def serving() -> dict:
    nv = "nv_inference"
    by_model = lambda m: f"sum by (model) ({rate(m)})"  # noqa: E731
    return dashboard(
        "streamscore-serving", "streamscore / Serving",
        "The machinery: Triton (its own :8002 metrics), the Triton client, batches, Redis, the broker, HTTP.",
        [
            ("Triton server (:8002)", [
                (timeseries("Inference requests / s by model", "Successful and failed requests as Triton "
                            "counts them.",
                            targets((by_model(f"{nv}_request_success"), "ok {{model}}"),
                                    (by_model(f"{nv}_request_failure"), "failed {{model}}")), "ops"), 8, 8),
                (timeseries("Queue time per request by model", "Average time requests waited in the model's "
                            "queue (dynamic batching window included).",
                            targets((f"{by_model(f'{nv}_queue_duration_us')} / {by_model(f'{nv}_request_success')} / 1e6",
                                     "{{model}}")), "s"), 8, 8),
                (timeseries("Compute time per execution by model", "Average input + infer + output time of "
                            "one model execution (one batch).",
                            targets((f"({by_model(f'{nv}_compute_input_duration_us')} + {by_model(f'{nv}_compute_infer_duration_us')}"
                                     f" + {by_model(f'{nv}_compute_output_duration_us')}) / {by_model(f'{nv}_exec_count')} / 1e6",
                                     "{{model}}")), "s"), 8, 8),
                (timeseries("Batch size per execution by model", "Inferences per model execution: what "
                            "dynamic batching and the workers' batches achieve.",
                            targets((f"{by_model(f'{nv}_count')} / {by_model(f'{nv}_exec_count')}", "{{model}}")),
                            "short", min_=0), 8, 8),
                (timeseries("Pending requests by model", "Requests waiting for an execution right now.",
                            targets((f"sum by (model) ({nv}_pending_request_count)", "{{model}}")), "short",
                            min_=0), 8, 8),
                (table("Model versions served by Triton", "Each model and version Triton has counted requests for.",
                       f"count by (model, version) ({nv}_request_success)", ["Time", "Value"]), 8, 8),
                (timeseries("GPU utilisation and memory", "Triton's GPU metrics (only on a host with a GPU).",
                            targets(("avg by (gpu_uuid) (nv_gpu_utilization)", "util {{gpu_uuid}}"),
                                    ("sum by (gpu_uuid) (nv_gpu_memory_used_bytes) / sum by (gpu_uuid) "
                                     "(nv_gpu_memory_total_bytes)", "memory {{gpu_uuid}}")),
                            "percentunit", min_=0, max_=1), 12, 8),
                (timeseries("CPU utilisation and memory (Triton host)", "Triton's CPU metrics.",
                            targets(("avg(nv_cpu_utilization)", "cpu"),
                                    ("sum(nv_cpu_memory_used_bytes) / sum(nv_cpu_memory_total_bytes)", "memory")),
                            "percentunit", min_=0), 12, 8),
            ]),
            ("Triton client (workers and HTTP service)", [
                (timeseries("Triton call p99 by model", "gRPC inference call duration seen by streamscore.",
                            targets((quantile(0.99, "streamscore_triton_request_seconds", "model"), "{{model}}")), "s"),
                 8, 8),
                (timeseries("Retries and errors / s by model", "Retried and failed calls (after timeout).",
                            targets((or_zero(sum_rate("streamscore_triton_retries_total", "model"),
                                             sum_rate("streamscore_triton_request_seconds_count", "model")),
                                     "retries {{model}}"),
                                    (or_zero(sum_rate("streamscore_triton_errors_total", "model"),
                                             sum_rate("streamscore_triton_request_seconds_count", "model")),
                                     "errors {{model}}")), "ops"), 8, 8),
                (timeseries("Open circuit breakers by model", "Processes whose breaker to a model is open.",
                            targets(("sum by (model) (streamscore_triton_circuit_open)", "{{model}}")), "short",
                            min_=0), 8, 8),
            ]),
            ("Workers and Redis", [
                (timeseries("Batch size p50 / p99 by topic", "Events per processed batch.",
                            targets((quantile(0.5, "streamscore_batch_size_events", "topic"), "p50 {{topic}}"),
                                    (quantile(0.99, "streamscore_batch_size_events", "topic"), "p99 {{topic}}")), "short"),
                 8, 8),
                (timeseries("Redis pipeline p99 by operation", "Round trip of the feature pipelines.",
                            targets((quantile(0.99, "streamscore_redis_pipeline_seconds", "op"), "{{op}}")), "s"),
                 8, 8),
                (timeseries("Feature freshness p99 by entity", "Event (Kafka timestamp) to feature visible in "
                            "Redis.", targets((quantile(0.99, "streamscore_feature_freshness_seconds", "entity"),
                                               "{{entity}}")), "s"), 8, 8),
                (timeseries("Late events / s by topic", "Out-of-order events applied within the allowed "
                            "lateness, or dropped (dead-lettered) beyond it.",
                            targets((or_zero(sum_rate("streamscore_late_events_total", "topic, outcome"),
                                             sum_rate("streamscore_events_total", "topic")),
                                     "{{topic}} {{outcome}}")), "ops"), 12, 8),
                (table("Model versions in use by worker", "streamscore_model_info of each process.",
                       "streamscore_model_info", ["Time", "Value", "__name__"]), 12, 8),
            ]),
            ("Broker", [
                (timeseries("Consumer lag by partition", "Messages behind the end of each input partition.",
                            targets(("streamscore:consumer_lag_messages:max", "{{topic}}[{{partition}}]")), "short",
                            min_=0), 12, 8),
                (timeseries("Events consumed / s by topic", "Input events consumed by all workers.",
                            targets((sum_rate("streamscore_events_total", "topic"), "{{topic}}")), "ops"), 12, 8),
            ]),
            ("HTTP service", [
                (timeseries("Responses / s by route and code", "HTTP responses by status code.",
                            targets((sum_rate("streamscore_http_responses_total", "route, code"),
                                     "{{code}} {{route}}")), "ops", stack=True), 8, 8),
                (timeseries("Request p50 / p99 by route", "Duration of each HTTP route.",
                            targets((quantile(0.5, "streamscore_http_request_duration_seconds", "route"), "p50 {{route}}"),
                                    (quantile(0.99, "streamscore_http_request_duration_seconds", "route"), "p99 {{route}}")),
                            "s"), 8, 8),
                (timeseries("Scrape targets up by instance", "1 while Prometheus can scrape the target.",
                            targets(('up{job=~"worker|api|triton"}', "{{job}} {{instance}}")), "short", min_=0,
                            max_=1), 8, 8),
            ]),
        ])


DASHBOARDS = {"overview.json": overview, "fraud.json": fraud, "recommendations.json": recommendations,
              "pricing.json": pricing, "serving.json": serving}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed file differs from the code")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = DASHBOARD_DIR / name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text)
    extra = sorted(p.name for p in DASHBOARD_DIR.glob("*.json") if p.name not in DASHBOARDS)
    if args.check:
        if stale or extra:
            print(f"out of date: {stale}; not generated here: {extra}. Run: python -m monitoring.dashboards",
                  file=sys.stderr)
            return 1
        return 0
    print(f"wrote {stale or 'nothing (up to date)'}; not generated here: {extra or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
