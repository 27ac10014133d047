"""The main job: local stack + workers + HTTP service, real history replayed through them.

``streamscore demo`` (what ``make demo`` runs):

1. starts the local stack (broker, Valkey, tritonserver over ``triton_repo/``);
2. starts one worker per role (``streamscore worker --role fraud|clicks|pricing``, each its own
   process and consumer group) and the HTTP service (``streamscore serve``);
3. replays the ``demo`` scenario - Taobao clicks, Online Retail orders and catalog,
   e-commerce fraud purchases (the calmer months from ``--fraud-since``, default February 2015:
   ~4-5% fraud, not the January wave) and their late labels, merged onto one timeline - at
   ``--rate`` events/s (default 1,000; 0 = as fast as possible);
4. waits until every order has its verdict, then prints a summary (events in,
   verdicts out, the fraud thresholds in use and the review / decline shares against their
   budgets, p50/p99 decision latency, users with recommendations, price changes,
   dead letters) and the endpoints to try;
5. keeps everything up until Ctrl-C, then stops what it started.
"""

from __future__ import annotations

import json
import signal
import statistics
import sys
import time
import urllib.request
from collections import Counter

import redis

from features.store import FeatureKeys
from scorers.thresholds import SHARE_TOLERANCE
from streamscore import stack as stk
from streamscore.settings import Settings
from streamscore.topics import committed, read_topic


def _wait_http(url: str, timeout_s: float, name: str, run_dir: str) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if not stk.process_alive(name, run_dir):
            raise RuntimeError(f"{name} exited during start-up:\n{stk.log_tail(name, run_dir)}")
        time.sleep(0.3)
    raise RuntimeError(f"{name} not healthy after {timeout_s}s:\n{stk.log_tail(name, run_dir)}")


def _groups(settings: Settings) -> list[tuple[str, str]]:
    """(consumer group, topic) of the roles that decide clicks and orders."""
    return [(settings.deciding_group(t), t) for t in (settings.topic_clicks, settings.topic_orders)]


WORKER_ROLES = ("fraud", "clicks", "pricing")
# The demo's fraud purchases start here: the calmer months (~4-5% fraud a month). January 2015 is a
# fraud wave (77% fraud, purchases in the signup minute) that no review budget is meant for.
DEMO_FRAUD_SINCE = "2015-02-01"
# FRAUD_THRESHOLD_WINDOW of the demo (at most): its 4,000 orders are days of event time replayed in
# seconds, while the online (River) blend learns from the labels arriving in between, so the score
# distribution moves within the demo (measured: p95 of the scores 0.20 in the second 500 verdicts,
# 0.10-0.12 in the last 2,000). A window of the default 5,000 holds every score since the start and
# cannot follow that (review 1.5-2.7% of orders after the warm-up against the 5% budget); 1,000
# recent scores follow it, at about one point of quantile sampling error at the 5% budget.
DEMO_THRESHOLD_WINDOW = 1000
THROUGHPUT_NICE = 10  # WORKER_NICE of the clicks and pricing workers: they share the demo's cores with fraud


def worker_ports(settings: Settings) -> dict[str, int]:
    """Metrics port of each role's worker process: WORKER_METRICS_PORT for fraud, the next ones after.

    >>> worker_ports(Settings())
    {'fraud': 9108, 'clicks': 9109, 'pricing': 9110}
    """
    return {role: settings.worker_metrics_port + n for n, role in enumerate(WORKER_ROLES)}


