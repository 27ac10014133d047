"""Resumable replays: how far publishing got, written after the broker confirmed it.

A replay publishes a deterministic merged stream (same arguments and data -> same events
in the same order), so a position in that stream identifies an event. The checkpoint
file (JSON, replaced atomically) records:

* ``next_index``: every event with a smaller index was acknowledged by the broker
  (delivery report without error), plus ``done_above``: acknowledged indices beyond
  it (deliveries to different partitions confirm out of order);
* ``spec``: the arguments that define the stream; a resume with other arguments is
  refused, and ``prefix_crc32`` (CRC-32 over topic, key and value of events
  ``0 .. next_index - 1``) refuses a resume whose input data changed;
* ``run_id``: written in a ``replay-run`` header of every message, with the event
  index in ``replay-seq``;
* ``offsets`` (highest acknowledged offset per topic partition) and ``start_offsets``
  (a lower bound of each partition's end when the run began), for :func:`reconcile`;
* ``status``: ``running`` while publishing, ``stopped`` after a clean interruption
  (signal, error: in-flight messages were flushed and their reports recorded, so the
  checkpoint is exact), ``complete`` at the end.

After a hard kill (SIGKILL, power loss) the file lags by up to one checkpoint interval
and says ``running``; :func:`reconcile` then reads every partition the run writes to
from just after its last recorded offset to the end, and marks the events whose
``replay-run`` header is this run as done. Either way a resume neither skips nor repeats
an event, and because each partition's acknowledged events are a prefix of what was sent
to it (idempotent producer: in order, no duplicates), per-key order is kept.
"""

from __future__ import annotations

import json
import os
import time
import uuid
import zlib
from array import array
from pathlib import Path
from typing import Iterable, Optional, Sequence

from streamscore.kafka_config import Kafka, resolve

VERSION = 1
RUN_HEADER = "replay-run"
SEQ_HEADER = "replay-seq"


class CheckpointError(RuntimeError):
    """The checkpoint cannot be used for this replay (other arguments, other data, corrupt file)."""


def event_crc(topic: str, key: str, value: bytes, crc: int = 0) -> int:
    crc = zlib.crc32(topic.encode(), crc)
    crc = zlib.crc32(b"\0" + key.encode() + b"\0", crc)
    return zlib.crc32(value, crc)


def prefix_crcs(events: Sequence[tuple[str, str, object]]) -> array:
    """``out[i]`` = chained CRC-32 of events ``0 .. i-1`` (``len(events) + 1`` entries)."""
    out = array("I", [0])
    crc = 0
    for topic, key, ev in events:
        crc = event_crc(topic, key, ev.to_bytes(), crc)
        out.append(crc)
    return out


