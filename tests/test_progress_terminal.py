"""The progress line in a real terminal: the streamer runs in a tmux pane, and the pane is read as a person sees it.

Each test has a tmux server of its own (a private socket, ``tmux -L``, no user configuration) that is killed at
the end, and a broker of its own on 127.0.0.1. The paced run, 960 rows in batches of 10 every 50 ms, takes
about five seconds: long enough for the line to be redrawn a few times.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import REPO_ROOT, Broker, broker_process, child_env, event, finish, json_lines

pytestmark = pytest.mark.integration

PACED = ("--metrics-path", "test-data/metrics.csv", "--interval", "50ms", "--batch-size", "10")
FINITE_LINE = re.compile(
    r"^metrics\.csv: (?P<rows>\d[\d,]*) rows, (?P<rate>[\d.,]+) rows/s, (?P<percent>\d+\.\d)%, ETA (?P<eta>\d+:\d\d)$"
)
LOOP_LINE = re.compile(r"^metrics\.csv \(pass (?P<pass>\d+)\): (?P<rows>\d[\d,]*) rows, (?P<rate>[\d.,]+) rows/s$")
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z \[")  # a console log line, from its first column
PANE_TIMEOUT = 60.0


class Tmux:
    """One tmux server on a private socket, with one detached session whose pane stays after its command ends."""

    def __init__(self, directory: Path) -> None:
        if shutil.which("tmux") is None:
            pytest.skip("tmux is not installed (make tools installs it)")
        self.socket = f"rxstreamer-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.config = directory / "tmux.conf"
        self.config.write_text("set -g remain-on-exit on\nset -g status off\n")
        self.status_file = directory / "exit-status"
        self.env = {key: value for key, value in child_env().items() if key not in ("TMUX", "TMUX_PANE")}

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", "-L", self.socket, "-f", str(self.config), *args],
            capture_output=True, text=True, env=self.env, timeout=10, check=False,
        )  # fmt: skip

    def start(self, command: list[str], env: dict[str, str] | None = None) -> None:
        """Run ``command`` in a 200x50 pane, from the repository root.

        A shell around it writes its exit status to a file (tmux's own ``pane_dead_status`` is sometimes left
        empty when a command ends quickly after its terminal closed); ``trap : INT`` keeps that shell alive
        through a Ctrl-C meant for the command.
        """
        self.status_file.unlink(missing_ok=True)
        variables = [part for name, value in (env or {}).items() for part in ("-e", f"{name}={value}")]
        wrapped = f"trap : INT; {shlex.join(command)}; echo $? > {shlex.quote(str(self.status_file))}"
        started = self(
            "new-session", "-d", "-s", "test", "-x", "200", "-y", "50", "-c", str(REPO_ROOT), *variables, wrapped
        )  # fmt: skip
        assert started.returncode == 0, started.stderr

    def screen(self) -> list[str]:
        """The pane's lines from the top of its history, wrapped lines joined, without blanks or tmux's notes."""
        captured = self("capture-pane", "-p", "-J", "-S", "-", "-t", "test")
        assert captured.returncode == 0, captured.stderr
        lines = [line.rstrip() for line in captured.stdout.splitlines()]
        return [line for line in lines if line and not line.startswith("Pane is dead")]

    def exit_status(self) -> int | None:
        """The command's exit status once it has ended; None while it runs."""
        try:
            written = self.status_file.read_text()
        except FileNotFoundError:
            return None
        return int(written) if written.endswith("\n") else None

    def watch(self, until_end: bool = True, timeout: float = PANE_TIMEOUT) -> tuple[list[list[str]], int | None]:
        """Every screen seen, ten times a second, until the command ends (or ``timeout``); its exit status."""
        screens: list[list[str]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.exit_status()
            screens.append(self.screen())
            if status is not None or not until_end:
                return screens, status
            time.sleep(0.1)
        raise AssertionError(f"the pane's command did not end in {timeout}s: {screens[-1] if screens else []}")

    def kill(self) -> None:
        """Kill the server and remove its socket file (tmux leaves it behind)."""
        socket_path = self("display-message", "-p", "#{socket_path}").stdout.strip()
        self("kill-server")
        if socket_path:
            Path(socket_path).unlink(missing_ok=True)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    server = Tmux(tmp_path)
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def broker() -> Iterator[Broker]:
    with broker_process() as running:
        yield running


def streamer(broker: Broker, *args: str) -> list[str]:
    return [sys.executable, "-m", "rxstreamer", "run", "--mq-address", broker.address, *args]


def test_a_paced_replay_in_a_terminal_shows_rows_rate_percent_and_time_left(tmux: Tmux, broker: Broker) -> None:
    """The line is the pane's last line while streaming; log lines (every second here) scroll by above it
    from their first column; at the end the line is gone and the summary is the last thing on the screen."""
    tmux.start(streamer(broker, *PACED), env={"RXSTREAMER_LOGGING__PROGRESS_INTERVAL": "1s"})
    screens, status = tmux.watch()
    assert status == 0, screens[-1]

    drawn = [match for screen in screens if screen and (match := FINITE_LINE.match(screen[-1]))]
    assert drawn, f"no progress line on any screen; the last one: {screens[-1]}"
    moving = [match for match in drawn if int(match["rows"].replace(",", "")) > 0 and match["eta"] != "--:--"]
    assert moving, f"the line never showed rows and a time left: {[match.group(0) for match in drawn]}"
    assert float(moving[-1]["rate"].replace(",", "")) > 0
    assert len({match.group(0) for match in moving}) >= 2, "the line was not redrawn"
    percents = [float(match["percent"]) for match in moving]
    assert percents == sorted(percents)
    assert 0 < percents[-1] <= 100

    for screen in screens:  # never garbled: each line is a log line from its first column, or the line itself
        for line in screen[:-1]:
            assert LOG_LINE.match(line), f"not a log line: {line!r} in {screen}"
    final = screens[-1]
    assert all("rows/s" not in line for line in final), final
    assert "streamer.stopped" in final[-1]
    assert "rows_published=960" in final[-1]
    assert sum("streamer.progress" in line for line in final) >= 2  # log lines did arrive while the line was up


def test_the_same_run_to_pipes_has_no_line(broker: Broker) -> None:
    """stdout and stderr to pipes (a supervisor, `| tee`): JSON logs and not a byte of the line."""
    process = subprocess.Popen(
        streamer(broker, *PACED), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
        cwd=REPO_ROOT,
    )  # fmt: skip
    finished = finish(process)
    assert finished.returncode == 0, finished.stderr
    assert event(finished.lines, "streamer.stopped")["rows_published"] == 960
    assert finished.stderr == ""
    assert "\r" not in finished.stdout
    assert "rows/s" not in finished.stdout


def test_json_logs_in_a_terminal_have_no_line(tmux: Tmux, broker: Broker) -> None:
    tmux.start(streamer(broker, *PACED[:2], "--interval", "20ms", "--log-format", "json"))
    screens, status = tmux.watch()
    assert status == 0, screens[-1]
    for screen in screens:
        assert all("rows/s" not in line for line in screen), screen
    lines = json_lines("\n".join(screens[-1]))
    assert len(lines) == len(screens[-1]), screens[-1]  # every line on the screen is a JSON log line
    assert lines[-1]["event"] == "streamer.stopped"
    assert lines[-1]["rows_published"] == 960


def test_an_endless_replay_shows_its_pass_rows_and_rate_until_ctrl_c(tmux: Tmux, broker: Broker) -> None:
    """No end, so no percent and no time left; Ctrl-C stops the stream and the line goes with it."""
    tmux.start(streamer(broker, *PACED[:2], "--interval", "20ms", "--loop"))
    deadline = time.monotonic() + PANE_TIMEOUT
    while True:
        screens, status = tmux.watch(until_end=False)
        assert status is None, f"ended ({status}) before its second pass: {screens[-1]}"
        last = screens[-1][-1] if screens[-1] else ""
        if (match := LOOP_LINE.match(last)) and int(match["pass"]) >= 2:
            break
        assert time.monotonic() < deadline, f"no second pass on the line: {screens[-1]}"
        time.sleep(0.1)
    assert float(match["rate"].replace(",", "")) > 0

    tmux("send-keys", "-t", "test", "C-c")
    screens, status = tmux.watch()
    assert status == 0, screens[-1]
    final = screens[-1]
    assert all("rows/s" not in line for line in final), final
    stopping = next(line for line in final if "streamer.stopping" in line)
    assert LOG_LINE.match(stopping), stopping  # from its first column: the line was erased before it
    assert "streamer.stopped" in final[-1]
    assert "reason=signal" in final[-1]
