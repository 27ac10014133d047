"""Shared fixtures: a real local stack (broker, valkey, tritonserver) on free ports.

``stack`` / ``stack_settings`` are session-scoped and started on first use only: one
stack over the real ``triton_repo/`` for every integration test of the session, with
short Kafka session/heartbeat timeouts so consumer-group joins and evictions are fast.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import redis as redis_lib
from confluent_kafka import Consumer

from features.keys import FeatureKeys
from streamscore.settings import Settings
from streamscore.stack import LocalStack, create_topics


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (sockets held open together while picking)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


async def with_feature_client(url: str, fn, **settings):
    """``await fn(client)`` with a :class:`FeatureClient` on ``url`` (its database emptied first; ``settings``
    override the defaults), closed after."""
    from features.client import FeatureClient

    client = FeatureClient.connect(Settings.from_env({}, redis_url=url, **settings))
    await client.redis.flushdb()
    try:
        return await fn(client)
    finally:
        await client.close()


TOPIC_FIELDS = ("topic_clicks", "topic_orders", "topic_fraud_labels", "topic_catalog", "topic_fraud_verdicts",
                "topic_recommendations", "topic_price_adjustments", "topic_dead_letter")


def isolated(base: Settings, name: str, db: int, prefix: str | None = None, **overrides) -> Settings:
    """``base`` with a consumer group of its own (app_id ``name``), its own topics (every topic name
    prefixed ``{prefix or name}-``, created) and Redis database ``db`` (emptied): an integration
    test on the session's stack sees nothing of the others. On the session's Redis Cluster
    (``REDIS_TOPOLOGY=cluster``: database 0 only) the whole cluster is emptied instead: the tests
    that use it run one after the other."""
    url = base.redis_url if base.redis_topology == "cluster" else base.redis_url.rsplit("/", 1)[0] + f"/{db}"
    s = base.replace(app_id=name, redis_url=url,
                **{f: f"{prefix or name}-{getattr(base, f)}" for f in TOPIC_FIELDS}, **overrides)
    create_topics(s.kafka_bootstrap, s.all_topics)
    sync_redis(s).flushdb()
    return s


def sync_redis(settings: Settings):
    """A blocking client of ``settings``' Redis: redis-py's cluster client on a cluster."""
    if settings.redis_topology == "cluster":
        return redis_lib.RedisCluster.from_url(settings.redis_url)
    return redis_lib.Redis.from_url(settings.redis_url)


TOPOLOGIES = ("standalone", "cluster")


def on_topology(request, stack_settings: Settings, topology: str) -> Settings:
    """The session stack's settings with Redis on ``topology``: the stack's own Valkey, or a local
    three-primary Redis Cluster (started once per session, on first use)."""
    if topology == "standalone":
        return stack_settings
    return stack_settings.replace(redis_url=request.getfixturevalue("redis_cluster_url"), redis_topology="cluster")


@pytest.fixture(scope="session")
def redis_cluster_url():
    """A local Redis Cluster of three primaries (no replicas) for the session."""
    from features.snapshot import temporary_redis

    with temporary_redis("cluster") as url:
        yield url


def local_settings(run_dir: Path, **overrides) -> Settings:
    """Settings for a private stack: every server on a free 127.0.0.1 port, ``run_dir``
    for logs and PID files, short consumer timeouts; the environment is ignored."""
    kafka, redis, http, grpc, metrics, api, worker, prometheus, alertmanager, receiver = free_ports(10)
    values = dict(
        kafka_bootstrap=f"127.0.0.1:{kafka}",
        redis_url=f"redis://127.0.0.1:{redis}/0",
        triton_http_url=f"127.0.0.1:{http}",
        triton_grpc_url=f"127.0.0.1:{grpc}",
        triton_metrics_url=f"127.0.0.1:{metrics}",
        http_port=api,
        worker_metrics_port=worker,
        prometheus_url=f"127.0.0.1:{prometheus}",
        alertmanager_url=f"127.0.0.1:{alertmanager}",
        alert_receiver_url=f"127.0.0.1:{receiver}",
        run_dir=str(run_dir),
        dev_mode=True,  # the tests run on the published development secrets (test_secrets.py: the refusal)
        session_timeout_s=6.0,
        heartbeat_s=0.5,
        local_alert_for_max_s=5.0,  # alerts fire within seconds (copies of the rules; tests/test_alert_delivery.py)
    )
    values.update(overrides)
    return Settings.from_env({}, **values)


# Keys that hold decisions or learning state rather than features (recommendations, learn records,
# verdicts, early labels, pending orders, Kafka positions, checkpoints, the fraud thresholds in use), and the catalog fields the
# pricing loop writes: parity checks between the live path and a replay leave them out. Co-visitation
# (ss:cv:) is order-dependent in its last float bits and epochs; tests/test_recs_online.py checks it. So are
# the decayed category trends (ss:cat:, ss:g:trend:; tests/test_cold_start.py checks them), whose
# deduplication without positions (ss:g:trend-seen:) a stream fed from Kafka never writes.
NOT_FEATURES = tuple(p.encode() for p in (
    *(FeatureKeys.prefix(kind) for kind in ("rec", "o", "v", "l", "cv", "cat")),
    FeatureKeys.shard("pending", ""), FeatureKeys.shard("off", ""), FeatureKeys.global_key("ckpt") + ":",
    FeatureKeys.shard("trend", ""), FeatureKeys.shard("trend-seen", ""), FeatureKeys.fraud_thresholds()))
# the folded views (written by a timer from the shards, which are compared)
FOLDED = {FeatureKeys.funnel.encode(), FeatureKeys.popular.encode()}
PRICING_FIELDS = {b"price", b"priced_at", b"price_changed_at"}
# the pricing bandit's state (ss:i:{item}:bandit). The fraud links a label makes (ss:{kind}:{h}:fraud) are
# features: a backfill replays the labels too (replay/backfill.py).
NOT_FEATURE_SUFFIXES = (b":bandit",)
RETENTION = {":sales": 7 * 86400, ":revenue": 7 * 86400, ":orders": 30 * 86400, ":users": 30 * 86400}


def feature_state(r) -> dict:
    """Every feature key's content, pipelined, windowed sets as the reads see them."""
    keys = [k for k in r.scan_iter("ss:*", count=10_000) if not k.startswith(NOT_FEATURES)
            and not k.endswith(NOT_FEATURE_SUFFIXES) and k not in FOLDED]
    pipe = r.pipeline() if isinstance(r, redis_lib.RedisCluster) else r.pipeline(transaction=False)
    for k in keys:
        pipe.type(k)
    kinds = pipe.execute()
    for k, kind in zip(keys, kinds):
        if kind == b"zset":
            pipe.zrange(k, 0, -1, withscores=True)
        elif kind == b"hash":
            pipe.hgetall(k)
        elif b":hll:" in k or k.startswith(b"ss:g:viewed:"):
            pipe.exists(k)  # counted below: redis-py's cluster pipeline refuses PFCOUNT (and a PFCOUNT caches its count in the bytes)
        else:
            pipe.get(k)
    out = {}
    for k, v in zip(keys, pipe.execute()):
        if b":hll:" in k or k.startswith(b"ss:g:viewed:"):
            v = r.pfcount(k)
        key = k.decode()
        if key.endswith(":catalog"):
            v = {f: x for f, x in v.items() if f not in PRICING_FIELDS}
        out[key] = _in_window(key, v)
    return out


