"""Where Valkey's time goes on the clicks: server time per click of each feature script, and of the
commands the scripts call.

    .venv/bin/python bench/bench_scripts.py [--clicks 93209] [--batch 2000] [--repeat 1]
                                            [--allocator jemalloc|libc|both] [--instructions]

Applies the first ``--clicks`` Taobao clicks (real data, time-ordered) through
:meth:`features.client.FeatureClient.apply_clicks` in batches of ``--batch`` (the clicks role's
``CLICKS_BATCH_MAX``), each click with the Kafka position a worker would give it (8 partitions keyed
by user, offsets in stream order), with the categories' trending items and co-visitation on: what
the clicks role sends. Into an empty standalone Valkey started for each run.

Two sources, both the server's own clock: ``SLOWLOG`` at a threshold of 0 µs records every
top-level call's execution time (an ``EVALSHA`` is one entry, its script known by its SHA), read
and reset after each batch; ``INFO commandstats`` has the commands run inside the scripts. Neither
counts the network or the client. The server's CPU (``INFO cpu``, less the bench's own ``SLOWLOG``
calls) adds what the scripts' time leaves out: reading requests, writing replies, the event loop. ``--repeat`` runs the whole measurement again on a new server
(the spread between runs is the noise). ``--allocator``: the server's (``LOCAL_VALKEY_ALLOCATOR``);
``both`` alternates jemalloc and libc, each ``--repeat`` times.

``--instructions`` counts instead the instructions the server runs inside ``EVALSHA`` (valgrind's
callgrind, ``--toggle-collect=evalShaCommand``; no SLOWLOG): the same on every run of the same code
and data, where the times above move by +-15% with this VM's load, so a change of a few per cent in
the scripts shows. ~50x slower: use ``--clicks 20000``.

``BENCH_CODE=/path/to/checkout`` measures another checkout's feature code (an A/B in one session:
run it alternately with this one). Prints a table, then one JSON line; writes
bench/results/scripts-<date>.json (not with BENCH_CODE).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import platform
import sys
import time
import zlib
from collections import Counter
from itertools import islice
from pathlib import Path

ROOT = Path(os.environ.get("BENCH_CODE") or Path(__file__).resolve().parent.parent)
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from features import lua  # noqa: E402
from features.client import FeatureClient  # noqa: E402
from features.snapshot import temporary_redis  # noqa: E402
from replay.sources import taobao_clicks  # noqa: E402
from streamscore.settings import Settings  # noqa: E402

PARTITIONS = 8
SLOWLOG_LEN = 100_000  # entries kept between two reads: a batch's calls are a few hundred


def script_names() -> dict[str, str]:
    """SHA1 of each script's source (what ``SCRIPT LOAD`` answers) -> its name."""
    import hashlib

    return {hashlib.sha1(src.encode()).hexdigest(): name for name, src in lua.SCRIPTS.items()}


@contextlib.contextmanager
def callgrind_valkey(allocator: str):
    """A standalone Valkey run under callgrind, counting only inside ``evalShaCommand``; yields
    ``(url, result)``: ``result["instructions"]`` is filled once the server has stopped."""
    from streamscore import stack

    if not shutil.which("valgrind"):
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="streamscore-callgrind-") as run_dir:
        port = stack.free_port(1)
        argv, env = stack.valkey_command("127.0.0.1", port, Path(run_dir), False, allocator)
        out = Path(run_dir) / "callgrind.out"
        proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--toggle-collect=evalShaCommand",
                                 f"--callgrind-out-file={out}", *argv], env={**os.environ, **env},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=run_dir)
        result: dict = {}
        url = f"redis://127.0.0.1:{port}/0"
        try:
            stack.wait_redis(url, timeout=120)
            yield url, result
        finally:
            import redis

            with contextlib.suppress(Exception):
                redis.Redis(port=port).shutdown(nosave=True)
            proc.wait(timeout=120)
        totals = [line for line in out.read_text().splitlines() if line.startswith(("summary:", "totals:"))]
        result["instructions"] = int(totals[0].split()[1])


async def count_instructions(clicks, batch: int, allocator: str) -> dict:
    """The instructions Valkey runs inside the feature scripts for ``clicks`` (:func:`callgrind_valkey`)."""
    with callgrind_valkey(allocator) as (url, result):
        s = Settings.from_env({}, redis_url=url, rec_online_blend=True)
        client = FeatureClient.connect(s)
        await apply_all(client, clicks, batch)
        await client.close()
    return {"allocator": allocator, "clicks": len(clicks), "batch": batch,
            "instructions_per_click": round(result["instructions"] / len(clicks))}


async def apply_all(client, clicks, batch: int, after_batch=None) -> None:
    """``clicks`` through ``apply_clicks`` in batches, each click with a worker's Kafka position."""
    offsets = Counter()
    for i in range(0, len(clicks), batch):
        part = clicks[i:i + batch]
        pos = []
        for c in part:
            p = zlib.crc32(c.user_id.encode()) % PARTITIONS
            pos.append((f"clicks:{p}", offsets[p]))
            offsets[p] += 1
        await client.apply_clicks(part, 20, pos, trends=True)
        if after_batch is not None:
            await after_batch()


