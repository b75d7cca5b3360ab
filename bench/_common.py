"""What the benchmarks share: generated data files, the broker process, streamer runs, medians and tables.

Not a benchmark itself. Every benchmark runs the broker in its own process on 127.0.0.1 (as in production),
starts the streamer as a subprocess with JSON logs, and reads what it needs from the log lines. Benchmarks
print figures; they never assert timings.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT = REPO_ROOT / "bench" / "out"
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

BROKER_START_TIMEOUT = 30.0
# Large enough that no benchmark ever fills a topic: a full topic would turn into retries and skew timings.
BROKER_LIMITS = ("--max-messages", "10000000", "--max-bytes", "8GiB", "--max-total-bytes", "16GiB")


# --- data ---------------------------------------------------------------------------------------------


def data_file(rows: int) -> Path:
    """A generated DCGM file of exactly ``rows`` rows (32 hosts x 8 GPUs, seed 1), made once and reused."""
    from rxstreamer.generate import generate_file

    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"metrics_{rows}.csv"
    if not path.exists():
        print(f"generating {path.relative_to(REPO_ROOT)} ...", file=sys.stderr, flush=True)
        partial = path.with_suffix(".partial")
        generate_file(partial, hosts=32, gpus=8, rows=rows, seed=1)
        partial.rename(path)
    return path


def unique_topic(prefix: str) -> str:
    """A topic no earlier run used, so the broker's deduplication never sees two runs as one."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# --- processes ----------------------------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: no RXSTREAMER_ settings leaking in from the user's shell."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RXSTREAMER_")}
    env["PYTHONUNBUFFERED"] = "1"
    # The rxstreamer of this tree, whatever the virtual environment has installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def rxstreamer_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rxstreamer", *args]


def drain(stream: IO[str] | None, keep: list[str] | None = None) -> threading.Thread:
    """Read the rest of a child's output in the background, so its pipe never fills; ``keep`` collects it."""

    def read_all() -> None:
        for line in stream or ():
            if keep is not None:
                keep.append(line)

    thread = threading.Thread(target=read_all, daemon=True)
    thread.start()
    return thread


class ServerProcess:
    """A server command in its own process on 127.0.0.1, entered once it logged ``started`` (its port in it);
    a context manager that stops it (SIGTERM, then SIGKILL after 30 s) on the way out."""

    started = ""  # the log event that says it listens

    def __init__(self) -> None:
        self.process: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def command(self) -> list[str]:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=child_env()
        )
        timer = threading.Timer(BROKER_START_TIMEOUT, self.process.kill)
        timer.start()
        try:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                entry = parse_log_line(line)
                if entry is not None and entry.get("event") == self.started:
                    self.port = int(entry["port"])
                    drain(self.process.stdout)
                    return self
        finally:
            timer.cancel()
        self.__exit__(None, None, None)
        raise RuntimeError(f"{' '.join(self.command()[3:5])} did not start (no {self.started} line)")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Broker(ServerProcess):
    """The reference broker with large limits."""

    started = "broker.started"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return rxstreamer_command("mq", "--listen", "127.0.0.1:0", "--log-format", "json", *BROKER_LIMITS)


def published_times_ns(address: str, topic: str, expected: int, timeout: float = 30.0) -> list[int]:
    """Every message's published_at (ns) on the topic, read back with Subscribe, ordered by the producer's sequence."""
    import grpc

    from rxstreamer.proto import mq_pb2, mq_pb2_grpc

    stamps: dict[int, int] = {}
    with grpc.insecure_channel(address) as channel:
        stub = mq_pb2_grpc.MessageQueueStub(channel)
        request = mq_pb2.SubscribeRequest(topic=topic, start=mq_pb2.START_POSITION_EARLIEST)
        stream = stub.Subscribe(request, timeout=timeout)
        for message in stream:
            stamps[message.sequence] = message.published_at.ToNanoseconds()
            if len(stamps) == expected:
                stream.cancel()
                break
    if len(stamps) != expected:
        raise RuntimeError(f"read {len(stamps)} messages from {topic}, expected {expected}")
    return [stamps[sequence] for sequence in sorted(stamps)]


def parse_log_line(line: str) -> dict[str, Any] | None:
    """One JSON log line as a dict, or None for anything else on stdout."""
    if not line.startswith("{"):
        return None
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        return None
    return entry if isinstance(entry, dict) else None


def log_time(entry: dict[str, Any]) -> datetime:
    """The ``timestamp`` of a log line (ISO 8601, UTC) as an aware datetime."""
    return datetime.fromisoformat(str(entry["timestamp"]))


def read_events(stream: IO[str]) -> Iterator[dict[str, Any]]:
    for line in stream:
        entry = parse_log_line(line)
        if entry is not None:
            yield entry


def wait_for_started(process: subprocess.Popen[str], timeout: float) -> None:
    """Read the streamer's output up to its ``streamer.started`` line; the rest is the caller's to read."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        entry = parse_log_line(line)
        if entry is not None and entry.get("event") == "streamer.started":
            return
        if time.monotonic() > deadline:
            raise RuntimeError("no streamer.started line in time")
    raise RuntimeError(f"the streamer exited before starting (exit {process.wait()})")


def started_and_stopped(stream: IO[str]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """A run's ``streamer.started`` and ``streamer.stopped`` lines, reading its output to the end."""
    started = stopped = None
    for entry in read_events(stream):
        if entry["event"] == "streamer.started":
            started = entry
        elif entry["event"] == "streamer.stopped":
            stopped = entry
    return started, stopped


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, all its threads, from /proc (resolution: one clock tick, 10 ms)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces and parentheses
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5), counted from 1
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    """The current resident set size of a live process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


# --- figures ------------------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


@dataclass(frozen=True)
class Figure:
    """One line of the combined table."""

    benchmark: str
    figure: str
    value: str
    reference: str = ""
    ratio: str = ""
    note: str = ""


@dataclass
class Report:
    """What one benchmark found: its lines for the combined table, and its own detailed tables."""

    title: str
    figures: list[Figure] = field(default_factory=list)
    details: str = ""


FIGURE_HEADERS = ("benchmark", "figure", "rxstreamer", "reference", "ratio", "note")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def figures_table(figures: Iterable[Figure]) -> str:
    rows = [
        (f.benchmark, f.figure, f.value, f.reference or "—", f.ratio or "—", f.note)
        for f in figures
    ]  # fmt: skip
    return markdown_table(FIGURE_HEADERS, rows)


def machine_description() -> str:
    return (
        f"{os.cpu_count()} cores, Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.platform()}"
    )


def source_revision() -> str:
    """The commit the measured code comes from, and whether rxstreamer/ had uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO_ROOT, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--", "rxstreamer")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"commit {commit}" + (" with uncommitted changes in rxstreamer/" if changed else "")
