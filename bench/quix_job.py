"""The Quix Streams comparison job of bench/bench_features.py: what a stream-processing library
does with the same clicks, as one process.

    build/quixvenv/bin/python bench/quix_job.py --bootstrap HOST:PORT --topic T --group G --state-dir DIR
        [--output-topic T] [--commit-interval S] [--fetch-wait-ms MS] [--no-changelog]

Reads the clicks topic (JSON objects as written by ``streamscore.events.Click.to_bytes()``, keyed by
user id), with event time = the click's ``ts`` (Unix seconds, float; Quix takes milliseconds) and
per user (the message key) keeps

* a running total of clicks (RocksDB state, ``.update(..., stateful=True)``), and
* the click count of 5-minute event-time tumbling windows (``.tumbling_window(5 min).count()``),
  whose closed windows (``.final()``: the window ended and its grace period, 0 s, passed) are
  written to ``--output-topic`` as ``{"start": ms, "end": ms, "value": count}``.

At-least-once (Quix's default ``processing_guarantee``, no transactions): offsets and state are
committed together every ``--commit-interval`` seconds (Quix default 5 s, the same as a normal Quix
app). ``--fetch-wait-ms``: the consumer's ``fetch.wait.max.ms`` (the bench gives the workers'
``KAFKA_FETCH_MAX_WAIT_MS``: the local broker answers a fetch only when that wait expires).
``--no-changelog`` runs without changelog topics (state in local RocksDB only, not recoverable
on another host): only for brokers that cannot host them.

Runs in its own virtual environment (``make quix-venv``: build/quixvenv from the hash lock
bench/quix-requirements.lock), because every Quix Streams release caps confluent-kafka and pydantic
below the project's pins (quixstreams 3.28.1: confluent-kafka<2.13, pydantic<2.14). So it imports
nothing from streamscore. Stops on SIGTERM/SIGINT (Quix commits what it processed first).
"""

from __future__ import annotations

import argparse
import logging
from datetime import timedelta

WINDOW = timedelta(minutes=5)


def event_time_ms(value, headers, timestamp: int, timestamp_type) -> int:
    """The click's ``ts`` (Unix seconds) in milliseconds, Quix's unit of event time; the Kafka
    record timestamp (ms) when the value carries no usable ``ts``.

    >>> event_time_ms({"ts": 1511544070.5}, None, 7, 0)
    1511544070500
    >>> event_time_ms({"user_id": "1"}, None, 7, 0), event_time_ms(None, None, 7, 0)
    (7, 7)
    """
    ts = value.get("ts") if isinstance(value, dict) else None
    if isinstance(ts, (int, float)) and not isinstance(ts, bool):
        return int(ts * 1000)
    return timestamp


def count_total(value: dict, state) -> None:
    """Add one to the user's running total (state key ``total``) and stamp it on the click."""
    total = state.get("total", 0) + 1
    state.set("total", total)
    value["user_total"] = total


def build(app, topic: str, output_topic: str | None):
    """The job's StreamingDataFrame on ``app``: running total, then 5-minute window counts."""
    clicks = app.topic(topic, value_deserializer="json", key_deserializer="str", timestamp_extractor=event_time_ms)
    sdf = app.dataframe(clicks)
    sdf = sdf.filter(lambda v: isinstance(v, dict))
    sdf = sdf.update(count_total, stateful=True)
    windows = sdf.tumbling_window(WINDOW, grace_ms=0).count().final()
    if output_topic:
        windows = windows.to_topic(app.topic(output_topic, key_serializer="str", value_serializer="json"))
    return windows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers (HOST:PORT)")
    ap.add_argument("--topic", required=True, help="the clicks topic")
    ap.add_argument("--group", required=True, help="consumer group")
    ap.add_argument("--state-dir", required=True, help="RocksDB state directory")
    ap.add_argument("--output-topic", default=None, help="where closed windows go (none: not produced)")
    ap.add_argument("--commit-interval", type=float, default=5.0, help="seconds between commits (Quix default 5)")
    ap.add_argument("--fetch-wait-ms", type=int, default=None,
                    help="consumer fetch.wait.max.ms (librdkafka default 500; the local broker always waits this long)")
    ap.add_argument("--no-changelog", action="store_true", help="no changelog topics (local state only)")
    ap.add_argument("--loglevel", default="INFO")
    args = ap.parse_args(argv)

    from quixstreams import Application

    app = Application(broker_address=args.bootstrap, consumer_group=args.group, auto_offset_reset="earliest",
                      state_dir=args.state_dir, commit_interval=args.commit_interval,
                      processing_guarantee="at-least-once", use_changelog_topics=not args.no_changelog,
                      loglevel=args.loglevel,
                      consumer_extra_config=({"fetch.wait.max.ms": args.fetch_wait_ms}
                                             if args.fetch_wait_ms is not None else None))
    build(app, args.topic, args.output_topic)
    logging.getLogger("quix_job").info("running: topic %s group %s changelog %s", args.topic, args.group,
                                       not args.no_changelog)
    app.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
