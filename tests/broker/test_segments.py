"""One topic's segment files on a real disk: append, recovery, damage, rollover, deletion and fsync."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest
import structlog

from rxstreamer.broker import segments
from rxstreamer.broker.framing import Record, encode
from rxstreamer.broker.segments import DataDirError, FsyncPolicy, SegmentLog, segment_name
from rxstreamer.broker.store import StorageFailed

RECORD_BYTES = len(encode(Record(0, "p", 0, 0, {}, b"x" * 10)))


class CountingFsync:
    """Counts flushes instead of doing them: the policy, not the disk, is under test."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls = 0
        self.fail_on_call = fail_on_call

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise OSError(errno.EIO, "Input/output error")


def record(offset: int, payload: bytes = b"x" * 10) -> Record:
    """A record of RECORD_BYTES bytes on disk (for the default payload)."""
    return Record(offset, "p", offset, 1_700_000_000_000_000_000, {}, payload)


def open_log(
    directory: Path,
    *,
    policy: FsyncPolicy = "always",
    segment_bytes: int = 1 << 20,
    fsync: CountingFsync | None = None,
) -> tuple[SegmentLog, list[Record]]:
    directory.mkdir(exist_ok=True)
    log = SegmentLog(directory, topic="t", policy=policy, segment_bytes=segment_bytes, fsync=fsync or CountingFsync())
    return log, list(log.recover())


def write_log(directory: Path, count: int, *, segment_bytes: int = 1 << 20) -> None:
    log, _ = open_log(directory, segment_bytes=segment_bytes)
    for offset in range(count):
        log.append(record(offset))
    log.close()


def segment_files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_appended_records_are_recovered(tmp_path: Path) -> None:
    """Everything appended comes back in order, and the next offset follows the last record."""
    write_log(tmp_path, 3)
    log, recovered = open_log(tmp_path)
    assert recovered == [record(0), record(1), record(2)]
    assert log.next_offset == 3
    assert segment_files(tmp_path) == [segment_name(0)]


def test_records_survive_without_close(tmp_path: Path) -> None:
    """A log never closed (the process was killed) still has every appended record."""
    crashed, _ = open_log(tmp_path, policy="never")
    crashed.append(record(0))
    crashed.append(record(1))
    _, recovered = open_log(tmp_path)
    assert [r.offset for r in recovered] == [0, 1]


def test_offsets_continue_after_recovery(tmp_path: Path) -> None:
    """A recovered log takes the next offset and refuses one out of order."""
    write_log(tmp_path, 2)
    log, _ = open_log(tmp_path)
    with pytest.raises(ValueError, match="out of order"):
        log.append(record(0))
    log.append(record(2))
    log.close()
    assert [r.offset for r in open_log(tmp_path)[1]] == [0, 1, 2]


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(encode(record(2))[: RECORD_BYTES // 2], id="half-record"),
        pytest.param(encode(record(2))[:5], id="half-header"),
        pytest.param(encode(record(2))[:-1] + b"\x00", id="bad-checksum"),
        pytest.param(b"\x00" * 4096, id="zeros"),
        pytest.param(b"\xa1garbage\xa1\xa1", id="garbage"),
    ],
)
def test_damaged_tail_is_cut_off_and_appends_continue(tmp_path: Path, tail: bytes) -> None:
    """What an interrupted append leaves at the end is cut off with a warning; the log goes on after it."""
    write_log(tmp_path, 2)
    path = tmp_path / segment_name(0)
    with path.open("ab") as segment:
        segment.write(tail)
    with structlog.testing.capture_logs() as logs:
        log, recovered = open_log(tmp_path)
    assert [r.offset for r in recovered] == [0, 1]
    [truncated] = [entry for entry in logs if entry["event"] == "broker.log_truncated"]
    assert truncated["topic"] == "t"
    assert truncated["segment"] == segment_name(0)
    assert (truncated["position"], truncated["bytes_cut"]) == (2 * RECORD_BYTES, len(tail))
    assert path.stat().st_size == 2 * RECORD_BYTES
    log.append(record(2))
    log.close()
    assert [r.offset for r in open_log(tmp_path)[1]] == [0, 1, 2]


def test_corruption_mid_file_refuses_with_file_and_offset(tmp_path: Path) -> None:
    """A damaged record followed by intact ones stops recovery, naming the file and byte, and cuts nothing."""
    write_log(tmp_path, 3)
    path = tmp_path / segment_name(0)
    data = bytearray(path.read_bytes())
    data[2 * RECORD_BYTES - 1] ^= 0xFF  # the last payload byte of the record at offset 1
    path.write_bytes(bytes(data))
    with pytest.raises(DataDirError) as refused:
        open_log(tmp_path)
    message = str(refused.value)
    assert str(path) in message
    assert f"corrupt at byte {RECORD_BYTES} (record body checksum mismatch)" in message
    assert f"intact records follow at byte {2 * RECORD_BYTES}" in message
    assert path.stat().st_size == 3 * RECORD_BYTES


def test_damage_at_end_of_earlier_segment_refuses(tmp_path: Path) -> None:
    """Only the last segment's tail can be a torn append; an earlier one's was acknowledged data."""
    write_log(tmp_path, 3, segment_bytes=2 * RECORD_BYTES)
    first = tmp_path / segment_name(0)
    os.truncate(first, 2 * RECORD_BYTES - 1)
    expected = rf"{re.escape(str(first))} is damaged at byte {RECORD_BYTES} .* later segments exist"
    with pytest.raises(DataDirError, match=expected):
        open_log(tmp_path)


