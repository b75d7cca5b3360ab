"""The shared line reader: bounds, BOM, CRLF, NUL, positions and resume, passes, closing, file errors.

Each behaviour is checked on ``LineReader`` alone, through ``Echo`` (the smallest format: every line is a
record, yielded with its number), and, in the tests kept from ``test_source.py``, through ``CsvRows``,
which is what a user of the CSV format gets.
"""

from __future__ import annotations

import csv
import os
import tracemalloc
from collections.abc import Generator
from contextlib import closing
from itertools import islice
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from rxstreamer.generate import HEADER, generate_file
from rxstreamer.model import MetricRow, Position, Rejection
from rxstreamer.sources import CsvRows, SourceError, SourceShrankError
from rxstreamer.sources.lines import RAW_TEXT_CHARS, LinePass, LineReader, RecordOverrunError

DATA = Path(__file__).parent / "data"
BAD_ROWS = DATA / "bad_rows.csv"
MULTILINE = DATA / "multiline.csv"
PROC_FDS = Path("/proc/self/fd")

needs_proc = pytest.mark.skipif(not PROC_FDS.is_dir(), reason="needs /proc/self/fd to see open files")


def open_descriptors(path: Path) -> list[int]:
    """The descriptors this process holds open on ``path``: the direct way to tell a file was closed."""
    target = path.resolve()
    found = []
    for name in os.listdir(PROC_FDS):
        try:
            if Path(os.readlink(PROC_FDS / name)) == target:
                found.append(int(name))
        except OSError:  # the descriptor listdir itself used is gone by now
            continue
    return found


def read_position(descriptor: int) -> int:
    """How far into the file the OS has read for ``descriptor``."""
    for line in Path(f"/proc/self/fdinfo/{descriptor}").read_text().splitlines():
        if line.startswith("pos:"):
            return int(line.split()[1])
    raise AssertionError(f"no pos in fdinfo of {descriptor}")


def collect(path: Path, *, loop: bool = False) -> tuple[list[MetricRow], list[Rejection], CsvRows]:
    rejections: list[Rejection] = []
    source = CsvRows(path, loop=loop, on_reject=rejections.append)
    return list(source), rejections, source


def write_generated(path: Path, rows: int) -> Path:
    """A valid file of ``rows`` generated rows."""
    generate_file(path, hosts=2, gpus=4, rows=rows, seed=5)
    return path


def source_error(path: Path) -> str:
    """The SourceError message from check(), asserting that iterating fails the same way."""
    with pytest.raises(SourceError) as from_iteration:
        list(CsvRows(path))
    with pytest.raises(SourceError) as from_check:
        CsvRows(path).check()
    assert str(from_check.value) == str(from_iteration.value)
    assert "\n" not in str(from_check.value)
    return str(from_check.value)


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.csv"
    generate_file(path, hosts=4, gpus=8, rows=12_800)
    return path


class Echo:
    """The smallest format over ``LineReader``: every line is a record, yielded as (line number, text)."""

    def __init__(
        self,
        path: Path,
        *,
        header: bool = False,
        loop: bool = False,
        start: Position | None = None,
        max_line_size: int = 1024,
    ) -> None:
        self.header = header
        self.rejections: list[Rejection] = []
        self.reader = LineReader(
            path, loop=loop, start=start, max_line_size=max_line_size, on_reject=self.rejections.append
        )

    def preamble(self, lines: LinePass) -> None:
        if self.header:
            lines.first_line("header line")

    def __iter__(self) -> Generator[tuple[int, str], None, None]:
        with closing(self.reader.passes()) as passes:
            for lines in passes:
                self.preamble(lines)
                for text in lines:
                    yield self.reader.line, text


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def ten_lines(path: Path) -> Path:
    """Ten lines of 7 bytes: 70 bytes."""
    return write(path, b"".join(b"line %d\n" % n for n in range(10)))


# The line reader alone