def start_services(settings: Settings) -> None:
    """Start (or keep) the worker and the HTTP service; wait until the API is healthy."""
    env = settings.to_env()
    ports = worker_ports(settings)
    for role, port in ports.items():  # each role its own process: checkout verdicts never wait on clicks
        name = f"worker-{role}"
        if not stk.process_alive(name, settings.run_dir):
            nice = {} if role == "fraud" else {"WORKER_NICE": str(THROUGHPUT_NICE)}  # verdicts get the CPU first
            stk.start_process(name, [sys.executable, "-m", "streamscore", "worker", "--role", role],
                              {**env, "WORKER_METRICS_PORT": str(port), **nice}, settings.run_dir)
    stk.register_workers(settings, {r: p for r, p in ports.items() if p != settings.worker_metrics_port})
    if not stk.process_alive("api", settings.run_dir):
        stk.start_process("api", [sys.executable, "-m", "streamscore", "serve"], env, settings.run_dir)
    _wait_http(f"http://127.0.0.1:{settings.http_port}/healthz", 60, "api", settings.run_dir)


def _source(model_version: str) -> str:
    """Where a list came from, without the model version: 'recommender:1+covis' ->
    'recommender+covis', the cold-start sources ('trending-categories', 'trending', 'popular', each
    maybe '+covis') unchanged.

    >>> [_source(v) for v in ("recommender:1", "recommender:1+covis", "popular+covis", "popular")]
    ['recommender', 'recommender+covis', 'popular+covis', 'popular']
    >>> [_source(v) for v in ("trending-categories", "trending-categories+covis", "trending")]
    ['trending-categories', 'trending-categories+covis', 'trending']
    """
    name = model_version.split(":")[0].removesuffix("+covis")
    return name + ("+covis" if model_version.endswith("+covis") else "")


def _learned(r, keys) -> list[int]:
    """Windows learned by each item's pricing bandit (``ss:i:{item}:bandit`` field ``learned``)."""
    pipe = r.pipeline(transaction=False)
    for k in keys:
        pipe.hget(k, "learned")
    return [int(x or 0) for x in pipe.execute()] if keys else []


