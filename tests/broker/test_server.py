"""The broker over real gRPC on 127.0.0.1: status codes, metadata, streaming, health and shutdown."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rxstreamer.broker import BrokerError, BrokerOptions, RunningBroker, serve, start_broker
from rxstreamer.broker.server import AddressInUseError
from rxstreamer.proto import mq_pb2, mq_pb2_grpc
from tests.processes import REPO_ROOT, child_env, end_process, rxstreamer_command

pytestmark = pytest.mark.integration

RPC_TIMEOUT = 5.0
SERVICE_NAME = "rxstreamer.v1.MessageQueue"

BrokerFactory = Callable[..., RunningBroker]


@pytest.fixture
def make_broker() -> Iterator[BrokerFactory]:
    """Starts brokers on an OS-chosen loopback port and always stops them."""
    started: list[RunningBroker] = []

    def make(**limits: Any) -> RunningBroker:
        running = start_broker(BrokerOptions(listen="127.0.0.1:0", **limits))
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop(grace=0)


@pytest.fixture
def broker(make_broker: BrokerFactory) -> RunningBroker:
    return make_broker()


@pytest.fixture
def channel(broker: RunningBroker) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(broker.address) as opened:
        yield opened


@pytest.fixture
def stub(channel: grpc.Channel) -> mq_pb2_grpc.MessageQueueStub:
    return mq_pb2_grpc.MessageQueueStub(channel)


def publish(
    stub: mq_pb2_grpc.MessageQueueStub,
    payload: bytes,
    *,
    topic: str = "gpu",
    producer_id: str = "",
    sequence: int = 0,
) -> mq_pb2.PublishResponse:
    request = mq_pb2.PublishRequest(
        topic=topic,
        payload=payload,
        headers={"content-type": "text/plain"},
        producer_id=producer_id,
        sequence=sequence,
    )
    return stub.Publish(request, timeout=RPC_TIMEOUT)


def subscribe(
    stub: mq_pb2_grpc.MessageQueueStub,
    start: mq_pb2.StartPosition.ValueType,
    *,
    offset: int = 0,
    topic: str = "gpu",
) -> grpc._CallIterator[mq_pb2.Message]:
    """Opens a stream and waits until the broker has resolved where it starts."""
    call = stub.Subscribe(mq_pb2.SubscribeRequest(topic=topic, start=start, offset=offset), timeout=RPC_TIMEOUT)
    call.initial_metadata()  # sent by the broker once the subscription is in place
    return call


def take(call: grpc._CallIterator[mq_pb2.Message], count: int) -> list[mq_pb2.Message]:
    return [next(call) for _ in range(count)]


def metadata(error: grpc.RpcError) -> dict[str, str | bytes]:
    return {item.key: item.value for item in error.trailing_metadata()}


def stop_in_background(broker: RunningBroker, grace: float) -> threading.Thread:
    thread = threading.Thread(target=broker.stop, args=(grace,))
    thread.start()
    return thread


def test_publish_acks_consecutive_offsets(stub: mq_pb2_grpc.MessageQueueStub) -> None:
    """Each accepted publish is answered with the next offset of its topic."""
    acks = [publish(stub, b"m") for _ in range(3)]
    assert [(ack.offset, ack.duplicate) for ack in acks] == [(0, False), (1, False), (2, False)]
    assert publish(stub, b"other", topic="other").offset == 0


def test_duplicate_is_acked_with_original_offset_and_stored_once(
    broker: RunningBroker, stub: mq_pb2_grpc.MessageQueueStub
) -> None:
    """A re-sent (producer_id, sequence) is acknowledged as a duplicate of its first offset."""
    publish(stub, b"a", producer_id="streamer-1", sequence=1)
    publish(stub, b"b", producer_id="streamer-1", sequence=2)
    again = publish(stub, b"a", producer_id="streamer-1", sequence=1)
    assert (again.offset, again.duplicate) == (0, True)
    assert broker.topics.topic("gpu").retained_messages == 2


def test_full_topic_is_resource_exhausted_with_retry_hint(make_broker: BrokerFactory) -> None:
    """A full topic refuses with RESOURCE_EXHAUSTED and, with retention, a retry-after-ms hint."""
    broker = make_broker(max_messages=1, retention=60.0)
    with grpc.insecure_channel(broker.address) as channel:
        stub = mq_pb2_grpc.MessageQueueStub(channel)
        publish(stub, b"a")
        with pytest.raises(grpc.RpcError) as refused:
            publish(stub, b"b")
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "topic gpu is full" in (refused.value.details() or "")
    retry_after_ms = int(metadata(refused.value)["retry-after-ms"])
    assert 50_000 < retry_after_ms <= 60_000
    assert broker.topics.topic("gpu").retained_messages == 1


def test_full_topic_without_retention_has_no_retry_hint(make_broker: BrokerFactory) -> None:
    """Without retention room never appears by itself, so no retry time is promised."""
    broker = make_broker(max_bytes=3)
    with grpc.insecure_channel(broker.address) as channel:
        stub = mq_pb2_grpc.MessageQueueStub(channel)
        publish(stub, b"abc")
        with pytest.raises(grpc.RpcError) as refused:
            publish(stub, b"d")
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "retry-after-ms" not in metadata(refused.value)


def test_retry_hint_is_accurate_and_fullness_is_logged_once(make_broker: BrokerFactory) -> None:
    """Waiting retry-after-ms lets the publish through; full and room-again are each logged once."""
    broker = make_broker(max_messages=1, retention=0.2)
    with structlog.testing.capture_logs() as logs, grpc.insecure_channel(broker.address) as channel:
        stub = mq_pb2_grpc.MessageQueueStub(channel)
        publish(stub, b"a")
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as refused:
                publish(stub, b"b")
        time.sleep(int(metadata(refused.value)["retry-after-ms"]) / 1000)
        assert publish(stub, b"b").offset == 1
        publish(stub, b"c", topic="other")
    events = [entry["event"] for entry in logs if entry["event"].startswith("broker.topic_")]
    assert events == ["broker.topic_full", "broker.topic_has_room"]


def test_message_larger_than_max_bytes_is_invalid_argument(make_broker: BrokerFactory) -> None:
    """A payload that can never fit is not retryable, so it is INVALID_ARGUMENT."""
    broker = make_broker(max_bytes=4)
    with grpc.insecure_channel(broker.address) as channel:
        stub = mq_pb2_grpc.MessageQueueStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            publish(stub, b"12345")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("topic", ["", "has space", "slash/y", "x" * 256])
def test_invalid_topic_is_invalid_argument(stub: mq_pb2_grpc.MessageQueueStub, topic: str) -> None:
    """Publish and Subscribe reject empty or malformed topic names."""
    with pytest.raises(grpc.RpcError) as refused_publish:
        publish(stub, b"x", topic=topic)
    assert refused_publish.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    call = stub.Subscribe(
        mq_pb2.SubscribeRequest(topic=topic, start=mq_pb2.START_POSITION_EARLIEST), timeout=RPC_TIMEOUT
    )
    with pytest.raises(grpc.RpcError) as refused_subscribe:
        next(call)
    assert refused_subscribe.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_longest_valid_topic_is_accepted(stub: mq_pb2_grpc.MessageQueueStub) -> None:
    """Names up to 255 characters from the allowed set are fine."""
    assert publish(stub, b"x", topic="A-z_0.9" + "x" * 248).offset == 0


def test_subscribe_earliest_streams_retained_then_live(stub: mq_pb2_grpc.MessageQueueStub) -> None:
    """EARLIEST delivers every retained message in order, then ones published later."""
    publish(stub, b"a", producer_id="p", sequence=1)
    publish(stub, b"b", producer_id="p", sequence=2)
    call = subscribe(stub, mq_pb2.START_POSITION_EARLIEST)
    try:
        retained = take(call, 2)
        publish(stub, b"c")
        [live] = take(call, 1)
    finally:
        call.cancel()
    assert [(m.offset, m.payload) for m in [*retained, live]] == [(0, b"a"), (1, b"b"), (2, b"c")]
    first = retained[0]
    assert (first.topic, first.producer_id, first.sequence) == ("gpu", "p", 1)
    assert dict(first.headers) == {"content-type": "text/plain"}
    assert abs(first.published_at.ToNanoseconds() - time.time_ns()) < 60 * 10**9


def test_subscribe_latest_streams_only_new_messages(stub: mq_pb2_grpc.MessageQueueStub) -> None:
    """LATEST skips what is retained and starts with the next publish."""
    publish(stub, b"old")
    call = subscribe(stub, mq_pb2.START_POSITION_LATEST)
    try:
        assert dict(call.initial_metadata())["start-offset"] == "1"
        publish(stub, b"new")
        [message] = take(call, 1)
    finally:
        call.cancel()
    assert (message.offset, message.payload) == (1, b"new")


def test_subscribe_from_offset(stub: mq_pb2_grpc.MessageQueueStub) -> None:
    """OFFSET starts at the requested offset, inclusive."""
    for payload in (b"a", b"b", b"c"):
        publish(stub, payload)
    call = subscribe(stub, mq_pb2.START_POSITION_OFFSET, offset=1)
    try:
        messages = take(call, 2)
    finally:
        call.cancel()
    assert [(m.offset, m.payload) for m in messages] == [(1, b"b"), (2, b"c")]


def test_subscribe_on_empty_topic_receives_first_publish(stub: mq_pb2_grpc.MessageQueueStub) -> None:
    """A subscriber may come before the topic has any message."""
    call = subscribe(stub, mq_pb2.START_POSITION_EARLIEST, topic="fresh")
    try:
        publish(stub, b"first", topic="fresh")
        [message] = take(call, 1)
    finally:
        call.cancel()
    assert (message.offset, message.payload) == (0, b"first")


def test_health_serving_then_not_serving_on_stop(broker: RunningBroker, channel: grpc.Channel) -> None:
    """The health service reports SERVING while up and NOT_SERVING once stopping starts."""
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=RPC_TIMEOUT)
    try:
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        stopper = stop_in_background(broker, grace=RPC_TIMEOUT)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        watch.cancel()
    stopper.join(RPC_TIMEOUT)
    assert not stopper.is_alive()


def test_stop_ends_open_subscribe_stream(broker: RunningBroker, stub: mq_pb2_grpc.MessageQueueStub) -> None:
    """stop() ends a waiting stream cleanly and at once, without using up the grace period."""
    publish(stub, b"a")
    call = subscribe(stub, mq_pb2.START_POSITION_EARLIEST)
    assert take(call, 1)[0].payload == b"a"
    started = time.monotonic()
    stopper = stop_in_background(broker, grace=30.0)
    assert list(call) == []
    stopper.join(RPC_TIMEOUT)
    assert not stopper.is_alive()
    assert call.code() == grpc.StatusCode.OK
    assert time.monotonic() - started < RPC_TIMEOUT


def test_stop_twice_is_harmless(broker: RunningBroker) -> None:
    """A second stop() (e.g. a fixture after a test) returns without error."""
    broker.stop(grace=0)
    broker.stop(grace=0)


def test_port_in_use_is_an_address_in_use_error() -> None:
    """Binding a port someone else holds fails with AddressInUseError, whose message names the address."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        listen = f"127.0.0.1:{holder.getsockname()[1]}"
        with pytest.raises(AddressInUseError) as refused:
            start_broker(BrokerOptions(listen=listen))
    assert str(refused.value) == (
        f"cannot listen on {listen}: port {listen} is in use (address in use); stop what listens there or "
        "choose another address"
    )