def test_lines_come_as_text_with_their_numbers_and_blank_lines_count_nowhere(tmp_path: Path) -> None:
    """LF, CRLF and a last line without a break each make a line; blank ones are skipped but numbered."""
    echo = Echo(write(tmp_path / "lines.txt", b"a\n\nb\r\n  \t\nc"))
    assert list(echo) == [(1, "a\n"), (3, "b\r\n"), (5, "c")]
    stats = echo.reader.stats
    assert (stats.rows_read, stats.rows_rejected, stats.passes) == (3, 0, 1)
    assert echo.reader.position == Position(offset=11, line=5, pass_number=0)


def test_a_byte_order_mark_at_the_top_is_not_part_of_the_first_line(tmp_path: Path) -> None:
    """A BOM is dropped before the first line, with a preamble or without; elsewhere it is text."""
    path = write(tmp_path / "bom.txt", b"\xef\xbb\xbfa\nb\n\xef\xbb\xbfc\n")
    echo = Echo(path)
    assert list(echo) == [(1, "a\n"), (2, "b\n"), (3, "\ufeffc\n")]
    reader = LineReader(path, max_line_size=100)
    with closing(reader.passes()) as passes:
        lines = next(passes)
        assert lines.first_line("header line") == "a\n"
        assert (lines.offset, lines.line) == (5, 1)
        assert list(lines) == ["b\n", "\ufeffc\n"]


def test_a_start_after_a_byte_order_mark_goes_on_with_the_next_line(tmp_path: Path) -> None:
    """The BOM's bytes count in offsets, so a position taken after the first line resumes with the second."""
    path = write(tmp_path / "bom.txt", b"\xef\xbb\xbfa\nb\n")
    echo = Echo(path)
    lines = iter(echo)
    assert next(lines) == (1, "a\n")
    assert echo.reader.position == Position(5, 1, 0)
    lines.close()
    assert list(Echo(path, start=Position(5, 1, 0))) == [(2, "b\n")]


@pytest.mark.parametrize(
    ("ending", "size", "raw"),
    # The raw text is what the bounded read got: with CRLF that is the CR without its LF.
    [(b"\n", 12, "y" * 11), (b"\r\n", 13, "y" * 11 + "\r")],
    ids=["lf", "crlf"],
)
def test_the_bound_is_on_the_line_without_its_line_break(tmp_path: Path, ending: bytes, size: int, raw: str) -> None:
    """A line of exactly max_line_size bytes is read, LF or CRLF; one byte more is rejected whole."""
    path = write(tmp_path / "bound.txt", b"x" * 10 + ending + b"y" * 11 + ending + b"z" + ending)
    echo = Echo(path, max_line_size=10)
    assert [line for line, _ in echo] == [1, 3]
    detail = f"the line is {size} bytes long, more than max_field_size (10 bytes)"
    assert [(r.line, r.reason, r.detail, r.raw) for r in echo.rejections] == [(2, "field_too_large", detail, raw)]


def test_a_line_without_line_breaks_costs_one_chunk_of_memory(tmp_path: Path) -> None:
    """Four megabytes without a line break are skipped in chunks and rejected once, with their length."""
    path = tmp_path / "endless.txt"
    with path.open("wb") as out:
        out.write(b"first\n")
        for _ in range(64):
            out.write(b"x" * 65536)
    echo = Echo(path, max_line_size=4096)
    tracemalloc.start()
    try:
        lines = list(echo)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lines == [(1, "first\n")]
    assert [(r.line, r.reason, r.detail) for r in echo.rejections] == [
        (2, "field_too_large", "the line is 4194304 bytes long, more than max_field_size (4096 bytes)")
    ]
    assert echo.rejections[0].raw == "x" * RAW_TEXT_CHARS
    assert echo.reader.position == Position(6 + 4194304, 2, 0)
    assert peak < 1_000_000


