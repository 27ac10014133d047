"""Online feature benchmark: update throughput and read latency, over the real local stack.

    .venv/bin/python bench/bench_features.py [--clicks N] [--reads N] [--read-rate R] [--topology cluster]
        [--quix-python build/quixvenv/bin/python] [--quix-commit-interval S] [--quix-no-changelog]

Starts its own local stack (free ports, temporary run dir) and measures, on real data
(Taobao clicks, e-commerce fraud orders):

1. feature updates per second in one process, per event (one Redis round trip each)
   versus batched (one round trip of Lua script calls per 500 events), the latter also with
   the co-visitation counts off (``REC_ONLINE_BLEND=off``);
2. click events per second through one worker process (broker -> worker -> Redis), a first
   delivery (Valkey emptied before each run: no event id or entity seen before)
   (the clicks role's batch consumer; also with co-visitation off), with recommendation refresh
   off (features only) and on; CPU seconds of the worker per 1,000 clicks;
   and, in the same run on the same broker, the same clicks through a Quix Streams job
   (bench/quix_job.py: per-user counts in 5-minute event-time tumbling windows plus a running
   total, RocksDB state with changelog topics, at-least-once), timed the same way: first to last
   commit of its group, and its CPU per 1,000 clicks. Its venv: ``make quix-venv``;
   ``worker / Quix ratio`` compares the features-only worker's clicks/s to the job's;
3. read latency of the whole checkout feature vector (~40 features, one round trip)
   at a paced rate (default 1,000 reads/s).

``--topology cluster``: the same over a local Redis Cluster of three primaries
(``REDIS_TOPOLOGY=cluster``). Prints a table, then one JSON line with every figure; writes it to
bench/results/ (``features-<date>.json``, ``features-cluster-<date>.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from confluent_kafka import Producer  # noqa: E402

from bench.measure import CommitClock, cpu_seconds, fig, flush_valkey, ratio, valkey_cpu, valkey_nodes, wait_commits  # noqa: E402
from bench.report import publish  # noqa: E402
from features.client import FeatureClient  # noqa: E402
from replay.sources import fraud_orders, taobao_clicks  # noqa: E402
from streamscore import stack as stk  # noqa: E402
from streamscore.settings import Settings  # noqa: E402
from streamscore.topics import committed  # noqa: E402


def free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def batched_updates(settings: Settings, clicks) -> float:
    client = FeatureClient.connect(settings)
    await client.redis.flushdb()
    t0 = time.perf_counter()
    for i in range(0, len(clicks), 500):
        await client.apply_clicks(clicks[i:i + 500], 20, trends=True)  # what the clicks role writes
    rate = len(clicks) / (time.perf_counter() - t0)
    await client.close()
    return rate


async def in_process_updates(settings: Settings, clicks, per_event_n: int) -> dict:
    client = FeatureClient.connect(settings)
    await client.redis.flushdb()
    t0 = time.perf_counter()
    for c in clicks[:per_event_n]:
        await client.apply_clicks([c], 20)
    per_event = per_event_n / (time.perf_counter() - t0)
    await client.close()
    batched = await batched_updates(settings, clicks)
    no_covis = await batched_updates(settings.replace(rec_online_blend=False), clicks)
    return {"per_event_updates_per_s": round(per_event), "batched_updates_per_s": round(batched),
            "batched_no_covis_updates_per_s": round(no_covis)}


def publish_clicks(s: Settings, topic: str, clicks) -> None:
    """Every click to ``topic`` (keyed by user id, as the shop writes them), acknowledged."""
    producer = Producer(s.kafka_client_config(**{"linger.ms": 20}))
    for c in clicks:
        producer.produce(topic, key=c.user_id.encode(), value=c.to_bytes())
    assert producer.flush(60) == 0


def timed_process(s: Settings, name: str, argv: list[str], env: dict, group: str, topic: str, n: int) -> CommitClock:
    """Start ``argv`` as ``name``, clock its group's commits on ``topic`` up to ``n`` (rate and the
    CPU over the first-to-last-commit interval of: its process tree, Valkey (summed over primaries)
    and the broker), stop it."""
    nodes, broker = valkey_nodes(s), stk.process_alive("kafka", s.run_dir)
    pid = stk.start_process(name, argv, env, s.run_dir)
    try:
        return wait_commits(n, lambda: committed(s, group, topic),
                            lambda: (cpu_seconds(pid), valkey_cpu(nodes), cpu_seconds(broker) if broker else 0.0),
                            lambda: stk.process_alive(name, s.run_dir) is not None)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{stk.log_tail(name, s.run_dir)}") from None
    finally:
        stk.stop_process(name, s.run_dir)


def through_worker(base: Settings, clicks, label: str, **overrides) -> dict:
    """Publish the clicks first, then time one clicks worker (``WORKER_ROLE=clicks``, what a scaled-out
    deployment runs) from its first to its last commit, from an empty Valkey: a first delivery."""
    s = base.replace(app_id=f"bench-{label}", topic_clicks=f"bench-{label}-clicks", worker_role="clicks", **overrides)
    stk.create_topics(s, s.all_topics)
    publish_clicks(s, s.topic_clicks, clicks)
    flush_valkey(valkey_nodes(s))
    clock = timed_process(s, "bench-worker", [sys.executable, "-m", "streamscore", "worker"], s.to_env(),
                          s.deciding_group(s.topic_clicks), s.topic_clicks, len(clicks))
    own, valkey, broker = clock.cpu_per_1000
    return {f"worker_{label}_clicks_per_s": fig(clock.rate), f"worker_{label}_cpu_s_per_1000": fig(own, 4),
            f"worker_{label}_valkey_cpu_s_per_1000": fig(valkey, 4),
            f"worker_{label}_broker_cpu_s_per_1000": fig(broker, 4)}


# Tansu keeps only the topic configs it was given and describes nothing else, while Quix derives
# its changelog topics' retention from the input topic's ``retention.ms`` (KeyError without it):
# the Quix input topic is created with Kafka's defaults spelled out.
QUIX_TOPIC_CONFIG = {"retention.ms": "604800000", "retention.bytes": "-1"}


def through_quix(s: Settings, clicks, python: str, commit_interval_s: float, changelog: bool,
                 label: str = "quix") -> dict:
    """The same clicks through bench/quix_job.py (per-user 5-minute event-time tumbling window
    counts and a running total, RocksDB state, at-least-once), timed like ``through_worker``."""
    from confluent_kafka.admin import AdminClient, NewTopic

    topic, group = f"bench-{label}-clicks", f"bench-{label}"
    admin = AdminClient(s.kafka_client_config())
    for f in admin.create_topics([NewTopic(topic, s.topic_partitions, s.topic_replication,
                                           config=QUIX_TOPIC_CONFIG)]).values():
        f.result(30)
    publish_clicks(s, topic, clicks)
    argv = [python, str(ROOT / "bench" / "quix_job.py"), "--bootstrap", s.kafka_bootstrap, "--topic", topic,
            "--group", group, "--state-dir", str(Path(s.run_dir) / f"{label}-state"), "--output-topic",
            f"bench-{label}-windows", "--commit-interval", str(commit_interval_s),
            "--fetch-wait-ms", str(s.fetch_max_wait_ms), "--loglevel", "WARNING"]  # the workers' fetch wait
    if not changelog:
        argv.append("--no-changelog")
    clock = timed_process(s, "bench-quix", argv, {}, group, topic, len(clicks))
    own, valkey, broker = clock.cpu_per_1000
    return {"quix_clicks_per_s": fig(clock.rate), "quix_cpu_s_per_1000": fig(own, 4),
            "quix_broker_cpu_s_per_1000": fig(broker, 4),
            "quix_commit_interval_s": commit_interval_s, "quix_changelog_topics": changelog}


async def read_latency(settings: Settings, orders, clicks, n_reads: int, rate: float) -> dict:
    client = FeatureClient.connect(settings)
    await client.redis.flushdb()
    for i in range(0, len(orders), 500):
        await client.apply_orders(orders[i:i + 500])
    for i in range(0, len(clicks), 500):
        await client.apply_clicks(clicks[i:i + 500], 20)
    rng = random.Random(1)
    sample = [rng.choice(orders) for _ in range(n_reads)]
    width = len(await client.read_checkout(sample[0]))
    latencies = []
    start = time.perf_counter()
    for i, order in enumerate(sample):
        wait = start + i / rate - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        t0 = time.perf_counter()
        await client.read_checkout(order)
        latencies.append((time.perf_counter() - t0) * 1e3)
    achieved = n_reads / (time.perf_counter() - start)
    await client.close()
    return {"read_features": width, "read_rate_per_s": round(achieved), "read_p50_ms": round(pct(latencies, 0.5), 3),
            "read_p99_ms": round(pct(latencies, 0.99), 3), "read_max_ms": round(max(latencies), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clicks", type=int, default=96_168, help="Taobao clicks (the whole sample by default)")
    ap.add_argument("--per-event", type=int, default=10_000, help="clicks for the per-event (unbatched) run")
    ap.add_argument("--reads", type=int, default=20_000)
    ap.add_argument("--read-rate", type=float, default=1000.0)
    ap.add_argument("--topology", choices=("standalone", "cluster"), default="standalone")
    ap.add_argument("--allocator", choices=("jemalloc", "libc"), default="jemalloc",
                    help="the local Valkey's allocator (LOCAL_VALKEY_ALLOCATOR)")
    ap.add_argument("--quix-python", default=str(ROOT / "build" / "quixvenv" / "bin" / "python"),
                    help="the interpreter of the Quix Streams job (make quix-venv)")
    ap.add_argument("--quix-commit-interval", type=float, default=1.0,
                    help="its commit interval, s (Quix's default is 5; 1 bounds the clock's end error to 1 s)")
    ap.add_argument("--quix-no-changelog", action="store_true", help="Quix state without changelog topics")
    ap.add_argument("--no-quix", action="store_true", help="leave the Quix Streams comparison out")
    args = ap.parse_args()
    if not args.no_quix and not Path(args.quix_python).exists():
        ap.error(f"{args.quix_python} not found: make quix-venv (the Quix Streams job's own venv)")

    data = Settings.from_env().data_dir
    clicks = list(islice(taobao_clicks(data), args.clicks))
    orders = list(fraud_orders(data, limit=20_000))
    results: dict = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, "
                     f"{__import__('os').cpu_count()} cores, {platform.python_version()}", "clicks": len(clicks), "topology": args.topology,
                     "valkey_allocator": args.allocator, "load_average_1m": round(__import__('os').getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="streamscore-bench-") as run_dir:
        kafka, http, grpc, metrics, api, worker, prom, am, receiver = free_ports(9)
        redis_port = stk.free_port(6)  # a cluster's primaries and bus ports follow it
        s = Settings.from_env({}, dev_mode=True, kafka_bootstrap=f"127.0.0.1:{kafka}", redis_url=f"redis://127.0.0.1:{redis_port}/0",
                              triton_http_url=f"127.0.0.1:{http}", triton_grpc_url=f"127.0.0.1:{grpc}",
                              triton_metrics_url=f"127.0.0.1:{metrics}", http_port=api, worker_metrics_port=worker,
                              prometheus_url=f"127.0.0.1:{prom}", alertmanager_url=f"127.0.0.1:{am}",
                              alert_receiver_url=f"127.0.0.1:{receiver}",  # no clash with another stack on the machine
                              run_dir=run_dir, session_timeout_s=6.0, heartbeat_s=0.5,
                              redis_topology=args.topology, local_valkey_allocator=args.allocator)
        local = stk.LocalStack(s)
        local.up(timeout_s=120)
        try:
            print("1/3 in-process feature updates ...", file=sys.stderr)
            results.update(asyncio.run(in_process_updates(s, clicks, args.per_event)))
            print("2/3 clicks through one worker ...", file=sys.stderr)
            results.update(through_worker(s, clicks, "batch", rec_refresh_interval_s=0.0))
            if not args.no_quix:
                print("   the same clicks through the Quix Streams job ...", file=sys.stderr)
                results.update(through_quix(s, clicks, args.quix_python, args.quix_commit_interval,
                                            not args.quix_no_changelog))
                results["worker_over_quix"] = ratio(results["worker_batch_clicks_per_s"], results["quix_clicks_per_s"])
                # per CPU: the worker's process and Valkey (where its state lives) against the Quix process
                # (state in its own RocksDB); the broker's share is in the JSON for both
                worker_cpu = (results["worker_batch_cpu_s_per_1000"], results["worker_batch_valkey_cpu_s_per_1000"])
                results["worker_over_quix_per_cpu"] = ratio(results["quix_cpu_s_per_1000"],
                                                            None if None in worker_cpu else sum(worker_cpu))
            results.update(through_worker(s, clicks, "batch_no_covis", rec_refresh_interval_s=0.0,
                                          rec_online_blend=False))
            results.update(through_worker(s, clicks, "batch_with_recs"))
            print("3/3 checkout vector reads ...", file=sys.stderr)
            results.update(asyncio.run(read_latency(s, orders, clicks[:20_000], args.reads, args.read_rate)))
        finally:
            local.down()

    rows = [("feature updates/s, one process, per event", results["per_event_updates_per_s"]),
            ("feature updates/s, one process, batched", results["batched_updates_per_s"]),
            ("feature updates/s, one process, batched, co-visitation off", results["batched_no_covis_updates_per_s"]),
            ("clicks/s through one worker: batch consumer, features only", results["worker_batch_clicks_per_s"]),
            ("  worker CPU s per 1,000 clicks (features only)", results["worker_batch_cpu_s_per_1000"]),
            ("  Valkey CPU s per 1,000 clicks (features only)", results["worker_batch_valkey_cpu_s_per_1000"]),
            ("clicks/s through one worker: batch consumer, features only, co-visitation off",
             results["worker_batch_no_covis_clicks_per_s"]),
            ("clicks/s through one worker: batch consumer + recommendations",
             results["worker_batch_with_recs_clicks_per_s"]),
            (f"checkout vector read ({results['read_features']} features) p50 ms", results["read_p50_ms"]),
            (f"checkout vector read p99 ms at {results['read_rate_per_s']} reads/s", results["read_p99_ms"])]
    if "quix_clicks_per_s" in results:
        rows[6:6] = [("clicks/s through the Quix Streams job (5-min windows + total)"
                      + ("" if results["quix_changelog_topics"] else ", no changelog topics"), results["quix_clicks_per_s"]),
                     ("  Quix job CPU s per 1,000 clicks", results["quix_cpu_s_per_1000"]),
                     ("worker / Quix ratio", results["worker_over_quix"]),
                     ("worker / Quix ratio per CPU second (worker + Valkey vs the Quix process)",
                      results["worker_over_quix_per_cpu"])]
    publish("features" if args.topology == "standalone" else "features-cluster", results, ["measure", "value"], [list(r) for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
