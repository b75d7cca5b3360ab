"""The progress line: one line on stderr, redrawn in place about once a second, for a person at a terminal.

A finite replay shows rows published, rows per second, how far into the file reading is and the time left::

    metrics.csv: 480 rows, 95.9 rows/s, 50.0%, ETA 0:05

A replay with ``--loop`` and live scraping have no end, so they show rows and rows per second only (and the
pass, when looping). The line appears only when a person can see it and it cannot get in anybody's way:
stderr is a terminal and the logs are for people (``console``, or ``auto`` on a terminal). With JSON logs,
or stderr going to a pipe or a file, nothing of it is written.

Percent and time left come from byte positions, not rows: the source knows the byte offset it has read to,
the file knows its size, and that is exact for a file of any row length (and right for a run resumed from a
checkpoint, which starts part-way in). Rates are measured over the last ``WINDOW_S`` seconds, so the time
left follows a pace that changes (a queue that slows down, retries) instead of averaging it away.

The line is written with ``\\r`` and spaces only, no library and no escape sequences: tqdm or rich would
bring a dependency (and rich its own console and log handling) for one line whose numbers this module has
to compute anyway; ``\\r`` works on every terminal, ``TERM=dumb`` included.

Console log lines and the line do not garble each other: while the line is up, every log line goes through
a stream that first erases the line (under the same lock the redraw takes, so no redraw can slip in between
the erase and the log line), then writes the log line, then draws the line again below it. Log lines
therefore scroll by above the line, as with ``apt`` or ``pip``.

The pure parts (rates, percent, time left, the text, when to show it) are functions and small classes
without I/O, tested on their own.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TextIO, cast

import structlog

from rxstreamer.config import Settings
from rxstreamer.counts import Counts
from rxstreamer.sources import Source
from rxstreamer.sources.base import Live

__all__ = [
    "REFRESH_S",
    "WINDOW_S",
    "ErasingStream",
    "Handle",
    "ProgressLine",
    "RateWindow",
    "RunView",
    "Sample",
    "Shown",
    "eta_seconds",
    "format_eta",
    "format_line",
    "format_rate",
    "percent_of",
    "start_progress_line",
    "wanted",
]

REFRESH_S = 1.0  # how often the line is redrawn
WINDOW_S = 10.0  # how far back rates are measured


# --- the pure parts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One look at the run: when (monotonic seconds), rows published, and bytes of the file read."""

    at: float
    rows: int
    offset: int = 0


class RateWindow:
    """The samples of the last ``window`` seconds, and the rates between the oldest and the newest of them.

    The oldest sample kept is the last one at or before the window's start, so a window is always
    ``window`` seconds wide once the run is that old (and as wide as the run before that).
    """

    def __init__(self, window: float = WINDOW_S) -> None:
        self._window = window
        self._samples: deque[Sample] = deque()

    def add(self, sample: Sample) -> None:
        self._samples.append(sample)
        start = sample.at - self._window
        while len(self._samples) > 2 and self._samples[1].at <= start:
            self._samples.popleft()

    def rows_per_s(self) -> float | None:
        """Rows per second over the window; None until two samples lie apart in time."""
        span = self._span()
        return None if span is None else (self._samples[-1].rows - self._samples[0].rows) / span

    def bytes_per_s(self) -> float | None:
        """Bytes read per second over the window; None until two samples lie apart in time."""
        span = self._span()
        return None if span is None else (self._samples[-1].offset - self._samples[0].offset) / span

    def _span(self) -> float | None:
        if len(self._samples) < 2:
            return None
        span = self._samples[-1].at - self._samples[0].at
        return span if span > 0 else None


def percent_of(offset: int, size: int) -> float | None:
    """How far ``offset`` is into a file of ``size`` bytes, 0 to 100; None for an empty file."""
    if size <= 0:
        return None
    return min(100.0, max(0.0, 100.0 * offset / size))


def eta_seconds(offset: int, size: int, bytes_per_s: float | None) -> float | None:
    """Seconds until ``offset`` reaches ``size`` at ``bytes_per_s``; 0 at the end, None while it is not moving."""
    remaining = size - offset
    if remaining <= 0:
        return 0.0
    if bytes_per_s is None or bytes_per_s <= 0:
        return None
    return remaining / bytes_per_s


