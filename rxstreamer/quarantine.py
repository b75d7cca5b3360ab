"""Where rejected rows go: a quarantine file to fix and replay them from, and logs that stay readable.

Both are ``on_reject`` callbacks (``__call__(rejection)``), so they compose with ``CsvRows`` and with each
other::

    quarantine = Quarantine(settings.telemetry.rejected_path)
    reporter = RejectionReporter(in_full=settings.logging.rejected_rows_in_full, interval=progress_interval)
    rows = CsvRows(path, on_reject=lambda rejection: (quarantine(rejection), reporter(rejection)))

They run on the thread that reads the source, once per rejected record, so neither takes a lock.
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

__all__ = ["QUARANTINE_COLUMNS", "Quarantine", "RejectionReporter"]

QUARANTINE_COLUMNS: Final = ("line", "reason", "detail", "raw")


class Quarantine:
    """Appends each rejection to a CSV file: ``line,reason,detail,raw``, one row per rejected record.

    The file is opened on the first rejection, so a clean run leaves no empty file behind, and appended to,
    so that the rejections of a resumed run follow those of the run before; the header is written only
    when the file is new or empty. Every row is flushed as it is written: a crash of the streamer loses no
    rejection (a crash of the machine may lose the last few; an fsync per row would let a flood of bad
    rows throttle the stream). ``raw`` is the record as read, so the file can be fixed and fed back in.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.written = 0  # rejections written by this object
        self._file: TextIO | None = None
        self._writer: Any = None  # csv.writer's type is private to typeshed

    def open(self) -> None:
        """Open the file now (it opens itself on the first rejection); an OSError here names the problem early."""
        if self._file is not None:
            return
        # backslashreplace: raw text from a line of bad UTF-8 must not make the quarantine itself fail.
        file = open(self.path, "a", encoding="utf-8", errors="backslashreplace", newline="")  # noqa: SIM115
        try:
            writer = csv.writer(file, lineterminator="\n")
            if os.fstat(file.fileno()).st_size == 0:
                writer.writerow(QUARANTINE_COLUMNS)
                file.flush()
        except BaseException:
            file.close()
            raise
        self._file, self._writer = file, writer

    def __call__(self, rejection: Rejection) -> None:
        if self._file is None:
            self.open()
        assert self._file is not None
        self._writer.writerow((rejection.line, rejection.reason, rejection.detail, rejection.raw))
        self._file.flush()
        self.written += 1

    def close(self) -> None:
        """Close the file; safe to call more than once, and a later rejection opens it again."""
        file, self._file, self._writer = self._file, None, None
        if file is not None:
            file.close()

    def __enter__(self) -> Quarantine:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


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
