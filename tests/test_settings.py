"""Every setting is typed and validated: each rule refuses a bad value with a message naming the env var.

The cases are derived from the one definition (``Settings.model_fields``: type, bounds, enums, checks),
so a new setting gets its cases without editing this file; the rules across settings are listed
by hand. Booleans accept on/off, true/false and 1/0; a changed copy (``Settings.replace``) is
checked like the original; a bad value stops a command (exit 2) with one line naming the variable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import SecretStr

from streamscore import settings as settings_mod
from streamscore.settings import ENV_NAMES, SECRETS, Settings, SettingsError

ROOT = Path(__file__).resolve().parent.parent
# free text: any non-empty string is a valid user name, CA file path (checked where used), store path
FREE_TEXT = {"kafka_sasl_username", "kafka_ssl_ca_file", "alert_store"}
CHECK_BAD = {settings_mod._host_port: "no-port-here", settings_mod._host_ports: "k1:9092,k2",
             settings_mod._redis_url: "http://127.0.0.1:6379/0", settings_mod._webhook_url: "ftp://hooks.example",
             settings_mod._host: "not a host!", settings_mod._grpc_target: "t1:8001,t2"}


def _bad_values(name: str) -> list[str]:
    """Values of setting ``name`` (as env text) that its type or constraints refuse."""
    field = Settings.model_fields[name]
    ann, bad = field.annotation, []
    if typing.get_origin(ann) is typing.Literal:
        bad.append("no-such-choice")
    elif ann is bool:
        bad += ["maybe", "yes", "2"]
    elif ann in (int, float):
        bad.append("many")
        if ann is int:
            bad.append("1.5")
    for m in field.metadata:
        if getattr(m, "func", None) in CHECK_BAD:
            bad.append(CHECK_BAD[m.func])
        if getattr(m, "pattern", None):
            bad.append("not valid!")
        for key, step in (("ge", -1), ("gt", 0), ("le", 1), ("lt", 0)):
            bound = getattr(m, key, None)
            if bound is not None:
                bad.append(str(type(bound)(bound + step)) if ann is int else str(float(bound + step)))
    return bad


CASES = [(name, bad) for name in Settings.model_fields for bad in _bad_values(name)]


def test_every_setting_but_free_text_and_secrets_has_a_rule():
    ruled = {name for name, _ in CASES}
    assert set(Settings.model_fields) - ruled - FREE_TEXT - set(SECRETS) - {"triton_repo", "run_dir", "data_dir"} == set()


@pytest.mark.parametrize("name,bad", CASES, ids=[f"{ENV_NAMES[n]}={b}" for n, b in CASES])
def test_each_rule_refuses_a_bad_value_naming_the_variable(name, bad):
    env = ENV_NAMES[name]
    with pytest.raises(SettingsError) as err:
        Settings.from_env({env: bad})
    assert str(err.value).startswith(f"{env}={bad!r}: "), str(err.value)


@pytest.mark.parametrize("name", ["triton_repo", "run_dir", "data_dir", "app_id", "topic_orders"])
def test_an_empty_name_or_path_is_refused(name):
    with pytest.raises(SettingsError, match=ENV_NAMES[name]):
        Settings().replace(**{name: ""})


# Rules across settings: (values, the variables the message must name)
CROSS = [
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, ["KAFKA_SASL_USERNAME"]),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "u"}, ["KAFKA_SASL_PASSWORD"]),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p" * 40,
      "KAFKA_SASL_MECHANISM": "PLAIN"}, ["KAFKA_SASL_MECHANISM"]),
    ({"KAFKA_SASL_USERNAME": "u"}, ["KAFKA_SASL_USERNAME", "KAFKA_SECURITY_PROTOCOL"]),
    ({"KAFKA_SSL_CA_FILE": "/etc/hostname"}, ["KAFKA_SSL_CA_FILE"]),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": "/no/such/ca.pem"}, ["KAFKA_SSL_CA_FILE"]),
    ({"API_RATE_LIMIT_PER_S": "10", "API_RATE_BURST": "0"}, ["API_RATE_LIMIT_PER_S", "API_RATE_BURST"]),
    ({"FRAUD_REVIEW_RATE": "0.6", "FRAUD_DECLINE_RATE": "0.5"}, ["FRAUD_REVIEW_RATE", "FRAUD_DECLINE_RATE"]),
    ({"FRAUD_REVIEW_RATE": "1"}, ["FRAUD_REVIEW_RATE"]),
    ({"FRAUD_THRESHOLD_WINDOW": "100", "FRAUD_THRESHOLD_MIN_SCORES": "101"},
     ["FRAUD_THRESHOLD_WINDOW", "FRAUD_THRESHOLD_MIN_SCORES"]),
    ({"FRAUD_REVIEW_THRESHOLD": "0.9", "FRAUD_DECLINE_THRESHOLD": "0.5"},
     ["FRAUD_REVIEW_THRESHOLD", "FRAUD_DECLINE_THRESHOLD"]),
    ({"KAFKA_HEARTBEAT_S": "10", "KAFKA_SESSION_TIMEOUT_S": "10"}, ["KAFKA_HEARTBEAT_S", "KAFKA_SESSION_TIMEOUT_S"]),
    ({"FRAUD_HEARTBEAT_S": "3", "FRAUD_SESSION_TIMEOUT_S": "2"}, ["FRAUD_HEARTBEAT_S", "FRAUD_SESSION_TIMEOUT_S"]),
    ({"HTTP_PORT": "8080", "HTTP_INTERNAL_PORT": "8080"}, ["HTTP_INTERNAL_PORT", "HTTP_PORT"]),
    ({"TOPIC_REPLICATION": "1", "TOPIC_MIN_INSYNC_REPLICAS": "2"}, ["TOPIC_REPLICATION", "TOPIC_MIN_INSYNC_REPLICAS"]),
]


@pytest.mark.parametrize("values,named", CROSS, ids=[",".join(v) for v, _ in CROSS])
def test_each_rule_across_settings_names_its_variables(values, named):
    with pytest.raises(SettingsError) as err:
        Settings.from_env(values)
    for env in named:
        assert env in str(err.value), str(err.value)
    assert "p" * 40 not in str(err.value)  # a secret never in a message


@pytest.mark.parametrize("text,value", [("on", True), ("off", False), ("true", True), ("false", False),
                                        ("1", True), ("0", False), ("ON", True), ("False", False)])
def test_booleans_are_real_booleans_from_on_off_true_false_1_0(text, value):
    s = Settings.from_env({"DEV_MODE": text, "FRAUD_CHALLENGER": text, "REC_ONLINE_BLEND": text})
    assert s.dev_mode is s.fraud_challenger is s.rec_online_blend is value
    assert s.to_env()["DEV_MODE"] == ("on" if value else "off")


def test_to_env_round_trips_and_an_empty_value_means_unset():
    s = Settings.from_env({"WORKER_BATCH_MAX": "7", "API_TOKEN": "t" * 40, "DEV_MODE": "on", "LOG_LEVEL": "DEBUG"})
    assert (s.batch_max, s.log_level) == (7, "debug")
    assert Settings.from_env(s.to_env()) == s
    assert Settings.from_env({"WORKER_BATCH_MAX": ""}).batch_max == Settings().batch_max


def test_secrets_are_secret_str_and_never_shown():
    s = Settings.from_env({"API_TOKEN": "t" * 40, "PII_HMAC_SECRET": "p" * 40})
    for name in SECRETS:
        assert isinstance(getattr(s, name), SecretStr)
    assert s.api_token.get_secret_value() == "t" * 40 and s.to_env()["API_TOKEN"] == "t" * 40
    assert "t" * 40 not in repr(s) + str(s) and "p" * 40 not in repr(s) + str(s)
    with_password = Settings.from_env({"REDIS_URL": "redis://worker:hunter2hunter2@redis:6379/0"})
    assert "hunter2" not in repr(with_password)


def test_replace_is_validated_and_keeps_the_rest():
    s = Settings.from_env({"WORKER_BATCH_MAX": "7", "API_TOKEN": "t" * 40})
    t = s.replace(topic_partitions=8, dev_mode="on")
    assert (t.topic_partitions, t.dev_mode, t.batch_max, t.api_token.get_secret_value()) == (8, True, 7, "t" * 40)
    assert s.topic_partitions == 4  # frozen: the original is unchanged
    with pytest.raises(SettingsError, match="TOPIC_PARTITIONS=0"):
        s.replace(topic_partitions=0)
    with pytest.raises(SettingsError, match="HTTP_INTERNAL_PORT"):
        s.replace(http_internal_port=s.http_port)
    with pytest.raises(TypeError, match="no_such_setting"):
        s.replace(no_such_setting=1)
    with pytest.raises(Exception):
        s.batch_max = 3  # frozen


@pytest.mark.parametrize("env,bad", [("KAFKA_SECURITY_PROTOCOL", "TLS"), ("DEV_MODE", "perhaps"),
                                     ("HTTP_PORT", "70000"), ("REDIS_URL", "localhost:6379")])
def test_a_bad_value_stops_a_command_with_one_line_naming_it(env, bad):
    environ = {**os.environ, "PYTHONPATH": str(ROOT), env: bad}
    out = subprocess.run([sys.executable, "-m", "streamscore", "stack", "status"], env=environ,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert f"{env}={bad!r}" in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
