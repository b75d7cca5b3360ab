"""Bounded lines of a file with their byte positions: the framing every line-based format shares.

Nothing here knows a format. ``LineReader`` opens the file once per pass and hands a format its lines
as text, one at a time: that is what keeps memory flat however large the file, lets a consumer pull at
its own pace, and gives exact byte offsets for checkpoints. Everything that is about lines rather than
about what they hold is done here, once, for every format:

- Reads are bounded: ``readline`` never returns more than ``max_line_size`` bytes (plus a CRLF), so a
  file without line breaks costs one chunk of memory, not the whole file. A longer line is skipped to its
  end in chunks and rejected as ``field_too_large``; a line with a NUL byte as ``nul_byte``; one that is
  not UTF-8 as ``not_utf8``. Each costs its line only, and the stream goes on.
- A UTF-8 byte-order mark at the top is not part of the first line; CRLF and LF both end a line; blank
  lines are not records and count nowhere.
- The position (byte offset, lines consumed, pass) is kept just after the last line handed over or
  rejected, so a new reader started there carries on with the next record and the same line numbers.
- A file that changes under the reader is checked for at each end of file, where it costs one ``fstat``
  and one ``stat``. Growth is fine (lines appended before the end was reached are read). A file that got
  shorter than it was, or than what was read of it, raises ``SourceShrankError``: lines it held are gone
  unread, and finishing as if the file had ended would report a complete run. A path that names another
  file now (log rotation) is logged as ``source.rotated`` and ends the stream after the old file's data,
  in loop mode too: following the new file is another stream.
- With ``loop=True`` the file is replayed from the top each time it ends; a pass from the top in which no
  record became a row stops the loop, since replaying it would spin forever without producing anything.

A format iterates ``reader.passes()``; for each ``LinePass`` it may read a preamble (``first_line``, a CSV
header), then iterates the pass for the lines of its records. A record that goes on past its line (a
quoted CSV field with a line break) is read with ``following``, then either kept (``take``) or given
back (``give_back``), in which case reading resumes right after its first line. Every record a format is
handed is counted in ``stats.rows_read``; the format yields it as a row or rejects it through ``reject``,
which is what keeps ``rows_read = rows yielded + rows_rejected`` true for every format.

The hot path is one flat loop per line that yields a ``str``: the format's loop and this one are the only
Python frames a row passes through, as many as when the CSV reader did its own framing.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Generator
from pathlib import Path
from typing import BinaryIO

import structlog

from rxstreamer.model import Position, Rejection
from rxstreamer.parsing import FIELD_TOO_LARGE, NOT_UTF8, NUL_BYTE, SENTINEL_MODES, TEXT_REASONS, SentinelMode
from rxstreamer.sources.base import (
    DEFAULT_MAX_FIELD_SIZE,
    RejectHandler,
    SourceError,
    SourceShrankError,
    SourceStats,
)

__all__ = [
    "RAW_TEXT_CHARS",
    "READ_BUFFER_SIZE",
    "FollowingLines",
    "LinePass",
    "LineReader",
    "LineSource",
    "RecordOverrunError",
    "content_size",
    "open_binary",
    "raw_of",
    "raw_text",
]

# How much of a rejected record's text a Rejection carries: 9x the longest line of the real export, so a
# quarantined record can be fixed and replayed, while one runaway line stays a few kilobytes.
RAW_TEXT_CHARS = 4096
# The file's read buffer. The default (the file system's 4 KiB block) costs a read() every nine lines of a
# real export, a tenth of the time per row; 32 KiB makes that a few percent, and stays one small chunk.
READ_BUFFER_SIZE = 32 * 1024
# Reads while skipping the rest of an over-long line: memory stays at one chunk however long the line.
_SKIP_CHUNK = 64 * 1024
_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")

log = structlog.get_logger()


def content_size(raw: bytes) -> int:
    """The length of a line without its line break (LF or CRLF)."""
    if raw.endswith(b"\r\n"):
        return len(raw) - 2
    if raw.endswith(b"\n"):
        return len(raw) - 1
    return len(raw)


def raw_of(raw: bytes) -> str:
    """A line's bytes as a Rejection's raw text: no final line break, bad bytes escaped, cut short."""
    return raw[: min(content_size(raw), 4 * RAW_TEXT_CHARS)].decode("utf-8", "backslashreplace")[:RAW_TEXT_CHARS]


def raw_text(text: str) -> str:
    """A record's text as a Rejection's raw text: no final line break, cut short."""
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    return text[:RAW_TEXT_CHARS]


def open_binary(path: Path) -> BinaryIO:
    """Open ``path`` for reading, turning every way that can fail into a ``SourceError``."""
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
        return open(path, "rb", buffering=READ_BUFFER_SIZE)
    except OSError as error:
        raise SourceError(f"{path}: cannot be read: {error.strerror}") from None


class RecordOverrunError(Exception):
    """A record that spans lines ran past the bound (``limit`` bytes) or, when ``limit`` is None, the file."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        super().__init__("the end of the file" if limit is None else f"{limit} bytes")


