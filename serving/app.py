"""HTTP service for the shop: recommendations for homepage widgets, synchronous fraud
scores for checkout, health and metrics.

* ``GET  /v1/recommendations/{user_id}`` - the user's stored recommendations, or trending / popular
  items marked ``cold_start`` when there are none.
* ``POST /v1/fraud/score`` - an :class:`~streamscore.events.Order` in, a
  :class:`~streamscore.events.FraudVerdict` out, always within ``FRAUD_BUDGET_MS``, decided by
  the stream's own function (:class:`scorers.fraud.FraudDecider`): Triton gets what is left of
  the budget after the feature read; if it is slow or down the rules score answers, and if Redis
  is, the order's own fields do, with ``degraded: true`` and a verdict never below
  ``FRAUD_DEGRADED_FLOOR``. Like the stream, the score blends
  in the workers' River model (its newest checkpoint, reloaded every
  ``ONLINE_CHECKPOINT_INTERVAL_S``) once it has learned enough labels. The order is only read,
  not recorded: the ``orders`` topic remains the one writer of order features.
* ``GET /healthz`` (no auth), ``GET /metrics`` (no auth, Prometheus text format).
* ``/openapi.json``, ``/docs`` and ``/redoc``.

With ``HTTP_INTERNAL_PORT`` set, ``/metrics`` and the docs are served only on that port (bound to
``HTTP_INTERNAL_HOST``, default 127.0.0.1) and answer 404 on ``HTTP_PORT``; ``/healthz`` answers on
both (:class:`PathGate`, two uvicorn servers in one event loop). 0 (default): all on ``HTTP_PORT``.

``/v1/*`` needs ``Authorization: Bearer <token>``, any of ``API_TOKEN``'s (comma-separated), checked
by :class:`LimitsAndTiming` from the headers alone, before any body is read: without a valid token,
a 401 whatever the body (huge, malformed or never sent). Then each token's rate limit
(``API_RATE_LIMIT_PER_S``, ``API_RATE_BURST``; a 429 with ``Retry-After``), then the body size limit
(``MAX_EVENT_BYTES``, 413), for a declared ``Content-Length`` at once and for a chunked body as soon as
its bytes pass it. Malformed requests get a 4xx with a message; unexpected errors never leak as a
500 without a clear body.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import re
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from features.client import FeatureClient
from monitoring.metrics import Metrics
from scorers.fraud import FraudDecider, FraudScorer, settings_thresholds
from scorers.online import OnlineFraud
from scorers.recommender import cold_fill, cold_list
from scorers.thresholds import Thresholds
from scorers.triton import TritonScorer
from streamscore import logs
from streamscore.collector import freeze_start
from streamscore.events import FraudVerdict, InvalidEvent, Order, parse
from streamscore.settings import Settings

log = logging.getLogger(__name__)
FALLBACK_LIST_S = 1.0  # how long the list of users without a stored one is reused (s)

# Time kept back from the fraud budget for the fallback and the response itself.
BUDGET_MARGIN_S = 0.01


class RecommendationsOut(BaseModel):
    user_id: str
    items: list[str]
    scores: list[float]
    model_version: str
    cold_start: bool
    ts: float


class TokenBucket:
    """A token bucket: ``burst`` requests at once, ``rate`` per second sustained. ``take(now)``
    spends one token and returns 0.0, or, with none left, returns the seconds until there is one
    (and spends nothing). ``now`` is any monotonic clock in seconds.

    >>> b = TokenBucket(rate=2.0, burst=3, now=0.0)
    >>> [b.take(0.0) for _ in range(4)]      # the burst, then the wait for the next token
    [0.0, 0.0, 0.0, 0.5]
    >>> b.take(0.25), b.take(0.5), b.take(0.5)  # refilled at 2/s: one token by t=0.5
    (0.25, 0.0, 0.5)
    >>> b.take(100.0), round(b.tokens)       # a long pause refills up to the burst, no more
    (0.0, 2)
    """

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int, now: float):
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, float(burst), now

    def take(self, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class BodyTooLarge(Exception):
    """Raised into the app by the receive wrapper when a streamed body passes the limit (already answered 413)."""


UNAUTHORISED = b'{"detail":"missing or invalid bearer token"}'
RATE_LIMITED = b'{"detail":"rate limit of this API token exceeded; retry after Retry-After seconds"}'


class LimitsAndTiming:
    """Pure ASGI middleware around every HTTP request, the one place that decides auth and limits:

    * ``/v1*``: the bearer token is checked first, from the headers only, before anything reads
      the body: a 401 (``WWW-Authenticate: Bearer``) otherwise. Compared in constant time, as a
      SHA-256 digest (which hides its length), against every valid token, each in full.
    * then the token's :class:`TokenBucket` (keyed by that digest; ``rate`` 0 = none): a 429 with
      ``Retry-After`` (counted in ``streamscore_http_rate_limited_total``) when it is empty;
    * a 413 for a declared body (``Content-Length``) larger than ``max_body_bytes``, and for a
      streamed one (chunked) as soon as its bytes pass it: ``receive`` counts them and hands the app
      nothing beyond the limit. A request answered before its body was read is answered with
      ``connection: close``: the server stops reading it;
    * a JSON 500 (logged) instead of an unhandled error, and per-route duration and response counts
      (``streamscore_http_*``; the 401s, 413s and 429s, answered before routing, under route ``unmatched``).

    Pure ASGI rather than ``@app.middleware("http")`` (Starlette's ``BaseHTTPMiddleware``, which
    wraps each request in extra tasks and memory streams): with the auth dependency (then) made async,
    measured 2.9 -> 2.2 ms of service CPU per fraud score at 100 requests/s (``server_options``).

    >>> import asyncio
    >>> async def app(scope, receive, send):
    ...     while (await receive()).get("more_body"):
    ...         pass
    ...     await send({"type": "http.response.start", "status": 204, "headers": []})
    ...     await send({"type": "http.response.body", "body": b""})
    >>> sent, m = [], Metrics()
    >>> async def send(message): sent.append(message)
    >>> def body(*chunks):
    ...     messages = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    ...     messages[-1]["more_body"] = False
    ...     async def receive(): return messages.pop(0)
    ...     return receive
    >>> def statuses(): return [x["status"] for x in sent if x["type"] == "http.response.start"]
    >>> mw = LimitsAndTiming(app, m, max_body_bytes=10)
    >>> for length in (b"5", b"11", b"x"):
    ...     asyncio.run(mw({"type": "http", "path": "/", "headers": [(b"content-length", length)]}, body(b"12345"), send))
    >>> for chunks in ((b"12345", b"12345"), (b"123456", b"12345")):  # chunked: 10 bytes pass, 11 do not
    ...     asyncio.run(mw({"type": "http", "path": "/", "headers": [(b"transfer-encoding", b"chunked")]}, body(*chunks), send))
    >>> statuses(), sent[-1]["body"]
    ([204, 413, 413, 204, 413], b'{"detail":"request body larger than 10 bytes"}')
    >>> m.registry.get_sample_value("streamscore_http_responses_total", {"route": "unmatched", "code": "413"})
    3.0

    Auth, then the rate limit (1/s, burst 2), before the body is read (``None``: no ``receive``):

    >>> sent.clear(); mw = LimitsAndTiming(app, m, 10, tokens=["tok-a", "tok-b"], rate=1.0, burst=2)
    >>> for auth in (b"", b"Bearer nope", b"Basic tok-a", b"Bearer tok-a", b"Bearer tok-a", b"Bearer tok-a", b"bearer tok-b"):
    ...     asyncio.run(mw({"type": "http", "path": "/v1/x", "headers": [(b"authorization", auth), (b"content-length", b"1")]},
    ...                    body(b"1") if auth.endswith((b"tok-a", b"tok-b")) and not auth.startswith(b"Basic") else None, send))
    >>> statuses()
    [401, 401, 401, 204, 204, 429, 204]
    >>> starts = [x for x in sent if x["type"] == "http.response.start"]
    >>> dict(starts[0]["headers"])[b"www-authenticate"], dict(starts[5]["headers"])[b"retry-after"]
    (b'Bearer', b'1')
    >>> m.registry.get_sample_value("streamscore_http_rate_limited_total")
    1.0
    >>> async def broken(scope, receive, send):
    ...     raise RuntimeError("bug")
    >>> sent.clear(); asyncio.run(LimitsAndTiming(broken, m, 10)({"type": "http", "path": "/", "headers": []}, None, send))
    >>> sent[0]["status"], sent[1]["body"]
    (500, b'{"detail":"internal error; see the service log"}')
    """

    def __init__(self, app, metrics: Metrics, max_body_bytes: int, tokens=(), rate: float = 0.0, burst: int = 0):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.too_large = json.dumps({"detail": f"request body larger than {max_body_bytes} bytes"},
                                    separators=(",", ":")).encode()
        self.digests = [hashlib.sha256(t.encode()).digest() for t in tokens]
        self.rate, self.burst = rate, burst
        self.buckets: dict[bytes, TokenBucket] = {}  # by token digest: only valid tokens get one

    def authorise(self, authorization: bytes | None, now: float) -> tuple[int, float]:
        """(0, 0) to go on; (401, 0) without a valid token; (429, seconds to wait) over its rate."""
        scheme, _, credentials = (authorization or b"").partition(b" ")
        digest = hashlib.sha256(credentials.strip()).digest()
        valid = False
        for known in self.digests:  # every one compared, in full: no early exit
            valid |= hmac.compare_digest(digest, known)
        if not valid or scheme.lower() != b"bearer":
            return 401, 0.0
        if not self.rate:
            return 0, 0.0
        bucket = self.buckets.get(digest)
        if bucket is None:
            bucket = self.buckets[digest] = TokenBucket(self.rate, self.burst, now)
        return (0, 0.0) if not (wait := bucket.take(now)) else (429, wait)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope["headers"])
        header = (b"x-request-id", rid.encode())

        async def send_with_id(message) -> None:  # every answer, ours or the app's, names its request
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        with logs.context(request_id=rid):  # on every line logged while this request is handled
            await self._handle(scope, receive, send_with_id)

    async def _handle(self, scope, receive, send) -> None:
        t0 = time.perf_counter()
        size = authorization = streamed = None
        for k, v in scope["headers"]:
            if k == b"content-length":
                size = v
            elif k == b"authorization":
                authorization = v
            elif k == b"transfer-encoding":
                streamed = v
        pending = streamed is not None or size not in (None, b"0")  # a body may follow
        status, wait = self.authorise(authorization, t0) if scope["path"].startswith("/v1") else (0, 0.0)
        if status == 401:
            await send_json(send, 401, UNAUTHORISED, pending, [(b"www-authenticate", b"Bearer")])
        elif status == 429:
            self.metrics.http_rate_limited.inc()
            await send_json(send, 429, RATE_LIMITED, pending, [(b"retry-after", str(math.ceil(wait)).encode())])
        elif size is not None and (not size.isdigit() or int(size) > self.max_body_bytes):
            status = 413
            await send_json(send, 413, self.too_large, pending)
        else:
            cut = False  # a streamed body passed the limit: answered 413 here, the app's answer dropped

            async def send_and_note(message) -> None:
                nonlocal status
                if cut:
                    return
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            if streamed is not None or size is None:
                received, limit, upstream = 0, self.max_body_bytes, receive

                async def receive():
                    nonlocal received, status, cut
                    message = await upstream()
                    if message["type"] == "http.request":
                        received += len(message.get("body", b""))
                        if received > limit:
                            if not status and not cut:
                                status, cut = 413, True
                                await send_json(send, 413, self.too_large, True)
                            raise BodyTooLarge(f"request body passed {limit} bytes")
                    return message

            try:
                await self.app(scope, receive, send_and_note)
            except BodyTooLarge:  # answered already
                pass
            except Exception:  # never a bare 500: log it, answer with a message
                # the route template, never the path: /v1/recommendations/{user_id} holds a raw user id
                log.exception("unhandled error on %s", getattr(scope.get("route"), "path", "an unmatched route"))
                if not status:
                    status = 500
                    await send_json(send, 500, b'{"detail":"internal error; see the service log"}')
        route = getattr(scope.get("route"), "path", "unmatched")
        elapsed = time.perf_counter() - t0
        self.metrics.http_latency.labels(route).observe(elapsed)
        self.metrics.http_responses.labels(route, str(status or 500)).inc()
        if log.isEnabledFor(logging.DEBUG):  # the route template, never the path (it may hold a user id)
            log.debug("request", extra={"method": scope.get("method"), "route": route, "status": status or 500,
                                        "duration_ms": round(elapsed * 1e3, 3)})


REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


def request_id(headers) -> str:
    """The request's ``X-Request-ID`` when it is 1-128 characters of ``[A-Za-z0-9._:-]`` (a caller's
    id, kept so its logs and ours join), else a new random one (32 hex digits).

    >>> request_id([(b"x-request-id", b"abc-123")]), len(request_id([(b"x-request-id", b"<script>")]))
    ('abc-123', 32)
    """
    for k, v in headers:
        if k == b"x-request-id" and REQUEST_ID.match(v):
            return v.decode()
    return uuid.uuid4().hex


async def send_json(send, status: int, body: bytes, close: bool = False, headers=()) -> None:
    """A JSON response; ``close``: and the connection closed after it (its request body is never read)."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers, *([(b"connection", b"close")] if close else [])]})
    await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings, metrics: Metrics | None = None) -> FastAPI:
    metrics = metrics or Metrics()
    deps: dict = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        deps["features"] = FeatureClient.connect(settings, metrics)
        deps["triton"] = TritonScorer(settings, metrics)
        scorer = FraudScorer(deps["triton"], settings)
        deps["decider"] = FraudDecider(scorer, settings)
        deps["online"] = None
        # the model's input order: a mismatch raises (ContractMismatch) and the service does not start
        meta = await scorer.check_contract()
        deps["defaults"] = settings_thresholds(settings) if meta is None else Thresholds.from_meta(
            meta, settings_thresholds(settings))
        deps["decider"].thresholds = deps["defaults"]
        metrics.export_thresholds(deps["defaults"], settings.fraud_review_rate, settings.fraud_decline_rate)
        contract = None if meta is not None else asyncio.create_task(follow_contract(scorer))
        refresher = asyncio.create_task(follow_online_model())
        thresholds = asyncio.create_task(follow_thresholds())
        # The ~170k objects of start-up (pandas, River, scikit-learn, pydantic schemas) live as long as
        # the process: out of the collector's sight, a full collection no longer stalls every request
        # (measured 90 -> <1 ms for gc.collect() here). CPython's thresholds kept (not measured otherwise).
        freeze_start()
        yield
        refresher.cancel()
        thresholds.cancel()
        if contract is not None:
            contract.cancel()
        await deps["features"].close()
        await deps["triton"].close()

    async def follow_contract(scorer: FraudScorer):
        """Triton was not there at start: the rules decide until the model's input order is checked."""
        await scorer.follow_contract()
        if scorer.meta is not None and deps["decider"].thresholds.source != "live":
            deps["defaults"] = Thresholds.from_meta(scorer.meta, deps["defaults"])
            deps["decider"].thresholds = deps["defaults"]

    async def follow_thresholds():
        """The fraud workers' thresholds (stored in Redis), so checkout verdicts use the stream's."""
        while True:
            try:
                found = await deps["features"].load_thresholds()
                if found is not None:
                    cap = deps["defaults"].decline  # never above the served model's decline threshold
                    deps["decider"].thresholds = found if found.review <= cap else Thresholds(
                        cap, found.decline, found.source, found.n, found.labelled, found.ts)
                    metrics.export_thresholds(deps["decider"].thresholds, settings.fraud_review_rate,
                                              settings.fraud_decline_rate)
            except Exception as exc:  # Redis down: keep the thresholds we have
                log.warning("could not load the fraud thresholds: %s", exc)
            await asyncio.sleep(settings.fraud_threshold_refresh_s)

    async def follow_online_model():
        """Keep the workers' newest River checkpoint, so checkout scores blend like the stream's."""
        version = None
        while True:
            try:
                found = await deps["features"].load_checkpoint("fraud-online")
                if found is not None and found[0] != version:
                    version, deps["online"] = found[0], OnlineFraud.from_bytes(found[1])
            except Exception as exc:  # Redis down: keep the model we have
                log.warning("could not load the online fraud model: %s", exc)
            await asyncio.sleep(settings.online_checkpoint_interval_s)

    app = FastAPI(title="streamscore", version="0.1.0", lifespan=lifespan,
                  description="Real-time fraud verdicts, recommendations and prices for online shops.")
    # The one place that decides auth (and the rate limit): the middleware, before any body is read.
    app.add_middleware(LimitsAndTiming, metrics=metrics, max_body_bytes=settings.max_event_bytes,
                       tokens=settings.api_tokens, rate=settings.api_rate_limit_per_s, burst=settings.api_rate_burst)
    app.state.deps = deps  # the service's clients (tests read the Triton breakers)

    @app.get("/healthz")
    async def healthz():
        status = {"redis": "down", "triton": "down"}
        try:
            await asyncio.wait_for(deps["features"].ping_ms(), 0.5)
            status["redis"] = "ok"
        except Exception:
            pass
        try:
            if await asyncio.wait_for(deps["triton"].client.is_server_ready(), 0.5):
                status["triton"] = "ok"
        except Exception:
            pass
        # Redis is required; without Triton the service still answers (degraded).
        return JSONResponse({"status": "ok" if status["redis"] == "ok" else "down", **status},
                            200 if status["redis"] == "ok" else 503)

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    fallback_list: dict = {}  # the list of a user without one, and when it was read (monotonic s)

    @app.get("/v1/recommendations/{user_id}", response_model=RecommendationsOut)
    async def recommendations(user_id: str):
        if not 0 < len(user_id) <= 128:
            raise HTTPException(422, "user_id must be 1-128 characters")
        features: FeatureClient = deps["features"]
        stored = await features.recommendations(user_id)
        if stored:
            metrics.rec_impressions.labels(str(stored["cold_start"]).lower()).inc(len(stored["items"]))
            return RecommendationsOut(user_id=user_id, items=stored["items"], scores=stored["scores"],
                                      model_version=stored["model_version"], cold_start=stored["cold_start"],
                                      ts=stored["ts"])
        # no stored list (the user never clicked, or it expired): what the worker gives a user without
        # history, the same for everyone, so read at most once per FALLBACK_LIST_S (128 reads of the shards)
        rec, at = fallback_list.get("rec"), fallback_list.get("at", 0.0)
        if rec is None or time.monotonic() - at > FALLBACK_LIST_S:
            popular, trending, _ = await features.cold_start_reads([], settings.rec_top_k, None)
            fill, version = cold_fill(trending, popular)
            rec = cold_list([], [], fill, settings.rec_top_k, version)
            fallback_list.update(rec=rec, at=time.monotonic())
        metrics.rec_impressions.labels("true").inc(len(rec.items))
        return RecommendationsOut(user_id=user_id, items=rec.items, scores=rec.scores, model_version=rec.model_version,
                                  cold_start=True, ts=time.time())

    async def strict_order(request: Request) -> Order:
        """The body as an :class:`Order`, checked exactly as the stream checks one (:func:`parse`: no
        string-to-number coercion, id characters, cross-field rules); 422 with the stream's reason."""
        try:
            return parse(Order, await request.body(), settings.max_event_bytes)
        except InvalidEvent as exc:
            raise HTTPException(422, {"reason": exc.reason, "detail": exc.detail}) from None

    order_body = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": Order.model_json_schema()}}}}

    @app.post("/v1/fraud/score", response_model=FraudVerdict, openapi_extra=order_body)
    async def fraud_score(order: Order = Depends(strict_order)):
        """The stream's fraud decision (:class:`scorers.fraud.FraudDecider`) within FRAUD_BUDGET_MS. Redis
        slow or down: the order's own fields decide, degraded (never below FRAUD_DEGRADED_FLOOR)."""
        t0 = time.perf_counter()
        deadline = t0 + settings.fraud_budget_ms / 1e3 - BUDGET_MARGIN_S
        try:
            values = await asyncio.wait_for(deps["features"].read_order(order), max(0.001, deadline - time.perf_counter()))
        except Exception as exc:  # Redis slow or down: score on the order alone
            log.warning("feature read failed for fraud score (%s); deciding on the order alone", type(exc).__name__)
            values = None
        d = (await deps["decider"].decide([order], None if values is None else [values], deps["online"],
                                          deadline_s=max(0.0, deadline - time.perf_counter()), decision="fraud_http"))[0]
        latency_ms = (time.perf_counter() - t0) * 1e3
        metrics.verdicts.labels(d.verdict).inc()
        metrics.fraud_score.labels("fraud_http").observe(d.score)
        metrics.decision_latency.labels("fraud_http").observe(latency_ms / 1e3)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("verdict %s", d.verdict, extra={"order_id": order.order_id, "score": round(d.score, 6),
                                                      "degraded": d.degraded, "decision": "fraud_http"})
        return FraudVerdict(order_id=order.order_id, score=d.score, verdict=d.verdict, reasons=d.reasons,
                            reason_codes=d.reason_codes, model_version=d.model_version, latency_ms=latency_ms, degraded=d.degraded, ts=time.time())

    for route in app.routes:  # every route's series exists from the start (rate() sees the first burst)
        metrics.http_latency.labels(getattr(route, "path", "unmatched"))
    return app


