"""A durable broker over real gRPC on 127.0.0.1: SIGKILL and restart, the directory lock, start failures."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog

from rxstreamer.broker import Broker, BrokerError, BrokerOptions, MessageQueueServicer, serve, start_broker
from rxstreamer.broker.database import DATABASE_FILE, Database
from rxstreamer.proto import mq_pb2, mq_pb2_grpc
from tests.broker.test_server import RPC_TIMEOUT, _Lines, publish, subscribe, take
from tests.processes import end_process, signal_once_caught

pytestmark = pytest.mark.integration

START_TIMEOUT = 15.0
ACKED_BEFORE_KILL = 40

SERVE_SNIPPET = """
import sys
from pathlib import Path
import structlog
structlog.configure(processors=[structlog.processors.JSONRenderer()])
from rxstreamer.broker import serve, BrokerOptions
raise SystemExit(serve(BrokerOptions(listen="127.0.0.1:0", data_dir=Path(sys.argv[1]), fsync=sys.argv[2])))
"""


class BrokerProcess:
    """A broker in its own process, so it can be killed for real."""

    def __init__(self, data_dir: Path, fsync: str = "always") -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVE_SNIPPET, str(data_dir), fsync],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines = _Lines(self.process.stdout)

    def started(self) -> dict[str, Any]:
        return self.lines.wait_for_event("broker.started", timeout=START_TIMEOUT)

    def end(self) -> str:
        """Make sure the process is gone and return what it wrote to stderr."""
        return end_process(self.process, RPC_TIMEOUT)


@pytest.fixture
def processes() -> Iterator[list[BrokerProcess]]:
    """Broker processes started by a test; each is killed if still running, and none may have crashed."""
    started: list[BrokerProcess] = []
    yield started
    for process in started:
        assert "Traceback" not in process.end()


def payload_of(sequence: int) -> bytes:
    return sequence.to_bytes(4, "big") * 10_000  # 40 KB, distinct per sequence


def publish_until_killed(address: str, acked: list[tuple[int, int]], enough: threading.Event) -> None:
    """Publishes sequences 1, 2, ... until the broker dies, recording (sequence, offset) of each ack."""
    with grpc.insecure_channel(address) as channel:
        stub = mq_pb2_grpc.MessageQueueStub(channel)
        sequence = 1
        while True:
            try:
                ack = publish(stub, payload_of(sequence), producer_id="p", sequence=sequence)
            except grpc.RpcError:
                return
            acked.append((sequence, ack.offset))
            if len(acked) >= ACKED_BEFORE_KILL:
                enough.set()
            sequence += 1


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_killed_broker_restarts_with_every_acknowledged_message(
    tmp_path: Path, processes: list[BrokerProcess], fsync: str
) -> None:
    """After SIGKILL mid-publishing, a restart serves every acked message once, in order, and knows their ids."""
    first = BrokerProcess(tmp_path, fsync)
    processes.append(first)
    acked: list[tuple[int, int]] = []
    enough = threading.Event()
    publisher = threading.Thread(
        target=publish_until_killed, args=(f"127.0.0.1:{first.started()['port']}", acked, enough)
    )
    publisher.start()
    assert enough.wait(START_TIMEOUT), f"only {len(acked)} publishes acknowledged"
    first.process.send_signal(signal.SIGKILL)
    publisher.join(RPC_TIMEOUT)
    assert first.process.wait(RPC_TIMEOUT) == -signal.SIGKILL

    second = BrokerProcess(tmp_path, fsync)
    processes.append(second)
    recovered = second.lines.wait_for_event("broker.recovered", timeout=START_TIMEOUT)
    port = second.started()["port"]
    # One publish may have been written but not acknowledged when the broker died.
    stored = recovered["last_offset"] + 1
    assert (recovered["topic"], recovered["messages"]) == ("gpu", stored)
    assert stored in (len(acked), len(acked) + 1)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = mq_pb2_grpc.MessageQueueStub(channel)
        call = subscribe(stub, mq_pb2.START_POSITION_EARLIEST)
        try:
            messages = take(call, stored)
            last_sequence, last_offset = acked[-1]
            again = publish(stub, payload_of(last_sequence), producer_id="p", sequence=last_sequence)
            fresh = publish(stub, b"after restart", producer_id="p", sequence=10_000)
            [next_message] = take(call, 1)
        finally:
            call.cancel()
    assert [(m.offset, m.sequence) for m in messages] == [(offset, offset + 1) for offset in range(stored)]
    assert all(m.payload == payload_of(m.sequence) for m in messages)
    assert [(m.sequence, m.offset) for m in messages[: len(acked)]] == acked
    assert (again.offset, again.duplicate) == (last_offset, True)
    assert (fresh.offset, fresh.duplicate) == (stored, False)
    assert (next_message.offset, next_message.payload) == (stored, b"after restart")  # nothing stored twice


def test_second_broker_on_the_same_directory_is_refused(tmp_path: Path, processes: list[BrokerProcess]) -> None:
    """While one broker holds the directory, another exits 1 at once, naming the holder, without a traceback."""
    first = BrokerProcess(tmp_path)
    processes.append(first)
    first.started()
    second = BrokerProcess(tmp_path)
    processes.append(second)
    failed = second.lines.wait_for_event("broker.failed", timeout=START_TIMEOUT)
    assert second.process.wait(RPC_TIMEOUT) == 1
    assert failed["reason"] == (
        f"data directory {tmp_path} is in use by another broker (pid {first.process.pid} holds {tmp_path / '.lock'})"
    )
    assert first.process.poll() is None


def test_sigterm_while_recovering_is_a_clean_stop(tmp_path: Path, processes: list[BrokerProcess]) -> None:
    """serve() takes its signals before it opens the data directory: a SIGTERM then stops it with exit 0.

    The directory's write probe is a FIFO, so opening the directory blocks until the test opens the other
    end: the signal certainly arrives before the broker listens.
    """
    os.mkfifo(tmp_path / ".write-probe")
    broker = BrokerProcess(tmp_path)
    processes.append(broker)
    signal_once_caught(broker.process, signal.SIGTERM)
    probe = os.open(tmp_path / ".write-probe", os.O_RDONLY | os.O_NONBLOCK)  # lets the start go on
    try:
        assert broker.process.wait(START_TIMEOUT) == 0
    finally:
        os.close(probe)
    assert broker.lines.wait_for_event("broker.stopping", timeout=RPC_TIMEOUT)["signal"] == "SIGTERM"
    broker.lines.wait_for_event("broker.stopped", timeout=RPC_TIMEOUT)


def test_started_and_recovered_are_logged(tmp_path: Path) -> None:
    """broker.started names the data directory and fsync policy, after one broker.recovered per topic."""
    with start_broker(BrokerOptions(listen="127.0.0.1:0", data_dir=tmp_path)) as running:
        running.topics.topic("gpu").append(b"abc")
        running.topics.topic("gpu").append(b"de")
        running.topics.topic("empty")
    stop = threading.Event()
    exit_codes: list[int] = []
    options = BrokerOptions(listen="127.0.0.1:0", data_dir=tmp_path, fsync="interval", fsync_interval=0.5)
    with structlog.testing.capture_logs() as logs:
        server = threading.Thread(target=lambda: exit_codes.append(serve(options, stop_signals=False, stop_event=stop)))
        server.start()
        stop.set()
        server.join(RPC_TIMEOUT)
    assert exit_codes == [0]
    assert [entry["event"] for entry in logs] == ["broker.recovered"] * 2 + ["broker.started", "broker.stopped"]
    recovered = {entry["topic"]: entry for entry in logs if entry["event"] == "broker.recovered"}
    assert {key: recovered["gpu"][key] for key in ("messages", "bytes", "first_offset", "last_offset")} == {
        "messages": 2,
        "bytes": 5,
        "first_offset": 0,
        "last_offset": 1,
    }
    assert (recovered["empty"]["messages"], recovered["empty"]["last_offset"]) == (0, None)
    started = logs[2]
    assert (started["data_dir"], started["fsync"], started["fsync_interval"]) == (str(tmp_path), "interval", 0.5)


def test_in_memory_broker_logs_no_data_dir() -> None:
    """Without a data directory nothing is recovered and the log says the broker is in memory only."""
    stop = threading.Event()
    stop.set()
    with structlog.testing.capture_logs() as logs:
        assert serve(BrokerOptions(listen="127.0.0.1:0"), stop_signals=False, stop_event=stop) == 0
    started = logs[0]
    assert (started["event"], started["data_dir"], started["fsync"]) == ("broker.started", None, None)


def test_unusable_data_dir_fails_serve_with_one_line(tmp_path: Path) -> None:
    """A data directory that cannot be created makes serve() log broker.failed and return 1."""
    (tmp_path / "file").write_text("")
    with structlog.testing.capture_logs() as logs:
        assert serve(BrokerOptions(listen="127.0.0.1:0", data_dir=tmp_path / "file" / "data"), stop_signals=False) == 1
    [failed] = [entry for entry in logs if entry["event"] == "broker.failed"]
    assert failed["reason"].startswith(f"cannot create data directory {tmp_path / 'file' / 'data'}: ")
    assert "\n" not in failed["reason"]


def test_invalid_fsync_policy_is_a_broker_error(tmp_path: Path) -> None:
    """A policy name that is not one of the three is refused before anything is created."""
    with pytest.raises(BrokerError, match="fsync must be one of always, interval, never"):
        start_broker(BrokerOptions(listen="127.0.0.1:0", data_dir=tmp_path / "data", fsync="sometimes"))
    assert not (tmp_path / "data").exists()


def test_corrupt_database_refuses_to_start_and_releases_the_directory(tmp_path: Path) -> None:
    """A damaged database is a one-line BrokerError naming the file; the lock is not left held."""
    with start_broker(BrokerOptions(listen="127.0.0.1:0", data_dir=tmp_path)) as running:
        for payload in (b"a", b"b", b"c"):
            running.topics.topic("gpu").append(payload)
    database = tmp_path / DATABASE_FILE
    data = bytearray(database.read_bytes())
    data[len(data) - 4096 :] = b"\xa5" * 4096  # the last page
    database.write_bytes(bytes(data))
    pattern = rf"^database {re.escape(str(database))} is corrupt \(.+\); refusing to start rather than lose"
    with pytest.raises(BrokerError, match=pattern) as refused:
        start_broker(BrokerOptions(listen="127.0.0.1:0", data_dir=tmp_path))
    assert "\n" not in str(refused.value)
    database.rename(tmp_path / "damaged.sqlite3.bak")
    with start_broker(BrokerOptions(listen="127.0.0.1:0", data_dir=tmp_path)) as running:
        assert running.topics.names() == []


def test_old_segment_logs_are_refused_not_ignored(tmp_path: Path) -> None:
    """A directory written by the segment-log broker is refused with a pointer, rather than seeming empty."""
    (tmp_path / "gpu").mkdir()
    (tmp_path / "gpu" / "00000000000000000000.log").write_bytes(b"old records")
    with pytest.raises(BrokerError) as refused:
        start_broker(BrokerOptions(listen="127.0.0.1:0", data_dir=tmp_path))
    assert str(refused.value) == (
        f"data directory {tmp_path} holds topic logs of the old segment format ({tmp_path / 'gpu'}); this broker "
        f"keeps topics in {tmp_path / DATABASE_FILE} and does not read them: move them away"
    )


def test_failed_bind_releases_the_directory(tmp_path: Path) -> None:
    """A broker that recovered but could not listen lets the next attempt have the directory."""
    with start_broker(BrokerOptions(listen="127.0.0.1:0")) as holder:
        taken = f"127.0.0.1:{holder.port}"
        with pytest.raises(BrokerError, match="cannot listen on"):
            start_broker(BrokerOptions(listen=taken, data_dir=tmp_path))
    start_broker(BrokerOptions(listen="127.0.0.1:0", data_dir=tmp_path)).stop(grace=0)


def test_full_database_is_unavailable_and_logged_once_per_episode(tmp_path: Path) -> None:
    """Publishes the database has no room for are UNAVAILABLE; storage_failed once, storage_recovered after."""
    Database.open(tmp_path).close()
    database = Database.open(tmp_path, max_pages=(tmp_path / DATABASE_FILE).stat().st_size // 4096 + 2)
    topics = Broker(max_messages=100, max_bytes=1 << 20, storage=database)
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    mq_pb2_grpc.add_MessageQueueServicer_to_server(MessageQueueServicer(topics), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with structlog.testing.capture_logs() as logs, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = mq_pb2_grpc.MessageQueueStub(channel)
            publish(stub, b"small")  # creates the topic
            refusals = []
            for _ in range(3):
                with pytest.raises(grpc.RpcError) as refused:
                    publish(stub, b"x" * 100_000)
                refusals.append((refused.value.code(), refused.value.details()))
            assert publish(stub, b"fits").offset == 1
    finally:
        server.stop(None).wait()
        topics.close()
    assert (
        refusals
        == [
            (grpc.StatusCode.UNAVAILABLE, "topic gpu cannot be written to disk: database or disk is full (SQLITE_FULL)")
        ]
        * 3
    )
    events = [(entry["event"], entry.get("path"), entry.get("reason")) for entry in logs]
    assert events == [
        ("broker.storage_failed", str(tmp_path / DATABASE_FILE), "database or disk is full (SQLITE_FULL)"),
        ("broker.storage_recovered", None, None),
    ]