def test_port_out_of_range_is_a_broker_error() -> None:
    """A port above 65535 is refused instead of being bound modulo 65536."""
    with pytest.raises(BrokerError, match=re.escape("cannot listen on 127.0.0.1:99999")):
        start_broker(BrokerOptions(listen="127.0.0.1:99999"))


def test_invalid_limits_are_a_broker_error() -> None:
    """Impossible limits are refused before anything listens."""
    with pytest.raises(BrokerError, match="max_messages"):
        start_broker(BrokerOptions(listen="127.0.0.1:0", max_messages=0))


def test_serve_reports_failure_and_returns_1() -> None:
    """serve() turns a start failure into broker.failed and exit code 1, not a traceback."""
    with structlog.testing.capture_logs() as logs:
        assert serve(BrokerOptions(listen="127.0.0.1:0", max_messages=0), stop_signals=False) == 1
    [failed] = [entry for entry in logs if entry["event"] == "broker.failed"]
    assert failed["reason"].startswith("invalid broker limits: ")


def test_serve_on_a_port_in_use_says_so_in_one_line_and_returns_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A taken port is the operator's to fix, like a bad setting: one line on stderr naming it, exit 2, no log."""
    with socket.socket() as holder, structlog.testing.capture_logs() as logs:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        listen = f"127.0.0.1:{holder.getsockname()[1]}"
        assert serve(BrokerOptions(listen=listen), stop_signals=False) == 2
    assert logs == []
    assert capsys.readouterr().err == (
        f"rxstreamer mq: cannot listen on {listen}: port {listen} is in use (address in use); stop what listens "
        "there or choose another address\n"
    )


