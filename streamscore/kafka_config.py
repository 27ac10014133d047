"""How every Kafka client of streamscore connects: one place for bootstrap servers, TLS and SASL.

Every confluent-kafka client (the workers' consumers, the read helpers, ``stack`` admin clients,
the replay publisher and its checkpoints, the dead-letter replay, the benchmarks) takes its
librdkafka configuration from :func:`client_config`; the Faust app's producer takes the same
settings as ``broker_credentials`` from :func:`faust_credentials`. Functions that accept a plain
bootstrap string keep doing so (a PLAINTEXT broker, the local stack) and also accept ``Settings``
or a ready librdkafka mapping: see :func:`resolve`.

>>> from streamscore.settings import Settings
>>> client_config(Settings(kafka_bootstrap="k:9092"), **{"group.id": "g"})
{'bootstrap.servers': 'k:9092', 'security.protocol': 'PLAINTEXT', 'group.id': 'g'}
>>> c = client_config(Settings(kafka_bootstrap="k:9092", kafka_security_protocol="SASL_PLAINTEXT",
...                            kafka_sasl_username="streamscore-fraud", kafka_sasl_password="pw"))
>>> c["security.protocol"], c["sasl.mechanism"], c["sasl.username"], c["sasl.password"]
('SASL_PLAINTEXT', 'SCRAM-SHA-512', 'streamscore-fraud', 'pw')
>>> resolve("a:1,b:2")
{'bootstrap.servers': 'a:1,b:2'}
>>> bootstrap_of({"bootstrap.servers": "a:1", "security.protocol": "SSL"})
'a:1'
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any, Mapping, Optional, Union

if TYPE_CHECKING:
    from streamscore.settings import Settings

# What a function that talks to Kafka accepts: a bootstrap string (PLAINTEXT), Settings, or a
# librdkafka configuration (which must hold bootstrap.servers).
Kafka = Union[str, "Settings", Mapping[str, Any]]


def client_config(settings: "Settings", **extra) -> dict:
    """librdkafka configuration for ``settings`` (bootstrap servers, security), then ``extra``.

    Keys of ``extra`` use librdkafka's dotted names; pass them as ``**{"group.id": g}``.
    """
    config: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap,
                              "security.protocol": settings.kafka_security_protocol}
    protocol = settings.kafka_security_protocol
    if protocol.startswith("SASL_"):
        config.update({"sasl.mechanism": settings.kafka_sasl_mechanism,
                       "sasl.username": settings.kafka_sasl_username,
                       "sasl.password": settings.kafka_sasl_password.get_secret_value()})
    if protocol.endswith("SSL"):
        config["ssl.endpoint.identification.algorithm"] = "https"  # verify the broker's host name
        if settings.kafka_ssl_ca_file:
            config["ssl.ca.location"] = settings.kafka_ssl_ca_file
    config.update(extra)
    return config


def resolve(kafka: Kafka, **extra) -> dict:
    """The librdkafka configuration of ``kafka`` (bootstrap string, Settings or mapping), then ``extra``."""
    if isinstance(kafka, str):
        config: dict[str, Any] = {"bootstrap.servers": kafka}
    elif isinstance(kafka, Mapping):
        config = dict(kafka)
        if "bootstrap.servers" not in config:
            raise ValueError("a Kafka client configuration needs bootstrap.servers")
    else:
        config = client_config(kafka)
    config.update(extra)
    return config


def bootstrap_of(kafka: Kafka) -> str:
    """The bootstrap servers of ``kafka`` (for messages and TCP probes)."""
    return resolve(kafka)["bootstrap.servers"]


def faust_credentials(settings: "Settings") -> Optional[Any]:
    """``broker_credentials`` for the Faust app (its aiokafka producer) under ``settings``; None: PLAINTEXT.

    >>> from streamscore.settings import Settings
    >>> faust_credentials(Settings()) is None
    True
    >>> c = faust_credentials(Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u",
    ...                                kafka_sasl_password="pw"))
    >>> c.protocol.value, c.mechanism.value, c.username
    ('SASL_PLAINTEXT', 'SCRAM-SHA-512', 'u')
    """
    from faust.auth import SASLCredentials, SSLCredentials

    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol.endswith("SSL"):
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.kafka_ssl_ca_file or None)
    if protocol == "SSL":
        return SSLCredentials(context)
    return SASLCredentials(username=settings.kafka_sasl_username,
                           password=settings.kafka_sasl_password.get_secret_value(),
                           mechanism=settings.kafka_sasl_mechanism, ssl_context=context)
