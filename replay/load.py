"""Load mode: publish as fast as possible and watch the worker's consumer lag over time.

Lag is counted from **committed offsets**, never broker watermarks (the local broker
reports a partition's high watermark as the base offset of its last batch; see
:mod:`streamscore.topics`). For each input topic of the replay, with ``C0`` what the
worker's group had committed when the replay began::

    lag(t) = messages of this replay acknowledged on the topic by t - (committed(t) - C0)

Groups: the role that decides each topic (:meth:`Settings.deciding_group`): ``<app_id>-fraud``
(orders, fraud-labels), ``<app_id>-clicks`` (clicks), ``<app_id>-pricing`` (catalog).
Assumption: the worker had no backlog on these topics when the replay began and nothing
else writes to them meanwhile; otherwise the lag shown is off by that amount.

A sample reads the same committed-offset sums as :func:`streamscore.topics.committed`
(which gives the baseline and the final values) through one long-lived consumer per group,
so a sample takes well under a millisecond instead of a new connection each time.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections import Counter
from typing import Optional

from confluent_kafka import Consumer, TopicPartition

from streamscore.settings import Settings
from streamscore.topics import committed


def worker_groups(settings: Settings, topics) -> dict[str, str]:
    """Input topic -> the worker's consumer group that reads it."""
    return {topic: settings.deciding_group(topic) for topic in topics}