class FollowingLines:
    """The lines after a record's first line, as text, for a format whose records may span lines.

    Iterating yields the first line again, then the next ones (blank or not: inside a record they are
    data), and raises ``RecordOverrunError`` rather than go past ``limit`` bytes in all (line breaks inside
    the record included, the final one not) or past the end of the file. It counts what it handed over
    and notes NUL bytes and bytes that are not UTF-8 (decoded with ``surrogateescape``) for the format to
    judge, since only the format knows where its record ends.
    """

    def __init__(self, readline: Callable[[int], bytes], first: str, limit: int) -> None:
        self._readline = readline
        self._first: str | None = first
        self._limit = limit
        self.size = len(first.encode())  # bytes of the record so far, line breaks included
        self.extra_size = 0  # bytes after the first line
        self.lines = 1
        self.nul = False
        self.not_utf8 = False

    def __iter__(self) -> FollowingLines:
        return self

    def __next__(self) -> str:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        raw = self._readline(self._limit + 2)
        if not raw:
            raise RecordOverrunError(None)
        self.size += len(raw)
        self.extra_size += len(raw)
        self.lines += 1
        if self.size - (len(raw) - content_size(raw)) > self._limit:
            raise RecordOverrunError(self._limit)
        if b"\0" in raw:
            self.nul = True
        try:
            return raw.decode()
        except UnicodeDecodeError:
            self.not_utf8 = True
            return raw.decode("utf-8", "surrogateescape")


def _skip_line(readline: Callable[[int], bytes], first: bytes) -> int:
    """Read past the rest of an over-long line in bounded chunks; return the line's length in bytes."""
    size = len(first)
    chunk = first
    while not chunk.endswith(b"\n"):
        chunk = readline(_SKIP_CHUNK)
        if not chunk:
            break
        size += len(chunk)
    return size


def _ended_rotated(path: Path, file: BinaryIO, opened: os.stat_result, offset: int) -> bool:
    """At the end of ``file``: raise if it shrank, return True (after logging) if ``path`` names another file now.

    ``offset`` is how far the file was read; a size below it, or below the size at opening, means bytes
    were cut off (the read ended early because of it, or lines past the cut were never reached).
    """
    now = os.fstat(file.fileno())
    before = max(opened.st_size, offset)
    if now.st_size < before:
        raise SourceShrankError(
            f"{path} shrank from {before} to {now.st_size} bytes while being read at offset {offset}"
        )
    try:
        named = os.stat(path)
    except OSError:
        replaced_by = "no file"
    else:
        if (named.st_dev, named.st_ino) == (now.st_dev, now.st_ino):
            return False
        replaced_by = "another file"
    log.warning("source.rotated", path=str(path), now_names=replaced_by, offset=offset, action="stream ends here")
    return True


