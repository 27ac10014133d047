"""Scale-out benchmark: 1, 2 and 4 clicks workers in one consumer group, over the real local broker
and Valkey (a three-primary Redis Cluster by default).

    .venv/bin/python bench/bench_scaleout.py [--clicks N] [--workers 1,2,4] [--topology cluster|standalone]

Starts its own broker (Tansu) and Valkey (free ports, temporary run dir; no Triton: the clicks role
with recommendation refresh off needs none). For each worker count: a fresh clicks topic of 8
partitions (``TOPIC_PARTITIONS``) and a fresh consumer group, Valkey emptied (first delivery: no
event id seen before), N real Taobao clicks published first (keyed by user id), then that many
``python -m streamscore worker --role clicks`` processes started together, each with its own
``WORKER_METRICS_PORT``. Measured from the group's first to its last commit
(``streamscore.topics.committed``):

* clicks/s of the group (rebalances as the workers join are inside the interval: that is what
  adding a worker costs);
* per worker: clicks processed (its ``streamscore_events_total`` at the end; at least once: their
  sum may exceed N by what a rebalance had a worker re-read) and its CPU seconds
  (``/proc/<pid>/stat`` utime + stime) per 1,000 of the clicks it processed, both over the same
  interval (the counters are scraped at every commit poll); and all workers' CPU per 1,000 of the
  group's clicks;
* Valkey's CPU seconds per 1,000 clicks (``INFO cpu`` summed over the primaries) and the broker
  process's.

The machine's core count bounds what more workers can give: on 2 cores, 4 workers plus Valkey and the
broker contend for the CPU. Prints a table, then one JSON line; writes bench/results/
``scaleout-<topology>-<date>.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from confluent_kafka import Producer  # noqa: E402

from bench.measure import cpu_seconds, fig, flush_valkey, ratio, scrape, valkey_cpu, valkey_nodes, wait_commits  # noqa: E402
from bench.report import publish  # noqa: E402
from replay.sources import taobao_clicks  # noqa: E402
from streamscore import stack as stk  # noqa: E402
from streamscore.settings import Settings  # noqa: E402
from streamscore.topics import committed  # noqa: E402

PARTITIONS = 8


def parse_counts(text: str) -> list[int]:
    """``--workers``: comma-separated positive worker counts, at most ``PARTITIONS`` each.

    >>> parse_counts("1,2,4")
    [1, 2, 4]
    >>> parse_counts("9")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: worker counts must be 1..8, got '9'
    """
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        counts = []
    if not counts or any(not 1 <= c <= PARTITIONS for c in counts):
        raise argparse.ArgumentTypeError(f"worker counts must be 1..{PARTITIONS}, got {text!r}")
    return counts


def start_services(run_dir: str, topology: str, allocator: str = "jemalloc") -> Settings:
    """Tansu and Valkey (a three-primary cluster with ``topology="cluster"``) on free ports; the
    Settings of a bench run over them (8 partitions, recommendation refresh off). ``allocator``: the
    Valkey's (``LOCAL_VALKEY_ALLOCATOR``)."""
    kafka = stk.free_port(5)
    api, triton_http, triton_grpc, triton_metrics = range(kafka + 1, kafka + 5)  # unused but distinct
    redis_port = stk.free_port(6)  # a cluster's primaries and bus ports follow it
    s = Settings.from_env({}, dev_mode=True, kafka_bootstrap=f"127.0.0.1:{kafka}",
                          redis_url=f"redis://127.0.0.1:{redis_port}/0", redis_topology=topology,
                          triton_http_url=f"127.0.0.1:{triton_http}", triton_grpc_url=f"127.0.0.1:{triton_grpc}",
                          triton_metrics_url=f"127.0.0.1:{triton_metrics}", http_port=api, run_dir=run_dir,
                          session_timeout_s=6.0, heartbeat_s=0.5, topic_partitions=PARTITIONS,
                          rec_refresh_interval_s=0.0, local_valkey_allocator=allocator)
    local = stk.LocalStack(s)
    for service in ("kafka", "redis"):
        for name, _ports, command in local._processes(service):
            argv, env = command()
            stk.start_process(name, argv, env, run_dir)
    stk.wait_kafka(s, 60)
    local._wait_redis(60)
    return s


def valkey_calls(nodes: list[tuple[str, int]], clicks: int, top: int = 8) -> dict:
    """Redis commands per click since the flush (``INFO commandstats``, summed over the primaries; calls inside
    scripts included): ``{"all": calls per click, "<command>": ...}`` for the ``top`` most called."""
    calls: dict[str, int] = {}
    for host, port in nodes:
        with redis.Redis(host=host, port=port, socket_timeout=10) as r:
            for name, st in r.info("commandstats").items():
                calls[name.removeprefix("cmdstat_")] = calls.get(name.removeprefix("cmdstat_"), 0) + st["calls"]
    out = {"all": round(sum(calls.values()) / clicks, 2)}
    out.update({k: round(v / clicks, 2) for k, v in sorted(calls.items(), key=lambda kv: -kv[1])[:top]})
    return out


def parse_env(pairs: list[str]) -> dict[str, str]:
    """``--env NAME=VALUE`` pairs as a dict, each checked as a setting (a clear error on a bad one).

    >>> parse_env(["WORKER_BATCH_MAX=2000"])
    {'WORKER_BATCH_MAX': '2000'}
    >>> parse_env(["WORKER_BATCH_MAX"])
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: --env WORKER_BATCH_MAX: expected NAME=VALUE
    """
    env = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq:
            raise argparse.ArgumentTypeError(f"--env {pair}: expected NAME=VALUE")
        env[name] = value
    Settings.from_env(env)  # SettingsError names a bad variable
    return env