def _in_window(key: str, value):
    """A windowed set as reads see it: members within retention of its newest member. (A member
    older than that can outlive its trim when an old event from another partition is applied
    after a newer one; no read window reaches it.)"""
    for suffix, retention in RETENTION.items():
        if key.endswith(suffix) and value:
            newest = max(score for _, score in value)
            return [(m, sc) for m, sc in value if sc >= newest - retention]
    return value


def consume_all(settings, topic: str, until, timeout_s: float = 120) -> list:
    """Read ``topic`` from the start until ``until(messages)`` holds or the timeout passes."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"t-{topic}-{time.time_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
    consumer.subscribe([topic])
    messages, end = [], time.monotonic() + timeout_s
    try:
        while time.monotonic() < end and not until(messages):
            for m in consumer.consume(500, timeout=0.5):
                if m.error() is None:
                    messages.append(m)
    finally:
        consumer.close()
    return messages


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> LocalStack:
    """A running LocalStack over the real ``triton_repo/``; downed at the end of the session."""
    local = LocalStack(local_settings(tmp_path_factory.mktemp("stack")))
    try:
        local.up(timeout_s=120)
        yield local
    finally:
        local.down()


@pytest.fixture(scope="session")
def stack_settings(stack: LocalStack) -> Settings:
    """The Settings of the session's running local stack."""
    return stack.settings

