"""Logging of the worker, the HTTP service and the alert receiver, configured in one place (:func:`configure`).

``LOG_FORMAT=text`` (default): ``<time> <level> <logger> <message> [key=value ...]``.
``LOG_FORMAT=json``: one JSON object per line: ``time`` (ISO 8601, UTC, ms), ``level``, ``logger``,
``message``, then where they apply ``order_id``, ``request_id`` (the HTTP service: the request's
``X-Request-ID``), ``topic``, ``partition``, ``offset`` and any other field given with
``extra={...}`` or held by :func:`context`; ``exc`` holds a traceback.

Fields come from two places: ``log.info(..., extra={"order_id": ...})`` for one line, and
``with context(request_id=...)`` (a context variable: per asyncio task) for every line logged
inside. Personal identifiers never appear in clear: a field named in ``PERSONAL`` (user, card,
device, IP, email) is replaced by its pseudonym (:class:`features.privacy.Pseudonymiser`, keyed
by ``PII_HMAC_SECRET``) before either format writes it; messages themselves must carry only
pseudonyms (the code logs none in clear).

``LOG_LEVEL`` sets streamscore's loggers (and the root); the libraries' (Faust, aiokafka, uvicorn,
...) never go below ``info``, so ``LOG_LEVEL=debug`` shows streamscore's per-decision lines
(``verdict`` with order id, topic, partition and offset; ``request`` per HTTP request) without
the libraries' debug flood.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import sys
from typing import Iterator

from features.privacy import Pseudonymiser

# field name -> pseudonym kind (the kinds features/privacy.py keys use)
PERSONAL = {"user_id": "user", "email": "email", "ip": "ip", "device_id": "device",
            "payment_fingerprint": "card", "card": "card"}
_CONTEXT: contextvars.ContextVar[dict] = contextvars.ContextVar("streamscore_log_context", default={})
# LogRecord's own attributes, and uvicorn's colour copy of its message: not fields
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName", "color_message"}
LIBRARIES = ("faust", "aiokafka", "mode", "uvicorn", "kafka", "asyncio", "httpx", "httpcore", "urllib3", "river", "grpc",
             "tritonclient")


@contextlib.contextmanager
def context(**fields) -> Iterator[None]:
    """Add ``fields`` to every line logged inside (this task and what it awaits)."""
    token = _CONTEXT.set({**_CONTEXT.get(), **fields})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def fields_of(record: logging.LogRecord) -> dict:
    """The structured fields of ``record``: the context's, then its ``extra``."""
    out = dict(_CONTEXT.get())
    out.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
    return out


class _Pseudonymise(logging.Filter):
    """Replace every personal field of a record (and of the context) by its pseudonym, in place."""

    def __init__(self, pseudo: Pseudonymiser):
        super().__init__()
        self.pseudo = pseudo

    def filter(self, record: logging.LogRecord) -> bool:
        for name, kind in PERSONAL.items():
            value = getattr(record, name, None)
            if value is None:
                value = _CONTEXT.get().get(name)
            if value is not None and not getattr(record, "_pseudonymised", False):
                setattr(record, name, self.pseudo(kind, str(value)))
        record._pseudonymised = True
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module docstring).

    >>> r = logging.LogRecord("streams.fraud", logging.INFO, "", 0, "verdict %s", ("review",), None)
    >>> r.order_id, r.partition, r.offset, r.created = "o-1", 2, 17, 0.0
    >>> JsonFormatter().format(r)
    '{"time": "1970-01-01T00:00:00.000Z", "level": "info", "logger": "streams.fraud", "message": "verdict review", "order_id": "o-1", "partition": 2, "offset": 17}'
    """

    def format(self, record: logging.LogRecord) -> str:
        when = dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
        line = {"time": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
                "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        line.update({k: v for k, v in fields_of(record).items() if k not in line})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``<time> <level> <logger> <message>`` and the structured fields as ``key=value``."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = fields_of(record)
        if extra:
            first, nl, rest = text.partition("\n")  # after the message, before a traceback
            text = first + " " + " ".join(f"{k}={v}" for k, v in extra.items()) + nl + rest
        return text


def configure(settings) -> None:
    """Logging of this process from ``LOG_FORMAT``, ``LOG_LEVEL`` and ``PII_HMAC_SECRET``: one
    handler on the root logger writing to stderr (replacing any); libraries at ``info`` or above."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    handler.addFilter(_Pseudonymise(Pseudonymiser(settings.pii_secret.get_secret_value())))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    logging.captureWarnings(True)  # warnings too, as records of the `py.warnings` logger
    level = getattr(logging, settings.log_level.upper())
    root.setLevel(level)
    for name in LIBRARIES:
        lib = logging.getLogger(name)
        lib.setLevel(max(level, logging.INFO))
        lib.handlers[:] = []  # uvicorn installs its own: everything goes through the root's
        lib.propagate = True
