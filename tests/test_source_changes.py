"""CsvRows and a file that changes while it is read: growth is read, a shrink is an error, a rotation is reported."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from rxstreamer.generate import generate_file
from rxstreamer.sources import CsvRows, SourceError, SourceShrankError

HEADER = b"timestamp,metric_name,uuid,value\n"


def record(n: int) -> bytes:
    """One valid data line of 35 bytes."""
    return b'"2025-07-18T20:00:%02dZ","m","u","%d"\n' % (n % 60, n % 10)


def small_file(path: Path, rows: int) -> Path:
    path.write_bytes(HEADER + b"".join(record(n) for n in range(rows)))
    return path


def test_truncation_after_the_rows_were_buffered_is_still_an_error(tmp_path: Path) -> None:
    """A small file read whole into the buffer, then cut: the rows came, but the end reports the shrink."""
    path = small_file(tmp_path / "metrics.csv", 10)
    rows = iter(CsvRows(path))
    next(rows)
    os.truncate(path, 100)
    with pytest.raises(SourceShrankError) as raised:
        list(rows)
    assert str(raised.value) == f"{path} shrank from 383 to 100 bytes while being read at offset 383"
    assert isinstance(raised.value, SourceError)  # the pipeline and the CLI treat it as a file problem


def test_a_large_file_truncated_mid_read_stops_with_the_shrink(tmp_path: Path) -> None:
    """Cut to 1000 bytes after 10 of 2000 rows: fewer rows than the file had, then SourceShrankError."""
    path = tmp_path / "metrics.csv"
    generate_file(path, hosts=2, gpus=4, rows=2000, seed=5)
    size = path.stat().st_size
    source = CsvRows(path)
    rows = iter(source)
    for _ in range(10):
        next(rows)
    os.truncate(path, 1000)
    read: list[object] = []
    with pytest.raises(SourceShrankError, match=f"^{path} shrank from {size} to 1000 bytes while being read at offset"):
        read.extend(rows)
    assert 10 + len(read) < 2000


def test_a_file_rewritten_shorter_in_place_is_a_shrink(tmp_path: Path) -> None:
    """Truncated to zero and rewritten (the same inode), shorter than before: SourceShrankError."""
    path = small_file(tmp_path / "metrics.csv", 10)
    rows = iter(CsvRows(path))
    next(rows)
    small_file(path, 3)
    with pytest.raises(SourceShrankError, match="shrank from 383 to 138 bytes"):
        list(rows)


def test_rows_appended_before_the_end_are_read_without_complaint(tmp_path: Path) -> None:
    """Growth is how logs grow: the appended rows come after the others and the read ends normally."""
    path = small_file(tmp_path / "metrics.csv", 3)
    source = CsvRows(path)
    rows = iter(source)
    next(rows)
    with path.open("ab") as file:
        file.write(b"".join(record(n) for n in range(3, 6)))
    with capture_logs() as logs:
        assert len(list(rows)) == 5
    assert logs == []
    assert source.position.offset == 243


@pytest.mark.parametrize("loop", [False, True], ids=["once", "loop"])
def test_a_rotated_file_is_read_to_its_end_then_reported(tmp_path: Path, loop: bool) -> None:
    """Renamed away and replaced: every row of the old file, a source.rotated warning, then the end (even looping)."""
    path = small_file(tmp_path / "metrics.csv", 10)
    source = CsvRows(path, loop=loop)
    rows = iter(source)
    next(rows)
    path.rename(tmp_path / "metrics.csv.1")
    small_file(path, 50)
    with capture_logs() as logs:
        assert len(list(rows)) == 9
    assert logs == [
        {
            "event": "source.rotated",
            "log_level": "warning",
            "path": str(path),
            "now_names": "another file",
            "offset": 383,
            "action": "stream ends here",
        }
    ]
    assert source.stats.passes == 1


def test_a_path_removed_while_being_read_is_reported_as_rotated(tmp_path: Path) -> None:
    """Deleted (or moved) without a successor: the open file is read to its end and the warning says so."""
    path = small_file(tmp_path / "metrics.csv", 10)
    rows = iter(CsvRows(path))
    next(rows)
    path.unlink()
    with capture_logs() as logs:
        assert len(list(rows)) == 9
    assert [(entry["event"], entry["now_names"]) for entry in logs] == [("source.rotated", "no file")]


def test_each_pass_of_a_loop_measures_the_file_it_opened(tmp_path: Path) -> None:
    """A file that grew during pass 1 is read whole by pass 2; then a cut during pass 2 is measured against it."""
    path = small_file(tmp_path / "metrics.csv", 3)
    source = CsvRows(path, loop=True)
    rows = iter(source)
    next(rows)
    with path.open("ab") as file:
        file.write(b"".join(record(n) for n in range(3, 6)))
    assert [next(rows).line for _ in range(5 + 6)] == [3, 4, 5, 6, 7, 2, 3, 4, 5, 6, 7]
    next(rows)  # pass 3 opened the file at 243 bytes
    os.truncate(path, 138)
    with pytest.raises(SourceShrankError, match="shrank from 243 to 138 bytes"):
        list(rows)
