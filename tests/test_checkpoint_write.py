"""Writing checkpoints: atomic and durable at every step, failures named, unwritable places found before streaming."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from reactivex import operators as ops

from rxstreamer.checkpoint import (
    Checkpoint,
    Checkpointer,
    CheckpointError,
    DurableFiles,
    FileIdentity,
    InputFile,
    check_writable,
    read_checkpoint,
    write_checkpoint,
)
from rxstreamer.encoding import BatchEncoder
from rxstreamer.model import Position, PublishAck
from rxstreamer.pipeline import build_pipeline
from rxstreamer.retry import RetryPolicy
from rxstreamer.sinks import InMemorySink
from rxstreamer.sources import CsvRows
from tests.conftest import TEST_DATA_CSV

STEPS = ["create", "write", "fsync_file", "close_file", "replace", "open_directory", "fsync_directory"]


class RecordingFiles(DurableFiles):
    """The real system calls, each logged by step name; ``fail_at`` makes that step raise instead."""

    def __init__(self, fail_at: str | None = None, error: int = errno.EIO) -> None:
        self.fail_at = fail_at
        self.error = error
        self.calls: list[str] = []
        self._directories: set[int] = set()

    def _step(self, name: str) -> None:
        self.calls.append(name)
        if name == self.fail_at:
            raise OSError(self.error, os.strerror(self.error))

    def create(self, path: Path) -> int:
        self._step("create")
        return super().create(path)

    def write(self, fd: int, data: bytes) -> int:
        self._step("write")
        return super().write(fd, data[:100])  # short writes, as a full pipe or a signal may cause

    def fsync(self, fd: int) -> None:
        self._step("fsync_directory" if fd in self._directories else "fsync_file")
        super().fsync(fd)

    def close(self, fd: int) -> None:
        name = "close_directory" if fd in self._directories else "close_file"
        self._directories.discard(fd)
        super().close(fd)  # released even when the step then fails, as close(2) does
        self._step(name)

    def replace(self, source: Path, target: Path) -> None:
        self._step("replace")
        assert source != target
        assert source.parent == target.parent
        super().replace(source, target)

    def open_directory(self, path: Path) -> int:
        self._step("open_directory")
        fd = super().open_directory(path)
        self._directories.add(fd)
        return fd

    def remove(self, path: Path) -> None:
        self.calls.append("remove")
        super().remove(path)


def checkpoint(sequence: int) -> Checkpoint:
    return Checkpoint(
        producer_id="p",
        sequence=sequence,
        position=Position(100 * sequence, 4 * sequence, 0),
        batch_size=10,
        file=FileIdentity(100 * sequence, "ab" * 32, "cd" * 32, 100_000),
        rows_published=10 * sequence,
        rows_read=10 * sequence,
    )


def test_the_temporary_file_is_fsynced_before_it_is_renamed_over_the_checkpoint(tmp_path: Path) -> None:
    """Order of the system calls: write, fsync, close the temporary file; rename; fsync the directory."""
    files = RecordingFiles()
    path = tmp_path / "stream.checkpoint"
    write_checkpoint(path, checkpoint(7), files)
    writes = files.calls.count("write")
    assert writes >= 4  # a few hundred bytes, 100 at a time: the loop finishes short writes
    assert files.calls == [
        "create", *["write"] * writes, "fsync_file", "close_file", "replace",
        "open_directory", "fsync_directory", "close_directory",
    ]  # fmt: skip
    saved = read_checkpoint(path)
    assert saved is not None
    assert saved.sequence == 7
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["stream.checkpoint"]


@pytest.mark.parametrize("step", STEPS)
def test_a_failure_at_any_step_leaves_a_whole_checkpoint_and_names_path_and_reason(tmp_path: Path, step: str) -> None:
    """Before the rename the previous checkpoint is intact; after it, the new one; never a torn file."""
    path = tmp_path / "stream.checkpoint"
    write_checkpoint(path, checkpoint(7))
    with pytest.raises(CheckpointError) as raised:
        write_checkpoint(path, checkpoint(8), RecordingFiles(fail_at=step, error=errno.ENOSPC))
    message = str(raised.value)
    assert message.startswith(f"cannot write checkpoint {path}")
    assert message.endswith("failed: No space left on device")
    saved = read_checkpoint(path)
    assert saved is not None
    renamed = STEPS.index(step) > STEPS.index("replace")
    assert saved.sequence == (8 if renamed else 7)
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["stream.checkpoint"]  # no temporary file left


def test_the_checkpointer_turns_a_failed_write_into_a_checkpoint_error(tmp_path: Path) -> None:
    """EIO during an ack's checkpoint: CheckpointError naming the path and the OS reason, never a bare OSError."""
    metrics = tmp_path / "metrics.csv"
    metrics.write_bytes(TEST_DATA_CSV.read_bytes()[:5000])
    path = tmp_path / "stream.checkpoint"
    record = Checkpointer(
        path, producer_id="p", batch_size=10, file=InputFile(metrics),
        files=RecordingFiles(fail_at="fsync_file"),
    )  # fmt: skip
    with pytest.raises(CheckpointError, match=f"^cannot write checkpoint {path}: fsync the temporary file failed: "):
        record(PublishAck(1, 0, False, 10, Position(4163, 11, 0)))
    assert read_checkpoint(path) is None


def test_a_failed_checkpoint_write_ends_the_stream_with_that_error(tmp_path: Path) -> None:
    """The pipeline's on_error gets the CheckpointError of the first ack whose checkpoint cannot be written."""
    path = tmp_path / "stream.checkpoint"
    rows = CsvRows(TEST_DATA_CSV)
    record = Checkpointer(
        path, producer_id="p", batch_size=100, file=InputFile(TEST_DATA_CSV),
        files=RecordingFiles(fail_at="replace", error=errno.ENOSPC),
    )  # fmt: skip
    publisher = InMemorySink()
    pipeline = build_pipeline(
        rows, publisher, BatchEncoder("p"), batch_size=100, interval=0, retry=RetryPolicy(), on_ack=record
    )
    with pytest.raises(CheckpointError, match="rename the temporary file over it failed: No space left on device"):
        pipeline.pipe(ops.to_list()).run()
    assert len(publisher.batches) == 1  # published and acknowledged, then the stream stopped
    assert read_checkpoint(path) is None


def test_a_checkpoint_in_a_place_that_refuses_files_is_found_before_streaming(tmp_path: Path) -> None:
    """A parent that is a file, a directory at the path, sysfs: CheckpointError naming the path and the reason."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(CheckpointError, match=f"^checkpoint {blocker}/stream.checkpoint .* written: Not a directory$"):
        check_writable(blocker / "stream.checkpoint")
    (tmp_path / "a-directory").mkdir()
    with pytest.raises(CheckpointError, match="it exists and is not a regular file"):
        check_writable(tmp_path / "a-directory")
    if Path("/sys/kernel").is_dir():  # refuses new files even to root
        with pytest.raises(CheckpointError, match=r"^checkpoint /sys/stream\.checkpoint .* cannot be written"):
            check_writable(Path("/sys/stream.checkpoint"))
    check_writable(tmp_path / "stream.checkpoint")
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["a-directory", "not-a-directory"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write a directory whatever its permissions")
def test_a_read_only_directory_is_found_before_streaming(tmp_path: Path) -> None:
    """chmod 0500 on the checkpoint's directory: CheckpointError saying permission denied."""
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match="Permission denied"):
            check_writable(directory / "stream.checkpoint")
    finally:
        directory.chmod(0o700)
