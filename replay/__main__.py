"""``python -m replay --scenario demo [--dry-run] ...``: replay real datasets into Kafka.

Prints a JSON summary to stdout; progress lines go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from typing import NamedTuple

from streamscore.events import parse
from streamscore.settings import Settings

from .publish import PublishError, publish, stderr_progress
from .scenario import SCENARIOS
from .sources import DEFAULT_LABEL_DELAY_S


class Encoded(NamedTuple):
    """An event already serialised: what :func:`publish` needs (``ts``, ``to_bytes()``)."""

    ts: float
    value: bytes

    def to_bytes(self) -> bytes:
        return self.value


def _speed(text: str):
    return None if text == "max" else float(text)


def dry_run(events, max_bytes: int) -> dict:
    """Validate every message as a consumer would (events.parse on the wire bytes); count per topic."""
    per_topic: dict[str, dict] = defaultdict(lambda: {"events": 0, "keys": set(), "first_ts": None, "last_ts": None})
    for topic, key, ev in events:
        parse(type(ev), ev.to_bytes(), max_bytes)
        t = per_topic[topic]
        t["events"] += 1
        t["keys"].add(key)
        t["first_ts"] = ev.ts if t["first_ts"] is None else t["first_ts"]
        t["last_ts"] = ev.ts
    return {topic: {**t, "keys": len(t["keys"])} for topic, t in per_topic.items()}


def main(argv=None) -> int:
    settings = Settings.from_env()
    ap = argparse.ArgumentParser(prog="python -m replay", description=__doc__)
    ap.add_argument("--scenario", choices=sorted(SCENARIOS), default="demo")
    ap.add_argument("--clicks", type=int, default=20_000, help="Taobao clicks (0 = none)")
    ap.add_argument("--orders", type=int, default=2_000, help="Online Retail orders (0 = none)")
    ap.add_argument("--fraud-orders", type=int, default=2_000, help="fraud-dataset orders, each with a label")
    ap.add_argument("--fraud-since", default=None, help="skip fraud purchases before this date (e.g. 2015-02-01)")
    ap.add_argument("--label-delay", type=float, default=DEFAULT_LABEL_DELAY_S, help="seconds from purchase to label")
    ap.add_argument("--catalog", action="store_true", help="also replay the derived Online Retail catalog")
    ap.add_argument("--start-ts", type=float, default=None, help="where every dataset's first event lands (default now)")
    ap.add_argument("--speed", type=_speed, default=None, help="'max' or an event-time speed factor (60 = 60x)")
    ap.add_argument("--rate", type=float, default=None, help="at most this many events/s")
    ap.add_argument("--bootstrap", default=settings.kafka_bootstrap)
    ap.add_argument("--data-dir", default=settings.data_dir)
    ap.add_argument("--dry-run", action="store_true", help="validate and count per topic, no broker")
    args = ap.parse_args(argv)

    counts: Counter = Counter()
    events = SCENARIOS[args.scenario](
        args.data_dir, settings=settings, clicks=args.clicks, orders=args.orders, fraud_orders=args.fraud_orders,
        label_delay_s=args.label_delay, catalog=args.catalog, fraud_since=args.fraud_since,
        start_ts=args.start_ts, counts=counts)
    if args.dry_run:
        print(json.dumps({"topics": dry_run(events, settings.max_event_bytes), "skipped": dict(counts)}, indent=2))
        return 0
    # Encode up front: a known total gives an ETA, and bytes are far smaller than models.
    events = [(topic, key, Encoded(ev.ts, ev.to_bytes())) for topic, key, ev in events]
    try:
        stats = publish(events, args.bootstrap, rate=args.rate, speed=args.speed, progress=stderr_progress,
                        total=len(events))
    except PublishError as exc:
        print(json.dumps({"error": str(exc), **exc.stats}, indent=2))
        return 1
    print(json.dumps({**stats, "skipped": dict(counts)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
