"""structlog configuration: JSON lines, console output, level filtering, exceptions, threads."""

from __future__ import annotations

import datetime as dt
import io
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from rxstreamer.logs import configure_logging


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """Leave structlog as other test modules expect it."""
    yield
    structlog.reset_defaults()


class FakeTerminal(io.StringIO):
    """A text stream that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


class CharByCharStream(io.StringIO):
    """Writes one character at a time, so that writers not holding a lock interleave mid-line."""

    def write(self, text: str) -> int:
        for char in text:
            super().write(char)
        return len(text)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_have_timestamp_level_event_and_fields() -> None:
    """Each call writes one JSON object with an ISO-8601 UTC timestamp, the level, the event and fields."""
    stream = io.StringIO()
    configure_logging("json", "info", stream)
    log = structlog.get_logger()
    log.info("streamer.started", batch_size=10, path=Path("/data/metrics.csv"))
    log.warning("publisher.retrying", attempt=2)

    first, second = _lines(stream)
    assert first["event"] == "streamer.started"
    assert first["level"] == "info"
    assert first["batch_size"] == 10
    assert first["path"] == "/data/metrics.csv"
    assert second["level"] == "warning"
    timestamp = dt.datetime.fromisoformat(first["timestamp"])
    assert timestamp.utcoffset() == dt.timedelta(0)
    assert abs(dt.datetime.now(dt.UTC) - timestamp) < dt.timedelta(minutes=5)
    assert list(first)[:3] == ["timestamp", "level", "event"]


def test_level_filtering() -> None:
    """Calls below the configured level write nothing."""
    stream = io.StringIO()
    configure_logging("json", "warning", stream)
    log = structlog.get_logger()
    log.debug("hidden.debug")
    log.info("hidden.info")
    log.warning("shown.warning")
    log.error("shown.error")
    assert [line["event"] for line in _lines(stream)] == ["shown.warning", "shown.error"]


def test_debug_level_shows_debug() -> None:
    """The debug level lets debug lines through, and level names are case-insensitive."""
    stream = io.StringIO()
    configure_logging("json", "DEBUG", stream)
    structlog.get_logger().debug("shown.debug")
    assert [line["event"] for line in _lines(stream)] == ["shown.debug"]


def test_exception_is_rendered_inside_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    """log.exception puts the traceback in the JSON object: one line, nothing on stderr."""
    stream = io.StringIO()
    configure_logging("json", "info", stream)
    try:
        raise RuntimeError("queue unreachable")
    except RuntimeError:
        structlog.get_logger().exception("publisher.failed", batch=3)

    text = stream.getvalue()
    assert text.count("\n") == 1
    (line,) = _lines(stream)
    assert line["event"] == "publisher.failed"
    assert line["level"] == "error"
    assert line["batch"] == 3
    assert "Traceback (most recent call last)" in line["exception"]
    assert "RuntimeError: queue unreachable" in line["exception"]
    assert capsys.readouterr().err == ""


def test_default_stream_is_stdout_at_write_time(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a stream, lines go to whatever sys.stdout is when they are written."""
    configure_logging("json", "info")
    structlog.get_logger().info("to.stdout")
    captured = capsys.readouterr()
    assert json.loads(captured.out)["event"] == "to.stdout"
    assert captured.err == ""


def test_console_format_is_readable_and_plain_off_a_terminal() -> None:
    """The console renderer writes a human line, without colour codes when the stream is no terminal."""
    stream = io.StringIO()
    configure_logging("console", "info", stream)
    structlog.get_logger().info("streamer.started", batch_size=10)
    text = stream.getvalue()
    assert "streamer.started" in text
    assert "batch_size=10" in text
    assert "\x1b[" not in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_auto_is_json_off_a_terminal() -> None:
    """auto writes JSON when the stream is not a terminal (a pipe, a file, a container log)."""
    stream = io.StringIO()
    configure_logging("auto", "info", stream)
    structlog.get_logger().info("auto.json")
    assert _lines(stream)[0]["event"] == "auto.json"


def test_auto_is_coloured_console_on_a_terminal() -> None:
    """auto writes the coloured console format when the stream is a terminal."""
    stream = FakeTerminal()
    configure_logging("auto", "info", stream)
    structlog.get_logger().info("auto.console")
    text = stream.getvalue()
    assert "auto.console" in text
    assert "\x1b[" in text


def test_reconfiguring_applies_to_existing_loggers() -> None:
    """A logger obtained before a second configure_logging call follows the new stream and level."""
    log = structlog.get_logger()
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", "info", first)
    log.info("one")
    log.debug("dropped")
    configure_logging("json", "debug", second)
    log.debug("two")
    assert [line["event"] for line in _lines(first)] == ["one"]
    assert [line["event"] for line in _lines(second)] == ["two"]


def test_lines_from_threads_do_not_interleave() -> None:
    """Concurrent loggers each write whole lines, even to a stream that writes char by char."""
    stream = CharByCharStream()
    configure_logging("json", "info", stream)
    threads_count, lines_each = 8, 100
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, to provoke interleaving
    try:

        def work(thread: int) -> None:
            log = structlog.get_logger()
            for number in range(lines_each):
                log.info("line", thread=thread, number=number, padding="x" * 40)

        threads = [threading.Thread(target=work, args=(index,)) for index in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(previous)

    lines = _lines(stream)
    assert len(lines) == threads_count * lines_each
    seen = {(line["thread"], line["number"]) for line in lines}
    assert len(seen) == threads_count * lines_each


@pytest.mark.parametrize(("fmt", "level"), [("xml", "info"), ("json", "verbose"), ("", "info")])
def test_invalid_format_or_level(fmt: str, level: str) -> None:
    """Unknown formats and levels are refused instead of silently logging everything or nothing."""
    with pytest.raises(ValueError, match="must be one of"):
        configure_logging(fmt, level, io.StringIO())


def test_console_keeps_the_keys_in_the_order_given() -> None:
    """The console line shows the event, then the keys as the code passed them, not sorted alphabetically."""
    stream = io.StringIO()
    configure_logging("console", "info", stream)
    structlog.get_logger().info("streamer.stopped", reason="signal", rows_read=30, batches_published=3, duration_s=1.5)
    text = stream.getvalue()
    parts = ("streamer.stopped", "reason=", "rows_read=", "batches_published=", "duration_s=")
    positions = [text.index(part) for part in parts]
    assert positions == sorted(positions)  # sorted keys would read batches_published, duration_s, reason, ...


def test_json_keeps_the_keys_in_the_order_given() -> None:
    """After timestamp, level and event, a JSON line keeps the keys in the order the code passed them."""
    stream = io.StringIO()
    configure_logging("json", "info", stream)
    structlog.get_logger().info("streamer.stopped", reason="signal", rows_read=30, batches_published=3, duration_s=1.5)
    (line,) = _lines(stream)
    assert list(line) == ["timestamp", "level", "event", "reason", "rows_read", "batches_published", "duration_s"]
