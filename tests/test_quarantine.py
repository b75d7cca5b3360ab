"""Quarantine and RejectionReporter: rejected rows kept for replay, and logged without flooding the log."""

from __future__ import annotations

import csv
import errno
import io
import os
from pathlib import Path
from typing import TextIO

import pytest
import structlog
from structlog.testing import capture_logs

from rxstreamer.encoding import BatchEncoder
from rxstreamer.model import Rejection
from rxstreamer.pipeline import build_pipeline
from rxstreamer.quarantine import QUARANTINE_COLUMNS, Quarantine, QuarantineError, RejectionReporter
from rxstreamer.retry import RetryPolicy
from rxstreamer.sinks import InMemorySink
from rxstreamer.sources import CsvRows

DATA = Path(__file__).parent / "data"


def rejected(line: int, reason: str = "value_not_numeric", raw: str = '"x","n/a"') -> Rejection:
    return Rejection(line, reason, f"detail of line {line}", raw)


def read_quarantine(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as file:
        return list(csv.reader(file))


class FakeClock:
    """A clock the test moves by hand, so that intervals are checked without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# Quarantine


def test_quarantine_writes_a_header_then_one_row_per_rejection(tmp_path: Path) -> None:
    """A new file gets line,reason,detail,raw and then each rejection, raw text with quotes and commas intact."""
    path = tmp_path / "rejected.csv"
    with Quarantine(path) as quarantine:
        quarantine(rejected(3, raw='"2025-07-18T20:00:00Z","a,b","n/a"'))
        quarantine(rejected(9, "field_count", raw="one\ntwo"))
    assert read_quarantine(path) == [
        list(QUARANTINE_COLUMNS),
        ["3", "value_not_numeric", "detail of line 3", '"2025-07-18T20:00:00Z","a,b","n/a"'],
        ["9", "field_count", "detail of line 9", "one\ntwo"],
    ]
    assert quarantine.written == 2


def test_quarantine_is_not_created_until_something_is_rejected(tmp_path: Path) -> None:
    """A clean run leaves no quarantine file behind."""
    path = tmp_path / "rejected.csv"
    Quarantine(path).close()
    assert not path.exists()


def test_each_rejection_is_on_disk_as_soon_as_it_is_written(tmp_path: Path) -> None:
    """Rows are flushed one by one, so another reader (or a crash) sees every rejection written so far."""
    path = tmp_path / "rejected.csv"
    quarantine = Quarantine(path)
    quarantine(rejected(2))
    assert len(read_quarantine(path)) == 2
    quarantine(rejected(5))
    assert len(read_quarantine(path)) == 3
    quarantine.close()


def test_quarantine_appends_to_an_existing_file_without_a_second_header(tmp_path: Path) -> None:
    """A resumed run adds its rejections after the previous run's, under the one header."""
    path = tmp_path / "rejected.csv"
    with Quarantine(path) as first:
        first(rejected(2))
    with Quarantine(path) as second:
        second(rejected(7))
    assert [row[0] for row in read_quarantine(path)] == ["line", "2", "7"]


def test_quarantine_writes_the_header_into_an_existing_empty_file(tmp_path: Path) -> None:
    """An empty file (created by a wrapper script, say) still gets the header."""
    path = tmp_path / "rejected.csv"
    path.touch()
    with Quarantine(path) as quarantine:
        quarantine(rejected(4))
    assert read_quarantine(path)[0] == list(QUARANTINE_COLUMNS)


def test_close_is_idempotent_and_a_later_rejection_reopens(tmp_path: Path) -> None:
    """close() twice is harmless; writing after close appends again."""
    path = tmp_path / "rejected.csv"
    quarantine = Quarantine(path)
    quarantine(rejected(2))
    quarantine.close()
    quarantine.close()
    quarantine(rejected(3))
    quarantine.close()
    assert [row[0] for row in read_quarantine(path)] == ["line", "2", "3"]


def test_open_reports_an_unwritable_path_early(tmp_path: Path) -> None:
    """open() raises the OSError at once, so the service can fail at start-up rather than at the first bad row."""
    quarantine = Quarantine(tmp_path / "no" / "such" / "dir" / "rejected.csv")
    with pytest.raises(FileNotFoundError):
        quarantine.open()


def test_quarantine_of_a_real_source_holds_every_rejected_record(tmp_path: Path) -> None:
    """Wired as on_reject, the quarantine holds each rejected line of bad_rows.csv exactly as written."""
    path = tmp_path / "rejected.csv"
    source_lines = (DATA / "bad_rows.csv").read_text(encoding="utf-8").splitlines()
    with Quarantine(path) as quarantine:
        list(CsvRows(DATA / "bad_rows.csv", on_reject=quarantine))
    rows = read_quarantine(path)[1:]
    assert [int(row[0]) for row in rows] == [3, 4, 5, 6, 7, 9, 10]
    assert [row[3] for row in rows] == [source_lines[int(row[0]) - 1] for row in rows]


class DiskFills(io.FileIO):
    """A real file on a device that fills after ``room`` bytes: later writes raise ENOSPC, as write(2) does."""

    def __init__(self, path: Path, room: int) -> None:
        super().__init__(path, "a")
        self.room = room

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = super().write(bytes(data[: self.room]))
        self.room -= written
        return written


class CloseFails(io.FileIO):
    """A real file whose close reports an I/O error after releasing the descriptor, as NFS may."""

    def close(self) -> None:
        was_open = not self.closed
        super().close()
        if was_open:
            raise OSError(errno.EIO, os.strerror(errno.EIO))


def text_over(raw: io.FileIO) -> TextIO:
    return io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8", errors="backslashreplace", newline="")


HEADER_AND_ONE_ROW = len("line,reason,detail,raw\n") + len('2,value_not_numeric,detail of line 2,"""x"",""n/a"""\n')


def test_a_full_disk_is_a_quarantine_error_naming_the_path_and_the_reason(tmp_path: Path) -> None:
    """ENOSPC on the second row: QuarantineError with path and OS reason; the first row is kept; close is quiet."""
    path = tmp_path / "rejected.csv"
    quarantine = Quarantine(path, opener=lambda opened: text_over(DiskFills(opened, HEADER_AND_ONE_ROW)))
    quarantine(rejected(2))
    with pytest.raises(QuarantineError) as raised:
        quarantine(rejected(5))
    assert str(raised.value) == (
        f"cannot write the rejected row of line 5 to telemetry.rejected_path {path}: No space left on device"
    )
    assert quarantine.written == 1
    with capture_logs() as logs:
        quarantine.close()
    assert logs == []
    assert [row[0] for row in read_quarantine(path)] == ["line", "2"]


def test_close_never_raises_and_logs_a_failing_last_flush(tmp_path: Path) -> None:
    """An I/O error reported by close() becomes a quarantine.close_failed warning, so the run's summary follows."""
    path = tmp_path / "rejected.csv"
    quarantine = Quarantine(path, opener=lambda opened: text_over(CloseFails(opened, "a")))
    quarantine(rejected(2))
    with capture_logs() as logs:
        quarantine.close()
        quarantine.close()
    assert logs == [
        {"event": "quarantine.close_failed", "log_level": "warning", "path": str(path), "error": "Input/output error"}
    ]


def test_a_quarantine_that_cannot_write_ends_the_source_iteration(tmp_path: Path) -> None:
    """on_reject runs inside the row iterator: its QuarantineError is the iterator's error, after the rows before."""
    path = tmp_path / "rejected.csv"
    room_for_the_header = len("line,reason,detail,raw\n")
    quarantine = Quarantine(path, opener=lambda opened: text_over(DiskFills(opened, room_for_the_header)))
    rows = iter(CsvRows(DATA / "bad_rows.csv", on_reject=quarantine))
    assert next(rows).line == 2  # then line 3 is rejected and cannot be written
    with pytest.raises(QuarantineError, match=r"line 3 to telemetry\.rejected_path"):
        next(rows)
    quarantine.close()
    assert read_quarantine(path) == [list(QUARANTINE_COLUMNS)]


def test_a_quarantine_that_cannot_write_ends_the_pipeline_with_its_error(tmp_path: Path) -> None:
    """Through build_pipeline the QuarantineError reaches on_error: the stream stops instead of losing rows."""
    path = tmp_path / "rejected.csv"
    quarantine = Quarantine(path, opener=lambda opened: text_over(DiskFills(opened, 0)))
    rows = CsvRows(DATA / "bad_rows.csv", on_reject=quarantine)
    publisher = InMemorySink()
    pipeline = build_pipeline(rows, publisher, BatchEncoder("p"), batch_size=2, interval=0, retry=RetryPolicy())
    with pytest.raises(QuarantineError, match="No space left on device"):
        pipeline.run()
    quarantine.close()
    assert publisher.batches == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_device_fails_at_open_with_enospc() -> None:
    """/dev/full cannot take even the header: open() raises ENOSPC, which the service reports at start-up."""
    quarantine = Quarantine("/dev/full")
    with pytest.raises(OSError, match="No space left on device") as raised:
        quarantine.open()
    assert raised.value.errno == errno.ENOSPC
    quarantine.close()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_fifo_nobody_reads_fails_at_open_instead_of_blocking(tmp_path: Path) -> None:
    """Opening a FIFO for writing would wait for a reader forever; it fails with ENXIO instead."""
    path = tmp_path / "rejected.csv"
    os.mkfifo(path)
    with pytest.raises(OSError, match="No such device or address") as raised:
        Quarantine(path).open()
    assert raised.value.errno == errno.ENXIO


# RejectionReporter


def test_the_first_rejections_are_logged_in_full() -> None:
    """Up to in_full rejections each get a row.rejected line with line, reason and detail."""
    reporter = RejectionReporter(in_full=2, interval=10, clock=FakeClock())
    with capture_logs() as logs:
        reporter(rejected(3))
        reporter(rejected(4, "bad_labels"))
    assert logs == [
        {
            "event": "row.rejected",
            "log_level": "warning",
            "line": 3,
            "reason": "value_not_numeric",
            "detail": "detail of line 3",
        },
        {
            "event": "row.rejected",
            "log_level": "warning",
            "line": 4,
            "reason": "bad_labels",
            "detail": "detail of line 4",
        },
    ]


def test_after_in_full_rejections_are_summarised_at_most_once_per_interval() -> None:
    """Later rejections are counted by reason and logged as one row.rejections_suppressed per interval."""
    clock = FakeClock()
    reporter = RejectionReporter(in_full=1, interval=10, clock=clock)
    with capture_logs() as logs:
        reporter(rejected(2))  # in full
        reporter(rejected(3))  # counting starts
        clock.now += 4
        reporter(rejected(4, "bad_labels"))
        clock.now += 6
        reporter(rejected(5))  # 10 s since counting started: summary
        clock.now += 1
        reporter(rejected(6))
    assert [entry["event"] for entry in logs] == ["row.rejected", "row.rejections_suppressed"]
    assert logs[1]["count"] == 3
    assert logs[1]["by_reason"] == {"bad_labels": 1, "value_not_numeric": 2}
    assert logs[1]["total_rejected"] == 4
    assert reporter.suppressed == 1


def test_flush_logs_what_is_left_and_nothing_when_nothing_is() -> None:
    """flush() reports the counted-but-unlogged rejections once; a second flush logs nothing."""
    clock = FakeClock()
    reporter = RejectionReporter(in_full=0, interval=60, clock=clock)
    with capture_logs() as logs:
        reporter(rejected(2, "nul_byte"))
        reporter(rejected(3, "nul_byte"))
        reporter.flush()
        reporter.flush()
    assert [(entry["event"], entry["count"], entry["by_reason"]) for entry in logs] == [
        ("row.rejections_suppressed", 2, {"nul_byte": 2})
    ]
    assert (reporter.total, reporter.suppressed) == (2, 0)


def test_a_zero_interval_summarises_every_suppressed_rejection() -> None:
    """interval=0 means no rate limit: each suppressed rejection is its own summary."""
    reporter = RejectionReporter(in_full=0, interval=0, clock=FakeClock())
    with capture_logs() as logs:
        reporter(rejected(2))
        reporter(rejected(3))
    assert [entry["count"] for entry in logs] == [1, 1]


def test_reporter_and_quarantine_compose_as_one_on_reject(tmp_path: Path) -> None:
    """Both are plain callables, so one on_reject can feed both."""
    path = tmp_path / "rejected.csv"
    reporter = RejectionReporter(in_full=3, interval=10, clock=FakeClock(), logger=structlog.get_logger())
    with Quarantine(path) as quarantine, capture_logs() as logs:

        def on_reject(rejection: Rejection) -> None:
            quarantine(rejection)
            reporter(rejection)

        list(CsvRows(DATA / "bad_rows.csv", on_reject=on_reject))
        reporter.flush()
    assert len(read_quarantine(path)) == 8
    assert [entry["event"] for entry in logs] == ["row.rejected"] * 3 + ["row.rejections_suppressed"]
    assert logs[-1]["count"] == 4


def test_reporter_refuses_negative_settings() -> None:
    """A negative in_full or interval is a programming error, reported at construction."""
    with pytest.raises(ValueError, match="in_full"):
        RejectionReporter(in_full=-1)
    with pytest.raises(ValueError, match="interval"):
        RejectionReporter(interval=-1)
