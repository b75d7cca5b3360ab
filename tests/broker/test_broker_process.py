"""`rxstreamer mq` as a real process: descriptor limits, subscribers against publishers, signals, disk errors."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rxstreamer.proto import mq_pb2, mq_pb2_grpc
from tests.broker.test_server import RPC_TIMEOUT, publish, take
from tests.processes import REPO_ROOT, child_env, end_process, rxstreamer_command, signal_once_caught

pytestmark = [pytest.mark.integration, pytest.mark.faults]

START_TIMEOUT = 20.0
# Publish and health answer within this while every subscriber slot is taken; a starved pool never does.
PROMPT = 2.0
# Streams held open by a test outlive it comfortably; they are cancelled at its end.
STREAM_TIMEOUT = 60.0


class JsonLog:
    """A process's JSON log lines, read on a thread, so a test can wait for one with a deadline."""

    def __init__(self, pipe: IO[str]) -> None:
        self.entries: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            if line.startswith("{"):
                with self._changed:
                    self.entries.append(json.loads(line))
                    self._changed.notify_all()

    def wait_for(self, event: str, timeout: float) -> dict[str, Any]:
        """The first line with this event, waiting up to ``timeout`` for it."""
        with self._changed:
            if not self._changed.wait_for(lambda: bool(self.events(event)), timeout):
                raise AssertionError(f"no {event} within {timeout}s; events: {[e.get('event') for e in self.entries]}")
            return self.events(event)[0]

    def events(self, event: str) -> list[dict[str, Any]]:
        return [entry for entry in list(self.entries) if entry.get("event") == event]

    def join(self, timeout: float) -> None:
        """Wait until the pipe is closed, i.e. the process has ended and every line is in."""
        self._thread.join(timeout)


class CliBroker:
    """`python -m rxstreamer mq` on 127.0.0.1 with JSON logs, optionally under resource limits."""

    def __init__(self, *args: str, limits: dict[int, int] | None = None, ignore_sigxfsz: bool = False) -> None:
        def in_child() -> None:
            for limit, value in (limits or {}).items():
                resource.setrlimit(limit, (value, value))
            if ignore_sigxfsz:  # an ignored signal stays ignored across exec: writes past the limit get EFBIG
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

        self.process = subprocess.Popen(
            rxstreamer_command("mq", "--listen", "127.0.0.1:0", "--log-format", "json", *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
            cwd=REPO_ROOT,
            preexec_fn=in_child if limits or ignore_sigxfsz else None,  # noqa: PLW1509 - the limits are the test
        )
        assert self.process.stdout is not None
        self.log = JsonLog(self.process.stdout)

    def started(self) -> str:
        """The address, once the broker logged broker.started."""
        return f"127.0.0.1:{self.log.wait_for('broker.started', timeout=START_TIMEOUT)['port']}"

    def terminate(self) -> int:
        """SIGTERM, then the exit status once the process and its log have ended."""
        self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(RPC_TIMEOUT)
        self.log.join(RPC_TIMEOUT)
        return status

    def end(self) -> str:
        """Make sure the process is gone; what it wrote to stderr."""
        return end_process(self.process, RPC_TIMEOUT)


@pytest.fixture
def brokers() -> Iterator[Callable[..., CliBroker]]:
    """Starts broker processes; each is killed at the end if still running, and none may have crashed."""
    started: list[CliBroker] = []

    def start(*args: str, **options: Any) -> CliBroker:
        broker = CliBroker(*args, **options)
        started.append(broker)
        return broker

    yield start
    for broker in started:
        assert "Traceback" not in broker.end()


def open_stream(stub: mq_pb2_grpc.MessageQueueStub, topic: str = "gpu") -> grpc._CallIterator[mq_pb2.Message]:
    """A Subscribe that stays open, once the broker has admitted it (its start offset arrived) within PROMPT."""
    call = stub.Subscribe(
        mq_pb2.SubscribeRequest(topic=topic, start=mq_pb2.START_POSITION_EARLIEST), timeout=STREAM_TIMEOUT
    )
    answered = threading.Event()

    def wait_for_answer() -> None:
        call.initial_metadata()
        answered.set()

    threading.Thread(target=wait_for_answer, daemon=True).start()
    if not answered.wait(PROMPT) or "start-offset" not in dict(call.initial_metadata()):
        call.cancel()
        raise AssertionError(f"the broker did not admit a stream to {topic} within {PROMPT}s")
    return call


def answers_promptly(channel: grpc.Channel) -> tuple[int, int]:
    """A Publish and a health Check made while streams are open: their offset and serving status."""
    stub = mq_pb2_grpc.MessageQueueStub(channel)
    ack = stub.Publish(mq_pb2.PublishRequest(topic="other", payload=b"still served"), timeout=PROMPT)
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=PROMPT)
    return ack.offset, health.status


