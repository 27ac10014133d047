"""Redis ACL users over the real stack: the workers read and write, the HTTP service only reads.

The session's Valkey gets the two users of :mod:`features.acl` (``ACL SETUSER``, removed after);
a worker (every role) runs as ``worker``, the HTTP service as ``api`` (Redis database 8). Checked:
real orders get verdicts and the service scores with features (read by its scripts) and serves
recommendations; ``api`` cannot write a key or run a writing script; neither user can
flush, list every key, or touch a key outside ``ss:``.
"""

from __future__ import annotations

import secrets
import sys
import time
from itertools import islice
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from confluent_kafka import Producer
from redis.exceptions import NoPermissionError, ResponseError

from conftest import consume_all, free_port, isolated, wait_healthy
from features.acl import RULES, setuser_args
from replay.sources import fraud_orders
from streamscore import stack as stk

pytestmark = pytest.mark.stack

N = 20


def _url(base: str, user: str, password: str) -> str:
    u = urlsplit(base)
    return f"redis://{user}:{password}@{u.hostname}:{u.port}{u.path}"


def test_worker_writes_api_only_reads(stack_settings):
    s = isolated(stack_settings, "acl", 8, worker_metrics_port=free_port(), http_port=free_port(),
                 fraud_challenger=False)
    admin = redis.Redis.from_url(s.redis_url)
    passwords = {user: secrets.token_urlsafe(24) for user in RULES}
    for user, pw in passwords.items():
        admin.execute_command("ACL", "SETUSER", *setuser_args(user, pw))
    worker_s = s.replace(redis_url=_url(s.redis_url, "worker", passwords["worker"]))
    api_s = s.replace(redis_url=_url(s.redis_url, "api", passwords["api"]))
    names = ["acl-worker", "acl-api"]
    try:
        stk.start_process(names[0], [sys.executable, "-m", "streamscore", "worker"], worker_s.to_env(), s.run_dir)
        stk.start_process(names[1], [sys.executable, "-m", "streamscore", "serve"], api_s.to_env(), s.run_dir)
        orders = list(islice(fraud_orders(s.data_dir, since="2015-02-01"), N))
        now = time.time()
        producer = Producer({"bootstrap.servers": s.kafka_bootstrap, "linger.ms": 0})
        for o in orders:
            o = o.model_copy(update={"ts": now, "account_created_at": None})
            producer.produce(s.topic_orders, key=o.user_id.encode(), value=o.to_bytes())
        assert producer.flush(10) == 0
        verdicts = consume_all(s, s.topic_fraud_verdicts, lambda ms: len(ms) >= N, timeout_s=90)
        assert len(verdicts) == N, "\n".join(stk.log_tail(n, s.run_dir) for n in names)

        api = f"http://127.0.0.1:{s.http_port}"
        wait_healthy(api, names[1], s.run_dir)
        auth = {"Authorization": f"Bearer {s.api_token.get_secret_value()}", "Content-Type": "application/json"}
        scored = httpx.post(f"{api}/v1/fraud/score", headers=auth, timeout=5,
                            content=orders[0].model_copy(update={"order_id": "acl-http", "ts": time.time(),
                                                                 "account_created_at": None}).to_bytes())
        assert scored.status_code == 200 and scored.json()["degraded"] is False, scored.text  # features were read
        assert httpx.get(f"{api}/v1/recommendations/{orders[0].user_id}", headers=auth, timeout=5).status_code == 200
        assert "NOPERM" not in stk.log_tail(names[1], s.run_dir)

        db = int(urlsplit(s.redis_url).path.lstrip("/") or 0)
        as_api = redis.Redis.from_url(api_s.redis_url)
        as_worker = redis.Redis.from_url(worker_s.redis_url)
        writer = as_api.script_load("return redis.call('SET', 'ss:acl-probe', '1')")
        for attempt in (lambda: as_api.set("ss:acl-probe", 1), lambda: as_api.evalsha(writer, 0),
                        lambda: as_api.hset("ss:acl-probe", "f", 1)):
            with pytest.raises((NoPermissionError, ResponseError)):
                attempt()
        for client in (as_api, as_worker):
            for attempt in (lambda: client.flushdb(), lambda: client.keys("*"), lambda: client.set("outside", 1),
                            lambda: client.execute_command("CONFIG", "GET", "*")):
                with pytest.raises((NoPermissionError, ResponseError)):
                    attempt()
        assert not admin.exists("ss:acl-probe", "outside") and admin.dbsize() > 0 and db == 8
    finally:
        stk.stop_processes(names, s.run_dir)
        for user in RULES:
            admin.execute_command("ACL", "DELUSER", user)
