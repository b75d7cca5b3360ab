"""The DCGM CSV format: a header, then one record a line, on top of the shared bounded line reader.

``CsvRows`` is a cold, lazy iterable: every ``iter()`` opens the file afresh and reads one record at a
time (see ``rxstreamer.sources.lines`` for the framing: bounds, positions, BOM, CRLF, NUL, over-long
lines, loop passes, shrink and rotation). What is CSV here is the header, which maps the columns by name
(``RowParser``), and the splitting of each line into fields by the csv module, so that quoting follows
RFC 4180 with csv's leniency for stray quotes.

A quoted field may span lines, but such a record is believed only when it makes a good row: otherwise its
first line is rejected as ``unterminated_quote`` and reading resumes on the next line, so that one stray
or cut-off quote costs one line, never the rest of the file.

A problem with the whole file (missing, unreadable, no usable header) is a ``SourceError`` raised before
the first row; a problem with one record is a ``Rejection`` handed to ``on_reject`` while the good rows
keep coming: real files are cut short, edited in spreadsheets and concatenated, and one bad line must not
cost the rest.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Generator
from contextlib import closing
from functools import lru_cache
from pathlib import Path

import reactivex
from reactivex import abc

from rxstreamer.model import MetricRow, Rejection
from rxstreamer.parsing import (
    CSV_ERROR,
    UNTERMINATED_QUOTE,
    HeaderError,
    RowParser,
    SentinelMode,
)
from rxstreamer.sources.base import DEFAULT_MAX_FIELD_SIZE, RejectHandler, SourceError
from rxstreamer.sources.lines import FollowingLines, LinePass, LineSource, RecordOverrunError, raw_text
from rxstreamer.sources.observable import rows_observable

__all__ = ["CsvRows", "rows_from_csv"]


def _header_parser(lines: LinePass, sentinels: SentinelMode) -> RowParser:
    """Build the parser from the first non-blank line, or explain why the file has no usable header."""
    path = lines.path
    text = lines.first_line("header line")
    if text is None:
        raise SourceError(f"{path}: is empty (no header line)")
    try:
        header = next(csv.reader([text]), [])  # csv's end-of-data leniency: an open quote just ends the field
    except csv.Error as error:
        raise SourceError(f"{path}: unreadable header: {error}") from None
    try:
        return RowParser(header, sentinels=sentinels)
    except HeaderError as error:
        raise SourceError(f"{path}: {error}") from None


def _spanning_record(
    lines: LinePass, first: str, *, parse: Callable[[list[str], int], MetricRow | Rejection], line: int
) -> tuple[MetricRow, FollowingLines] | str:
    """Read a record whose quoted field goes on past its first line: the row and its lines, or why not.

    A record that spans lines is believed only when it becomes a good row. Otherwise the opening quote was
    far more likely a stray one (a line cut short, a hand edit) than a real multi-line field, and the lines
    csv merged into it are good rows of their own: the caller rejects the first line alone and reads on
    from the next, so that one bad quote never costs more than its line. DCGM never writes line breaks
    inside fields, so a legitimate multi-line record that is also invalid is the rare case this trades off.
    """
    following = lines.following(first)
    try:
        fields = next(csv.reader(following))
    except RecordOverrunError as error:
        if error.limit is None:
            return "a quote opened on this line never closes: the file ends inside the quoted field"
        return (
            "a quote opened on this line never closes: "
            f"the quoted field is still open after max_field_size ({error.limit} bytes)"
        )
    except csv.Error as error:
        return f"a quote opened on this line makes a record csv cannot read ({error})"
    end = line + following.lines - 1
    if following.nul or following.not_utf8:
        problem = "NUL bytes" if following.nul else "bytes that are not UTF-8"
        return f"a quote opened on this line closes only on line {end}, and that record holds {problem}"
    parsed = parse(fields, line)
    if isinstance(parsed, Rejection):
        return (
            f"a quote opened on this line closes only on line {end}, and that record is not a valid row "
            f"({parsed.reason}: {parsed.detail})"
        )
    return parsed, following


def leading_field(text: str, index: int) -> str | None:
    """Field ``index`` of a one-line record, read without the csv module, or None when that is not safe.

    Safe when the line's quotes are balanced (no field goes on to the next line), it holds no carriage return
    but a final one (which csv refuses outside quotes: that record is rejected by one shard), and each field up to and
    including that one is quoted without a quote inside (a comma inside is fine) or unquoted without quote or
    comma, and is followed by a comma: then it is exactly what csv.reader gives. The real DCGM export quotes
    every field and has the uuid fifth, well before ``labels_raw`` and its doubled quotes. A third of the cost
    of splitting the line, which is what lets a shard pass over the records of the others cheaply.
    """
    if text.count('"') % 2:  # a quoted field goes on to the next line
        return None
    end = len(text) - 1
    carriage_return, newline = text.find("\r"), text.find("\n")
    if (carriage_return >= 0 and not (carriage_return == end - 1 and newline == end)) or 0 <= newline < end:
        return None  # csv refuses line breaks outside quotes, and only the shard of text problems reports that
    match = _field_pattern(index).match(text)
    if match is None:
        return None
    quoted = match.group(1)
    return quoted if quoted is not None else match.group(2)


@lru_cache(maxsize=16)
def _field_pattern(index: int) -> re.Pattern[str]:
    skipped = r'(?:"[^"\r\n]*"|[^",\r\n]*),' * index
    return re.compile(skipped + r'(?:"([^"\r\n]*)"|([^",\r\n]*)),')


class CsvRows(LineSource):
    """The rows of one DCGM CSV file, read lazily and afresh on every iteration: a ``Source``.

    With ``loop=True`` the file is replayed from the top each time it ends, for a stream that runs until
    stopped; a pass from the top that yields no good row stops the loop, since replaying it would spin
    forever without producing anything. ``stats`` accumulates across passes and iterations.

    ``start`` (a ``position`` taken earlier, from a checkpoint) makes iteration continue there: the header
    is still read from the top to map the columns, then reading jumps to ``start.offset``, line numbers
    continue from ``start.line`` and passes from ``start.pass_number``.

    ``max_field_size`` bounds the bytes of one record (line breaks inside a quoted field included, the final
    one not): a field cannot be larger than its record, and a bound on the record is what the reader can
    enforce before parsing, so memory stays bounded whatever the file holds. ``sentinels`` is handed to
    ``RowParser``.
    """

    def _prepare(self) -> None:
        # csv's own field limit is process-wide; raise it (never lower it) so that max_field_size is the one
        # limit that applies. A record is bounded by max_field_size, so csv's limit can then never trip.
        if self.max_field_size > csv.field_size_limit():
            csv.field_size_limit(self.max_field_size)

    def check(self) -> None:
        """Open the file, validate its header (and ``start``), raising ``SourceError`` so a bad file fails early."""
        self._lines.check(self._parser)

    def _parser(self, lines: LinePass) -> RowParser:
        return _header_parser(lines, self.sentinels)

    def __iter__(self) -> Generator[MetricRow, None, None]:
        at = self._lines  # the position: ``at.line`` is the number of the line just handed over
        reject = at.reject
        with closing(at.passes()) as passes:
            for lines in passes:
                parser = self._parser(lines)
                parse, width, uuid_at = parser.parse, parser.width, parser.uuid_index
                keep_uuid, skipped, reports = self._keep_uuid, self._skipped, self._reports
                # One reader for the whole pass, fed one line at a time: csv.reader resets its state on every
                # next(), and a line that leaves a quoted field open makes it ask for more, which pop()
                # answers with IndexError: the signal to read the record's further lines on the slow path.
                pending: list[str] = []
                reader = csv.reader(iter(pending.pop, None))
                for text in lines:
                    if keep_uuid is not None:  # sharding: another shard's record is skipped unsplit, if it can be
                        uuid = leading_field(text, uuid_at)
                        if uuid is not None and not keep_uuid(uuid):
                            skipped()
                            continue
                    pending.append(text)
                    try:
                        fields = next(reader)
                    except IndexError:  # a quoted field is open at the end of the line: the record goes on
                        line = at.line
                        spanning = _spanning_record(lines, text, parse=parse, line=line)
                        if isinstance(spanning, str):
                            lines.give_back()  # a stray quote costs its line only
                            reject(Rejection(line, UNTERMINATED_QUOTE, spanning, raw_text(text)))
                            continue
                        row, following = spanning
                        lines.take(following)
                        yield row
                        continue
                    except csv.Error as error:
                        reject(Rejection(at.line, CSV_ERROR, str(error), raw_text(text)))
                        continue
                    uuid = fields[uuid_at] if len(fields) == width else leading_field(text, uuid_at)
                    if keep_uuid is not None and uuid is not None and not keep_uuid(uuid):
                        skipped()  # another shard's GPU: that shard parses it (and rejects it, if it must)
                        continue
                    parsed = parse(fields, at.line)
                    if isinstance(parsed, Rejection):
                        if keep_uuid is not None and not reports(uuid):
                            skipped()  # another shard reports this bad record
                            continue
                        reject(Rejection(parsed.line, parsed.reason, parsed.detail, raw_text(text)))
                    else:
                        yield parsed


def rows_from_csv(
    path: Path | str,
    *,
    loop: bool = False,
    on_reject: RejectHandler | None = None,
    scheduler: abc.SchedulerBase | None = None,
    max_field_size: int = DEFAULT_MAX_FIELD_SIZE,
    sentinels: SentinelMode = "reject",
) -> reactivex.Observable[MetricRow]:
    """The rows of a DCGM CSV file as a cold observable: each subscription reads the file afresh.

    Emits every good row and completes (never completes with ``loop=True`` unless no row is good);
    a ``SourceError`` goes to ``on_error``. Disposing stops the read and closes the file at once. Rows are
    emitted in one scheduled action, like ``reactivex.from_iterable``; for paced reading pull from
    ``CsvRows`` instead.
    """
    return rows_observable(
        lambda: CsvRows(path, loop=loop, on_reject=on_reject, max_field_size=max_field_size, sentinels=sentinels),
        scheduler=scheduler,
    )
