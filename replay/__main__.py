"""python -m replay: real history (and, clearly labelled, synthetic events) back through the live system.

  python -m replay [publish] [stream options] [--speed X | --rate N] [--resume-file F] [--load] [--dry-run]
  python -m replay backfill [stream options] [--redis-url URL] [--batch N] [--flush-db]
  python -m replay evaluate [stream options] [--out REPORT.md] [--json FILE]

The stream: a scenario (default `demo`: Taobao clicks, Online Retail orders and catalog,
e-commerce fraud purchases and their late labels), files given a column mapping (--file or
--mapping) and synthetic sources (--synthetic), merged by event time onto one timeline, each
source shifted to start at --start-ts. Same arguments and data -> the same events in the
same order, byte for byte (pass --start-ts; the default start is two years ago, so the replayed history
stays behind the wall clock).

publish (the default) sends it to the input topics, keyed by entity (clicks and orders by
user, labels by order, catalog by item), at --speed (event-time factor) or --rate, or as
fast as possible. --resume-file records what the broker acknowledged; the same command
resumes where it stopped, neither skipping nor repeating an event (docs/REPLAY.md).
--load reports sustained events/s and the worker's consumer lag over time.
backfill writes the stream's features straight into Redis through the worker's feature code.
evaluate (minimal) scores the live fraud verdicts of a replayed stream against its labels.

Stdout: one JSON summary. Stderr: progress. Exit status: 0 done; 1 some deliveries failed
(resumable); 2 bad arguments, input or checkpoint; 128+N stopped by signal N (resumable).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import NamedTuple, Optional

from streamscore.events import parse
from streamscore.settings import Settings

from . import synthetic
from .checkpoint import Checkpoint, CheckpointError, prefix_crcs, reconcile
from .files import FileSource, MappingError, add_file_arguments, file_sources, read_file
from .publish import PublishError, publish, stderr_progress
from .scenario import SCENARIOS, Source, default_start, merge
from .sources import DEFAULT_LABEL_DELAY_S

COMMANDS = ("publish", "backfill", "evaluate")
SCENARIO_DEFAULTS = {"clicks": 20_000, "orders": 2_000, "fraud_orders": 2_000}


class Encoded(NamedTuple):
    """An event already serialised: what :func:`publish` needs (``ts``, ``to_bytes()``)."""

    ts: float
    value: bytes

    def to_bytes(self) -> bytes:
        return self.value


class UsageError(Exception):
    """Bad arguments or input: reported on stderr, exit status 2."""


def _speed(text: str):
    return None if text == "max" else float(text)


def _start(text: str):
    return None if text == "now" else float(text)


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


# --- arguments ----------------------------------------------------------------------------

def _stream_args(ap: argparse.ArgumentParser, settings: Settings) -> None:
    g = ap.add_argument_group("scenario (real datasets under --data-dir)")
    g.add_argument("--scenario", choices=sorted(SCENARIOS) + ["none"], default=None,
                   help="named scenario (default: demo; none when --file/--mapping/--synthetic is given "
                        "and no option of this group is)")
    g.add_argument("--clicks", type=int, default=None,
                   help=f"Taobao clicks (0 = none; default {SCENARIO_DEFAULTS['clicks']})")
    g.add_argument("--orders", type=int, default=None,
                   help=f"Online Retail orders (0 = none; default {SCENARIO_DEFAULTS['orders']})")
    g.add_argument("--fraud-orders", type=int, default=None,
                   help=f"fraud-dataset orders, each with a label (default {SCENARIO_DEFAULTS['fraud_orders']})")
    g.add_argument("--fraud-since", default=None, help="skip fraud purchases before this date (e.g. 2015-02-01)")
    g.add_argument("--label-delay", type=float, default=DEFAULT_LABEL_DELAY_S, help="seconds from purchase to label")
    g.add_argument("--catalog", action="store_true", help="also replay the derived Online Retail catalog")
    g.add_argument("--data-dir", default=settings.data_dir)

    add_file_arguments(ap.add_argument_group("files (CSV / JSONL / Parquet, .gz ok) with a column mapping"))

    s = ap.add_argument_group("SYNTHETIC sources (labelled: ids syn:/syn-, see replay/synthetic.py)")
    s.add_argument("--synthetic", action="append", default=[], choices=["fraud", "demand"],
                   help="add synthetic orders with labelled fraud patterns, or demand with known elasticities")
    s.add_argument("--seed", type=int, default=0, help="seed of the synthetic generator")
    s.add_argument("--syn-users", type=int, default=synthetic.FraudConfig.users, help="synthetic legit customers")
    s.add_argument("--syn-days", type=float, default=synthetic.FraudConfig.days, help="synthetic days of history")
    s.add_argument("--syn-items", type=int, default=synthetic.DemandConfig.items, help="synthetic demand items")
    s.add_argument("--synthetic-truth", type=Path, default=None, metavar="FILE",
                   help="write the generator's ground truth (patterns, incidents, elasticities) as JSON")

    t = ap.add_argument_group("timeline")
    t.add_argument("--start-ts", type=_start, default=None,
                   help="Unix s where every source's first event lands (default now; resume: the checkpoint's)")
    t.add_argument("--keep-times", action="store_true", help="no time shift: events keep their recorded times")
    t.add_argument("--limit", type=int, default=None, help="only the first N events of the merged stream")


def _publish_parser(settings: Settings) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="streamscore replay", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    _stream_args(ap, settings)
    p = ap.add_argument_group("publishing")
    p.add_argument("--speed", type=_speed, default=None, help="'max' or an event-time speed factor (60 = 60x)")
    p.add_argument("--rate", type=float, default=None, help="at most this many events/s")
    p.add_argument("--bootstrap", default=settings.kafka_bootstrap)
    p.add_argument("--dry-run", action="store_true", help="validate and count per topic, no broker")
    p.add_argument("--resume-file", type=Path, default=None, metavar="FILE",
                   help="checkpoint: created if missing, resumed from if present (same arguments required)")
    p.add_argument("--checkpoint-every", type=float, default=1.0, metavar="S",
                   help="seconds between checkpoint writes (also written at every stop)")
    lm = ap.add_argument_group("load mode")
    lm.add_argument("--load", action="store_true",
                   help="as fast as possible (or --rate), then report events/s and consumer lag over time")
    lm.add_argument("--app-id", default=settings.app_id, help="the worker's app id (consumer groups)")
    lm.add_argument("--sample-interval", type=float, default=1.0, help="seconds between lag samples")
    lm.add_argument("--drain-timeout", type=float, default=300.0, help="seconds to wait for lag 0 after publishing")
    lm.add_argument("--ready-timeout", type=float, default=60.0,
                   help="seconds to wait for the worker's consumer groups to be STABLE before starting")
    lm.add_argument("--report", type=Path, default=None, metavar="FILE", help="also write the load report (JSON)")
    return ap


def _backfill_parser(settings: Settings) -> argparse.ArgumentParser:
    from . import backfill

    ap = argparse.ArgumentParser(prog="streamscore replay backfill", description=backfill.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    _stream_args(ap, settings)
    b = ap.add_argument_group("backfill")
    b.add_argument("--redis-url", default=settings.redis_url, help="the Redis to fill (default REDIS_URL)")
    b.add_argument("--batch", type=int, default=backfill.BATCH, help="events per feature-code call")
    b.add_argument("--flush-db", action="store_true", help="FLUSHDB first (the whole database!)")
    return ap


def _evaluate_parser(settings: Settings) -> argparse.ArgumentParser:
    from . import evaluate

    ap = argparse.ArgumentParser(prog="streamscore replay evaluate", description=evaluate.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    _stream_args(ap, settings)
    e = ap.add_argument_group("evaluation")
    e.add_argument("--bootstrap", default=settings.kafka_bootstrap)
    e.add_argument("--wait", type=float, default=120.0, help="seconds to wait for every labelled order's verdict")
    e.add_argument("--out", type=Path, default=None, metavar="REPORT.md", help="write the markdown report")
    e.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the figures as JSON")
    return ap


# --- the stream -----------------------------------------------------------------------------

_file_sources = file_sources  # --mapping / --file options -> FileSource list (replay/files.py)


def _scenario(args) -> Optional[str]:
    """The scenario to run (None = none); fills the scenario's default sizes into ``args``."""
    if hasattr(args, "resolved_scenario"):
        return args.resolved_scenario
    explicit = any(getattr(args, k) is not None for k in SCENARIO_DEFAULTS) or args.catalog or args.fraud_since
    for k, v in SCENARIO_DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.scenario is not None:
        args.resolved_scenario = None if args.scenario == "none" else args.scenario
    else:
        args.resolved_scenario = "demo" if explicit or not (args.file or args.mapping or args.synthetic) else None
    return args.resolved_scenario


