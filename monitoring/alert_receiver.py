"""The alert webhook receiver: where Alertmanager delivers streamscore's alerts.

Alertmanager POSTs its webhook payload (version 4: ``{"status", "alerts": [{"status", "labels",
"annotations", "startsAt", "endsAt", "fingerprint", ...}], ...}``) to ``/alerts``. The receiver:

* logs one line per alert (``FIRING critical StreamscoreX: <summary> (runbook: <url>)``), so
  whoever follows the log (``docker compose logs -f alert-receiver``, the local stack's
  ``logs/alert-receiver.log``) sees it;
* appends each alert, with the time it arrived, as a JSON line to ``ALERT_STORE`` (the local stack:
  ``<run dir>/alerts/received.jsonl``), read back by ``GET /alerts?n=N`` (newest last);
* forwards the payload unchanged to ``ALERT_FORWARD_URL`` when it is set (a Slack-compatible or
  any other webhook: the delivery a team configures by environment), counting failures.

``GET /healthz`` answers 200. It holds no secrets and no personal data: alerts carry only the
labels of streamscore's metrics (topics, decisions, roles), never ids.

Run it with ``streamscore alerts receive`` (``ALERT_RECEIVER_URL`` is where it listens).

>>> line = format_alert({"status": "firing", "labels": {"alertname": "A", "severity": "critical"},
...                      "annotations": {"summary": "fraud p99 over budget", "runbook_url": "docs/x.md#a"}})
>>> line
'FIRING critical A: fraud p99 over budget (runbook: docs/x.md#a)'
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("streamscore.alerts")

MAX_BODY_BYTES = 4 * 2 ** 20  # Alertmanager batches alerts of one group: a few kB each
KEPT_IN_MEMORY = 1000  # newest alerts answered by GET /alerts


def format_alert(alert: dict) -> str:
    """One log line for one alert of a webhook payload."""
    labels, notes = alert.get("labels", {}), alert.get("annotations", {})
    line = (f"{str(alert.get('status', '?')).upper()} {labels.get('severity', '-')} "
            f"{labels.get('alertname', '?')}: {notes.get('summary', '')}")
    return line + (f" (runbook: {notes['runbook_url']})" if notes.get("runbook_url") else "")


class Receiver:
    """The state behind the HTTP handler: the store file, the newest alerts, the forward target."""

    def __init__(self, store: str | Path | None, forward_url: str = ""):
        self.store = Path(store) if store else None
        if self.store is not None:
            self.store.parent.mkdir(parents=True, exist_ok=True)
        self.forward_url = forward_url
        self.recent: deque[dict] = deque(maxlen=KEPT_IN_MEMORY)
        self.forward_failures = 0
        self.lock = threading.Lock()

    def receive(self, payload: dict) -> int:
        """Log, keep and forward one webhook payload; returns how many alerts it held."""
        alerts = payload.get("alerts") or []
        received_at = time.time()
        with self.lock:
            lines = []
            for alert in alerts:
                log.warning("%s", format_alert(alert))
                record = {"received_at": received_at, **alert}
                self.recent.append(record)
                lines.append(json.dumps(record, sort_keys=True))
            if self.store is not None and lines:
                with open(self.store, "a", encoding="utf-8") as f:
                    f.write("\n".join(lines) + "\n")
        if self.forward_url:
            try:
                req = urllib.request.Request(self.forward_url, data=json.dumps(payload).encode(),
                                             headers={"Content-Type": "application/json"})
                urllib.request.urlopen(req, timeout=5).read()
            except OSError as exc:  # the receiver's own copy is kept; Alertmanager is not asked to resend
                self.forward_failures += 1
                log.error("forwarding %d alert(s) to ALERT_FORWARD_URL failed: %s", len(alerts), exc)
        return len(alerts)


def _handler(receiver: Receiver):
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: dict | list) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 (http.server's naming)
            url = urlsplit(self.path)
            if url.path == "/healthz":
                return self._answer(200, {"status": "ok"})
            if url.path == "/alerts":
                n = int((parse_qs(url.query).get("n") or ["100"])[0])
                with receiver.lock:
                    return self._answer(200, list(receiver.recent)[-max(0, n):])
            return self._answer(404, {"detail": "not found"})

        def do_POST(self):  # noqa: N802
            if urlsplit(self.path).path != "/alerts":
                return self._answer(404, {"detail": "not found"})
            size = int(self.headers.get("Content-Length") or 0)
            if not 0 < size <= MAX_BODY_BYTES:
                return self._answer(413 if size else 411, {"detail": f"body of 1-{MAX_BODY_BYTES} bytes expected"})
            try:
                payload = json.loads(self.rfile.read(size))
                if not isinstance(payload, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                return self._answer(400, {"detail": f"not an Alertmanager webhook payload: {exc}"})
            return self._answer(200, {"received": receiver.receive(payload)})

        def log_message(self, fmt, *args):  # requests are not news; alerts are logged by receive()
            pass

    return Handler


def serve(host: str, port: int, store: str | Path | None, forward_url: str = "") -> None:
    """Serve until interrupted (SIGTERM / Ctrl-C)."""
    import signal

    server = ThreadingHTTPServer((host, port), _handler(Receiver(store, forward_url)))
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    log.info("alert receiver on %s:%d, store %s, forward %s", host, port, store or "-", forward_url or "-")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