def test_a_broker_process_on_a_port_in_use_exits_2_with_one_line() -> None:
    """`rxstreamer mq` on a port another broker holds: exit 2, and its whole output is the one line."""
    with start_broker(BrokerOptions(listen="127.0.0.1:0")) as holder:
        listen = f"127.0.0.1:{holder.port}"
        finished = subprocess.run(
            rxstreamer_command("mq", "--listen", listen, "--log-format", "json"),
            capture_output=True, text=True, env=child_env(), cwd=REPO_ROOT, timeout=60, check=False,
        )  # fmt: skip
    assert (finished.returncode, finished.stdout) == (2, "")
    assert finished.stderr == (
        f"rxstreamer mq: cannot listen on {listen}: port {listen} is in use (address in use); stop what listens "
        "there or choose another address\n"
    )


def test_serve_stops_when_stop_event_is_set() -> None:
    """Embedded without signal handlers, serve() returns 0 once its stop event is set."""
    stop = threading.Event()
    exit_codes: list[int] = []
    with structlog.testing.capture_logs() as logs:
        server_thread = threading.Thread(
            target=lambda: exit_codes.append(
                serve(BrokerOptions(listen="127.0.0.1:0"), stop_signals=False, stop_event=stop)
            )
        )
        server_thread.start()
        stop.set()
        server_thread.join(RPC_TIMEOUT)
    assert exit_codes == [0]
    assert [entry["event"] for entry in logs] == ["broker.started", "broker.stopped"]


