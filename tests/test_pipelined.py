"""The pipelined consume loop (streams.runtime.RoleConsumer._run_pipelined), with its broker calls stubbed:
what overlaps (the next batch's preparation with this one's apply) and what must not (a batch applied
before the one before is committed; watermarks judged from a batch that did not go as prepared).

Over the real stack, the clicks role runs this loop in test_spine, test_crash (0 lost, 0 double counted
after a kill) and test_rebalance."""

from __future__ import annotations

import asyncio

from monitoring.metrics import Metrics
from prometheus_client import CollectorRegistry
from streams.runtime import Applied, Profile, RoleConsumer
from streams.validation import Output
from streamscore.settings import Settings


class _Msg:
    def __init__(self, partition: int, offset: int, value: bytes):
        self._p, self._o, self._v = partition, offset, value

    def error(self):
        return None

    def topic(self):
        return "clicks"

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def key(self):
        return b"k"

    def value(self):
        return self._v

    def timestamp(self):
        return (0, 1_000)


class _Prepared:
    def __init__(self, values, after):
        self.values = values
        self.after = after
        self.marks = {("clicks", 0): max(values)}


class _Stage:
    """Records the order of events; ``fail_on``: a value whose prepared apply fails (its batch then goes
    through the handler event by event). ``follow_up``: each batch has a follow-up that takes ``follow_s``
    ("Redis" adding the batch's co-visitation pairs) and raises what ``follow_fails`` gives for its first value,
    one exception per try, while it has any left."""

    def __init__(self, log: list, fail_on: int | None = None, follow_up: bool = False, follow_s: float = 0.03,
                 follow_fails: dict | None = None):
        self.log, self.fail_on = log, fail_on
        self.follow, self.follow_s, self.follow_fails = follow_up, follow_s, follow_fails or {}
        self.on_follow_fail = lambda: None

    def prepare(self, messages, after):
        values = [int(m.value) for m in messages]
        self.log.append(("prepare", values[0], dict(after or {})))
        return _Prepared(values, after)

    async def apply(self, p, on_sent):
        self.log.append(("apply", p.values[0]))
        on_sent()
        await asyncio.sleep(0.01)  # "Redis" works: the next batch is prepared meanwhile
        if self.fail_on in p.values:
            raise RuntimeError("boom")
        self.log.append(("applied", p.values[0]))
        out = [Output("out", "k", str(v).encode()) for v in p.values]
        return Applied(out, (lambda: self._follow_up(p.values[0])) if self.follow else None)

    async def _follow_up(self, first: int) -> None:
        self.log.append(("follow", first))
        await asyncio.sleep(self.follow_s)
        failures = self.follow_fails.get(first)
        if failures:
            self.on_follow_fail()
            raise failures.pop(0)
        self.log.append(("followed", first))


def _consumer(batches: list[list[int]], stage: _Stage, log: list) -> RoleConsumer:
    async def handler(messages):  # the unprepared path: event by event after a failure
        if any(int(m.value) == stage.fail_on for m in messages):
            raise RuntimeError("boom")
        log.append(("handled", [int(m.value) for m in messages]))
        return [Output("out", "k", m.value) for m in messages]

    published: list = []

    async def publish(outputs):
        published.extend(outputs)

    s = Settings()
    profile = Profile("g", ("clicks",), 10, 100, 0.01, 10, 3)
    rc = RoleConsumer(s, profile, {"clicks": (handler, lambda m, e: Output("dl", "k", b"x"), stage)}, publish,
                      Metrics(CollectorRegistry()))
    queue = [[_Msg(0, v, str(v).encode()) for v in b] for b in batches]

    end = batches[-1][-1] + 1

    def fetch():
        if not queue:  # all fetched: stop once the last batch is committed (a stop earlier leaves it uncommitted)
            rc.stopping = rc.stopping or rc.committed.get(("clicks", 0)) == end
            return []
        return queue.pop(0)

    async def commit(offsets):
        log.append(("commit", offsets[("clicks", 0)]))
        rc.committed.update(offsets)

    rc._fetch, rc._commit = fetch, commit
    rc.published = published
    return rc


def test_next_batch_prepared_while_this_one_applies_and_applied_only_after_its_commit():
    log: list = []
    rc = _consumer([[1, 2], [3, 4], [5, 6]], _Stage(log), log)
    asyncio.run(rc.run())
    rc.consumer.close()
    # each batch is prepared while the one before is applying, judged from that one's watermarks
    assert log.index(("prepare", 3, {("clicks", 0): 2})) < log.index(("applied", 1))
    for first, nxt, committed in ((1, 3, 3), (3, 5, 5)):
        assert log.index(("commit", committed)) < log.index(("apply", nxt)), log  # in order, one at a time
        assert log.index(("applied", first)) < log.index(("commit", committed))
    assert log[-1] == ("commit", 7)
    assert [o.value for o in rc.published] == [b"1", b"2", b"3", b"4", b"5", b"6"]


