"""The local stack with real processes: broker, valkey, tritonserver (tiny echo model)."""

from __future__ import annotations

import os
import re
import socket
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis
import tritonclient.grpc as grpcclient
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from conftest import local_settings
from streamscore import cli
from streamscore.stack import LocalStack, StackError, create_topics, host_port, is_loopback, start_process

pytestmark = pytest.mark.stack

ECHO_CONFIG = """
name: "echo"
backend: "python"
max_batch_size: 0
input [{ name: "INPUT0", data_type: TYPE_FP32, dims: [ -1 ] }]
output [{ name: "OUTPUT0", data_type: TYPE_FP32, dims: [ -1 ] }]
instance_group [{ kind: KIND_AUTO }]
"""

ECHO_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        if BROKEN:
            raise RuntimeError("deliberately broken echo model")

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy())]) for r in requests]
"""


def make_repo(root: Path, broken: bool = False) -> Path:
    """A model repository with one python-backend model ``echo`` (OUTPUT0 = INPUT0)."""
    model = root / "echo"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(ECHO_CONFIG)
    (model / "1" / "model.py").write_text(f"BROKEN = {broken}\n" + ECHO_MODEL)
    return root


def leftovers(settings) -> list[str]:
    """Live (non-zombie) processes whose command line names this stack's run dir (tritonserver
    and its python-backend stubs run from there), broker or valkey address: 'pid: cmdline'."""
    ports = "|".join(str(host_port(u)[1]) for u in (settings.kafka_bootstrap, settings.redis_url))
    marker = re.compile(rf"{re.escape(settings.run_dir)}|127\.0\.0\.1:({ports})\b")
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] not in "ZX" and marker.search(cmd):
            found.append(f"{entry}: {cmd}")
    return found


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def group_of(pgid: int) -> set[int]:
    """Live members of process group ``pgid``."""
    out = set()
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text() if entry.isdigit() else ""
        except OSError:
            continue
        if stat and int(stat[stat.rindex(")") + 2:].split()[2]) == pgid and pid_alive(int(entry)):
            out.add(int(entry))
    return out


@pytest.fixture(scope="module")
def echo_stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("echo")
    local = LocalStack(local_settings(tmp / "run", triton_repo=str(make_repo(tmp / "repo"))))
    try:
        local.up(timeout_s=60)
        yield local
    finally:
        local.down()


def test_status_all_healthy(echo_stack):
    status = echo_stack.status()
    assert set(status) == {"kafka", "redis", "triton", "alert-receiver", "alertmanager", "prometheus"}
    for name, row in status.items():
        assert row["healthy"] and row["alive"] and not row["external"], (name, row)
        assert pid_alive(row["pid"])
    assert (Path(echo_stack.settings.run_dir) / "pids" / "kafka.pid").read_text().split()[0] == str(status["kafka"]["pid"])
    assert (Path(echo_stack.settings.run_dir) / "logs" / "triton.log").stat().st_size > 0


def test_up_again_is_idempotent(echo_stack):
    before = {n: r["pid"] for n, r in echo_stack.status().items()}
    echo_stack.up(timeout_s=30)
    assert {n: r["pid"] for n, r in echo_stack.status().items()} == before


def test_topics_exist_with_partition_counts(echo_stack):
    s = echo_stack.settings
    meta = AdminClient({"bootstrap.servers": s.kafka_bootstrap}).list_topics(timeout=10).topics
    assert len(s.all_topics) == 8
    for topic, partitions in s.all_topics.items():
        assert topic in meta and len(meta[topic].partitions) == partitions, topic
    create_topics(s.kafka_bootstrap, s.all_topics)  # existing topics are fine
    with pytest.raises(StackError, match="partition"):
        create_topics(s.kafka_bootstrap, {s.topic_clicks: s.topic_partitions + 1})


def test_kafka_round_trip(echo_stack):
    s = echo_stack.settings
    payload = uuid.uuid4().hex.encode()
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap})
    producer.produce(s.topic_clicks, key=b"user-1", value=payload)
    assert producer.flush(10) == 0
    consumer = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": f"test-{payload.decode()}",
                         "auto.offset.reset": "earliest",
                         "session.timeout.ms": int(s.session_timeout_s * 1000),
                         "heartbeat.interval.ms": int(s.heartbeat_s * 1000)})
    try:
        consumer.subscribe([s.topic_clicks])
        deadline, got = time.monotonic() + 30, None
        while got is None and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None and msg.value() == payload:
                got = msg
        assert got is not None and got.key() == b"user-1"
    finally:
        consumer.close()


def test_redis_ping(echo_stack):
    with redis.Redis.from_url(echo_stack.settings.redis_url) as r:
        assert r.ping()
        r.set("stack-test", "1")
        assert r.get("stack-test") == b"1"


def _mapped_libraries(pid: int) -> set[str]:
    return {Path(line.split()[-1]).name for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
            if line.split()[-1].startswith("/")}


def test_local_valkey_runs_on_jemalloc(echo_stack, tmp_path):
    """The stack's Valkey has jemalloc loaded (LOCAL_VALKEY_ALLOCATOR's default) and a throwaway one started
    with ``libc`` has not: the setting reaches the server process, whatever INFO's compiled-in name says."""
    pid = echo_stack.status()["redis"]["pid"]
    assert "libjemalloc.so.2" in _mapped_libraries(pid)
    with redis.Redis.from_url(echo_stack.settings.redis_url) as r:
        assert r.ping()
    from features.snapshot import temporary_redis

    with temporary_redis(allocator="libc") as url:
        with redis.Redis.from_url(url) as r:
            assert r.ping()
        pid, = _valkey_pids(host_port(url, 6379)[1])
        assert "libjemalloc.so.2" not in _mapped_libraries(pid)


