"""Real processes for integration tests: the broker, the streamer, and reading back what the queue holds.

Everything binds to 127.0.0.1. Waits are bounded by deadlines, never open-ended.
"""

from __future__ import annotations

import io
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc

from rxstreamer.encoding import decode_batch, metric_to_dict
from rxstreamer.proto import mq_pb2, mq_pb2_grpc
from rxstreamer.tail import TailOptions, tail

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 20.0


def rxstreamer_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rxstreamer", *args]


def child_env() -> dict[str, str]:
    """The environment for child processes: no RXSTREAMER_ settings leaking in from the developer's shell."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RXSTREAMER_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_command(
    *args: str, env: dict[str, str] | None = None, cwd: Path = REPO_ROOT
) -> subprocess.CompletedProcess[str]:
    """``python -m rxstreamer ARGS`` to its end (at most a minute), without the developer's RXSTREAMER_ variables."""
    return subprocess.run(
        rxstreamer_command(*args),
        check=False,
        capture_output=True,
        text=True,
        env={**child_env(), **(env or {})},
        cwd=cwd,
        timeout=60,
    )


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (for a broker that must start later, on purpose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON log lines of a process's output (other lines are ignored)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def event(lines: Sequence[dict[str, Any]], name: str) -> dict[str, Any]:
    """The last log line with this event name."""
    matches = [line for line in lines if line.get("event") == name]
    assert matches, f"no {name} event in {[line.get('event') for line in lines]}"
    return matches[-1]


@dataclass
class Broker:
    """A broker process and the lines it has logged so far."""

    process: subprocess.Popen[str]
    address: str
    lines: list[str] = field(default_factory=list)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=5)


@contextmanager
def broker_process(*args: str, port: int = 0) -> Iterator[Broker]:
    """`rxstreamer mq` on 127.0.0.1, yielded once it has logged the port it listens on."""
    process = subprocess.Popen(
        rxstreamer_command("mq", "--listen", f"127.0.0.1:{port}", "--log-format", "json", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_env(),
        cwd=REPO_ROOT,
    )
    broker = Broker(process, address="")
    started = threading.Event()

    def read_output() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            broker.lines.append(line)
            if not started.is_set() and '"broker.started"' in line:
                broker.address = f"127.0.0.1:{json.loads(line)['port']}"
                started.set()

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    try:
        if not started.wait(START_TIMEOUT):
            raise AssertionError(f"broker did not start: {''.join(broker.lines)}")
        yield broker
    finally:
        broker.stop()
        reader.join(timeout=5)
        if process.stdout is not None:
            process.stdout.close()


def start_streamer(*args: str, settings: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`rxstreamer run` with JSON logs, its output captured; ``settings`` are RXSTREAMER_ variables."""
    return subprocess.Popen(
        rxstreamer_command("run", "--log-format", "json", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**child_env(), **(settings or {})},
        cwd=REPO_ROOT,
    )


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[dict[str, Any]]:
        return json_lines(self.stdout)

    @property
    def summary(self) -> dict[str, Any]:
        return event(self.lines, "streamer.stopped")


def finish(process: subprocess.Popen[str], timeout: float = 60.0) -> Finished:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise AssertionError(f"process did not finish in {timeout}s:\n{stdout}\n{stderr}") from None
    return Finished(process.returncode, stdout, stderr)


def run_streamer(*args: str, timeout: float = 60.0, settings: dict[str, str] | None = None) -> Finished:
    return finish(start_streamer(*args, settings=settings), timeout)


def rss_mb(pid: int) -> float:
    """A process's resident memory now, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def read_topic(
    address: str, topic: str = "gpu-telemetry", idle_timeout: float = 1.0, **options: Any
) -> list[dict[str, Any]]:
    """Every metric the topic holds, in order, read with the real `tail` over gRPC."""
    out = io.StringIO()
    tail(
        TailOptions(address=address, topic=topic, from_beginning=True, idle_timeout=idle_timeout, **options),
        out,
    )
    return [json.loads(line) for line in out.getvalue().splitlines()]


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def end_process(process: subprocess.Popen[str], timeout: float = 10.0) -> str:
    """Make sure the process is gone (killed if it still runs), close its pipes; what it wrote to stderr."""
    if process.poll() is None:
        process.kill()
    process.wait(timeout)
    stderr = process.stderr.read() if process.stderr else ""
    for pipe in (process.stdout, process.stderr):
        if pipe:
            pipe.close()
    return stderr


def catches(pid: int, signum: int) -> bool:
    """Whether the process has installed a handler for ``signum`` (the SigCgt mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def signal_once_caught(process: subprocess.Popen[str], signum: int, timeout: float = START_TIMEOUT) -> None:
    """Send ``signum`` the moment the process has a handler for it (polled from /proc every millisecond).

    That is the earliest a signal can be a request rather than the default action: what start-up tests aim at.
    """
    deadline = time.monotonic() + timeout
    while not catches(process.pid, signum):
        assert process.poll() is None, f"process {process.pid} exited before it caught signal {signum}"
        assert time.monotonic() < deadline, f"process {process.pid} caught no signal {signum} in {timeout}s"
        time.sleep(0.001)
    process.send_signal(signum)


def process_state(pid: int) -> str:
    """The one-letter state of a process from /proc (R running, S sleeping, T stopped, Z zombie...)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]  # the name in parentheses may itself hold spaces or parentheses