def wait_healthy(base: str, name: str, run_dir, codes=(200,), timeout_s: float = 90) -> None:
    """Wait until ``base``/healthz answers one of ``codes``; fail at once, with its log, if the
    process ``name`` (started by :func:`streamscore.stack.start_process`) exits meanwhile."""
    import httpx

    from streamscore import stack as stk

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code in codes:
                return
        except httpx.HTTPError:
            pass
        assert stk.process_alive(name, run_dir), stk.log_tail(name, run_dir)
        time.sleep(0.3)
    raise AssertionError(f"{name} not healthy: {stk.log_tail(name, run_dir)}")


def views_counted(settings, clicks) -> tuple[dict[str, int], dict[str, int]]:
    """``(expected, stored)``: each viewed item's number of ``view`` clicks in ``clicks``, and its
    ``item_views_24h`` as the feature store reads it now."""
    import asyncio

    from features.client import FeatureClient

    expected: dict[str, int] = {}
    for c in clicks:
        if c.action == "view":
            expected[c.item_id] = expected.get(c.item_id, 0) + 1

    async def read():
        fc = FeatureClient.connect(settings)
        try:
            return await fc.item_features(list(expected), time.time() + 1)
        finally:
            await fc.close()
    return expected, {i: int(f["item_views_24h"]) for i, f in asyncio.run(read()).items()}


FUNNEL = {"view": "browse", "add_to_cart": "cart", "remove_from_cart": "browse", "purchase": "purchase"}


def inline_members(r, keys, user_actions) -> list[set]:
    """Per (pseudonymised user, action): the event ids of the user's clicks of that action kept inline in
    the user's state hash (``e<letter><event id>`` fields, features.store INLINE_WINDOW_MAX), as bytes."""
    from features.store import ACTION_LETTER

    pipe = r.pipeline()
    for uh, _ in user_actions:
        pipe.hkeys(keys.user_state(uh))
    out = []
    for (_, action), fields in zip(user_actions, pipe.execute()):
        prefix = b"e" + ACTION_LETTER[action].encode()
        out.append({f[2:] for f in fields if f.startswith(prefix)})
    return out


def item_inline_members(r, keys, item_actions, days) -> list[set]:
    """Per (item, action): the event ids of the item's clicks of that action kept inline in its bucket's day
    hashes (``ss:g:iw:{tag}:<day>``, field ``<letter><item>``, features.lua CLICKS_ITEMS) of ``days``, as bytes."""
    from features.store import ACTION_LETTER

    pipe = r.pipeline()
    for item, action in item_actions:
        for d in days:
            pipe.hget(keys.item_day_clicks(keys.tag("i", item), d), ACTION_LETTER[action] + item)
    values, out = pipe.execute(), []
    for n in range(len(item_actions)):
        got = set()
        for v in values[n * len(days):(n + 1) * len(days)]:
            if v and v != b"S":
                got |= set(v.split(b"\t")[::2])
        out.append(got)
    return out