class _Lines:
    """Reads a pipe on a thread so the test can wait for a line with a deadline."""

    def __init__(self, pipe: Any) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(pipe,), daemon=True)
        self._thread.start()

    def _pump(self, pipe: Any) -> None:
        for line in pipe:
            self._lines.put(line)

    def wait_for_event(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            self.seen.append(line)
            entry: dict[str, Any] = json.loads(line)
            if entry.get("event") == event:
                return entry
        raise AssertionError(f"no {event} within {timeout}s; output so far: {self.seen}")

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


SERVE_SNIPPET = """
import structlog
structlog.configure(processors=[structlog.processors.JSONRenderer()])
from rxstreamer.broker import serve, BrokerOptions
raise SystemExit(serve(BrokerOptions(listen="127.0.0.1:0")))
"""


def test_serve_process_stops_gracefully_on_sigterm() -> None:
    """The broker process logs its port, serves, and on SIGTERM ends streams and exits 0."""
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE_SNIPPET],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lines = _Lines(process.stdout)
        started = lines.wait_for_event("broker.started", timeout=15.0)
        with grpc.insecure_channel(f"127.0.0.1:{started['port']}") as channel:
            stub = mq_pb2_grpc.MessageQueueStub(channel)
            assert publish(stub, b"hello").offset == 0
            call = subscribe(stub, mq_pb2.START_POSITION_EARLIEST)
            assert take(call, 1)[0].payload == b"hello"
            process.send_signal(signal.SIGTERM)
            assert list(call) == []
        assert process.wait(timeout=RPC_TIMEOUT) == 0
        lines.wait_for_event("broker.stopped", timeout=RPC_TIMEOUT)
        lines.join(RPC_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(RPC_TIMEOUT)
        stderr = process.stderr.read() if process.stderr else ""
        for pipe in (process.stdout, process.stderr):
            if pipe:
                pipe.close()
    assert "Traceback" not in stderr


# -- refusals added with the broker-wide caps and conflict detection ---------------------------------


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str, dict[str, str | bytes]]:
    """The status code, details and trailing metadata of a call that must fail."""
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refused.value.code(), refused.value.details() or "", metadata(refused.value)