def freeze(process: subprocess.Popen[str]) -> None:
    """SIGSTOP a process and return once /proc says it is stopped: it answers nothing until SIGCONT."""
    process.send_signal(signal.SIGSTOP)
    wait_until(lambda: process_state(process.pid) == "T", START_TIMEOUT, f"process {process.pid} to stop")


def thaw(process: subprocess.Popen[str]) -> None:
    """SIGCONT a process stopped by ``freeze``."""
    process.send_signal(signal.SIGCONT)


@dataclass
class Watched:
    """A process whose output is read line by line as it comes, so a test can wait for a log event."""

    process: subprocess.Popen[str]
    stdout_lines: list[str] = field(default_factory=list)
    stderr_lines: list[str] = field(default_factory=list)
    readers: list[threading.Thread] = field(default_factory=list)

    @property
    def lines(self) -> list[dict[str, Any]]:
        return json_lines("".join(list(self.stdout_lines)))

    def wait_for_event(self, name: str, timeout: float = START_TIMEOUT, count: int = 1) -> dict[str, Any]:
        """Wait until the process has logged ``count`` lines with this event name; the last one is returned."""

        def logged() -> bool:
            return len([line for line in self.lines if line.get("event") == name]) >= count

        deadline = time.monotonic() + timeout
        while not logged():
            if self.process.poll() is not None:
                for reader in self.readers:
                    reader.join(timeout=5)  # the last lines may still be on their way
                if logged():
                    break
                events = [line.get("event") for line in self.lines]
                raise AssertionError(f"exited ({self.process.returncode}) without {count} x {name}: {events}")
            if time.monotonic() > deadline:
                events = [line.get("event") for line in self.lines]
                raise AssertionError(f"timed out after {timeout}s waiting for {count} x {name}: {events}")
            time.sleep(0.02)
        return event(self.lines, name)

    def finish(self, timeout: float = 60.0) -> Finished:
        """Wait for the exit (killing it after ``timeout``) and return its whole output."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"process did not finish in {timeout}s:\n{''.join(self.stdout_lines)}") from None
        finally:
            for reader in self.readers:
                reader.join(timeout=10)
        return Finished(self.process.returncode, "".join(self.stdout_lines), "".join(self.stderr_lines))


def watch(process: subprocess.Popen[str]) -> Watched:
    """Start reading a process's stdout and stderr on threads of their own (use its ``finish``, not ``finish()``)."""
    watched = Watched(process)

    def pump(stream: IO[str] | None, into: list[str]) -> None:
        assert stream is not None
        with stream:
            for line in stream:
                into.append(line)

    for stream, into in ((process.stdout, watched.stdout_lines), (process.stderr, watched.stderr_lines)):
        reader = threading.Thread(target=pump, args=(stream, into), daemon=True)
        reader.start()
        watched.readers.append(reader)
    return watched


def start_watched_streamer(*args: str, settings: dict[str, str] | None = None) -> Watched:
    """`start_streamer` with its output read as it comes, for tests that wait on the streamer's log events."""
    return watch(start_streamer(*args, settings=settings))


class LiveConsumer:
    """A consumer of a topic from its beginning, reading on threads of its own, like `tail` does.

    ``start`` returns only once the broker has confirmed the subscription (its ``start-offset`` metadata),
    so a test knows that nothing published after that can be released before this consumer has seen it.
    It stops when nothing arrived for ``idle_timeout`` seconds.
    """

    def __init__(self, address: str, topic: str = "gpu-telemetry", idle_timeout: float = 5.0) -> None:
        self.metrics: list[dict[str, Any]] = []
        self._channel = grpc.insecure_channel(address)
        request = mq_pb2.SubscribeRequest(topic=topic, start=mq_pb2.START_POSITION_EARLIEST)
        self._call = mq_pb2_grpc.MessageQueueStub(self._channel).Subscribe(request)
        self._idle_timeout = idle_timeout
        self._received: queue.Queue[mq_pb2.Message | None] = queue.Queue()
        self._subscribed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True, name="live-consumer-reader")
        self._consumer = threading.Thread(target=self._consume, daemon=True, name="live-consumer")

    def start(self) -> LiveConsumer:
        self._reader.start()
        if not self._subscribed.wait(START_TIMEOUT):
            self._call.cancel()
            raise AssertionError(f"the broker did not confirm the subscription within {START_TIMEOUT}s")
        self._consumer.start()
        return self

    def join(self, timeout: float) -> list[dict[str, Any]]:
        """Wait until the consumer stopped (idle); every metric it received, in order."""
        self._consumer.join(timeout)
        assert not self._consumer.is_alive(), f"the consumer was still receiving after {timeout}s"
        return self.metrics

    def _read(self) -> None:
        try:
            self._call.initial_metadata()  # the broker sends it as soon as the subscription is in place
            self._subscribed.set()
            for message in self._call:
                self._received.put(message)
        except grpc.RpcError:
            pass  # cancelled once idle, or the broker went away: either way, the end
        finally:
            self._received.put(None)

    def _consume(self) -> None:
        try:
            while (message := self._next()) is not None:
                batch = decode_batch(message.payload)
                self.metrics.extend(metric_to_dict(metric) for metric in batch.metrics)
        finally:
            self._call.cancel()
            self._channel.close()

    def _next(self) -> mq_pb2.Message | None:
        try:
            return self._received.get(timeout=self._idle_timeout)
        except queue.Empty:
            return None


def http_get(url: str) -> tuple[int, str]:
    """The status and body of a GET on 127.0.0.1, an error status included (a 503 from /readyz, say)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
