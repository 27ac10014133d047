"""Every Prometheus metric streamscore exposes, defined once.

Conventions: base units (seconds), ``_total`` counters, and labels only from small
fixed sets (topic, reason, decision, model, verdict, route): never user, item, order
or IP ids. A :class:`Metrics` object owns its registry and is passed explicitly to
the code that records; tests build their own.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

# The states kept in Redis that are sealed (features/sealing.py) and why one can be refused
STORED_STATES = ("fraud-online", "fraud-challenger", "pricing-bandit")
REFUSAL_REASONS = ("unsigned", "bad_signature")

# Decision latencies run from ~1 ms (HTTP, warm) to seconds (stream, under backlog).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# The fixed label values of the metrics contract. Their series are created at 0 when a
# Metrics object is built: a counter born at its first increment hides that increment
# from rate() and increase(), so a first incident would not move a panel or an alert.
DECISIONS = ("fraud", "fraud_http", "recommendation", "pricing")
VERDICTS = ("approve", "review", "decline")
# Fraud scores are probabilities; 0.5 and 0.85 are the default review / decline thresholds.
SCORE_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter("streamscore_events_total", "Input events consumed", ["topic"], registry=r)
        self.late_events = Counter("streamscore_late_events_total",
                                   "Out-of-order events: applied within the allowed lateness, or dropped",
                                   ["topic", "outcome"], registry=r)
        self.dead_letters = Counter("streamscore_dead_letters_total", "Events sent to the dead-letter topic",
                                    ["topic", "reason"], registry=r)
        self.decision_latency = Histogram(
            "streamscore_decision_latency_seconds", "Event time to decision emitted, per decision",
            ["decision"], buckets=LATENCY_BUCKETS, registry=r)
        self.http_latency = Histogram("streamscore_http_request_duration_seconds", "HTTP request duration",
                                      ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.triton_latency = Histogram("streamscore_triton_request_seconds", "Triton inference call duration",
                                        ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.triton_errors = Counter("streamscore_triton_errors_total", "Failed Triton calls (after timeout)",
                                     ["model"], registry=r)
        self.triton_retries = Counter("streamscore_triton_retries_total", "Retried Triton calls", ["model"], registry=r)
        self.breaker_open = Gauge("streamscore_triton_circuit_open", "1 while the circuit breaker is open",
                                  ["model"], registry=r)
        self.degraded = Counter("streamscore_degraded_decisions_total", "Decisions made by a fallback",
                                ["decision"], registry=r)
        self.verdicts = Counter("streamscore_verdicts_total", "Fraud verdicts by outcome", ["verdict"], registry=r)
        self.recommendations = Counter("streamscore_recommendations_total", "Recommendation lists written",
                                       ["cold_start"], registry=r)
        self.price_changes = Counter("streamscore_price_changes_total", "Price adjustments emitted",
                                     ["guardrail"], registry=r)
        self.price_bandit = Counter("streamscore_price_bandit_events_total",
                                    "Pricing bandit steps: arms pulled (chosen), evaluation windows learned, windows not learned (out of stock)",
                                    ["step"], registry=r)
        self.redis_latency = Histogram("streamscore_redis_pipeline_seconds", "Redis pipeline round trip",
                                       ["op"], buckets=LATENCY_BUCKETS, registry=r)
        self.feature_freshness = Histogram("streamscore_feature_freshness_seconds",
                                           "Event time to feature visible in Redis", ["entity"],
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("streamscore_batch_size_events", "Events per processed batch", ["topic"],
                                    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000), registry=r)
        self.labels = Counter("streamscore_fraud_labels_total",
                              "Fraud labels by outcome: joined to their scored vector; kept (arrived before the "
                              "order's verdict) and early (such a label joined when the verdict was made); missing "
                              "(the scored vector expired); silence (no label in LABEL_WINDOW_S: learned legit)",
                              ["outcome"], registry=r)
        self.state_refused = Counter("streamscore_state_refused_total",
                                     "Stored model or bandit states refused (signature missing or wrong): never "
                                     "loaded", ["state", "reason"], registry=r)
        for state in STORED_STATES:  # born at 0: the first refusal is an increase the alert sees
            for reason in REFUSAL_REASONS:
                self.state_refused.labels(state, reason)
        self.verdicts_reemitted = Counter("streamscore_verdicts_reemitted_total",
                                          "Redelivered orders answered with the verdict recorded the first time",
                                          registry=r)
        self.ignored_events = Counter("streamscore_ignored_events_total",
                                      "Invalid events a role skipped without a dead letter (another role owns it)",
                                      ["topic", "reason"], registry=r)
        self.follow_ups_dropped = Counter("streamscore_follow_ups_dropped_total",
                                          "Batches whose follow-up round (the clicks' co-visitation pairs) failed "
                                          "other than by an outage and was given up (streams.runtime)",
                                          ["topic"], registry=r)
        self.publish_failures = Counter("streamscore_publish_failures_total",
                                        "Output records the broker refused, by topic and what was done "
                                        "(retried, replaced: a record too large replaced by a dead letter)",
                                        ["topic", "action"], registry=r)
        self.blend_weight = Gauge("streamscore_blend_weight", "Weight of each expert in the served score",
                                  ["model", "expert"], registry=r)
        self.model_info = Info("streamscore_model", "Model versions in use", registry=r)

        # --- the operators' view (issue 8). Where each one is recorded: docs/OPERATIONS.md,
        # "Metrics". Label values stay within small fixed sets, like everything above.
        self.consumer_lag = Gauge("streamscore_consumer_lag_messages",
                                  "Messages between a worker's consumer position and the end of an assigned "
                                  "input partition", ["topic", "partition"], registry=r)
        self.fraud_score = Histogram("streamscore_fraud_score", "Fraud scores emitted (0-1), per decision path",
                                     ["decision"], buckets=SCORE_BUCKETS, registry=r)
        self.online_auc = Gauge("streamscore_model_online_auc",
                                "Prequential ROC AUC of a model on labelled feedback (River, test-then-train)",
                                ["model"], registry=r)
        self.online_log_loss = Gauge("streamscore_model_online_log_loss",
                                     "Prequential log-loss of a model on labelled feedback (River)", ["model"],
                                     registry=r)
        self.promotion_state = Gauge("streamscore_model_promotion_state",
                                     "Champion/challenger promotion rule of a shadow model: 1 for its current state "
                                     "(collecting, hold, promote), 0 for the others", ["model", "state"], registry=r)
        self.drift_detections = Counter("streamscore_drift_detections_total",
                                        "Drift detections (River detector on a model's error or inputs)", ["model"],
                                        registry=r)
        self.price_guardrail_hits = Counter(
            "streamscore_price_guardrail_hits_total",
            "Price evaluations whose proposal a guardrail bound or blocked (floor, ceiling, max_change_per_hour, "
            "infeasible, out_of_stock)", ["guardrail"], registry=r)
        self.price_expected_revenue = Counter(
            "streamscore_price_expected_revenue_total",
            "Expected revenue per hour of adjusted items (price x demand model), at the old and at the new price",
            ["price"], registry=r)
        self.rec_coverage = Gauge("streamscore_recommendation_coverage_ratio",
                                  "Share of known catalog items present in at least one stored recommendation list",
                                  registry=r)
        self.rec_impressions = Counter("streamscore_recommendation_impressions_total",
                                       "Recommended items served by GET /v1/recommendations", ["cold_start"],
                                       registry=r)
        self.rec_clicks = Counter("streamscore_recommendation_clicks_total",
                                  "Clicks on an item of the clicking user's stored recommendation list",
                                  ["cold_start"], registry=r)
        self.http_responses = Counter("streamscore_http_responses_total", "HTTP responses by route and status code",
                                      ["route", "code"], registry=r)
        self.http_rate_limited = Counter("streamscore_http_rate_limited_total",
                                         "/v1 requests answered 429: their API token was over API_RATE_LIMIT_PER_S "
                                         "(no label names the token)", registry=r)

        self.fraud_threshold = Gauge("streamscore_fraud_threshold",
                                     "Fraud score threshold in use: score >= it -> that verdict (scorers/thresholds.py)",
                                     ["verdict"], registry=r)
        self.fraud_budget = Gauge("streamscore_fraud_budget_ratio",
                                  "Share of orders the thresholds aim at per verdict: FRAUD_REVIEW_RATE, FRAUD_DECLINE_RATE",
                                  ["verdict"], registry=r)
        self.fraud_threshold_live = Gauge("streamscore_fraud_threshold_live",
                                          "1 while the thresholds come from recent live scores, 0 from the model "
                                          "metadata (or the settings)", registry=r)

        self._model_versions: dict[str, str] = {}
        for decision in DECISIONS:
            self.decision_latency.labels(decision)
            self.degraded.labels(decision)
        for verdict in VERDICTS:
            self.verdicts.labels(verdict)
        for cold_start in ("true", "false"):
            self.recommendations.labels(cold_start)
            self.rec_clicks.labels(cold_start)
            self.rec_impressions.labels(cold_start)

    def export_thresholds(self, thresholds, review_rate: float, decline_rate: float) -> None:
        """The fraud thresholds in use (:class:`scorers.thresholds.Thresholds`) and the budget they aim at."""
        self.fraud_threshold.labels("review").set(thresholds.review)
        self.fraud_threshold.labels("decline").set(thresholds.decline)
        self.fraud_budget.labels("review").set(review_rate)
        self.fraud_budget.labels("decline").set(decline_rate)
        self.fraud_threshold_live.set(1.0 if thresholds.source == "live" else 0.0)

    def model_version(self, decision: str, version: str) -> None:
        """Record the model version ``decision`` uses (the ``streamscore_model_info`` labels), when it changes."""
        if self._model_versions.get(decision) != version:
            self._model_versions[decision] = version
            self.model_info.info(dict(self._model_versions))
