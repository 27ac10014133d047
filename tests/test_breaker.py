"""The Triton client's circuit breaker opens for a server that fails, not for a client that is busy.

Over a real gRPC server in this process (a fake Triton speaking the KServe v2 protocol that
answers, sleeps or fails with a chosen status): real gRPC deadlines, statuses and refused
connections reach :class:`scorers.triton.TritonScorer` as they would from tritonserver.
The rule itself is in the docstring of :mod:`scorers.triton`.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.grpc._utils import _get_inference_request

from conftest import free_port
from monitoring.metrics import Metrics
from scorers.triton import ScoringUnavailable, TritonScorer, build_request, read_response
from streamscore.settings import Settings

FAILURES = 3
TIMEOUT_MS = 200.0  # its 10% lag tolerance (20 ms) is far above the scheduling noise of a busy 2-core machine
T = TIMEOUT_MS / 1e3


class FakeTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    """``ModelInfer`` answers SCORE = 0.5 per row after ``delay`` s, or aborts with ``status``."""

    def __init__(self):
        self.delay = 0.0
        self.status: grpc.StatusCode | None = None
        self.calls = 0

    async def ModelInfer(self, request, context):
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status is not None:
            await context.abort(self.status, "injected")
        rows = request.inputs[0].shape[0]
        response = service_pb2.ModelInferResponse(model_name=request.model_name, model_version="1")
        out = response.outputs.add()
        out.name, out.datatype = "SCORE", "FP32"
        out.shape.extend([rows, 1])
        response.raw_output_contents.append(np.full((rows, 1), 0.5, np.float32).tobytes())
        return response


@pytest.fixture
async def fake():
    server = grpc.aio.server()
    servicer = FakeTriton()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    servicer.url = f"127.0.0.1:{port}"
    yield servicer
    await server.stop(None)


def scorer_for(url: str) -> TritonScorer:
    settings = Settings.from_env({}, triton_grpc_url=url, triton_timeout_ms=TIMEOUT_MS, triton_retries=0,
                                 breaker_failures=FAILURES, breaker_reset_s=60.0)
    return TritonScorer(settings, Metrics())


@pytest.fixture
async def scorer(fake):
    s = scorer_for(fake.url)
    yield s
    await s.close()


X = {"FEATURES": np.zeros((2, 21), np.float32)}


async def call(scorer: TritonScorer, deadline_s: float | None = None):
    return await scorer.infer("fraud", X, ["SCORE"], deadline_s=deadline_s, retries=0)


async def failing_calls(scorer: TritonScorer, n: int, deadline_s: float | None = None) -> None:
    for _ in range(n):
        with pytest.raises(ScoringUnavailable):
            await call(scorer, deadline_s)


def open_gauge(scorer: TritonScorer) -> float:
    return scorer.metrics.registry.get_sample_value("streamscore_triton_circuit_open", {"model": "fraud"})


async def test_answers_when_healthy(scorer):
    got = await call(scorer)
    assert got.model_version == "1" and got.outputs["SCORE"].tolist() == [[0.5], [0.5]]


@pytest.mark.parametrize("status", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.NOT_FOUND])
async def test_server_errors_open_the_breaker(fake, scorer, status):
    fake.status = status
    await failing_calls(scorer, FAILURES)
    breaker = scorer.breaker("fraud")
    assert breaker.is_open and breaker.opened == 1 and open_gauge(scorer) == 1
    calls = fake.calls
    with pytest.raises(ScoringUnavailable, match="circuit breaker open"):
        await call(scorer)
    assert fake.calls == calls  # refused without a call


async def test_connection_refused_opens_the_breaker():
    scorer = scorer_for(f"127.0.0.1:{free_port()}")
    try:
        await failing_calls(scorer, FAILURES)
        assert scorer.breaker("fraud").opened == 1
    finally:
        await scorer.close()


async def test_full_timeouts_of_a_slow_server_open_the_breaker(fake, scorer):
    fake.delay = 2 * T
    await until_open(scorer)  # each call has the whole TRITON_TIMEOUT_MS


async def test_calls_in_flight_together_through_one_stall_count_once(fake, scorer):
    fake.delay = 2 * T
    failed = await asyncio.gather(*[call(scorer) for _ in range(3 * FAILURES)], return_exceptions=True)
    assert all(isinstance(f, ScoringUnavailable) for f in failed)
    breaker = scorer.breaker("fraud")
    assert not breaker.is_open  # one stall, not 3 * FAILURES failures
    await until_open(scorer)  # the server stays stuck, call after call


async def until_open(scorer: TritonScorer) -> None:
    """Timed-out calls one after another open the breaker (a call whose timeout a busy machine
    noticed late is not counted: a few more calls may be needed)."""
    breaker = scorer.breaker("fraud")
    for _ in range(3 * FAILURES):
        if breaker.is_open:
            break
        await failing_calls(scorer, 1)
    assert breaker.is_open and breaker.opened == 1


async def test_calls_cut_short_by_the_callers_budget_never_open_it(fake, scorer):
    fake.delay = 2 * T
    await failing_calls(scorer, 3 * FAILURES, deadline_s=T / 4)
    breaker = scorer.breaker("fraud")
    assert not breaker.is_open and breaker.opened == 0 and open_gauge(scorer) == 0
    fake.delay = 0
    await call(scorer)


async def test_timeouts_noticed_late_by_a_busy_event_loop_never_open_it(fake, scorer):
    """The loop is blocked (as by a burst of other requests) past each call's deadline: the
    timeout arrives late, which tells nothing about the server."""
    fake.delay = 2 * T
    for _ in range(2 * FAILURES):  # blocked from 5 ms to T + 0.1 s: the deadline at T is seen >= 0.1 s late
        asyncio.get_running_loop().call_later(0.005, time.sleep, T + 0.1)
        with pytest.raises(ScoringUnavailable):
            await call(scorer)
    assert scorer.breaker("fraud").opened == 0


async def test_client_side_errors_never_open_it(fake, scorer):
    fake.status = grpc.StatusCode.INVALID_ARGUMENT
    await failing_calls(scorer, 2 * FAILURES)
    assert scorer.breaker("fraud").opened == 0


async def open_then_half_open(fake, scorer):
    """Open the breaker with real failures, then move its clock past ``reset_s``."""
    fake.status = grpc.StatusCode.UNAVAILABLE
    await failing_calls(scorer, FAILURES)
    breaker = scorer.breaker("fraud")
    assert breaker.is_open
    fake.status = None
    now = time.monotonic()
    breaker.clock = lambda: now + breaker.reset_s + 1
    return breaker


async def test_a_cancelled_half_open_trial_frees_the_trial_slot(fake, scorer):
    breaker = await open_then_half_open(fake, scorer)
    fake.delay = 1.0
    trial = asyncio.create_task(call(scorer))
    await asyncio.sleep(0.05)
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    fake.delay = 0
    await call(scorer)  # the next call is the new trial, and closes the breaker
    assert not breaker.is_open


async def test_a_half_open_trial_cut_short_by_the_budget_keeps_it_open_and_frees_the_slot(fake, scorer):
    breaker = await open_then_half_open(fake, scorer)
    fake.delay = 2 * T
    await failing_calls(scorer, 1, deadline_s=T / 4)
    assert breaker.is_open and breaker.opened == 1
    fake.delay = 0
    await call(scorer)
    assert not breaker.is_open


def test_request_is_what_tritonclient_sends():
    history = np.array([[b"i1", b"", b"i\xc3\xa9"]], dtype=object)
    for name, array in (("FEATURES", np.arange(42, dtype=np.float32).reshape(2, 21)), ("ITEM_HISTORY", history)):
        tensor = tc.InferInput(name, list(array.shape), "BYTES" if array.dtype == object else "FP32")
        tensor.set_data_from_numpy(array)
        theirs = _get_inference_request(model_name="m", inputs=[tensor], model_version="2", request_id="",
                                        outputs=[tc.InferRequestedOutput("A"), tc.InferRequestedOutput("B")],
                                        sequence_id=0, sequence_start=False, sequence_end=False, priority=0,
                                        timeout=None, parameters=None)
        assert build_request("m", "2", {name: array}, ["A", "B"]) == theirs


def test_response_outputs_by_name():
    response = service_pb2.ModelInferResponse(model_name="m", model_version="3")
    for name, datatype, shape, raw in (("B", "INT32", [2, 1], np.array([[1], [2]], np.int32).tobytes()),
                                       ("A", "BYTES", [1, 2], tc.serialize_byte_tensor(
                                           np.array([[b"x", b"yz"]], dtype=object)).item())):
        out = response.outputs.add()
        out.name, out.datatype = name, datatype
        out.shape.extend(shape)
        response.raw_output_contents.append(raw)
    got = read_response(response, ["A", "B"])
    assert got.model_version == "3" and got.outputs["B"].tolist() == [[1], [2]]
    assert got.outputs["A"].tolist() == [[b"x", b"yz"]]
    with pytest.raises(ValueError, match="missing"):
        read_response(response, ["C"])
