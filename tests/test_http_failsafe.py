"""Checkout when a dependency is down, over real servers: ``POST /v1/fraud/score`` answers, marked
degraded, and an order that scores ``decline`` with its features never comes back ``approve``.

The HTTP service runs over a Valkey of its own (stopped mid-test) and the session's Triton; a
second service points at a Triton that is not running. Orders on a device shared by 25 accounts
score 1.0 with their features (decline); with Redis down only their own fields count and the
verdict is at least FRAUD_DEGRADED_FLOOR (review). The latency each answer reports is printed
(the budget is enforced by construction: the feature read and the Triton call get what is left
of FRAUD_BUDGET_MS); tests never assert wall-clock timings.
"""

from __future__ import annotations

import asyncio
import sys
import time

import httpx
import pytest

from conftest import free_port, free_ports, wait_healthy
from features.client import FeatureClient
from streamscore import stack as stk
from streamscore.events import FraudVerdict, Order

pytestmark = pytest.mark.stack

HOT_USERS = 25


def _hot_orders(now: float, n: int) -> list[Order]:
    return [Order(order_id=f"hot-{i}", user_id=f"hot-user-{i}", amount=30.0, device_id="hot-device", ip="10.0.0.9",
                  ts=now - 600 + i) for i in range(n)]


def _score(base: str, token: str, orders: list[Order]) -> list[FraudVerdict]:
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=10) as http:
        out = []
        for o in orders:
            r = http.post("/v1/fraud/score", content=o.to_bytes(), headers={"Content-Type": "application/json"})
            assert r.status_code == 200, r.text
            out.append(FraudVerdict.model_validate(r.json()))
        return out


def test_checkout_fails_safe_with_redis_or_triton_down(stack_settings, tmp_path):
    base_s = stack_settings
    redis_port = free_port()
    s = base_s.replace(redis_url=f"redis://127.0.0.1:{redis_port}/0", http_port=free_port(), run_dir=str(tmp_path))
    argv, env = stk.LocalStack(s)._argv("redis")
    stk.start_process("failsafe-redis", argv, {**env}, s.run_dir)
    stk.wait_redis(s.redis_url, 20)
    now = time.time()
    history, probe = _hot_orders(now, HOT_USERS), Order(order_id="probe", user_id="new-user", amount=30.0,
                                                         device_id="hot-device", ip="10.0.0.9", ts=now)

    async def seed():
        fc = FeatureClient.connect(s)
        try:
            await fc.apply_orders(history)  # 25 accounts on one device, as the stream records them
        finally:
            await fc.close()
    asyncio.run(seed())

    dead_http, dead_grpc, dead_metrics = free_ports(3)
    no_triton = s.replace(http_port=free_port(), triton_grpc_url=f"127.0.0.1:{dead_grpc}",
                        triton_http_url=f"127.0.0.1:{dead_http}", triton_metrics_url=f"127.0.0.1:{dead_metrics}")
    serve = [sys.executable, "-m", "streamscore", "serve"]
    stk.start_process("failsafe-api", serve, s.to_env(), s.run_dir)
    stk.start_process("failsafe-api-no-triton", serve, no_triton.to_env(), s.run_dir)
    try:
        up, no_model = f"http://127.0.0.1:{s.http_port}", f"http://127.0.0.1:{no_triton.http_port}"
        wait_healthy(up, "failsafe-api", s.run_dir)
        wait_healthy(no_model, "failsafe-api-no-triton", s.run_dir)

        healthy = _score(up, s.api_token.get_secret_value(), [probe])[0]
        assert healthy.verdict == "decline" and not healthy.degraded, healthy  # with its features

        no_triton_v = _score(no_model, s.api_token.get_secret_value(), [probe] * 5)  # the rules decide, with the features
        assert all(v.degraded and v.verdict != "approve" for v in no_triton_v), no_triton_v

        stk.stop_process("failsafe-redis", s.run_dir)  # Redis stopped under the running service
        assert httpx.get(f"{up}/healthz", timeout=5).status_code == 503
        no_redis_v = _score(up, s.api_token.get_secret_value(), [probe] * 5)
        assert all(v.degraded and v.verdict != "approve" for v in no_redis_v), no_redis_v
        assert all(v.verdict == s.fraud_degraded_floor for v in no_redis_v)  # only its own fields: the floor
        both_v = _score(no_model, s.api_token.get_secret_value(), [probe] * 5)  # neither features nor model
        assert all(v.degraded and v.verdict != "approve" for v in both_v), both_v
    finally:
        stk.stop_processes(["failsafe-api", "failsafe-api-no-triton", "failsafe-redis"], s.run_dir)
    for name, vs in (("Triton down", no_triton_v), ("Redis down", no_redis_v), ("both down", both_v)):
        print(f"\n{name}: verdicts {sorted({v.verdict for v in vs})}, latency_ms "
              f"{', '.join(f'{v.latency_ms:.1f}' for v in vs)} (budget {s.fraud_budget_ms:g} ms)")
