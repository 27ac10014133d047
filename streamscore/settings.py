"""All configuration of streamscore, read from environment variables.

Every URL, topic name, partition count, timeout and latency budget lives here and
nowhere else. Each field documents its env var and default; ``Settings.from_env()``
reads them once at start-up and the resulting object is passed explicitly to
whatever needs it (no module-level singletons).

The same code runs locally and in production: only these values differ. Locally
``streamscore stack up`` starts servers on 127.0.0.1 for every URL that points at the
loopback address; a URL pointing elsewhere is treated as external and nothing is
started for it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

ROOT = Path(__file__).resolve().parent.parent


def _doc(env: str, default, help: str):
    return field(default=default, metadata={"env": env, "help": help})


SECRET_MIN_CHARS = 32
KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL")
KAFKA_SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
# What an unset secret stands for: published placeholders, accepted only with DEV_MODE=on (the local
# stack, the demo and the tests), so development needs no setup and nothing else can run on them.
DEV_SECRETS = {"api_token": "dev-token-change-me", "pii_secret": "dev-secret-change-me",
               "state_secret": "dev-state-secret-change-me", "dead_letter_key": "dev-dead-letter-key-change-me"}


def _secret(env: str, help: str, required: bool = True):
    """A secret: never in a repr or in docs/CONFIG.md; required (>= ``SECRET_MIN_CHARS``) unless DEV_MODE=on.

    ``required=False``: a secret only some configurations need (``KAFKA_SASL_PASSWORD``, with SASL):
    no placeholder stands in for it, ``Settings.__post_init__`` demands it where it is needed, and
    ``require_secrets`` checks its length only when it is set."""
    return field(default="", repr=False, metadata={"env": env, "help": help, "secret": True, "required": required})


class SecretsError(ValueError):
    """A secret is unset, a published placeholder or too short, and DEV_MODE is off."""


@dataclass(frozen=True)
class Settings:
    # --- servers -----------------------------------------------------------------
    kafka_bootstrap: str = _doc("KAFKA_BOOTSTRAP", "127.0.0.1:19092", "Kafka bootstrap servers (host:port[,host:port])")
    kafka_security_protocol: str = _doc("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT",
                                        "How every Kafka client (workers, Faust producer, replay, tools) connects: "
                                        "'PLAINTEXT' (local stack), 'SASL_PLAINTEXT', 'SASL_SSL' or 'SSL' "
                                        "(streamscore/kafka_config.py; production: SASL, one user per client)")
    kafka_sasl_mechanism: str = _doc("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512",
                                     "SASL mechanism with KAFKA_SECURITY_PROTOCOL=SASL_*: 'SCRAM-SHA-512', "
                                     "'SCRAM-SHA-256' or 'PLAIN' (PLAIN sends the password: only over SASL_SSL)")
    kafka_sasl_username: str = _doc("KAFKA_SASL_USERNAME", "",
                                    "SASL user of this client (required with SASL); the broker's ACLs are per user")
    kafka_sasl_password: str = _secret("KAFKA_SASL_PASSWORD", "Password of KAFKA_SASL_USERNAME (required with SASL)",
                                       required=False)
    kafka_ssl_ca_file: str = _doc("KAFKA_SSL_CA_FILE", "",
                                  "CA certificate (PEM) that signed the brokers' certificates, with SSL or SASL_SSL "
                                  "('' = the system's trust store)")
    redis_url: str = _doc("REDIS_URL", "redis://127.0.0.1:16379/0", "Redis / Valkey URL holding online features and recommendations")
    redis_topology: str = _doc("REDIS_TOPOLOGY", "standalone",
                               "standalone: one Redis / Valkey at REDIS_URL; cluster: a Redis Cluster reached through "
                               "REDIS_URL (any node, database 0; `stack up` starts three local primaries from its port)")
    triton_grpc_url: str = _doc("TRITON_GRPC_URL", "127.0.0.1:18001", "Triton gRPC endpoint (host:port)")
    triton_http_url: str = _doc("TRITON_HTTP_URL", "127.0.0.1:18000", "Triton HTTP endpoint (host:port), used for health checks")
    triton_metrics_url: str = _doc("TRITON_METRICS_URL", "127.0.0.1:18002", "Triton Prometheus metrics endpoint (host:port)")
    triton_repo: str = _doc("TRITON_REPO", str(ROOT / "triton_repo"), "Triton model repository served by the local tritonserver")
    run_dir: str = _doc("STREAMSCORE_RUN_DIR", str(ROOT / ".run"), "Local stack run directory: logs, PID files, data")
    data_dir: str = _doc("STREAMSCORE_DATA_DIR", str(ROOT.parent / "shared" / "data"), "Real datasets (read-only, never copied into the repo)")

    # --- topics --------------------------------------------------------------------
    topic_clicks: str = _doc("TOPIC_CLICKS", "clicks", "Input: click events (view, add_to_cart, remove_from_cart, purchase)")
    topic_orders: str = _doc("TOPIC_ORDERS", "orders", "Input: orders to score")
    topic_fraud_labels: str = _doc("TOPIC_FRAUD_LABELS", "fraud-labels", "Input: late fraud labels / chargebacks by order id")
    topic_catalog: str = _doc("TOPIC_CATALOG", "catalog", "Input: item price, cost and stock")
    topic_fraud_verdicts: str = _doc("TOPIC_FRAUD_VERDICTS", "fraud-verdicts", "Output: one verdict per order, keyed by order id")
    topic_recommendations: str = _doc("TOPIC_RECOMMENDATIONS", "recommendations", "Output: recommendations, keyed by pseudonymised user id")
    topic_price_adjustments: str = _doc("TOPIC_PRICE_ADJUSTMENTS", "price-adjustments", "Output: price adjustments, keyed by item id")
    topic_dead_letter: str = _doc("TOPIC_DEAD_LETTER", "dead-letter", "Output: invalid input with the reason and the original bytes")
    topic_partitions: int = _doc("TOPIC_PARTITIONS", 4, "Partitions of every topic (workers scale up to this many per topic)")
    topic_replication: int = _doc("TOPIC_REPLICATION", 1, "Replication factor used when creating topics")

    # --- worker ----------------------------------------------------------------------
    app_id: str = _doc("STREAMSCORE_APP_ID", "streamscore",
                       "Prefix of the workers' Kafka consumer groups: each role consumes as `<app id>-<role>`")
    worker_role: str = _doc("WORKER_ROLE", "all",
                            "What `streamscore worker` runs (or `--role`): 'fraud' (orders and labels -> verdicts), "
                            "'clicks' (clicks -> click features, recommendations), 'pricing' (catalog and orders -> "
                            "prices), or 'all' three in one process (development). Each role is its own consumer "
                            "group and scales on its own")
    batch_max: int = _doc("WORKER_BATCH_MAX", 500, "Most events an agent takes per batch")
    batch_within_s: float = _doc("WORKER_BATCH_WITHIN_S", 0.05, "Longest an agent waits to fill a batch (seconds)")
    max_event_bytes: int = _doc("MAX_EVENT_BYTES", 65536, "Larger input messages go to the dead-letter topic")
    max_clock_skew_s: float = _doc("MAX_CLOCK_SKEW_S", 300.0,
                                   "Events whose event time is more than this ahead of the worker's wall clock go to "
                                   "the dead-letter topic as from_future (s); they never move a watermark")
    dead_letter_max_original_bytes: int = _doc("DEAD_LETTER_MAX_ORIGINAL_BYTES", 65536,
                                               "Bytes of a rejected message kept in its dead letter; a larger one is "
                                               "cut, with its size and sha256, so a dead letter always fits the topic")
    session_timeout_s: float = _doc("KAFKA_SESSION_TIMEOUT_S", 10.0, "Consumer session timeout (seconds); a dead worker's partitions move after this")
    heartbeat_s: float = _doc("KAFKA_HEARTBEAT_S", 1.0, "Consumer heartbeat interval (seconds)")
    fetch_max_wait_ms: int = _doc("KAFKA_FETCH_MAX_WAIT_MS", 50,
                                  "Longest a consumer fetch waits for data (ms); the local broker always waits this long")
    fraud_fetch_max_wait_ms: int = _doc("FRAUD_FETCH_MAX_WAIT_MS", 5,
                                        "Fetch wait of the fraud role's consumer (ms): a checkout waits for these "
                                        "verdicts, so orders are fetched with a short wait and taken as they come "
                                        "(no batch window); clicks keep KAFKA_FETCH_MAX_WAIT_MS")
    fraud_batch_max: int = _doc("FRAUD_BATCH_MAX", 256, "Most orders or labels the fraud role takes per batch")
    fraud_session_timeout_s: float = _doc("FRAUD_SESSION_TIMEOUT_S", 2.0,
                                          "Consumer session timeout of the fraud role (s): a killed fraud worker's "
                                          "partitions move to the others after this (Apache Kafka needs "
                                          "group.min.session.timeout.ms at most this; docker-compose.yml sets it)")
    fraud_heartbeat_s: float = _doc("FRAUD_HEARTBEAT_S", 0.25, "Consumer heartbeat interval of the fraud role (s)")
    worker_nice: int = _doc("WORKER_NICE", 0,
                            "CPU priority of the worker process, as a nice increment (0-19): where roles share a "
                            "host (the demo), clicks and pricing run at 10 so the fraud role gets the CPU first")
    worker_metrics_port: int = _doc("WORKER_METRICS_PORT", 9108, "Port of the worker's Prometheus /metrics (0 = off)")
    log_level: str = _doc("LOG_LEVEL", "info", "Log level of workers and the HTTP service")

    # --- decisions -------------------------------------------------------------------
    fraud_budget_ms: float = _doc("FRAUD_BUDGET_MS", 150.0, "Latency budget of POST /v1/fraud/score, end to end (ms)")
    fraud_degraded_floor: str = _doc("FRAUD_DEGRADED_FLOOR", "review",
                                     "Least severe verdict a degraded decision (Triton or features unavailable: "
                                     "rules score) may give: 'approve', 'review' or 'decline'")
    fraud_review_threshold: float = _doc("FRAUD_REVIEW_THRESHOLD", 0.06,
                                         "score >= this -> review until the served model's metadata thresholds "
                                         "are read (cost-derived, docs/MODELS.md); then the live ones")
    fraud_decline_threshold: float = _doc("FRAUD_DECLINE_THRESHOLD", 0.85,
                                          "score >= this -> decline, as FRAUD_REVIEW_THRESHOLD")
    fraud_review_rate: float = _doc("FRAUD_REVIEW_RATE", 0.05,
                                    "Review budget: the share of orders the live thresholds send to review "
                                    "(scorers/thresholds.py; the review queue a shop can staff)")
    fraud_decline_rate: float = _doc("FRAUD_DECLINE_RATE", 0.01,
                                     "Share of orders the live thresholds decline at most (the top scores)")
    fraud_decline_precision: float = _doc("FRAUD_DECLINE_PRECISION", 0.9,
                                          "Decline precision target: once FRAUD_THRESHOLD_MIN_LABELS labels are in, "
                                          "decline only above the lowest score whose precision on labelled recent "
                                          "orders reaches it (none reaches it: nothing declined); 0 = no target")
    fraud_threshold_window: int = _doc("FRAUD_THRESHOLD_WINDOW", 5000,
                                       "Recent live scores (and labelled scores) the thresholds follow, per fraud worker")
    fraud_threshold_min_scores: int = _doc("FRAUD_THRESHOLD_MIN_SCORES", 500,
                                           "Live scores needed before the thresholds follow them; until then the "
                                           "model metadata's (or those last stored in Redis)")
    fraud_threshold_min_labels: int = _doc("FRAUD_THRESHOLD_MIN_LABELS", 500,
                                           "Labelled recent orders needed before FRAUD_DECLINE_PRECISION applies")
    fraud_threshold_refresh_s: float = _doc("FRAUD_THRESHOLD_REFRESH_S", 5.0,
                                            "How often the fraud workers store their thresholds in Redis and the "
                                            "HTTP service reads them (s)")
    label_ttl_s: int = _doc("LABEL_TTL_S", 60 * 86400,
                            "How long a scored order's feature vector waits for its fraud label (seconds)")
    verdict_ttl_s: int = _doc("VERDICT_TTL_S", 7 * 86400,
                              "How long a verdict is kept by order id so a redelivered order gets the same "
                              "verdict (seconds)")
    label_window_s: float = _doc("LABEL_WINDOW_S", 45 * 86400,
                                 "Orders with no label this long after (event time) are learned as legitimate (s)")
    online_checkpoint_interval_s: float = _doc("ONLINE_CHECKPOINT_INTERVAL_S", 30.0,
                                               "How often the worker checkpoints its River models to Redis (s)")
    fraud_challenger: str = _doc("FRAUD_CHALLENGER", "on",
                                 "'on': a challenger River model scores every order in shadow and learns from the "
                                 "same labels (docs/ONLINE.md, Champion / challenger); 'off': none")
    fraud_challenger_min_labels: int = _doc("FRAUD_CHALLENGER_MIN_LABELS", 1000,
                                            "Promotion rule: paired labels needed (and the window judged)")
    fraud_challenger_margin: float = _doc("FRAUD_CHALLENGER_MARGIN", 0.01,
                                          "Promotion rule: log-loss per label the challenger must save (nats)")
    fraud_challenger_z: float = _doc("FRAUD_CHALLENGER_Z", 2.33,
                                     "Promotion rule: paired t-statistic of that saving at least this (one-sided)")
    online_checkpoints_kept: int = _doc("ONLINE_CHECKPOINTS_KEPT", 5, "Versioned River checkpoints kept in Redis")
    rec_top_k: int = _doc("REC_TOP_K", 10, "Recommendations stored and served per user")
    rec_refresh_interval_s: float = _doc("REC_REFRESH_INTERVAL_S", 0.2,
                                         "How often the worker refreshes recommendations of users who clicked (seconds; 0 = never)")
    rec_refresh_max_users: int = _doc("REC_REFRESH_MAX_USERS", 1024, "Users per recommendation refresh batch")
    rec_ttl_s: int = _doc("REC_TTL_S", 7 * 86400, "TTL of a user's stored recommendations (seconds)")
    rec_online_blend: str = _doc("REC_ONLINE_BLEND", "on",
                                 "'on': co-visitation counted per click in Redis (ss:cv:*) and rank-fused with the "
                                 "model's list at each refresh (docs/ONLINE.md section 3); 'off': model / popular only")
    rec_online_weight: float = _doc("REC_ONLINE_WEIGHT", 0.5,
                                    "Co-visitation's weight in the rank fusion (0..1; chosen on validation halves, "
                                    "docs/ONLINE.md section 3)")
    rec_covis_half_life_s: float = _doc("REC_COVIS_HALF_LIFE_S", 86400.0,
                                        "Half-life of co-visitation weights in event time (seconds; 0 = no decay)")
    price_refresh_interval_s: float = _doc("PRICE_REFRESH_INTERVAL_S", 1.0,
                                           "How often the worker evaluates prices of items touched by orders/catalog (s)")
    price_refresh_max_items: int = _doc("PRICE_REFRESH_MAX_ITEMS", 256,
                                        "Items per price evaluation batch, one batch per PRICE_REFRESH_INTERVAL_S: "
                                        "a worker's pricing capacity (256/s = ~900,000 items evaluated hourly)")
    price_eval_interval_s: float = _doc("PRICE_EVAL_INTERVAL_S", 3600.0,
                                        "An item's price is evaluated at most once per this much event time (s)")
    price_max_change_per_hour: float = _doc("PRICE_MAX_CHANGE_PER_HOUR", 0.10, "Largest relative price change per item per hour")
    price_min_margin: float = _doc("PRICE_MIN_MARGIN", 0.05, "Price floor = cost * (1 + this)")
    price_max_multiplier: float = _doc("PRICE_MAX_MULTIPLIER", 1.5, "Price ceiling = reference price * this")
    pricing_policy: str = _doc("PRICING_POLICY", "bandit",
                               "Who chooses prices: 'bandit' (River Thompson sampling per item, rewarded by the revenue "
                               "of the sales that follow; docs/ONLINE.md) or 'model' (the Triton demand model's "
                               "margin-maximising multiplier). The guardrails bind both")
    price_bandit_period_s: float = _doc("PRICE_BANDIT_PERIOD_S", 3600.0,
                                        "Event time an item's bandit arm is held before the next pull (s); the bandit "
                                        "learns from every evaluation's window whatever this is")
    price_bandit_objective: str = _doc("PRICE_BANDIT_OBJECTIVE", "revenue",
                                       "What the pricing bandit maximises: 'revenue' or 'margin' (price minus the "
                                       "catalog cost, times expected units)")
    price_bandit_seed: int = _doc("PRICE_BANDIT_SEED", 0, "Seed of the pricing bandits (each item's is derived from it and the item id)")

    # --- Triton client -------------------------------------------------------------
    triton_timeout_ms: float = _doc("TRITON_TIMEOUT_MS", 100.0, "Per-call Triton timeout (ms); the HTTP path also caps it by the remaining budget")
    stream_triton_timeout_ms: float = _doc("STREAM_TRITON_TIMEOUT_MS", 2000.0,
                                           "Per-call Triton timeout of recommendations and pricing on the stream (ms)")
    fraud_triton_timeout_ms: float = _doc("FRAUD_TRITON_TIMEOUT_MS", 250.0,
                                          "Per-call Triton timeout of the fraud role's verdicts (ms; TRITON_RETRIES "
                                          "retries): past it the rules decide, degraded, at least FRAUD_DEGRADED_FLOOR")
    triton_retries: int = _doc("TRITON_RETRIES", 1, "Retries after a failed Triton call (stream path; the HTTP path retries only within budget)")
    breaker_failures: int = _doc("TRITON_BREAKER_FAILURES", 5,
                                 "Triton server failures in a row that open the circuit breaker (what counts: scorers/triton.py)")
    breaker_reset_s: float = _doc("TRITON_BREAKER_RESET_S", 5.0, "Seconds an open breaker waits before letting one trial call through")
    model_fraud: str = _doc("MODEL_FRAUD", "fraud", "Triton model name of the fraud scorer")
    model_recommender: str = _doc("MODEL_RECOMMENDER", "recommender", "Triton model name of the recommender")
    model_pricing: str = _doc("MODEL_PRICING", "pricing", "Triton model name of the demand model")
    model_version: str = _doc("MODEL_VERSION", "", "Pinned model version for all three models ('' = latest ready)")

    # --- HTTP service / security ----------------------------------------------------------
    http_host: str = _doc("HTTP_HOST", "127.0.0.1", "Bind address of the HTTP service")
    http_port: int = _doc("HTTP_PORT", 18080, "Port of the HTTP service")
    http_internal_port: int = _doc("HTTP_INTERNAL_PORT", 0,
                                   "Port of the HTTP service's internal listener (0 = off: /metrics, /docs, /redoc "
                                   "and /openapi.json on HTTP_PORT). When set, those are served only there and answer "
                                   "404 on HTTP_PORT; /healthz answers on both")
    http_internal_host: str = _doc("HTTP_INTERNAL_HOST", "127.0.0.1", "Bind address of HTTP_INTERNAL_PORT")
    api_rate_limit_per_s: float = _doc("API_RATE_LIMIT_PER_S", 1000.0,
                                       "Sustained requests per second each API token may make to /v1 (token bucket "
                                       "per token; over it: 429 with Retry-After). 0 = no limit")
    api_rate_burst: int = _doc("API_RATE_BURST", 2000,
                               "Requests a token may make at once above API_RATE_LIMIT_PER_S (the bucket's size)")
    dev_mode: str = _doc("DEV_MODE", "off",
                         "'on': development (the local stack, the demo, the tests): unset secrets stand for published "
                         "placeholders. 'off' (default): the worker and the HTTP service refuse to start without "
                         "real secrets")
    api_token: str = _secret("API_TOKEN", "Bearer token(s) of the /v1 endpoints, comma-separated: any of them is valid "
                                          "(rotation: add the new one, move clients, drop the old one)")
    pii_secret: str = _secret("PII_HMAC_SECRET", "HMAC key that pseudonymises user, card, device and IP ids")
    state_secret: str = _secret("STATE_HMAC_SECRET",
                                "HMAC-SHA256 key that signs model and pricing-bandit state stored in Redis; state "
                                "without a valid signature is refused, never loaded (kept out of Redis)")
    dead_letter_key: str = _secret("DEAD_LETTER_KEY",
                                   "Key that encrypts the personal fields of dead-lettered originals (an operator "
                                   "holding it can inspect and replay them: `streamscore dead-letters`)")
    feature_ttl_s: int = _doc("FEATURE_TTL_S", 30 * 86400, "TTL of every online feature key (seconds)")
    feature_seen_ttl_s: int = _doc("FEATURE_SEEN_TTL_S", 86400,
                                   "How long event ids are remembered to count popularity/funnel once (seconds)")
    allowed_lateness_s: float = _doc("FEATURE_ALLOWED_LATENESS_S", 3600.0,
                                     "Events older than the partition's newest event time minus this are dead-lettered as too late")

    # --- monitoring (issue 8: operators' view) ------------------------------------------
    prometheus_url: str = _doc("PROMETHEUS_URL", "127.0.0.1:19090",
                               "Prometheus (host:port) scraping workers, the HTTP service and Triton; "
                               "`stack up` starts it when local")
    alertmanager_url: str = _doc("ALERTMANAGER_URL", "127.0.0.1:19093",
                                 "Alertmanager (host:port) that Prometheus sends alerts to; `stack up` starts it "
                                 "when local, routing every alert to ALERT_RECEIVER_URL")
    alert_receiver_url: str = _doc("ALERT_RECEIVER_URL", "127.0.0.1:19094",
                                   "The alert webhook receiver (host:port; `streamscore alerts receive`): logs and "
                                   "stores every alert Alertmanager delivers; `stack up` starts it when local")
    alert_store: str = _doc("ALERT_STORE", "",
                            "JSON-lines file where the receiver keeps the alerts ('' = <run dir>/alerts/received.jsonl)")
    alert_forward_url: str = _doc("ALERT_FORWARD_URL", "",
                                  "Webhook the receiver also posts each Alertmanager payload to (a team's chat or "
                                  "paging hook); '' = none")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """Build settings from ``environ`` (default ``os.environ``); ``overrides`` win."""
        env = os.environ if environ is None else environ
        values = {}
        for f in dataclasses.fields(cls):
            name = f.metadata["env"]
            if name in env and env[name] != "":
                values[f.name] = _parse(f.type, env[name], name)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def for_command(cls, argv: list[str] | None = None, prog: str = "streamscore") -> "Settings":
        """:meth:`from_env` for a command line: a malformed variable stops the command with one line
        naming it (exit status 2, no traceback), except under ``-h`` / ``--help``, which must work
        whatever the environment holds: then the defaults stand in (defaults shown in the help are
        the built-in ones) and a note says which variable was ignored.

        >>> import os
        >>> os.environ["WORKER_BATCH_MAX"] = "many"
        >>> Settings.for_command(["--help"]).batch_max
        500
        >>> try:
        ...     Settings.for_command(["publish"])  # prints the reason to stderr
        ... except SystemExit as exc:
        ...     print(exc.code)
        2
        >>> del os.environ["WORKER_BATCH_MAX"]
        """
        import sys

        try:
            return cls.from_env()
        except ValueError as exc:
            if {"-h", "--help"} & set(argv if argv is not None else sys.argv[1:]):
                print(f"{prog}: note: {exc}; showing built-in defaults", file=sys.stderr)
                return cls()
            print(f"{prog}: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    def __post_init__(self):
        for name, placeholder in DEV_SECRETS.items():  # unset: the placeholder (refused outside DEV_MODE)
            if not getattr(self, name):
                object.__setattr__(self, name, placeholder)
        self._check_kafka_security()
        if not 0 <= self.worker_nice <= 19:
            raise ValueError(f"WORKER_NICE={self.worker_nice}: expected 0-19")
        if self.api_rate_limit_per_s < 0 or (self.api_rate_limit_per_s > 0 and self.api_rate_burst < 1):
            raise ValueError(f"API_RATE_LIMIT_PER_S={self.api_rate_limit_per_s}, API_RATE_BURST={self.api_rate_burst}: "
                             "expected a rate >= 0 (0 = no limit) and a burst >= 1")
        if not (0 <= self.fraud_review_rate < 1 and 0 <= self.fraud_decline_rate < 1
                and self.fraud_review_rate + self.fraud_decline_rate < 1 and 0 <= self.fraud_decline_precision <= 1):
            raise ValueError(f"FRAUD_REVIEW_RATE={self.fraud_review_rate}, FRAUD_DECLINE_RATE={self.fraud_decline_rate}, "
                             f"FRAUD_DECLINE_PRECISION={self.fraud_decline_precision}: expected shares in [0, 1) "
                             "summing below 1, and a precision in [0, 1]")
        if self.fraud_threshold_window < 1 or not 1 <= self.fraud_threshold_min_scores <= self.fraud_threshold_window:
            raise ValueError(f"FRAUD_THRESHOLD_WINDOW={self.fraud_threshold_window}, FRAUD_THRESHOLD_MIN_SCORES="
                             f"{self.fraud_threshold_min_scores}: expected 1 <= min scores <= window")
        if self.http_internal_port and self.http_internal_port == self.http_port:
            raise ValueError(f"HTTP_INTERNAL_PORT={self.http_internal_port}: must differ from HTTP_PORT (or 0 = off)")
        for name, allowed in (("pricing_policy", ("bandit", "model")), ("fraud_challenger", ("on", "off")),
                              ("worker_role", ("fraud", "clicks", "pricing", "all")),
                              ("fraud_degraded_floor", ("approve", "review", "decline")),
                              ("price_bandit_objective", ("revenue", "margin")), ("rec_online_blend", ("on", "off")),
                              ("redis_topology", ("standalone", "cluster")),
                              ("dev_mode", ("on", "off"))):
            value = getattr(self, name)
            if value not in allowed:
                env = next(f.metadata["env"] for f in dataclasses.fields(self) if f.name == name)
                raise ValueError(f"{env}={value!r}: expected one of {', '.join(allowed)}")

    def _check_kafka_security(self) -> None:
        """Refuse combinations of the KAFKA_* security settings that cannot connect (or would send a
        password in clear), naming the variable.

        >>> Settings(kafka_security_protocol="SASL_PLAINTEXT")
        Traceback (most recent call last):
        ...
        ValueError: KAFKA_SASL_USERNAME is required with KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT
        >>> Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u", kafka_sasl_password="p",
        ...          kafka_sasl_mechanism="PLAIN")
        Traceback (most recent call last):
        ...
        ValueError: KAFKA_SASL_MECHANISM=PLAIN sends the password in clear: use KAFKA_SECURITY_PROTOCOL=SASL_SSL or SCRAM-SHA-512
        """
        protocol = self.kafka_security_protocol
        if protocol not in KAFKA_SECURITY_PROTOCOLS:
            raise ValueError(f"KAFKA_SECURITY_PROTOCOL={protocol!r}: expected one of {', '.join(KAFKA_SECURITY_PROTOCOLS)}")
        sasl, ssl = protocol.startswith("SASL_"), protocol.endswith("SSL")
        if sasl:
            if self.kafka_sasl_mechanism not in KAFKA_SASL_MECHANISMS:
                raise ValueError(f"KAFKA_SASL_MECHANISM={self.kafka_sasl_mechanism!r}: expected one of "
                                 f"{', '.join(KAFKA_SASL_MECHANISMS)}")
            for env, value in (("KAFKA_SASL_USERNAME", self.kafka_sasl_username),
                               ("KAFKA_SASL_PASSWORD", self.kafka_sasl_password)):
                if not value:
                    raise ValueError(f"{env} is required with KAFKA_SECURITY_PROTOCOL={protocol}")
            if self.kafka_sasl_mechanism == "PLAIN" and not ssl:
                raise ValueError("KAFKA_SASL_MECHANISM=PLAIN sends the password in clear: use "
                                 "KAFKA_SECURITY_PROTOCOL=SASL_SSL or SCRAM-SHA-512")
        else:
            for env, value in (("KAFKA_SASL_USERNAME", self.kafka_sasl_username),
                               ("KAFKA_SASL_PASSWORD", self.kafka_sasl_password)):
                if value:  # credentials that would silently not be used: a misconfiguration
                    raise ValueError(f"{env} is set but KAFKA_SECURITY_PROTOCOL={protocol} does not use it: "
                                     "set SASL_PLAINTEXT or SASL_SSL")
        if self.kafka_ssl_ca_file:
            if not ssl:
                raise ValueError(f"KAFKA_SSL_CA_FILE is set but KAFKA_SECURITY_PROTOCOL={protocol} has no TLS: "
                                 "set SSL or SASL_SSL")
            if not Path(self.kafka_ssl_ca_file).is_file():
                raise ValueError(f"KAFKA_SSL_CA_FILE={self.kafka_ssl_ca_file!r}: no such file")

    def kafka_client_config(self, **extra) -> dict:
        """The librdkafka configuration of every confluent-kafka client: bootstrap servers and the
        KAFKA_SECURITY_* settings, then ``extra`` (see :mod:`streamscore.kafka_config`)."""
        from streamscore.kafka_config import client_config

        return client_config(self, **extra)

    @property
    def alert_store_path(self) -> Path:
        """Where the alert receiver keeps what it received."""
        return Path(self.alert_store) if self.alert_store else Path(self.run_dir) / "alerts" / "received.jsonl"

    @property
    def api_tokens(self) -> tuple[str, ...]:
        """Every valid bearer token (``API_TOKEN``, comma-separated)."""
        return tuple(t.strip() for t in self.api_token.split(",") if t.strip())

    def secret_problems(self) -> list[str]:
        """Why each secret could not protect production (empty: all fine); ignores DEV_MODE.

        >>> Settings().secret_problems()[0]
        'API_TOKEN is unset (a published development placeholder stands in)'
        >>> Settings(api_token="a" * 32 + ",short", pii_secret="p" * 40, state_secret="s" * 40,
        ...          dead_letter_key="d" * 40).secret_problems()
        ['API_TOKEN: token 2 of 2 has 5 characters, fewer than 32']
        """
        problems = []
        for f in dataclasses.fields(self):
            if not f.metadata.get("secret"):
                continue
            env, value = f.metadata["env"], getattr(self, f.name)
            if not f.metadata.get("required", True):
                if value and len(value) < SECRET_MIN_CHARS:  # unset: needed only where __post_init__ says
                    problems.append(f"{env}: the value has {len(value)} characters, fewer than {SECRET_MIN_CHARS}")
                continue
            values = self.api_tokens if f.name == "api_token" else (value,)
            if value == DEV_SECRETS[f.name] or any(v in DEV_SECRETS.values() for v in values):
                problems.append(f"{env} is unset (a published development placeholder stands in)")
                continue
            for i, v in enumerate(values, start=1):
                if len(v) < SECRET_MIN_CHARS:
                    which = f"token {i} of {len(values)}" if len(values) > 1 else "the value"
                    problems.append(f"{env}: {which} has {len(v)} characters, fewer than {SECRET_MIN_CHARS}")
        return problems

    def require_secrets(self, component: str) -> None:
        """Raise :class:`SecretsError` naming every bad secret, unless ``DEV_MODE=on``: ``component``
        (the worker, the HTTP service) must not run on secrets anyone can read in this repository."""
        problems = [] if self.dev_mode == "on" else self.secret_problems()
        if problems:
            raise SecretsError(
                f"{component} refuses to start: " + "; ".join(problems) + ". Set each to a random value of at "
                f"least {SECRET_MIN_CHARS} characters (python -c 'import secrets; print(secrets.token_urlsafe(32))'), "
                "or DEV_MODE=on for local development only")

    def to_env(self) -> dict[str, str]:
        """The env vars that reproduce these settings in a child process."""
        return {f.metadata["env"]: str(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @property
    def input_topics(self) -> list[str]:
        return [self.topic_clicks, self.topic_orders, self.topic_fraud_labels, self.topic_catalog]

    @property
    def output_topics(self) -> list[str]:
        return [self.topic_fraud_verdicts, self.topic_recommendations, self.topic_price_adjustments, self.topic_dead_letter]

    def consumer_group(self, role: str) -> str:
        """The Kafka consumer group of a worker role (``fraud``, ``clicks``, ``pricing``)."""
        return f"{self.app_id}-{role}"

    def deciding_group(self, topic: str) -> str:
        """The group whose commits on input ``topic`` mean its events were decided: orders and labels
        by the fraud role, clicks by the clicks role, the catalog by the pricing role (which also
        reads orders, in its own group, for revenue)."""
        role = {self.topic_clicks: "clicks", self.topic_catalog: "pricing"}.get(topic, "fraud")
        return self.consumer_group(role)

    @property
    def all_topics(self) -> dict[str, int]:
        """Every topic with its partition count, as ``stack up`` creates them."""
        return {t: self.topic_partitions for t in self.input_topics + self.output_topics}


def _parse(type_name: str, raw: str, env_name: str):
    try:
        if type_name == "int":
            return int(raw)
        if type_name == "float":
            return float(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {env_name}={raw!r} is not a valid {type_name}") from exc
    return raw


def describe() -> str:
    """A markdown table of every setting: env var, default, meaning (for docs/CONFIG.md)."""
    rows = ["| env var | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(Settings):
        if f.metadata.get("secret") and not f.metadata.get("required", True):
            rows.append(f"| `{f.metadata['env']}` | (secret: at least {SECRET_MIN_CHARS} characters unless "
                        f"`DEV_MODE=on`; only where needed) | {f.metadata['help']} |")
            continue
        if f.metadata.get("secret"):
            rows.append(f"| `{f.metadata['env']}` | (secret: required, at least {SECRET_MIN_CHARS} characters, "
                        f"unless `DEV_MODE=on`) | {f.metadata['help']} |")
            continue
        default = f.default
        if isinstance(default, str) and default.startswith(str(ROOT.parent)):
            default = "<repo>/.." + default[len(str(ROOT.parent)):]
            default = default.replace("<repo>/../" + ROOT.name, "<repo>")
        rows.append(f"| `{f.metadata['env']}` | `{default}` | {f.metadata['help']} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m streamscore.settings > docs/CONFIG.md
    print("# Configuration\n\nEvery setting is an environment variable read once by `Settings.from_env()` "
          "(`streamscore/settings.py`). Regenerate this page with `python -m streamscore.settings > docs/CONFIG.md`.\n")
    print(describe())
