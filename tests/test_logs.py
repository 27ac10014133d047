"""Structured logs (``LOG_FORMAT=json``, streamscore/logs.py) over the real stack.

A fraud worker and the HTTP service run with ``LOG_FORMAT=json`` and ``LOG_LEVEL=debug``; an order
goes through the ``orders`` topic and another through ``POST /v1/fraud/score`` with an
``X-Request-ID``. Every line either process wrote is one JSON object with time, level, logger and
message; the worker's verdict line carries the order id, topic, partition and offset of the record it
decided (checked against the verdict topic and the broker's offsets), the service's lines the request
id (echoed in the response header too); no raw user, device or IP id of the test orders appears
anywhere. Then the unit side: pseudonymised fields, the text format.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import time

import httpx
import pytest

from conftest import consume_all, free_port, isolated, wait_healthy
from features.privacy import Pseudonymiser
from streamscore import logs
from streamscore import stack as stk
from streamscore.events import FraudVerdict, Order
from streamscore.settings import Settings

RAW = {"user_id": "logs-user-raw-4242", "device_id": "logs-device-raw-77", "ip": "10.9.8.7"}


def _json_lines(name: str, run_dir) -> list[dict]:
    """Every line the process ``name`` wrote (its log file without the launcher's ``=== ... start:`` header
    lines), each parsed as JSON: a line that is not JSON fails the test."""
    text = stk.log_file(name, run_dir).read_text()
    out = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("=== "):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"{name} wrote a line that is not JSON: {line[:500]!r}")
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message"} <= set(record), line
        out.append(record)
    return out


@pytest.mark.stack
def test_worker_and_http_service_write_one_json_object_per_line_with_ids_and_no_personal_ids(stack_settings):
    s = isolated(stack_settings, "logs", 14, worker_metrics_port=free_port(), http_port=free_port(),
                 fraud_challenger=False, log_format="json", log_level="debug")
    now = time.time()
    stream_order = Order(order_id="logs-stream-1", amount=42.5, ts=now, **RAW)
    http_order = Order(order_id="logs-http-1", amount=17.0, ts=now, **RAW)
    names = ["logs-worker", "logs-api"]
    stk.start_process(names[0], [sys.executable, "-m", "streamscore", "worker", "--role", "fraud"], s.to_env(), s.run_dir)
    stk.start_process(names[1], [sys.executable, "-m", "streamscore", "serve"], s.to_env(), s.run_dir)
    try:
        from confluent_kafka import Producer

        p = Producer({"bootstrap.servers": s.kafka_bootstrap})
        p.produce(s.topic_orders, key=stream_order.order_id.encode(), value=stream_order.to_bytes())
        assert p.flush(30) == 0
        found = consume_all(s, s.topic_fraud_verdicts, lambda ms: any(m.key() == b"logs-stream-1" for m in ms),
                            timeout_s=90)
        assert any(m.key() == b"logs-stream-1" for m in found), stk.log_tail(names[0], s.run_dir)
        base = f"http://127.0.0.1:{s.http_port}"
        wait_healthy(base, names[1], s.run_dir)
        auth = {"Authorization": f"Bearer {s.api_token.get_secret_value()}", "Content-Type": "application/json"}
        r = httpx.post(f"{base}/v1/fraud/score", content=http_order.to_bytes(), timeout=10,
                       headers={**auth, "X-Request-ID": "req-logs-0001"})
        assert r.status_code == 200, r.text
        assert r.headers["x-request-id"] == "req-logs-0001"
        FraudVerdict.model_validate(r.json())
        generated = httpx.get(f"{base}/v1/recommendations/{RAW['user_id']}", headers=auth, timeout=10)
        assert generated.status_code == 200 and len(generated.headers["x-request-id"]) == 32  # none sent: a new one
        time.sleep(1.0)  # the last lines reach the log files
    finally:
        stk.stop_processes(names, s.run_dir)
    worker, api = _json_lines(names[0], s.run_dir), _json_lines(names[1], s.run_dir)
    assert worker and api

    decided = [r for r in worker if r.get("order_id") == "logs-stream-1" and r["message"].startswith("verdict")]
    assert len(decided) == 1, [r for r in worker if "order_id" in r]
    line = decided[0]
    assert line["topic"] == s.topic_orders and line["logger"] == "streams.fraud" and line["level"] == "debug"
    record = consume_all(s, s.topic_orders, lambda ms: any(m.key() == b"logs-stream-1" for m in ms), timeout_s=30)
    source = next(m for m in record if m.key() == b"logs-stream-1")
    assert (line["partition"], line["offset"]) == (source.partition(), source.offset())

    scored = [r for r in api if r.get("order_id") == "logs-http-1"]
    assert len(scored) == 1 and scored[0]["request_id"] == "req-logs-0001", scored
    requests = [r for r in api if r["message"] == "request" and r.get("request_id") == "req-logs-0001"]
    assert requests and requests[0]["route"] == "/v1/fraud/score" and requests[0]["status"] == 200
    recs = [r for r in api if r["message"] == "request" and r.get("route") == "/v1/recommendations/{user_id}"]
    assert recs and recs[0]["request_id"] == generated.headers["x-request-id"]

    everything = stk.log_file(names[0], s.run_dir).read_text() + stk.log_file(names[1], s.run_dir).read_text()
    for raw in RAW.values():
        assert raw not in everything, f"{raw} in clear in a log"


def _capture(settings: Settings, emit) -> list[str]:
    stream = io.StringIO()
    logs.configure(settings)
    handler = logging.getLogger().handlers[0]
    handler.setStream(stream)
    try:
        emit(logging.getLogger("streamscore.test"))
    finally:
        logging.getLogger().handlers[:] = []
    return stream.getvalue().splitlines()


def test_personal_fields_are_logged_as_pseudonyms_in_both_formats():
    s = Settings(pii_secret="p" * 40)
    pseudo = Pseudonymiser("p" * 40)
    for fmt in ("json", "text"):
        def emit(log):
            log.warning("looked up", extra={"user_id": "u-raw-1", "ip": "10.1.2.3", "order_id": "o-1"})
            with logs.context(request_id="r-1", device_id="d-raw-9"):
                log.warning("in a request")
        lines = _capture(s.replace(log_format=fmt), emit)
        text = "\n".join(lines)
        assert "u-raw-1" not in text and "10.1.2.3" not in text and "d-raw-9" not in text, text
        assert pseudo("user", "u-raw-1") in text and pseudo("ip", "10.1.2.3") in text and pseudo("device", "d-raw-9") in text
        if fmt == "json":
            first, second = (json.loads(x) for x in lines)
            assert first["order_id"] == "o-1" and first["level"] == "warning" and first["logger"] == "streamscore.test"
            assert second["request_id"] == "r-1"
        else:
            assert "order_id=o-1" in lines[0] and "request_id=r-1" in lines[1]


def test_an_exception_is_one_json_line_with_its_traceback():
    def emit(log):
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("failed")
    lines = _capture(Settings(log_format="json"), emit)
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["message"] == "failed" and "RuntimeError: boom" in record["exc"]


def test_log_format_is_validated():
    with pytest.raises(ValueError, match="LOG_FORMAT='xml': expected one of text, json"):
        Settings.from_env({"LOG_FORMAT": "xml"})
