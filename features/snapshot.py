"""Point-in-time feature snapshots for training, computed by the live feature code.

``python -m features.snapshot fraud`` replays the e-commerce fraud purchases (in event
time order) through :meth:`features.client.FeatureClient.apply_orders` - the very call
the ``orders`` agent makes - against an empty Redis, and writes each order's feature
vector *as of just before the order* together with its label to Parquet
(``build/features/fraud_snapshots.parquet``: every
:data:`~features.definitions.ORDER_FEATURES` column (the fraud vector among them), ``label``, ``ts``, ``order_id``). Windows only count events strictly before
the order's time, so a snapshot never contains information from the future. Fraud labels are
replayed too, ``LABEL_DELAY_S`` (14 days) after each purchase, through the fraud role's
``join_labels``: the ``*_fraud_linked`` features count a label from its arrival.

Without ``--redis-url`` a throwaway Valkey is started on a free port and removed after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd

from features.client import FeatureClient
from features.definitions import ORDER_FEATURES
from features.definitions import LABEL_DELAY_S
from streamscore.events import FraudLabel, Order
from streamscore.settings import ROOT, Settings

DEFAULT_OUT = ROOT / "build" / "features" / "fraud_snapshots.parquet"
BATCH = 500
NAMES = [f.name for f in ORDER_FEATURES]


@contextlib.contextmanager
def temporary_redis(topology: str = "standalone", allocator: str = "jemalloc") -> Iterator[str]:
    """Start an empty Valkey on a free loopback port (``topology="cluster"``: a Redis Cluster of
    three primaries, on that port and the next two); yield its URL; stop it. ``allocator``: as
    ``LOCAL_VALKEY_ALLOCATOR`` (:func:`streamscore.stack.valkey_env`)."""
    from streamscore import stack

    with tempfile.TemporaryDirectory(prefix="streamscore-snapshot-") as run_dir:
        port = stack.free_port(6 if topology == "cluster" else 1)  # a cluster: 3 primaries, then their bus ports
        nodes = stack.cluster_nodes(f"redis://127.0.0.1:{port}/0", 3 if topology == "cluster" else 1)
        names = [f"snapshot-redis-{i}" for i in range(len(nodes))]
        try:
            for name, (host, p) in zip(names, nodes):
                stack.start_process(name, *stack.valkey_command(host, p, Path(run_dir), topology == "cluster", allocator),
                                    run_dir)
            for host, p in nodes:
                stack.wait_redis(f"redis://{host}:{p}/0", timeout=15)
            if topology == "cluster":
                stack.form_cluster(nodes)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            stack.stop_processes(names, run_dir)


async def order_snapshots(orders: Iterable[Order], settings: Settings,
                          labels: Iterable[FraudLabel] = ()) -> pd.DataFrame:
    """Feature vectors of ``orders`` (event-time ordered), through the live code path.

    ``labels`` (any order): fraud labels replayed at their own ts through
    :meth:`~features.client.FeatureClient.join_labels`, the fraud role's call, so the
    ``*_fraud_linked`` features see a label only from its arrival: a label is applied before the
    first order at or after its ts (a batch of orders is cut where a label of one of its own orders
    falls), exactly as the stream does it in event time."""
    client = FeatureClient.connect(settings)
    if await client.redis.dbsize():
        raise RuntimeError(f"{settings.redis_url} is not empty: snapshots need an empty Redis")
    rows, batch, in_batch = [], [], set()
    waiting = sorted(((lab.ts, lab.order_id) for lab in labels if lab.is_fraud), reverse=True)  # pop() = earliest

    async def flush():
        for order, values in zip(batch, await client.apply_orders(batch)):
            rows.append([values[n] for n in NAMES] + [order.ts, order.order_id])
        batch.clear()
        in_batch.clear()

    async def labels_before(ts: float):
        due = []
        while waiting and waiting[-1][0] <= ts:
            due.append(waiting.pop())
        if any(oid in in_batch for _, oid in due):
            await flush()
        for i in range(0, len(due), BATCH):
            chunk = due[i:i + BATCH]
            await client.join_labels({oid: True for _, oid in chunk}, at={oid: at for at, oid in chunk})

    try:
        for order in orders:
            await labels_before(order.ts)
            batch.append(order)
            in_batch.add(order.order_id)
            if len(batch) >= BATCH:
                await flush()
        if batch:
            await flush()
    finally:
        await client.close()
    return pd.DataFrame(rows, columns=[*NAMES, "ts", "order_id"])


def fraud_snapshots(settings: Settings) -> pd.DataFrame:
    """Snapshot of every e-commerce fraud purchase with its label (0/1)."""
    from replay.sources import fraud_labels, fraud_orders

    # labels arrive LABEL_DELAY_S after the purchase (the data carry no label time; docs/MODELS.md)
    frame = asyncio.run(order_snapshots(fraud_orders(settings.data_dir), settings,
                                        fraud_labels(settings.data_dir, delay_s=LABEL_DELAY_S)))
    labels = {lab.order_id: int(lab.is_fraud) for lab in fraud_labels(settings.data_dir)}
    frame["label"] = frame["order_id"].map(labels).astype("int8")
    return frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamscore snapshot", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=["fraud"])
    parser.add_argument("--redis-url", help="an EMPTY Redis to use (default: start a throwaway Valkey)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        url = args.redis_url or stack.enter_context(
            temporary_redis(allocator=Settings.from_env().local_valkey_allocator))
        frame = fraud_snapshots(Settings.from_env(redis_url=url))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(args.out, index=False)
    print(f"wrote {len(frame)} snapshots ({int(frame['label'].sum())} fraud) to {args.out} "
          f"in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
