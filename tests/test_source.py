"""CsvRows and rows_from_csv: lazy reading of DCGM CSV, bad records reported, bad files failed early."""

from __future__ import annotations

import csv
import os
from itertools import islice
from pathlib import Path

import pytest
from reactivex import operators as ops
from reactivex.notification import OnError
from reactivex.testing import ReactiveTest, TestScheduler

from rxstreamer.generate import HEADER, generate_file, generate_records
from rxstreamer.model import MetricRow, Rejection
from rxstreamer.source import CsvRows, SourceError, rows_from_csv

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


def test_an_unparseable_record_is_a_csv_error_rejection(tmp_path: Path) -> None:
    """A record the csv module refuses (a field over its size limit) is rejected and reading goes on."""
    path = write_generated(tmp_path / "long.csv", 3)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines.insert(3, '"' + "x" * (csv.field_size_limit() + 1) + '"\n')
    path.write_text("".join(lines), encoding="utf-8")
    rows, rejections, _ = collect(path)
    assert [(r.line, r.reason) for r in rejections] == [(4, "csv_error")]
    assert "field larger than field limit" in rejections[0].detail
    assert [row.line for row in rows] == [2, 3, 5]


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


def test_bad_bytes_after_the_header_end_the_stream_with_a_source_error(tmp_path: Path) -> None:
    """Undecodable bytes deep in the file stop iteration with a SourceError after the rows before them."""
    path = write_generated(tmp_path / "late.csv", 100)
    with path.open("ab") as out:
        out.write(b'"\xff\xfe"\n')
    CsvRows(path).check()
    rows: list[MetricRow] = []
    with pytest.raises(SourceError, match="not UTF-8 text after line"):
        rows.extend(CsvRows(path))
    assert 0 < len(rows) <= 100


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
