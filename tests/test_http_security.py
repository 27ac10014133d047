"""The HTTP service's limits over the real service (``streamscore serve`` in a subprocess, real stack):
the body size limit holds for streamed (chunked) bodies too, the bearer token is checked before a
body is read, each API token has its own rate limit (429 with Retry-After), and with
HTTP_INTERNAL_PORT set /metrics and the docs are served only on the internal port.

Two services over Redis db 15: ``main`` (two tokens, default rate limit, internal port set) and
``limited`` (5 requests/s, burst 5, internal port off: today's single port). Raw sockets send
requests whose body is never finished: an answer to one of those was given before its body was read.
The unit tests of the bucket and the middleware are doctests (serving/app.py).
"""

from __future__ import annotations

import json
import socket
import sys
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from conftest import free_port, isolated, wait_healthy
from streamscore import stack as stk
from streamscore.events import FraudVerdict, Order

pytestmark = pytest.mark.stack

TOKEN_A, TOKEN_B, TOKEN_C = "tok-a-" + "a" * 40, "tok-b-" + "b" * 40, "tok-c-" + "c" * 40


@pytest.fixture(scope="module")
def services(stack_settings, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("httpsec"))
    main = isolated(stack_settings, "httpsec", 15, http_port=free_port(), http_internal_port=free_port(),
                    api_token=f"{TOKEN_A}, {TOKEN_B}", run_dir=run_dir)
    limited = main.replace(http_port=free_port(), http_internal_port=0, api_rate_limit_per_s=5.0, api_rate_burst=5)
    serve = [sys.executable, "-m", "streamscore", "serve"]
    names = ["httpsec-main", "httpsec-limited"]
    for name, s in zip(names, (main, limited)):
        stk.start_process(name, serve, s.to_env(), run_dir)
    try:
        for name, s in zip(names, (main, limited)):
            wait_healthy(f"http://127.0.0.1:{s.http_port}", name, run_dir)
        yield main, limited
    finally:
        stk.stop_processes(names, run_dir)


def _order(order_id: str = "sec-1") -> bytes:
    return Order(order_id=order_id, user_id="sec-user", amount=25.0, device_id="sec-device", ip="10.1.2.3",
                 ts=time.time()).to_bytes()


def _raw(port: int, head: str, body: bytes = b"", timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``head`` (request line and headers, no blank line) and ``body`` (possibly only part of the
    body the headers announce) on a raw socket and read the response; (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(head.encode() + b"\r\n\r\n" + body)
        except (BrokenPipeError, ConnectionResetError):  # answered and closed while we were still sending
            pass
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed without a response: {data!r}"
            data += chunk
        top, _, rest = data.partition(b"\r\n\r\n")
        lines = top.decode().split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        while len(rest) < int(headers.get("content-length", 0)):
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return int(lines[0].split()[1]), headers, rest


def _chunked(data: bytes, size: int = 16384) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + size]), data[i:i + size]) for i in range(0, len(data), size))


def _post_head(path: str, token: str | None, extra: str) -> str:
    auth = f"\r\nAuthorization: Bearer {token}" if token else ""
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1{auth}\r\nContent-Type: application/json\r\n{extra}"


# --- the body size limit, streamed bodies too ------------------------------------------------------------


