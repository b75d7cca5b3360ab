"""The progress line's parts on their own: rates, percent, time left, the text, when it shows, and how it
draws and gives way to log lines (on fake terminals; tests/test_progress_terminal.py runs it in a real one)."""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog

from rxstreamer.config import load_settings
from rxstreamer.counts import Counts
from rxstreamer.logs import configure_logging
from rxstreamer.model import Position
from rxstreamer.progress_line import (
    ProgressLine,
    RateWindow,
    RunView,
    Sample,
    Shown,
    eta_seconds,
    format_eta,
    format_line,
    format_rate,
    percent_of,
    start_progress_line,
    wanted,
)
from rxstreamer.sources import open_source
from tests.conftest import TEST_DATA_CSV


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """Leave structlog as other test modules expect it."""
    yield
    structlog.reset_defaults()


class FakeTerminal(io.StringIO):
    """A text stream that claims to be a terminal and records each write, for the order of writes."""

    def __init__(self, name: str, writes: list[tuple[str, str]]) -> None:
        super().__init__()
        self.name = name
        self.writes = writes

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.writes.append((self.name, text))
        return super().write(text)


def counts(rows_published: int = 0, rows_rejected: int = 0) -> Counts:
    return Counts(
        rows_read=rows_published + rows_rejected,
        rows_rejected=rows_rejected,
        rows_filtered=0,
        rows_in_flight=0,
        batches_published=rows_published // 10,
        rows_published=rows_published,
        duplicates=0,
    )


# --- rates, percent, time left --------------------------------------------------------------------------


def test_rates_need_two_samples_apart_in_time() -> None:
    window = RateWindow()
    assert window.rows_per_s() is None
    window.add(Sample(at=5.0, rows=0, offset=0))
    assert (window.rows_per_s(), window.bytes_per_s()) == (None, None)
    window.add(Sample(at=5.0, rows=10, offset=100))
    assert window.rows_per_s() is None
    window.add(Sample(at=7.0, rows=40, offset=1000))
    assert (window.rows_per_s(), window.bytes_per_s()) == (20.0, 500.0)


def test_rates_are_measured_over_the_last_window_only() -> None:
    """A pace that changes shows within a window: 10 rows/s for 20 s, then 100 rows/s for 10 s."""
    window = RateWindow(window=10.0)
    rows = 0
    for second in range(31):
        window.add(Sample(at=float(second), rows=rows, offset=rows * 50))
        rows += 10 if second < 20 else 100
    assert window.rows_per_s() == 100.0
    assert window.bytes_per_s() == 5000.0


def test_a_window_younger_than_its_width_spans_the_whole_run() -> None:
    window = RateWindow(window=10.0)
    for second, rows in ((0, 0), (1, 10), (2, 30)):
        window.add(Sample(at=float(second), rows=rows))
    assert window.rows_per_s() == 15.0


@pytest.mark.parametrize(
    ("offset", "size", "percent"),
    [(0, 1000, 0.0), (250, 1000, 25.0), (1000, 1000, 100.0), (1200, 1000, 100.0), (0, 0, None)],
)
def test_percent_is_the_read_offset_over_the_file_size(offset: int, size: int, percent: float | None) -> None:
    assert percent_of(offset, size) == percent


def test_time_left_is_the_bytes_left_at_the_byte_rate() -> None:
    assert eta_seconds(250, 1000, 50.0) == 15.0
    assert eta_seconds(1000, 1000, None) == 0.0  # at the end there is nothing left, moving or not
    assert eta_seconds(250, 1000, None) is None
    assert eta_seconds(250, 1000, 0.0) is None  # not moving (a queue that is down): unknown, not infinite


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "--:--"), (0.0, "0:00"), (0.2, "0:01"), (59.5, "1:00"), (65.0, "1:05"), (3661.0, "1:01:01")],
)
def test_time_left_reads_as_minutes_and_seconds(seconds: float | None, text: str) -> None:
    assert format_eta(seconds) == text