class LagMonitor:
    """Samples publish progress and committed offsets every ``interval_s`` on a thread."""

    def __init__(self, settings: Settings, topics, delivered: Counter, interval_s: float = 1.0,
                 expected: Optional[dict[str, int]] = None):
        self.settings = settings
        self.groups = worker_groups(settings, sorted(set(topics)))
        self.delivered = delivered  # topic -> acknowledged messages of this replay (filled by publish)
        self.expected = expected or {}
        self.interval_s = interval_s
        self.samples: list[dict] = []
        self.baseline: dict[str, int] = {}
        self._consumers: dict[str, Consumer] = {}
        self._parts: dict[str, list[TopicPartition]] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.t0 = 0.0
        self.publish_done_at: Optional[float] = None

    # -- committed offsets ------------------------------------------------------------------
    def _committed(self, topic: str) -> int:
        group = self.groups[topic]
        c = self._consumers.get(group)
        if c is None:
            c = self._consumers[group] = Consumer(self.settings.kafka_client_config(
                **{"group.id": group, "enable.auto.commit": False}))
        if topic not in self._parts:
            parts = c.list_topics(topic, timeout=10).topics[topic].partitions
            self._parts[topic] = [TopicPartition(topic, p) for p in parts]
        return sum(max(tp.offset, 0) for tp in c.committed(self._parts[topic], timeout=10))

    def sample(self) -> dict:
        now = time.monotonic() - self.t0
        delivered = {t: self.delivered.get(t, 0) for t in self.groups}
        consumed = {t: self._committed(t) - self.baseline[t] for t in self.groups}
        row = {"t_s": round(now, 3), "published": delivered, "consumed": consumed,
               "lag": {t: delivered[t] - consumed[t] for t in self.groups},
               "publishing": self.publish_done_at is None}
        prev = self.samples[-1] if self.samples else None
        dt = now - prev["t_s"] if prev else now
        row["publish_per_s"] = round((sum(delivered.values()) - (sum(prev["published"].values()) if prev else 0))
                                     / dt, 1) if dt > 0 else None
        row["consume_per_s"] = round((sum(consumed.values()) - (sum(prev["consumed"].values()) if prev else 0))
                                     / dt, 1) if dt > 0 else None
        self.samples.append(row)
        return row

    # -- lifecycle -----------------------------------------------------------------------------
    def wait_ready(self, timeout_s: float) -> dict:
        """Wait until every worker group is STABLE (joined, partitions assigned), so that the
        measurement does not include a group join. Returns ``{"ready", "waited_s", "states"}``."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(self.settings.kafka_client_config())
        groups = sorted(set(self.groups.values()))
        t0 = time.monotonic()
        states: dict[str, str] = {}
        while True:
            futures = admin.describe_consumer_groups(groups, request_timeout=10)
            for g, f in futures.items():
                try:
                    states[g] = f.result().state.name
                except Exception as exc:  # unknown group, or a broker without DescribeGroups
                    states[g] = f"error: {exc}"
            ready = all(v == "STABLE" for v in states.values())
            if ready or time.monotonic() - t0 >= timeout_s:
                return {"ready": ready, "waited_s": round(time.monotonic() - t0, 1), "states": states}
            time.sleep(0.5)

    def start(self) -> None:
        self.baseline = {t: committed(self.settings, g, t) for t, g in self.groups.items()}
        self.t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="lag-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception as exc:  # a slow broker must not kill the replay: note it, go on
                print(f"lag monitor: sample failed: {exc}", file=sys.stderr)

    def publishing_done(self) -> None:
        self.publish_done_at = time.monotonic() - self.t0

    def drain(self, timeout_s: float, progress=None) -> bool:
        """After publishing: wait until every topic's lag is 0 (True) or ``timeout_s`` passed."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            last = self.samples[-1] if self.samples else None
            if last is not None and not last["publishing"] and all(v <= 0 for v in last["lag"].values()):
                break
            time.sleep(min(self.interval_s, 0.2))
            if progress and last is not None:
                progress(last)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        final = self.sample()
        final_committed = {t: committed(self.settings, g, t) - self.baseline[t] for t, g in self.groups.items()}
        final["consumed_check"] = final_committed  # the shared helper agrees with the sampler
        for c in self._consumers.values():
            c.close()
        return all(v <= 0 for v in final["lag"].values())

    # -- report ----------------------------------------------------------------------------
    def report(self, publish_stats: dict, drained: bool, ready: Optional[dict] = None) -> dict:
        """The JSON report: publish and consume rates, lag over time, the samples."""
        s = self.samples
        total = sum(publish_stats.get("delivered", {}).values())
        done = next((r["t_s"] for r in s if not r["publishing"] and all(v <= 0 for v in r["lag"].values())), None)
        during = [r["publish_per_s"] for r in s if r["publishing"] and r["publish_per_s"]]
        consume = [r["consume_per_s"] for r in s if r["consume_per_s"]]
        return {
            "events": total,
            "worker_ready": ready,
            "publish": {"events_per_s": publish_stats.get("events_per_s"), "elapsed_s": publish_stats.get("elapsed_s"),
                        "interval_events_per_s_median": round(statistics.median(during), 1) if during else None},
            "worker": {
                "groups": self.groups,
                "drained": drained,
                "caught_up_after_s": done,
                "events_per_s": round(total / done, 1) if done else None,
                "interval_events_per_s_median": round(statistics.median(consume), 1) if consume else None,
                "interval_events_per_s_max": max(consume) if consume else None,
                "max_lag": {t: max((r["lag"][t] for r in s), default=0) for t in self.groups},
                "final_lag": s[-1]["lag"] if s else {},
            },
            "interval_s": self.interval_s,
            "samples": s,
        }


def format_table(samples: list[dict]) -> str:
    """Lag over time as a plain-text table (one row per sample)."""
    if not samples:
        return "(no samples)"
    topics = list(samples[0]["lag"])
    head = ["t_s", "published", "pub/s", "consumed", "cons/s"] + [f"lag {t}" for t in topics]
    rows = [head]
    for r in samples:
        rows.append([f"{r['t_s']:.1f}", str(sum(r["published"].values())), f"{r['publish_per_s'] or 0:,.0f}",
                     str(sum(r["consumed"].values())), f"{r['consume_per_s'] or 0:,.0f}"]
                    + [str(r["lag"][t]) for t in topics])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows)
