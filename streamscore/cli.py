"""Command line: ``streamscore <command> ...`` (also ``python -m streamscore``).

Add a command by writing ``def _cmd_x(args, settings) -> int`` plus an optional
``def _args_x(parser)`` and registering both in ``COMMANDS``. Settings come from the
environment (``Settings.from_env()``), nowhere else.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from streamscore.settings import SecretsError, Settings


def _args_stack(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["up", "down", "status"], help="start, stop or show the local stack")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds `up` waits for every service to be healthy")


def _cmd_stack(args: argparse.Namespace, settings: Settings) -> int:
    from streamscore.stack import LocalStack, StackError

    stack = LocalStack(settings)
    if args.action == "up":
        try:
            stack.up(timeout_s=args.timeout)
        except StackError as exc:
            print(f"stack up failed: {exc}", file=sys.stderr)
            return 1
        print(f"stack up (run dir {settings.run_dir}); seconds to healthy: {stack.startup_s}")
        print(f"Prometheus: http://{settings.prometheus_url} (targets /targets, alerts /alerts)")
    elif args.action == "down":
        stack.down()
        print("stack down")
        return 0
    rows = stack.status()
    print(format_status(rows))
    return 0 if all(r["healthy"] for r in rows.values()) else 1


def format_status(rows: dict[str, dict]) -> str:
    """A plain-text table of ``LocalStack.status()``."""
    head = ("service", "pid", "alive", "healthy", "url")
    lines = [head] + [(name, str(r["pid"] or "-"), "external" if r["external"] else str(r["alive"]).lower(),
                       str(r["healthy"]).lower(), r["url"] or "-") for name, r in rows.items()]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def _args_worker(p: argparse.ArgumentParser) -> None:
    p.add_argument("--role", choices=["fraud", "clicks", "pricing", "all"], default=None,
                   help="what this worker runs (default WORKER_ROLE, 'all'): fraud = orders and labels -> verdicts; "
                        "clicks = click features and recommendations; pricing = catalog and orders -> prices. "
                        "Run each role as its own process in production; each scales on its own")


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from streams.app import run_worker

    settings.require_secrets("the worker")
    run_worker(settings, args.role)
    return 0


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from serving.app import run_server

    settings.require_secrets("the HTTP service")
    run_server(settings)
    return 0


def _args_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clicks", type=int, default=20_000, help="Taobao clicks to replay")
    p.add_argument("--orders", type=int, default=2_000, help="Online Retail orders to replay")
    p.add_argument("--fraud-orders", type=int, default=2_000, help="labelled e-commerce fraud purchases to replay")
    p.add_argument("--fraud-since", default=None,
                   help="first purchase date of the fraud part (default 2015-02-01, streamscore.demo.DEMO_FRAUD_SINCE: "
                        "the calmer months; 2015-01-01 replays the January fraud wave, 77%% fraud)")
    p.add_argument("--rate", type=float, default=1000.0,
                   help="replay rate in events/s (0 = as fast as possible: latencies then include the backlog)")
    p.add_argument("--no-wait", action="store_true", help="print the summary and stop instead of serving until Ctrl-C")


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from streamscore.demo import DEMO_FRAUD_SINCE, run

    settings = settings.replace(dev_mode=True)  # the demo is local development: placeholders allowed
    run(settings, args.clicks, args.orders, args.fraud_orders, args.rate or None, keep_running=not args.no_wait,
        fraud_since=args.fraud_since or DEMO_FRAUD_SINCE)
    return 0


def _args_dead_letters(p: argparse.ArgumentParser) -> None:
    from streamscore.deadletters import add_arguments

    add_arguments(p)


def _cmd_dead_letters(args: argparse.Namespace, settings: Settings) -> int:
    from streamscore.deadletters import run

    return run(args, settings)


def _args_alerts(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("receive", help="run the alert webhook receiver on ALERT_RECEIVER_URL until SIGTERM")
    q = sub.add_parser("list", help="the newest alerts the receiver got")
    q.add_argument("-n", type=int, default=20, help="how many (newest last)")


def _cmd_alerts(args: argparse.Namespace, settings: Settings) -> int:
    import json
    import urllib.request

    from monitoring import alert_receiver
    from streamscore import logs
    from streamscore.stack import host_port

    host, port = host_port(settings.alert_receiver_url, 19094)
    if args.action == "receive":
        logs.configure(settings)
        alert_receiver.serve(host, port, settings.alert_store_path, settings.alert_forward_url)
        return 0
    with urllib.request.urlopen(f"http://{host}:{port}/alerts?n={args.n}", timeout=5) as r:
        for alert in json.loads(r.read()):
            print(alert_receiver.format_alert(alert))
    return 0


# Commands that hand their arguments to a module's own command line (its ``main(argv)``): one
# ``streamscore`` for everything a user runs; ``streamscore <command> --help`` shows the module's help.
DELEGATED: dict[str, tuple[str, str]] = {
    "replay": ("replay", "publish real history to the topics, backfill features, or evaluate (replay --help)"),
    "train": ("models", "train the three models into the Triton repository (--only fraud|recommender|pricing)"),
    "train-recommender": ("models.recommender", "train the served recommender on a named dataset or any click file "
                                                "(--dataset NAME | --file F --map ... | --mapping M)"),
    "snapshot": ("features.snapshot", "point-in-time feature snapshots for training"),
    "evaluate": ("replay.evaluate", "replay real data through a worker on the local stack and write a report"),
    "evaluate-models": ("models.evaluate", "offline model evaluation against the baselines (docs/MODELS.md)"),
    "evaluate-recs": ("evaluation.recs_online", "recommendations: offline vs live-path evaluation"),
    "evaluate-recs-cold": ("evaluation.recs_coldstart", "cold-start recommendations: popularity vs category trends "
                                                        "(docs/MODELS.md)"),
    "evaluate-recs-live": ("evaluation.recs_live", "recommendations on YooChoose through the live stack vs offline "
                                                   "(docs/EVALUATION.md)"),
    "evaluate-pricing": ("evaluation.pricing_sim", "pricing: bandit against the fixed-price policies in simulation"),
    "evaluate-drift": ("evaluation.drift", "drift detectors on real data"),
    "report": ("models.report", "the model report (docs/MODELS.md tables and plots)"),
    "dashboards": ("monitoring.dashboards", "regenerate the Grafana dashboards"),
    "bench": ("bench", "a benchmark of bench/: streamscore bench "
                       "verdicts|features|memory|scaleout|pricing|triton|http [args]"),
}
BENCHES = {"verdicts": "bench_verdicts.py", "features": "bench_features.py", "memory": "bench_memory.py",
           "scaleout": "bench_scaleout.py", "pricing": "bench_pricing.py", "triton": "bench_triton.py",
           "http": "http_load.py"}


def _delegate(command: str, rest: list[str]) -> int:
    """Run the module behind ``command`` as ``python -m`` would, with ``rest`` as its arguments."""
    import runpy
    from pathlib import Path

    if command == "bench" and (not rest or rest[0] not in BENCHES):
        print(f"usage: streamscore bench {{{','.join(BENCHES)}}} [args]  (each has --help)", file=sys.stderr)
        return 0 if rest and rest[0] in ("-h", "--help") else 2
    try:
        if command == "bench":
            sys.argv = [f"streamscore bench {rest[0]}", *rest[1:]]
            runpy.run_path(str(Path(__file__).resolve().parent.parent / "bench" / BENCHES[rest[0]]), run_name="__main__")
        else:
            sys.argv = [f"streamscore {command}", *rest]
            runpy.run_module(DELEGATED[command][0], run_name="__main__", alter_sys=True)
    except SystemExit as exc:  # the module's own exit status
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)  # SystemExit("message"): the message, status 2
        return 2
    return 0


# name -> (help, add_arguments(parser) or None, run(args, settings) -> exit code)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None] | None,
                          Callable[[argparse.Namespace, Settings], int]]] = {
    "stack": ("local stack: broker, valkey, tritonserver, prometheus", _args_stack, _cmd_stack),
    "worker": ("run one stream worker (Faust) for a role until SIGTERM", _args_worker, _cmd_worker),
    "serve": ("run the HTTP service until SIGTERM", None, _cmd_serve),
    "dead-letters": ("list, show (decrypted) or replay dead letters: streamscore dead-letters list|show|replay --help",
                     _args_dead_letters, _cmd_dead_letters),
    "alerts": ("the alert webhook receiver: streamscore alerts receive | list", _args_alerts, _cmd_alerts),
    "demo": ("stack up, worker and HTTP service, replay real data, summary, serve until Ctrl-C", _args_demo, _cmd_demo),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        return _delegate(argv[0], argv[1:])
    parser = argparse.ArgumentParser(prog="streamscore", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_, add_args, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        if add_args is not None:
            add_args(p)
    for name, (_, help_) in DELEGATED.items():
        sub.add_parser(name, help=help_, add_help=False)
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command][2](args, Settings.for_command(argv))
    except SecretsError as exc:  # a clear line, not a traceback: the operator has a variable to set
        print(f"streamscore {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