@pytest.mark.parametrize(
    ("rate", "text"), [(None, "-- rows/s"), (0.0, "0.0 rows/s"), (95.94, "95.9 rows/s"), (12345.4, "12,345 rows/s")]
)
def test_rates_read_with_one_decimal_below_100(rate: float | None, text: str) -> None:
    assert format_rate(rate) == text


# --- the text -----------------------------------------------------------------------------------------


def test_a_finite_replay_shows_rows_rate_percent_and_time_left() -> None:
    shown = Shown("metrics.csv", 480, 95.94, finite=True, percent=50.0, eta_s=5.0)
    assert format_line(shown) == "metrics.csv: 480 rows, 95.9 rows/s, 50.0%, ETA 0:05"


def test_before_anything_is_known_the_line_says_so() -> None:
    shown = Shown("metrics.csv", 0, None, finite=True)
    assert format_line(shown) == "metrics.csv: 0 rows, -- rows/s, --.-%, ETA --:--"


def test_an_endless_replay_shows_its_pass_and_no_percent_or_time_left() -> None:
    shown = Shown("metrics.csv", 12345, 200.0, finite=False, pass_number=3)
    assert format_line(shown) == "metrics.csv (pass 3): 12,345 rows, 200 rows/s"


def test_scraping_shows_rows_and_rate_and_rejected_rows_when_there_are_any() -> None:
    shown = Shown("scraping 2 endpoints", 96, 3.2, finite=False, rejected=4)
    assert format_line(shown) == "scraping 2 endpoints: 96 rows, 3.2 rows/s, 4 rejected"


def test_the_line_is_cut_to_leave_the_terminals_last_column_free() -> None:
    """A line that wraps cannot be redrawn in place."""
    shown = Shown("metrics.csv", 480, 95.9, finite=True, percent=50.0, eta_s=5.0)
    assert format_line(shown, width=20) == "metrics.csv: 480 ro"


# --- when it shows --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stderr_is_tty", "stdout_is_tty", "log_format", "shown"),
    [
        (True, True, "auto", True),  # a person at a terminal
        (True, True, "console", True),
        (True, False, "console", True),  # console logs to a file; the terminal still sees stderr
        (True, True, "json", False),  # JSON logs: a machine reads this process
        (True, False, "auto", False),  # auto means JSON when stdout is not a terminal
        (False, True, "auto", False),  # stderr to a pipe or a file
        (False, True, "console", False),
    ],
)
def test_the_line_shows_only_on_a_terminal_with_logs_for_people(
    stderr_is_tty: bool, stdout_is_tty: bool, log_format: str, shown: bool
) -> None:
    assert wanted(stderr_is_tty=stderr_is_tty, stdout_is_tty=stdout_is_tty, log_format=log_format) is shown


# --- what it looks at -----------------------------------------------------------------------------------


class FakeSource:
    """A source at a fixed position (what RunView reads of a source)."""

    def __init__(self, position: Position) -> None:
        self.position = position