def test_chunked_body_over_the_limit_gets_413_before_it_ends(services):
    main, _ = services
    # 80 KB of a body whose end (the zero-length chunk) never comes: the 413 cannot have waited for it
    status, headers, body = _raw(main.http_port, _post_head("/v1/fraud/score", TOKEN_A, "Transfer-Encoding: chunked"),
                                 _chunked(b"x" * (main.max_event_bytes + 16384)))
    assert status == 413, body
    assert f"larger than {main.max_event_bytes} bytes" in httpx.Response(413, content=body).json()["detail"]
    assert headers.get("connection") == "close"

    def stream():  # httpx sends a generator body chunked; 4x the limit
        for _ in range(4 * main.max_event_bytes // 8192):
            yield b"y" * 8192
    r = httpx.post(f"http://127.0.0.1:{main.http_port}/v1/fraud/score", content=stream(), timeout=10,
                   headers={"Authorization": f"Bearer {TOKEN_A}", "Content-Type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["detail"], r.text


def test_chunked_body_under_the_limit_is_scored(services):
    main, _ = services
    order = _order("sec-chunked")

    def stream():
        for i in range(0, len(order), 7):
            yield order[i:i + 7]
    r = httpx.post(f"http://127.0.0.1:{main.http_port}/v1/fraud/score", content=stream(), timeout=10,
                   headers={"Authorization": f"Bearer {TOKEN_A}", "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert FraudVerdict.model_validate(r.json()).order_id == "sec-chunked"
    status, _, body = _raw(main.http_port, _post_head("/v1/fraud/score", TOKEN_B, "Transfer-Encoding: chunked"),
                           _chunked(order, 10) + b"0\r\n\r\n")
    assert status == 200, body


def test_declared_body_over_the_limit_gets_413_at_once(services):
    main, _ = services
    status, _, body = _raw(main.http_port, _post_head("/v1/fraud/score", TOKEN_A, "Content-Length: 10000000"), b"{")
    assert status == 413, body


# --- auth before the body ----------------------------------------------------------------------------------


def test_no_token_with_a_huge_body_gets_401_without_the_body_read(services):
    main, _ = services
    for token in (None, TOKEN_C):  # 10 MB announced, 1 KB sent: the answer did not wait for the rest
        t0 = time.monotonic()
        status, headers, body = _raw(main.http_port, _post_head("/v1/fraud/score", token, "Content-Length: 10000000"),
                                     b"{" * 1024)
        assert status == 401, body
        assert headers.get("www-authenticate") == "Bearer" and headers.get("connection") == "close"
        assert httpx.Response(401, content=body).json()["detail"] == "missing or invalid bearer token"
        print(f"\n401 with 10 MB announced, 1 KB sent (token {token and token[:5]}): "
              f"{(time.monotonic() - t0) * 1e3:.1f} ms")
        status, _, body = _raw(main.http_port, _post_head("/v1/fraud/score", token, "Transfer-Encoding: chunked"),
                               _chunked(b"x" * 200_000))  # over the limit, chunked: still 401, not 413
        assert status == 401, body

    r = httpx.post(f"http://127.0.0.1:{main.http_port}/v1/fraud/score", content=b"x" * 10_000_000, timeout=30)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text


def test_wrong_token_with_malformed_json_gets_401_not_422(services):
    main, _ = services
    url = f"http://127.0.0.1:{main.http_port}/v1/fraud/score"
    for headers in ({}, {"Authorization": f"Bearer {TOKEN_C}"}, {"Authorization": "Bearer"},
                    {"Authorization": f"Basic {TOKEN_A}"}, {"Authorization": TOKEN_A}):
        r = httpx.post(url, content=b"{not json", headers={"Content-Type": "application/json", **headers}, timeout=10)
        assert r.status_code == 401, (headers, r.status_code, r.text)
    r = httpx.post(url, content=b"{not json", timeout=10,
                   headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN_A}"})
    assert r.status_code == 422, r.text  # with a valid token the body is read, and refused


def test_each_configured_token_works_and_no_other(services):
    main, _ = services
    base = f"http://127.0.0.1:{main.http_port}"
    for token, expected in ((TOKEN_A, 200), (TOKEN_B, 200), (TOKEN_C, 401), (TOKEN_A[:-1], 401), (TOKEN_A + "a", 401),
                            (f"{TOKEN_A},{TOKEN_B}", 401)):
        r = httpx.get(f"{base}/v1/recommendations/sec-user", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == expected, (token, r.text)
        r = httpx.post(f"{base}/v1/fraud/score", content=_order(), timeout=10,
                       headers={"Authorization": f"bearer {token}", "Content-Type": "application/json"})
        assert r.status_code == expected, (token, r.text)
    assert httpx.get(f"{base}/v1/recommendations/sec-user", timeout=10).status_code == 401


# --- the per-token rate limit ------------------------------------------------------------------------------


def test_rate_limit_per_token_answers_429_with_retry_after(services):
    _, limited = services
    base = f"http://127.0.0.1:{limited.http_port}"
    with httpx.Client(base_url=base, timeout=10) as http:
        replies = [http.get("/v1/recommendations/sec-user", headers={"Authorization": f"Bearer {TOKEN_A}"})
                   for _ in range(20)]
        codes = [r.status_code for r in replies]
        assert set(codes) == {200, 429} and 5 <= codes.count(200) <= 10, codes
        assert codes[:5] == [200] * 5, codes  # the burst
        refused = [r for r in replies if r.status_code == 429]
        assert all(int(r.headers["retry-after"]) >= 1 for r in refused), refused[0].headers
        assert "rate limit" in refused[0].json()["detail"]
        other = http.get("/v1/recommendations/sec-user", headers={"Authorization": f"Bearer {TOKEN_B}"})
        assert other.status_code == 200, other.text  # another token has its own bucket
        metrics = http.get("/metrics").text  # internal port off: /metrics on the public port, as before
    counted = next(float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith("streamscore_http_rate_limited_total "))
    assert counted == len(refused)
    assert TOKEN_A not in metrics and TOKEN_B not in metrics


# --- the internal port -------------------------------------------------------------------------------------


def test_metrics_and_docs_only_on_the_internal_port(services):
    main, _ = services
    public, internal = f"http://127.0.0.1:{main.http_port}", f"http://127.0.0.1:{main.http_internal_port}"
    r = httpx.get(f"{internal}/metrics", timeout=10)
    assert r.status_code == 200 and "streamscore_http_responses_total" in r.text, r.text[:200]
    assert httpx.get(f"{internal}/openapi.json", timeout=10).json()["info"]["title"] == "streamscore"
    for path in ("/docs", "/redoc"):
        assert httpx.get(f"{internal}{path}", timeout=10).status_code == 200, path
    for path in ("/metrics", "/docs", "/redoc", "/openapi.json"):
        assert httpx.get(f"{public}{path}", timeout=10).status_code == 404, path
    for base in (public, internal):
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200, base
    r = httpx.get(f"{internal}/v1/recommendations/sec-user", headers={"Authorization": f"Bearer {TOKEN_A}"}, timeout=10)
    assert r.status_code == 404  # the internal port serves nothing of the API


def test_an_unhandled_error_is_logged_without_the_raw_user_id(services):
    """A stored recommendation that is not JSON makes the handler fail: the answer is a 500 with a
    message, and the log line names the route template, never the path with the user id."""
    import redis

    from features.keys import FeatureKeys
    from features.privacy import Pseudonymiser

    main, _ = services
    user = "sec-private-user-4711"
    keys = FeatureKeys(Pseudonymiser(main.pii_secret.get_secret_value()))
    redis.Redis.from_url(main.redis_url).set(keys.recommendations(keys.user(user)), b"{not json")
    r = httpx.get(f"http://127.0.0.1:{main.http_port}/v1/recommendations/{user}",
                  headers={"Authorization": f"Bearer {TOKEN_A}"}, timeout=5)
    assert r.status_code == 500 and "internal error" in r.text
    log = stk.log_tail("httpsec-main", main.run_dir, 400)
    assert "unhandled error on /v1/recommendations/{user_id}" in log
    assert user not in log


def _score(base: str, body: bytes) -> httpx.Response:
    return httpx.post(f"{base}/v1/fraud/score", content=body, timeout=10,
                      headers={"Authorization": f"Bearer {TOKEN_A}", "Content-Type": "application/json"})


def test_checkout_checks_an_order_exactly_as_the_stream_does(services):
    main, _ = services
    base = f"http://127.0.0.1:{main.http_port}"
    good = json.loads(_order("sec-strict"))
    assert _score(base, json.dumps(good).encode()).status_code == 200
    for change, reason in (({"amount": "5"}, "wrong_type"), ({"amount": True}, "wrong_type"),
                           ({"amount": 4.9e-324}, "out_of_range"), ({"user_id": "a\u202eb"}, "id_bad_characters"),
                           ({"account_created_at": good["ts"] + 86400}, "account_after_order")):
        r = _score(base, json.dumps({**good, **change}).encode())
        assert r.status_code == 422 and r.json()["detail"]["reason"] == reason, (change, r.text)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
                    max_leaves=12)
ORDER_FIELDS = ["order_id", "user_id", "items", "amount", "currency", "payment_fingerprint", "device_id", "ip",
                "shipping_country", "account_created_at", "ts"]


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.one_of(
    JSON.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(ORDER_FIELDS), JSON, max_size=11).map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=200)))
def test_fuzz_the_score_endpoint_never_500(services, body):
    """Whatever the body, the checkout endpoint answers a verdict or a 4xx with a reason, never a 500."""
    main, _ = services
    r = _score(f"http://127.0.0.1:{main.http_port}", body)
    assert r.status_code in (200, 422), (body, r.status_code, r.text)
    if r.status_code == 200:
        v = FraudVerdict.model_validate(r.json())
        assert 0.0 <= v.score <= 1.0 and v.verdict in ("approve", "review", "decline")
    else:
        assert r.json()["detail"]["reason"], r.text
