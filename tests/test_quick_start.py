"""The README's quick start as a new user runs it: `make run`, its variables, and the broker readiness helper.

Every process is real and listens on 127.0.0.1 only. `make` runs from the repository root with this test's
own Python (``PY=``) and never rebuilds the virtual environment (``-o .venv/.installed``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from rxstreamer.broker import BrokerOptions, start_broker
from tests.processes import REPO_ROOT, child_env, event, free_port, json_lines

pytestmark = pytest.mark.integration

MAKE_TIMEOUT = 120.0
# A readiness check of a broker that is up answers within this, process start-up included.
PROMPT = 5.0


def make(*args: str) -> subprocess.CompletedProcess[str]:
    """`make ARGS` from the repository root, with this Python and without touching .venv."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    return subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.installed", *args, f"PY={sys.executable}"],
        capture_output=True, text=True, cwd=REPO_ROOT, env=child_env(), timeout=MAKE_TIMEOUT, check=False,
    )  # fmt: skip


def ready(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`python -m rxstreamer.broker.ready ARGS`."""
    return subprocess.run(
        [sys.executable, "-m", "rxstreamer.broker.ready", *args],
        capture_output=True, text=True, cwd=REPO_ROOT, env=child_env(), timeout=timeout, check=False,
    )  # fmt: skip


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port a plain socket listens on (and never answers) for the test's duration."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


# --- make run -----------------------------------------------------------------------------------------


def test_make_run_on_a_taken_port_stops_before_streaming(held_port: int) -> None:
    """The bundled broker cannot bind: make fails naming the port, and no streamer ever starts."""
    address = f"127.0.0.1:{held_port}"
    finished = make("run", f"MQ_ADDRESS={address}")
    output = finished.stdout + finished.stderr
    assert finished.returncode != 0, output
    assert f"rxstreamer mq: cannot listen on {address}: port {address} is in use (address in use)" in output
    assert "streamer.started" not in output
    assert "streamer.stopped" not in output


def test_make_run_never_streams_into_another_broker_on_its_port() -> None:
    """Another broker answering on the port is not taken for make's own: make fails before streaming."""
    with start_broker(BrokerOptions(listen="127.0.0.1:0")) as other:
        address = f"127.0.0.1:{other.port}"
        finished = make("run", f"MQ_ADDRESS={address}")
        assert other.topics.names() == []
    output = finished.stdout + finished.stderr
    assert finished.returncode != 0, output
    assert f"port {address} is in use" in output
    assert "streamer.started" not in output


def test_make_run_streams_the_whole_file_once_its_broker_is_ready() -> None:
    """On a free port: exit 0, all 960 rows published, and no warning at all (no connection refused first)."""
    finished = make("run", f"MQ_ADDRESS=127.0.0.1:{free_port()}", "INTERVAL=0s")
    assert finished.returncode == 0, finished.stdout + finished.stderr
    lines = json_lines(finished.stdout)
    summary = event(lines, "streamer.stopped")
    assert (summary["reason"], summary["rows_published"]) == ("completed", 960)
    assert [line for line in lines if line.get("level") in ("warning", "error")] == []


def test_make_run_streamer_passes_the_variables_you_set_as_flags() -> None:
    """MQ_ADDRESS, METRICS, INTERVAL and CONFIG reach the streamer; unset ones leave the settings alone."""
    finished = make(
        "-n", "run-streamer", "MQ_ADDRESS=127.0.0.1:50052", "METRICS=my.csv", "INTERVAL=1s", "CONFIG=my.toml"
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.split() == [
        sys.executable, "-m", "rxstreamer", "run", "--config", "'my.toml'", "--mq-address", "'127.0.0.1:50052'",
        "--metrics-path", "'my.csv'", "--interval", "'1s'",
    ]  # fmt: skip
    assert make("-n", "run-streamer").stdout.split() == [sys.executable, "-m", "rxstreamer", "run"]


def test_make_mq_and_tail_take_mq_address_and_config() -> None:
    """The broker alone and the reader take the same variables as the streamer."""
    variables = ("MQ_ADDRESS=127.0.0.1:50052", "CONFIG=my.toml")
    assert make("-n", "mq", *variables).stdout.split() == [
        sys.executable, "-m", "rxstreamer", "mq", "--config", "'my.toml'", "--listen", "'127.0.0.1:50052'",
    ]  # fmt: skip
    assert make("-n", "tail", *variables).stdout.split() == [
        sys.executable, "-m", "rxstreamer", "tail", "--config", "'my.toml'", "--mq-address", "'127.0.0.1:50052'",
        "--from-beginning", "--idle-timeout", "2s",
    ]  # fmt: skip


def test_make_help_lists_the_variables() -> None:
    """`make help` names each variable with its default."""
    finished = make("help")
    assert finished.returncode == 0, finished.stderr
    rows = {line.split()[0]: line.split()[1] for line in finished.stdout.splitlines() if line.startswith("  ")}
    assert {name: rows[name] for name in ("MQ_ADDRESS", "METRICS", "INTERVAL", "CONFIG")} == {
        "MQ_ADDRESS": "127.0.0.1:50051",
        "METRICS": "test-data/metrics.csv",
        "INTERVAL": "100ms",
        "CONFIG": "(none)",
    }


# --- python -m rxstreamer.broker.ready ----------------------------------------------------------------


def test_ready_exits_0_at_once_for_a_serving_broker() -> None:
    with start_broker(BrokerOptions(listen="127.0.0.1:0")) as running:
        started = time.monotonic()
        finished = ready(running.address, "--timeout", "10s")
        took = time.monotonic() - started
    assert (finished.returncode, finished.stdout, finished.stderr) == (0, "", "")
    assert took < PROMPT


def test_ready_exits_1_after_the_deadline_when_nothing_listens() -> None:
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    finished = ready(address, "--timeout", "1s")
    took = time.monotonic() - started
    assert (finished.returncode, finished.stdout) == (1, "")
    assert finished.stderr == f"rxstreamer: no broker answered SERVING at {address} within 1s (last: no answer)\n"
    assert took >= 1.0


def test_ready_exits_1_at_once_when_the_broker_process_has_exited(held_port: int) -> None:
    """A broker that died (say, it could not bind) is reported as soon as it is gone, not after the timeout."""
    address = f"127.0.0.1:{held_port}"
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait(timeout=60)
    started = time.monotonic()
    finished = ready(address, "--timeout", "60s", "--pid", str(exited.pid))
    assert (finished.returncode, finished.stdout) == (1, "")
    assert finished.stderr == f"rxstreamer: the broker (pid {exited.pid}) exited before it was ready at {address}\n"
    assert time.monotonic() - started < PROMPT


def test_ready_counts_only_the_broker_it_was_given() -> None:
    """SERVING from a broker the --pid process does not own is not readiness: 1 at the deadline, saying why."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # alive, listens nowhere
    try:
        with start_broker(BrokerOptions(listen="127.0.0.1:0")) as other:
            finished = ready(other.address, "--timeout", "1s", "--pid", str(bystander.pid))
    finally:
        bystander.kill()
        bystander.wait(timeout=60)
    assert (finished.returncode, finished.stdout) == (1, "")
    assert finished.stderr == (
        f"rxstreamer: no broker answered SERVING at {other.address} within 1s (last: SERVING, but not from pid "
        f"{bystander.pid}, which does not listen there)\n"
    )
