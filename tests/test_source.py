"""CsvRows and rows_from_csv: lazy reading of DCGM CSV, bad records reported, bad files failed early."""

from __future__ import annotations

import csv
import os
import tracemalloc
from itertools import islice
from pathlib import Path

import pytest
from reactivex import operators as ops
from reactivex.notification import OnError
from reactivex.testing import ReactiveTest, TestScheduler

from rxstreamer.generate import HEADER, generate_file, generate_records
from rxstreamer.model import MetricRow, Position, Rejection
from rxstreamer.source import RAW_TEXT_CHARS, CsvRows, SourceError, rows_from_csv

DATA = Path(__file__).parent / "data"
BAD_ROWS = DATA / "bad_rows.csv"
MULTILINE = DATA / "multiline.csv"
MALFORMED = DATA / "malformed"
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


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.csv"
    generate_file(path, hosts=4, gpus=8, rows=12_800)
    return path


# Reading


def test_good_rows_come_through_and_bad_ones_are_reported_with_lines() -> None:
    """Bad records go to on_reject with their line and reason while the good ones are still yielded."""
    rows, rejections, source = collect(BAD_ROWS)
    assert [row.line for row in rows] == [2, 8, 11]
    assert [row.value for row in rows] == [42.0, 612.125, 61.0]
    assert [(r.line, r.reason) for r in rejections] == [
        (3, "field_count"),
        (4, "value_not_numeric"),
        (5, "value_not_finite"),
        (6, "bad_timestamp"),
        (7, "missing_uuid"),
        (9, "missing_metric_name"),
        (10, "bad_labels"),
    ]
    assert (source.stats.rows_read, source.stats.rows_rejected, source.stats.passes) == (10, 7, 1)


def test_line_numbers_are_where_records_start_across_blank_lines_and_multiline_fields() -> None:
    """Blank lines are skipped silently and a record spanning lines is numbered by its first line."""
    rows, rejections, source = collect(MULTILINE)
    assert [row.line for row in rows] == [3, 7, 9, 12]
    assert [(r.line, r.reason) for r in rejections] == [(8, "value_not_numeric")]
    assert rows[0].labels["note"] == "line one\nline two"
    assert rows[2].labels["note"] == "a\nb\nc"
    assert (source.stats.rows_read, source.stats.rows_rejected) == (5, 1)


def test_without_on_reject_bad_records_are_still_counted() -> None:
    """Rejections are counted in stats even when nobody listens for them."""
    source = CsvRows(BAD_ROWS)
    assert len(list(source)) == 3
    assert source.stats.rows_rejected == 7


def test_rows_match_the_generated_records(tmp_path: Path) -> None:
    """Every record of a generated file comes back as a row, in file order, with nothing rejected."""
    path = write_generated(tmp_path / "rows.csv", 200)
    rows, rejections, _ = collect(path)
    expected = list(islice(generate_records(hosts=2, gpus=4, scrapes=3, seed=5), 200))
    assert [(row.uuid, row.metric_name, row.value) for row in rows] == [
        (fields[4], fields[1], float(fields[10])) for fields in expected
    ]
    assert rejections == []


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


def test_an_unterminated_quote_costs_its_line_only(tmp_path: Path) -> None:
    """A quote that never closes is rejected on its first line, and every row after it is still read."""
    path = write_generated(tmp_path / "quote.csv", 6)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2][:100] + b"\n"  # inside a quoted field: the rest of the line is lost
    path.write_bytes(b"".join(lines))
    rows, rejections, source = collect(path)
    assert [(r.line, r.reason) for r in rejections] == [(3, "unterminated_quote")]
    assert rejections[0].raw == lines[2][:100].decode()
    assert [row.line for row in rows] == [2, 4, 5, 6, 7]
    assert source.stats.rows_read == 6


