"""Open-loop HTTP load generator (used by ``bench/bench_verdicts.py``), and a trivial server to
measure the generator's own capacity.

    .venv/bin/python bench/http_load.py trivial-server --port P      # answers every request at once
    .venv/bin/python bench/http_load.py load --url http://127.0.0.1:P --rate 300 --seconds 5 [--path /v1/fraud/score]
    .venv/bin/python bench/http_load.py capacity --url http://127.0.0.1:P [--concurrency 32 --seconds 3]

Open loop: request ``i`` is *scheduled* at ``start + i / rate`` whatever happened to the
earlier ones, and its latency is counted from that scheduled time, not from when the client
got round to sending it: a slow server or a saturated generator shows up as latency instead
of silently lowering the offered rate (no coordinated omission). ``late_p99_ms`` reports how far
behind schedule the generator itself started requests; if it is more than a few ms the
generator, not the server, is the bottleneck.

Keep-alive connections from one ``aiohttp.ClientSession`` pool (``max_connections``, default 64),
HTTP/1.1, one event loop. Latencies use the event loop's monotonic clock. Not httpx: measured
against the trivial server on 2 cores, httpx 0.28 / httpcore 1.0 spent 1.2 ms of CPU per
request with 2-8 pooled connections and 4.4 ms with 32 (its pool checks every connection on
every request), i.e. under 300 requests/s per core at the pool size an open loop needs;
aiohttp spent ~0.15 ms (about 6,000 requests/s per core).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time

import aiohttp

FRAUD_PATH = "/v1/fraud/score"


def percentile(values, q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``q`` of the values at or below it.

    >>> percentile([5, 1, 4, 2, 3], 0.5), percentile(range(1, 101), 0.99), percentile([7.0], 0.99)
    (3, 99, 7.0)
    >>> percentile([], 0.5)
    nan
    """
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _session(base_url: str, headers: dict, max_connections: int, timeout_s: float) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=max_connections)
    return aiohttp.ClientSession(base_url, headers=headers, connector=connector,
                                 timeout=aiohttp.ClientTimeout(total=timeout_s))


def _ms(x: float) -> float:
    return round(x, 3) if not math.isnan(x) else x


async def run_http_load(base_url: str, token: str, bodies: list[bytes], rate: float, duration_s: float, *,
                        path: str = FRAUD_PATH, warmup_s: float = 0.0, max_connections: int = 64,
                        timeout_s: float = 5.0) -> dict:
    """POST ``bodies`` (cycled) to ``base_url + path`` at ``rate`` requests/s for ``warmup_s +
    duration_s`` seconds, open loop; the first ``warmup_s`` seconds are sent but not counted.

    Returns ``n`` (measured requests), ``p50_ms`` / ``p99_ms`` / ``max_ms`` (scheduled send ->
    response, over the measured requests that got a 200), ``degraded_share`` (share of those whose
    JSON body has ``"degraded": true``), ``errors`` (status != 200 or an exception, measured
    requests), plus ``achieved_rate`` (measured requests / measured seconds, completions
    included), ``late_p99_ms`` (how late the generator started requests against their schedule),
    ``cpu_s`` (this process's CPU time over the whole run) and ``error_kinds``.
    """
    if rate <= 0 or duration_s <= 0 or not bodies:
        raise ValueError("rate, duration_s and bodies must be positive / non-empty")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    n_warm = int(round(rate * warmup_s))
    n_total = n_warm + int(round(rate * duration_s))
    latency: list[float | None] = [None] * n_total
    late: list[float] = [0.0] * n_total
    degraded = [False] * n_total
    errors: dict[str, int] = {}
    loop = asyncio.get_running_loop()

    async with _session(base_url, headers, max_connections, timeout_s) as client:
        async def one(i: int, scheduled: float) -> None:
            try:
                async with client.post(path, data=bodies[i % len(bodies)]) as r:
                    content = await r.read()
                done = loop.time()
                if r.status != 200:
                    kind = f"status {r.status}"
                else:
                    latency[i] = (done - scheduled) * 1e3
                    degraded[i] = json.loads(content).get("degraded") is True
                    return
            except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the load
                kind = type(exc).__name__
            if i >= n_warm:
                errors[kind] = errors.get(kind, 0) + 1

        cpu0 = time.process_time()
        tasks = []
        start = loop.time() + 0.01
        for i in range(n_total):
            scheduled = start + i / rate
            wait = scheduled - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            late[i] = max(0.0, loop.time() - scheduled) * 1e3
            tasks.append(asyncio.create_task(one(i, scheduled)))
        await asyncio.gather(*tasks)
        measured_end = loop.time()
        cpu = time.process_time() - cpu0

    ok = [latency[i] for i in range(n_warm, n_total) if latency[i] is not None]
    n = n_total - n_warm
    return {
        "n": n,
        "p50_ms": _ms(percentile(ok, 0.50)),
        "p99_ms": _ms(percentile(ok, 0.99)),
        "max_ms": _ms(max(ok) if ok else math.nan),
        "degraded_share": round(sum(degraded[n_warm:]) / len(ok), 6) if ok else math.nan,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "rate": rate,
        "achieved_rate": round(n / max(1e-9, measured_end - (start + n_warm / rate)), 1),
        "late_p99_ms": _ms(percentile(late[n_warm:], 0.99)),
        "cpu_s": round(cpu, 3),
    }


