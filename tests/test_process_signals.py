"""The streamer process under signals and internal failures: what a supervisor sees (exit status and log lines)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from rxstreamer.signals import REPEAT_WINDOW_S
from tests.processes import (
    Watched,
    broker_process,
    catches,
    child_env,
    event,
    free_port,
    freeze,
    rxstreamer_command,
    signal_once_caught,
    thaw,
    watch,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

REPO_ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30.0


def spawn(*args: str, env: dict[str, str] | None = None) -> Watched:
    """A command of ours as a process, its output read as it comes."""
    process = subprocess.Popen(
        rxstreamer_command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**child_env(), **(env or {})},
        cwd=REPO_ROOT,
    )
    return watch(process)


def ended(watched: Watched) -> None:
    """Kill the process if a failed test left it running, and let its readers finish."""
    if watched.process.poll() is None:
        watched.process.kill()
    watched.finish(timeout=10)


def test_sighup_is_logged_and_ignored_and_the_stream_goes_on() -> None:
    """SIGHUP (a closed terminal) does not kill the streamer: one sighup_ignored line, then all 960 rows."""
    with broker_process() as broker:
        streamer = spawn("run", "--log-format", "json", "--mq-address", broker.address, "--interval", "20ms")
        try:
            streamer.wait_for_event("mq.connected")
            streamer.process.send_signal(signal.SIGHUP)
            streamer.wait_for_event("streamer.sighup_ignored")
            finished = streamer.finish(timeout=TIMEOUT)
            assert finished.returncode == 0, finished.stderr
            assert (finished.summary["reason"], finished.summary["rows_published"]) == ("completed", 960)
        finally:
            ended(streamer)


def test_sigterm_as_soon_as_the_handler_exists_is_a_clean_stop() -> None:
    """SIGTERM sent the moment the process can catch it (before grpc is even imported): exit 0, reason signal."""
    streamer = spawn("run", "--log-format", "json", "--mq-address", "127.0.0.1:1")
    try:
        signal_once_caught(streamer.process, signal.SIGTERM)
        finished = streamer.finish(timeout=TIMEOUT)
        assert finished.returncode == 0, finished.stderr
        assert event(finished.lines, "streamer.stopping")["signal"] == "SIGTERM"
        assert finished.summary["reason"] == "signal"
    finally:
        ended(streamer)


def test_a_second_sigterm_during_a_stuck_shutdown_exits_at_once_with_143() -> None:
    """A publish stuck on a frozen broker holds the graceful stop; a second SIGTERM ends it: 143 and a line."""
    settings = {
        "RXSTREAMER_SHUTDOWN__TIMEOUT": "60s",
        "RXSTREAMER_MESSAGE_QUEUE__PUBLISH_TIMEOUT": "60s",
        "RXSTREAMER_LOGGING__LEVEL": "debug",  # for publisher.acked: publishing has begun
    }
    with broker_process() as broker:
        streamer = spawn(
            "run", "--log-format", "json", "--mq-address", broker.address, "--interval", "0", "--batch-size", "1",
            env=settings,
        )  # fmt: skip
        try:
            streamer.wait_for_event("publisher.acked")
            freeze(broker.process)  # publishing back to back: the call on the wire now hangs
            try:
                streamer.process.send_signal(signal.SIGTERM)
                first = time.monotonic()
                assert streamer.wait_for_event("streamer.stopping")["in_flight"] == 1
                # Asked again, not the same request delivered twice (rxstreamer.signals.REPEAT_WINDOW_S).
                time.sleep(max(0.0, REPEAT_WINDOW_S - (time.monotonic() - first)) + 0.1)
                streamer.process.send_signal(signal.SIGTERM)
                finished = streamer.finish(timeout=10)
                assert finished.returncode == 143
                forced = event(finished.lines, "streamer.forced_exit")
                assert (forced["signal"], forced["exit_code"]) == ("SIGTERM", 143)
                assert "streamer.stopped" not in [line["event"] for line in finished.lines]
            finally:
                thaw(broker.process)
        finally:
            ended(streamer)


def test_a_failure_inside_the_pipeline_ends_the_process_with_status_1_not_a_hang(tmp_path: Path) -> None:
    """A transform emitting strings used to kill the pipeline thread and hang: now exit 1 with one error line."""
    (tmp_path / "stringify.py").write_text(
        "from reactivex import operators as ops\n\ndef to_text():\n    return ops.map(str)\n"
    )
    env = {"RXSTREAMER_TELEMETRY__TRANSFORMS": "stringify:to_text", "PYTHONPATH": str(tmp_path)}
    with broker_process() as broker:
        metrics = str(REPO_ROOT / "test-data" / "metrics.csv")
        streamer = spawn(
            "run", "--log-format", "json", "--mq-address", broker.address, "--metrics-path", metrics, env=env
        )
        try:
            finished = streamer.finish(timeout=TIMEOUT)
            assert finished.returncode == 1
            summary = finished.summary
            assert summary["reason"] == "error"
            assert summary["error"].startswith("cannot encode a batch of 10 rows: AttributeError")
            assert summary["error"].endswith("(a transform emitted str, not MetricRow)")
            assert summary["level"] == "error"
            assert "Traceback" not in finished.stdout + finished.stderr
        finally:
            ended(streamer)


def test_tail_keeps_the_default_signal_handling() -> None:
    """`tail` has nothing to stop gracefully: SIGTERM ends it at once by the default action, as for any reader."""
    with broker_process() as broker:
        follower = spawn("tail", "--log-format", "json", "--mq-address", broker.address)
        try:
            deadline = time.monotonic() + TIMEOUT
            # past start-up (grpc loaded) with the early handler given back: the default disposition is in force
            while catches(follower.process.pid, signal.SIGTERM) or not _imported_grpc(follower.process.pid):
                assert follower.process.poll() is None, "".join(follower.stderr_lines)
                assert time.monotonic() < deadline, "tail never reached its command"
                time.sleep(0.01)
            follower.process.send_signal(signal.SIGTERM)
            assert follower.finish(timeout=TIMEOUT).returncode == -signal.SIGTERM
        finally:
            ended(follower)


def _imported_grpc(pid: int) -> bool:
    """Whether the process has loaded grpc's core library: it is past start-up, into its command."""
    return "cygrpc" in Path(f"/proc/{pid}/maps").read_text()


def test_a_streamer_says_once_that_an_in_memory_broker_restarted_empty() -> None:
    """The queue's offsets go back after a restart without data: one mq.offsets_went_back, then the run ends."""
    port = free_port()
    settings = {"RXSTREAMER_LOGGING__LEVEL": "debug"}  # publisher.acked tells how far it got
    with broker_process(port=port) as first:
        streamer = spawn(
            "run", "--log-format", "json", "--mq-address", first.address, "--interval", "20ms", env=settings
        )
        try:
            streamer.wait_for_event("publisher.acked", count=10)
            first.stop()
            with broker_process(port=port):
                finished = streamer.finish(timeout=TIMEOUT)
        finally:
            ended(streamer)
    assert finished.returncode == 0, finished.stderr
    went_back = [line for line in finished.lines if line["event"] == "mq.offsets_went_back"]
    assert len(went_back) == 1
    assert went_back[0]["offset"] == 0
    assert went_back[0]["previous_offset"] >= 9
    assert (finished.summary["reason"], finished.summary["rows_published"]) == ("completed", 960)
