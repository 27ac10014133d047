"""Verdict latency benchmark (issue 12 acceptance): the broker's floor, produce -> verdict through
the fraud worker with and without clicks flowing, and ``POST /v1/fraud/score`` under open-loop load.

    .venv/bin/python bench/bench_verdicts.py                 # every phase, ~8 min
    .venv/bin/python bench/bench_verdicts.py --seconds 5 --phases floor,stream --rates 500
    options: --seconds 10 --warmup 2 --rates 100,500,1000 --clicks-order-rate 500 --click-rate 5000
             --http-rate 300 --roles fraud,clicks --fetch-wait-ms N --batch-max N
             --floor-batching first|window --receiver-fetch-wait-ms 5 --linger-ms 0
             --worker-env NAME=VALUE --phases floor,stream,clicks,generator,http --keep-run-dir
    (internal: ``bench_verdicts.py passthrough ...`` and ``bench_verdicts.py drain``, the floors' processes)

Phases (interleaved, so a floor and the stream figure it is compared with run minutes apart):

1. **floor** at each rate: a pass-through process (``bench_verdicts.py passthrough``) copies every
   order to ``<orders>-copy`` keyed by order id and does nothing else, configured like the fraud
   worker's confluent-kafka consumer: ``fetch.wait.max.ms`` = ``--fetch-wait-ms`` (default: the
   tree's ``FRAUD_FETCH_MAX_WAIT_MS`` where the fraud role has one, else ``KAFKA_FETCH_MAX_WAIT_MS``),
   batches of up to ``--batch-max`` taken as soon as one message is there with whatever else is
   already fetched (``--floor-batching first``, as the fraud role does; ``window`` waits up to
   ``WORKER_BATCH_WITHIN_S`` to fill a batch as ``streams/batch_consumer.py`` does: measured +25-30
   ms p50, because ``consume(n, timeout)`` waits the whole timeout unless n arrive), outputs acked
   (``acks=all``) before the offsets are committed. So producer -> broker -> consumer -> producer
   -> broker -> receiver, the two hops of a verdict without any work. Also at the clicks phase's
   order rate with the clicks published (nobody consumes them): the floor the issue compares phase 3
   with; and once more with the clicks also consumed by a process that does no work with them
   (``bench_verdicts.py drain``: the clicks role's consumer, offsets committed): what the broker
   alone does to order latency while it serves a click consumer as well.
2. **stream** at each rate (default 100, 500, 1,000 orders/s): the worker process(es)
   (``python -m streamscore worker --role R`` per role of ``--roles``; plain ``worker`` when the
   CLI has no ``--role`` yet, detected with ``worker --help``), produce -> verdict received.
3. **clicks**: the same at 500 orders/s while 5,000 clicks/s flow on the clicks topic. Stream rows
   also give the verdicts' own ``latency_ms`` (send -> decided, before the verdict is stored and
   produced) and the fraud worker's mean Redis round trip, Triton call and send -> features read
   over the paced window (its /metrics, read before and after): where the time goes.
4. **generator**: the HTTP load generator (``bench/http_load.py``) against a trivial server
   (answers at once): its own ceiling (closed loop) and what it adds at the HTTP rate.
5. **http**: ``python -m streamscore serve``, ``POST /v1/fraud/score`` open loop at 300 requests/s,
   Triton healthy, features of 10,000 earlier real orders in Valkey.

Each phase runs on a **fresh local stack** (new broker, Valkey and tritonserver on free ports,
new run dir): Tansu keeps every record batch in memory and its fetch cost grows with the batches
stored in a partition, so a broker that lived through an earlier phase (~30,000 orders, 150,000
clicks) would inflate the next phase's latencies (../shared/notes/local-stack.md); a fresh Valkey
also keeps one phase's features from changing the next one's work. The floor phases start only
the broker, all they use. Prometheus is not started: it is not on the measured path and, scraping
every second, would take CPU from the 2 cores. Child processes get ``PYTHONPATH`` = this tree, so
they run this tree's code even where the venv's editable install points at another work tree.

Measurement: one process sends and receives. A paced producer (confluent-kafka, ``linger.ms`` =
``--linger-ms``, default 0) sleeps to a fixed schedule and records ``time.time()`` just before
each ``produce()``; a receiver thread (confluent-kafka, partitions assigned directly, ``poll``
per message, ``fetch.wait.max.ms`` = ``--receiver-fetch-wait-ms``, default 5: the local broker
holds a fetch for up to that long, so it is the resolution of the measurement, the same in floor
and stream figures; a shorter wait costs the broker more CPU) records ``time.time()`` when each
message arrives and matches it by key (order id). Latency = receipt - send. The first
``--warmup`` seconds of each phase are sent but not counted; ``lost`` = counted orders with no
verdict once none came for 15 s after the last send (at most 120 s). Before a phase, probe
orders go out until one comes back, so the worker's start-up and group join are not measured
(a process that exits during start-up is restarted at most twice, and the reason recorded); in
the clicks phase the click consumer must have committed clicks, and gets up to 20 s to catch up
with the feed (its lag at the start and the clicks/s it consumed are recorded). CPU cores used by
each process (process groups from /proc: tritonserver's stubs included) and by the bench itself
are recorded while the orders go out; ``os.getloadavg()`` before and after each phase.

Data: orders are real e-commerce fraud purchases from February 2015 on (``replay.sources.
fraud_orders``; the January fraud wave, 77% fraud, left out; ~42,000, cycled if a phase needs more),
each with an order id unique to this run and phase and ``ts`` = the send time; the other
fields are the purchase's own, except ``account_created_at``, shifted with ``ts`` so that the
real signup-to-purchase gap is kept (a 2015 signup would otherwise look 10 years old).
Clicks are real Taobao clicks (``taobao_clicks``, cycled) with a unique ``event_id`` (so the
worker's once-per-event counting does real work) and ``ts`` = now, paced in 10 ms ticks.

Prints a table, one JSON line with every figure, and writes bench/results/verdicts-<date>.json.
The load generator runs on the same cores as everything else; keep that in mind on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition  # noqa: E402

from bench.http_load import closed_loop_capacity, percentile, run_http_load  # noqa: E402
from streamscore import stack as stk  # noqa: E402
from streamscore.settings import ENV_NAMES, Settings  # noqa: E402

THIS = Path(__file__).resolve()
STREAM_TARGET_ABOVE_FLOOR_MS = 50.0  # issue 12: stream p99 at most this far above the floor's p99
HTTP_TARGET_P99_MS = 50.0  # issue 12: HTTP p99 at 300 requests/s, 0 degraded
DRAIN_S = 15.0  # after the last send, wait for verdicts until none came for this long ...
DRAIN_MAX_S = 120.0  # ... or this long in all; what is still missing then is lost
CATCH_UP_S = 20.0  # most the clicks phase waits for the click consumer to catch up before measuring
READY_TIMEOUT_S = 90.0


# --- matching sends and receipts ------------------------------------------------------------

class Tracker:
    """Send time per key and the first receipt of each; thread-safe enough for one sender and
    one receiver thread (single dict operations, which the GIL makes atomic).

    >>> t = Tracker()
    >>> t.send(b"a", 10.0, measured=False); t.send(b"b", 10.0, measured=True); t.send(b"c", 11.0, measured=True)
    >>> t.receive(b"b", 10.004); t.receive(b"b", 10.5); t.receive(b"zz", 12.0)
    >>> s = t.summary()
    >>> s["n"], s["received"], s["lost"], s["duplicates"], s["unknown"], s["p50_ms"]
    (2, 1, 1, 1, 1, 4.0)
    """

    def __init__(self) -> None:
        self.sent: dict[bytes, tuple[float, bool]] = {}
        self.received: dict[bytes, float] = {}
        self.values: dict[bytes, bytes] = {}
        self.duplicates = 0
        self.unknown = 0

    def send(self, key: bytes, t: float, measured: bool) -> None:
        self.sent[key] = (t, measured)

    def receive(self, key: bytes | None, t: float, value: bytes | None = None) -> None:
        if key not in self.sent:
            self.unknown += 1
        elif key in self.received:
            self.duplicates += 1
        else:
            self.received[key] = t
            if value is not None:
                self.values[key] = value

    def got(self, key: bytes) -> bool:
        return key in self.received

    def outstanding(self) -> int:
        """Counted keys not received yet."""
        return sum(1 for k, (_, m) in list(self.sent.items()) if m and k not in self.received)

    def latencies_ms(self) -> list[float]:
        return [(self.received[k] - t) * 1e3 for k, (t, m) in list(self.sent.items()) if m and k in self.received]

    def summary(self) -> dict:
        lat = self.latencies_ms()
        n = sum(1 for _, m in self.sent.values() if m)

        def r(x: float) -> float:
            return round(x, 3)
        return {"n": n, "received": len(lat), "lost": n - len(lat), "duplicates": self.duplicates,
                "unknown": self.unknown,
                "p50_ms": r(percentile(lat, 0.50)), "p99_ms": r(percentile(lat, 0.99)),
                "max_ms": r(max(lat)) if lat else float("nan")}


class Receiver(threading.Thread):
    """Reads ``topic`` from the beginning of every partition (no group join) and hands each
    message's key and receipt time to ``tracker``."""

    def __init__(self, kafka: Settings, topic: str, tracker: Tracker, fetch_wait_ms: int, keep_values: bool):
        super().__init__(name=f"receive-{topic}", daemon=True)
        self.tracker, self.keep_values = tracker, keep_values
        self.consumer = Consumer(kafka.kafka_client_config(**{"group.id": "bench-verdicts-receiver",
                                  "enable.auto.commit": False, "fetch.wait.max.ms": fetch_wait_ms}))
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        self.stopping = threading.Event()
        self.errors = 0

    def run(self) -> None:
        poll, tracker, keep = self.consumer.poll, self.tracker, self.keep_values
        try:
            while not self.stopping.is_set():
                m = poll(0.05)
                if m is None:
                    continue
                now = time.time()
                if m.error() is not None:
                    self.errors += 1
                    continue
                tracker.receive(m.key(), now, m.value() if keep else None)
        finally:
            self.consumer.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


