"""Shared measurement helpers of the throughput benchmarks (bench_features, bench_scaleout): the CPU
seconds a process used (``/proc/<pid>/stat``), Valkey's (``INFO cpu``), a worker's event counter
(its ``/metrics``), and the first-to-last-commit clock of a consumer group.

Why first to last commit: the clicks are published before the measured process starts, so its
start-up (imports, group join, state recovery) is outside the interval; its rate is the messages
committed between its first and its last commit over the time between them, and its CPU cost is
the CPU it used over that same interval, per 1,000 of those messages.
"""

from __future__ import annotations

import os
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")  # the unit of utime/stime in /proc/<pid>/stat (100 on Linux)


def fig(x: float | None, digits: int | None = None):
    """A figure for the JSON and the table: ``round(x, digits)``, or None where there is none
    (NaN: too few commits to time).

    >>> fig(1234.56), fig(0.012345, 4), fig(float("nan")), fig(None)
    (1235, 0.0123, None, None)
    """
    if x is None or x != x:
        return None
    return round(x, digits) if digits is not None else round(x)


def ratio(a: float | None, b: float | None, digits: int = 2):
    """``a / b`` rounded, or None if either is missing or ``b`` is 0.

    >>> ratio(10, 4), ratio(None, 4), ratio(3, 0)
    (2.5, None, None)
    """
    return round(a / b, digits) if a is not None and b else None


def parse_stat(text: str) -> tuple[int, int, int, int]:
    """``(ppid, pgrp, utime, stime)`` of one ``/proc/<pid>/stat`` line; times in clock ticks.

    The command name (field 2) is in parentheses and may hold spaces or ``)``: fields are counted
    after its last ``)``.

    >>> parse_stat("42 (python -m a) b)) S 1 42 42 0 -1 4194560 10 0 0 0 250 31 7 3 20 0 9 0 100 0 0")
    (1, 42, 250, 31)
    """
    rest = text[text.rindex(")") + 2:].split()
    # rest[0] is field 3 (state): ppid is field 4, pgrp 5, utime 14, stime 15
    return int(rest[1]), int(rest[2]), int(rest[11]), int(rest[12])


def _stats(proc: Path) -> dict[int, tuple[int, int, int, int]]:
    out = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = parse_stat((entry / "stat").read_text())
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
    return out


def cpu_seconds(pid: int, proc: Path = Path("/proc")) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants and process-group members
    (a process started by ``streamscore.stack.start_process`` leads its own group). Children that
    already exited and were reaped count through the parent's ``cutime``/``cstime`` only, which
    this leaves out: the measured processes keep their helpers alive. 0.0 if ``pid`` is gone.
    """
    stats = _stats(proc)
    if pid not in stats:
        return 0.0
    found = {p for p, s in stats.items() if s[1] == pid} | {pid}
    while more := {p for p, s in stats.items() if s[0] in found} - found:
        found |= more
    return sum(stats[p][2] + stats[p][3] for p in found) / CLK_TCK


def valkey_cpu_seconds(info: dict) -> float:
    """User + system CPU seconds of a Valkey server from its ``INFO cpu`` (main thread and the
    rest; background children are ``used_cpu_*_children`` and left out: no saves in the bench).

    >>> valkey_cpu_seconds({"used_cpu_sys": 1.5, "used_cpu_user": 2.25, "used_cpu_sys_children": 9})
    3.75
    """
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def valkey_nodes(settings) -> list[tuple[str, int]]:
    """``(host, port)`` of every Valkey primary of ``settings`` (a local cluster's three, or one)."""
    from streamscore import stack as stk

    if settings.redis_topology == "cluster":
        return stk.cluster_nodes(settings.redis_url)
    return [stk.host_port(settings.redis_url, 6379)]


def flush_valkey(nodes: list[tuple[str, int]]) -> None:
    """Empty the Valkey primaries at ``nodes`` and reset their command stats: what follows is a first delivery
    (no event id, position or entity seen before)."""
    import redis

    for host, port in nodes:
        with redis.Redis(host=host, port=port, socket_timeout=10) as r:
            r.flushall()
            r.config_resetstat()


def valkey_cpu(nodes: list[tuple[str, int]]) -> float:
    """CPU seconds so far of the Valkey servers at ``nodes``, summed (``INFO cpu`` of each)."""
    import redis

    total = 0.0
    for host, port in nodes:
        with redis.Redis(host=host, port=port, socket_timeout=5) as r:
            total += valkey_cpu_seconds(r.info("cpu"))
    return total


def metric_sum(text: str, name: str) -> float:
    """Sum of every sample of counter ``name`` in a Prometheus text exposition (all label sets).

    >>> metric_sum('# HELP x_total X\\nx_total{topic="a"} 3.0\\nx_total{topic="b"} 4.0\\nx_created{topic="a"} 9\\n',
    ...            "x_total")
    7.0
    """
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.split()[-1])
    return total


