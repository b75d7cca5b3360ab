"""`rxstreamer tail` against a real broker: it says why it is waiting, on stderr, and still exits 0."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator

import grpc
import pytest

from rxstreamer.proto import mq_pb2, mq_pb2_grpc
from rxstreamer.tail import TailOptions, tail
from tests.processes import REPO_ROOT, Broker, broker_process, child_env, free_port, rxstreamer_command

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    with broker_process() as running:
        yield running


def publish(address: str, topic: str, count: int) -> None:
    """``count`` messages that are not telemetry (tail skips them): only the topic's offsets matter here."""
    with grpc.insecure_channel(address) as channel:
        stub = mq_pb2_grpc.MessageQueueStub(channel)
        for _ in range(count):
            request = mq_pb2.PublishRequest(topic=topic, payload=b"x", headers={"content-type": "text/plain"})
            stub.Publish(request, timeout=10)


def run_tail(broker: Broker, topic: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = rxstreamer_command(
        "tail", "--mq-address", broker.address, "--topic", topic, "--idle-timeout", "300ms", *args
    )
    return subprocess.run(
        command, check=False, capture_output=True, text=True, env=child_env(), cwd=REPO_ROOT, timeout=60
    )


@pytest.mark.parametrize("start", [[], ["--from-beginning"], ["--from-offset", "0"]])
def test_a_topic_without_messages_is_announced(broker: Broker, start: list[str]) -> None:
    """A topic nobody published to (the broker cannot tell it from a new one) says so once; exit 0."""
    topic = f"never-published-{len(start)}"
    finished = run_tail(broker, topic, *start)
    assert (finished.returncode, finished.stdout) == (0, "")
    assert finished.stderr == f"rxstreamer: topic '{topic}' holds no messages yet; waiting\n"


def test_an_offset_past_the_end_is_announced(broker: Broker) -> None:
    """--from-offset beyond the log names the next offset the topic will use; exit 0."""
    publish(broker.address, "three-messages", 3)
    finished = run_tail(broker, "three-messages", "--from-offset", "500")
    assert (finished.returncode, finished.stdout) == (0, "")
    expected = (
        "rxstreamer: offset 500 is past the end of topic 'three-messages' (next offset 3); waiting for new messages\n"
    )
    assert finished.stderr == expected


@pytest.mark.parametrize("start", [[], ["--from-beginning"], ["--from-offset", "3"], ["--from-offset", "1"]])
def test_nothing_is_said_when_nothing_is_odd(broker: Broker, start: list[str]) -> None:
    """A topic with messages, read from its start, its end or the next offset: no notice."""
    topic = "quiet-" + "-".join(arg.strip("-") for arg in start)
    publish(broker.address, topic, 3)
    finished = run_tail(broker, topic, *start)
    assert (finished.returncode, finished.stdout, finished.stderr) == (0, "", "")


def test_the_library_call_hands_the_notice_to_notify(broker: Broker) -> None:
    """tail() reports through ``notify`` (the CLI prints it); without ``notify`` it probes nothing."""
    heard: list[str] = []
    out = io.StringIO()
    options = TailOptions(address=broker.address, topic="library-empty", from_beginning=True, idle_timeout=0.3)
    assert tail(options, out, notify=heard.append) == 0
    assert (heard, out.getvalue()) == (["topic 'library-empty' holds no messages yet; waiting"], "")


def test_an_unreachable_queue_is_an_error_not_a_notice() -> None:
    """No broker: the failure is the one line, exit 1, and no waiting notice before it."""
    command = rxstreamer_command("tail", "--mq-address", f"127.0.0.1:{free_port()}", "--idle-timeout", "5s")
    finished = subprocess.run(
        command, check=False, capture_output=True, text=True, env=child_env(), cwd=REPO_ROOT, timeout=60
    )
    assert finished.returncode == 1
    assert finished.stderr.startswith("rxstreamer: cannot reach the message queue at 127.0.0.1:")
    assert finished.stderr.count("\n") == 1