# --- real events, live ----------------------------------------------------------------------

ORDERS_SINCE = "2015-02-01"  # after the January 2015 fraud wave (77% fraud): the ordinary 4-5% a month


def order_templates(data_dir, limit: int | None = None, since=ORDERS_SINCE) -> list[tuple[dict, float | None]]:
    """Real e-commerce fraud purchases as (fields without ``order_id`` / ``ts`` /
    ``account_created_at``, signup-to-purchase gap in s or None), in purchase-time order."""
    from replay.sources import fraud_orders

    out = []
    for o in fraud_orders(data_dir, limit=limit, since=since):
        d = o.model_dump(exclude_none=True)
        gap = None if o.account_created_at is None else max(0.0, o.ts - o.account_created_at)
        for f in ("order_id", "ts", "account_created_at"):
            d.pop(f, None)
        out.append((d, gap))
    return out


def order_bytes(template: tuple[dict, float | None], order_id: str, now: float) -> bytes:
    """An ``orders`` message: the template's fields, ``order_id``, ``ts = now``, the signup shifted
    with it.

    >>> from streamscore.events import Order
    >>> o = Order.model_validate_json(order_bytes(({"user_id": "ef:1", "amount": 9.5, "currency": "USD"}, 60.0),
    ...                                           "x-1", 1.8e9))
    >>> o.order_id, o.ts, o.account_created_at, o.amount
    ('x-1', 1800000000.0, 1799999940.0, 9.5)
    """
    fields, gap = template
    d = {"order_id": order_id, **fields, "ts": now}
    if gap is not None:
        d["account_created_at"] = now - gap
    return json.dumps(d, separators=(",", ":")).encode()


def click_templates(data_dir, limit: int | None = None) -> list[dict]:
    """Real Taobao clicks (fields without ``event_id`` / ``ts``), in time order."""
    from replay.sources import taobao_clicks

    out = []
    for c in taobao_clicks(data_dir, limit=limit):
        d = c.model_dump(exclude_none=True)
        d.pop("event_id")
        d.pop("ts")
        out.append(d)
    return out


def click_bytes(template: dict, event_id: str, now: float) -> bytes:
    """A ``clicks`` message: the template's fields, ``event_id``, ``ts = now``.

    >>> from streamscore.events import Click
    >>> raw = click_bytes({"user_id": "tb:1", "item_id": "tb:2", "action": "view"}, "e-1", 1.8e9)
    >>> Click.model_validate_json(raw).ts
    1800000000.0
    """
    return json.dumps({"event_id": event_id, **template, "ts": now}, separators=(",", ":")).encode()


def paced(rate: float, n: int, send: Callable[[int], None], stop: threading.Event | None = None) -> float:
    """Call ``send(i)`` for i in 0..n-1 at ``start + i / rate`` (sleeping to the schedule; a late
    call is made at once, never skipped). Returns the achieved rate."""
    start = time.perf_counter()
    for i in range(n):
        wait = start + i / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        if stop is not None and stop.is_set():
            n = i
            break
        send(i)
    return n / max(1e-9, time.perf_counter() - start)


def _produce(producer: Producer, topic: str, key: bytes, value: bytes) -> None:
    while True:
        try:
            producer.produce(topic, key=key, value=value)
            producer.poll(0)
            return
        except BufferError:  # local queue full: let deliveries drain
            producer.poll(0.05)