INTERNAL_PATHS = frozenset({"/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
NOT_FOUND = b'{"detail":"Not Found"}'


class PathGate:
    """The app as one listener serves it: the ``hidden`` paths answer 404 (the public port, with
    ``HTTP_INTERNAL_PORT`` set), or only the ``only`` paths are served (the internal port).

    >>> import asyncio
    >>> async def app(scope, receive, send): sent.append(scope["path"])
    >>> async def send(message): sent.append(message.get("status"))
    >>> sent = []
    >>> public, internal = PathGate(app, hidden=INTERNAL_PATHS), PathGate(app, only=INTERNAL_PATHS | {"/healthz"})
    >>> for gate, path in ((public, "/metrics"), (public, "/v1/x"), (internal, "/metrics"), (internal, "/v1/x")):
    ...     asyncio.run(gate({"type": "http", "path": path}, None, send))
    >>> sent
    [404, None, '/v1/x', '/metrics', 404, None]
    """

    def __init__(self, app, hidden=frozenset(), only=None):
        self.app, self.hidden, self.only = app, hidden, only

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and (scope["path"] in self.hidden or
                                        (self.only is not None and scope["path"] not in self.only)):
            await send_json(send, 404, NOT_FOUND)
            return
        await self.app(scope, receive, send)


def run_server(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT (``python -m streamscore serve``). With ``HTTP_INTERNAL_PORT`` set, a
    second listener in the same process and event loop serves /metrics, the docs and /healthz there,
    and the public port answers 404 for them."""
    import uvicorn

    logs.configure(settings)
    app = create_app(settings)
    if not settings.http_internal_port:
        uvicorn.run(app, **server_options(settings))
        return

    class Quiet(uvicorn.Server):  # signals are taken once, around both servers (below)
        def capture_signals(self):
            return contextlib.nullcontext()

    internal = Quiet(uvicorn.Config(PathGate(app, only=INTERNAL_PATHS | {"/healthz"}), lifespan="off",
                                    **{**server_options(settings), "host": settings.http_internal_host,
                                       "port": settings.http_internal_port}))

    class Public(Quiet):
        def handle_exit(self, sig, frame) -> None:  # SIGTERM/SIGINT: both stop
            super().handle_exit(sig, frame)
            internal.should_exit, internal.force_exit = True, self.force_exit

    public = Public(uvicorn.Config(PathGate(app, hidden=INTERNAL_PATHS), **server_options(settings)))

    async def serve_both() -> None:
        first = asyncio.ensure_future(public.serve())
        while not public.started and not first.done():  # the lifespan (clients) first: /healthz needs them
            await asyncio.sleep(0.02)
        second = asyncio.ensure_future(internal.serve())
        await asyncio.wait([first, second], return_when=asyncio.FIRST_COMPLETED)
        public.should_exit = internal.should_exit = True
        await asyncio.gather(first, second)

    # uvicorn's own signal handling (a captured signal re-raised once served), around both servers
    with uvicorn.Server.capture_signals(public), asyncio.Runner(loop_factory=public.config.get_loop_factory()) as r:
        r.run(serve_both())


def server_options(settings: Settings) -> dict:
    """uvicorn's options for the service. uvloop and httptools (C event loop and HTTP parser):
    2.2 -> 1.85 ms of CPU per fraud score at 100 requests/s. With LimitsAndTiming and gc.freeze,
    at 300/s: 2.0 -> 1.2 ms per request, p99 12-14 -> 6-13 ms on a quiet 2-core machine, 46-66
    -> 11 ms beside two CPU-bound neighbours (open-loop load, every server local).
    One process: two uvicorn workers measured no better at 300/s on 2 cores shared with Triton
    and Valkey (p99 9-15 ms either way, same CPU per request) and would split the Prometheus
    metrics between processes."""
    return dict(host=settings.http_host, port=settings.http_port, log_level=settings.log_level, access_log=False,
                loop="uvloop", http="httptools", server_header=False,
                log_config=None)  # uvicorn's lines go through streamscore.logs (LOG_FORMAT), not its own handlers