def test_an_open_quote_runs_out_at_max_field_size_not_at_the_end_of_the_file(tmp_path: Path) -> None:
    """A quote that stays open past max_field_size is rejected there; reading resumes on the next line."""
    path = tmp_path / "open.csv"
    good = write_generated(tmp_path / "good.csv", 40).read_bytes().splitlines(keepends=True)
    # Unquoted rows after the open quote: no quote closes it, so only the bound can.
    unquoted = [line.replace(b'"', b"") for line in good[1:]]
    path.write_bytes(b"".join([good[0], b'"2025-07-18T20:00:00Z,open\n', *unquoted]))
    rejections: list[Rejection] = []
    source = CsvRows(path, on_reject=rejections.append, max_field_size=2048)
    rows = list(source)
    assert rejections[0].line == 2
    assert rejections[0].reason == "unterminated_quote"
    assert "still open after max_field_size (2048 bytes)" in rejections[0].detail
    # Unquoted, labels_raw's commas split it into more fields: what matters is that each line is its own record.
    assert [r.line for r in rejections[1:]] == list(range(3, 43))
    assert rows == []
    assert source.stats.rows_read == 41


def test_a_bare_carriage_return_is_a_csv_error_rejection(tmp_path: Path) -> None:
    """A record the csv module refuses (a lone CR between fields) is rejected and reading goes on."""
    path = write_generated(tmp_path / "cr.csv", 3)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'","', b'"\r"', 1)
    path.write_bytes(b"".join(lines))
    rows, rejections, _ = collect(path)
    assert [(r.line, r.reason) for r in rejections] == [(3, "csv_error")]
    assert [row.line for row in rows] == [2, 4]


def test_nul_bytes_reject_their_line(tmp_path: Path) -> None:
    """A line holding a NUL byte is rejected as nul_byte, naming where; the lines around it are read."""
    path = write_generated(tmp_path / "nul.csv", 3)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = b"\0" + lines[2]
    path.write_bytes(b"".join(lines))
    rows, rejections, _ = collect(path)
    assert [(r.line, r.reason, r.detail) for r in rejections] == [(3, "nul_byte", "NUL byte at byte 1 of the line")]
    assert [row.line for row in rows] == [2, 4]


def test_rejections_carry_the_raw_text_without_its_line_break(tmp_path: Path) -> None:
    """Rejection.raw is the record as written, minus the CRLF, for a quarantine file to replay."""
    path = tmp_path / "raw.csv"
    bad = '"2025-07-18T20:00:00Z","m","GPU-1","n/a"'
    path.write_bytes(f"timestamp,metric_name,uuid,value\r\n{bad}\r\n".encode())
    _, rejections, _ = collect(path)
    assert [(r.line, r.reason, r.raw) for r in rejections] == [(2, "value_not_numeric", bad)]


# Positions and resuming


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


def test_invalid_limits_and_modes_are_refused() -> None:
    """A max_field_size under one byte and an unknown sentinel mode fail at construction."""
    with pytest.raises(ValueError, match="max_field_size"):
        CsvRows(BAD_ROWS, max_field_size=0)
    with pytest.raises(ValueError, match="sentinels"):
        CsvRows(BAD_ROWS, sentinels="drop")  # type: ignore[arg-type]


def test_rejected_by_reason_adds_up_to_rows_rejected() -> None:
    """stats.rejected_by_reason counts each reason, and every record read is either yielded or rejected."""
    rows, _, source = collect(BAD_ROWS)
    assert source.stats.rejected_by_reason == {
        "field_count": 1,
        "value_not_numeric": 1,
        "value_not_finite": 1,
        "bad_timestamp": 1,
        "missing_uuid": 1,
        "missing_metric_name": 1,
        "bad_labels": 1,
    }
    assert source.stats.rows_read == len(rows) + sum(source.stats.rejected_by_reason.values())


# Looping


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


# Closing


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


# File-level errors


def source_error(path: Path) -> str:
    """The SourceError message from check(), asserting that iterating fails the same way."""
    with pytest.raises(SourceError) as from_iteration:
        list(CsvRows(path))
    with pytest.raises(SourceError) as from_check:
        CsvRows(path).check()
    assert str(from_check.value) == str(from_iteration.value)
    assert "\n" not in str(from_check.value)
    return str(from_check.value)


def test_check_accepts_a_good_file() -> None:
    """check() returns quietly for a readable file with a usable header, bad records notwithstanding."""
    CsvRows(BAD_ROWS).check()


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


def test_empty_file(tmp_path: Path) -> None:
    """A file with no header line at all is a SourceError."""
    path = tmp_path / "empty.csv"
    path.write_text("\n\n", encoding="utf-8")
    assert source_error(path) == f"{path}: is empty (no header line)"