class ClickFeed(threading.Thread):
    """Publishes ``rate`` clicks/s (real, cycled, unique event ids, ts = now) in 10 ms ticks until stopped."""

    TICK_S = 0.01

    def __init__(self, kafka: Settings, topic: str, templates: list[dict], rate: float, tag: str):
        super().__init__(name="click-feed", daemon=True)
        self.topic, self.templates, self.rate, self.tag = topic, templates, rate, tag
        self.producer = Producer(kafka.kafka_client_config(**{"linger.ms": 5, "acks": "all"}))
        self.stopping = threading.Event()
        self.sent = 0
        self.t_start = self.t_end = 0.0

    def run(self) -> None:
        templates, n_t, producer = self.templates, len(self.templates), self.producer
        self.t_start = start = time.perf_counter()
        tick = 0
        while not self.stopping.is_set():
            due = int((time.perf_counter() - start) * self.rate)
            now = time.time()
            for i in range(self.sent, due):
                t = templates[i % n_t]
                _produce(producer, self.topic, t["user_id"].encode(), click_bytes(t, f"{self.tag}-{i}", now))
            self.sent = max(self.sent, due)
            tick += 1
            wait = start + tick * self.TICK_S - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        self.t_end = time.perf_counter()
        producer.flush(30)

    def stop(self) -> None:
        self.stopping.set()
        self.join(60)


# --- processes and stacks -------------------------------------------------------------------

