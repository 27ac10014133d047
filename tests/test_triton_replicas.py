"""Triton replicas behind one client (issue 14): ``TRITON_GRPC_URL`` as one ``host:port``, a list of
replicas or ``dns:///name:port`` (streamscore.settings.grpc_replicas), one round-robin gRPC channel over
them (scorers.triton).

The setting's parsing is checked on good and hostile values; then, over two real tritonservers
serving the same fraud model, that calls are spread over both (each server's own
``nv_inference_request_success``), that the start-up model check asks each replica, and that after
one replica is SIGKILLed scoring goes on on the other without ``ScoringUnavailable`` and without
opening the breaker (one breaker per model over the whole replica set).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from features.definitions import FRAUD_VECTOR
from monitoring.metrics import Metrics
from scorers.fraud import FraudScorer
from scorers.triton import InferResult, ScoringUnavailable, TritonScorer, channel_target, replica_addresses
from streamscore import stack as stk
from streamscore.settings import MAX_GRPC_REPLICAS, Settings, SettingsError, grpc_replicas

# --- the setting ---------------------------------------------------------------------------------

GOOD = {
    "triton:8001": ["triton:8001"],
    "127.0.0.1:18001": ["127.0.0.1:18001"],
    "10.0.0.1:8001,10.0.0.2:8001": ["10.0.0.1:8001", "10.0.0.2:8001"],
    " a:1 , b:2 ": ["a:1", "b:2"],                     # spaces around entries: normalised away
    "[::1]:8001,[::1]:8002": ["[::1]:8001", "[::1]:8002"],
    "dns:///triton:8001": ["triton:8001"],
    "dns:///triton.prod.svc.cluster.local:8001": ["triton.prod.svc.cluster.local:8001"],
    ",".join(f"h{i}:1" for i in range(MAX_GRPC_REPLICAS)): [f"h{i}:1" for i in range(MAX_GRPC_REPLICAS)],
}


@pytest.mark.parametrize("value, entries", GOOD.items(), ids=lambda v: str(v)[:40])
def test_good_triton_grpc_urls_parse(value, entries):
    s = Settings.from_env({"TRITON_GRPC_URL": value})
    assert grpc_replicas(s.triton_grpc_url) == entries
    assert s.triton_grpc_url == (value if value.startswith("dns:") else ",".join(entries))


HOSTILE = {
    ",": "entry 1 ('') is not host:port",
    "a:1,": "entry 2 ('') is not host:port",
    "a:1,,b:2": "entry 2 ('') is not host:port",
    "a:1,a:1": "replica a:1 listed twice",
    "a:1, a:1": "replica a:1 listed twice",
    "a": "entry 1 ('a') is not host:port",
    "a:0": "entry 1 ('a:0') is not host:port",
    "a:65536": "is not host:port",
    "a:-1": "is not host:port",
    "a:1/models": "is not host:port",
    "a:1?x=1": "is not host:port",
    "user:pw@a:1": "is not host:port",
    "a b:1": "is not host:port",
    "a:1;b:2": "is not host:port",
    "a\x00:1": "is not host:port",
    "http://a:1": "only dns:///host:port is accepted",
    "grpc://a:1": "only dns:///host:port is accepted",
    "ipv4:10.0.0.1:1,10.0.0.2:1": "only dns:///host:port is accepted",
    "unix:/tmp/triton.sock": "only dns:///host:port is accepted",
    "dns:///": "expected dns:///host:port",
    "dns:///a": "expected dns:///host:port",
    "dns://8.8.8.8/a:1": "expected dns:///host:port",        # an authority (a DNS server): not ours to pick
    "dns:a:1": "expected dns:///host:port",
    "dns:///a:1,b:2": "expected dns:///host:port",
    "dns:///a:1\n": "expected dns:///host:port",
    "dns:///a:1/x": "expected dns:///host:port",
    ",".join(f"h{i}:1" for i in range(MAX_GRPC_REPLICAS + 1)): f"at most {MAX_GRPC_REPLICAS}",
}


@pytest.mark.parametrize("value, reason", HOSTILE.items(), ids=lambda v: repr(v)[:40])
def test_hostile_triton_grpc_urls_are_refused_naming_the_variable(value, reason):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"TRITON_GRPC_URL": value})
    assert str(err.value).startswith("TRITON_GRPC_URL="), err.value
    assert reason in str(err.value), err.value


def test_channel_target_is_one_round_robin_target_per_form():
    assert channel_target("triton:8001") == "triton:8001"          # gRPC's DNS resolver, all its addresses
    assert channel_target("dns:///triton:8001") == "dns:///triton:8001"
    assert channel_target("127.0.0.1:1,127.0.0.2:2") == "ipv4:127.0.0.1:1,127.0.0.2:2"
    assert channel_target("localhost:1,127.0.0.2:2") == "ipv4:127.0.0.1:1,127.0.0.2:2"  # names resolved, IPv4 first
    assert channel_target("[::1]:1,[::1]:2") == "ipv6:[::1]:1,[::1]:2"
    with pytest.raises(ValueError, match="mixes IPv4 and IPv6"):
        channel_target("127.0.0.1:1,[::1]:2")
    assert replica_addresses("localhost:7,127.0.0.1:7") == ["127.0.0.1:7"]  # the same replica once
    with pytest.raises(OSError):
        replica_addresses("no-such-host.invalid:1,127.0.0.1:2")


def test_a_replica_list_is_never_started_by_the_local_stack(tmp_path):
    """``stack up`` starts one local tritonserver for a single loopback URL; replicas are started elsewhere."""
    one = Settings.from_env({}, run_dir=str(tmp_path))
    assert stk.LocalStack(one).is_local("triton")
    for url in ("127.0.0.1:18001,127.0.0.1:18011", "dns:///127.0.0.1:18001"):
        assert not stk.LocalStack(one.replace(triton_grpc_url=url)).is_local("triton"), url


# --- two real replicas ------------------------------------------------------------------------------

ROWS = 8
TIMEOUT_MS = 2000.0   # a busy 2-core machine: no timeout may stand in for a dead replica
SETTLE_S = 1.0        # after the kill: calls in flight on the killed replica may fail (and be retried)


def request_success(metrics_url: str, model: str = "fraud") -> float:
    """``nv_inference_request_success`` of ``model`` on one tritonserver (every version)."""
    text = urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=5).read().decode()
    return sum(float(m.group(1)) for m in re.finditer(
        r'^nv_inference_request_success\{[^}]*model="%s"[^}]*\} (\S+)$' % model, text, re.M))


async def counted_since(metrics_urls: list[str], before: list[float], want: float, timeout_s: float = 5.0) -> list[float]:
    """Successful requests each replica counted since ``before``, read again (every 0.1 s, up to ``timeout_s``)
    while their sum is below ``want``: Triton counts a request when it is released, which can be just after
    its answer reached the client. A count above ``want`` comes back at once (the caller's check sees it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = [request_success(m) - b for m, b in zip(metrics_urls, before)]
        if sum(got) >= want or time.monotonic() >= deadline:
            return got
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    """Two tritonservers over one copy of the fraud model (the other models are not needed):
    ``(settings of the pair, [(name, run dir, metrics url)] per replica)``; both stopped after."""
    root = tmp_path_factory.mktemp("replicas")
    repo = root / "repo"
    shutil.copytree(Path(Settings().triton_repo) / "fraud", repo / "fraud")
    servers, grpc_urls = [], []
    from conftest import free_ports

    ports = free_ports(6)
    for i in range(2):
        http, grpc, metrics = ports[3 * i:3 * i + 3]
        s = Settings.from_env({}, run_dir=str(root / f"run-{i}"), triton_repo=str(repo),
                              triton_http_url=f"127.0.0.1:{http}", triton_grpc_url=f"127.0.0.1:{grpc}",
                              triton_metrics_url=f"127.0.0.1:{metrics}")
        argv, env = stk.LocalStack(s)._argv("triton")  # each its own run dir: its own copy of the backends
        stk.start_process(f"replica-{i}", argv, env, s.run_dir)
        servers.append((f"replica-{i}", s.run_dir, s.triton_metrics_url, s.triton_http_url))
        grpc_urls.append(s.triton_grpc_url)
    try:
        t0 = time.monotonic()
        for name, run_dir, _, http_url in servers:
            stk.wait_triton(http_url, 180, lambda n=name, d=run_dir: _alive(n, d))
        print(f"two replicas ready in {time.monotonic() - t0:.1f} s")
        pair = Settings.from_env({}, triton_grpc_url=",".join(grpc_urls), triton_timeout_ms=TIMEOUT_MS,
                                 triton_retries=1, breaker_failures=5, breaker_reset_s=30.0, dev_mode=True)
        yield pair, [(n, d, m) for n, d, m, _ in servers]
    finally:
        for name, run_dir, _, _ in servers:
            stk.stop_processes([name], run_dir)


def _alive(name: str, run_dir: str) -> None:
    if not stk.process_alive(name, run_dir):
        raise stk.StackError(f"{name} died:\n{stk.log_tail(name, run_dir)}")


async def score(scorer: TritonScorer, rng: np.random.Generator) -> InferResult:
    x = rng.normal(size=(ROWS, len(FRAUD_VECTOR))).astype(np.float32)
    result = await scorer.infer("fraud", {"FEATURES": x}, ["SCORE"])
    assert result.outputs["SCORE"].shape[0] == ROWS
    assert np.all((result.outputs["SCORE"] >= 0) & (result.outputs["SCORE"] <= 1))
    return result


@pytest.mark.stack
async def test_two_replicas_share_the_calls_and_one_killed_is_skipped(replicas):
    pair, servers = replicas
    (_, _, metrics_a), (name_b, run_b, metrics_b) = servers
    scorer = TritonScorer(pair, Metrics())
    rng = np.random.default_rng(14)
    try:
        assert scorer.target.startswith("ipv4:") and scorer.target.count(",") == 1
        # the start-up model check asks each replica, on its own channel
        each = await scorer.call_each_replica("fraud", {"FEATURES": np.zeros((1, len(FRAUD_VECTOR)), np.float32)},
                                              ["META"], 10.0)
        assert len(each) == 2 and all(isinstance(r, InferResult) for r in each.values()), each
        fraud = FraudScorer(scorer, pair)
        meta = await fraud.check_contract(timeout_s=10.0)
        assert meta is not None and meta["features"] == list(FRAUD_VECTOR)
        assert await scorer.client.is_server_ready()  # health over the balanced channel

        before = [request_success(m) for m in (metrics_a, metrics_b)]
        calls = 200
        for _ in range(calls):
            await score(scorer, rng)
        served = await counted_since([metrics_a, metrics_b], before, calls)
        assert sum(served) == calls, served
        assert min(served) >= 0.3 * calls, f"round robin should spread the calls: {served}"

        # SIGKILL replica b (its whole process group: the python-backend stubs too); nothing brings it back
        pid, _ = stk.read_pid(name_b, run_b)
        os.killpg(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        a_before = request_success(metrics_a)
        unavailable_in_settle, settle_calls = 0, 0
        while time.monotonic() - killed_at < SETTLE_S:
            settle_calls += 1
            try:
                await score(scorer, rng)
            except ScoringUnavailable:
                unavailable_in_settle += 1
        after_calls, unavailable_after = 200, 0
        for _ in range(after_calls):
            try:
                await score(scorer, rng)
            except ScoringUnavailable:
                unavailable_after += 1
        a_served, = await counted_since([metrics_a], [a_before], settle_calls - unavailable_in_settle + after_calls)
        breaker = scorer.breaker("fraud")
        print(json.dumps({"before_kill_served_per_replica": served, "settle_s": SETTLE_S,
                          "settle_calls": settle_calls, "unavailable_in_settle": unavailable_in_settle,
                          "after_settle_calls": after_calls, "unavailable_after_settle": unavailable_after,
                          "survivor_served_after_kill": a_served, "breaker_opened": breaker.opened}))
        assert unavailable_after == 0, "scoring must continue on the surviving replica"
        assert a_served == settle_calls - unavailable_in_settle + after_calls, "every call after the kill went to a"
        assert not breaker.is_open and breaker.opened == 0, "one replica down must not open the set's breaker"
        with pytest.raises(OSError):  # b is really gone
            urllib.request.urlopen(f"http://{metrics_b}/metrics", timeout=2)
        # a restart with one replica down: the model check passes on the one that answers
        assert await FraudScorer(scorer, pair).check_contract(timeout_s=5.0) is not None
    finally:
        await scorer.close()
    # the dns:/// form reaches a replica through gRPC's own resolver (and tritonclient's channel too)
    survivor = grpc_replicas(pair.triton_grpc_url)[0]
    by_name = TritonScorer(pair.replace(triton_grpc_url=f"dns:///localhost:{survivor.rsplit(':', 1)[1]}"), Metrics())
    try:
        assert by_name.target.startswith("dns:///localhost:")
        await score(by_name, rng)
        assert await by_name.client.is_server_ready()
    finally:
        await by_name.close()