def test_nul_bytes_and_bad_utf8_reject_their_line_only(tmp_path: Path) -> None:
    """A NUL byte or bytes that are not UTF-8 reject the line, naming where; raw text keeps them visible."""
    echo = Echo(write(tmp_path / "bad.txt", b"a\n\x00b\nc\x00\n\xff\xfed\r\ne\n"))
    assert list(echo) == [(1, "a\n"), (5, "e\n")]
    assert [(r.line, r.reason, r.detail, r.raw) for r in echo.rejections] == [
        (2, "nul_byte", "NUL byte at byte 1 of the line", "\x00b"),
        (3, "nul_byte", "NUL byte at byte 2 of the line", "c\x00"),
        (4, "not_utf8", "not UTF-8 (invalid start byte at byte 1 of the line)", "\\xff\\xfed"),
    ]
    stats = echo.reader.stats
    assert (stats.rows_read, stats.rows_rejected, stats.rejected_by_reason) == (5, 3, {"nul_byte": 2, "not_utf8": 1})


def test_the_position_is_just_after_each_line_handed_over(tmp_path: Path) -> None:
    """Offsets count every byte (CRLF, blank lines, the preamble); blank lines after a line wait for the next."""
    path = write(tmp_path / "resume.txt", b"h\n\na\r\nb\n\n\nc\nd")
    echo = Echo(path, header=True)
    assert [(line, echo.reader.position) for line, _ in echo] == [
        (3, Position(6, 3, 0)),
        (4, Position(8, 4, 0)),
        (7, Position(12, 7, 0)),
        (8, Position(13, 8, 0)),
    ]


def test_a_reader_started_at_any_position_goes_on_with_the_next_line(tmp_path: Path) -> None:
    """Stopping after any line and starting a new reader at its position gives exactly the lines that follow."""
    path = write(tmp_path / "resume.txt", b"h\n\na\r\nb\n\n\nc\nd")
    everything = list(Echo(path, header=True))
    assert everything == [(3, "a\r\n"), (4, "b\n"), (7, "c\n"), (8, "d")]
    for taken in range(len(everything) + 1):
        echo = Echo(path, header=True)
        lines = iter(echo)
        head = list(islice(lines, taken))
        position = echo.reader.position
        lines.close()
        assert head + list(Echo(path, header=True, start=position)) == everything


@pytest.mark.parametrize(
    ("start", "message"),
    [
        (Position(1, 0), "start position offset 1 line 0 lies inside the header (which ends at offset 2, line 1)"),
        (Position(100, 9), "start position offset 100 lies beyond the end of the file (13 bytes)"),
        (Position(4, 3), "start position offset 4 does not follow a line break"),
    ],
)
def test_a_start_that_cannot_begin_a_line_is_refused(tmp_path: Path, start: Position, message: str) -> None:
    """check() and iteration both refuse a start inside the preamble, past the end, or in the middle of a line."""
    path = write(tmp_path / "start.txt", b"h\n\na\r\nb\n\n\nc\nd")
    echo = Echo(path, header=True, start=start)
    for attempt in (lambda: echo.reader.check(echo.preamble), lambda: list(echo)):
        with pytest.raises(SourceError) as raised:
            attempt()
        assert str(raised.value) == f"{path}: {message}"


def test_loop_replays_from_the_top_and_numbers_the_passes(tmp_path: Path) -> None:
    """At the end of the file the next pass starts after the preamble; the position carries the pass."""
    path = write(tmp_path / "loop.txt", b"h\na\nb\n")
    echo = Echo(path, header=True, loop=True)
    lines = iter(echo)
    assert list(islice(lines, 5)) == [(2, "a\n"), (3, "b\n"), (2, "a\n"), (3, "b\n"), (2, "a\n")]
    assert echo.reader.position == Position(4, 2, 2)
    assert echo.reader.stats.passes == 3
    lines.close()
    resumed = Echo(path, header=True, loop=True, start=Position(6, 3, 0))  # at the very end of pass 0
    assert list(islice(resumed, 2)) == [(2, "a\n"), (3, "b\n")]
    assert resumed.reader.position.pass_number == 1