def free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def child_env() -> dict[str, str]:
    """Environment that makes a child Python import this tree's code: the venv may be shared with
    another work tree through an editable install, and children run in their run dir, where the
    editable install (not the current directory) would decide what ``import streams`` finds."""
    return {"PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}


def worker_commands(roles: list[str]) -> tuple[list[tuple[str, list[str]]], bool]:
    """``([(process name, argv), ...], roles_supported)``: one ``worker --role R`` per role if the
    CLI knows ``--role``, else one plain ``worker`` (which runs every role)."""
    base = [sys.executable, "-m", "streamscore", "worker"]
    help_text = subprocess.run(base + ["--help"], capture_output=True, text=True, cwd=tempfile.gettempdir(),
                               env={**os.environ, **child_env()}, timeout=60).stdout
    if "--role" in help_text:
        return [(f"worker-{r}", base + ["--role", r]) for r in roles], True
    return [("worker", base)], False


class BenchStack(stk.LocalStack):
    """A LocalStack that starts (and waits for) only ``services``."""

    def __init__(self, settings: Settings, services: set[str]):
        super().__init__(settings)
        self.only = set(services)

    def local_services(self) -> list[str]:
        return [n for n in super().local_services() if n in self.only]

    def _waiter(self, service: str):
        return super()._waiter(service) if service in self.only else (lambda t, c=None: None)


@contextmanager
def fresh_stack(base: Settings, run_root: Path, label: str, services: set[str]) -> Iterator[Settings]:
    """A new local stack of ``services`` on free ports with its own run dir; downed on exit."""
    kafka, redis_port, http, grpc, metrics, api, prom = free_ports(7)
    s = base.replace(kafka_bootstrap=f"127.0.0.1:{kafka}", redis_url=f"redis://127.0.0.1:{redis_port}/0",
                triton_http_url=f"127.0.0.1:{http}", triton_grpc_url=f"127.0.0.1:{grpc}",
                triton_metrics_url=f"127.0.0.1:{metrics}", http_port=api, prometheus_url=f"127.0.0.1:{prom}",
                run_dir=str(run_root / label))
    local = BenchStack(s, services)
    local.up(timeout_s=180)
    try:
        yield s
    finally:
        local.down()


def start_procs(s: Settings, procs: list[tuple[str, list[str]]], extra_env: dict[str, str]) -> dict[str, tuple]:
    """Start ``procs`` with the settings' env (each worker its own metrics port); returns
    ``{name: (argv, env)}`` for :func:`_check_alive`."""
    specs = {}
    for (name, argv), port in zip(procs, free_ports(len(procs))):
        env = {**s.to_env(), **child_env(), "WORKER_METRICS_PORT": str(port), **extra_env}
        if name in ("worker-clicks", "worker-pricing") and THROUGHPUT_NICE[0]:  # as the demo runs them
            env["WORKER_NICE"] = str(THROUGHPUT_NICE[0])
        stk.start_process(name, argv, env, s.run_dir)
        specs[name] = (argv, env)
    return specs


START_RETRIES = 2
THROUGHPUT_NICE = [10]  # WORKER_NICE of the clicks/pricing workers (--throughput-nice), as in the demo


def _check_alive(s: Settings, specs: dict[str, tuple], restarts: list[str] | None = None) -> None:
    """Raise if a process exited; while starting (``restarts`` given) restart it instead, at most
    ``START_RETRIES`` times in all, noting why in ``restarts`` (reported in the results: a start-up
    crash is a finding, not noise)."""
    for name, (argv, env) in specs.items():
        if stk.process_alive(name, s.run_dir):
            continue
        tail = stk.log_tail(name, s.run_dir)
        if restarts is None or len(restarts) >= START_RETRIES:
            raise RuntimeError(f"{name} exited:\n{tail}")
        reason = next((line for line in reversed(tail.splitlines()) if "Error" in line or "error" in line), "?")
        restarts.append(f"{name}: {reason.strip()[:300]}")
        print(f"  {name} exited during start-up ({reason.strip()[:120]}); restarting", file=sys.stderr)
        stk.start_process(name, argv, env, s.run_dir)


INSIDE = {  # the fraud worker's own histograms, read before and after the paced window: where its time goes
    "redis_orders_ms": ("streamscore_redis_pipeline_seconds", {"op": "orders"}),
    "triton_fraud_ms": ("streamscore_triton_request_seconds", {"model": "fraud"}),
    "order_to_features_ms": ("streamscore_feature_freshness_seconds", {"entity": "order"}),
}


def _histograms(port: int) -> dict[str, tuple[float, float]]:
    """``{name: (sum, count)}`` of :data:`INSIDE` from a worker's /metrics ({} if it cannot be read)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    samples = {}
    for family in text_string_to_metric_families(text):
        for smp in family.samples:
            samples.setdefault(smp.name, []).append(smp)
    out = {}
    for name, (metric, labels) in INSIDE.items():
        total = [x.value for x in samples.get(metric + "_sum", []) if labels.items() <= x.labels.items()]
        count = [x.value for x in samples.get(metric + "_count", []) if labels.items() <= x.labels.items()]
        if total and count:
            out[name] = (sum(total), sum(count))
    return out


def inside_means(before: dict, after: dict) -> dict[str, float]:
    """Mean of each histogram over the window between two :func:`_histograms` readings, in ms.

    >>> inside_means({"a": (1.0, 10)}, {"a": (3.0, 30), "b": (1.0, 1)})
    {'a': 100.0}
    """
    return {k: round((after[k][0] - before[k][0]) / (after[k][1] - before[k][1]) * 1e3, 2)
            for k in after if k in before and after[k][1] > before[k][1]}


def _group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) of the live members of process group ``pgid``."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        f = raw[raw.rindex(")") + 2:].split()
        if int(f[2]) == pgid:
            total += int(f[11]) + int(f[12])
    return total / tick


def cpu_snapshot(run_dir) -> dict[str, float]:
    """CPU seconds so far of every process registered in ``run_dir`` (each with its process group:
    tritonserver's backend stubs included) and of this process (``bench``: sender, receiver, feed)."""
    out = {"bench": time.process_time()}
    for name in stk.registered(run_dir):
        if (pid := stk.process_alive(name, run_dir)) is not None:
            out[name] = _group_cpu_s(pid)
    return out


def cpu_cores(before: dict[str, float], after: dict[str, float], wall_s: float) -> dict[str, float]:
    """Cores used per process between two snapshots (a process restarted in between is left out).

    >>> cpu_cores({"a": 1.0, "b": 5.0}, {"a": 3.0, "b": 4.0, "c": 1.0}, 4.0)
    {'a': 0.5}
    """
    return {k: round((after[k] - v) / wall_s, 3) for k, v in before.items() if k in after and after[k] >= v}


def _clicks_committed(s: Settings) -> int:
    """Clicks committed by the worker's click consumer, whichever group it uses."""
    from streamscore.topics import committed

    # the clicks role's group (<app id>-clicks), the batch consumer's (<app id>.<topic>), Faust's (<app id>)
    return max(committed(s, g, s.topic_clicks)
               for g in (f"{s.app_id}-clicks", f"{s.app_id}.{s.topic_clicks}", s.app_id))


# --- one measured run over a running stack --------------------------------------------------

def run_orders(s: Settings, procs: list[tuple[str, list[str]]], out_topic: str, orders: list, rate: float,
               seconds: float, warmup: float, tag: str, *, clicks: list[dict] | None = None, click_rate: float = 0.0,
               consume_clicks: bool = True, receiver_fetch_wait_ms: int = 5, linger_ms: float = 0.0,
               extra_env: dict[str, str] | None = None, keep_values: bool = True) -> dict:
    """Start ``procs`` over the running stack ``s``, wait until a probe order comes back on
    ``out_topic``, optionally start the click feed, then send ``rate`` orders/s for ``warmup +
    seconds`` and measure produce -> receipt of the orders sent after the warm-up."""
    tracker = Tracker()
    receiver = Receiver(s, out_topic, tracker, receiver_fetch_wait_ms, keep_values)
    receiver.start()
    producer = Producer(s.kafka_client_config(**{"linger.ms": linger_ms, "acks": "all"}))
    specs = start_procs(s, procs, extra_env or {})
    restarts: list[str] = []
    feed = None
    out: dict = {"start_restarts": restarts}
    try:
        t0 = time.monotonic()
        probe = 0
        while not any(tracker.got(f"{tag}-probe-{i}".encode()) for i in range(probe)):
            if time.monotonic() - t0 > READY_TIMEOUT_S:
                raise RuntimeError(f"no probe came back on {out_topic} in {READY_TIMEOUT_S:.0f} s")
            _check_alive(s, specs, restarts)
            fields = orders[probe % len(orders)]
            key = f"{tag}-probe-{probe}"
            tracker.send(key.encode(), time.time(), measured=False)
            _produce(producer, s.topic_orders, fields[0]["user_id"].encode(), order_bytes(fields, key, time.time()))
            producer.flush(5)
            probe += 1
            time.sleep(0.25)
        out["ready_s"] = round(time.monotonic() - t0, 1)
        if clicks:
            feed = ClickFeed(s, s.topic_clicks, clicks, click_rate, f"{tag}-c")
            feed.start()
            if consume_clicks:  # the click consumer must have joined, and caught up if it can
                t1 = time.monotonic()
                while (done := _clicks_committed(s)) == 0:
                    if time.monotonic() - t1 > READY_TIMEOUT_S:
                        raise RuntimeError(f"no click committed after {READY_TIMEOUT_S:.0f} s ({feed.sent} sent)")
                    _check_alive(s, specs, restarts)
                    time.sleep(0.5)
                t2 = time.monotonic()
                while (done := _clicks_committed(s)) < feed.sent - click_rate and time.monotonic() - t2 < CATCH_UP_S:
                    _check_alive(s, specs, restarts)
                    time.sleep(0.5)
                out["clicks_ready_s"] = round(time.monotonic() - t1, 1)
                out["clicks_lag_at_start"] = max(0, feed.sent - done)  # > click_rate: it is not keeping up
            else:
                time.sleep(1.0)
        n_warm, n = int(rate * warmup), int(rate * (warmup + seconds))
        measured_at: dict[str, float] = {}

        def send(i: int) -> None:
            if i == n_warm:
                measured_at["t"] = time.perf_counter()
                if feed is not None:
                    measured_at["clicks_sent"] = feed.sent
            fields = orders[i % len(orders)]
            key = f"{tag}-{i}-{fields[0]['user_id']}"
            now = time.time()
            tracker.send(key.encode(), now, measured=i >= n_warm)
            _produce(producer, s.topic_orders, fields[0]["user_id"].encode(), order_bytes(fields, key, now))

        clicks_before = _clicks_committed(s) if feed is not None and consume_clicks else 0
        cpu_before = cpu_snapshot(s.run_dir)
        fraud_port = int(specs["worker-fraud"][1]["WORKER_METRICS_PORT"]) if "worker-fraud" in specs else None
        inside_before = _histograms(fraud_port) if fraud_port else {}
        t_paced = time.perf_counter()
        achieved = paced(rate, n, send)
        measured_s = time.perf_counter() - measured_at.get("t", time.perf_counter())
        paced_s = time.perf_counter() - t_paced
        out["cpu_cores"] = cpu_cores(cpu_before, cpu_snapshot(s.run_dir), paced_s)  # while orders went out
        if fraud_port:
            out["fraud_worker_means_ms"] = inside_means(inside_before, _histograms(fraud_port))
        clicks_after = _clicks_committed(s) if feed is not None and consume_clicks else 0
        producer.flush(30)
        drain_start = last_progress = time.monotonic()
        seen = len(tracker.received)
        while tracker.outstanding() and time.monotonic() - last_progress < DRAIN_S \
                and time.monotonic() - drain_start < DRAIN_MAX_S:
            time.sleep(0.1)
            if len(tracker.received) > seen:
                seen, last_progress = len(tracker.received), time.monotonic()
        out.update(tracker.summary())
        out.update(offered_rate=rate, achieved_rate=round(achieved, 1), seconds=round(measured_s, 1),
                   warmup_s=warmup, probes=probe, receiver_errors=receiver.errors)
        if feed is not None:
            feed.stop()
            out["click_rate"] = click_rate
            out["clicks_sent_per_s"] = round((feed.sent - measured_at.get("clicks_sent", 0))
                                             / max(1e-9, feed.t_end - measured_at.get("t", feed.t_start)), 1)
            if consume_clicks:  # while the orders went out, warm-up included (commits lag by a batch at most)
                out["clicks_committed_per_s"] = round((clicks_after - clicks_before) / max(1e-9, paced_s), 1)
        if keep_values:
            measured_keys = {k for k, (_, m) in tracker.sent.items() if m}
            verdicts = [json.loads(v) for k, v in tracker.values.items() if k in measured_keys]
            out["degraded"] = sum(bool(v.get("degraded")) for v in verdicts)
            mix: dict[str, int] = {}
            for v in verdicts:
                mix[v.get("verdict", "?")] = mix.get(v.get("verdict", "?"), 0) + 1
            out["verdict_mix"] = mix
            out["model_versions"] = sorted({v.get("model_version", "?") for v in verdicts})
            # the verdict's own latency_ms: send -> decided (before it is stored, produced and acked):
            # what of the total the worker's fetch and decision take, the rest is store + ack + receipt
            own = [float(v["latency_ms"]) for v in verdicts if isinstance(v.get("latency_ms"), (int, float))]
            if own:
                out["decided_p50_ms"], out["decided_p99_ms"] = (round(percentile(sorted(own), q), 3)
                                                                for q in (0.50, 0.99))
        _check_alive(s, specs)
    finally:
        if feed is not None and feed.is_alive():
            feed.stop()
        receiver.stop()
        stk.stop_processes(list(specs), s.run_dir)
    print(f"  {tag}: n={out.get('n')} p50={out.get('p50_ms')} p99={out.get('p99_ms')} max={out.get('max_ms')} "
          f"lost={out.get('lost')} cpu cores {out.get('cpu_cores')}", file=sys.stderr)
    return out


# --- the pass-through consumer (the floor) --------------------------------------------------

def passthrough_main(argv: list[str]) -> int:
    """``bench_verdicts.py passthrough --dst TOPIC ...``: copy ``TOPIC_ORDERS`` (from the env's
    settings) to ``--dst`` keyed by order id, until SIGTERM; the consumer is configured like the
    fraud worker's (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="bench_verdicts.py passthrough")
    ap.add_argument("--dst", required=True)
    ap.add_argument("--fetch-wait-ms", type=int, required=True)
    ap.add_argument("--batch-max", type=int, required=True)
    ap.add_argument("--batch-within-s", type=float, required=True)
    ap.add_argument("--batching", choices=["first", "window"], default="first")
    ap.add_argument("--linger-ms", type=float, default=0.0)
    args = ap.parse_args(argv)
    s = Settings.from_env()
    from streams.runtime import Profile, consumer_config

    # configured exactly as the fraud role's consumer, but for its fetch wait and batch size (arguments)
    consumer = Consumer(consumer_config(s, Profile(
        f"{s.app_id}-passthrough", (s.topic_orders,), args.fetch_wait_ms, args.batch_max, 0.0,
        s.fraud_session_timeout_s, s.fraud_heartbeat_s)))
    producer = Producer(s.kafka_client_config(**{"linger.ms": args.linger_ms, "acks": "all"}))
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    consumer.subscribe([s.topic_orders])
    print(f"passthrough {s.topic_orders} -> {args.dst}: {vars(args)}", flush=True)

    def batch() -> list:
        if args.batching == "window":  # as streams/batch_consumer.py: waits the whole window unless it fills
            return consumer.consume(args.batch_max, args.batch_within_s)
        first = consumer.poll(0.1)  # "first": as soon as one message is there, with whatever else is fetched
        return [] if first is None else [first] + consumer.consume(args.batch_max - 1, 0)

    try:
        while not stopping.is_set():
            offsets = {}
            for m in batch():
                if m.error() is not None:
                    continue
                producer.produce(args.dst, key=json.loads(m.value())["order_id"].encode(), value=m.value())
                offsets[m.partition()] = m.offset() + 1
            if offsets:
                producer.flush(30)  # outputs acked before the input offsets are committed, as the worker does
                # ... and committed asynchronously, as the worker does (streams/runtime.py); a synchronous
                # commit per batch made this floor ~10x slower than the worker at 500/s on the local broker
                consumer.commit(offsets=[TopicPartition(s.topic_orders, p, o) for p, o in offsets.items()],
                                asynchronous=True)
    finally:
        consumer.close()
    return 0


def drain_main(argv: list[str]) -> int:
    """``bench_verdicts.py drain``: consume ``TOPIC_CLICKS`` with the clicks role's consumer
    (:func:`streams.app.profile`), batches as the role takes them, offsets committed, no other work,
    until SIGTERM: what the broker serves a click consumer, without the click worker's CPU and Redis."""
    s = Settings.from_env()
    from streams.app import profile
    from streams.runtime import consumer_config

    p = profile(s, "clicks")
    consumer = Consumer(consumer_config(s, p))
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    consumer.subscribe(list(p.topics))
    print(f"drain {p.topics} as {p.group}", flush=True)
    try:
        while not stopping.is_set():
            batch = consumer.consume(p.batch_max, p.within_s or 0.1)
            offsets = {(m.topic(), m.partition()): m.offset() + 1 for m in batch if m.error() is None}
            if offsets:
                consumer.commit(offsets=[TopicPartition(t, q, o) for (t, q), o in offsets.items()],
                                asynchronous=True)
    finally:
        consumer.close()
    return 0


# --- phases -----------------------------------------------------------------------------------

def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def floor_phase(base: Settings, run_root: Path, orders, rate: float, args, tag: str, clicks=None,
                drain: bool = False) -> dict:
    with fresh_stack(base, run_root, tag, {"kafka"}) as s:
        dst = f"{s.topic_orders}-copy"
        stk.create_topics(s, {dst: s.topic_partitions})
        procs = [("passthrough", [sys.executable, str(THIS), "passthrough", "--dst", dst, "--linger-ms",
                                  str(args.passthrough_linger_ms), "--batching", args.floor_batching, "--fetch-wait-ms",
                                  str(args.fetch_wait_ms), "--batch-max", str(args.batch_max),
                                  "--batch-within-s", str(args.batch_within_s)])]
        if drain:  # the clicks also consumed (the clicks role's consumer, no work): what the broker then serves
            procs.append(("drain", [sys.executable, str(THIS), "drain"]))
        return run_orders(s, procs, dst, orders, rate, args.seconds, args.warmup, tag, clicks=clicks,
                          click_rate=args.click_rate, consume_clicks=drain,
                          receiver_fetch_wait_ms=args.receiver_fetch_wait_ms, linger_ms=args.linger_ms,
                          keep_values=False)


def stream_phase(base: Settings, run_root: Path, orders, rate: float, args, tag: str, procs, clicks=None) -> dict:
    with fresh_stack(base, run_root, tag, {"kafka", "redis", "triton"}) as s:
        return run_orders(s, procs, s.topic_fraud_verdicts, orders, rate, args.seconds, args.warmup, tag,
                          clicks=clicks, click_rate=args.click_rate,
                          consume_clicks=bool({"clicks", "all"} & set(args.roles)),
                          receiver_fetch_wait_ms=args.receiver_fetch_wait_ms, linger_ms=args.linger_ms,
                          extra_env=args.worker_env)


def _wait_http(url: str, name: str, run_dir: str, ok: Callable[[dict], bool], timeout_s: float = 90) -> dict:
    import urllib.request

    end = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                last = json.loads(r.read() or b"{}")
                if r.status == 200 and ok(last):
                    return last
        except (OSError, ValueError):
            pass
        if not stk.process_alive(name, run_dir):
            raise RuntimeError(f"{name} exited:\n{stk.log_tail(name, run_dir)}")
        time.sleep(0.3)
    raise RuntimeError(f"{url} not healthy after {timeout_s:.0f} s (last {last}):\n{stk.log_tail(name, run_dir)}")


def _http_bodies(orders, n: int, tag: str) -> list[bytes]:
    now = time.time()
    return [order_bytes(orders[i % len(orders)], f"{tag}-{i}", now) for i in range(n)]


def generator_phase(base: Settings, run_root: Path, orders, args) -> dict:
    """The HTTP load generator against a trivial server: its ceiling and its own latency at the rate."""
    run_dir = run_root / "generator"
    port = free_ports(1)[0]
    stk.start_process("trivial-server", [sys.executable, str(THIS.parent / "http_load.py"), "trivial-server",
                                         "--port", str(port)], child_env(), run_dir)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(url + "/", "trivial-server", str(run_dir), lambda body: True, 30)
        bodies = _http_bodies(orders, 1000, "gen")
        capacity = asyncio.run(closed_loop_capacity(url, base.api_token.get_secret_value(), bodies, min(5.0, max(2.0, args.seconds / 5))))
        at_rate = asyncio.run(run_http_load(url, base.api_token.get_secret_value(), bodies, args.http_rate,
                                            min(10.0, args.seconds), warmup_s=args.warmup))
    finally:
        stk.stop_process("trivial-server", run_dir)
    print(f"  generator: closed loop {capacity['requests_per_s']}/s, {capacity['cpu_us_per_request']} us CPU "
          f"per request; open loop at {args.http_rate}/s p99 {at_rate['p99_ms']} ms", file=sys.stderr)
    return {"closed_loop": capacity, "open_loop_at_http_rate": at_rate}


def http_phase(base: Settings, run_root: Path, orders, args) -> dict:
    from features.client import FeatureClient
    from streamscore.events import Order

    with fresh_stack(base, run_root, "http", {"kafka", "redis", "triton"}) as s:
        # history for the feature read: 10,000 real purchases (other ids) in the last hour
        n_pre = min(10_000, len(orders) // 2)
        now = time.time()
        history = [Order.model_validate_json(order_bytes(orders[i], f"pre-{i}", now - 3600 + i * 3600 / n_pre))
                   for i in range(n_pre)]

        async def preload() -> None:
            client = FeatureClient.connect(s)
            for i in range(0, len(history), 500):
                await client.apply_orders(history[i:i + 500])
            await client.close()
        asyncio.run(preload())
        specs = start_procs(s, [("api", [sys.executable, "-m", "streamscore", "serve"])], {})
        try:
            url = f"http://127.0.0.1:{s.http_port}"
            health = _wait_http(url + "/healthz", "api", s.run_dir, lambda b: b.get("triton") == "ok")
            rest = orders[n_pre:]
            bodies = _http_bodies(rest, int(args.http_rate * (args.warmup + args.seconds)) + 1, "http")
            cpu_before, t0 = cpu_snapshot(s.run_dir), time.perf_counter()
            result = asyncio.run(run_http_load(url, s.api_token.get_secret_value(), bodies, args.http_rate, args.seconds,
                                               warmup_s=args.warmup))
            result["cpu_cores"] = cpu_cores(cpu_before, cpu_snapshot(s.run_dir), time.perf_counter() - t0)
            _check_alive(s, specs)
        finally:
            stk.stop_processes(list(specs), s.run_dir)
    result.update(health_before=health, preloaded_orders=n_pre)
    print(f"  http: n={result['n']} p50={result['p50_ms']} p99={result['p99_ms']} "
          f"degraded={result['degraded_share']} errors={result['errors']}", file=sys.stderr)
    return result


# --- main -----------------------------------------------------------------------------------

PHASES = ("floor", "stream", "clicks", "generator", "http")


def fraud_consumer_fields() -> dict[str, str]:
    """Settings fields of the fraud worker's consumer: the fraud role's own where this tree has
    them (``FRAUD_FETCH_MAX_WAIT_MS``, ``FRAUD_BATCH_MAX``), else the worker-wide ones."""
    names = set(ENV_NAMES)
    return {"fetch_wait": "fraud_fetch_max_wait_ms" if "fraud_fetch_max_wait_ms" in names else "fetch_max_wait_ms",
            "batch_max": "fraud_batch_max" if "fraud_batch_max" in names else "batch_max"}


def env_name(field: str) -> str:
    return ENV_NAMES[field]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = Settings.for_command(argv, "bench_verdicts")
    fields = fraud_consumer_fields()
    fetch_env, batch_env = env_name(fields["fetch_wait"]), env_name(fields["batch_max"])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # 10 s: the local broker's cost per fetch grows with the record batches a partition holds; over 25 s
    # at 500 orders/s its own pass-through floor went from p99 ~0.5-1.5 s to 11 s (BENCHMARKS.md)
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per phase (after the warm-up)")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds sent first and not counted")
    ap.add_argument("--rates", default="100,500,1000", help="orders/s of the floor and stream phases")
    ap.add_argument("--clicks-order-rate", type=float, default=500.0, help="orders/s of the clicks phase")
    ap.add_argument("--click-rate", type=float, default=5000.0, help="clicks/s of the clicks phase")
    ap.add_argument("--http-rate", type=float, default=300.0, help="requests/s of the HTTP phase")
    ap.add_argument("--roles", default="fraud,clicks",
                    help="worker roles, one process each (`worker --role R`); plain `worker` if the CLI has no --role")
    ap.add_argument("--fetch-wait-ms", type=int, default=getattr(env, fields["fetch_wait"]),
                    help=f"{fetch_env} of the fraud worker and the pass-through consumer (default: its setting)")
    ap.add_argument("--batch-max", type=int, default=getattr(env, fields["batch_max"]),
                    help=f"{batch_env} of the fraud worker and the pass-through consumer (default: its setting)")
    ap.add_argument("--batch-within-s", type=float, default=env.batch_within_s,
                    help="WORKER_BATCH_WITHIN_S of the worker and of the pass-through's 'window' batching")
    ap.add_argument("--floor-batching", choices=["first", "window"], default="first",
                    help="pass-through batches: 'first' = as soon as one message is there, with whatever else is "
                         "queued (the floor); 'window' = consume(WORKER_BATCH_MAX, WORKER_BATCH_WITHIN_S) as "
                         "streams/batch_consumer.py does, which waits the whole window unless the batch fills")
    ap.add_argument("--receiver-fetch-wait-ms", type=int, default=5,
                    help="fetch.wait.max.ms of the bench's own receiver (its resolution)")
    ap.add_argument("--linger-ms", type=float, default=0.0, help="linger.ms of the order producer (the shop's)")
    ap.add_argument("--passthrough-linger-ms", type=float, default=5.0,
                    help="linger.ms of the pass-through's producer: it flushes each batch at once (flush() ignores "
                         "the linger), so 5 ms only lets a batch go as one request, as the worker's producer sends "
                         "it; with 0 each copy was its own request and the local broker's CPU went to ~1.2 cores")
    ap.add_argument("--throughput-nice", type=int, default=THROUGHPUT_NICE[0],
                    help="WORKER_NICE of the clicks (and pricing) worker processes, as the demo runs them (0 = same "
                         "CPU priority as the fraud worker)")
    ap.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment for the worker processes (repeatable), e.g. a role's own fetch setting")
    ap.add_argument("--phases", default=",".join(PHASES), help=f"which of {','.join(PHASES)} to run")
    ap.add_argument("--keep-run-dir", action="store_true", help="keep the stacks' logs (printed at the end)")
    args = ap.parse_args(argv)
    args.rates = [float(r) for r in args.rates.split(",") if r]
    args.roles = [r for r in args.roles.split(",") if r]
    args.phases = [p for p in args.phases.split(",") if p]
    if unknown := set(args.phases) - set(PHASES):
        ap.error(f"unknown phases {sorted(unknown)}")
    args.worker_env = dict(kv.split("=", 1) for kv in args.worker_env)
    return args


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:,.1f}" if abs(x) >= 100 else f"{x:.2f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["passthrough"]:
        return passthrough_main(argv[1:])
    if argv[:1] == ["drain"]:
        return drain_main(argv[1:])
    args = parse_args(argv)
    THROUGHPUT_NICE[0] = args.throughput_nice
    fields = fraud_consumer_fields()
    base = Settings.from_env(**{fields["fetch_wait"]: args.fetch_wait_ms, fields["batch_max"]: args.batch_max},
                             batch_within_s=args.batch_within_s, app_id="bench-verdicts",
                             dev_mode=True)  # every phase runs on a fresh local stack
    procs, roles_supported = worker_commands(args.roles)
    print(f"worker processes: {[' '.join(a[2:]) for _, a in procs]}"
          + ("" if roles_supported else " (this CLI has no --role: one plain worker runs every role)"),
          file=sys.stderr)
    orders = order_templates(base.data_dir)
    clicks = click_templates(base.data_dir) if {"clicks", "floor"} & set(args.phases) else []
    run_tag = f"bv{int(time.time())}"
    results: dict = {
        "date": time.strftime("%Y-%m-%d"), "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cores": os.cpu_count(), "arch": platform.machine(), "python": platform.python_version(),
                    "loadavg_start": _load()},
        "config": {"seconds": args.seconds, "warmup_s": args.warmup, "rates": args.rates,
                   "clicks_order_rate": args.clicks_order_rate, "click_rate": args.click_rate,
                   "http_rate": args.http_rate, "fetch_wait_ms": args.fetch_wait_ms, "batch_max": args.batch_max,
                   "fraud_consumer_env": {env_name(fields["fetch_wait"]): args.fetch_wait_ms,
                                          env_name(fields["batch_max"]): args.batch_max},
                   "batch_within_s": args.batch_within_s, "floor_batching": args.floor_batching,
                   "receiver_fetch_wait_ms": args.receiver_fetch_wait_ms,
                   "linger_ms": args.linger_ms, "passthrough_linger_ms": args.passthrough_linger_ms,
                   "throughput_nice": args.throughput_nice, "roles": args.roles, "roles_supported": roles_supported,
                   "worker_commands": [" ".join(a[2:]) for _, a in procs], "worker_env": args.worker_env,
                   "orders_source": f"ecommerce-fraud since {ORDERS_SINCE}, {len(orders)} purchases, cycled",
                   "clicks_source": f"taobao sample, {len(clicks)} clicks, cycled",
                   "fresh_stack_per_phase": True},
        "phases": {},
    }
    phases = results["phases"]

    def run(label: str, fn, *a, **kw) -> None:
        print(f"{label} ...", file=sys.stderr)
        before = _load()
        t0 = time.monotonic()
        phases[label] = fn(*a, **kw)
        phases[label].update(loadavg_before=before, loadavg_after=_load(), wall_s=round(time.monotonic() - t0, 1))

    run_root = Path(tempfile.mkdtemp(prefix="streamscore-bench-verdicts-"))
    try:
        for rate in args.rates:
            r = f"{rate:g}"
            if "floor" in args.phases:
                run(f"floor_{r}", floor_phase, base, run_root, orders, rate, args, f"{run_tag}-floor{r}")
            if "stream" in args.phases:
                run(f"stream_{r}", stream_phase, base, run_root, orders, rate, args, f"{run_tag}-stream{r}", procs)
        if "clicks" in args.phases or "floor" in args.phases:
            r = f"{args.clicks_order_rate:g}"
            if "floor" in args.phases:
                run(f"floor_{r}_clicks", floor_phase, base, run_root, orders, args.clicks_order_rate, args,
                    f"{run_tag}-floor{r}c", clicks=clicks)
                run(f"floor_{r}_clicks_consumed", floor_phase, base, run_root, orders, args.clicks_order_rate,
                    args, f"{run_tag}-floor{r}cc", clicks=clicks, drain=True)
            if "clicks" in args.phases:
                run(f"stream_{r}_clicks", stream_phase, base, run_root, orders, args.clicks_order_rate, args,
                    f"{run_tag}-stream{r}c", procs, clicks=clicks)
        if "generator" in args.phases:
            run("generator", generator_phase, base, run_root, orders, args)
        if "http" in args.phases:
            run("http", http_phase, base, run_root, orders, args)
    finally:
        if args.keep_run_dir:
            print(f"run dirs kept under {run_root}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(run_root, ignore_errors=True)
    results["machine"]["loadavg_end"] = _load()
    headers, rows = summarise(results, args)
    from bench.report import publish

    publish("verdicts", results, headers, rows)
    return 0


def _cpu(cores: dict | None) -> str:
    """``{"bench": 0.21, "worker-fraud": 0.5}`` -> ``"bench .21 fraud .50"``."""
    return " ".join(f"{k.removeprefix('worker-')} {v:.2f}".replace(" 0.", " .") for k, v in (cores or {}).items())


def summarise(results: dict, args) -> tuple[list[str], list[list]]:
    """Floors next to stream figures, targets evaluated; returns the table."""
    phases = results["phases"]
    targets: dict = {}
    rows = []
    headers = ["phase", "rate/s", "n", "p50 ms", "p99 ms", "max ms", "lost/err", "floor p99 ms",
               "p99 above floor ms", "target", "load before -> after", "CPU cores while loaded"]
    for label, p in phases.items():
        if label == "generator":
            continue
        if label == "http":
            met = p["p99_ms"] <= HTTP_TARGET_P99_MS and p["degraded_share"] == 0 and p["errors"] == 0
            targets["http_p99_at_most_50ms_0_degraded"] = met
            rows.append(["http POST /v1/fraud/score", _fmt(p["rate"]), _fmt(p["n"]), _fmt(p["p50_ms"]),
                         _fmt(p["p99_ms"]), _fmt(p["max_ms"]), _fmt(p["errors"]), "", "",
                         f"p99 <= {HTTP_TARGET_P99_MS:g}, 0 degraded (degraded {p['degraded_share']:.2%}): "
                         + ("met" if met else "MISSED"), f"{p['loadavg_before'][0]} -> {p['loadavg_after'][0]}",
                         _cpu(p.get("cpu_cores"))])
            continue
        floor_label = label.replace("stream_", "floor_")
        floor = phases.get(floor_label) if label.startswith("stream_") else None
        above = round(p["p99_ms"] - floor["p99_ms"], 3) if floor else None
        if floor:
            p["floor_p99_ms"], p["p99_above_floor_ms"], p["floor_phase"] = floor["p99_ms"], above, floor_label
        notes = []
        if label.endswith("_clicks") and label.startswith("stream_"):
            plain = phases.get(f"floor_{args.clicks_order_rate:g}")
            if plain:
                p["p99_above_floor_no_clicks_ms"] = round(p["p99_ms"] - plain["p99_ms"], 3)
            consumed = phases.get(f"{floor_label}_consumed")
            if consumed:
                p["p99_above_floor_clicks_consumed_ms"] = round(p["p99_ms"] - consumed["p99_ms"], 3)
            if above is not None:
                met = above <= STREAM_TARGET_ABOVE_FLOOR_MS and p["lost"] == 0
                targets["stream_p99_at_most_50ms_above_floor_with_clicks"] = met
                notes.append(f"<= {STREAM_TARGET_ABOVE_FLOOR_MS:g} above floor: " + ("met" if met else "MISSED")
                             + (f" ({p['p99_above_floor_no_clicks_ms']:.1f} above the no-clicks floor)"
                                if plain else ""))
            if consumed:
                notes.append(f"{p['p99_above_floor_clicks_consumed_ms']:+.1f} vs the floor with the clicks consumed")
        if label.startswith("floor_") and label.endswith("_clicks_consumed") and "clicks_committed_per_s" in p:
            notes.append(f"clicks consumed {p['clicks_committed_per_s']:,.0f}/s of {p['clicks_sent_per_s']:,.0f}/s sent")
        if p.get("fraud_worker_means_ms"):
            notes.append("fraud worker means: " + ", ".join(f"{k.replace('_ms', '')} {v:.1f} ms"
                                                           for k, v in p["fraud_worker_means_ms"].items()))
        if "decided_p99_ms" in p:
            notes.append(f"send -> decided p50 {p['decided_p50_ms']:.1f} / p99 {p['decided_p99_ms']:.1f} ms")
            if "clicks_committed_per_s" in p:
                kept_up = p["clicks_committed_per_s"] >= 0.95 * p["clicks_sent_per_s"]
                targets["clicks_consumed_at_the_click_rate"] = kept_up
                notes.append(f"clicks consumed {p['clicks_committed_per_s']:,.0f}/s "
                             f"of {p['clicks_sent_per_s']:,.0f}/s sent" + ("" if kept_up else " (click worker behind)"))
        if p.get("start_restarts"):
            notes.append(f"{len(p['start_restarts'])} start-up crash(es), see JSON")
        target = "; ".join(notes)
        name = label.replace("_", " ") if "_clicks" not in label else \
            label.split("_clicks")[0].replace("_", " ") + f" + {args.click_rate:g} clicks/s" \
            + (" consumed (no work)" if label.endswith("_consumed") else "")
        lost = p["lost"] if p.get("degraded") in (None, 0) else f"{p['lost']} ({p['degraded']} degraded)"
        rows.append([name, _fmt(p["offered_rate"]), _fmt(p["n"]), _fmt(p["p50_ms"]), _fmt(p["p99_ms"]),
                     _fmt(p["max_ms"]), _fmt(lost), _fmt(floor["p99_ms"]) if floor else "",
                     _fmt(above) if above is not None else "", target,
                     f"{p['loadavg_before'][0]} -> {p['loadavg_after'][0]}", _cpu(p.get("cpu_cores"))])
    if "generator" in phases:
        g = phases["generator"]
        c, o = g["closed_loop"], g["open_loop_at_http_rate"]
        rows.append(["http load generator vs trivial server", _fmt(o["rate"]), _fmt(o["n"]), _fmt(o["p50_ms"]),
                     _fmt(o["p99_ms"]), _fmt(o["max_ms"]), _fmt(o["errors"]), "", "",
                     f"ceiling {c['requests_per_s']:,.0f}/s closed loop, {c['cpu_us_per_request']:.0f} us CPU/request",
                     f"{g['loadavg_before'][0]} -> {g['loadavg_after'][0]}", ""])
    results["targets"] = targets
    return headers, rows


if __name__ == "__main__":
    sys.exit(main())