def test_too_large_publish_status_by_size_band(make_broker: BrokerFactory) -> None:
    """What a producer gets at each size, so it can tell "never" from "later" (the streamer relies on this).

    Up to max_bytes: stored. Above it, while the request fits gRPC's receive limit (max_bytes + 1 MiB):
    INVALID_ARGUMENT naming size and setting. Beyond: gRPC's own RESOURCE_EXHAUSTED "larger than max",
    which is final too although its code says otherwise.
    """
    broker = make_broker(max_bytes=1000)
    limit = 1000 + (1 << 20)

    def request(size: int, sequence: int) -> mq_pb2.PublishRequest:
        return mq_pb2.PublishRequest(topic="gpu", payload=b"x" * size, producer_id="p", sequence=sequence)

    framing = 14  # topic, producer_id, sequence and the payload's tag and length, serialised
    largest_read = request(limit - framing, 3)  # the largest request gRPC still reads: exactly at the limit
    assert largest_read.ByteSize() == limit
    with grpc.insecure_channel(broker.address) as channel:
        stub = mq_pb2_grpc.MessageQueueStub(channel)
        stored = stub.Publish(request(1000, 1), timeout=RPC_TIMEOUT)
        just_above = refusal(lambda: stub.Publish(request(1001, 2), timeout=RPC_TIMEOUT))
        at_limit = refusal(lambda: stub.Publish(largest_read, timeout=RPC_TIMEOUT))
        beyond = refusal(lambda: stub.Publish(request(limit - framing + 1, 4), timeout=RPC_TIMEOUT))
    assert (stored.offset, stored.duplicate) == (0, False)
    assert just_above == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "message of 1001 bytes can never be stored in topic gpu: broker.max_bytes = 1000 bytes is the largest a "
        "message may be",
        {},
    )
    assert at_limit[:2] == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"message of {limit - framing} bytes can never be stored in topic gpu: broker.max_bytes = 1000 bytes is the "
        "largest a message may be",
    )
    assert beyond == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"SERVER: Received message larger than max ({limit + 1} vs. {limit})",
        {},
    )