def test_thousands_of_topics_fit_a_low_descriptor_limit_and_survive_kill(
    tmp_path: Path, brokers: Callable[..., CliBroker]
) -> None:
    """Under RLIMIT_NOFILE 256, 1,200 topics are each acked, and after SIGKILL all are recovered."""
    limits = {resource.RLIMIT_NOFILE: 256}
    args = ("--data-dir", str(tmp_path), "--fsync", "never", "--max-topics", "2000")
    first = brokers(*args, limits=limits)
    with grpc.insecure_channel(first.started()) as channel:
        stub = mq_pb2_grpc.MessageQueueStub(channel)
        acks = [publish(stub, b"m%d" % index, topic=f"topic-{index:04d}").offset for index in range(1200)]
    assert acks == [0] * 1200
    first.process.kill()
    assert first.process.wait(RPC_TIMEOUT) == -signal.SIGKILL

    second = brokers(*args, limits=limits)
    with grpc.insecure_channel(second.started()) as channel:
        stub = mq_pb2_grpc.MessageQueueStub(channel)
        streams = [open_stream(stub, topic) for topic in ("topic-0000", "topic-1199")]
        try:
            firsts = [take(stream, 1)[0].payload for stream in streams]
        finally:
            for stream in streams:
                stream.cancel()
    recovered = {entry["topic"]: entry["messages"] for entry in second.log.events("broker.recovered")}
    assert recovered == {f"topic-{index:04d}": 1 for index in range(1200)}
    assert firsts == [b"m0", b"m1199"]


def test_subscribers_past_the_limit_are_refused_and_never_starve_publishers(
    brokers: Callable[..., CliBroker],
) -> None:
    """With max_subscribers 4, a 5th stream is RESOURCE_EXHAUSTED; Publish and health answer meanwhile."""
    broker = brokers("--max-subscribers", "4")
    with grpc.insecure_channel(broker.started()) as channel, ExitStack() as cleanup:
        stub = mq_pb2_grpc.MessageQueueStub(channel)
        streams = [open_stream(stub) for _ in range(4)]
        for stream in streams:
            cleanup.callback(stream.cancel)
        refused = []
        for _ in range(12):  # more than the 8 spare threads: a refusal must not keep its thread
            attempt = stub.Subscribe(
                mq_pb2.SubscribeRequest(topic="gpu", start=mq_pb2.START_POSITION_EARLIEST), timeout=PROMPT
            )
            with pytest.raises(grpc.RpcError) as error:
                next(attempt)
            refused.append((error.value.code(), error.value.details()))
        assert answers_promptly(channel) == (0, health_pb2.HealthCheckResponse.SERVING)
        streams[0].cancel()  # the slot comes back as soon as the broker sees the stream end
        deadline = time.monotonic() + PROMPT
        while True:
            try:
                replacement = open_stream(stub)
                break
            except AssertionError:
                assert time.monotonic() < deadline, f"the freed slot was not available again within {PROMPT}s"
        cleanup.callback(replacement.cancel)
    assert set(refused) == {
        (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "broker has 4 subscribers, the most broker.max_subscribers allows; close one or raise "
            "broker.max_subscribers (each open stream holds one of the broker's threads)",
        )
    }
    assert broker.terminate() == 0
    assert len(broker.log.events("broker.max_subscribers_reached")) == 1