def run_count(base: Settings, clicks, n_workers: int, env: dict[str, str] | None = None) -> dict:
    """One measured run of ``n_workers`` clicks workers over a fresh topic, group and Valkey (``env``: worker
    settings on top of the bench's, by environment name)."""
    label = f"scale{n_workers}-{int(time.time() * 1000) % 10**8}"
    s = base.replace(app_id=f"bench-{label}", topic_clicks=f"bench-{label}-clicks")
    nodes = valkey_nodes(s)
    flush_valkey(nodes)
    stk.create_topics(s, s.all_topics)
    producer = Producer(s.kafka_client_config(**{"linger.ms": 20}))
    for c in clicks:
        producer.produce(s.topic_clicks, key=c.user_id.encode(), value=c.to_bytes())
    assert producer.flush(60) == 0
    first_port = stk.free_port(n_workers)
    workers = [s.replace(worker_metrics_port=first_port + i) for i in range(n_workers)]
    names = [f"bench-scale-w{i}" for i in range(n_workers)]
    argv = [sys.executable, "-m", "streamscore", "worker", "--role", "clicks"]
    broker = stk.process_alive("kafka", s.run_dir)
    pids = [stk.start_process(name, argv, {**w.to_env(), **(env or {})}, s.run_dir) for name, w in zip(names, workers)]
    group = s.consumer_group("clicks")
    try:
        clock = wait_commits(len(clicks), lambda: committed(s, group, s.topic_clicks),
                             lambda: (*(cpu_seconds(p) for p in pids), valkey_cpu(nodes), cpu_seconds(broker),
                                      *(scrape(w.worker_metrics_port) for w in workers)),
                             lambda: all(stk.process_alive(n, s.run_dir) is not None for n in names), limit_s=900)
        processed = [scrape(w.worker_metrics_port) for w in workers]
    except RuntimeError as exc:
        raise RuntimeError(f"{n_workers} workers: {exc}\n"
                           + "\n".join(stk.log_tail(n, s.run_dir) for n in names)) from None
    finally:
        stk.stop_processes(names, s.run_dir)
    cpu, grew = clock.cpu_per_1000, clock.deltas
    cpu_s, events = grew[:n_workers], grew[n_workers + 2:]
    return {"workers": n_workers, "clicks_per_s": fig(clock.rate), "seconds": round(clock.seconds, 2),
            "processed_per_worker": [round(x) for x in processed],
            "processed_in_interval_per_worker": [round(x) for x in events],
            # each worker's CPU per 1,000 of the clicks it processed in the interval
            "worker_cpu_s_per_1000_own": [fig(c * 1000 / e, 4) if e > 0 else None for c, e in zip(cpu_s, events)],
            "workers_cpu_s_per_1000": fig(sum(cpu[:n_workers]), 4),  # all workers, per 1,000 of the group's
            "valkey_cpu_s_per_1000": fig(cpu[n_workers], 4), "broker_cpu_s_per_1000": fig(cpu[n_workers + 1], 4),
            # Valkey's CPU seconds per second (summed over a cluster's primaries): how near one server process is to
            # its bound; steadier than the rates on a noisy VM
            "valkey_busy": fig(clock.rate * cpu[n_workers] / 1000, 3),
            "valkey_calls_per_click": valkey_calls(nodes, len(clicks))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clicks", type=int, default=96_168, help="Taobao clicks per run (the whole sample by default)")
    ap.add_argument("--workers", type=parse_counts, default=[1, 2, 4], help="worker counts, e.g. 1,2,4")
    ap.add_argument("--topology", choices=("standalone", "cluster"), default="cluster")
    ap.add_argument("--allocator", choices=("jemalloc", "libc"), default="jemalloc",
                    help="the local Valkey's allocator (LOCAL_VALKEY_ALLOCATOR)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="a worker setting by its environment name, e.g. CLICKS_BATCH_MAX=500 (repeatable)")
    args = ap.parse_args()
    env = parse_env(args.env)

    clicks = list(islice(taobao_clicks(Settings.from_env().data_dir), args.clicks))
    results: dict = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                     f"{platform.python_version()}", "clicks": len(clicks), "topology": args.topology,
                     "valkey_allocator": args.allocator, "partitions": PARTITIONS, "worker_env": env, "load_average_1m": round(os.getloadavg()[0], 2), "runs": []}
    with tempfile.TemporaryDirectory(prefix="streamscore-bench-scaleout-") as run_dir:
        try:
            s = start_services(run_dir, args.topology, args.allocator)
            for n in args.workers:
                print(f"{n} worker(s) ...", file=sys.stderr)
                results["runs"].append(run_count(s, clicks, n, env))
        finally:
            stk.stop_processes(stk.registered(run_dir), run_dir)
    one = next((r["clicks_per_s"] for r in results["runs"] if r["workers"] == 1), None)
    f3 = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    rows = [[r["workers"], "-" if r["clicks_per_s"] is None else r["clicks_per_s"], ratio(r["clicks_per_s"], one) or "-",
             " / ".join(str(x) for x in r["processed_per_worker"]),
             " / ".join(f3(x) for x in r["worker_cpu_s_per_1000_own"]),
             f3(r["workers_cpu_s_per_1000"]), f3(r["valkey_cpu_s_per_1000"]), f3(r.get("valkey_busy")),
             f3(r["broker_cpu_s_per_1000"])]
            for r in results["runs"]]
    publish(f"scaleout-{args.topology}", results,
            ["workers", "clicks/s", "x 1 worker", "clicks processed per worker", "CPU s / 1k own clicks, per worker",
             "all workers CPU s / 1k", "Valkey CPU s / 1k", "Valkey busy (CPU s / s)", "broker CPU s / 1k"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