def test_a_pass_from_the_top_without_a_row_ends_the_loop(tmp_path: Path) -> None:
    """A file whose every line is rejected is read once, not replayed forever."""
    echo = Echo(write(tmp_path / "bad.txt", b"h\n\x00\n\n"), header=True, loop=True)
    assert list(echo) == []
    assert [r.reason for r in echo.rejections] == ["nul_byte"]
    assert echo.reader.stats.passes == 1


def test_lines_appended_before_the_end_are_read(tmp_path: Path) -> None:
    """Growth is how logs grow: the new lines follow and the pass ends quietly."""
    path = write(tmp_path / "grow.txt", b"a\nb\n")
    echo = Echo(path)
    lines = iter(echo)
    next(lines)
    with path.open("ab") as out:
        out.write(b"c\n")
    with capture_logs() as logs:
        assert list(lines) == [(2, "b\n"), (3, "c\n")]
    assert logs == []
    assert echo.reader.position == Position(6, 3, 0)


def test_a_file_cut_shorter_while_read_is_an_error(tmp_path: Path) -> None:
    """Truncated under the reader: the lines already buffered come, then SourceShrankError at the end."""
    path = ten_lines(tmp_path / "shrink.txt")
    lines = iter(Echo(path))
    next(lines)
    os.truncate(path, 20)
    read: list[tuple[int, str]] = []
    with pytest.raises(SourceShrankError) as raised:
        read.extend(lines)
    assert str(raised.value) == f"{path} shrank from 70 to 20 bytes while being read at offset 70"
    assert len(read) == 9


@pytest.mark.parametrize("loop", [False, True], ids=["once", "loop"])
def test_a_rotated_path_ends_the_stream_after_the_old_file(tmp_path: Path, loop: bool) -> None:
    """Renamed away and replaced: the old file is read to its end, source.rotated is logged, and no pass follows."""
    path = ten_lines(tmp_path / "lines.txt")
    echo = Echo(path, loop=loop)
    lines = iter(echo)
    next(lines)
    path.rename(tmp_path / "lines.txt.1")
    write(path, b"new\n")
    with capture_logs() as logs:
        assert len(list(lines)) == 9
    assert logs == [
        {
            "event": "source.rotated",
            "log_level": "warning",
            "path": str(path),
            "now_names": "another file",
            "offset": 70,
            "action": "stream ends here",
        }
    ]
    assert echo.reader.stats.passes == 1


def test_a_record_spanning_lines_is_taken_and_reading_goes_on_after_it(tmp_path: Path) -> None:
    """following() hands over the next lines; take() moves the position past them and the pass on."""
    path = write(tmp_path / "span.txt", b"a\n\nb\nc\n")
    reader = LineReader(path, max_line_size=100)
    with closing(reader.passes()) as passes:
        lines = next(passes)
        texts = iter(lines)
        first = next(texts)
        record = lines.following(first)
        assert [next(record), next(record), next(record)] == ["a\n", "\n", "b\n"]
        lines.take(record)
        assert reader.position == Position(5, 3, 0)
        assert next(texts) == "c\n"
        assert reader.position == Position(7, 4, 0)
    assert reader.stats.rows_read == 2


def test_a_record_spanning_lines_given_back_costs_its_first_line_only(tmp_path: Path) -> None:
    """give_back() drops what following() read: the next line handed over is the record's second."""
    path = write(tmp_path / "span.txt", b"a\nb\nc\n")
    reader = LineReader(path, max_line_size=100)
    with closing(reader.passes()) as passes:
        lines = next(passes)
        texts = iter(lines)
        record = lines.following(next(texts))
        assert list(islice(record, 3)) == ["a\n", "b\n", "c\n"]
        lines.give_back()
        assert reader.position == Position(2, 1, 0)
        assert list(texts) == ["b\n", "c\n"]


