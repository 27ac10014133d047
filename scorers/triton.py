"""Async gRPC client for Triton with per-call timeouts, bounded retries and a circuit
breaker per model.

``infer`` either returns the model's outputs or raises :class:`ScoringUnavailable`
quickly: callers (stream agents, HTTP handlers) then use their documented fallback
and mark the decision ``degraded``. A call never waits longer than the ``deadline_s``
it is given, retries included: each attempt's timeout (the per-call timeout, capped by
what is left of the deadline) is the gRPC deadline, enforced by gRPC's core outside our
event loop.

What opens the breaker: a server that fails, not a client that is busy
------------------------------------------------------------------------
Every failed call is counted in ``streamscore_triton_errors_total`` and the caller falls
back, but only a failure that is the *server's* counts against the breaker
(:func:`server_failed`):

* gRPC status ``UNAVAILABLE`` (down, connection refused or reset, model not ready),
  ``INTERNAL``, ``UNKNOWN`` (the model raised), ``RESOURCE_EXHAUSTED`` (Triton's queue is full)
  or ``NOT_FOUND`` (the model or pinned ``MODEL_VERSION`` is not loaded);
* a timeout (gRPC ``DEADLINE_EXCEEDED``) of a call that had the **full** per-call timeout
  (``TRITON_TIMEOUT_MS``; the stream path's ``STREAM_TRITON_TIMEOUT_MS``) and whose expiry our
  event loop noticed within :data:`LOOP_LAG_TOLERANCE` (10%) of that timeout. A call whose
  timeout was cut short by the caller's remaining budget says nothing about the server; a
  timeout noticed later than that means our own loop was lagging (busy with other requests,
  starved of CPU), and the server may well have answered in time.

Anything else (a call cut short by the budget, a timeout noticed late, a cancelled call, a
client-side error such as ``INVALID_ARGUMENT``) leaves the breaker as it was
(:meth:`CircuitBreaker.release <scorers.breaker.CircuitBreaker.release>`: a half-open trial
slot is freed). Keep ``TRITON_TIMEOUT_MS`` below the HTTP budget (``FRAUD_BUDGET_MS`` less the
10 ms margin and the feature read: 100 < 140 by default), or HTTP timeouts never count.

Server failures count in sequence, not in parallel (``record(False, started=...)``): the calls
in flight during one stall fail together and count once. So ``TRITON_BREAKER_FAILURES`` (5)
means a Triton stuck for about five timeouts in a row (0.5 s), not a 100-200 ms hiccup that
the ~30 requests waiting at 300 requests/s saw at once. Such hiccups happen on a busy 2-core
machine (a direct gRPC probe at 300/s: 30 of 18,000 calls over 100 ms, at most 222 ms) and
used to open the breaker for ``TRITON_BREAKER_RESET_S`` (5 s, ~1,500 degraded answers).

Replicas: one channel, gRPC's round-robin balancing
------------------------------------------------------
``TRITON_GRPC_URL`` is one ``host:port``, a list ``h1:p1,h2:p2,...`` or ``dns:///name:port``
(:func:`streamscore.settings.grpc_replicas`). Every form makes **one** gRPC channel whose load
balancing policy is ``round_robin`` (service config ``{"loadBalancingConfig": [{"round_robin": {}}]}``,
:data:`CHANNEL_OPTIONS`): it keeps a connection to every address and sends each call to the next
one that is ready. A replica that goes down is dropped from the rotation as soon as its connection
breaks (the calls in flight on it fail ``UNAVAILABLE``, and the retry goes to the next one); gRPC keeps
reconnecting it with backoff and puts it back when it answers again. How the addresses are found
(:func:`channel_target`):

* ``host:port``: gRPC's DNS resolver, as before; a name with several addresses is balanced over them.
* a list: each entry resolved once, here, at start (IPv4 first; a target of one family:
  ``ipv4:a:p,b:q`` or ``ipv6:[a]:p,...``). A replica whose address changes needs a restart: use a
  list for fixed addresses.
* ``dns:///name:port``: handed to gRPC, whose DNS resolver resolves it and re-resolves it when a
  connection breaks (docker compose: the service name answers every replica's address). A replica
  added later is seen at the next re-resolution.

The circuit breaker stays **one per model over the whole replica set**: it opens when the *set*
fails (five failures in sequence: every replica down, or all of them stalling), not when one replica
dies (its failed calls are retried on the others and the next successes close the count). A replica
that is up but slow is not singled out: its timeouts count like any other.

Health (``client.is_server_ready``, the API's ``/healthz``) goes over a ``tritonclient`` channel to the
same target with the same policy: ready when the replica it reaches is (a down one is skipped). The
start-up model check (:meth:`call_each_replica`, ``scorers.fraud.check_contract``) asks **every**
replica address once, each on a channel of its own: a replica serving another model's inputs
refuses the whole service. A replica down at that moment is not checked when it returns; every
replica serves the same ``triton_repo`` (docker-compose.yml mounts one directory).

Requests are built as ``ModelInferRequest`` protobufs directly on the gRPC stub (Triton's
KServe v2 protocol, what ``tritonclient`` sends): a fifth of ``tritonclient``'s Python cost per
call (2.6 vs 12.6 us to build a fraud request). ``client`` (``tritonclient``) stays for health
and metadata calls.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import time
from dataclasses import dataclass

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import deserialize_bytes_tensor, np_to_triton_dtype, serialize_byte_tensor, triton_to_np_dtype

from monitoring.metrics import Metrics
from scorers.breaker import CircuitBreaker
from streamscore.settings import GRPC_DNS, Settings, grpc_replicas

log = logging.getLogger(__name__)

MAX_BATCH = 256  # = max_batch_size in triton_repo/*/config.pbtxt
# A timeout counts against the breaker only if noticed within this share of the timeout
# after it expired (later: our event loop was lagging, not the server).
LOOP_LAG_TOLERANCE = 0.1
# gRPC statuses that mean the server (not our request) failed.
SERVER_FAILURE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.NOT_FOUND})
MAX_MESSAGE_BYTES = 2**31 - 1  # as tritonclient: batches of 256 recommendation histories fit
# Every channel to Triton: large messages, round-robin over the replicas, no service config from DNS TXT.
CHANNEL_OPTIONS = (("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
                   ("grpc.service_config_disable_resolution", 1))


class ScoringUnavailable(RuntimeError):
    """Triton could not answer in time (down, slow, breaker open, or an error)."""


@dataclass(frozen=True)
class InferResult:
    outputs: dict[str, np.ndarray]
    model_version: str


def server_failed(exc: BaseException, timeout_s: float, full_timeout_s: float, elapsed_s: float) -> bool:
    """True if ``exc``, raised by a call given ``timeout_s`` (``full_timeout_s`` uncapped) that
    ended ``elapsed_s`` after it started, is the server's failure (see the module docstring).

    >>> class Rpc(grpc.RpcError):
    ...     def __init__(self, code): self._code = code
    ...     def code(self): return self._code
    >>> S = grpc.StatusCode
    >>> [server_failed(Rpc(c), 0.1, 0.1, 0.001) for c in (S.UNAVAILABLE, S.INTERNAL, S.INVALID_ARGUMENT, S.CANCELLED)]
    [True, True, False, False]
    >>> server_failed(ConnectionRefusedError(), 0.1, 0.1, 0.0)
    True

    A timeout counts only with the full timeout, noticed on time:

    >>> late = Rpc(S.DEADLINE_EXCEEDED)
    >>> server_failed(late, 0.1, 0.1, 0.102), server_failed(late, 0.04, 0.1, 0.041), server_failed(late, 0.1, 0.1, 0.15)
    (True, False, False)
    """
    code = exc.code() if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)) else None
    if code == grpc.StatusCode.DEADLINE_EXCEEDED or isinstance(exc, asyncio.TimeoutError):
        return timeout_s >= full_timeout_s and elapsed_s - timeout_s <= LOOP_LAG_TOLERANCE * timeout_s
    if code is not None:
        return code in SERVER_FAILURE_CODES
    return isinstance(exc, ConnectionError)


def _describe(exc: BaseException) -> str:
    code = exc.code() if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)) else None
    return f"gRPC {code.name}" if code is not None else type(exc).__name__


def build_request(model: str, version: str, inputs: dict[str, np.ndarray],
                  outputs: list[str]) -> service_pb2.ModelInferRequest:
    """The ``ModelInferRequest`` ``tritonclient`` would send for these inputs and outputs."""
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    for name, array in inputs.items():
        tensor = request.inputs.add()
        tensor.name = name
        tensor.datatype = np_to_triton_dtype(array.dtype)
        tensor.shape.extend(array.shape)
        if tensor.datatype == "BYTES":
            serialized = serialize_byte_tensor(array)
            request.raw_input_contents.append(serialized.item() if serialized.size > 0 else b"")
        else:
            request.raw_input_contents.append(array.tobytes())
    for name in outputs:
        request.outputs.add().name = name
    return request


def read_response(response: service_pb2.ModelInferResponse, outputs: list[str]) -> InferResult:
    """The requested outputs of a ``ModelInferResponse`` as numpy arrays (``BYTES`` as object arrays)."""
    found = {}
    for tensor, raw in zip(response.outputs, response.raw_output_contents):
        if tensor.datatype == "BYTES":
            array = deserialize_bytes_tensor(raw)
        else:
            array = np.frombuffer(raw, dtype=triton_to_np_dtype(tensor.datatype))
        found[tensor.name] = array.reshape(tuple(tensor.shape))
    missing = [o for o in outputs if o not in found]
    if missing:
        raise ValueError(f"{response.model_name}: outputs {missing} missing from the response")
    return InferResult({o: found[o] for o in outputs}, response.model_version)


def _resolve(entry: str) -> list[tuple[int, str]]:
    """``(family, "ip:port" or "[ip]:port")`` of every address of ``host:port`` (IPv4 ones first)."""
    host, _, port = entry.rpartition(":")
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
        return [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, _address(str(ip), port))]
    except ValueError:
        pass
    found = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    out = list(dict.fromkeys((fam, _address(addr[0], port)) for fam, _, _, _, addr in found
                             if fam in (socket.AF_INET, socket.AF_INET6)))
    v4 = [a for a in out if a[0] == socket.AF_INET]
    return v4 or out


def _address(ip: str, port: str) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def replica_addresses(setting: str) -> list[str]:
    """Every replica address of ``TRITON_GRPC_URL`` (``ip:port``; a name resolved now, each of its
    addresses a replica; IPv4 preferred). A name that does not resolve raises ``OSError``.

    >>> replica_addresses("127.0.0.1:1, 127.0.0.2:1"), replica_addresses("dns:///127.0.0.1:5")
    (['127.0.0.1:1', '127.0.0.2:1'], ['127.0.0.1:5'])
    """
    return list(dict.fromkeys(a for entry in grpc_replicas(setting) for _, a in _resolve(entry)))


def channel_target(setting: str) -> str:
    """The gRPC target of ``TRITON_GRPC_URL``: ``host:port`` and ``dns:///host:port`` as they are (gRPC's
    DNS resolver), a list resolved now into ``ipv4:a:p,b:q`` (or ``ipv6:[a]:p,...``). Raises
    ``ValueError`` for a list that mixes IPv4-only and IPv6-only replicas (a gRPC target takes one family).

    >>> channel_target("127.0.0.1:1,127.0.0.2:1"), channel_target("[::1]:1,[::1]:2"), channel_target("dns:///t:1")
    ('ipv4:127.0.0.1:1,127.0.0.2:1', 'ipv6:[::1]:1,[::1]:2', 'dns:///t:1')
    """
    entries = grpc_replicas(setting)
    if setting.startswith(GRPC_DNS) or len(entries) == 1:
        return setting
    resolved = [_resolve(e) for e in entries]
    families = {fam for addrs in resolved for fam, _ in addrs[:1]}
    if len(families) > 1:
        raise ValueError(f"TRITON_GRPC_URL={setting!r} mixes IPv4 and IPv6 replicas: a gRPC target takes one family")
    scheme = "ipv6:" if families == {socket.AF_INET6} else "ipv4:"
    return scheme + ",".join(dict.fromkeys(a for addrs in resolved for _, a in addrs))


class TritonScorer:
    def __init__(self, settings: Settings, metrics: Metrics, timeout_ms: float | None = None):
        """``timeout_ms``: per-call timeout (default ``TRITON_TIMEOUT_MS``, the HTTP path's).
        ``TRITON_GRPC_URL`` may name several replicas (the module docstring): one balanced channel."""
        self.settings = settings
        self.metrics = metrics
        self.timeout_s = (settings.triton_timeout_ms if timeout_ms is None else timeout_ms) / 1e3
        self.target = channel_target(settings.triton_grpc_url)
        # health, metadata: tritonclient over the same replicas and policy
        self.client = grpcclient.InferenceServerClient(url=self.target, channel_args=list(CHANNEL_OPTIONS))
        self._channel = grpc.aio.insecure_channel(self.target, options=list(CHANNEL_OPTIONS))
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self.breakers: dict[str, CircuitBreaker] = {}

    async def close(self) -> None:
        await self._channel.close()
        await self.client.close()

    async def call_each_replica(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str],
                                timeout_s: float) -> dict[str, InferResult | Exception]:
        """One inference on every replica address (:func:`replica_addresses`, resolved now), each on a
        short-lived channel of its own, outside the breaker: address -> its result or its error. For the
        start-up model check; scoring goes through the balanced channel (:meth:`infer`)."""
        addresses = replica_addresses(self.settings.triton_grpc_url)

        async def one(address: str) -> InferResult | Exception:
            async with grpc.aio.insecure_channel(address, options=list(CHANNEL_OPTIONS[:2])) as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                request = build_request(model, self.settings.model_version, inputs, outputs)
                try:
                    return read_response(await stub.ModelInfer(request, timeout=timeout_s), outputs)
                except Exception as exc:  # down, loading, a model without these outputs
                    return exc

        return dict(zip(addresses, await asyncio.gather(*(one(a) for a in addresses))))

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
        end = None if deadline_s is None else time.monotonic() + deadline_s  # None: each attempt gets the full timeout
        breaker = self.breaker(model)
        last_error: Exception | None = None
        for attempt in range(retries + 1):
            remaining = self.timeout_s if end is None else end - time.monotonic()
            if remaining <= 0.001:
                break
            if not breaker.allow():
                self.metrics.breaker_open.labels(model).set(1)
                raise ScoringUnavailable(f"circuit breaker open for {model}")
            if attempt:
                self.metrics.triton_retries.labels(model).inc()
            timeout = min(self.timeout_s, remaining)
            t0, started = time.monotonic(), breaker.clock()
            try:
                result = await self._call(model, inputs, outputs, timeout)
            except Exception as exc:  # grpc errors, timeouts, connection refused
                last_error = exc
                elapsed = time.monotonic() - t0
                if server_failed(exc, timeout, self.timeout_s, elapsed):
                    opened = breaker.opened
                    breaker.record(False, started=started)
                    if breaker.opened > opened:
                        log.warning("circuit breaker for %s opened for %.0f s: %s after %.1f ms (timeout %.1f ms)",
                                    model, breaker.reset_s, _describe(exc), elapsed * 1e3, timeout * 1e3)
                else:  # cut short by our budget, our loop lagging, or our own error: not the server's fault
                    breaker.release(started=started)
                self.metrics.triton_errors.labels(model).inc()
                self.metrics.breaker_open.labels(model).set(1 if breaker.is_open else 0)
                continue
            except BaseException:  # cancelled by the caller: tells nothing about the server
                breaker.release(started=started)
                raise
            breaker.record(True)
            self.metrics.breaker_open.labels(model).set(0)
            self.metrics.triton_latency.labels(model).observe(time.monotonic() - t0)
            return result
        raise ScoringUnavailable(f"{model}: {_describe(last_error) if last_error else 'deadline'}")

    async def _call(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str], timeout: float) -> InferResult:
        request = build_request(model, self.settings.model_version, inputs, outputs)
        return read_response(await self._stub.ModelInfer(request, timeout=timeout), outputs)
