"""Rows from a DCGM CSV file: the I/O edge in front of the pure parser.

``CsvRows`` is a cold, lazy iterable: every ``iter()`` opens the file afresh and reads one record at a
time, so memory stays flat however large the file, and a consumer that pulls at its own pace (a timer
taking a batch per tick) never makes the reader run ahead. ``rows_from_csv`` is the same thing as an
observable for callers that want push.

Problems are split by scope. A problem with the whole file (missing, unreadable, no usable header) is a
``SourceError`` with a one-line message, raised before the first row so that start-up can fail fast. A
problem with one record is a ``Rejection`` handed to ``on_reject`` while the good rows keep coming.
"""

from __future__ import annotations

import csv
import os
import stat
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import reactivex
from reactivex import abc
from reactivex.disposable import CompositeDisposable, Disposable
from reactivex.scheduler import CurrentThreadScheduler

from rxstreamer.model import MetricRow, Rejection
from rxstreamer.parsing import HeaderError, RowParser

CSV_ERROR = "csv_error"

RejectHandler = Callable[[Rejection], None]


class SourceError(Exception):
    """The file as a whole cannot be read as a DCGM CSV; the message names the path and the reason."""


@dataclass
class SourceStats:
    """Running counts for one source, accumulated over all its passes and iterations."""

    rows_read: int = 0  # data records read, good and rejected
    rows_rejected: int = 0
    passes: int = 0  # passes over the file started


def _open_csv(path: Path) -> TextIO:
    """Open ``path`` for ``csv.reader``, turning every way that can fail into a ``SourceError``."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    except OSError as error:
        raise SourceError(f"{path}: cannot be read: {error.strerror}") from None
    # Checked before opening: opening a FIFO would block until something writes to it.
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise SourceError(f"{path}: is {kind}")
    try:
        return open(path, encoding="utf-8", newline="")
    except OSError as error:
        raise SourceError(f"{path}: cannot be read: {error.strerror}") from None


def _read_header(path: Path, reader: Iterator[list[str]]) -> RowParser:
    """Build the parser from the first non-blank record, or explain why the file has no usable header."""
    try:
        header = next((record for record in reader if record), None)
    except UnicodeDecodeError as error:
        raise SourceError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except csv.Error as error:
        raise SourceError(f"{path}: unreadable header: {error}") from None
    if header is None:
        raise SourceError(f"{path}: is empty (no header line)")
    try:
        return RowParser(header)
    except HeaderError as error:
        raise SourceError(f"{path}: {error}") from None


class CsvRows:
    """The rows of one DCGM CSV file, read lazily and afresh on every iteration.

    With ``loop=True`` the file is replayed from the top each time it ends, for a stream that runs until
    stopped; a pass that yields no good row stops the loop, since replaying it would spin forever without
    producing anything. ``stats`` accumulates across passes and iterations.
    """

    def __init__(self, path: Path | str, *, loop: bool = False, on_reject: RejectHandler | None = None) -> None:
        self.path = Path(path)
        self.loop = loop
        self.on_reject = on_reject
        self.stats = SourceStats()

    def check(self) -> None:
        """Open the file and validate its header, raising ``SourceError`` so a bad file fails at start-up."""
        with _open_csv(self.path) as file:
            _read_header(self.path, csv.reader(file))

    def __iter__(self) -> Generator[MetricRow, None, None]:
        while True:
            self.stats.passes += 1
            good_rows = yield from self._one_pass()
            if not self.loop or good_rows == 0:
                return

    def _one_pass(self) -> Generator[MetricRow, None, int]:
        """Yield the good rows of one read of the file and return how many there were."""
        stats = self.stats
        with _open_csv(self.path) as file:
            reader = csv.reader(file)
            parser = _read_header(self.path, reader)
            parse = parser.parse
            good_rows = 0
            while True:
                line = reader.line_num + 1  # where the next record starts: it may span several lines
                try:
                    record = next(reader)
                except StopIteration:
                    return good_rows
                except UnicodeDecodeError as error:
                    raise SourceError(f"{self.path}: not UTF-8 text after line {line - 1} ({error.reason})") from None
                except csv.Error as error:
                    stats.rows_read += 1
                    self._reject(Rejection(line, CSV_ERROR, str(error)))
                    if reader.line_num < line:  # the reader did not move on: nothing more can be read
                        return good_rows
                    continue
                if not record:  # a blank line
                    continue
                stats.rows_read += 1
                parsed = parse(record, line)
                if isinstance(parsed, Rejection):
                    self._reject(parsed)
                else:
                    good_rows += 1
                    yield parsed

    def _reject(self, rejection: Rejection) -> None:
        self.stats.rows_rejected += 1
        if self.on_reject is not None:
            self.on_reject(rejection)


def rows_from_csv(
    path: Path | str,
    *,
    loop: bool = False,
    on_reject: RejectHandler | None = None,
    scheduler: abc.SchedulerBase | None = None,
) -> reactivex.Observable[MetricRow]:
    """The rows of a DCGM CSV file as a cold observable: each subscription reads the file afresh.

    Emits every good row and completes (never completes with ``loop=True`` unless no row is good);
    a ``SourceError`` goes to ``on_error``. Disposing stops the read and closes the file at once. Rows are
    emitted in one scheduled action, like ``reactivex.from_iterable``; for paced reading pull from
    ``CsvRows`` instead.
    """

    def subscribe(
        observer: abc.ObserverBase[MetricRow], subscribe_scheduler: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        chosen = scheduler or subscribe_scheduler or CurrentThreadScheduler.singleton()
        disposed = False

        def emit(_: abc.SchedulerBase, __: Any = None) -> None:
            rows = iter(CsvRows(path, loop=loop, on_reject=on_reject))
            try:
                for row in rows:
                    if disposed:
                        return
                    observer.on_next(row)
            except Exception as error:  # like from_iterable: any failure ends the stream
                observer.on_error(error)
            else:
                if not disposed:
                    observer.on_completed()
            finally:
                rows.close()

        def dispose() -> None:
            nonlocal disposed
            disposed = True

        return CompositeDisposable(chosen.schedule(emit), Disposable(dispose))

    return reactivex.create(subscribe)
