"""POST /v1/fraud/score under concurrent load, Triton healthy: the circuit breaker never opens.

The service runs in this process (uvicorn in a thread, with the options ``run_server`` uses)
over the session's real stack (Valkey, tritonserver), so the test can read the breaker
itself. Concurrent clients send real orders (e-commerce fraud purchases) back to back and
keep its event loop busy; the client shares the process (and its GIL) on purpose: a busy
client. Answers that are late or fall back (``degraded``) because the *service* is busy, or
because its budget left Triton too little time, must never open the breaker, whose job is a
*Triton* that fails (scorers/triton.py). With a tight budget (15 ms for the feature read and
Triton together) most Triton calls are cut short by the budget: counting those as failures
opened the breaker within the first requests. No wall-clock timing is asserted.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
import uvicorn

from conftest import free_port, isolated
from replay.sources import fraud_orders
from serving.app import create_app, server_options
from streamscore.events import FraudVerdict

pytestmark = pytest.mark.stack

REQUESTS, CLIENTS = 600, 40


@pytest.fixture(scope="module", params=[None, 25.0], ids=["default-budget", "tight-budget"])
def service(stack_settings, request):
    budget = {} if request.param is None else {"fraud_budget_ms": request.param}
    s = isolated(stack_settings, "httpload", 13, http_port=free_port(), **budget)
    app = create_app(s)
    server = uvicorn.Server(uvicorn.Config(app, **server_options(s)))
    thread = threading.Thread(target=server.run, name="http-service", daemon=True)
    thread.start()
    end = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < end, "the HTTP service did not start"
        time.sleep(0.05)
    try:
        yield s, app, f"http://127.0.0.1:{s.http_port}"
    finally:
        server.should_exit = True
        thread.join(15)


async def test_concurrent_load_with_triton_healthy_never_opens_the_breaker(service):
    s, app, base = service
    todo = [o.to_bytes() for o in fraud_orders(s.data_dir, limit=REQUESTS)]
    headers = {"Authorization": f"Bearer {s.api_token.get_secret_value()}", "Content-Type": "application/json"}
    replies = []
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60,
                                 limits=httpx.Limits(max_connections=CLIENTS)) as http:
        async def client():
            while todo:
                replies.append(await http.post("/v1/fraud/score", content=todo.pop()))

        await asyncio.gather(*[client() for _ in range(CLIENTS)])
        metrics = (await http.get("/metrics")).text
    assert [r.status_code for r in replies] == [200] * REQUESTS, next(r.text for r in replies if r.status_code != 200)
    verdicts = [FraudVerdict.model_validate_json(r.content) for r in replies]
    scored = [v for v in verdicts if not v.degraded]
    assert scored and all(v.model_version.startswith("fraud:") for v in scored)  # Triton answered

    breaker = app.state.deps["triton"].breakers["fraud"]
    failed = [line for line in metrics.splitlines() if line.startswith("streamscore_triton_errors_total{")]
    assert breaker.opened == 0 and not breaker.is_open, \
        f"breaker opened: {len(verdicts) - len(scored)} degraded answers, {failed}"
    assert 'streamscore_triton_circuit_open{model="fraud"} 0.0' in metrics
