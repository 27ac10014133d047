"""Pricing bandit benchmark: the worker's cost per item evaluation, and the state it keeps per item.

    .venv/bin/python bench/bench_pricing.py [--items N] [--hours H]

In process, no servers: ``--items`` SYNTHETIC items (seeded log-linear demand, each its own
elasticity) are evaluated hour by hour for ``--hours`` hours exactly as
``streams.processors.Processors._bandit_prices`` does per item: decode the item's stored state
(``Period.from_fields``), ``BanditPricer.step`` (learn the last hour's window, pull or keep an arm,
one guarded step), encode it back (``Period.to_fields``). Reports the time per evaluation (decode,
step, encode; p50 / p99 over items and hours), the state size per item (the Redis hash
``ss:i:{item}:bandit``) at the end, and what that means for one worker: evaluations per second
of CPU, and the default ``PRICE_REFRESH_MAX_ITEMS`` per ``PRICE_REFRESH_INTERVAL_S`` as a share of
one core. Redis round trips (three per batch of items) are not included.

Prints a table, then one JSON line with every figure; writes it to bench/results/.
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import publish  # noqa: E402
from scorers.pricing_bandit import BanditPricer, Period  # noqa: E402
from streamscore.settings import Settings  # noqa: E402


def _stored(fields: dict) -> dict[bytes, bytes]:
    """What a Redis HGETALL returns for the fields HSET was given."""
    return {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()}


def run(items: int, hours: int, seed: int = 1) -> dict:
    s = Settings()
    pricer = BanditPricer(s)
    rng = random.Random(seed)
    curves = {f"syn:item{i}": (rng.uniform(0.5, 20.0), rng.uniform(-3.0, -0.2)) for i in range(items)}
    prices = {i: 10.0 for i in curves}
    stored: dict[str, dict[bytes, bytes]] = {}
    decode, step, encode = [], [], []
    for h in range(hours):
        ts = 1_700_000_000.0 + h * 3600
        for item, (rate, b) in curves.items():
            state = {"price": prices[item], "cost": 6.0, "stock": 100, "ref_price": 10.0}
            m = prices[item] / 10.0
            units = sum(1 for _ in range(64) if rng.random() < rate * math.exp(b * (m - 1)) / 64)  # ~Poisson
            t0 = time.perf_counter()
            period = Period.from_fields(stored[item]) if item in stored else None
            t1 = time.perf_counter()
            period, decision, _ = pricer.step(item, state, period, units * prices[item], ts)
            t2 = time.perf_counter()
            stored[item] = _stored(period.to_fields())
            t3 = time.perf_counter()
            decode.append(t1 - t0)
            step.append(t2 - t1)
            encode.append(t3 - t2)
            prices[item] = decision.price
    total = sorted(d + s_ + e for d, s_, e in zip(decode, step, encode))
    pct = lambda xs, q: sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] * 1e3  # noqa: E731
    sizes = sorted(sum(len(k) + len(v) for k, v in f.items()) for f in stored.values())
    per_s = len(total) / sum(total)
    return {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, "
            f"{__import__('os').cpu_count()} cores, {platform.python_version()}",
            "items": items, "hours": hours, "evaluations": len(total),
            "decode_ms_p50": round(pct(decode, 0.5), 3), "step_ms_p50": round(pct(step, 0.5), 3),
            "encode_ms_p50": round(pct(encode, 0.5), 3),
            "evaluation_ms_p50": round(pct(total, 0.5), 3), "evaluation_ms_p99": round(pct(total, 0.99), 3),
            "evaluations_per_cpu_s": round(per_s), "state_bytes_p50": sizes[len(sizes) // 2],
            "state_bytes_max": sizes[-1],
            "default_batch_cpu_share": round(s.price_refresh_max_items / per_s / s.price_refresh_interval_s, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--hours", type=int, default=24 * 14, help="hours of event time (default two weeks)")
    args = ap.parse_args()
    r = run(args.items, args.hours)
    s = Settings()
    rows = [["evaluations (items x hours)", f"{r['evaluations']:,}"],
            ["per evaluation p50: decode / step / encode (ms)",
             f"{r['decode_ms_p50']} / {r['step_ms_p50']} / {r['encode_ms_p50']}"],
            ["per evaluation p50 / p99 (ms)", f"{r['evaluation_ms_p50']} / {r['evaluation_ms_p99']}"],
            ["evaluations per CPU second", f"{r['evaluations_per_cpu_s']:,}"],
            ["state per item, p50 / max (bytes)", f"{r['state_bytes_p50']:,} / {r['state_bytes_max']:,}"],
            [f"PRICE_REFRESH_MAX_ITEMS={s.price_refresh_max_items} per {s.price_refresh_interval_s:g} s: "
             "share of one core", f"{r['default_batch_cpu_share']:.1%}"]]
    publish("pricing", r, ["measure", "value"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
