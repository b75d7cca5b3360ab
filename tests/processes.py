"""Real processes for integration tests: the broker, the streamer, and reading back what the queue holds.

Everything binds to 127.0.0.1. Waits are bounded by deadlines, never open-ended.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