def assert_clicks_exact(s: Settings, clicks) -> None:
    """Every click feature the stream wrote equals the ground truth computed here, in plain Python,
    from ``clicks`` (in publish order, keyed by user): each user's and item's click windows hold
    exactly their events (0 lost, 0 extra), popularity and funnel transitions count each event once,
    no key per event, and each user's newest items."""
    from collections import Counter, defaultdict

    from features.privacy import Pseudonymiser
    from features.store import utc_day

    pseudo = Pseudonymiser(s.pii_secret.get_secret_value())
    keys = FeatureKeys(pseudo)
    r = sync_redis(s)

    user_clicks, item_clicks, views = defaultdict(set), defaultdict(set), Counter()
    transitions, state, recent = Counter(), {}, defaultdict(dict)
    for c in clicks:  # publish order = per-user order (keyed by user)
        uh = pseudo("user", c.user_id)
        user_clicks[(uh, c.action)].add(c.event_id.encode())
        item_clicks[(c.item_id, c.action)].add(c.event_id.encode())
        frm = state.get(uh, "start")
        transitions[f"{frm}>{FUNNEL[c.action]}"] += 1
        state[uh] = FUNNEL[c.action]
        if c.action == "view":
            views[c.item_id] += 1
            recent[uh][c.item_id] = max(c.ts, recent[uh].get(c.item_id, 0))

    def members(keys):
        pipe = r.pipeline()
        for k in keys:
            pipe.zrange(k, 0, -1)
        return [set(x) for x in pipe.execute()]

    ukeys = list(user_clicks)
    got = [z | inline for z, inline in zip(members([keys.user_clicks(uh, a) for uh, a in ukeys]),
                                           inline_members(r, keys, ukeys))]
    lost = sum(len(user_clicks[k] - g) for k, g in zip(ukeys, got))
    extra = sum(len(g - user_clicks[k]) for k, g in zip(ukeys, got))
    ikeys = list(item_clicks)
    days = sorted({utc_day(c.ts) for c in clicks})
    got_items = [z | inline for z, inline in zip(members([keys.item_clicks(item, a) for item, a in ikeys]),
                                                 item_inline_members(r, keys, ikeys, days))]
    lost += sum(len(item_clicks[k] - g) for k, g in zip(ikeys, got_items))
    extra += sum(len(g - item_clicks[k]) for k, g in zip(ikeys, got_items))
    assert (lost, extra) == (0, 0), f"{lost} click members lost, {extra} extra"

    # popularity and funnel transitions: one shard per bucket, each counted once per event by the Kafka positions
    popular = {}
    for shard in keys.shards("popular", "i"):
        popular.update({k.decode(): int(v) for k, v in r.zrange(shard, 0, -1, withscores=True)})
    # exact while no shard is full (past that, Space-Saving: test_features); the tests give the shards room
    assert max(r.zcard(k) for k in keys.shards("popular", "i")) < s.rec_popular_keep, "a popularity shard filled up"
    assert popular == dict(views), "view counts double counted or lost"
    funnel = Counter()
    for shard in keys.shards("funnel", "u"):
        funnel.update({k.decode(): int(v) for k, v in r.hgetall(shard).items()})
    assert dict(funnel) == dict(transitions), "funnel transitions double counted or lost"
    assert not list(r.scan_iter("ss:seen:*")), "no key per event"
    for uh, items in list(recent.items())[:2000]:
        newest = {i for i, _ in sorted(items.items(), key=lambda kv: -kv[1])[:50]}
        got_recent = {f.decode()[1:] for f in r.hkeys(keys.user_state(uh)) if f.startswith(b"r")}
        assert len(got_recent) == min(50, len(items))
        assert {i for i, t in items.items() if t > min(items[x] for x in newest)} <= got_recent

