"""The production deployment files, checked without Docker (there is no engine here).

docker-compose.yml, Dockerfile, triton.Dockerfile, .dockerignore, monitoring/prometheus.yml
and the Grafana provisioning/dashboards are parsed and cross-checked against each other and
against ``streamscore.settings.Settings``: env var names, URLs vs. listeners and ports,
depends_on conditions, mounted paths, the topics kafka-init creates (its shell script is
run against a fake ``kafka-topics.sh``), scrape targets, datasource uids and the metric
names the dashboards query.

The production scale-out override files (docker-compose.kafka-ha.yml, docker-compose.redis-cluster.yml,
docker-compose.triton-replicas.yml) are merged onto it as ``docker compose -f ... -f ...`` would
(:func:`merge`, :func:`resolve_extends`: the subset of Compose's merge rules they use, ``!reset`` and
``!override`` included), and every invariant of the default stack is checked in each deployment and in
all of them at once (:data:`DEPLOYMENTS`). The Redis Cluster's node command lines and its init script
run for real over six local Valkeys (and redis-cli, `make tools`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from streamscore.settings import ENV_NAMES, Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "monitoring" / "prometheus.yml"
GRAFANA = ROOT / "monitoring" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))

WORKERS = {"worker-fraud": "fraud", "worker-clicks": "clicks", "worker-pricing": "pricing"}  # service -> role
EXPECTED_SERVICES = {"kafka", "kafka-init", "redis", "triton", "triton-cpu", *WORKERS, "api", "prometheus", "alertmanager",
                     "alert-receiver", "grafana"}
APP_SERVICES = (*WORKERS, "api")
ONE_SHOT_SERVICES = {"kafka-init", "redis-cluster-init"}
# What an operator must export; everything else has a default in the compose file.
PROD_ENV = {"API_TOKEN": "tok-" + "1" * 40 + ",tok-" + "2" * 40, "PII_HMAC_SECRET": "pii-" + "4" * 40,
            "STATE_HMAC_SECRET": "state-" + "5" * 40, "DEAD_LETTER_KEY": "dlq-" + "6" * 40,
            "GRAFANA_ADMIN_PASSWORD": "graf-789", "REDIS_WORKER_PASSWORD": "rw-" + "7" * 30,
            "REDIS_API_PASSWORD": "ra-" + "8" * 30,
            **{f"KAFKA_{who}_PASSWORD": f"kafka-{who.lower()}-" + "7" * 40
               for who in ("ADMIN", "FRAUD", "CLICKS", "PRICING", "REPLAY")}}
REQUIRED_SECRETS = {"API_TOKEN", "PII_HMAC_SECRET", "STATE_HMAC_SECRET", "DEAD_LETTER_KEY"}
# One Kafka user per client: the compose service (or outside tool) -> its SASL user and password variable.
KAFKA_USERS = {**{name: (f"streamscore-{role}", f"KAFKA_{role.upper()}_PASSWORD") for name, role in WORKERS.items()},
               "replay": ("streamscore-replay", "KAFKA_REPLAY_PASSWORD")}
KAFKA_PASSWORDS = {"KAFKA_ADMIN_PASSWORD", *(v for _, v in KAFKA_USERS.values())}

# The metric names the dashboards may query, exposed by streamscore (monitoring/metrics.py).
# Single source for test_dashboard_metrics_*: check these against a real /metrics.
DASHBOARD_METRICS = frozenset({
    "streamscore_events_total",
    "streamscore_late_events_total",
    "streamscore_dead_letters_total",
    "streamscore_decision_latency_seconds_bucket",
    "streamscore_decision_latency_seconds_count",
    "streamscore_http_request_duration_seconds_bucket",
    "streamscore_http_responses_total",
    "streamscore_triton_request_seconds_bucket",
    "streamscore_triton_request_seconds_count",
    "streamscore_triton_errors_total",
    "streamscore_triton_retries_total",
    "streamscore_triton_circuit_open",
    "streamscore_degraded_decisions_total",
    "streamscore_verdicts_total",
    "streamscore_fraud_score_bucket",
    "streamscore_fraud_score_count",
    "streamscore_fraud_score_sum",
    "streamscore_model_online_auc",
    "streamscore_model_online_log_loss",
    "streamscore_drift_detections_total",
    "streamscore_recommendations_total",
    "streamscore_recommendation_coverage_ratio",
    "streamscore_recommendation_impressions_total",
    "streamscore_recommendation_clicks_total",
    "streamscore_price_changes_total",
    "streamscore_price_guardrail_hits_total",
    "streamscore_price_expected_revenue_total",
    "streamscore_price_bandit_events_total",
    "streamscore_batch_size_events_bucket",
    "streamscore_redis_pipeline_seconds_bucket",
    "streamscore_feature_freshness_seconds_bucket",
    "streamscore_model_info",
})
# Metrics that the dashboards query but other programs expose.
EXTERNAL_METRICS = {
    "up": "prometheus (one per scrape target)",
    **{name: "tritonserver :8002/metrics" for name in (
        "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
        "nv_inference_exec_count", "nv_inference_pending_request_count", "nv_inference_queue_duration_us",
        "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
        "nv_inference_compute_output_duration_us", "nv_cpu_utilization", "nv_cpu_memory_used_bytes",
        "nv_cpu_memory_total_bytes")},
    **{name: "tritonserver :8002/metrics, only on a host with a GPU" for name in (
        "nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes")},
}


def recorded_series() -> dict[str, str]:
    """Series recorded by the rules of monitoring/rules/*.yml: name -> expression(s)."""
    out: dict[str, list[str]] = {}
    for path in sorted((ROOT / "monitoring" / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    out.setdefault(rule["record"], []).append(f"({rule['expr']})")
    return {name: " or ".join(exprs) for name, exprs in out.items()}


SETTINGS_ENV = set(ENV_NAMES.values())


# --- helpers ---------------------------------------------------------------------------------

class MissingVariable(Exception):
    pass


_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(text: str, env: dict[str, str]) -> str:
    """docker compose variable interpolation: $$, $VAR, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e}, ${VAR?e}."""

    def repl(m: re.Match) -> str:
        if m.group(1):
            return "$"
        name = m.group(2) or m.group(5)
        op, arg = m.group(3), m.group(4)
        val = env.get(name)
        if op is None:
            return val or ""
        if op == ":-":
            return val if val else arg
        if op == "-":
            return val if val is not None else arg
        if op == ":?" and not val or op == "?" and val is None:
            raise MissingVariable(f"{name}: {arg}")
        return val

    return _VAR.sub(repl, text)


def interpolate_all(node, env):
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_all(x, env) for x in node]
    if isinstance(node, dict):
        return {k: interpolate_all(v, env) for k, v in node.items()}
    return node


def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def load_compose(env: dict[str, str] | None = None, overrides: tuple[str, ...] = ()) -> dict:
    """The compose file (with the override files ``overrides``, in order, as ``docker compose -f
    docker-compose.yml -f ...``) as `docker compose config` would see it with ``env`` exported."""
    doc = resolve_extends(raw_compose(), COMPOSE)
    for name in overrides:
        doc = merge(doc, resolve_extends(read_compose_file(ROOT / name), ROOT / name))
    return interpolate_all(doc, PROD_ENV if env is None else env)


# --- override files: Compose's merge rules (compose-spec merge.md), the subset these files use ----------

class _Tag:
    """``!reset`` (drop the inherited value) or ``!override`` (replace it instead of merging)."""

    def __init__(self, kind: str, value=None):
        self.kind, self.value = kind, value


class _ComposeLoader(yaml.SafeLoader):
    pass


def _tagged(kind):
    def construct(loader, node):
        if isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        elif isinstance(node, yaml.MappingNode):
            value = loader.construct_mapping(node, deep=True)
        else:
            value = loader.construct_scalar(node)
        return _Tag(kind, value)
    return construct


_ComposeLoader.add_constructor("!reset", _tagged("reset"))
_ComposeLoader.add_constructor("!override", _tagged("override"))


def read_compose_file(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)


REPLACED = {"command", "entrypoint", "test"}  # sequences an override replaces; other sequences are merged


def _plain(node):
    if isinstance(node, _Tag):
        return None if node.kind == "reset" else _plain(node.value)
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items() if not (isinstance(v, _Tag) and v.kind == "reset")}
    if isinstance(node, list):
        return [_plain(x) for x in node]
    return node


def _volume_target(v) -> str:
    return v["target"] if isinstance(v, dict) else v.split(":")[1]


def merge(base, over, key: str = ""):
    """``over`` (an override file's node) merged onto ``base``: mappings key by key, ``command`` /
    ``entrypoint`` / ``healthcheck.test`` replaced, ``volumes`` by container path, other sequences
    appended (without repeats); ``!override`` replaces, ``!reset`` drops the key."""
    if isinstance(over, _Tag):
        return _plain(over)
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            if isinstance(v, _Tag) and v.kind == "reset":
                out.pop(k, None)
            else:
                out[k] = merge(base[k], v, k) if k in base else _plain(v)
        return out
    if isinstance(base, list) and isinstance(over, list) and key not in REPLACED:
        if key == "volumes":
            targets = {_volume_target(v) for v in over}
            return [v for v in base if _volume_target(v) not in targets] + _plain(over)
        return base + [x for x in _plain(over) if x not in base]
    return _plain(over)


def resolve_extends(doc: dict, path: Path) -> dict:
    """Every ``extends: {file, service}`` of ``doc`` (read from ``path``) replaced by that service merged
    with the extending one's own keys."""
    services = {}
    for name, svc in (doc.get("services") or {}).items():
        ext = svc.get("extends")
        if ext:
            source_path = path.parent / ext["file"] if "file" in ext else path
            source = resolve_extends(read_compose_file(source_path), source_path)["services"][ext["service"]]
            svc = merge({k: v for k, v in source.items() if k not in ("depends_on",)},
                        {k: v for k, v in svc.items() if k != "extends"})
        services[name] = svc
    return {**doc, "services": services}


# The deployments: docker-compose.yml alone and with each override file, and all of them at once.
OVERRIDES = {"kafka-ha": "docker-compose.kafka-ha.yml", "redis-cluster": "docker-compose.redis-cluster.yml",
             "triton-replicas": "docker-compose.triton-replicas.yml"}
DEPLOYMENTS = {"default": (), **{name: (f,) for name, f in OVERRIDES.items()}, "all": tuple(OVERRIDES.values())}
# secrets the cluster override needs besides the default stack's
CLUSTER_ENV = {"REDIS_ADMIN_PASSWORD": "radm-" + "9" * 30, "REDIS_REPLICA_PASSWORD": "rrep-" + "3" * 30}


def deployment_env(files: tuple[str, ...]) -> dict[str, str]:
    return {**PROD_ENV, **(CLUSTER_ENV if OVERRIDES["redis-cluster"] in files else {})}


@pytest.fixture(scope="module", params=list(DEPLOYMENTS), ids=list(DEPLOYMENTS))
def deployment(request) -> dict:
    """One deployment as `docker compose config` sees it (parametrised over :data:`DEPLOYMENTS`): the
    tests that take it check that every invariant of the default stack holds in each."""
    files = DEPLOYMENTS[request.param]
    return load_compose(deployment_env(files), files)


@pytest.fixture(scope="module")
def deployed(deployment) -> dict:
    return deployment["services"]


def brokers(services) -> list[str]:
    """The Kafka brokers of a deployment (services running the Kafka image as a broker)."""
    return [n for n, svc in services.items() if "KAFKA_PROCESS_ROLES" in env_of(svc)]


def redis_nodes(services) -> list[str]:
    return [n for n, svc in services.items() if svc.get("image", "").startswith("redis:") and "redis-server" in
            (svc.get("command") or [])]


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of every volume entry, short or long syntax."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            out.append((v["source"], v["target"], bool(v.get("read_only"))))
        else:
            parts = v.split(":")
            src, dst = parts[0], parts[1]
            out.append((src, dst, len(parts) > 2 and "ro" in parts[2].split(",")))
    return out


def is_host_path(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def host_port(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host, int(port)


def cli_flag(command: list[str], flag: str, default=None):
    for arg in command:
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return default


def container_ports(service: dict) -> set[int]:
    """Container-side ports of the ``ports`` entries ("[ip:]host:container[/proto]")."""
    out = set()
    for p in service.get("ports", []):
        if isinstance(p, dict):
            out.add(int(p["target"]))
        else:
            out.add(int(str(p).split("/")[0].rsplit(":", 1)[-1]))
    return out


def healthcheck_text(service: dict) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else test


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    lines, buf = [], ""
    for raw in path.read_text().splitlines():
        s = raw.strip()
        if s.startswith("#") or not s:
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        lines.append(buf + s)
        buf = ""
    if buf:
        lines.append(buf)
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def final_stage(instructions):
    last_from = max(i for i, (ins, _) in enumerate(instructions) if ins == "FROM")
    return instructions[last_from:]


# --- services --------------------------------------------------------------------------------

def test_every_expected_service_exists(services):
    missing = EXPECTED_SERVICES - set(services)
    assert not missing, f"services missing from docker-compose.yml: {sorted(missing)}"


# Keys the Compose Specification allows (a typo such as `healtcheck` is otherwise silently ignored).
TOP_LEVEL_KEYS = {"version", "name", "include", "services", "models", "networks", "volumes", "secrets", "configs"}
SERVICE_KEYS = set("""
    annotations attach blkio_config build cap_add cap_drop cgroup cgroup_parent command configs container_name
    cpu_count cpu_percent cpu_period cpu_quota cpu_rt_period cpu_rt_runtime cpu_shares cpus cpuset credential_spec
    depends_on deploy develop device_cgroup_rules devices dns dns_opt dns_search domainname entrypoint env_file
    environment expose extends external_links extra_hosts gpus group_add healthcheck hostname image init ipc
    isolation label_file labels links logging mac_address mem_limit mem_reservation mem_swappiness memswap_limit
    models network_mode networks oom_kill_disable oom_score_adj pid pids_limit platform ports post_start pre_stop
    privileged profiles provider pull_policy pull_refresh_after read_only restart runtime scale secrets
    security_opt shm_size stdin_open stop_grace_period stop_signal storage_opt sysctls tmpfs tty ulimits
    use_api_socket user userns_mode uts volumes volumes_from working_dir
""".split())
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
DEPENDS_ON_KEYS = {"condition", "required", "restart"}
DURATION = re.compile(r"(\d+(\.\d+)?(us|ms|s|m|h))+")


def test_compose_keys_are_compose_spec_keys(deployment):
    compose = deployment
    unknown = {k for k in compose if not k.startswith("x-")} - TOP_LEVEL_KEYS
    assert not unknown, f"unknown top-level keys {sorted(unknown)}"
    for name, svc in compose["services"].items():
        unknown = {k for k in svc if not k.startswith("x-")} - SERVICE_KEYS
        assert not unknown, f"{name}: unknown keys {sorted(unknown)}"
        hc = svc.get("healthcheck", {})
        assert not set(hc) - HEALTHCHECK_KEYS, f"{name}: unknown healthcheck keys {sorted(set(hc) - HEALTHCHECK_KEYS)}"
        for key in ("interval", "timeout", "start_period", "start_interval"):
            if key in hc:
                assert DURATION.fullmatch(str(hc[key])), f"{name}: healthcheck {key}={hc[key]!r} is not a duration"
        for target, spec in (svc.get("depends_on") or {}).items():
            assert not set(spec) - DEPENDS_ON_KEYS, f"{name} -> {target}: unknown keys {sorted(spec)}"
        if "stop_grace_period" in svc:
            assert DURATION.fullmatch(svc["stop_grace_period"]), name
        for key, value in (svc.get("environment") or {}).items():
            assert isinstance(value, str), f"{name}: {key} should be quoted ({value!r} is not a string)"


def test_secrets_are_required_and_come_from_the_environment():
    raw = raw_compose()["services"]
    for name in APP_SERVICES:
        env = env_of(raw[name])
        for secret in REQUIRED_SECRETS:
            assert re.fullmatch(r"\$\{%s:\?[^}]*\}" % secret, env.get(secret, "")), (
                f"{name}: {secret} must be `${{{secret}:?...}}` (required, from the host env)")
    # and compose really refuses to start without each of them
    for secret in REQUIRED_SECRETS | KAFKA_PASSWORDS | {"GRAFANA_ADMIN_PASSWORD", "REDIS_WORKER_PASSWORD",
                                                        "REDIS_API_PASSWORD"}:
        env = {k: v for k, v in PROD_ENV.items() if k != secret}
        with pytest.raises(MissingVariable, match=secret):
            load_compose(env)
    loaded = load_compose()["services"]
    for name in APP_SERVICES:
        env = env_of(loaded[name])
        for secret in REQUIRED_SECRETS:
            assert env[secret] == PROD_ENV[secret]
        # what compose hands the app passes its own start-up check: no development mode, real secrets
        settings = Settings.from_env({k: str(v) for k, v in env.items()})
        assert not settings.dev_mode and settings.secret_problems() == [], name
        settings.require_secrets(name)


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_env_vars_are_settings_env_vars(deployed, name):
    env = env_of(deployed[name])
    unknown = set(env) - SETTINGS_ENV
    assert not unknown, f"{name}: env vars that streamscore.settings.Settings does not read: {sorted(unknown)}"
    Settings.from_env(env)  # every value parses as its field's type


def test_dockerfile_env_vars_are_settings_or_runtime_vars():
    for ins, args in dockerfile_instructions(ROOT / "Dockerfile"):
        if ins != "ENV":
            continue
        for pair in shlex.split(args):
            key = pair.split("=", 1)[0]
            assert key in SETTINGS_ENV or key.startswith(("PYTHON", "PIP_")), f"Dockerfile ENV {key} is unknown"


def test_app_commands(services):
    for name, role in WORKERS.items():  # each role its own service, process and consumer group
        assert services[name]["command"] == ["python", "-m", "streamscore", "worker", "--role", role]
    assert services["api"]["command"] == ["python", "-m", "streamscore", "serve"]


def test_worker_can_be_scaled(deployed):
    scaled = [n for n, svc in deployed.items() if "replicas" in (svc.get("deploy") or {})]
    for name in (*WORKERS, *scaled):
        for key in ("container_name", "ports", "hostname"):
            assert key not in deployed[name], f"{name} must not set {key}: `--scale {name}=N` would clash"


def kafka_listeners(services, broker: str = "kafka") -> tuple[dict, dict, dict, str]:
    """(name -> port, (host, port) -> advertised name, name -> security protocol, controller name) of ``broker``."""
    kafka = env_of(services[broker])
    listeners = dict(re.fullmatch(r"(\w+)://([^:]*):(\d+)", x).group(1, 3) for x in kafka["KAFKA_LISTENERS"].split(","))
    advertised = {}
    for x in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","):
        name, host, port = re.fullmatch(r"(\w+)://([^:]+):(\d+)", x).groups()
        advertised[(host, int(port))] = name
    protocols = dict(x.split(":") for x in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    return listeners, advertised, protocols, kafka["KAFKA_CONTROLLER_LISTENER_NAMES"]


@pytest.mark.parametrize("index", range(3))
def test_every_kafka_listener_authenticates_and_acls_deny_by_default(deployed, index):
    """Every broker of every deployment (the default's one; kafka-ha's three)."""
    names = brokers(deployed)
    assert names and names[0] == "kafka"
    if index >= len(names):
        assert len(names) == 1 and index > 0
        return
    services, broker = deployed, names[index]
    kafka = env_of(services[broker])
    listeners, _, protocols, controller = kafka_listeners(services, broker)
    assert set(protocols) == set(listeners)
    for name, protocol in protocols.items():
        assert protocol in ("SASL_PLAINTEXT", "SASL_SSL"), f"listener {name} is {protocol}: unauthenticated"
        mechanisms = kafka[f"KAFKA_LISTENER_NAME_{name}_SASL_ENABLED_MECHANISMS"].split(",")
        if name in ("INTERNAL", "EXTERNAL"):  # the clients' listeners: SCRAM only, never PLAIN
            assert mechanisms == ["SCRAM-SHA-512"], name
            assert "ScramLoginModule" in kafka[f"KAFKA_LISTENER_NAME_{name}_SCRAM___SHA___512_SASL_JAAS_CONFIG"]
        else:  # ADMIN and CONTROLLER: the super user admin only, its password from the host env
            assert mechanisms == ["PLAIN"], name
            jaas = kafka[f"KAFKA_LISTENER_NAME_{name}_PLAIN_SASL_JAAS_CONFIG"]
            pw = PROD_ENV["KAFKA_ADMIN_PASSWORD"]
            assert f'username="admin" password="{pw}" user_admin="{pw}";' in jaas, name
            assert jaas.count("user_") == 1, f"{name}: only admin may log in with PLAIN"
    assert kafka["KAFKA_INTER_BROKER_LISTENER_NAME"] == "ADMIN" and controller == "CONTROLLER"
    assert kafka["KAFKA_SASL_MECHANISM_INTER_BROKER_PROTOCOL"] == "PLAIN"
    assert kafka["KAFKA_SASL_MECHANISM_CONTROLLER_PROTOCOL"] == "PLAIN"
    assert kafka["KAFKA_AUTHORIZER_CLASS_NAME"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert kafka["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert kafka["KAFKA_SUPER_USERS"] == "User:admin"
    published = {int(p.rsplit(":", 2)[-1]) for p in services[broker].get("ports", [])}
    assert published == {int(listeners["EXTERNAL"])}, "only EXTERNAL is published; ADMIN stays inside compose"
    host_port_published = {int(p.rsplit(":", 2)[-2]) for p in services[broker].get("ports", [])}
    _, advertised, _, _ = kafka_listeners(services, broker)
    assert {p for (_, p), name in advertised.items() if name == "EXTERNAL"} == host_port_published, (
        f"{broker}: EXTERNAL must advertise the host port it is published on")


def test_each_kafka_client_service_has_its_own_user_and_security_settings(services):
    raw = raw_compose()["services"]
    passwords = set()
    for name in WORKERS:
        user, password_var = KAFKA_USERS[name]
        env = env_of(services[name])
        s = Settings.from_env(env)
        assert s.kafka_security_protocol == "SASL_PLAINTEXT" and s.kafka_sasl_mechanism == "SCRAM-SHA-512", name
        assert s.kafka_sasl_username == user, name
        assert re.fullmatch(r"\$\{%s:\?[^}]*\}" % password_var, env_of(raw[name])["KAFKA_SASL_PASSWORD"]), (
            f"{name}: KAFKA_SASL_PASSWORD must be `${{{password_var}:?...}}` (its own, required)")
        assert s.kafka_sasl_password.get_secret_value() == PROD_ENV[password_var]
        config = s.kafka_client_config()
        assert config["sasl.username"] == user and config["security.protocol"] == "SASL_PLAINTEXT"
        passwords.add(s.kafka_sasl_password.get_secret_value())
    assert len(passwords) == len(WORKERS), "no two workers share a Kafka password"
    # the API does not talk to Kafka: it holds no Kafka credentials
    assert "KAFKA_SASL_PASSWORD" not in env_of(services["api"])


def test_kafka_bootstrap_is_an_internal_sasl_listener(deployed):
    services = deployed
    listeners, _, protocols, controller = kafka_listeners(services)
    advertised = {hp: name for b in brokers(services) for hp, name in kafka_listeners(services, b)[1].items()}
    for name in (*WORKERS, "kafka-init"):
        env = env_of(services[name])
        bootstrap = env.get("KAFKA_BOOTSTRAP") or env["BOOTSTRAP"]
        for hp in bootstrap.split(","):
            host, port = host_port(hp)
            assert host in services, f"{name}: {hp} names no compose service"
            assert (host, port) in advertised, f"{name}: {hp} is not an advertised Kafka listener"
            listener = advertised[(host, port)]
            assert listener != controller
            assert int(listeners[listener]) == port, f"{listener} listens on {listeners[listener]}, not {port}"
            if name == "kafka-init":  # the super user, on the listener that takes PLAIN as admin
                assert listener == "ADMIN", f"kafka-init must use ADMIN, not {listener}"
                continue
            assert listener == "INTERNAL", f"{name}: workers use INTERNAL, not {listener}"
            assert protocols[listener] == Settings.from_env(env).kafka_security_protocol, (
                f"{name} speaks {Settings.from_env(env).kafka_security_protocol}, {listener} is {protocols[listener]}")
        # every broker in the bootstrap list: a client starts while any one of them is down
        assert {host_port(hp)[0] for hp in bootstrap.split(",")} == set(brokers(services)), name


def redis_users(command: list[str]) -> dict[str, list[str]]:
    """user -> its ``--user`` arguments in a redis-server command line."""
    users, i = {}, 0
    while i < len(command):
        if command[i] == "--user":
            j = next((k for k in range(i + 1, len(command)) if command[k].startswith("--")), len(command))
            users[command[i + 1]] = command[i + 1:j]
            i = j
        else:
            i += 1
    return users


def test_redis_acl_users_are_features_acl_and_each_app_uses_its_own(deployed):
    """On the one Redis, and on every node of the cluster (which also has its own two users)."""
    from features.acl import CLUSTER_RULES, RULES, setuser_args

    services = deployed
    nodes = redis_nodes(services)
    assert nodes and nodes[0] == "redis"
    passwords = {"worker": PROD_ENV["REDIS_WORKER_PASSWORD"], "api": PROD_ENV["REDIS_API_PASSWORD"],
                 "admin": CLUSTER_ENV["REDIS_ADMIN_PASSWORD"], "replica": CLUSTER_ENV["REDIS_REPLICA_PASSWORD"]}
    cluster = len(nodes) > 1
    for node in nodes:
        users = redis_users(services[node]["command"])
        assert users.pop("default") == ["default", "off"], node  # nobody connects without a user
        expected = {**RULES, **(CLUSTER_RULES if cluster else {})}
        assert users == {u: setuser_args(u, passwords[u]) for u in expected}, node  # as the test over Valkey checks
        check = healthcheck_text(services[node])  # the healthcheck logs in too (the default user is off)
        assert "--user worker" in check and "REDIS_WORKER_PASSWORD" in check, node
        assert env_of(services[node])["REDIS_WORKER_PASSWORD"] == passwords["worker"], node
    for name in APP_SERVICES:
        url = urlparse(env_of(services[name])["REDIS_URL"])
        user = "api" if name == "api" else "worker"
        assert (url.username, url.password) == (user, passwords[user]), name


def test_redis_url_points_at_the_redis_service(deployed):
    services = deployed
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    port = int(cli_flag([" ".join(redis.get("command", []))], "--port", 6379))
    for name in APP_SERVICES:
        url = urlparse(env_of(services[name])["REDIS_URL"])
        assert url.scheme == "redis"
        assert url.hostname == "redis" and url.hostname in services
        assert url.port == port


def test_triton_urls_match_triton_ports(services):
    command = services["triton"]["command"]
    expected = {
        "TRITON_HTTP_URL": int(cli_flag(command, "--http-port", 8000)),
        "TRITON_GRPC_URL": int(cli_flag(command, "--grpc-port", 8001)),
        "TRITON_METRICS_URL": int(cli_flag(command, "--metrics-port", 8002)),
    }
    assert {8000, 8001, 8002} <= container_ports(services["triton"])
    for name in APP_SERVICES:
        env = env_of(services[name])
        for var, port in expected.items():
            assert host_port(env[var]) == ("triton", port), f"{name}: {var}={env[var]}, triton serves it on {port}"


def test_api_listens_on_its_published_port_with_a_healthz_check(services):
    api = services["api"]
    env = env_of(api)
    assert env["HTTP_HOST"] == "0.0.0.0", "the API must bind all interfaces inside its container"
    port = int(env["HTTP_PORT"])
    assert port == 8080
    assert port in container_ports(api)
    check = healthcheck_text(api)
    assert "/healthz" in check and ("HTTP_PORT" in check or f":{port}/" in check)


def test_every_published_port_is_loopback_by_default_and_plain_http_needs_the_documented_tls_proxy(deployed):
    for profile in TRITON_PROFILES.values():  # what runs together: no two services on one host port
        hosts = {}
        for name, service in deployed.items():
            if service.get("profiles") and profile not in service["profiles"]:
                continue
            for spec in service.get("ports", []):
                host = str(spec).rsplit(":", 1)[0]
                assert host not in hosts, f"{name} and {hosts.get(host)} publish the same host port {host}"
                hosts[host] = name
    for name, service in deployed.items():
        for spec in service.get("ports", []):
            assert str(spec).startswith("127.0.0.1:"), f"{name} publishes {spec} beyond the host's loopback"
    raw = raw_compose()["services"]
    assert raw["api"]["ports"] == ["${API_BIND:-127.0.0.1}:8080:8080"]
    assert raw["grafana"]["ports"] == ["${GRAFANA_BIND:-127.0.0.1}:3000:3000"]
    ops = (ROOT / "docs" / "OPERATIONS.md").read_text()
    section = ops[ops.index("## TLS in front of the API and Grafana"):]
    assert "reverse_proxy 127.0.0.1:8080" in section and "reverse_proxy 127.0.0.1:3000" in section


def test_alerts_go_from_prometheus_through_alertmanager_to_the_receiver(services):
    import shutil

    prometheus = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    am_targets = [t for a in prometheus["alerting"]["alertmanagers"] for c in a["static_configs"] for t in c["targets"]]
    assert am_targets == ["alertmanager:9093"] and services["alertmanager"]["ports"] == ["127.0.0.1:9093:9093"]
    mounted = {target for _, target, _ in mounts(services["alertmanager"])}
    assert "/etc/alertmanager/alertmanager.yml" in mounted
    am = yaml.safe_load((ROOT / "monitoring" / "alertmanager.yml").read_text())
    hooks = [w["url"] for r in am["receivers"] for w in r.get("webhook_configs", [])]
    receiver = services["alert-receiver"]
    host, port = env_of(receiver)["ALERT_RECEIVER_URL"].rsplit(":", 1)
    assert hooks == [f"http://alert-receiver:{port}/alerts"] and host == "0.0.0.0"
    assert receiver["command"] == ["python", "-m", "streamscore", "alerts", "receive"]
    assert f":{port}/healthz" in healthcheck_text(receiver)
    assert env_of(receiver)["ALERT_FORWARD_URL"] == ""  # by environment: ${ALERT_FORWARD_URL:-}
    assert shutil.which("amtool"), "amtool (Debian prometheus-alertmanager, `make tools`) checks the config"
    out = subprocess.run(["amtool", "check-config", str(ROOT / "monitoring" / "alertmanager.yml")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr


def test_worker_metrics_port_is_on_and_checked(services):
    for name in WORKERS:
        env = env_of(services[name])
        assert int(env["WORKER_METRICS_PORT"]) > 0, "prometheus scrapes it and the healthcheck needs it"
        assert "WORKER_METRICS_PORT" in healthcheck_text(services[name])


def test_depends_on_targets_exist_with_conditions(deployed):
    services = deployed
    allowed = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on must use the long form with conditions"
        for target, spec in deps.items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert spec.get("condition") in allowed, f"{name} -> {target}: condition missing"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target} healthy, it has no healthcheck"
            if spec["condition"] == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", f"{target} is waited on to exit: restart must be 'no'"


def test_startup_order(services):
    cond = {name: {t: s["condition"] for t, s in services[name].get("depends_on", {}).items()} for name in services}
    for name in APP_SERVICES:
        assert cond[name] == {"kafka-init": "service_completed_successfully", "redis": "service_healthy",
                              "triton": "service_healthy", "triton-cpu": "service_healthy"}, name
    assert cond["kafka-init"] == {"kafka": "service_healthy"}
    assert cond["grafana"].get("prometheus") == "service_healthy"


def test_long_running_services_restart_and_have_healthchecks(deployed):
    for name, svc in deployed.items():
        if name in ONE_SHOT_SERVICES:
            assert svc.get("restart", "no") == "no"
            continue
        assert svc.get("restart") == "unless-stopped", f"{name}: restart policy"
        test = svc.get("healthcheck", {}).get("test")
        assert test and test not in (["NONE"], "NONE"), f"{name}: healthcheck missing"
        if isinstance(test, list):
            assert test[0] in ("CMD", "CMD-SHELL"), f"{name}: healthcheck test must start with CMD or CMD-SHELL"


def test_images_are_pinned(deployed):
    for name, svc in deployed.items():
        if "build" in svc:
            build = svc["build"]
            assert (ROOT / build["context"] / build.get("dockerfile", "Dockerfile")).is_file(), name
            continue
        image = svc["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag and tag not in ("", "latest"), f"{name}: image {image} is not pinned"


def test_triton_image_is_nvidia_tritonserver_with_torch():
    instructions = dockerfile_instructions(ROOT / "triton.Dockerfile")
    froms = [args for ins, args in instructions if ins == "FROM"]
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3", froms[-1]), froms
    runs = " ".join(args for ins, args in instructions if ins == "RUN")
    assert "torch==" in runs and "numpy==1." in runs, "the python-backend models import torch and numpy<2"


def test_mounted_host_paths_exist_and_named_volumes_are_declared(deployment):
    compose = deployment
    declared = set(compose.get("volumes") or {})
    for name, svc in compose["services"].items():
        for src, dst, _ in mounts(svc):
            if is_host_path(src):
                assert (ROOT / src).exists(), f"{name}: host path {src} (-> {dst}) does not exist in the repo"
            else:
                assert src in declared, f"{name}: named volume {src} is not declared under volumes:"


def test_triton_serves_triton_repo_on_a_gpu(services, compose):
    triton = services["triton"]
    assert ("./triton_repo", "/models", True) in mounts(triton)
    command = triton["command"]
    assert command[0] == "tritonserver"
    assert cli_flag(command, "--model-repository") == "/models"
    assert "--disable-auto-complete-config" in command
    assert cli_flag(command, "--strict-readiness") == "true"
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert "/v2/health/ready" in healthcheck_text(triton)
    assert f":{cli_flag(command, '--http-port', 8000)}/v2/health/ready" in healthcheck_text(triton)


TRITON_PROFILES = {"triton": "gpu", "triton-cpu": "cpu"}


def test_triton_runs_in_a_gpu_or_a_cpu_profile_over_the_same_model_repo(services):
    """`--profile gpu`: the GPU-reserving `triton`; `--profile cpu`: `triton-cpu`, the same server, command,
    model repository, ports and health check without a GPU, reachable by the same name; every app waits
    for whichever runs (required: false), and nothing else sits in a profile."""
    gpu, cpu = services["triton"], services["triton-cpu"]
    assert {name: svc.get("profiles") for name, svc in services.items() if svc.get("profiles")} == {
        name: [profile] for name, profile in TRITON_PROFILES.items()}
    assert "deploy" not in cpu and "devices" not in cpu and "gpus" not in cpu and cpu.get("runtime") != "nvidia"
    for key in ("command", "volumes", "ports", "healthcheck", "shm_size", "ulimits", "restart"):
        assert cpu[key] == gpu[key], key
    assert ("./triton_repo", "/models", True) in mounts(cpu)
    assert cpu["networks"]["default"]["aliases"] == ["triton"]  # TRITON_*_URL=triton:* work unchanged
    assert cpu["build"]["dockerfile"] == gpu["build"]["dockerfile"] == "triton.Dockerfile"
    assert "whl/cpu" in cpu["build"]["args"]["TORCH_INDEX_URL"] and cpu["image"] != gpu["image"]
    assert re.search(r"^ARG TORCH_INDEX_URL=", (ROOT / "triton.Dockerfile").read_text(), re.M)
    for name in APP_SERVICES:
        deps = services[name]["depends_on"]
        for triton in TRITON_PROFILES:
            assert deps[triton] == {"condition": "service_healthy", "required": False}, (name, triton)
        assert all(spec.get("required", True) for t, spec in deps.items() if t not in TRITON_PROFILES), name
    for model in ("fraud", "recommender", "pricing"):  # instance groups that run wherever Triton does
        kinds = re.findall(r"kind:\s*(KIND_\w+)", (ROOT / "triton_repo" / model / "config.pbtxt").read_text())
        assert kinds and set(kinds) <= {"KIND_AUTO", "KIND_CPU"}, (model, kinds)


def test_triton_repo_has_a_config_for_every_model_the_settings_name():
    s = Settings()
    for model in (s.model_fraud, s.model_recommender, s.model_pricing):
        assert (ROOT / "triton_repo" / model / "config.pbtxt").is_file(), (
            f"triton_repo/{model}/config.pbtxt missing: strict readiness would never turn green")


# --- kafka-init: run its script against a fake kafka-topics.sh ---------------------------------

FAKE_KAFKA_TOOLS = ("kafka-topics.sh", "kafka-configs.sh", "kafka-acls.sh")
FAKE_KAFKA_TOPICS = textwrap.dedent("""\
    import json, os, sys
    tool, args = os.path.basename(sys.argv[0]), sys.argv[1:]
    with open(os.environ["FAKE_KAFKA_LOG"], "a") as f:
        f.write(json.dumps([tool] + args) + "\\n")
    if "--command-config" in args:  # what the tool would log in with: must be admin, PLAIN
        conf = open(args[args.index("--command-config") + 1]).read()
        with open(os.environ["FAKE_KAFKA_LOG"] + ".conf", "a") as f:
            f.write(json.dumps(conf) + "\\n")
    if tool != "kafka-topics.sh":
        sys.exit(0)
    state_path = os.environ["FAKE_KAFKA_STATE"]
    state = json.load(open(state_path)) if os.path.exists(state_path) else {}
    opt = lambda name: args[args.index(name) + 1]
    topic = opt("--topic")
    if "--create" in args:
        if topic in state:
            if "--if-not-exists" not in args:
                sys.exit(f"Error: Topic '{topic}' already exists.")
        else:
            state[topic] = [int(opt("--partitions")), int(opt("--replication-factor"))]
            json.dump(state, open(state_path, "w"))
    elif "--describe" in args:
        if topic not in state:
            sys.exit(f"Error: Topic '{topic}' does not exist as expected")
        partitions, replicas = state[topic] if isinstance(state[topic], list) else (state[topic], 1)
        print(f"Topic: {topic}\\tTopicId: AAAAAAAAAAAAAAAAAAAAAA\\tPartitionCount: {partitions}\\t"
              f"ReplicationFactor: {replicas}\\tConfigs: ")
        for p in range(partitions):
            print(f"\\tTopic: {topic}\\tPartition: {p}\\tLeader: 1\\tReplicas: 1\\tIsr: 1")
    else:
        sys.exit(2)
""")


def run_kafka_init(services, tmp_path: Path, state: dict | None = None) -> tuple[subprocess.CompletedProcess, list, list]:
    """Run kafka-init's script against fakes: (process, kafka-topics.sh calls, every tool call with its name)."""
    init = services["kafka-init"]
    env = env_of(init)
    assert env["KAFKA_BIN"] == "/opt/kafka/bin", "where the apache/kafka image keeps kafka-topics.sh"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in FAKE_KAFKA_TOOLS:
        fake = bin_dir / tool
        fake.write_text(f"#!{sys.executable}\n" + FAKE_KAFKA_TOPICS)
        fake.chmod(0o755)
    state_path, log_path = tmp_path / "state.json", tmp_path / "calls.jsonl"
    if state is not None:
        state_path.write_text(json.dumps(state))
    log_path.unlink(missing_ok=True)
    run_env = {**env, "KAFKA_BIN": str(bin_dir), "FAKE_KAFKA_STATE": str(state_path),
               "FAKE_KAFKA_LOG": str(log_path), "PATH": os.environ["PATH"]}
    argv = list(init["entrypoint"]) + list(init["command"])
    assert argv[0] in ("/bin/sh", "sh", "/bin/bash", "bash") and argv[1] == "-c"
    proc = subprocess.run(argv, env=run_env, capture_output=True, text=True, timeout=60)
    calls = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
    conf_path = Path(str(log_path) + ".conf")
    configs = [json.loads(line) for line in conf_path.read_text().splitlines()] if conf_path.exists() else []
    conf_path.unlink(missing_ok=True)
    pw = env["ADMIN_PASSWORD"]
    for conf in configs:  # every tool call logs in as admin with PLAIN over SASL
        assert "security.protocol=SASL_PLAINTEXT" in conf and "sasl.mechanism=PLAIN" in conf
        assert f'username="admin" password="{pw}";' in conf
    assert len(configs) == len(calls), "every kafka tool call authenticates (--command-config)"
    return proc, [c[1:] for c in calls if c[0] == "kafka-topics.sh"], calls


def created_topics(calls) -> dict[str, int]:
    out = {}
    for args in calls:
        if "--create" in args:
            out[args[args.index("--topic") + 1]] = int(args[args.index("--partitions") + 1])
    return out


def test_kafka_init_creates_exactly_the_settings_topics(deployed, tmp_path):
    """With the replication factor and min.insync.replicas every client's settings say (kafka-ha: 3 and 2)."""
    services = deployed
    init = services["kafka-init"]
    assert init["image"] == services["kafka"]["image"]
    proc, calls, every_call = run_kafka_init(services, tmp_path)
    assert proc.returncode == 0, proc.stderr
    created = created_topics(calls)
    assert created == Settings().all_topics
    for name in APP_SERVICES:  # what the containers will actually use
        assert created == Settings.from_env(env_of(services[name])).all_topics, name
    worker = Settings.from_env(env_of(services["worker-fraud"]))
    for args in calls:
        if "--create" in args:
            assert "--if-not-exists" in args
            assert int(args[args.index("--replication-factor") + 1]) == worker.topic_replication
            assert args[args.index("--config") + 1] == f"min.insync.replicas={worker.topic_min_insync_replicas}"
        assert args[args.index("--bootstrap-server") + 1] == env_of(init)["BOOTSTRAP"]  # ADMIN (checked above)
    altered = {args[args.index("--entity-name") + 1]: args[args.index("--add-config") + 1]
               for tool, *args in every_call if tool == "kafka-configs.sh" and "topics" in args}
    assert altered == {t: f"min.insync.replicas={worker.topic_min_insync_replicas}" for t in created}, (
        "an existing topic gets its min.insync.replicas too")
    assert f"{worker.topic_replication} replicas, min ISR {worker.topic_min_insync_replicas}" in proc.stdout


def test_kafka_init_fails_on_a_topic_with_another_replication_factor(tmp_path):
    ha = load_compose(overrides=(OVERRIDES["kafka-ha"],))["services"]
    clicks = Settings().topic_clicks
    proc, _, _ = run_kafka_init(ha, tmp_path, state={clicks: [Settings().topic_partitions, 1]})  # made on one broker
    assert proc.returncode != 0
    assert f"topic {clicks} has replication factor '1', expected 3" in proc.stderr


def acls_granted(calls) -> dict[str, set[tuple[str, str, str, str]]]:
    """principal -> {(operation, resource type, pattern type, name)} from kafka-acls.sh --add calls."""
    out: dict[str, set] = {}
    for tool, *args in calls:
        if tool != "kafka-acls.sh":
            continue
        assert "--add" in args and "--deny-principal" not in args
        assert args.count("--allow-principal") == 1
        principal = args[args.index("--allow-principal") + 1]
        ops = [args[i + 1] for i, a in enumerate(args) if a == "--operation"]
        pattern = args[args.index("--resource-pattern-type") + 1] if "--resource-pattern-type" in args else "literal"
        resources = [(a[2:], args[i + 1]) for i, a in enumerate(args) if a in ("--topic", "--group", "--cluster",
                                                                               "--transactional-id")]
        assert ops and resources, args
        out.setdefault(principal, set()).update((op, kind, pattern, name) for op in ops for kind, name in resources)
    return out


def test_kafka_init_creates_a_user_and_least_privilege_acls_per_client(services, tmp_path):
    from streams.app import profile

    init_env = env_of(services["kafka-init"])
    proc, _, calls = run_kafka_init(services, tmp_path)
    assert proc.returncode == 0, proc.stderr
    users = {}
    for tool, *args in calls:
        if tool == "kafka-configs.sh":
            assert args[args.index("--entity-type") + 1] in ("users", "topics")
            if args[args.index("--entity-type") + 1] == "users":
                users[args[args.index("--entity-name") + 1]] = args[args.index("--add-config") + 1]
    for name, (user, password_var) in KAFKA_USERS.items():  # each client its own SCRAM-SHA-512 user
        assert users[user] == f"SCRAM-SHA-512=[iterations=8192,password={PROD_ENV[password_var]}]", name
    assert set(users) == {u for u, _ in KAFKA_USERS.values()}
    granted = acls_granted(calls)
    assert set(granted) == {f"User:{u}" for u, _ in KAFKA_USERS.values()}, "an ACL for each principal, no other"
    for name, role in WORKERS.items():
        s = Settings.from_env(env_of(services[name]))
        assert s.app_id == init_env["STREAMSCORE_APP_ID"]
        p = profile(s, role)
        outputs = {"fraud": s.topic_fraud_verdicts, "clicks": s.topic_recommendations,
                   "pricing": s.topic_price_adjustments}[role]
        expected = ({("Read", "topic", "literal", t) for t in p.topics}
                    | {("Read", "group", "literal", s.consumer_group(role))}
                    | {("Write", "topic", "literal", t) for t in (outputs, s.topic_dead_letter)})
        assert granted[f"User:{s.kafka_sasl_username}"] == expected, name  # its inputs, its group, its outputs
    s = Settings.from_env(env_of(services["worker-fraud"]))
    replay = granted["User:streamscore-replay"]
    assert {(op, t) for op, kind, _, t in replay if kind == "topic"} == {
        (op, t) for op in ("Read", "Write") for t in s.input_topics}  # never an output topic
    assert ("Read", "group", "prefixed", "replay-") in replay
    assert all(op != "All" and kind != "cluster" for acls in granted.values() for op, kind, _, _ in acls)


def test_kafka_init_is_idempotent(services, tmp_path):
    proc, _, _ = run_kafka_init(services, tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc, _, _ = run_kafka_init(services, tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_kafka_init_fails_on_a_topic_with_other_partitions(services, tmp_path):
    clicks = Settings().topic_clicks
    proc, _, _ = run_kafka_init(services, tmp_path, state={clicks: Settings().topic_partitions + 1})
    assert proc.returncode != 0
    assert clicks in proc.stderr


# --- prometheus --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prometheus_config() -> dict:
    return yaml.safe_load(PROMETHEUS.read_text())


def scrape_job(config, job):
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert job in jobs, f"prometheus.yml does not scrape {job}"
    return jobs[job]


def static_targets(job) -> set[str]:
    return {t for sc in job.get("static_configs", []) for t in sc["targets"]}


def test_prometheus_service_loads_this_config(services):
    prom = services["prometheus"]
    config_file = cli_flag(prom["command"], "--config.file")
    assert ("./monitoring/prometheus.yml", config_file, True) in mounts(prom)


def test_prometheus_scrapes_every_worker_replica(services, prometheus_config):
    job = scrape_job(prometheus_config, "worker")
    port = Settings.from_env(env_of(services["worker-fraud"])).worker_metrics_port
    sds = job.get("dns_sd_configs", [])
    assert sds, "workers are scaled: discover them by DNS, not a static target"
    assert all(sd["port"] == port and sd.get("type", "SRV") == "A" for sd in sds)
    names = {n for sd in sds for n in sd["names"]}
    assert names == set(WORKERS), "every role's replicas are scraped"
    assert all(Settings.from_env(env_of(services[n])).worker_metrics_port == port for n in WORKERS)


def test_prometheus_scrapes_api_and_triton_on_their_ports(services, prometheus_config):
    api = Settings.from_env(env_of(services["api"]))
    assert static_targets(scrape_job(prometheus_config, "api")) == {f"api:{api.http_port}"}
    assert scrape_job(prometheus_config, "api").get("metrics_path", "/metrics") == "/metrics"
    # every Triton replica (one A record per container), on TRITON_METRICS_URL's port
    triton = scrape_job(prometheus_config, "triton")
    host, port = host_port(api.triton_metrics_url)
    assert not static_targets(triton)
    assert [(sd["names"], sd.get("type", "SRV"), sd["port"]) for sd in triton["dns_sd_configs"]] == [([host], "A", port)]
    assert host in services and triton.get("metrics_path", "/metrics") == "/metrics"


def test_prometheus_rules_directory_is_mounted(services, prometheus_config):
    targets = {dst: src for src, dst, _ in mounts(services["prometheus"])}
    found: set[str] = set()
    for pattern in prometheus_config.get("rule_files", []):
        mounted = [dst for dst in targets if pattern.startswith(dst.rstrip("/") + "/")]
        assert mounted, f"rule_files {pattern} is not inside a mounted directory"
        assert (ROOT / targets[mounted[0]]).is_dir()
        found.update(p.name for p in (ROOT / targets[mounted[0]]).glob(pattern[len(mounted[0].rstrip("/")) + 1:]))
    assert {"alerts.yml", "recording.yml"} <= found, f"the production Prometheus would load only {sorted(found)}"


def test_promtool_accepts_the_config():
    assert shutil.which("promtool"), "promtool missing: `make tools` installs it (Debian package prometheus)"
    proc = subprocess.run(["promtool", "check", "config", str(PROMETHEUS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- grafana -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def datasource() -> dict:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    sources = [d for d in doc["datasources"] if d["name"] == "Prometheus"]
    assert len(sources) == 1
    return sources[0]


def test_grafana_datasource_points_at_the_prometheus_service(services, datasource):
    assert datasource["uid"] == "prometheus" and datasource["type"] == "prometheus"
    url = urlparse(datasource["url"])
    assert url.hostname in services and url.hostname == "prometheus"
    listen = cli_flag(services["prometheus"]["command"], "--web.listen-address", "0.0.0.0:9090")
    assert url.port == host_port(listen)[1]


def test_grafana_mounts_provisioning_and_dashboards_where_the_provider_reads(services):
    grafana = services["grafana"]
    targets = {src: dst for src, dst, _ in mounts(grafana)}
    assert targets.get("./monitoring/grafana/provisioning") == "/etc/grafana/provisioning"
    doc = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dashboards.yml").read_text())
    paths = {p["options"]["path"] for p in doc["providers"]}
    assert paths == {targets["./monitoring/grafana/dashboards"]}
    home = env_of(grafana).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        dashboards_dir = targets["./monitoring/grafana/dashboards"]
        assert home.startswith(dashboards_dir + "/")
        assert (GRAFANA / "dashboards" / home[len(dashboards_dir) + 1:]).is_file()


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
             "and", "or", "unless", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (not functions, labels, keywords or durations)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\$\{?\w+\}?", "", e)           # Grafana variables
    e = re.sub(r"\{[^}]*\}", "", e)             # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)            # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        if m.start() and (e[m.start() - 1].isdigit() or e[m.start() - 1] == "."):
            continue                              # 5m, 1e3
        if e[m.end():].lstrip().startswith("(") or m.group(0) in _KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def test_metric_name_extraction():
    expr = ('histogram_quantile(0.99, sum by (route, le) (rate(a_bucket{x="y(z)"}[$__rate_interval]))) '
            '/ on (job) group_left sum without (i) (b_total offset 5m) > bool 1e3 and up{job=~"w|a"}')
    assert metric_names(expr) == {"a_bucket", "b_total", "up"}


def panels_of(dashboard: dict) -> list[dict]:
    out = []
    for p in dashboard.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows
    return out


@pytest.fixture(scope="module")
def dashboards() -> list[tuple[Path, dict]]:
    assert DASHBOARDS, "no dashboard JSON under monitoring/grafana/dashboards"
    return [(path, json.loads(path.read_text())) for path in DASHBOARDS]


def test_dashboards_have_unique_uids_and_a_schema(dashboards):
    uids = [d["uid"] for _, d in dashboards]
    assert len(uids) == len(set(uids)), f"duplicate dashboard uids: {uids}"
    for path, d in dashboards:
        assert d.get("title"), path
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", d["uid"]), f"{path}: bad uid {d['uid']!r}"
        assert isinstance(d.get("schemaVersion"), int) and d["schemaVersion"] >= 36, path
        assert "id" not in d or d["id"] is None, f"{path}: provisioned dashboards must not carry an id"


def test_dashboard_panels_are_laid_out_without_overlap(dashboards):
    for path, d in dashboards:
        panels = panels_of(d)
        assert panels, path
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), f"{path}: duplicate panel ids"
        cells = {}
        for p in panels:
            g = p["gridPos"]
            assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0 and g["x"] + g["w"] <= 24, (path, p["title"])
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{path}: {p['title']!r} overlaps {cells[(x, y)]!r}"
                    cells[(x, y)] = p["title"]


def test_dashboard_targets_use_the_provisioned_datasource(dashboards, datasource):
    for path, d in dashboards:
        for p in panels_of(d):
            if p.get("type") == "row":
                continue
            assert p.get("targets"), f"{path}: panel {p['title']!r} has no targets"
            if "datasource" in p:
                assert p["datasource"]["uid"] == datasource["uid"], (path, p["title"])
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), (path, p["title"])
            for t in p["targets"]:
                assert t["datasource"]["uid"] == datasource["uid"], (path, p["title"], t["refId"])
                assert t["datasource"].get("type", "prometheus") == datasource["type"]
                assert t.get("expr", "").strip(), (path, p["title"], t["refId"])


def test_dashboard_metrics_are_known(dashboards):
    allowed = DASHBOARD_METRICS | set(EXTERNAL_METRICS) | set(recorded_series())
    used = set()
    for path, d in dashboards:
        for p in panels_of(d):
            names = set().union(*(metric_names(t["expr"]) for t in p.get("targets", [])))
            if p.get("type") != "row":
                assert names, f"{path}: panel {p['title']!r} queries no metric"
            unknown = names - allowed
            assert not unknown, f"{path}: panel {p['title']!r} queries unknown metrics {sorted(unknown)}"
            used |= names
    unused = DASHBOARD_METRICS - used
    assert used & set(recorded_series()), "no dashboard uses a recording rule: the budgets are not drawn"
    assert not unused, f"DASHBOARD_METRICS not shown on any dashboard: {sorted(unused)}"


def test_recording_rules_use_known_metrics():
    from monitoring.metrics import Metrics

    recorded = recorded_series()
    allowed = exposed_sample_names(Metrics().registry) | set(EXTERNAL_METRICS) | set(recorded)
    for name, expr in recorded.items():
        unknown = metric_names(expr) - allowed
        assert not unknown, f"recording rule {name} queries unknown metrics {sorted(unknown)}"


def exposed_sample_names(registry) -> set[str]:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",),
                "info": ("_info",), "summary": ("", "_count", "_sum")}
    return {m.name + s for m in registry.collect() for s in suffixes.get(m.type, ("",))}


def test_dashboard_metrics_are_defined_by_the_code():
    from monitoring.metrics import Metrics

    exposed = exposed_sample_names(Metrics().registry)
    missing = DASHBOARD_METRICS - exposed
    assert not missing, f"dashboards query metrics monitoring/metrics.py does not define: {sorted(missing)}"


# --- the app image -------------------------------------------------------------------------------

def test_app_image_is_slim_python_311_and_runs_as_non_root():
    instructions = dockerfile_instructions(ROOT / "Dockerfile")
    stage = final_stage(instructions)
    assert re.fullmatch(r"python:3\.11-slim(@sha256:[0-9a-f]+)?", stage[0][1].split()[0]), stage[0]
    users = [args for ins, args in stage if ins == "USER"]
    assert users, "the runtime stage must switch to a non-root USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    copies = " ".join(args for ins, args in instructions if ins in ("COPY", "ADD"))
    for forbidden in (".run", "triton_repo", ".venv", "shared"):
        assert forbidden not in copies, f"Dockerfile copies {forbidden}"


def test_dockerignore_keeps_data_and_secrets_out_of_the_build_context():
    patterns = {ln.strip().rstrip("/") for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")}
    required = {".git", ".venv", ".run", "build", "tests", "triton_repo", ".env"}
    missing = required - patterns
    assert not missing, f".dockerignore lacks {sorted(missing)}"


def test_kafka_accepts_the_fraud_workers_session_timeout(services):
    """A fraud worker's 2 s session timeout (fast failover) must be within the broker's allowed range."""
    kafka = env_of(services["kafka"])
    fraud = Settings.from_env(env_of(services["worker-fraud"]))
    assert int(kafka.get("KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS", 6000)) <= fraud.fraud_session_timeout_s * 1000


# --- the production scale-out overrides (issue 14) -----------------------------------------------------

def test_override_secrets_are_required():
    for files in DEPLOYMENTS.values():
        load_compose(deployment_env(files), files)  # every deployment loads with its secrets
    for secret in CLUSTER_ENV:  # the cluster's own users: no default password
        with pytest.raises(MissingVariable, match=secret):
            load_compose({k: v for k, v in deployment_env(DEPLOYMENTS["redis-cluster"]).items() if k != secret},
                         DEPLOYMENTS["redis-cluster"])


def test_kafka_ha_runs_three_brokers_in_one_quorum_with_rf_3_and_min_isr_2():
    services = load_compose(overrides=(OVERRIDES["kafka-ha"],))["services"]
    names = brokers(services)
    assert names == ["kafka", "kafka-2", "kafka-3"]
    envs = {n: env_of(services[n]) for n in names}
    assert sorted(e["KAFKA_NODE_ID"] for e in envs.values()) == ["1", "2", "3"]
    assert len({e["CLUSTER_ID"] for e in envs.values()}) == 1, "one cluster"
    ids = {e["KAFKA_NODE_ID"]: n for n, e in envs.items()}
    for name, env in envs.items():
        listeners, advertised, _, controller = kafka_listeners(services, name)
        voters = dict(v.split("@") for v in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","))
        assert voters == {i: f"{n}:{listeners[controller]}" for i, n in ids.items()}, name  # every broker votes
        assert "controller" in env["KAFKA_PROCESS_ROLES"] and "broker" in env["KAFKA_PROCESS_ROLES"]
        assert {h for (h, _), ln in advertised.items() if ln in ("INTERNAL", "ADMIN")} == {name}, name
        for key, value in (("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "3"), ("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "3"),
                           ("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "2"), ("KAFKA_MIN_INSYNC_REPLICAS", "2"),
                           ("KAFKA_DEFAULT_REPLICATION_FACTOR", "3")):
            assert env[key] == value, (name, key)
        assert f"--bootstrap-server {name}:{listeners['ADMIN']}" in healthcheck_text(services[name]), (
            f"{name}'s healthcheck must ask {name} itself")
        # the same broker otherwise: SASL, ACLs, JAAS, heap (what differs: its id and its addresses)
        same = {k: v for k, v in env.items() if k not in ("KAFKA_NODE_ID", "KAFKA_ADVERTISED_LISTENERS")}
        assert same == {k: v for k, v in envs["kafka"].items() if k not in ("KAFKA_NODE_ID", "KAFKA_ADVERTISED_LISTENERS")}
    volumes = [src for n in names for src, dst, _ in mounts(services[n]) if dst == "/var/lib/kafka/data"]
    assert len(set(volumes)) == 3, f"each broker its own log directory: {volumes}"
    init = services["kafka-init"]
    assert {b: {"condition": "service_healthy"} for b in names}.items() <= {
        k: {"condition": v["condition"]} for k, v in init["depends_on"].items()}.items()
    assert {host_port(hp)[0] for hp in env_of(init)["BOOTSTRAP"].split(",")} == set(names)
    for name in APP_SERVICES:
        s = Settings.from_env(env_of(services[name]))
        assert (s.topic_replication, s.topic_min_insync_replicas) == (3, 2), name
        assert s.topic_replication <= len(names)


def test_redis_cluster_has_three_primaries_with_a_replica_each_and_an_init_that_forms_it():
    services = load_compose(deployment_env(DEPLOYMENTS["redis-cluster"]), DEPLOYMENTS["redis-cluster"])["services"]
    nodes = redis_nodes(services)
    assert nodes == ["redis", *(f"redis-{i}" for i in range(2, 7))]
    base_command = services["redis"]["command"]
    for node in nodes:
        svc = services[node]
        assert svc["command"] == base_command, f"{node}: every node runs the same server"
        assert cli_flag_pair(svc["command"], "--cluster-enabled") == "yes"
        assert cli_flag_pair(svc["command"], "--cluster-preferred-endpoint-type") == "hostname"
        assert cli_flag_pair(svc["command"], "--masteruser") == "replica"
        assert cli_flag_pair(svc["command"], "--masterauth") == CLUSTER_ENV["REDIS_REPLICA_PASSWORD"]
        assert cli_flag_pair(svc["command"], "--appendonly") == "yes"
        assert env_of(svc)["REDIS_NODE"] == node  # announced as its service name
        assert svc["entrypoint"][:2] == ["/bin/sh", "-c"] and '--cluster-announce-hostname "$REDIS_NODE"' in svc["entrypoint"][2]
        assert "docker-entrypoint.sh" in svc["entrypoint"][2], "the image's entrypoint (drops root) still runs"
    volumes = [src for n in nodes for src, dst, _ in mounts(services[n]) if dst == "/data"]
    assert len(set(volumes)) == 6 and "redis-data" not in volumes, volumes
    init = services["redis-cluster-init"]
    env = env_of(init)
    assert init["image"] == services["redis"]["image"] and init.get("restart") == "no"
    assert {n: s["condition"] for n, s in init["depends_on"].items()} == {n: "service_healthy" for n in nodes}
    assert [host_port(x) for x in env["REDIS_NODES"].split()] == [(n, 6379) for n in nodes]
    replicas = int(env["REDIS_CLUSTER_REPLICAS"])
    assert replicas == 1 and len(nodes) // (1 + replicas) == 3, "3 primaries, 1 replica each"
    script = init["command"][0]
    assert "--cluster create" in script and '--cluster-replicas "$REDIS_CLUSTER_REPLICAS"' in script
    assert "--cluster-yes" in script and "already formed" in script
    for name in APP_SERVICES:
        s = Settings.from_env(env_of(services[name]))
        assert s.redis_topology == "cluster" and urlparse(s.redis_url).hostname == "redis", name
        assert services[name]["depends_on"]["redis-cluster-init"]["condition"] == "service_completed_successfully"


def cli_flag_pair(command: list[str], flag: str):
    """The value after ``flag`` in a ``--flag value`` command line (the last one wins, as in redis-server)."""
    values = [command[i + 1] for i, a in enumerate(command[:-1]) if a == flag]
    return values[-1] if values else None


def test_redis_cluster_forms_from_the_compose_lines_over_six_local_valkeys(tmp_path):
    """The nodes' command line (its ACL users, replication login, cluster options) and the init's script,
    as written in docker-compose.redis-cluster.yml, over six real Valkeys on loopback ports: the cluster
    forms (3 primaries, a replica each, replication logged in as ``replica``), the workers' and the
    API's users work through redis-py's cluster client (the API only reads), and a second run of the
    init leaves the formed cluster as it is."""
    import redis as redis_lib
    from redis.exceptions import NoPermissionError

    assert shutil.which("redis-cli"), "redis-cli missing: `make tools` installs it (Debian package redis-tools)"
    services = load_compose(deployment_env(DEPLOYMENTS["redis-cluster"]), DEPLOYMENTS["redis-cluster"])["services"]
    nodes = redis_nodes(services)
    from streamscore import stack as stk

    base = stk.free_port(2 * len(nodes))  # the nodes, then their cluster bus ports
    ports = [base + i for i in range(len(nodes))]
    names = [f"compose-{n}" for n in nodes]
    run_dir = tmp_path / "run"
    try:
        for name, node, port in zip(names, nodes, ports):
            command = services[node]["command"]
            assert command[0] == "redis-server"
            argv = [stk.valkey_bin(), *command[1:], "--cluster-announce-hostname", "localhost",  # as the entrypoint appends
                    "--port", str(port), "--bind", "127.0.0.1", "--cluster-port", str(port + len(nodes)),
                    "--dir", str(tmp_path / node), "--appendonly", "no", "--daemonize", "no"]
            (tmp_path / node).mkdir()
            stk.start_process(name, argv, {}, run_dir)
        worker_pw, api_pw = PROD_ENV["REDIS_WORKER_PASSWORD"], PROD_ENV["REDIS_API_PASSWORD"]
        for port in ports:
            stk.wait_redis(f"redis://worker:{worker_pw}@127.0.0.1:{port}/0", timeout=15)
        init = services["redis-cluster-init"]
        env = {**env_of(init), "REDIS_NODES": " ".join(f"127.0.0.1:{p}" for p in ports), "PATH": os.environ["PATH"]}

        def run_init():
            return subprocess.run(list(init["entrypoint"]) + list(init["command"]), env=env, capture_output=True,
                                  text=True, timeout=120)

        t0 = time.monotonic()
        proc = run_init()
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "cluster of 6 nodes formed" in proc.stdout
        formed_s = time.monotonic() - t0
        admin = redis_lib.Redis(port=ports[0], username="admin", password=CLUSTER_ENV["REDIS_ADMIN_PASSWORD"])
        lines = [ln.split() for ln in admin.execute_command("CLUSTER", "NODES").decode().splitlines()]
        primaries = {ln[0] for ln in lines if "master" in ln[2]}
        replicas_of = [ln[3] for ln in lines if "slave" in ln[2]]
        assert len(primaries) == 3 and sorted(replicas_of) == sorted(primaries), lines  # one replica per primary
        end = time.monotonic() + 30
        while True:  # every replica logged in to its primary (as `replica`) and synchronised
            links = [redis_lib.Redis(port=p, username="admin", password=CLUSTER_ENV["REDIS_ADMIN_PASSWORD"])
                     .info("replication") for p in ports]
            if all(i["role"] == "master" or i.get("master_link_status") == "up" for i in links):
                break
            assert time.monotonic() < end, links
            time.sleep(0.5)
        worker = redis_lib.RedisCluster(host="127.0.0.1", port=ports[0], username="worker", password=worker_pw)
        api = redis_lib.RedisCluster(host="127.0.0.1", port=ports[0], username="api", password=api_pw)
        keys = [f"ss:{{u{i}}}:x" for i in range(30)]  # hash tags over every primary's slots
        for k in keys:
            worker.set(k, k)
        assert len({worker.keyslot(k) * 3 // 16384 for k in keys}) == 3
        assert [api.get(k) for k in keys] == [k.encode() for k in keys]
        with pytest.raises(NoPermissionError):
            api.set(keys[0], "x")
        with pytest.raises(NoPermissionError):
            worker.set("other", "x")  # outside ss:*
        worker.close()
        api.close()
        proc = run_init()  # idempotent
        assert proc.returncode == 0 and "already formed" in proc.stdout, proc.stdout + proc.stderr
        print(json.dumps({"cluster_formed_s": round(formed_s, 2), "primaries": len(primaries),
                          "replicas": len(replicas_of)}))
    finally:
        stk.stop_processes(names, run_dir)


def test_a_half_formed_cluster_is_refused_by_the_init(tmp_path):
    """Two nodes that met but hold no slots, four blank: the init stops (exit 1) rather than guess."""
    import redis as redis_lib

    assert shutil.which("redis-cli"), "redis-cli missing: `make tools` installs it (Debian package redis-tools)"
    services = load_compose(deployment_env(DEPLOYMENTS["redis-cluster"]), DEPLOYMENTS["redis-cluster"])["services"]
    from streamscore import stack as stk

    base = stk.free_port(12)
    ports = [base + i for i in range(6)]
    names = [f"half-{i}" for i in range(6)]
    run_dir = tmp_path / "run"
    try:
        for i, (name, port) in enumerate(zip(names, ports)):
            (tmp_path / f"n{i}").mkdir()
            stk.start_process(name, [stk.valkey_bin(), *services["redis"]["command"][1:], "--port", str(port),
                                     "--bind", "127.0.0.1", "--cluster-port", str(port + 6), "--dir", str(tmp_path / f"n{i}"),
                                     "--appendonly", "no"], {}, run_dir)
        for port in ports:
            stk.wait_redis(f"redis://worker:{PROD_ENV['REDIS_WORKER_PASSWORD']}@127.0.0.1:{port}/0", timeout=15)
        admin = redis_lib.Redis(port=ports[0], username="admin", password=CLUSTER_ENV["REDIS_ADMIN_PASSWORD"])
        admin.execute_command("CLUSTER", "MEET", "127.0.0.1", ports[1], ports[1] + 6)
        end = time.monotonic() + 15
        while int(admin.execute_command("CLUSTER", "INFO").decode().split("cluster_known_nodes:")[1].split()[0]) < 2:
            assert time.monotonic() < end
            time.sleep(0.2)
        init = services["redis-cluster-init"]
        env = {**env_of(init), "REDIS_NODES": " ".join(f"127.0.0.1:{p}" for p in ports), "PATH": os.environ["PATH"]}
        proc = subprocess.run(list(init["entrypoint"]) + list(init["command"]), env=env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 1 and "half-formed" in proc.stderr, proc.stdout + proc.stderr
    finally:
        stk.stop_processes(names, run_dir)


def test_triton_replicas_reach_the_workers_client(monkeypatch):
    from scorers.triton import channel_target
    from streamscore.settings import grpc_replicas

    services = load_compose(overrides=(OVERRIDES["triton-replicas"],))["services"]
    three = load_compose({**PROD_ENV, "TRITON_REPLICAS": "3"}, (OVERRIDES["triton-replicas"],))["services"]
    grpc_port = int(cli_flag(services["triton"]["command"], "--grpc-port"))
    for triton in TRITON_PROFILES:
        svc = services[triton]
        assert str(svc["deploy"]["replicas"]) == "2" and str(three[triton]["deploy"]["replicas"]) == "3"
        assert not svc.get("ports"), f"{triton}: N replicas cannot publish one host port"
        assert "container_name" not in svc and "hostname" not in svc
    # the GPU service is reached by its name, the CPU one by its alias: both answer `triton`, one A record each
    assert services["triton-cpu"]["networks"]["default"]["aliases"] == ["triton"]
    assert services["triton"]["deploy"]["resources"]["reservations"]["devices"], "still a GPU each"
    for name in APP_SERVICES:
        s = Settings.from_env(env_of(services[name]))
        assert s.triton_grpc_url == f"dns:///triton:{grpc_port}", name
        assert grpc_replicas(s.triton_grpc_url) == [f"triton:{grpc_port}"]
        assert channel_target(s.triton_grpc_url) == s.triton_grpc_url  # gRPC's resolver: every replica's address
        assert host_port(s.triton_http_url) == ("triton", int(cli_flag(services["triton"]["command"], "--http-port")))
    # without the override: one Triton, one host:port
    assert env_of(load_compose()["services"]["worker-fraud"])["TRITON_GRPC_URL"] == f"triton:{grpc_port}"
