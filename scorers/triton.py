"""Async gRPC client for Triton with per-call timeouts, bounded retries and a circuit
breaker per model.

``infer`` either returns the model's outputs or raises :class:`ScoringUnavailable`
quickly: callers (stream agents, HTTP handlers) then use their documented fallback
and mark the decision ``degraded``. A call never waits longer than the ``deadline_s``
it is given, retries included.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import np_to_triton_dtype

from monitoring.metrics import Metrics
from scorers.breaker import CircuitBreaker
from streamscore.settings import Settings

log = logging.getLogger(__name__)

MAX_BATCH = 256  # = max_batch_size in triton_repo/*/config.pbtxt


class ScoringUnavailable(RuntimeError):
    """Triton could not answer in time (down, slow, breaker open, or an error)."""


@dataclass(frozen=True)
class InferResult:
    outputs: dict[str, np.ndarray]
    model_version: str


class TritonScorer:
    def __init__(self, settings: Settings, metrics: Metrics, timeout_ms: float | None = None):
        """``timeout_ms``: per-call timeout (default ``TRITON_TIMEOUT_MS``, the HTTP path's)."""
        self.settings = settings
        self.metrics = metrics
        self.timeout_s = (settings.triton_timeout_ms if timeout_ms is None else timeout_ms) / 1e3
        self.client = grpcclient.InferenceServerClient(url=settings.triton_grpc_url)
        self.breakers: dict[str, CircuitBreaker] = {}

    async def close(self) -> None:
        await self.client.close()

    def breaker(self, model: str) -> CircuitBreaker:
        if model not in self.breakers:
            self.breakers[model] = CircuitBreaker(self.settings.breaker_failures, self.settings.breaker_reset_s)
        return self.breakers[model]

    async def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str],
                    deadline_s: float | None = None, retries: int | None = None) -> InferResult:
        """Run a batched inference. ``deadline_s``: total time allowed, retries included.

        Batches larger than the models' ``max_batch_size`` (:data:`MAX_BATCH`) are split
        into concurrent requests and the outputs concatenated in order.
        """
        n = len(next(iter(inputs.values())))
        if n <= MAX_BATCH:
            return await self._infer_once(model, inputs, outputs, deadline_s, retries)
        parts = await asyncio.gather(*[
            self._infer_once(model, {k: v[i:i + MAX_BATCH] for k, v in inputs.items()}, outputs, deadline_s, retries)
            for i in range(0, n, MAX_BATCH)])
        return InferResult({o: np.concatenate([p.outputs[o] for p in parts]) for o in outputs}, parts[0].model_version)

    async def _infer_once(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str],
                          deadline_s: float | None, retries: int | None) -> InferResult:
        s = self.settings
        retries = s.triton_retries if retries is None else retries
        end = time.monotonic() + (deadline_s if deadline_s is not None else self.timeout_s * (retries + 1))
        breaker = self.breaker(model)
        last_error: Exception | None = None
        for attempt in range(retries + 1):
            remaining = end - time.monotonic()
            if remaining <= 0.001:
                break
            if not breaker.allow():
                self.metrics.breaker_open.labels(model).set(1)
                raise ScoringUnavailable(f"circuit breaker open for {model}")
            if attempt:
                self.metrics.triton_retries.labels(model).inc()
            timeout = min(self.timeout_s, remaining)
            t0 = time.perf_counter()
            try:
                result = await asyncio.wait_for(self._call(model, inputs, outputs, timeout), timeout)
            except Exception as exc:  # grpc errors, timeouts, connection refused
                last_error = exc
                breaker.record(False)
                self.metrics.triton_errors.labels(model).inc()
                self.metrics.breaker_open.labels(model).set(1 if breaker.is_open else 0)
                continue
            breaker.record(True)
            self.metrics.breaker_open.labels(model).set(0)
            self.metrics.triton_latency.labels(model).observe(time.perf_counter() - t0)
            return result
        raise ScoringUnavailable(f"{model}: {type(last_error).__name__ if last_error else 'deadline'}: {last_error}")

    async def _call(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str], timeout: float) -> InferResult:
        req = []
        for name, array in inputs.items():
            tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            req.append(tensor)
        response = await self.client.infer(
            model, req, model_version=self.settings.model_version,
            outputs=[grpcclient.InferRequestedOutput(o) for o in outputs], client_timeout=timeout)
        return InferResult({o: response.as_numpy(o) for o in outputs}, response.get_response().model_version)