def test_twenty_subscribers_do_not_block_a_publish_with_default_settings(
    brokers: Callable[..., CliBroker],
) -> None:
    """More open streams than the old 16-thread pool had: Publish and health still answer promptly."""
    broker = brokers()
    with grpc.insecure_channel(broker.started()) as channel, ExitStack() as cleanup:
        stub = mq_pb2_grpc.MessageQueueStub(channel)
        for _ in range(20):
            cleanup.callback(open_stream(stub).cancel)
        assert answers_promptly(channel) == (0, health_pb2.HealthCheckResponse.SERVING)


def test_sighup_is_logged_and_the_broker_keeps_its_messages(brokers: Callable[..., CliBroker]) -> None:
    """SIGHUP no longer kills the in-memory broker: it logs broker.sighup_ignored and serves on, data intact."""
    broker = brokers()
    with grpc.insecure_channel(broker.started()) as channel:
        stub = mq_pb2_grpc.MessageQueueStub(channel)
        publish(stub, b"before")
        broker.process.send_signal(signal.SIGHUP)
        ignored = broker.log.wait_for("broker.sighup_ignored", timeout=RPC_TIMEOUT)
        assert publish(stub, b"after").offset == 1
        stream = open_stream(stub)
        try:
            payloads = [message.payload for message in take(stream, 2)]
        finally:
            stream.cancel()
    assert payloads == [b"before", b"after"]
    assert (ignored["level"], broker.process.poll()) == ("warning", None)
    assert broker.terminate() == 0


def test_sigterm_while_the_broker_is_starting_is_a_clean_stop(
    tmp_path: Path, brokers: Callable[..., CliBroker]
) -> None:
    """SIGTERM before the broker listens (here: held up opening its data directory) ends in exit 0, logged.

    The directory's write probe is a FIFO, so start-up blocks on it until the test opens the other end: the
    signal certainly arrives mid-start. (Before the interpreter runs any rxstreamer code, ~40 ms after spawn,
    no handler can exist; the test waits for the handler, as /proc shows it, before it signals.)
    """
    os.mkfifo(tmp_path / ".write-probe")
    broker = brokers("--data-dir", str(tmp_path))
    signal_once_caught(broker.process, signal.SIGTERM)
    probe = os.open(tmp_path / ".write-probe", os.O_RDONLY | os.O_NONBLOCK)  # lets the start go on
    try:
        assert broker.process.wait(START_TIMEOUT) == 0
    finally:
        os.close(probe)
    broker.log.join(RPC_TIMEOUT)
    assert [entry["event"] for entry in broker.log.entries] == [
        "broker.started",
        "broker.stopping",
        "broker.stopped",
    ]
    assert broker.log.events("broker.stopping")[0]["signal"] == "SIGTERM"


def test_storage_failure_is_unavailable_and_logged_once_with_path_and_reason(
    tmp_path: Path, brokers: Callable[..., CliBroker]
) -> None:
    """Past the file-size limit every publish is UNAVAILABLE, and broker.storage_failed is logged once."""
    broker = brokers("--data-dir", str(tmp_path), limits={resource.RLIMIT_FSIZE: 1 << 20}, ignore_sigxfsz=True)
    codes = []
    with grpc.insecure_channel(broker.started()) as channel:
        stub = mq_pb2_grpc.MessageQueueStub(channel)
        for sequence in range(1, 41):  # 40 x 40 KB: the database's log reaches 1 MiB about halfway
            try:
                publish(stub, bytes([sequence]) * 40_000, producer_id="p", sequence=sequence)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                codes.append(error.code())
                details = error.details()
    assert broker.terminate() == 0
    first_failure = codes.index(grpc.StatusCode.UNAVAILABLE)
    assert 5 < first_failure < 40
    assert codes[first_failure:] == [grpc.StatusCode.UNAVAILABLE] * (40 - first_failure)
    assert details == (
        "topic gpu cannot be written to disk: disk I/O error (SQLITE_IOERR_WRITE); restart the broker to write again"
    )
    [failed] = broker.log.events("broker.storage_failed")
    assert (failed["level"], failed["path"], failed["reason"]) == (
        "error",
        str(tmp_path / "broker.sqlite3"),
        "disk I/O error (SQLITE_IOERR_WRITE)",
    )