class LineReader:
    """The lines of one file, pass after pass, with the position and counts that outlive each pass.

    ``start`` (a ``position`` taken earlier, from a checkpoint) makes the first pass continue there: a
    preamble is still read from the top, then reading jumps to ``start.offset``, line numbers continue from
    ``start.line`` and passes from ``start.pass_number``. ``max_line_size`` bounds a line (and a record
    that spans lines) in bytes, without its final line break.
    """

    def __init__(
        self,
        path: Path,
        *,
        loop: bool = False,
        start: Position | None = None,
        max_line_size: int,
        on_reject: RejectHandler | None = None,
    ) -> None:
        if max_line_size < 1:
            raise ValueError(f"max_field_size must be at least 1 byte, got {max_line_size}")
        self.path = path
        self.loop = loop
        self.start = start
        self.limit = max_line_size
        self.on_reject = on_reject
        self.skip_text_rejection: Callable[[], None] | None = None  # see reject()
        self.stats = SourceStats()
        # The position as three plain attributes, set on the hot path; ``position`` builds the object.
        begin = start or Position(0, 0, 0)
        self.offset, self.line, self.pass_number = begin.offset, begin.line, begin.pass_number

    @property
    def position(self) -> Position:
        """Just after the last line handed over (or record taken, or line rejected) by the latest pass."""
        return Position(self.offset, self.line, self.pass_number)

    def passes(self) -> Generator[LinePass, None, None]:
        """One ``LinePass`` per read of the file, each open until the next is asked for (or this closes).

        Iterate each pass to its end before asking for the next: the end is where a shrink or a rotation
        is found. The loop rule counts rows as ``rows_read - rows_rejected``, so a format must reject,
        through ``reject``, every record it is handed and does not yield.
        """
        start = self.start
        pass_number = start.pass_number if start is not None else 0
        stats = self.stats
        while True:
            stats.passes += 1
            rows_before = stats.rows_read - stats.rows_rejected
            with open_binary(self.path) as file:
                lines = LinePass(self, file, start, pass_number)
                yield lines
            from_the_top = start is None or start.offset == 0
            no_rows = stats.rows_read - stats.rows_rejected == rows_before
            if not self.loop or lines.rotated or (no_rows and from_the_top):
                return
            start = None
            pass_number += 1

    def check(self, preamble: Callable[[LinePass], object]) -> None:
        """Open the file, run ``preamble`` on it and check ``start`` against it, raising ``SourceError``."""
        with open_binary(self.path) as file:
            lines = LinePass(self, file, self.start, self.pass_number)
            preamble(lines)
            lines.go_to_start()

    def reject(self, rejection: Rejection) -> None:
        """Count a record that did not become a row, and tell ``on_reject``.

        Unless another shard reports records whose text is unusable (see ``LineSource.skip_uuids``): then
        such a record is counted as skipped instead.
        """
        if self.skip_text_rejection is not None and rejection.reason in TEXT_REASONS:
            self.skip_text_rejection()
            return
        stats = self.stats
        stats.rows_rejected += 1
        by_reason = stats.rejected_by_reason
        by_reason[rejection.reason] = by_reason.get(rejection.reason, 0) + 1
        if self.on_reject is not None:
            self.on_reject(rejection)


