"""Resumable replays (replay/checkpoint.py): interrupted by SIGTERM, SIGKILL or an error,
resumed, and every event is on the real broker exactly once, in per-key order.

Over the session's local stack broker, on topics of this module only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from replay.__main__ import Encoded, _file_sources, _publish_parser, build_stream
from replay.checkpoint import RUN_HEADER, SEQ_HEADER, Checkpoint, CheckpointError, prefix_crcs
from replay.publish import publish
from replay.synthetic import FraudConfig, fraud
from streamscore.settings import Settings
from streamscore.stack import create_topics

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(Settings().data_dir)
OTTO = DATA / "otto-fixture" / "otto_train_fixture_events.csv.gz"
START = "1700000000"
STREAM = ["--scenario", "demo", "--clicks", "6000", "--orders", "300", "--fraud-orders", "500", "--catalog",
          "--file", str(OTTO), "--topic", "clicks", "--map", "user_id=session,item_id=aid,action=type,ts=ts",
          "--values", "action=clicks:view;carts:add_to_cart;orders:purchase", "--time-unit", "ms",
          "--namespace", "otto", "--sort", "--synthetic", "fraud", "--syn-users", "100", "--syn-days", "3",
          "--start-ts", START]


# --- checkpoint logic, no broker ------------------------------------------------------------

def _events(n: int, topic: str = "t"):
    return [(topic, f"k{i % 7}", Encoded(1.7e9 + i, f"v{i}".encode())) for i in range(n)]


def test_checkpoint_watermark_out_of_order_reports(tmp_path):
    ck = Checkpoint(tmp_path / "ck.json", {"a": 1})
    ck.bind(prefix_crcs(_events(10)))
    for i in (0, 2, 3, 5):
        ck.confirm(i, "t", 0, i)
    assert (ck.next_index, ck.done_above, ck.done_count) == (1, {2, 3, 5}, 4)
    ck.confirm(1)
    assert (ck.next_index, ck.done_above) == (4, {5})
    assert [ck.is_done(i) for i in range(7)] == [True] * 4 + [False, True, False]
    ck.save("stopped")
    again = Checkpoint.open(tmp_path / "ck.json", {"a": 1})
    assert (again.next_index, again.done_above, again.status, again.run_id) == (4, {5}, "stopped", ck.run_id)
    assert again.offsets == {"t": {0: 5}}
    again.bind(prefix_crcs(_events(10)))  # same events: accepted
    assert again.resumed_from == 5


def test_checkpoint_refuses_other_arguments_or_changed_data(tmp_path):
    ck = Checkpoint(tmp_path / "ck.json", {"clicks": 100, "start_ts": 1.0})
    ck.bind(prefix_crcs(_events(10)))
    for i in range(6):
        ck.confirm(i)
    ck.save("stopped")
    with pytest.raises(CheckpointError, match="clicks differ"):
        Checkpoint.open(tmp_path / "ck.json", {"clicks": 200, "start_ts": 1.0})
    changed = _events(10)
    changed[3] = ("t", "k3", Encoded(0.0, b"other"))
    with pytest.raises(CheckpointError, match="CRC mismatch"):
        Checkpoint.open(tmp_path / "ck.json", {"clicks": 100, "start_ts": 1.0}).bind(prefix_crcs(changed))
    changed_after = _events(10)
    changed_after[8] = ("t", "k1", Encoded(0.0, b"other"))  # beyond what was published: fine
    Checkpoint.open(tmp_path / "ck.json", {"clicks": 100, "start_ts": 1.0}).bind(prefix_crcs(changed_after))
    with pytest.raises(CheckpointError, match="fewer"):
        Checkpoint.open(tmp_path / "ck.json", {"clicks": 100, "start_ts": 1.0}).bind(prefix_crcs(_events(4)))
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(CheckpointError, match="version"):
        Checkpoint.open(tmp_path / "junk.json", {})


# --- over the real broker ---------------------------------------------------------------------

def _topics(run: str) -> dict[str, str]:
    return {"topic_clicks": f"rs-{run}-clicks", "topic_orders": f"rs-{run}-orders",
            "topic_fraud_labels": f"rs-{run}-fraud-labels", "topic_catalog": f"rs-{run}-catalog"}


def _consume_all(bootstrap: str, topics: list[str], expected: int, timeout_s: float = 60.0) -> list:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"replay-test-{uuid.uuid4().hex}",
                  "enable.auto.commit": False, "fetch.wait.max.ms": 50})
    meta = c.list_topics(timeout=10).topics
    c.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in meta[t].partitions])
    got, deadline = [], time.monotonic() + timeout_s
    try:
        while len(got) < expected and time.monotonic() < deadline:
            for m in c.consume(1000, timeout=0.5):
                assert m.error() is None, m.error()
                got.append(m)
        quiet_until = time.monotonic() + 1.5  # anything beyond `expected` is a duplicate
        while time.monotonic() < quiet_until:
            got += [m for m in c.consume(1000, timeout=0.3) if m.error() is None]
    finally:
        c.close()
    return got


def _check_exactly_once(got: list, expected: list[tuple[str, str, bytes]], run_id: str) -> dict:
    """Every event once, per (topic, key) the same values in the same order; returns counts."""
    assert all(dict(m.headers())[RUN_HEADER] == run_id.encode() for m in got)
    seqs = Counter(int(dict(m.headers())[SEQ_HEADER]) for m in got)
    assert len(got) == len(expected), f"{len(got)} messages for {len(expected)} events"
    assert seqs == Counter(range(len(expected))), "some event missing or repeated"
    want, have = defaultdict(list), defaultdict(list)
    for topic, key, value in expected:
        want[(topic, key)].append(value)
    for m in sorted(got, key=lambda m: (m.topic(), m.partition(), m.offset())):
        have[(m.topic(), m.key().decode())].append(m.value())
    assert {k: len(v) for k, v in have.items()} == {k: len(v) for k, v in want.items()}  # counts per topic and key
    assert have == want  # per-key order kept
    return {"events": len(got), "keys": len(want), "topics": dict(Counter(t for t, _ in want))}


def _wait_checkpoint(path: Path, proc: subprocess.Popen, at_least: int, timeout_s: float = 60.0) -> dict:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        assert proc.poll() is None, f"replay exited early ({proc.returncode}): {proc.stderr.read()}"
        if path.exists():
            data = json.loads(path.read_text())
            if data["done"] >= at_least and data["status"] == "running":
                return data
        time.sleep(0.02)
    raise AssertionError(f"checkpoint never reached {at_least}")


@pytest.mark.stack
def test_resume_after_sigterm_and_sigkill_exactly_once(stack_settings, tmp_path):
    run = uuid.uuid4().hex[:8]
    topics = _topics(run)
    settings = Settings.from_env({}, kafka_bootstrap=stack_settings.kafka_bootstrap, **topics)
    create_topics(settings.kafka_bootstrap, {t: 4 for t in topics.values()})
    args = _publish_parser(settings).parse_args(STREAM)
    expected = [(t, k, e.to_bytes()) for t, k, e in build_stream(args, settings, _file_sources(args), 1.7e9, {})]
    assert set(t for t, _, _ in expected) == set(topics.values())
    ck = tmp_path / "replay.ckpt.json"
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "replay", *STREAM, "--resume-file", str(ck), "--checkpoint-every", "1"]

    def start(*extra):
        return subprocess.Popen(cmd + list(extra), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    # 1. SIGTERM: in-flight messages are flushed, the checkpoint is exact
    p = start("--rate", "2000")
    _wait_checkpoint(ck, p, 1500)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(60)
    assert p.returncode == 128 + signal.SIGTERM, err
    first = json.loads(out)
    state = json.loads(ck.read_text())
    assert first["interrupted"] and state["status"] == "stopped"
    assert state["done"] == state["next_index"] == first["sent"] == sum(first["delivered"].values())
    assert 1500 <= state["done"] < len(expected)

    # 2. SIGKILL: no last checkpoint; the resume must find what reached the broker after it
    p = start("--rate", "2000")
    _wait_checkpoint(ck, p, state["done"] + 2000)
    time.sleep(0.3)  # ~600 events acknowledged after the last checkpoint write
    p.kill()
    p.communicate(60)
    killed = json.loads(ck.read_text())
    assert killed["status"] == "running" and killed["done"] < len(expected)

    # 3. resume at full speed: reconcile, then the rest
    p = start()
    out, err = p.communicate(120)
    assert p.returncode == 0, err
    last = json.loads(out)
    assert last["reconciled"] > 0, "nothing was delivered after the last checkpoint: the kill path was not tested"
    assert last["resumed_from"] == killed["done"] + last["reconciled"]
    assert last["resumed_from"] + last["sent"] == len(expected)
    final = json.loads(ck.read_text())
    assert final["status"] == "complete" and final["next_index"] == len(expected) and not final["done_above"]

    # 4. once complete, a rerun sends nothing
    p = start()
    out, _ = p.communicate(60)
    assert p.returncode == 0 and json.loads(out)["sent"] == 0

    got = _consume_all(settings.kafka_bootstrap, list(topics.values()), len(expected))
    counts = _check_exactly_once(got, expected, final["run_id"])
    print(f"\nresume: {counts['events']} events on {counts['keys']} keys {counts['topics']}; "
          f"SIGTERM after {first['sent']}, SIGKILL with {killed['done']} in the checkpoint, "
          f"{last['reconciled']} found on the broker, {last['sent']} sent at {last['events_per_s']} ev/s")


@pytest.mark.stack
def test_resume_after_an_error_in_the_input(stack_settings, tmp_path):
    """A publish whose input raises after N events records exactly N; the resume sends the rest."""
    run = uuid.uuid4().hex[:8]
    topic_o, topic_l = f"rs-{run}-orders", f"rs-{run}-labels"
    create_topics(stack_settings.kafka_bootstrap, {topic_o: 4, topic_l: 4})
    data = fraud(1, FraudConfig(users=150, days=2))
    merged = sorted([(topic_o, o.user_id, o) for o in data.orders] + [(topic_l, lb.order_id, lb) for lb in data.labels],
                    key=lambda x: x[2].ts)
    events = [(t, k, Encoded(e.ts, e.to_bytes())) for t, k, e in merged]
    spec = {"test": "error", "run": run}
    path = tmp_path / "ck.json"
    ck = Checkpoint.open(path, spec)
    ck.bind(prefix_crcs(events))
    ck.record_start_offsets(stack_settings.kafka_bootstrap, [topic_o, topic_l])

    def broken():
        for i, ev in enumerate(events):
            if i == 300:
                raise OSError("input went away")
            yield ev

    with pytest.raises(OSError, match="input went away"):
        publish(broken(), stack_settings.kafka_bootstrap, checkpoint=ck)
    stopped = Checkpoint.open(path, spec)
    assert (stopped.status, stopped.next_index, stopped.done_above) == ("stopped", 300, set())
    stopped.bind(prefix_crcs(events))
    stats = publish(events, stack_settings.kafka_bootstrap, checkpoint=stopped)
    assert stats["resumed_from"] == 300 and stats["sent"] == len(events) - 300
    got = _consume_all(stack_settings.kafka_bootstrap, [topic_o, topic_l], len(events))
    _check_exactly_once(got, [(t, k, e.to_bytes()) for t, k, e in events], ck.run_id)