def test_missing_segment_refuses(tmp_path: Path) -> None:
    """A gap in the offsets between segments means a file was lost, which recovery must not paper over."""
    write_log(tmp_path, 3, segment_bytes=RECORD_BYTES)
    (tmp_path / segment_name(1)).unlink()
    with pytest.raises(DataDirError, match=rf"{segment_name(2)} starts at offset 2 .* ends at offset 0"):
        open_log(tmp_path)


def test_record_in_the_wrong_segment_refuses(tmp_path: Path) -> None:
    """A segment whose records do not carry the offsets its name promises is not this topic's log."""
    write_log(tmp_path, 1)
    (tmp_path / segment_name(0)).rename(tmp_path / segment_name(7))
    with pytest.raises(DataDirError, match="holds offset 0 at byte 0 where offset 7 belongs"):
        open_log(tmp_path)


def test_segments_roll_over_and_are_named_by_first_offset(tmp_path: Path) -> None:
    """A record that would take the active segment past segment_bytes starts a new one."""
    write_log(tmp_path, 5, segment_bytes=2 * RECORD_BYTES + RECORD_BYTES // 2)
    assert segment_files(tmp_path) == [segment_name(0), segment_name(2), segment_name(4)]
    assert [r.offset for r in open_log(tmp_path)[1]] == [0, 1, 2, 3, 4]


def test_record_larger_than_segment_bytes_gets_a_segment_of_its_own(tmp_path: Path) -> None:
    """An empty segment takes any record, so a large message never fails for want of a segment."""
    log, _ = open_log(tmp_path, segment_bytes=1)
    log.append(record(0, b"y" * 100))
    log.append(record(1))
    log.close()
    assert segment_files(tmp_path) == [segment_name(0), segment_name(1)]


def test_release_deletes_only_fully_released_segments(tmp_path: Path) -> None:
    """Segments go whole, oldest first, once every record in them is released."""
    write_log(tmp_path, 5, segment_bytes=2 * RECORD_BYTES)
    log, _ = open_log(tmp_path, segment_bytes=2 * RECORD_BYTES)
    log.release_before(3)  # 0-1 released; 2 released but 3 still retained
    assert segment_files(tmp_path) == [segment_name(2), segment_name(4)]
    log.release_before(4)
    assert segment_files(tmp_path) == [segment_name(4)]


def test_fully_released_log_keeps_its_next_offset(tmp_path: Path) -> None:
    """When everything is released the last segment goes too, but the offsets carry on after a restart."""
    write_log(tmp_path, 3)
    log, _ = open_log(tmp_path)
    with structlog.testing.capture_logs() as logs:
        log.release_before(3)
    assert segment_files(tmp_path) == [segment_name(3)]
    assert [entry["segment"] for entry in logs if entry["event"] == "broker.segment_deleted"] == [segment_name(0)]
    log.close()
    reopened, recovered = open_log(tmp_path)
    assert (recovered, reopened.next_offset) == ([], 3)


def test_fsync_always_flushes_every_append(tmp_path: Path) -> None:
    """Under "always" each append is fsynced before it returns."""
    fsync = CountingFsync()
    log, _ = open_log(tmp_path, policy="always", fsync=fsync)
    before = fsync.calls
    for offset in range(3):
        log.append(record(offset))
        assert fsync.calls == before + offset + 1


def test_fsync_never_leaves_flushing_to_the_os(tmp_path: Path) -> None:
    """Under "never" nothing is fsynced: not the appends, the new files, nor on close."""
    fsync = CountingFsync()
    log, _ = open_log(tmp_path, policy="never", segment_bytes=RECORD_BYTES, fsync=fsync)
    for offset in range(3):
        log.append(record(offset))
    log.flush()
    log.close()
    assert fsync.calls == 0


def test_fsync_interval_flushes_only_when_asked_and_dirty(tmp_path: Path) -> None:
    """Under "interval" appends return unflushed; a flush syncs them once, and a clean log is not synced."""
    fsync = CountingFsync()
    log, _ = open_log(tmp_path, policy="interval", fsync=fsync)
    before = fsync.calls
    log.append(record(0))
    log.append(record(1))
    assert fsync.calls == before
    log.flush()
    assert fsync.calls == before + 1
    log.flush()
    assert fsync.calls == before + 1
    log.append(record(2))
    log.close()  # what is unflushed is flushed on close
    assert fsync.calls == before + 2


def test_failed_fsync_refuses_every_later_append(tmp_path: Path) -> None:
    """After a failed fsync the data may be gone from the kernel, so the log stops until restarted."""
    fsync = CountingFsync()
    log, _ = open_log(tmp_path, fsync=fsync)
    log.append(record(0))
    fsync.fail_on_call = fsync.calls + 1
    with structlog.testing.capture_logs() as logs, pytest.raises(StorageFailed, match=r"fsync of .* failed"):
        log.append(record(1))
    with pytest.raises(StorageFailed, match="restart the broker"):
        log.append(record(1))
    assert [entry["event"] for entry in logs] == ["broker.log_failed"]
    # The record did reach the file: it reappears after a restart, and a retry of it is then a duplicate.
    assert [r.offset for r in open_log(tmp_path)[1]] == [0, 1]


def test_failed_write_is_cut_off_and_the_log_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails halfway (a full disk) leaves no partial record behind the next append."""
    log, _ = open_log(tmp_path)
    log.append(record(0))

    def half_then_full(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(segments, "_write_all", half_then_full)
    with pytest.raises(StorageFailed, match="No space left on device"):
        log.append(record(1))
    monkeypatch.undo()
    assert (tmp_path / segment_name(0)).stat().st_size == RECORD_BYTES
    log.append(record(1))
    log.close()
    with structlog.testing.capture_logs() as logs:
        assert [r.offset for r in open_log(tmp_path)[1]] == [0, 1]
    assert logs == []