def _diff(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


class Checkpoint:
    """The state of one resumable replay, bound to a file. Not thread-safe: delivery reports
    (``confirm``) and ``save`` run on the publishing thread."""

    def __init__(self, path, spec: dict, run_id: Optional[str] = None):
        self.path = Path(path)
        self.spec = json.loads(json.dumps(spec))  # normalised as it is stored
        self.run_id = run_id or uuid.uuid4().hex
        self.next_index = 0
        self.done_above: set[int] = set()
        self.status = "new"
        self.prefix_crc = 0
        self.total: Optional[int] = None
        self.offsets: dict[str, dict[int, int]] = {}
        self.start_offsets: dict[str, dict[int, int]] = {}
        self.history: list[dict] = []
        self.crcs: Optional[array] = None  # prefix CRCs of the current stream (see bind)
        self.resumed_from = 0
        self.every_s = 1.0
        self._last_save = 0.0

    # -- file ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path, spec: dict) -> "Checkpoint":
        """A new checkpoint for ``spec``, or the one in ``path`` if it exists (same spec required)."""
        path = Path(path)
        if not path.exists():
            return cls(path, spec)
        try:
            data = json.loads(path.read_text())
            if data.get("version") != VERSION:
                raise CheckpointError(f"{path}: unknown checkpoint version {data.get('version')!r}")
            ck = cls(path, data["spec"], data["run_id"])
            ck.next_index = int(data["next_index"])
            ck.done_above = {int(i) for i in data["done_above"]}
            ck.status = data["status"]
            ck.prefix_crc = int(data["prefix_crc32"])
            ck.total = data.get("total")
            ck.offsets = {t: {int(p): int(o) for p, o in parts.items()} for t, parts in data["offsets"].items()}
            ck.start_offsets = {t: {int(p): int(o) for p, o in parts.items()}
                                for t, parts in data["start_offsets"].items()}
            ck.history = list(data.get("history", []))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a replay checkpoint ({exc})") from exc
        wanted = json.loads(json.dumps(spec))
        if ck.spec != wanted:
            fields = _diff(ck.spec, wanted)
            raise CheckpointError(
                f"{path} belongs to another replay: {', '.join(fields)} differ "
                f"(checkpoint: {', '.join(f'{k}={ck.spec.get(k)!r}' for k in fields)}); "
                "pass the same arguments, or another --resume-file")
        return ck

    def to_json(self) -> dict:
        return {
            "version": VERSION,
            "run_id": self.run_id,
            "status": self.status,
            "next_index": self.next_index,
            "done_above": sorted(self.done_above),
            "done": self.done_count,
            "total": self.total,
            "prefix_crc32": self.prefix_crc,
            "offsets": {t: {str(p): o for p, o in sorted(parts.items())} for t, parts in sorted(self.offsets.items())},
            "start_offsets": {t: {str(p): o for p, o in sorted(parts.items())}
                              for t, parts in sorted(self.start_offsets.items())},
            "spec": self.spec,
            "history": self.history,
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def save(self, status: Optional[str] = None) -> None:
        """Write the file atomically (temp file, fsync, rename)."""
        if status is not None:
            self.status = status
        if self.crcs is not None:
            self.prefix_crc = self.crcs[self.next_index]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as fh:
            json.dump(self.to_json(), fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self._last_save = time.monotonic()

    def maybe_save(self) -> None:
        if time.monotonic() - self._last_save >= self.every_s:
            self.save()

    # -- progress -------------------------------------------------------------------------
    @property
    def done_count(self) -> int:
        return self.next_index + len(self.done_above)

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def is_done(self, index: int) -> bool:
        return index < self.next_index or index in self.done_above

    def confirm(self, index: int, topic: Optional[str] = None, partition: Optional[int] = None,
                offset: Optional[int] = None) -> None:
        """Record a delivery report without error for event ``index``."""
        if topic is not None and offset is not None and offset >= 0:
            parts = self.offsets.setdefault(topic, {})
            if offset > parts.get(partition, -1):
                parts[partition] = offset
        if index < self.next_index:
            return
        if index == self.next_index:
            self.next_index += 1
            while self.next_index in self.done_above:
                self.done_above.discard(self.next_index)
                self.next_index += 1
        else:
            self.done_above.add(index)

    def bind(self, crcs: array) -> None:
        """Attach the prefix CRCs of the stream about to be published, and check that the
        events already done are the same as when the checkpoint was written."""
        if len(crcs) - 1 < self.done_count or (self.done_above and max(self.done_above) >= len(crcs) - 1):
            raise CheckpointError(f"{self.path}: the stream now has {len(crcs) - 1} events, fewer than the "
                                  f"{self.done_count} already published: the input data changed")
        if crcs[self.next_index] != self.prefix_crc:
            raise CheckpointError(f"{self.path}: the first {self.next_index} events differ from the ones "
                                  "published before (CRC mismatch): the input data changed")
        self.crcs = crcs
        self.total = len(crcs) - 1
        self.resumed_from = self.done_count

    def record_start_offsets(self, bootstrap: "Kafka", topics: Iterable[str], timeout_s: float = 10.0) -> None:
        """Remember, per partition of ``topics``, where a later :func:`reconcile` may start
        reading (the high watermark now: exact on Kafka, a lower bound on the local broker)."""
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer(resolve(bootstrap, **{"group.id": f"replay-offsets-{self.run_id}",
                                           "enable.auto.commit": False}))
        try:
            for topic in topics:
                if topic in self.start_offsets:
                    continue
                meta = c.list_topics(topic, timeout=timeout_s).topics.get(topic)
                if meta is None or meta.error is not None:
                    self.start_offsets[topic] = {}  # created later (auto-create): read from the start
                    continue
                self.start_offsets[topic] = {
                    p: max(c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)[1], 0)
                    for p in meta.partitions}
        finally:
            c.close()


def reconcile(ck: Checkpoint, bootstrap: "Kafka", topics: Iterable[str], idle_s: float = 2.0,
              limit_s: float = 300.0) -> int:
    """After a hard kill: mark as done every event of this run that reached the broker after
    the checkpoint was last written. Returns how many were found."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    c = Consumer(resolve(bootstrap, **{"group.id": f"replay-reconcile-{ck.run_id}", "enable.auto.commit": False,
                                       "fetch.wait.max.ms": 50, "enable.partition.eof": False}))
    run = ck.run_id.encode()
    found = 0
    try:
        assign = []
        for topic in topics:
            meta = c.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None:
                continue
            for p in meta.partitions:
                last = ck.offsets.get(topic, {}).get(p)
                start = last + 1 if last is not None else ck.start_offsets.get(topic, {}).get(p, 0)
                assign.append(TopicPartition(topic, p, start))
        if not assign:
            return 0
        c.assign(assign)
        end, last_new = time.monotonic() + limit_s, time.monotonic()
        while time.monotonic() - last_new < idle_s:
            if time.monotonic() > end:
                raise CheckpointError(f"reconcile did not reach the end of {list(topics)} in {limit_s}s")
            msgs = c.consume(1000, timeout=0.2)
            if msgs:
                last_new = time.monotonic()
            for m in msgs:
                if m.error() is not None:
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        raise CheckpointError(f"reconcile: {m.error()}")
                    continue
                headers = dict(m.headers() or ())
                if headers.get(RUN_HEADER) != run:
                    continue
                index = int(headers[SEQ_HEADER])
                if not ck.is_done(index):
                    found += 1
                ck.confirm(index, m.topic(), m.partition(), m.offset())
    finally:
        c.close()
    return found
