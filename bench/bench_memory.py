"""Memory benchmark: bytes Valkey retains per click, on standalone Valkey and on a Redis Cluster.

    .venv/bin/python bench/bench_memory.py [--clicks 90000] [--topology standalone|cluster|both]

Applies the first ``--clicks`` Taobao clicks (real data, time-ordered) through
:meth:`features.client.FeatureClient.apply_clicks` in batches of 500, each click with the Kafka
position a worker would give it (8 partitions keyed by user, offsets in stream order), into an
empty Valkey started for the run (three primaries for the cluster). Reports ``used_memory``
growth (summed over the primaries) divided by the clicks, the keys, and the share of the retained
bytes per key family (``MEMORY USAGE`` of every key). Co-visitation on (the production default).

``BENCH_CODE=/path/to/checkout`` runs the same measurement with another checkout's feature code
(standalone only, without positions: the baseline of an older layout, in the same run).
Prints a table, then one JSON line; writes bench/results/memory-<date>.json (not with BENCH_CODE).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import platform
import re
import sys
import time
import zlib
from collections import Counter
from itertools import islice
from pathlib import Path

ROOT = Path(os.environ.get("BENCH_CODE") or Path(__file__).resolve().parent.parent)
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from features.client import FeatureClient  # noqa: E402
from features.snapshot import temporary_redis  # noqa: E402
from replay.sources import taobao_clicks  # noqa: E402
from streamscore.settings import Settings  # noqa: E402

PARTITIONS = 8
BATCH = 500


async def _primaries(client) -> list:
    """A plain client per primary (one for a standalone server)."""
    import redis.asyncio as aioredis

    if hasattr(client.redis, "get_primaries"):
        await client.redis.initialize()
        return [aioredis.Redis(host=n.host, port=n.port) for n in client.redis.get_primaries()]
    return [client.redis]


def family(key: bytes) -> str:
    """``ss:<kind>:...:<suffix>`` -> ``<kind>:<suffix>`` (ids and tags left out)."""
    parts = key.decode(errors="replace").split(":")
    if parts[1] == "g":
        return "g:" + parts[2]
    rest = [p for p in parts[2:] if not p.startswith("{")]
    suffix = ":".join(p for p in rest[1:] if not re.fullmatch(r"\d+", p))
    return f"{parts[1]}:{suffix}" if suffix else parts[1]


async def measure(clicks, topology: str) -> dict:
    with (temporary_redis(topology) if topology != "standalone" else temporary_redis()) as url:
        s = Settings.from_env({}, redis_url=url, rec_online_blend=True,
                              **({"redis_topology": topology} if topology != "standalone" else {}))
        client = FeatureClient.connect(s)
        nodes = await _primaries(client)
        before = sum([(await n.info("memory"))["used_memory"] for n in nodes])
        positional = "positions" in inspect.signature(client.apply_clicks).parameters
        # the stream's path: the categories' trending items too, where this code has them
        trends = {"trends": True} if "trends" in inspect.signature(client.apply_clicks).parameters else {}
        offsets = Counter()
        t0 = time.perf_counter()
        for i in range(0, len(clicks), BATCH):
            batch = clicks[i:i + BATCH]
            if positional:
                pos = []
                for c in batch:
                    p = zlib.crc32(c.user_id.encode()) % PARTITIONS
                    pos.append((f"clicks:{p}", offsets[p]))
                    offsets[p] += 1
                await client.apply_clicks(batch, 20, pos, **trends)
            else:
                await client.apply_clicks(batch, 20)
        elapsed = time.perf_counter() - t0
        after = sum([(await n.info("memory"))["used_memory"] for n in nodes])
        keys, usage = 0, Counter()
        for n in nodes:
            batch_keys = [k async for k in n.scan_iter("*", count=10_000)]
            keys += len(batch_keys)
            pipe = n.pipeline(transaction=False)
            for k in batch_keys:
                pipe.memory_usage(k, samples=0)
            for k, b in zip(batch_keys, await pipe.execute()):
                usage[family(k)] += b or 0
        await client.close()
        total = sum(usage.values()) or 1
        return {"topology": topology, "primaries": len(nodes), "clicks": len(clicks), "positions": positional,
                "used_memory_growth_bytes": after - before, "bytes_per_click": round((after - before) / len(clicks), 1),
                "keys": keys, "keys_per_click": round(keys / len(clicks), 2), "apply_clicks_per_s": round(len(clicks) / elapsed),
                "families": {f: round(b / total, 3) for f, b in usage.most_common(8)}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clicks", type=int, default=90_000)
    ap.add_argument("--topology", choices=("standalone", "cluster", "both"), default="both")
    args = ap.parse_args()
    clicks = list(islice(taobao_clicks(Settings.from_env().data_dir), args.clicks))
    topologies = ["standalone", "cluster"] if args.topology == "both" else [args.topology]
    runs = [asyncio.run(measure(clicks, t)) for t in topologies]
    load = os.getloadavg()[0]
    results = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
               f"{platform.python_version()}", "load_average_1m": round(load, 2), "code": str(ROOT), "runs": runs}
    rows = [[r["topology"], r["primaries"], r["clicks"], r["bytes_per_click"], r["keys"], r["apply_clicks_per_s"],
             ", ".join(f"{f} {v:.0%}" for f, v in list(r["families"].items())[:5])] for r in runs]
    headers = ["topology", "primaries", "clicks", "bytes/click", "keys", "clicks/s (in-process)", "largest families"]
    if os.environ.get("BENCH_CODE"):
        from bench.report import table

        print("\n" + table(headers, rows))
        import json

        print(json.dumps(results))
        return 0
    from bench.report import publish

    publish("memory", results, headers, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