def test_receive_limit_follows_the_smaller_byte_limit(make_broker: BrokerFactory) -> None:
    """With max_total_bytes below max_bytes, it decides both the INVALID_ARGUMENT and gRPC's read limit."""
    broker = make_broker(max_bytes=1 << 30, max_total_bytes=1000)
    with grpc.insecure_channel(broker.address) as channel:
        stub = mq_pb2_grpc.MessageQueueStub(channel)
        code, details, _ = refusal(lambda: publish(stub, b"x" * 1001))
        assert (code, details) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "message of 1001 bytes can never be stored in topic gpu: broker.max_total_bytes = 1000 bytes is the "
            "largest a message may be",
        )
        code, details, _ = refusal(lambda: publish(stub, b"x" * (2 << 20)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.endswith(f"vs. {1000 + (1 << 20)})")


def test_reused_identity_with_other_content_is_failed_precondition(stub: mq_pb2_grpc.MessageQueueStub) -> None:
    """Two streams under one producer id: the second content is refused for good (and logged), not acked."""
    publish(stub, b"file a, batch 7", producer_id="host:metrics.csv", sequence=7)
    with structlog.testing.capture_logs() as logs:
        code, details, _ = refusal(
            lambda: publish(stub, b"file b, batch 7", producer_id="host:metrics.csv", sequence=7)
        )
    assert logs == [
        {
            "event": "broker.sequence_conflict",
            "log_level": "warning",
            "topic": "gpu",
            "producer_id": "host:metrics.csv",
            "sequence": 7,
            "offset": 0,
        }
    ]
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.startswith(
        "producer 'host:metrics.csv' already published sequence 7 with different content: two inputs share one "
        "producer id"
    )
    again = publish(stub, b"file a, batch 7", producer_id="host:metrics.csv", sequence=7)
    assert (again.offset, again.duplicate) == (0, True)


def test_topic_past_max_topics_is_resource_exhausted_and_logged_once(make_broker: BrokerFactory) -> None:
    """Publish and Subscribe that would create a topic too many are refused, naming the setting; one log line."""
    broker = make_broker(max_topics=1)
    with structlog.testing.capture_logs() as logs, grpc.insecure_channel(broker.address) as channel:
        stub = mq_pb2_grpc.MessageQueueStub(channel)
        publish(stub, b"a", topic="first")
        refused = [refusal(lambda: publish(stub, b"b", topic="second")) for _ in range(3)]
        call = stub.Subscribe(
            mq_pb2.SubscribeRequest(topic="third", start=mq_pb2.START_POSITION_EARLIEST), timeout=RPC_TIMEOUT
        )
        subscribe_refused = refusal(lambda: next(call))
    expected: tuple[grpc.StatusCode, str, dict[str, str | bytes]] = (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "broker has 1 topics, the most broker.max_topics (1) allows; topic second cannot be created "
        "(use an existing topic or raise broker.max_topics)",
        {},
    )
    assert refused == [expected] * 3
    assert subscribe_refused[:2] == (grpc.StatusCode.RESOURCE_EXHAUSTED, expected[1].replace("second", "third"))
    assert broker.topics.names() == ["first"]
    assert [entry["event"] for entry in logs] == ["broker.max_topics_reached"]


def test_broker_full_is_resource_exhausted_with_hint_and_logged_per_episode(make_broker: BrokerFactory) -> None:
    """All topics together at max_total_bytes: retryable refusal with retry-after-ms, logged full then room."""
    broker = make_broker(max_total_bytes=10, retention=0.3)
    with structlog.testing.capture_logs() as logs, grpc.insecure_channel(broker.address) as channel:
        stub = mq_pb2_grpc.MessageQueueStub(channel)
        publish(stub, b"123456", topic="a")
        refused = [refusal(lambda: publish(stub, b"12345", topic="b")) for _ in range(3)]
        time.sleep(int(refused[-1][2]["retry-after-ms"]) / 1000)  # the hint itself is under test
        assert publish(stub, b"12345", topic="b").offset == 0
    code, details, trailing = refused[0]
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.startswith("broker is full: its topics hold 6 bytes, the most broker.max_total_bytes (10) allows")
    assert 0 < int(trailing["retry-after-ms"]) <= 300
    events = [entry["event"] for entry in logs]
    assert events == ["broker.total_bytes_full", "broker.total_bytes_has_room"]


def test_refused_subscriber_gets_resource_exhausted_and_health_watch_counts(make_broker: BrokerFactory) -> None:
    """A health Watch holds a thread like a Subscribe, so it takes a subscriber slot too."""
    broker = make_broker(max_subscribers=1)
    with grpc.insecure_channel(broker.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT
        )
        try:
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            call = mq_pb2_grpc.MessageQueueStub(channel).Subscribe(
                mq_pb2.SubscribeRequest(topic="gpu", start=mq_pb2.START_POSITION_EARLIEST), timeout=RPC_TIMEOUT
            )
            code, details, _ = refusal(lambda: next(call))
        finally:
            watch.cancel()
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.startswith("broker has 1 subscribers, the most broker.max_subscribers allows")


class ServeProcess:
    """serve() with its own signal handlers, in a process of its own (SERVE_SNIPPET)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVE_SNIPPET],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines = _Lines(self.process.stdout)

    def end(self) -> str:
        return end_process(self.process, RPC_TIMEOUT)


def test_serve_process_logs_sighup_and_keeps_serving() -> None:
    """serve()'s own handlers: SIGHUP is logged as broker.sighup_ignored; messages and service stay."""
    broker = ServeProcess()
    try:
        started = broker.lines.wait_for_event("broker.started", timeout=15.0)
        with grpc.insecure_channel(f"127.0.0.1:{started['port']}") as channel:
            stub = mq_pb2_grpc.MessageQueueStub(channel)
            publish(stub, b"kept")
            broker.process.send_signal(signal.SIGHUP)
            ignored = broker.lines.wait_for_event("broker.sighup_ignored", timeout=RPC_TIMEOUT)
            call = subscribe(stub, mq_pb2.START_POSITION_EARLIEST)
            try:
                assert take(call, 1)[0].payload == b"kept"
            finally:
                call.cancel()
        broker.process.send_signal(signal.SIGTERM)
        assert broker.process.wait(RPC_TIMEOUT) == 0
        assert broker.lines.wait_for_event("broker.stopping", timeout=RPC_TIMEOUT)["signal"] == "SIGTERM"
    finally:
        stderr = broker.end()
    assert ignored["signal"] == "SIGHUP"
    assert "Traceback" not in stderr