def format_eta(seconds: float | None) -> str:
    """``M:SS`` or ``H:MM:SS``, rounded up (a second left is never shown as none); ``--:--`` when unknown."""
    if seconds is None:
        return "--:--"
    whole = int(-(-seconds // 1))  # ceil
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_rate(rows_per_s: float | None) -> str:
    """``95.9 rows/s`` below 100, ``12,345 rows/s`` from there; ``-- rows/s`` when unknown."""
    if rows_per_s is None:
        return "-- rows/s"
    if rows_per_s < 100:
        return f"{rows_per_s:.1f} rows/s"
    return f"{rows_per_s:,.0f} rows/s"


@dataclass(frozen=True)
class Shown:
    """What the line says at one moment. ``percent`` and ``eta_s`` only for an input with an end."""

    name: str
    rows: int
    rows_per_s: float | None
    finite: bool
    percent: float | None = None
    eta_s: float | None = None
    rejected: int = 0
    pass_number: int | None = None  # 1-based, when looping


def format_line(shown: Shown, width: int = 0) -> str:
    """The line's text, cut to ``width - 1`` columns when ``width`` is given (a line that wraps cannot be
    redrawn in place; the last column is left free because some terminals wrap on it)."""
    head = shown.name if shown.pass_number is None else f"{shown.name} (pass {shown.pass_number})"
    parts = [f"{shown.rows:,} rows", format_rate(shown.rows_per_s)]
    if shown.finite:
        parts.append("--.-%" if shown.percent is None else f"{shown.percent:.1f}%")
        parts.append(f"ETA {format_eta(shown.eta_s)}")
    if shown.rejected:
        parts.append(f"{shown.rejected:,} rejected")
    text = f"{head}: {', '.join(parts)}"
    return text[: width - 1] if width > 1 else text


def wanted(*, stderr_is_tty: bool, stdout_is_tty: bool, log_format: str) -> bool:
    """Whether to show the line: stderr is a terminal and the logs are for people.

    ``auto`` logs are console logs when stdout is a terminal (the rule of ``rxstreamer.logs``); JSON logs
    mean a machine reads this process's output, and the line stays out of it.
    """
    console = log_format == "console" or (log_format == "auto" and stdout_is_tty)
    return stderr_is_tty and console


# --- the line on a terminal ---------------------------------------------------------------------------


class Handle(Protocol):
    def stop(self) -> None: ...


class _NoLine:
    """What ``start_progress_line`` returns when no line is shown."""

    def stop(self) -> None:
        return None


class ProgressLine:
    """Draws ``Shown`` on ``stream`` in place: ``\\r``, the text, and spaces over what is left of the last one.

    ``look`` is called on the drawing thread once a refresh; ``draw``, ``erase`` and ``stop`` may be called
    from any thread. Any error writing the line (a closed terminal) ends the drawing quietly: the run goes on.
    """

    def __init__(
        self,
        stream: TextIO,
        look: Callable[[], Shown],
        *,
        refresh: float = REFRESH_S,
        width: Callable[[], int] | None = None,
    ) -> None:
        self._stream = stream
        self._look = look
        self._refresh = refresh
        self._width = width or (lambda: _terminal_width(stream))
        self.lock = threading.Lock()
        self._drawn = 0  # columns of the text on screen now; 0: nothing is drawn
        self._text = ""  # the last text drawn
        self._broken = False
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ProgressLine:
        self._thread = threading.Thread(target=self._run, name="rxstreamer-progress-line", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop redrawing and erase the line, leaving the cursor at the start of an empty line."""
        self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.erase()

    def draw(self) -> None:
        """Look at the run and redraw the line with what it shows."""
        text = format_line(self._look(), self._width())
        with self.lock:
            if self._broken or self._stopped.is_set():
                return
            self._write("\r" + text + " " * max(0, self._drawn - len(text)))
            self._drawn, self._text = len(text), text

    def erase(self) -> None:
        with self.lock:
            self.erase_locked()

    def erase_locked(self) -> None:
        """Erase the line (the caller holds ``lock``): blanks over it and the cursor back at its start."""
        if self._drawn and not self._broken:
            self._write("\r" + " " * self._drawn + "\r")
        self._drawn = 0

    def restore_locked(self) -> None:
        """Draw the last text again (the caller holds ``lock``), below a log line that just erased it."""
        if self._text and not self._broken and not self._stopped.is_set():
            self._write("\r" + self._text)
            self._drawn = len(self._text)

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # the terminal went away, or stderr was closed
            self._broken = True

    def _run(self) -> None:
        try:
            while not self._stopped.is_set():
                self.draw()
                if self._stopped.wait(self._refresh):
                    break
        except Exception as error:  # a bug here must never end the run: the line just stops
            structlog.get_logger().debug("progress_line.failed", exc_info=error)
            with self.lock:
                self._broken = True


class ErasingStream:
    """The stream log lines are written to while the line is up: erases the line before each write, and
    draws it again below a complete log line.

    Erase, write and redraw happen under the line's lock, so the line is never redrawn between the erase and
    the log line (which would then be appended to it). Redrawing at once, rather than at the next refresh,
    keeps the line on screen when log lines come as often as refreshes (``logging.progress_interval = "1s"``).
    """

    def __init__(self, line: ProgressLine, target: TextIO | None) -> None:
        self._line = line
        self._target = target  # None: whatever sys.stdout is at the time, as rxstreamer.logs does

    def write(self, text: str) -> int:
        target = self._target or sys.stdout
        with self._line.lock:
            self._line.erase_locked()
            written = target.write(text)
            target.flush()
            if text.endswith("\n"):  # the cursor is at the start of a fresh line: put the progress line there
                self._line.restore_locked()
        return written

    def flush(self) -> None:
        (self._target or sys.stdout).flush()

    def isatty(self) -> bool:
        return (self._target or sys.stdout).isatty()


class _LinedLogs:
    """Routes structlog's output through an ``ErasingStream`` while the line is up; restores it at the end."""

    def __init__(self, line: ProgressLine) -> None:
        self._line = line
        self._before: Callable[..., Any] | None = None
        self._ours: Callable[..., Any] | None = None

    def install(self) -> bool:
        """True when installed; False when the logs are not written by structlog's ``WriteLogger`` (a library
        user's own logging set-up), which this cannot route safely: then no line is shown at all."""
        factory = structlog.get_config()["logger_factory"]
        if not isinstance(factory, structlog.WriteLoggerFactory):
            return False
        target: TextIO | None = getattr(factory, "_file", None)
        stream = cast(TextIO, ErasingStream(self._line, target))  # write, flush and isatty are all it is asked for
        structlog.WriteLogger(stream)  # structlog makes its per-file lock lazily: make it before threads log
        self._before = factory
        self._ours = structlog.WriteLoggerFactory(file=stream)
        structlog.configure(logger_factory=self._ours)
        return True

    def remove(self) -> None:
        if self._ours is not None and structlog.get_config()["logger_factory"] is self._ours:
            structlog.configure(logger_factory=self._before)


class RunView:
    """The run's counts and the source's position as ``Shown``, with rates over the last ``WINDOW_S``."""

    def __init__(self, settings: Settings, source: Source, counts: Callable[[], Counts]) -> None:
        self._source = source
        self._counts = counts
        telemetry = settings.telemetry
        path = telemetry.metrics_path
        self._path = path if isinstance(path, Path) else None
        self._loop = telemetry.loop
        self._finite = self._path is not None and not telemetry.loop and not isinstance(source, Live)
        if isinstance(path, Path):
            self._name = path.name
        else:
            self._name = f"scraping {len(path)} endpoint{'s' if len(path) != 1 else ''}"
        self._window = RateWindow()

    def __call__(self) -> Shown:
        counts = self._counts()
        offset, pass_number = 0, None
        if self._path is not None:
            position = self._source.position
            offset = position.offset
            pass_number = position.pass_number + 1 if self._loop else None
        self._window.add(Sample(time.monotonic(), counts.rows_published, offset))
        shown = Shown(
            self._name,
            counts.rows_published,
            self._window.rows_per_s(),
            self._finite,
            rejected=counts.rows_rejected,
            pass_number=pass_number,
        )
        if not self._finite or self._path is None:
            return shown
        try:
            size = os.stat(self._path).st_size
        except OSError:
            return shown
        eta = eta_seconds(offset, size, self._window.bytes_per_s())
        return replace(shown, percent=percent_of(offset, size), eta_s=eta)


class _Running:
    def __init__(self, line: ProgressLine, logs: _LinedLogs) -> None:
        self._line = line
        self._logs = logs

    def stop(self) -> None:
        self._line.stop()
        self._logs.remove()


def start_progress_line(
    settings: Settings, source: Source, counts: Callable[[], Counts], stream: TextIO | None = None
) -> Handle:
    """Start drawing the line on ``stream`` (stderr) when it is wanted; ``stop()`` the handle when the stream
    ends, before anything else is logged. Returns a handle that does nothing when no line is shown."""
    stream = stream if stream is not None else sys.stderr
    if not wanted(stderr_is_tty=_isatty(stream), stdout_is_tty=_isatty(sys.stdout), log_format=settings.logging.format):
        return _NoLine()
    line = ProgressLine(stream, RunView(settings, source, counts))
    logs = _LinedLogs(line)
    if not logs.install():
        return _NoLine()
    line.start()
    return _Running(line, logs)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _terminal_width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 80