def test_missing_columns(tmp_path: Path) -> None:
    """A header without required columns is a SourceError listing what is missing."""
    path = tmp_path / "columns.csv"
    path.write_text("timestamp,uuid,labels_raw\n", encoding="utf-8")
    message = source_error(path)
    assert message == f"{path}: missing required column(s) metric_name, value; found: timestamp, uuid, labels_raw"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a file whatever its permissions")
def test_unreadable_file(tmp_path: Path) -> None:
    """A file without read permission is a SourceError saying so."""
    path = write_generated(tmp_path / "secret.csv", 1)
    path.chmod(0)
    assert source_error(path) == f"{path}: cannot be read: Permission denied"


def test_binary_file(tmp_path: Path) -> None:
    """A file that is not UTF-8 text is refused at the header."""
    path = tmp_path / "binary.csv"
    path.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(128, 256)))
    assert source_error(path).startswith(f"{path}: not UTF-8 text")


def test_utf16_file_is_refused_with_a_hint(tmp_path: Path) -> None:
    """A file saved as UTF-16 (as some spreadsheets do) is refused at the header, saying what it looks like."""
    path = tmp_path / "utf16.csv"
    path.write_bytes((HEADER + "\n").encode("utf-16"))
    assert source_error(path).endswith("it looks like UTF-16, save it as UTF-8")


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


# rows_from_csv


def test_observable_emits_every_row_then_completes() -> None:
    """Subscribing emits the file's rows in order and completes, all at subscription time."""
    scheduler = TestScheduler()
    rejections: list[Rejection] = []
    results = scheduler.start(lambda: rows_from_csv(BAD_ROWS, on_reject=rejections.append, scheduler=scheduler))
    expected = list(CsvRows(BAD_ROWS))
    assert results.messages == [
        *(ReactiveTest.on_next(ReactiveTest.subscribed, row) for row in expected),
        ReactiveTest.on_completed(ReactiveTest.subscribed),
    ]
    assert len(rejections) == 7


def test_observable_takes_the_same_limits_as_the_iterable() -> None:
    """rows_from_csv passes max_field_size and sentinels through to CsvRows."""
    rejections: list[Rejection] = []
    rows: list[MetricRow] = []
    rows_from_csv(BAD_ROWS, on_reject=rejections.append, max_field_size=100).subscribe(rows.append)
    assert rows == []
    assert {r.reason for r in rejections} == {"field_too_large"}
    flagged: list[MetricRow] = []
    rows_from_csv(MALFORMED / "dcgm_sentinel.csv", sentinels="flag").subscribe(flagged.append)
    assert len(flagged) == 6


def test_observable_is_cold() -> None:
    """Each subscription reads the file again from the top."""
    observable = rows_from_csv(BAD_ROWS)
    first: list[MetricRow] = []
    second: list[MetricRow] = []
    observable.subscribe(first.append)
    observable.subscribe(second.append)
    assert [row.line for row in first] == [row.line for row in second] == [2, 8, 11]


def test_observable_reports_file_errors_on_error(tmp_path: Path) -> None:
    """A SourceError reaches the observer as on_error, not as an exception out of subscribe."""
    scheduler = TestScheduler()
    results = scheduler.start(lambda: rows_from_csv(tmp_path / "missing.csv", scheduler=scheduler))
    [message] = results.messages
    assert message.time == ReactiveTest.subscribed
    assert isinstance(message.value, OnError)
    assert isinstance(message.value.exception, SourceError)


@needs_proc
def test_disposing_the_observable_mid_stream_closes_the_file(big_csv: Path) -> None:
    """take(n) disposing an endless looped source stops the read and closes the file."""
    descriptors_while_reading: list[int] = []
    seen: list[MetricRow] = []
    completed: list[bool] = []

    def on_next(row: MetricRow) -> None:
        seen.append(row)
        descriptors_while_reading.append(len(open_descriptors(big_csv)))

    rows_from_csv(big_csv, loop=True).pipe(ops.take(5)).subscribe(
        on_next=on_next, on_completed=lambda: completed.append(True)
    )
    assert [row.line for row in seen] == [2, 3, 4, 5, 6]
    assert completed == [True]
    assert descriptors_while_reading == [1] * 5
    assert open_descriptors(big_csv) == []