async def closed_loop_capacity(base_url: str, token: str, bodies: list[bytes], duration_s: float = 3.0,
                               concurrency: int = 32, path: str = FRAUD_PATH) -> dict:
    """The generator's own ceiling: ``concurrency`` requests always in flight, for ``duration_s``.

    Against a trivial server (``trivial-server``) this is how fast the client side can go:
    ``requests_per_s`` (on however many cores are free) and ``cpu_us_per_request`` (this
    process's CPU per request, so ``1e6 / cpu_us_per_request`` requests/s is one core's worth).
    """
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    count = [0]
    async with _session(base_url, headers, concurrency, 5.0) as client:
        loop = asyncio.get_running_loop()

        async def worker(k: int, end: float) -> None:
            i = k
            while loop.time() < end:
                async with client.post(path, data=bodies[i % len(bodies)]) as r:
                    await r.read()
                    r.raise_for_status()
                count[0] += 1
                i += concurrency

        await asyncio.gather(*(worker(k, loop.time() + 0.5) for k in range(concurrency)))  # open connections
        count[0] = 0
        cpu0, t0 = time.process_time(), loop.time()
        await asyncio.gather(*(worker(k, t0 + duration_s) for k in range(concurrency)))
        wall, cpu = loop.time() - t0, time.process_time() - cpu0
    return {"requests_per_s": round(count[0] / wall, 1), "cpu_us_per_request": round(cpu / count[0] * 1e6, 1),
            "one_core_requests_per_s": round(count[0] / cpu, 1), "concurrency": concurrency}


# --- a trivial HTTP/1.1 server: the generator's counterpart when measuring the generator ---------

def _response(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


async def start_trivial_server(port: int, host: str = "127.0.0.1",
                               body: bytes = b'{"degraded":false}') -> asyncio.AbstractServer:
    """An HTTP/1.1 server answering every request at once with 200 and ``body``, keep-alive."""
    response = _response(body)

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                writer.write(response)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(connection, host, port)


async def trivial_server(port: int, host: str = "127.0.0.1") -> None:
    """Serve :func:`start_trivial_server` forever."""
    server = await start_trivial_server(port, host)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    srv = sub.add_parser("trivial-server")
    srv.add_argument("--port", type=int, required=True)
    for name in ("load", "capacity"):
        p = sub.add_parser(name)
        p.add_argument("--url", required=True)
        p.add_argument("--token", default="dev-token-change-me")
        p.add_argument("--path", default=FRAUD_PATH)
        p.add_argument("--seconds", type=float, default=5.0)
        p.add_argument("--body", default='{"order_id":"o-1","user_id":"u-1","amount":9.5,"ts":1.7e9}')
        if name == "load":
            p.add_argument("--rate", type=float, default=300.0)
        else:
            p.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args(argv)
    if args.cmd == "trivial-server":
        asyncio.run(trivial_server(args.port))
        return 0
    bodies = [args.body.encode()]
    if args.cmd == "load":
        out = asyncio.run(run_http_load(args.url, args.token, bodies, args.rate, args.seconds, path=args.path))
    else:
        out = asyncio.run(closed_loop_capacity(args.url, args.token, bodies, args.seconds, args.concurrency, args.path))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