@pytest.mark.parametrize(("limit", "expected"), [(8, 8), (100, None)], ids=["bound", "end_of_file"])
def test_a_record_spanning_lines_stops_at_the_bound_or_the_end(
    tmp_path: Path, limit: int, expected: int | None
) -> None:
    """following() refuses to read past max_line_size bytes in all, or past the end of the file."""
    path = write(tmp_path / "span.txt", b"aaaa\nbbbb\n")
    reader = LineReader(path, max_line_size=limit)
    with closing(reader.passes()) as passes:
        lines = next(passes)
        record = lines.following(next(iter(lines)))
        assert next(record) == "aaaa\n"
        if expected is None:
            assert next(record) == "bbbb\n"
        with pytest.raises(RecordOverrunError) as raised:
            next(record)
        assert raised.value.limit == expected


def test_the_first_line_is_checked_as_a_whole_file_problem(tmp_path: Path) -> None:
    """first_line() returns None for a file of blank lines, and raises SourceError for an unusable line."""
    cases = {
        b"\n \n": None,
        b"x" * 20 + b"\n": "the header line is longer than max_field_size (10 bytes)",
        b"h\x00\n": "the header line contains NUL bytes",
        b"\n\xffh\n": "not UTF-8 text (invalid start byte at byte 1)",
        "h\n".encode("utf-16"): "not UTF-8 text (invalid start byte at byte 0); it looks like UTF-16, save it as UTF-8",
    }
    for data, message in cases.items():
        reader = LineReader(write(tmp_path / "first.txt", data), max_line_size=10)
        with closing(reader.passes()) as passes:
            lines = next(passes)
            if message is None:
                assert lines.first_line("header line") is None
                continue
            with pytest.raises(SourceError) as raised:
                lines.first_line("header line")
            assert str(raised.value) == f"{tmp_path / 'first.txt'}: {message}"


@pytest.mark.parametrize("kind", ["missing", "directory", "fifo"])
def test_a_path_that_is_not_a_readable_file_is_refused(tmp_path: Path, kind: str) -> None:
    """Missing, a directory or a named pipe (never opened, so never blocking): a one-line SourceError."""
    path = tmp_path / "input"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("needs named pipes")
        os.mkfifo(path)
    message = {"missing": "no such file", "directory": "is a directory", "fifo": "is not a regular file"}[kind]
    echo = Echo(path)
    for attempt in (lambda: echo.reader.check(echo.preamble), lambda: list(echo)):
        with pytest.raises(SourceError) as raised:
            attempt()
        assert str(raised.value) == f"{path}: {message}"


@needs_proc
def test_closing_the_lines_mid_pass_closes_the_file(tmp_path: Path) -> None:
    """The file is open while lines are pulled and closed at once when the consumer closes its iterator."""
    path = ten_lines(tmp_path / "lines.txt")
    lines = iter(Echo(path, loop=True))
    next(lines)
    assert len(open_descriptors(path)) == 1
    lines.close()
    assert open_descriptors(path) == []


def test_a_bound_under_one_byte_is_refused(tmp_path: Path) -> None:
    """max_line_size must allow at least one byte."""
    with pytest.raises(ValueError, match="max_field_size must be at least 1 byte, got 0"):
        LineReader(tmp_path / "x.txt", max_line_size=0)


# Kept from test_source.py: the same behaviour through CsvRows


@needs_proc
def test_reading_is_lazy(big_csv: Path) -> None:
    """Taking one row reads one record and only the start of a large file, not the whole of it."""
    source = CsvRows(big_csv)
    rows = iter(source)
    next(rows)
    [descriptor] = open_descriptors(big_csv)
    assert source.stats.rows_read == 1
    assert read_position(descriptor) <= 64 * 1024 < big_csv.stat().st_size // 10
    rows.close()


def test_each_iteration_reads_the_file_afresh(tmp_path: Path) -> None:
    """The source is cold: a second iteration re-reads the file and sees what it holds now."""
    path = write_generated(tmp_path / "cold.csv", 5)
    source = CsvRows(path)
    assert len(list(source)) == 5
    write_generated(path, 7)
    assert len(list(source)) == 7
    assert source.stats.rows_read == 12