def _label_outcomes(settings: Settings) -> dict[str, int]:
    """``streamscore_fraud_labels_total`` by outcome, from the fraud worker's metrics (joined, kept until
    the order's verdict, early = such a label joined, missing, silence)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker_ports(settings)['fraud']}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    prefix = 'streamscore_fraud_labels_total{outcome="'
    return {line[len(prefix):].split('"')[0]: int(float(line.split()[-1]))
            for line in text.splitlines() if line.startswith(prefix)}


def _thresholds(settings: Settings) -> dict:
    """The fraud thresholds in use: those the workers published (``ss:g:fraud-thresholds``), or the
    settings' before any (the workers use the served model's metadata thresholds until then)."""
    import asyncio

    from features.client import FeatureClient

    async def load():
        fc = FeatureClient.connect(settings)
        try:
            return await fc.load_thresholds()
        finally:
            await fc.close()
    try:
        t = asyncio.run(load())
    except Exception:  # Redis gone: say so rather than fail the summary
        t = None
    if t is None:
        return {"source": "settings (none published)", "review": settings.fraud_review_threshold,
                "decline": settings.fraud_decline_threshold}
    from scorers.thresholds import NO_DECLINE

    decline = round(t.decline, 4) if t.decline < NO_DECLINE else "none (no score reaches FRAUD_DECLINE_PRECISION)"
    return {"source": t.source, "review": round(t.review, 4), "decline": decline, "scores_seen": t.n,
            "labels_seen": t.labelled}


def budget_summary(verdicts: list[dict], settings: Settings, thresholds: dict) -> dict:
    """The review and decline shares of ``verdicts`` (dicts with ``verdict``, ``ts``) against their
    budgets (``FRAUD_REVIEW_RATE``, ``FRAUD_DECLINE_RATE``), over all of them and over those decided
    after the first ``FRAUD_THRESHOLD_MIN_SCORES`` (by decision time: from then on the thresholds follow
    the live scores; before, the model metadata's decide). ``within``: the share after warm-up is
    within its budget +- :data:`~scorers.thresholds.SHARE_TOLERANCE`.

    >>> vs = [{"verdict": "approve", "ts": i} for i in range(90)] + [{"verdict": "review", "ts": 90 + i} for i in range(10)]
    >>> b = budget_summary(vs, Settings(fraud_threshold_min_scores=50), {"review": 0.1})
    >>> b["review"]["share"], b["review"]["share_after_warmup"], b["review"]["within"], b["thresholds_in_use"]
    (0.1, 0.2, False, {'review': 0.1})
    """
    ordered = sorted(verdicts, key=lambda v: v["ts"])
    live = ordered[settings.fraud_threshold_min_scores:]

    def share(vs, verdict):
        return round(sum(v["verdict"] == verdict for v in vs) / len(vs), 4) if vs else None

    out = {"thresholds_in_use": thresholds, "verdicts": len(ordered), "after_warmup": len(live)}
    for verdict, budget in (("review", settings.fraud_review_rate), ("decline", settings.fraud_decline_rate)):
        after = share(live, verdict)
        out[verdict] = {"share": share(ordered, verdict), "share_after_warmup": after, "budget": budget,
                        "tolerance": SHARE_TOLERANCE,
                        "within": after is not None and abs(after - budget) <= SHARE_TOLERANCE + 1e-12}
    return out


def example_user(settings: Settings, click_users: list[str], fallback: str = "tb:1") -> str:
    """The user for the README's example ``curl``: of the replayed click users, most clicks first
    (ties: first seen), the first whose stored list came from the model (not cold start), so the
    example shows a user with history; ``fallback`` when there is none."""
    from features.privacy import Pseudonymiser

    keys = FeatureKeys(Pseudonymiser(settings.pii_secret.get_secret_value()))
    r = redis.Redis.from_url(settings.redis_url)
    n = Counter(click_users)
    first = {u: i for i, u in reversed(list(enumerate(click_users)))}
    for user in sorted(n, key=lambda u: (-n[u], first[u]))[:2000]:
        raw = r.get(keys.recommendations(keys.user(user)))
        if raw and not json.loads(raw).get("cold_start", True):
            return user
    return click_users[0] if click_users else fallback


def summary(settings: Settings, published: dict, order_ids: set[str], wall_s: float) -> dict:
    """What came out for this replay's orders, plus totals read back from the output topics."""
    verdicts = [v for v in (json.loads(m.value()) for m in read_topic(settings, settings.topic_fraud_verdicts))
                if v["order_id"] in order_ids]
    latencies = sorted(v["latency_ms"] for v in verdicts)
    r = redis.Redis.from_url(settings.redis_url)
    users_with_recs = sum(1 for k in r.scan_iter(FeatureKeys.pattern("rec"), count=1000) if not k.endswith(b":items"))

    recs = read_topic(settings, settings.topic_recommendations)
    prices = read_topic(settings, settings.topic_price_adjustments)
    keys = list(r.scan_iter(FeatureKeys.pattern("i", "bandit"), count=1000))
    bandits = _learned(r, keys)

    def pct(q: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else None

    mix = Counter(v["verdict"] for v in verdicts)
    return {
        "events_in": published["delivered"],
        "verdicts_out": len({v["order_id"] for v in verdicts}),
        "verdict_mix": dict(mix),
        "fraud_budget": budget_summary(list({v["order_id"]: v for v in verdicts}.values()), settings,
                                       _thresholds(settings)),
        "example_reasons": next((v["reasons"] for v in verdicts if v["verdict"] != "approve" and v["reasons"]), None),
        "degraded_verdicts": sum(v["degraded"] for v in verdicts),
        "decision_latency_ms": {"p50": pct(0.50), "p99": pct(0.99),
                                "mean": round(statistics.fmean(latencies), 1) if latencies else None},
        "users_with_recommendations": users_with_recs,
        "recommendation_messages": len(recs),
        "recommendation_sources": dict(Counter(_source(json.loads(m.value())["model_version"]) for m in recs)),
        "price_adjustments": len(prices),
        "price_adjustments_by_policy": dict(Counter(json.loads(m.value())["model_version"].split(":")[0]
                                                    for m in prices)),
        "pricing_bandit": {"items": len(bandits), "windows_learned": sum(bandits)},
        "fraud_labels": _label_outcomes(settings),
        "dead_letters": len(read_topic(settings, settings.topic_dead_letter)),
        "replay_events_per_s": published["events_per_s"],
        "wall_s": round(wall_s, 1),
    }


def run(settings: Settings, clicks: int, orders: int, fraud_orders: int, rate: float | None,
        keep_running: bool, fraud_since: str | None = DEMO_FRAUD_SINCE) -> dict:
    from replay.publish import publish, stderr_progress
    from replay.scenario import demo

    t0 = time.monotonic()
    settings = settings.replace(fraud_threshold_window=min(settings.fraud_threshold_window, DEMO_THRESHOLD_WINDOW))
    print("starting the local stack (broker, valkey, tritonserver) ...", file=sys.stderr)
    stk.LocalStack(settings).up(timeout_s=120)
    print("starting the fraud, clicks and pricing workers and the HTTP service ...", file=sys.stderr)
    start_services(settings)
    before = {t: committed(settings, g, t) for g, t in _groups(settings)}
    events = list(demo(settings.data_dir, settings=settings, clicks=clicks, orders=orders, fraud_orders=fraud_orders,
                       catalog=True, fraud_since=fraud_since))
    n_orders = sum(1 for topic, _, _ in events if topic == settings.topic_orders)
    order_ids = {e.order_id for topic, _, e in events if topic == settings.topic_orders}
    sent = Counter(topic for topic, _, _ in events)
    click_users = [e.user_id for topic, _, e in events if topic == settings.topic_clicks]
    print(f"replaying {len(events)} real events ({n_orders} orders) at {rate or 'max'} events/s ...", file=sys.stderr)
    published = publish(events, settings, rate=rate, progress=stderr_progress, total=len(events))
    end = time.monotonic() + 300
    # done when the worker has committed every replayed click and order (it commits after emitting)
    while (left := {t: sent[t] - (committed(settings, g, t) - before[t]) for g, t in _groups(settings)}) \
            and any(n > 0 for n in left.values()):
        if time.monotonic() > end:
            raise RuntimeError(f"not processed after 300 s: {left}; see {settings.run_dir}/logs/worker-*.log")
        for role in WORKER_ROLES:
            if not stk.process_alive(f"worker-{role}", settings.run_dir):
                raise RuntimeError(f"the {role} worker died:\n{stk.log_tail(f'worker-{role}', settings.run_dir)}")
        print(f"\r  waiting for the workers: {left}   ", end="", file=sys.stderr, flush=True)
        time.sleep(0.5)
    time.sleep(2 * settings.rec_refresh_interval_s + 1)  # last recommendation refresh
    print(file=sys.stderr)
    result = summary(settings, published, order_ids, time.monotonic() - t0)
    result["example_user"] = user = example_user(settings, click_users)
    print(json.dumps(result, indent=2))
    api = f"http://127.0.0.1:{settings.http_port}"
    print(f"""
Endpoints (token: API_TOKEN={settings.api_token.get_secret_value()}):
  curl -H 'Authorization: Bearer {settings.api_token.get_secret_value()}' {api}/v1/recommendations/{user}
  curl -H 'Authorization: Bearer {settings.api_token.get_secret_value()}' -H 'Content-Type: application/json' \\
       -d '{{"order_id":"o-1","user_id":"u-1","amount":99.5,"device_id":"d-1","ts":{time.time():.0f}}}' \\
       {api}/v1/fraud/score
  {api}/docs (OpenAPI)   {api}/metrics   worker metrics (fraud, clicks, pricing) {", ".join(f"http://127.0.0.1:{p}/metrics" for p in worker_ports(settings).values())}
  Triton metrics http://{settings.triton_metrics_url}/metrics   Prometheus http://{settings.prometheus_url}
  logs: {settings.run_dir}/logs/""")
    if keep_running:
        print("\nRunning. Ctrl-C stops everything.", file=sys.stderr)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            print("stopping ...", file=sys.stderr)
            stk.LocalStack(settings).down()
    return result
