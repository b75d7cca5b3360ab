"""Where rejected rows go: a quarantine file to fix and replay them from, and logs that stay readable.

Both are ``on_reject`` callbacks (``__call__(rejection)``), so they compose with ``CsvRows`` and with each
other::

    quarantine = Quarantine(settings.telemetry.rejected_path)
    reporter = RejectionReporter(in_full=settings.logging.rejected_rows_in_full, interval=progress_interval)
    rows = CsvRows(path, on_reject=lambda rejection: (quarantine(rejection), reporter(rejection)))

They run on the thread that reads the source, once per rejected record, so neither takes a lock.

A quarantine that cannot write (a full disk, an I/O error) raises ``QuarantineError`` from ``__call__``:
the operator asked for rejected rows to be kept, so losing them must stop the stream (the exception leaves
the source's row iterator and ends the pipeline with reason ``error``), never be skipped quietly. ``close``
never raises, so that the run can still log its summary after such a failure.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TextIO

import structlog

from rxstreamer.model import Rejection

__all__ = ["QUARANTINE_COLUMNS", "Quarantine", "QuarantineError", "RejectionReporter", "open_for_append"]

QUARANTINE_COLUMNS: Final = ("line", "reason", "detail", "raw")

Opener = Callable[[Path], TextIO]


class QuarantineError(Exception):
    """A rejected row could not be written to the quarantine file; the message names the path and the reason."""


def open_for_append(path: Path) -> TextIO:
    """Open ``path`` for appending text, without blocking on a FIFO that nobody reads (that fails with ENXIO).

    backslashreplace: raw text from a line of bad UTF-8 must not make the quarantine itself fail.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
    try:
        os.set_blocking(fd, True)
        return open(fd, "a", encoding="utf-8", errors="backslashreplace", newline="")
    except BaseException:
        os.close(fd)
        raise


class Quarantine:
    """Appends each rejection to a CSV file: ``line,reason,detail,raw``, one row per rejected record.

    The file is opened on the first rejection, so a clean run leaves no empty file behind, and appended to,
    so that the rejections of a resumed run follow those of the run before; the header is written only
    when the file is new or empty. Every row is flushed as it is written: a crash of the streamer loses no
    rejection (a crash of the machine may lose the last few; an fsync per row would let a flood of bad
    rows throttle the stream). ``raw`` is the record as read, so the file can be fixed and fed back in.

    ``opener`` opens the file (``open_for_append``); tests hand in one whose writes fail.
    """

    def __init__(self, path: Path | str, *, opener: Opener = open_for_append) -> None:
        self.path = Path(path)
        self.written = 0  # rejections written by this object
        self._opener = opener
        self._file: TextIO | None = None
        self._writer: Any = None  # csv.writer's type is private to typeshed

    def open(self) -> None:
        """Open the file now (it opens itself on the first rejection); an OSError here names the problem early."""
        if self._file is not None:
            return
        file = self._opener(self.path)
        try:
            writer = csv.writer(file, lineterminator="\n")
            if os.fstat(file.fileno()).st_size == 0:
                writer.writerow(QUARANTINE_COLUMNS)
                file.flush()
        except BaseException:
            _close_quietly(file)
            raise
        self._file, self._writer = file, writer

    def __call__(self, rejection: Rejection) -> None:
        """Append one rejection and flush it, or raise ``QuarantineError`` naming the path and the OS reason."""
        try:
            if self._file is None:
                self.open()
            assert self._file is not None
            self._writer.writerow((rejection.line, rejection.reason, rejection.detail, rejection.raw))
            self._file.flush()
        except OSError as error:
            # The row that failed stays in the file object's buffer and would fail again on every later write
            # and on close: drop the file, so that close() is quiet and a later call starts afresh.
            self._discard()
            raise QuarantineError(
                f"cannot write the rejected row of line {rejection.line} to telemetry.rejected_path {self.path}: "
                f"{error.strerror or error}"
            ) from error
        self.written += 1

    def close(self) -> None:
        """Close the file; safe to call more than once, and a later rejection opens it again. Never raises.

        The run calls it after the stream ended, just before its summary: a failing last flush is logged
        (``quarantine.close_failed``) rather than raised, so that the summary is still written.
        """
        file, self._file, self._writer = self._file, None, None
        if file is not None:
            problem = _close_quietly(file)
            if problem is not None:
                structlog.get_logger().warning("quarantine.close_failed", path=str(self.path), error=problem)

    def _discard(self) -> None:
        file, self._file, self._writer = self._file, None, None
        if file is not None:
            _close_quietly(file)

    def __enter__(self) -> Quarantine:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def _close_quietly(file: TextIO) -> str | None:
    """Close ``file`` whatever its last flush does (the descriptor is released either way): the OS reason, if any."""
    try:
        file.close()
    except OSError as error:
        return error.strerror or str(error)
    return None


class RejectionReporter:
    """Logs rejections so that a few bad rows are shown in full and a million do not drown the log.

    The first ``in_full`` rejections are each a ``row.rejected`` line with line, reason and detail. After
    that, rejections are only counted, and a ``row.rejections_suppressed`` line with the count by reason
    since the last such line is logged at most once per ``interval`` seconds (when a rejection arrives and
    the interval has passed). ``flush()`` logs whatever has been counted and not yet logged: call it at
    the end of a run, or with each progress line, so that a burst that then stops is still reported.
    """

    def __init__(
        self,
        *,
        in_full: int = 20,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        logger: Any = None,
    ) -> None:
        if in_full < 0:
            raise ValueError(f"in_full must not be negative, got {in_full}")
        if interval < 0:
            raise ValueError(f"interval must not be negative, got {interval}")
        self.in_full = in_full
        self.interval = interval
        self.total = 0  # every rejection seen, logged in full or not
        self._clock = clock
        self._log = logger if logger is not None else structlog.get_logger()
        self._suppressed: dict[str, int] = {}
        self._window_start: float | None = None  # when counting began for the next summary

    def __call__(self, rejection: Rejection) -> None:
        self.total += 1
        if self.total <= self.in_full:
            self._log.warning("row.rejected", line=rejection.line, reason=rejection.reason, detail=rejection.detail)
            return
        now = self._clock()
        if self._window_start is None:
            self._window_start = now
        self._suppressed[rejection.reason] = self._suppressed.get(rejection.reason, 0) + 1
        if now - self._window_start >= self.interval:
            self._summarise(now)

    @property
    def suppressed(self) -> int:
        """Rejections counted but not yet logged."""
        return sum(self._suppressed.values())

    def flush(self) -> None:
        """Log the rejections counted since the last summary, if there are any."""
        if self._suppressed:
            self._summarise(self._clock())

    def _summarise(self, now: float) -> None:
        by_reason = dict(sorted(self._suppressed.items()))
        self._log.warning(
            "row.rejections_suppressed",
            count=sum(by_reason.values()),
            by_reason=by_reason,
            total_rejected=self.total,
        )
        self._suppressed = {}
        self._window_start = now