def test_a_finite_file_is_seen_by_its_byte_position(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(b"x" * 1000)
    settings = load_settings(overrides={"telemetry.metrics_path": str(path)})
    view = RunView(settings, FakeSource(Position(250, 10)), lambda: counts(90, rows_rejected=2))  # type: ignore[arg-type]
    shown = view()
    assert shown == Shown("m.csv", 90, None, finite=True, percent=25.0, eta_s=None, rejected=2)


def test_an_endless_replay_is_seen_by_its_pass(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(b"x" * 1000)
    settings = load_settings(overrides={"telemetry.metrics_path": str(path), "telemetry.loop": True})
    view = RunView(settings, FakeSource(Position(250, 10, pass_number=2)), lambda: counts(90))  # type: ignore[arg-type]
    assert view() == Shown("m.csv", 90, None, finite=False, pass_number=3)


# --- drawing --------------------------------------------------------------------------------------------


def fixed(shown: list[Shown]) -> Callable[[], Shown]:
    return lambda: shown[-1]


def test_each_redraw_overwrites_the_last_line_and_erasing_blanks_it() -> None:
    writes: list[tuple[str, str]] = []
    stderr = FakeTerminal("stderr", writes)
    looks = [Shown("m.csv", 100, 10.0, finite=False)]
    line = ProgressLine(stderr, fixed(looks), width=lambda: 80)
    line.draw()
    looks.append(Shown("m", 7, 1.0, finite=False))
    line.draw()
    line.erase()
    line.erase()  # nothing drawn: nothing written
    first, second = "m.csv: 100 rows, 10.0 rows/s", "m: 7 rows, 1.0 rows/s"
    assert [text for _, text in writes] == [
        "\r" + first,
        "\r" + second + " " * (len(first) - len(second)),
        "\r" + " " * len(second) + "\r",
    ]


def test_a_terminal_that_went_away_stops_the_drawing_not_the_run() -> None:
    stderr = FakeTerminal("stderr", [])
    stderr.close()
    line = ProgressLine(stderr, fixed([Shown("m.csv", 1, None, finite=False)]), width=lambda: 80)
    line.draw()
    line.stop()  # no exception


def test_a_log_line_goes_above_the_progress_line_and_stop_restores_the_logging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Console logs on stdout and the line on stderr, one terminal: the log line never lands after the line."""
    writes: list[tuple[str, str]] = []
    stdout, stderr = FakeTerminal("stdout", writes), FakeTerminal("stderr", writes)
    monkeypatch.setattr(sys, "stdout", stdout)
    configure_logging("auto", "info")  # console: stdout is a terminal
    factory = structlog.get_config()["logger_factory"]
    settings = load_settings(overrides={"telemetry.metrics_path": str(TEST_DATA_CSV)})
    source = open_source(TEST_DATA_CSV, "csv")
    handle = start_progress_line(settings, source, lambda: counts(0), stream=stderr)
    deadline = time.monotonic() + 5
    while not any(name == "stderr" for name, _ in writes):
        assert time.monotonic() < deadline, "the line was not drawn"
        time.sleep(0.01)
    structlog.get_logger().info("hello.there", answer=42)
    handle.stop()
    structlog.get_logger().info("after.stop")

    drawn = next(text for name, text in writes if name == "stderr")
    assert drawn.startswith("\rmetrics.csv: 0 rows, -- rows/s, ")
    logged = next(index for index, (name, text) in enumerate(writes) if "hello.there" in text)
    assert writes[logged - 1] == ("stderr", "\r" + " " * (len(drawn) - 1) + "\r")  # erased just before
    assert writes[logged + 1] == ("stderr", drawn)  # and drawn again below it
    assert writes[-1][0] == "stdout"  # nothing drawn after stop, and logs go straight to stdout again
    assert "after.stop" in writes[-1][1]
    assert structlog.get_config()["logger_factory"] is factory


def test_nothing_is_drawn_when_stderr_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[tuple[str, str]] = []
    monkeypatch.setattr(sys, "stdout", FakeTerminal("stdout", writes))
    configure_logging("console", "info")
    settings = load_settings(overrides={"telemetry.metrics_path": str(TEST_DATA_CSV)})
    stderr = io.StringIO()
    handle = start_progress_line(settings, open_source(TEST_DATA_CSV, "csv"), lambda: counts(0), stream=stderr)
    time.sleep(0.05)
    handle.stop()
    assert stderr.getvalue() == ""


def test_nothing_is_drawn_under_a_logging_set_up_it_cannot_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """A library user's own structlog configuration (here structlog's defaults) is left alone, without a line."""
    monkeypatch.setattr(sys, "stdout", FakeTerminal("stdout", []))
    structlog.reset_defaults()
    factory = structlog.get_config()["logger_factory"]
    writes: list[tuple[str, str]] = []
    settings = load_settings(overrides={"telemetry.metrics_path": str(TEST_DATA_CSV), "logging.format": "console"})
    stderr = FakeTerminal("stderr", writes)
    handle = start_progress_line(settings, open_source(TEST_DATA_CSV, "csv"), lambda: counts(0), stream=stderr)
    time.sleep(0.05)
    handle.stop()
    assert writes == []
    assert structlog.get_config()["logger_factory"] is factory