class LinePass:
    """One read of the file, from opening it to its end: a preamble, then the lines of the records.

    ``offset`` and ``line`` say how far the preamble went; iterating yields each non-blank line as text,
    line break included, with the reader's position already just after it (``reader.line`` is its number).
    """

    def __init__(self, reader: LineReader, file: BinaryIO, start: Position | None, pass_number: int) -> None:
        self._reader = reader
        self._file = file
        self.path = reader.path
        self._opened = os.fstat(file.fileno())
        self._start = start
        self.pass_number = pass_number
        self.offset = 0  # just after the preamble
        self.line = 0
        self.rotated = False  # set at the end of the pass: the path names another file now

    def first_line(self, name: str) -> str | None:
        """The first non-blank line as text, byte-order mark removed, or None when there is none.

        For a format that starts with a preamble such as a header, which every record depends on: a
        problem with it is a problem with the file, raised as ``SourceError`` naming the line as ``name``.
        """
        path, limit = self.path, self._reader.limit
        offset = line = 0
        while True:
            raw = self._file.readline(limit + 2)
            if not raw:
                return None
            line += 1
            text_start = offset
            offset += len(raw)
            if text_start == 0 and raw.startswith(_BOM):  # spreadsheets write one; it is not part of the line
                raw = raw[len(_BOM) :]
                text_start = len(_BOM)
            if raw and not raw.isspace():
                break
        self.offset, self.line = offset, line
        if content_size(raw) > limit:
            raise SourceError(f"{path}: the {name} is longer than max_field_size ({limit} bytes)")
        try:
            text = raw.decode()
        except UnicodeDecodeError as error:
            hint = "; it looks like UTF-16, save it as UTF-8" if raw.startswith(_UTF16_BOMS) else ""
            raise SourceError(
                f"{path}: not UTF-8 text ({error.reason} at byte {text_start + error.start}){hint}"
            ) from None
        if "\0" in text:
            raise SourceError(f"{path}: the {name} contains NUL bytes")
        return text

    def go_to_start(self) -> Position:
        """Move to where this pass's records begin: after the preamble (and a BOM), or at ``start``.

        Refuses a start position that cannot be where a record of this file begins.
        """
        if self.offset == 0:  # no preamble: a byte-order mark at the top is still not part of a line
            if self._file.read(len(_BOM)) == _BOM:
                self.offset = len(_BOM)
            else:
                self._file.seek(0)
        start = self._start
        if start is None or start.offset == 0:
            return Position(self.offset, self.line, self.pass_number)
        path = self.path
        size = os.fstat(self._file.fileno()).st_size
        if start.offset < self.offset or start.line < self.line:
            raise SourceError(
                f"{path}: start position offset {start.offset} line {start.line} lies inside the header "
                f"(which ends at offset {self.offset}, line {self.line})"
            )
        if start.offset > size:
            raise SourceError(
                f"{path}: start position offset {start.offset} lies beyond the end of the file ({size} bytes)"
            )
        if self.offset < start.offset < size:  # at the very end there is nothing to cut in two
            self._file.seek(start.offset - 1)
            if self._file.read(1) != b"\n":
                raise SourceError(f"{path}: start position offset {start.offset} does not follow a line break")
        self._file.seek(start.offset)
        return Position(start.offset, start.line, self.pass_number)

    def __iter__(self) -> Generator[str, None, None]:
        # The per-line loop is inlined on purpose: it is the hot path of a load generator.
        reader = self._reader
        stats = reader.stats
        reject = reader.reject
        limit = reader.limit
        readline = self._file.readline
        read_size = limit + 2  # the longest line allowed, with a CRLF
        begin = self.go_to_start()
        offset, line = begin.offset, begin.line
        reader.offset, reader.line, reader.pass_number = offset, line, self.pass_number
        while True:
            raw = readline(read_size)
            if not raw:
                self.rotated = _ended_rotated(self.path, self._file, self._opened, offset)
                return
            line += 1
            # A blank line is not a record (unless it is an over-long run of spaces: then it is rejected).
            if raw.isspace() and (raw[-1] == 10 or len(raw) < read_size):
                offset += len(raw)
                continue
            offset += len(raw)
            stats.rows_read += 1
            if len(raw) > limit or b"\0" in raw:  # rare: both checks are one C call on a short line
                if content_size(raw) > limit:
                    size = _skip_line(readline, raw)
                    offset += size - len(raw)
                    reader.offset, reader.line = offset, line
                    reject(
                        Rejection(
                            line,
                            FIELD_TOO_LARGE,
                            f"the line is {size} bytes long, more than max_field_size ({limit} bytes)",
                            raw_of(raw),
                        )
                    )
                    continue
                if b"\0" in raw:
                    reader.offset, reader.line = offset, line
                    column = raw.index(b"\0") + 1
                    reject(Rejection(line, NUL_BYTE, f"NUL byte at byte {column} of the line", raw_of(raw)))
                    continue
            try:
                text = raw.decode()
            except UnicodeDecodeError as error:
                reader.offset, reader.line = offset, line
                reject(
                    Rejection(
                        line,
                        NOT_UTF8,
                        f"not UTF-8 ({error.reason} at byte {error.start + 1} of the line)",
                        raw_of(raw),
                    )
                )
                continue
            reader.offset, reader.line = offset, line
            yield text
            offset, line = reader.offset, reader.line  # ``take`` moves them past a record that spans lines

    def following(self, first: str) -> FollowingLines:
        """The record that starts with ``first`` (the line just handed over) and goes on past it."""
        return FollowingLines(self._file.readline, first, self._reader.limit)

    def take(self, record: FollowingLines) -> None:
        """Keep the lines ``record`` read: the position moves past them, and reading goes on after them."""
        reader = self._reader
        reader.offset += record.extra_size
        reader.line += record.lines - 1

    def give_back(self) -> None:
        """Drop the lines read past the record's first line: reading resumes right after that line."""
        self._file.seek(self._reader.offset)


