"""The throughput benchmarks' own pieces (bench/measure.py, bench/bench_scaleout.py, bench/quix_job.py):
the /proc CPU reader on real processes and on a made-up /proc, the commit clock, the metrics sum,
the worker-count flag and the Quix job's event time and running total. No timing is asserted.
"""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import bench_scaleout, measure, quix_job  # noqa: E402
from bench.measure import CommitClock, cpu_seconds, parse_stat  # noqa: E402

BURN = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\n"


@pytest.mark.parametrize("module", [measure, bench_scaleout, quix_job], ids=lambda m: m.__name__)
def test_doctests(module):
    failed, attempted = doctest.testmod(module)
    assert attempted > 0 and failed == 0


def test_parse_stat_reads_this_process():
    exec(BURN.format(s=0.2))  # some CPU of our own to read back
    ppid, pgrp, utime, stime = parse_stat(Path(f"/proc/{os.getpid()}/stat").read_text())
    times = os.times()
    assert (ppid, pgrp) == (os.getppid(), os.getpgrp())
    assert utime / measure.CLK_TCK == pytest.approx(times.user, abs=0.05)
    assert stime / measure.CLK_TCK == pytest.approx(times.system, abs=0.05)


def test_cpu_seconds_counts_a_busy_child_and_its_descendants():
    # a leader in its own session (as stack.start_process starts them) that starts a grandchild,
    # both burning CPU: the grandchild's seconds count as the leader's
    script = (f"import subprocess, sys\np = subprocess.Popen([sys.executable, '-c', {BURN.format(s=0.6)!r}])\n"
              + BURN.format(s=0.3) + "p.wait()\nimport time\ntime.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        before = cpu_seconds(proc.pid)
        end = time.monotonic() + 30
        while cpu_seconds(proc.pid) < 0.8:  # 0.3 s own + 0.6 s of the grandchild, less start-up noise
            assert time.monotonic() < end, cpu_seconds(proc.pid)
            time.sleep(0.05)
        assert cpu_seconds(proc.pid) >= before
    finally:
        proc.kill()
        proc.wait()
    assert cpu_seconds(proc.pid) == 0.0  # gone


def _stat(pid: int, comm: str, ppid: int, pgrp: int, utime: int, stime: int) -> str:
    return f"{pid} ({comm}) S {ppid} {pgrp} {pgrp} 0 -1 0 0 0 0 0 {utime} {stime} 0 0 20 0 1 0 1 0 0\n"


def test_cpu_seconds_on_a_made_up_proc(tmp_path):
    tick = measure.CLK_TCK
    rows = {10: ("lead", 1, 10, 1 * tick, 1 * tick),       # the measured process
            11: ("a) (b", 10, 10, 2 * tick, 0),            # its child, a hostile name
            12: ("grand", 11, 12, 0, 3 * tick),            # a grandchild that left the group
            13: ("group", 1, 10, 4 * tick, 0),             # a group member re-parented to init
            14: ("other", 1, 14, 100 * tick, 100 * tick)}  # not ours
    for pid, (comm, ppid, pgrp, u, s) in rows.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(_stat(pid, comm, ppid, pgrp, u, s))
    (tmp_path / "self").mkdir()  # not a pid: ignored
    (tmp_path / "15").mkdir()    # a pid that vanished before its stat was read: ignored
    assert cpu_seconds(10, tmp_path) == 11.0
    assert cpu_seconds(12, tmp_path) == 3.0
    assert cpu_seconds(99, tmp_path) == 0.0


def test_commit_clock_without_two_commits_is_nan_not_a_number_made_up():
    c = CommitClock()
    c.add(0.0, 0, (1.0,))
    assert c.messages == 0 and c.cpu_per_1000 == []
    c.add(1.0, 500, (2.0,))
    c.add(2.0, 500, (3.0,))  # the count did not move: not a new end
    assert c.messages == 0 and c.rate != c.rate and all(x != x for x in c.cpu_per_1000)  # NaN


def test_wait_commits_stops_on_a_dead_process():
    counts = iter([0, 10, 20])
    with pytest.raises(RuntimeError, match="exited with 0 of 100"):
        measure.wait_commits(100, lambda: next(counts), lambda: (), lambda: False, every_s=0)
    counts = iter([0, 40, 100])
    clock = measure.wait_commits(100, lambda: next(counts), lambda: (), lambda: True, every_s=0)
    assert clock.messages == 60 and clock.samples == 3


def test_quix_running_total_counts_per_state():
    class State(dict):
        def set(self, key, value):
            self[key] = value

    state = State()
    values = [{"user_id": "u"} for _ in range(3)]
    for v in values:
        quix_job.count_total(v, state)
    assert [v["user_total"] for v in values] == [1, 2, 3] and state["total"] == 3