def _valkey_pids(port: int) -> list[int]:
    """The valkey-server processes listening on ``port`` (by their process title: ``<path> <host>:<port>``)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().split(b"\0")[0].split()
            except OSError:
                continue
            if len(title) >= 2 and title[0].endswith(b"valkey-server") and title[1].endswith(b":%d" % port):
                out.append(int(entry.name))
    return out


def test_valkey_environment_by_allocator(monkeypatch):
    from streamscore import stack

    assert stack.valkey_env("libc") == {}
    monkeypatch.setenv("LD_PRELOAD", "libextra.so")
    assert stack.valkey_env("jemalloc")["LD_PRELOAD"].split() == [stack.jemalloc_library(), "libextra.so"]
    with pytest.raises(StackError, match="jemalloc or libc"):
        stack.valkey_env("tcmalloc")
    import ctypes.util

    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    with pytest.raises(StackError, match="libjemalloc2.*LOCAL_VALKEY_ALLOCATOR=libc"):
        stack.valkey_env("jemalloc")


def test_triton_echo_over_grpc(echo_stack):
    client = grpcclient.InferenceServerClient(url=echo_stack.settings.triton_grpc_url)
    assert client.is_server_ready() and client.is_model_ready("echo")
    data = np.arange(5, dtype=np.float32)
    inp = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
    inp.set_data_from_numpy(data)
    result = client.infer("echo", [inp], outputs=[grpcclient.InferRequestedOutput("OUTPUT0")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


def test_cli_status(echo_stack, monkeypatch, capsys, tmp_path):
    for key, value in echo_stack.settings.to_env().items():
        monkeypatch.setenv(key, value)
    assert cli.main(["stack", "status"]) == 0
    out = capsys.readouterr().out
    assert "triton" in out and "true" in out and echo_stack.settings.kafka_bootstrap in out
    monkeypatch.setitem(os.environ, "STREAMSCORE_RUN_DIR", str(tmp_path))  # a stack that is not ours
    assert cli.main(["stack", "status"]) == 1


def test_down_leaves_no_process(tmp_path):
    s = local_settings(tmp_path / "run", triton_repo=str(make_repo(tmp_path / "repo")))
    local = LocalStack(s)
    local.up(timeout_s=60)
    # one of our own processes too, with a child that ignores SIGTERM (needs SIGKILL)
    code = ("import signal, subprocess, sys, time\n"
            "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)', sys.argv[1]])\n"
            "time.sleep(300)\n")
    own = start_process("worker-test", [sys.executable, "-c", code, s.run_dir], dict(os.environ), s.run_dir)
    time.sleep(0.5)
    pids = {r["pid"] for r in local.status().values()}
    assert None not in pids and own in pids
    members = set().union(*(group_of(p) for p in pids))
    assert len(members) >= 7  # 5 leaders + the python-backend stub + the worker's child
    assert leftovers(s)
    local.down(grace_s=1)
    assert not [p for p in members if pid_alive(p)]
    assert leftovers(s) == []
    assert list((Path(s.run_dir) / "pids").iterdir()) == []
    assert not any(r["alive"] or r["healthy"] for r in local.status().values())
    local.down()  # nothing left to stop: a no-op


def test_failing_service_stops_the_others(tmp_path):
    s = local_settings(tmp_path / "run", triton_repo=str(make_repo(tmp_path / "repo", broken=True)))
    t0 = time.monotonic()
    with pytest.raises(StackError) as err:
        LocalStack(s).up(timeout_s=60)
    assert time.monotonic() - t0 < 30  # the dead server is noticed, not waited for
    assert "triton" in str(err.value) and "deliberately broken echo model" in str(err.value)
    assert leftovers(s) == []
    assert list((Path(s.run_dir) / "pids").iterdir()) == []


def test_port_in_use_is_reported(tmp_path):
    s = local_settings(tmp_path / "run")
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", host_port(s.kafka_bootstrap)[1]))
        blocker.listen()
        with pytest.raises(StackError, match="already in use"):
            LocalStack(s).up(timeout_s=10)
    assert leftovers(s) == []


def test_loopback_detection():
    assert all(is_loopback(h) for h in ["127.0.0.1", "127.3.2.1", "localhost", "::1"])
    assert not any(is_loopback(h) for h in ["10.0.0.5", "kafka", "redis.internal", "0.0.0.0", ""])
    assert host_port("redis://[::1]:6380/0") == ("::1", 6380)
    assert host_port("kafka:9092") == ("kafka", 9092)
    assert host_port("redis://cache/0", 6379) == ("cache", 6379)


def test_external_services_start_nothing(tmp_path):
    s = local_settings(tmp_path / "run", redis_url="redis://192.0.2.1:6379/0",  # TEST-NET-1: unreachable
                       triton_http_url="triton:8000", triton_grpc_url="triton:8001",
                       triton_metrics_url="triton:8002", prometheus_url="prometheus:9090",
                       alertmanager_url="alertmanager:9093", alert_receiver_url="alert-receiver:8080")
    local = LocalStack(s)
    assert local.local_services() == ["kafka"]
    assert LocalStack(local_settings(tmp_path, kafka_bootstrap="127.0.0.1:1,127.0.0.1:2")).is_local("kafka") is False
    with pytest.raises(StackError, match=r"redis \(external\)"):
        local.up(timeout_s=3)
    assert sorted(p.name for p in (Path(s.run_dir) / "logs").iterdir()) == ["kafka.log"]  # only kafka started
    assert leftovers(s) == []  # ... and stopped again when redis was not healthy
    status = local.status()
    assert status["redis"]["external"] and status["redis"]["pid"] is None and not status["redis"]["healthy"]