def scrape(port: int, name: str = "streamscore_events_total") -> float:
    """``metric_sum`` of a local worker's ``/metrics`` (0.0 while it does not answer)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0.0
    return metric_sum(text, name)


@dataclass
class CommitClock:
    """Samples ``(time s, messages committed, CPU seconds so far of each measured process, or any
    other counter)`` of a run; rate and CPU cost between the first sample with a commit and the last whose count moved.

    >>> c = CommitClock()
    >>> for t, n, cpu in [(0, 0, (1.0, 0)), (1, 100, (1.5, 1)), (2, 600, (2.0, 2)), (3, 1100, (2.5, 3)),
    ...                   (4, 1100, (2.6, 9))]:
    ...     c.add(t, n, cpu)
    >>> c.messages, c.seconds, c.rate, c.cpu_per_1000, c.deltas
    (1000, 2, 500.0, [1.0, 2.0], [1.0, 2])
    """

    first: tuple[float, int, tuple[float, ...]] | None = None
    last: tuple[float, int, tuple[float, ...]] | None = None
    samples: int = field(default=0)

    def add(self, t: float, done: int, cpu: tuple[float, ...] = ()) -> None:
        self.samples += 1
        if done <= 0:
            return
        if self.first is None:
            self.first = self.last = (t, done, tuple(cpu))
        elif done != self.last[1]:
            self.last = (t, done, tuple(cpu))

    @property
    def messages(self) -> int:
        return self.last[1] - self.first[1] if self.first else 0

    @property
    def seconds(self) -> float:
        return self.last[0] - self.first[0] if self.first else 0.0

    @property
    def rate(self) -> float:
        """Messages per second (NaN with fewer than two distinct commits: raise the message count)."""
        return self.messages / self.seconds if self.seconds > 0 else float("nan")

    @property
    def deltas(self) -> list[float]:
        """How much each sampled quantity (CPU seconds, or any counter) grew over the interval."""
        return [b - a for a, b in zip(self.first[2], self.last[2])] if self.first else []

    @property
    def cpu_per_1000(self) -> list[float]:
        """CPU seconds of each measured process per 1,000 messages over the same interval (NaN
        each with fewer than two distinct commits)."""
        if not self.first:
            return []
        return [(b - a) * 1000 / self.messages if self.messages > 0 else float("nan")
                for a, b in zip(self.first[2], self.last[2])]


def wait_commits(total: int, committed, cpu, alive, limit_s: float = 600, every_s: float = 0.1) -> CommitClock:
    """Poll ``committed()`` (and ``cpu()``, a tuple of CPU seconds so far) until it reaches
    ``total``; ``alive()`` false or ``limit_s`` passed raise RuntimeError. Returns the CommitClock."""
    clock, end = CommitClock(), time.monotonic() + limit_s
    done = 0
    while done < total:
        if time.monotonic() > end:
            raise RuntimeError(f"{done} of {total} committed after {limit_s:.0f} s")
        if not alive():
            raise RuntimeError(f"measured process exited with {done} of {total} committed")
        done = committed()
        # CPU read right after the commit count: the interval's CPU matches its messages
        clock.add(time.monotonic(), done, cpu())
        time.sleep(every_s)
    return clock