def stream_spec(args, settings: Settings, files: list[FileSource]) -> dict:
    """Everything that defines the merged stream (what a checkpoint must match)."""
    spec: dict = {"topics": {"clicks": settings.topic_clicks, "orders": settings.topic_orders,
                             "fraud-labels": settings.topic_fraud_labels, "catalog": settings.topic_catalog}}
    scenario = _scenario(args)
    if scenario:
        spec["scenario"] = {"name": scenario, "clicks": args.clicks, "orders": args.orders,
                            "fraud_orders": args.fraud_orders, "fraud_since": args.fraud_since,
                            "label_delay": args.label_delay, "catalog": args.catalog,
                            "data_dir": str(Path(args.data_dir).resolve())}
    if files:
        spec["files"] = [f.to_spec() for f in files]
    if args.synthetic:
        spec["synthetic"] = {"kinds": sorted(set(args.synthetic)), "seed": args.seed, "users": args.syn_users,
                             "days": args.syn_days, "items": args.syn_items}
    spec.update(keep_times=args.keep_times, limit=args.limit)
    return spec


def build_stream(args, settings: Settings, files: list[FileSource], start_ts: Optional[float], info: dict):
    """The merged ``(topic, key, event)`` stream; ``info`` gets skip counts, invalid-row
    examples and what was synthetic."""
    counts: Counter = info.setdefault("skipped", Counter())
    examples: list = info.setdefault("invalid_examples", [])
    topic_of = {"clicks": settings.topic_clicks, "orders": settings.topic_orders,
                "fraud-labels": settings.topic_fraud_labels, "catalog": settings.topic_catalog}
    srcs: list[Source] = []
    scenario = _scenario(args)
    if scenario:
        srcs += SCENARIOS[scenario](args.data_dir, settings=settings, clicks=args.clicks, orders=args.orders,
                                    fraud_orders=args.fraud_orders, label_delay_s=args.label_delay,
                                    catalog=args.catalog, fraud_since=args.fraud_since, counts=counts)
    for f in files:
        srcs.append(Source(topic_of[f.topic], read_file(f, counts=counts, examples=examples),
                           clock=f.clock or f"file:{f.file}", namespace=f.namespace))
    truth = {}
    if "fraud" in args.synthetic:
        fr = synthetic.fraud(args.seed, synthetic.FraudConfig(users=args.syn_users, days=args.syn_days,
                                                              label_delay_s=args.label_delay))
        srcs.append(Source(settings.topic_orders, fr.orders, clock="syn-fraud", namespace=synthetic.NS))
        srcs.append(Source(settings.topic_fraud_labels, fr.labels, clock="syn-fraud", namespace=synthetic.NS))
        info.setdefault("synthetic", {})["fraud"] = fr.summary()
        truth["fraud"] = {"pattern": fr.pattern, "incidents": fr.incidents, "config": fr.config}
    if "demand" in args.synthetic:
        dm = synthetic.demand(args.seed, synthetic.DemandConfig(items=args.syn_items, days=max(args.syn_days, 1.0)))
        srcs.append(Source(settings.topic_catalog, dm.catalog, clock="syn-demand", namespace=synthetic.NS))
        srcs.append(Source(settings.topic_orders, dm.orders, clock="syn-demand", namespace=synthetic.NS))
        info.setdefault("synthetic", {})["demand"] = {k: v for k, v in dm.summary().items() if k != "truth"}
        truth["demand"] = {"truth": dm.truth, "config": dm.config}
    if truth:
        what = ", ".join(f"{kind}: {summary['orders']} orders" for kind, summary in info["synthetic"].items())
        print(f"replay: NOTE this stream includes SYNTHETIC events (ids 'syn:'/'syn-', label source 'syn:*'): "
              f"{what}", file=sys.stderr)
        if args.synthetic_truth:
            args.synthetic_truth.parent.mkdir(parents=True, exist_ok=True)
            args.synthetic_truth.write_text(json.dumps({"synthetic": True, **truth}, indent=1))
    events = merge(srcs, start_ts=None if args.keep_times else start_ts, keep_times=args.keep_times)
    if args.limit is not None:
        import itertools

        events = itertools.islice(events, args.limit)
    return events