def test_a_batch_that_fails_goes_event_by_event_and_the_next_is_prepared_again():
    log: list = []
    stage = _Stage(log, fail_on=4)
    rc = _consumer([[1, 2], [3, 4], [5, 6]], stage, log)
    asyncio.run(rc.run())
    rc.consumer.close()
    # [3, 4] failed as prepared: each event alone through the handler (4 fails alone too: dead-lettered)
    assert ("handled", [3]) in log and ("applied", 3) not in log
    assert [o.topic for o in rc.published].count("dl") == 1
    # [5, 6] was prepared judging from [3, 4]'s watermarks, which [3, 4] did not reach as prepared: again
    prepares_of_5 = [e for e in log if e[:2] == ("prepare", 5)]
    assert prepares_of_5 == [("prepare", 5, {("clicks", 0): 4}), ("prepare", 5, {})], log
    assert ("applied", 5) in log and log[-1] == ("commit", 7)


def test_the_next_batch_is_applied_while_this_ones_follow_up_runs_and_commits_keep_their_order():
    """The clicks' co-visitation round (a follow-up) overlaps the next batch's apply; each batch is committed
    only after its own follow-up, and follow-ups run in batch order (a partition's pairs in offset order)."""
    log: list = []
    rc = _consumer([[1, 2], [3, 4], [5, 6], [7, 8]], _Stage(log, follow_up=True), log)
    asyncio.run(rc.run())
    rc.consumer.close()
    at = log.index
    for first, nxt, committed in ((1, 3, 3), (3, 5, 5), (5, 7, 7)):
        assert at(("apply", nxt)) < at(("followed", first)), log  # overlapped: not waiting for the follow-up
        assert at(("applied", first)) < at(("apply", nxt))  # a batch applied only after the one before
        assert at(("followed", first)) < at(("commit", committed)) < at(("commit", committed + 2))
        assert at(("followed", first)) < at(("follow", nxt))  # the next follow-up waits for this one
        if first + 4 <= 7:  # committed once the batch after next is sent: Redis has work while the worker commits
            assert at(("apply", first + 4)) < at(("commit", committed)), log
    assert [e[1] for e in log if e[0] == "commit"] == [3, 5, 7, 9]
    assert [o.value for o in rc.published] == [str(v).encode() for v in range(1, 9)]


def test_a_follow_up_waits_out_an_outage_and_one_that_keeps_failing_is_given_up_and_counted():
    import redis.exceptions

    log: list = []
    fails = {1: [redis.exceptions.ConnectionError("down"), redis.exceptions.ConnectionError("down")],
             3: [RuntimeError("bad pairs"), RuntimeError("bad pairs")]}
    rc = _consumer([[1, 2], [3, 4], [5, 6]], _Stage(log, follow_up=True, follow_fails=fails), log)
    asyncio.run(rc.run())
    rc.consumer.close()
    # the outage: tried again (backoff) until it went through, then committed; the next batch applied meanwhile
    assert log.count(("follow", 1)) == 3 and ("followed", 1) in log
    assert log.index(("apply", 3)) < log.index(("followed", 1)) < log.index(("commit", 3))
    # another error, twice (SINGLE_EVENT_ATTEMPTS): given up, counted, the batch committed all the same
    assert log.count(("follow", 3)) == 2 and ("followed", 3) not in log
    assert rc.metrics.follow_ups_dropped.labels("clicks")._value.get() == 1
    assert [e[1] for e in log if e[0] == "commit"] == [3, 5, 7]
    assert ("handled", [3]) not in log  # the batch was not processed again (its watermarks had moved)


def test_a_stop_during_a_follow_up_commits_neither_that_batch_nor_the_next():
    import redis.exceptions

    log: list = []
    stage = _Stage(log, follow_up=True, follow_fails={3: [redis.exceptions.ConnectionError("down")] * 50})
    rc = _consumer([[1, 2], [3, 4], [5, 6]], stage, log)
    stage.on_follow_fail = lambda: setattr(rc, "stopping", True)  # the stop comes while Redis is down
    asyncio.run(rc.run())
    rc.consumer.close()
    commits = [e[1] for e in log if e[0] == "commit"]
    assert commits == [3], log  # [3, 4] waits for Redis when the stop comes: it and [5, 6] stay uncommitted
    assert ("followed", 3) not in log


def test_the_collector_is_tuned_once_a_worker_has_started_and_still_collects_cycles():
    """tune_collector (called once a worker's roles are built, streams.app): what exists then is frozen
    out of the collector's work, the thresholds are COLLECTOR_THRESHOLDS, and a cycle made later is freed."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    probe = """
import gc, weakref
from streams.runtime import COLLECTOR_THRESHOLDS, tune_collector
before = gc.get_threshold()
tune_collector()
class Node: pass
a, b = Node(), Node()
a.other, b.other = b, a
gone = weakref.ref(a)
del a, b
kept = [[] for _ in range(COLLECTOR_THRESHOLDS[0] * 3)]  # young objects that stay: the collector runs by itself
print(before != COLLECTOR_THRESHOLDS, gc.get_threshold() == COLLECTOR_THRESHOLDS, gc.get_freeze_count() > 10_000,
      gone() is None)
"""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True"] * 4, out.stdout