async def measure(clicks, batch: int, allocator: str) -> dict:
    names = script_names()
    with temporary_redis(allocator=allocator) as url:
        s = Settings.from_env({}, redis_url=url, rec_online_blend=True)
        client = FeatureClient.connect(s)
        r = client.redis
        await r.config_set("slowlog-max-len", SLOWLOG_LEN)
        await r.config_set("slowlog-log-slower-than", 0)
        await r.slowlog_reset()
        await r.execute_command("CONFIG", "RESETSTAT")
        per_script, calls = Counter(), Counter()
        cpu0 = (await r.info("cpu"))

        async def read_slowlog():
            for entry in await r.slowlog_get(SLOWLOG_LEN):
                cmd = entry["command"].split()
                if cmd and cmd[0].upper() == b"EVALSHA":
                    name = names.get(cmd[1].decode(), cmd[1].decode()[:8])
                    per_script[name] += entry["duration"]
                    calls[name] += 1
            await r.slowlog_reset()

        t0 = time.perf_counter()
        await apply_all(client, clicks, batch, read_slowlog)
        elapsed = time.perf_counter() - t0
        cpu1 = (await r.info("cpu"))
        stats = await r.info("commandstats")
        await client.close()
    n = len(clicks)
    own = ("evalsha", "slowlog", "config", "info", "script", "ping", "client", "hello")  # this bench's, not the scripts'
    inner = {name.removeprefix("cmdstat_"): st for name, st in stats.items()
             if name.removeprefix("cmdstat_").split("|")[0] not in own}
    # the server's CPU over the run, less this bench's own reading of the slow log
    bench_us = sum(st["usec"] for name, st in stats.items() if name.startswith("cmdstat_slowlog"))
    valkey_cpu = ((cpu1["used_cpu_user"] + cpu1["used_cpu_sys"]) - (cpu0["used_cpu_user"] + cpu0["used_cpu_sys"])
                  - bench_us / 1e6)
    return {
        "allocator": allocator, "clicks": n, "batch": batch, "apply_clicks_per_s": round(n / elapsed),
        "valkey_cpu_us_per_click": round(valkey_cpu / n * 1e6, 1),
        "scripts_us_per_click": round(sum(per_script.values()) / n, 2),
        "scripts": {k: {"calls": calls[k], "us_per_click": round(v / n, 2), "us_per_call": round(v / calls[k], 1)}
                    for k, v in per_script.most_common()},
        "commands": {k: {"calls_per_click": round(st["calls"] / n, 3), "us_per_click": round(st["usec"] / n, 2)}
                     for k, st in sorted(inner.items(), key=lambda kv: -kv[1]["usec"])},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clicks", type=int, default=93_209)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--allocator", choices=("jemalloc", "libc", "both"), default="jemalloc")
    ap.add_argument("--instructions", action="store_true", help="count the scripts' instructions (callgrind)")
    args = ap.parse_args()
    clicks = list(islice(taobao_clicks(Settings.from_env().data_dir), args.clicks))
    allocators = ["jemalloc", "libc"] if args.allocator == "both" else [args.allocator]
    run = count_instructions if args.instructions else measure
    runs = [asyncio.run(run(clicks, args.batch, a)) for _ in range(args.repeat) for a in allocators]
    load = os.getloadavg()[0]
    results = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
               f"{platform.python_version()}", "load_average_1m": round(load, 2), "code": str(ROOT), "runs": runs}
    headers = ["run", "allocator", "what", "calls per 1,000 clicks", "server us (instructions) per click",
               "us per call"]
    rows = []
    for j, run in enumerate(runs, 1):
        a = run["allocator"]
        if "instructions_per_click" in run:
            rows.append([j, a, "instructions in the scripts (callgrind)", "", run["instructions_per_click"], ""])
            continue
        rows.append([j, a, "all scripts (SLOWLOG)", "", run["scripts_us_per_click"], ""])
        rows.append([j, a, "Valkey CPU (INFO cpu)", "", run["valkey_cpu_us_per_click"], ""])
        rows.append([j, a, "clicks/s applied in process", "", run["apply_clicks_per_s"], ""])
        for name, st in run["scripts"].items():
            rows.append([j, a, f"  script {name}", round(1000 * st["calls"] / run["clicks"], 1), st["us_per_click"],
                         st["us_per_call"]])
        for name, st in list(run["commands"].items())[:8]:
            rows.append([j, a, f"  command {name}", round(1000 * st["calls_per_click"], 1), st["us_per_click"],
                         round(st["us_per_click"] / st["calls_per_click"], 2) if st["calls_per_click"] else ""])
    from bench.report import publish, table

    if os.environ.get("BENCH_CODE"):
        import json

        print("\n" + table(headers, rows))
        print(json.dumps(results))
        return 0
    publish("scripts-instructions" if args.instructions else "scripts", results, headers, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