def _summary_info(info: dict) -> dict:
    out = {"skipped": dict(info.get("skipped", {}))}
    if info.get("invalid_examples"):
        out["invalid_examples"] = info["invalid_examples"]
    if info.get("synthetic"):
        out["synthetic"] = info["synthetic"]
    return out


# --- commands ---------------------------------------------------------------------------

@contextlib.contextmanager
def _signals_to(stop: threading.Event, received: list):
    def handler(signum, _frame):
        received.append(signum)
        stop.set()
        print(f"\nreplay: signal {signum}: stopping after the in-flight messages are acknowledged ...",
              file=sys.stderr, flush=True)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


@contextlib.contextmanager
def _locked(path: Path):
    """Refuse two replays on one checkpoint at the same time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"{path} is in use by another replay") from None
        yield


def _resolve_start(args, spec_path: Optional[Path]) -> Optional[float]:
    if args.keep_times:
        if args.start_ts is not None:
            raise UsageError("--start-ts and --keep-times exclude each other")
        return None
    if args.start_ts is not None:
        return args.start_ts
    if spec_path is not None and spec_path.exists():
        with contextlib.suppress(Exception):
            return json.loads(spec_path.read_text())["spec"]["start_ts"]
    return default_start()


def cmd_publish(args, settings: Settings) -> int:
    files = _file_sources(args)
    settings = settings.replace(kafka_bootstrap=args.bootstrap, app_id=args.app_id)
    if args.load and args.speed:
        raise UsageError("--load publishes as fast as possible (or at --rate): drop --speed")
    if args.dry_run and args.resume_file:
        raise UsageError("--dry-run publishes nothing: drop --resume-file")
    start_ts = _resolve_start(args, args.resume_file)
    spec = {**stream_spec(args, settings, files), "start_ts": start_ts}
    info: dict = {}
    if args.dry_run:
        topics = dry_run(build_stream(args, settings, files, start_ts, info), settings.max_event_bytes)
        print(json.dumps({"topics": topics, **_summary_info(info), "start_ts": start_ts}, indent=2))
        return 0
    with contextlib.ExitStack() as stack:
        ck = None
        if args.resume_file:
            stack.enter_context(_locked(args.resume_file))
            ck = Checkpoint.open(args.resume_file, spec)
            ck.every_s = args.checkpoint_every
        stop, received = threading.Event(), []
        stack.enter_context(_signals_to(stop, received))
        t_build = time.monotonic()
        events = [(topic, key, Encoded(ev.ts, ev.to_bytes()))
                  for topic, key, ev in build_stream(args, settings, files, start_ts, info)]
        print(f"replay: {len(events):,} events ready in {time.monotonic() - t_build:.1f}s", file=sys.stderr)
        topics = sorted({t for t, _, _ in events})
        extra: dict = {}
        if ck is not None:
            ck.bind(prefix_crcs(events))
            if ck.complete:
                print(f"replay: {args.resume_file} says this replay is complete: nothing to send", file=sys.stderr)
                print(json.dumps({"sent": 0, "complete": True, "total": ck.total, "checkpoint": str(ck.path),
                                  "run_id": ck.run_id, **_summary_info(info)}, indent=2))
                return 0
            if ck.status == "running":  # the last run died without a final checkpoint: read the tail
                extra["reconciled"] = reconcile(ck, settings, topics)
                ck.resumed_from = ck.done_count
                print(f"replay: previous run ended without a checkpoint; {extra['reconciled']} more events "
                      f"found on the broker", file=sys.stderr)
            elif ck.status == "new":
                ck.record_start_offsets(settings, topics)
            if ck.done_count:
                print(f"replay: resuming {args.resume_file}: {ck.done_count:,} of {ck.total:,} already published",
                      file=sys.stderr)
        delivered: Counter = Counter()
        monitor = None
        if args.load:
            from .load import LagMonitor

            monitor = LagMonitor(settings, topics, delivered, args.sample_interval)
            ready = monitor.wait_ready(args.ready_timeout)
            if not ready["ready"]:
                print(f"replay: WARNING worker groups not stable after {args.ready_timeout}s ({ready['states']}): "
                      "is the worker running? The numbers will include its start-up.", file=sys.stderr)
            monitor.start()
        try:
            stats = publish(events, settings, rate=args.rate, speed=None if args.load else args.speed,
                            progress=stderr_progress, total=len(events), checkpoint=ck, stop=stop,
                            delivered=delivered)
        except PublishError as exc:
            print(json.dumps({"error": str(exc), **exc.stats, **extra}, indent=2))
            return 1
        if sys.stderr.isatty():
            print(file=sys.stderr)
        result = {**stats, **extra, **_summary_info(info), "start_ts": start_ts}
        if monitor is not None:
            from .load import format_table

            monitor.publishing_done()
            drained = monitor.drain(0.0 if stop.is_set() else args.drain_timeout,
                                    progress=lambda r: print(f"replay: waiting for the worker, lag {r['lag']}",
                                                             file=sys.stderr, flush=True))
            report = monitor.report(stats, drained, ready)
            print(format_table(report["samples"]), file=sys.stderr)
            if args.report:
                args.report.parent.mkdir(parents=True, exist_ok=True)
                args.report.write_text(json.dumps(report, indent=1))
            result["load"] = {k: v for k, v in report.items() if k != "samples"}
            result["load"]["samples"] = len(report["samples"])
        print(json.dumps(result, indent=2))
        if received:
            return 128 + received[0]
        return 0


def cmd_backfill(args, settings: Settings) -> int:
    from . import backfill

    files = _file_sources(args)
    settings = settings.replace(redis_url=args.redis_url)
    start_ts = _resolve_start(args, None)
    info: dict = {}
    events = list(build_stream(args, settings, files, start_ts, info))

    def progress(p: dict) -> None:
        eta = f" eta {p['eta_s']}s" if p.get("eta_s") is not None else ""
        print(f"backfill: {p['events']:,}/{p['total']:,} events {p['events_per_s']:,} ev/s "
              f"applied {p['applied']}{eta}", file=sys.stderr, flush=True)

    stats = asyncio.run(backfill.backfill(events, settings, batch=args.batch, progress=progress, total=len(events),
                                          flush_db=args.flush_db))
    print(json.dumps({**stats, **_summary_info(info), "start_ts": start_ts}, indent=2))
    return 0


def cmd_evaluate(args, settings: Settings, argv: list[str]) -> int:
    import shlex

    from . import evaluate

    files = _file_sources(args)
    settings = settings.replace(kafka_bootstrap=args.bootstrap)
    if args.start_ts is None and not args.keep_times:
        raise UsageError("evaluate needs the replay's --start-ts (or --keep-times) to rebuild the same stream")
    info: dict = {}
    result = evaluate.evaluate(build_stream(args, settings, files, args.start_ts, info), settings, wait_s=args.wait)
    result.update(_summary_info(info))
    command = "python -m replay evaluate " + shlex.join(argv)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(evaluate.markdown(result, command))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=2))
    return 0 if result["with_verdict"] else 1


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    settings = Settings.for_command(argv, "replay")
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "publish"
    parsers = {"publish": _publish_parser, "backfill": _backfill_parser, "evaluate": _evaluate_parser}
    args = parsers[command](settings).parse_args(argv)
    try:
        if command == "backfill":
            return cmd_backfill(args, settings)
        if command == "evaluate":
            return cmd_evaluate(args, settings, argv)
        return cmd_publish(args, settings)
    except (UsageError, MappingError, CheckpointError, ValueError) as exc:  # ValueError: input data
        print(f"replay: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