def test_an_over_long_line_is_rejected_as_field_too_large_and_reading_goes_on(tmp_path: Path) -> None:
    """A line over max_field_size is skipped to its end and rejected with its line number and length."""
    path = write_generated(tmp_path / "long.csv", 3)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines.insert(3, '"' + "x" * (csv.field_size_limit() + 1) + '"\n')
    path.write_text("".join(lines), encoding="utf-8")
    rows, rejections, source = collect(path)
    assert [(r.line, r.reason) for r in rejections] == [(4, "field_too_large")]
    assert rejections[0].detail == "the line is 131076 bytes long, more than max_field_size (65536 bytes)"
    assert rejections[0].raw == '"' + "x" * (RAW_TEXT_CHARS - 1)
    assert [row.line for row in rows] == [2, 3, 5]
    assert source.stats.rejected_by_reason == {"field_too_large": 1}


def test_max_field_size_bounds_the_line_without_its_line_break(tmp_path: Path) -> None:
    """A line exactly max_field_size bytes long (before LF or CRLF) is read; one byte more is rejected."""
    path = write_generated(tmp_path / "exact.csv", 2)
    data = path.read_bytes()
    longest = max(len(line) for line in data.splitlines())
    for ending in (b"\n", b"\r\n"):
        path.write_bytes(data.replace(b"\n", ending))
        assert len(list(CsvRows(path, max_field_size=longest))) == 2
        rejections: list[Rejection] = []
        assert len(list(CsvRows(path, max_field_size=longest - 1, on_reject=rejections.append))) < 2
        assert {r.reason for r in rejections} == {"field_too_large"}


def test_a_line_without_line_breaks_is_read_in_bounded_memory(tmp_path: Path) -> None:
    """Megabytes with no line break after the header cost one chunk of memory, not the whole line."""
    path = tmp_path / "endless.csv"
    with path.open("wb") as out:
        out.write(HEADER.encode() + b"\n")
        for _ in range(64):
            out.write(b"x" * 65536)
    rejections: list[Rejection] = []
    tracemalloc.start()
    try:
        rows = list(CsvRows(path, on_reject=rejections.append, max_field_size=4096))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows == []
    assert [(r.line, r.reason) for r in rejections] == [(2, "field_too_large")]
    assert str(64 * 65536) in rejections[0].detail
    assert peak < 1_000_000


def test_nul_bytes_reject_their_line(tmp_path: Path) -> None:
    """A line holding a NUL byte is rejected as nul_byte, naming where; the lines around it are read."""
    path = write_generated(tmp_path / "nul.csv", 3)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = b"\0" + lines[2]
    path.write_bytes(b"".join(lines))
    rows, rejections, _ = collect(path)
    assert [(r.line, r.reason, r.detail) for r in rejections] == [(3, "nul_byte", "NUL byte at byte 1 of the line")]
    assert [row.line for row in rows] == [2, 4]


def test_bad_bytes_after_the_header_reject_their_line_only(tmp_path: Path) -> None:
    """Undecodable bytes deep in the file reject that line as not_utf8; the rows after it keep coming."""
    path = write_generated(tmp_path / "late.csv", 100)
    with path.open("ab") as out:
        out.write(b'"\xff\xfe"\n')
    write_generated(tmp_path / "more.csv", 3)
    with path.open("ab") as out:
        out.write((tmp_path / "more.csv").read_bytes().split(b"\n", 1)[1])
    rows, rejections, _ = collect(path)
    assert [(r.line, r.reason) for r in rejections] == [(102, "not_utf8")]
    assert rejections[0].raw == '"\\xff\\xfe"'
    assert [row.line for row in rows] == [*range(2, 102), 103, 104, 105]


# Positions and resuming, through CsvRows