class LineSource:
    """What every line-based format's source shares: the options of ``SourceOpener``, checked once, and the
    reader that ``stats`` and ``position`` come from. A format adds ``check()`` and ``__iter__``.

    ``start`` (a ``position`` taken earlier, from a checkpoint) makes iteration continue there, with line
    numbers from ``start.line`` and passes from ``start.pass_number``; ``max_field_size`` bounds one record
    in bytes; ``sentinels`` says what to do with DCGM's sentinel values.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        loop: bool = False,
        on_reject: RejectHandler | None = None,
        start: Position | None = None,
        max_field_size: int = DEFAULT_MAX_FIELD_SIZE,
        sentinels: SentinelMode = "reject",
    ) -> None:
        if max_field_size < 1:
            raise ValueError(f"max_field_size must be at least 1 byte, got {max_field_size}")
        if sentinels not in SENTINEL_MODES:
            raise ValueError(f"sentinels must be one of {', '.join(SENTINEL_MODES)}, got {sentinels!r}")
        self.path = Path(path)
        self.loop = loop
        self.on_reject = on_reject
        self.start = start
        self.max_field_size = max_field_size
        self.sentinels: SentinelMode = sentinels
        self._lines = LineReader(self.path, loop=loop, start=start, max_line_size=max_field_size, on_reject=on_reject)
        self._keep_uuid: Callable[[str], bool] | None = None
        self._skipped: Callable[[], None] = _nothing
        self._reports: Callable[[str | None], bool] = _always
        self._prepare()

    def _prepare(self) -> None:
        """What a format sets up once its options are checked (a parser, say); nothing by default."""

    def skip_uuids(
        self, keep_uuid: Callable[[str], bool], skipped: Callable[[], None], reports: Callable[[str | None], bool]
    ) -> None:
        """Let the format drop a record whose uuid ``keep_uuid`` refuses before parsing it, telling ``skipped``.

        For sharding: N instances each read the whole input and keep their own GPUs, and a record that is
        another instance's costs only its reading then, not its parsing. A bad record is rejected only where
        ``reports`` says so for its uuid (None: its fields, or its text, could not be told apart), and skipped
        elsewhere, so that N instances report it once between them. The CSV source skips by uuid; a format that
        parses every record (the shard operator downstream keeps this instance's rows) still rejects through
        ``_reject_record``, so that a bad record is reported once between the instances, not once by each.
        """
        self._keep_uuid = keep_uuid
        self._skipped = skipped
        self._reports = reports
        self._lines.skip_text_rejection = None if reports(None) else skipped

    def _reject_record(self) -> Callable[[Rejection], None]:
        """How a format that does not read uuids before parsing rejects a record: as its own, or, when sharding
        leaves records of unknown uuid to another instance, by counting it as that instance's."""
        if self._reports(None):
            return self._lines.reject
        skipped = self._skipped
        return lambda _: skipped()

    @property
    def stats(self) -> SourceStats:
        """Records read and rejected, and passes started, over every iteration so far."""
        return self._lines.stats

    @property
    def position(self) -> Position:
        """Where the input continues: just after the last record the latest iteration consumed.

        Taken right after a row was yielded it is where the next record begins (blank lines aside), so a
        source of the same format started there (``start=rows.position``) carries on with the next row.
        """
        return self._lines.position


def _nothing() -> None:
    """No one to tell."""


def _always(_: str | None) -> bool:
    return True