def rows_after(path: Path, position: Position, *, loop: bool = False, count: int | None = None) -> list[MetricRow]:
    """The rows a new source started at ``position`` yields (the first ``count`` of them)."""
    return list(islice(CsvRows(path, start=position, loop=loop), count))


@pytest.mark.parametrize("path", [BAD_ROWS, MULTILINE], ids=["bad_rows", "multiline"])
def test_every_position_after_a_row_resumes_with_the_next_row(path: Path) -> None:
    """Stopping after any row and starting a new source at its position gives exactly the rows that follow."""
    everything = list(CsvRows(path))
    for taken in range(len(everything) + 1):
        source = CsvRows(path)
        rows = iter(source)
        head = list(islice(rows, taken))
        position = source.position
        rows.close()
        assert head + rows_after(path, position) == everything


def test_resuming_continues_the_line_numbers_and_rejections(tmp_path: Path) -> None:
    """After resuming, rows and rejections keep the line numbers they have in the file, CRLF and blank lines too."""
    path = tmp_path / "crlf.csv"
    path.write_bytes(MULTILINE.read_bytes().replace(b"\n", b"\r\n"))
    everything, all_rejections, _ = collect(path)
    source = CsvRows(path)
    rows = iter(source)
    assert next(rows).line == 3
    rejections: list[Rejection] = []
    rest = list(CsvRows(path, start=source.position, on_reject=rejections.append))
    assert [row.line for row in rest] == [row.line for row in everything[1:]] == [7, 9, 12]
    assert rejections == all_rejections
    assert rest[1].labels["note"] == "a\r\nb\r\nc"


def test_position_is_the_byte_offset_and_line_count_after_each_record(tmp_path: Path) -> None:
    """Right after row N the position is where line N+1 starts, in bytes, with N lines consumed."""
    path = write_generated(tmp_path / "offsets.csv", 30)
    line_starts = [0]
    for line in path.read_bytes().splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))
    source = CsvRows(path)
    for row in source:
        assert source.position == Position(offset=line_starts[row.line], line=row.line, pass_number=0)


def test_position_covers_rejected_records_too(tmp_path: Path) -> None:
    """Inside on_reject, the position is already past the rejected record, so a checkpoint never repeats it."""
    positions: list[Position] = []
    source = CsvRows(BAD_ROWS, on_reject=lambda rejection: positions.append(source.position))
    list(source)
    assert [position.line for position in positions] == [3, 4, 5, 6, 7, 9, 10]
    resumed: list[Rejection] = []
    list(CsvRows(BAD_ROWS, start=positions[-1], on_reject=resumed.append))
    assert resumed == []


def test_position_counts_passes_when_looping(tmp_path: Path) -> None:
    """Looping numbers the passes; a source started in pass 2 carries on in pass 2, then 3 from the top."""
    path = write_generated(tmp_path / "loop.csv", 4)
    source = CsvRows(path, loop=True)
    rows = iter(source)
    taken = list(islice(rows, 10))  # two passes and two rows of the third
    position = source.position
    rows.close()
    assert (position.pass_number, position.line) == (2, 3)
    resumed = CsvRows(path, loop=True, start=position)
    after = list(islice(resumed, 6))
    assert [row.line for row in after] == [4, 5, 2, 3, 4, 5]
    assert after[:2] == taken[2:4]
    assert resumed.position.pass_number == 3
    assert resumed.stats.passes == 2


def test_resuming_at_the_end_of_a_pass_goes_on_with_the_next_pass(tmp_path: Path) -> None:
    """A position at the end of the file is not an empty pass that stops the loop: the next pass begins."""
    path = write_generated(tmp_path / "end.csv", 3)
    source = CsvRows(path)
    list(source)
    end = source.position
    assert end.offset == path.stat().st_size
    assert rows_after(path, end) == []
    looped = CsvRows(path, loop=True, start=end)
    assert [row.line for row in islice(looped, 4)] == [2, 3, 4, 2]
    assert looped.position.pass_number == 2


@pytest.mark.parametrize(
    ("start", "message"),
    [
        (Position(offset=10, line=1), "lies inside the header"),
        (Position(offset=10_000_000, line=9), "lies beyond the end of the file"),
        (Position(offset=150, line=2), "does not follow a line break"),
    ],
)
def test_a_start_that_cannot_begin_a_record_is_a_source_error(tmp_path: Path, start: Position, message: str) -> None:
    """check() and iteration both refuse a start inside the header, past the end, or in the middle of a line."""
    path = write_generated(tmp_path / "start.csv", 3)
    for attempt in (CsvRows(path, start=start).check, lambda: list(CsvRows(path, start=start))):
        with pytest.raises(SourceError, match=message):
            attempt()


# Looping, through CsvRows


def test_loop_replays_the_file_and_accumulates_stats() -> None:
    """With loop=True the rows repeat from the top at end of file; passes and counts add up."""
    once, _, _ = collect(BAD_ROWS)
    rejections: list[Rejection] = []
    source = CsvRows(BAD_ROWS, loop=True, on_reject=rejections.append)
    twice = list(islice(source, 2 * len(once)))
    assert twice == once + once
    assert (source.stats.passes, source.stats.rows_read, source.stats.rows_rejected) == (2, 20, 14)
    assert [r.line for r in rejections[:7]] == [r.line for r in rejections[7:]]


def test_loop_over_a_file_without_good_rows_stops(tmp_path: Path) -> None:
    """A pass that yields nothing ends the loop instead of spinning on a file with nothing to replay."""
    path = tmp_path / "all_bad.csv"
    path.write_text(HEADER + '\n"2025-07-18T20:00:00Z","m"\n"bad"\n', encoding="utf-8")
    rows, rejections, source = collect(path, loop=True)
    assert rows == []
    assert [r.reason for r in rejections] == ["field_count", "field_count"]
    assert source.stats.passes == 1


def test_loop_over_a_header_only_file_stops(tmp_path: Path) -> None:
    """A file with a header and no data ends the loop after one pass."""
    path = tmp_path / "header_only.csv"
    path.write_text(HEADER + "\n", encoding="utf-8")
    rows, rejections, source = collect(path, loop=True)
    assert (rows, rejections, source.stats.passes) == ([], [], 1)


# Closing, through CsvRows


@needs_proc
def test_file_is_closed_when_exhausted() -> None:
    """Reading to the end leaves no descriptor open on the file."""
    rows = iter(CsvRows(BAD_ROWS))
    next(rows)
    assert len(open_descriptors(BAD_ROWS)) == 1
    rest = list(rows)
    assert len(rest) == 2
    assert open_descriptors(BAD_ROWS) == []


@needs_proc
def test_file_is_closed_when_the_generator_is_closed(big_csv: Path) -> None:
    """Closing the row generator mid-file closes the file at once."""
    rows = iter(CsvRows(big_csv, loop=True))
    next(rows)
    assert len(open_descriptors(big_csv)) == 1
    rows.close()
    assert open_descriptors(big_csv) == []


# File-level errors, through CsvRows


def test_missing_file(tmp_path: Path) -> None:
    """A path that does not exist is a SourceError naming it."""
    path = tmp_path / "nowhere.csv"
    assert source_error(path) == f"{path}: no such file"


def test_directory(tmp_path: Path) -> None:
    """A directory is not a CSV file."""
    assert source_error(tmp_path) == f"{tmp_path}: is a directory"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """A named pipe is refused before opening it, which would block until a writer came."""
    path = tmp_path / "pipe.csv"
    os.mkfifo(path)
    assert source_error(path) == f"{path}: is not a regular file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a file whatever its permissions")
def test_unreadable_file(tmp_path: Path) -> None:
    """A file without read permission is a SourceError saying so."""
    path = write_generated(tmp_path / "secret.csv", 1)
    path.chmod(0)
    assert source_error(path) == f"{path}: cannot be read: Permission denied"
