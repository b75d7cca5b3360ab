"""Checkpoints: written atomically after acknowledgements, and trusted only for the stream they belong to."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from rxstreamer.checkpoint import (
    Checkpoint,
    Checkpointer,
    CheckpointError,
    FileIdentity,
    plan_resume,
    read_checkpoint,
    resume_mismatch,
    write_checkpoint,
)
from rxstreamer.model import Position, PublishAck
from rxstreamer.source import SourceStats

FILE = FileIdentity(size=10_000, fingerprint="ab" * 32)


BASE = Checkpoint(
    producer_id="host:metrics.csv:abab:b10",
    sequence=7,
    position=Position(offset=4_000, line=71, pass_number=0),
    batch_size=10,
    file=FILE,
    rows_published=70,
)


def checkpoint() -> Checkpoint:
    return BASE


def test_a_checkpoint_round_trips_through_its_file(tmp_path: Path) -> None:
    """What is written is what is read back, and no temporary file is left behind."""
    path = tmp_path / "stream.checkpoint"
    write_checkpoint(path, checkpoint())
    read = read_checkpoint(path)
    assert read is not None
    assert read.position == Position(4_000, 71, 0)
    assert (read.producer_id, read.sequence, read.batch_size, read.file, read.rows_published) == (
        "host:metrics.csv:abab:b10", 7, 10, FILE, 70,
    )  # fmt: skip
    assert read.written_at  # stamped when written
    assert [entry.name for entry in tmp_path.iterdir()] == ["stream.checkpoint"]


def test_a_missing_checkpoint_means_start_from_the_top(tmp_path: Path) -> None:
    """No file yet is not an error."""
    assert read_checkpoint(tmp_path / "none.checkpoint") is None


def test_a_corrupt_checkpoint_is_refused_with_a_way_out(tmp_path: Path) -> None:
    """A damaged file is not guessed at: the message says how to start over."""
    path = tmp_path / "stream.checkpoint"
    path.write_text('{"version": 1, "producer_id": ')
    with pytest.raises(CheckpointError, match="start_over"):
        read_checkpoint(path)


def test_file_identity_changes_with_content_and_size(tmp_path: Path) -> None:
    """The same bytes give the same identity; a changed head or a longer file does not."""
    path = tmp_path / "metrics.csv"
    path.write_bytes(b"a,b\n1,2\n")
    first = FileIdentity.of(path)
    assert FileIdentity.of(path) == first
    path.write_bytes(b"a,b\n1,3\n")
    assert FileIdentity.of(path).fingerprint != first.fingerprint
    path.write_bytes(b"a,b\n1,2\n3,4\n")
    assert FileIdentity.of(path).size != first.size


@pytest.mark.parametrize(
    ("file", "producer", "batch_size", "expected"),
    [
        (FILE, "host:metrics.csv:abab:b10", 10, None),
        (FileIdentity(9_999, FILE.fingerprint), "host:metrics.csv:abab:b10", 10, "another file (the size differs)"),
        (FileIdentity(FILE.size, "cd" * 32), "host:metrics.csv:abab:b10", 10, "another file (the content differs)"),
        (FILE, "host:metrics.csv:abab:b10", 20, "telemetry.batch_size = 10, not 20"),
        (FILE, "someone-else", 10, "belongs to producer"),
    ],
)
def test_a_checkpoint_fits_only_the_same_file_batch_size_and_producer(
    file: FileIdentity, producer: str, batch_size: int, expected: str | None
) -> None:
    """Any difference that would put other rows under the same sequence numbers is named."""
    mismatch = resume_mismatch(checkpoint(), file, producer, batch_size)
    if expected is None:
        assert mismatch is None
    else:
        assert mismatch is not None
        assert expected in mismatch


def test_resuming_continues_after_the_last_acknowledged_batch(tmp_path: Path) -> None:
    """A fitting checkpoint: start at its position, with the next sequence number."""
    plan = plan_resume(
        checkpoint(), file=FILE, producer_id="host:metrics.csv:abab:b10", batch_size=10, start_over=False,
        checkpoint_path=tmp_path / "c",
    )  # fmt: skip
    assert (plan.start, plan.first_sequence, plan.before) == (Position(4_000, 71, 0), 8, BASE)


def test_a_checkpoint_for_another_file_is_refused_unless_starting_over(tmp_path: Path) -> None:
    """Refused by default; with start_over the file is read from the top and sequences are not reused."""
    other = FileIdentity(5, "ef" * 32)
    with pytest.raises(CheckpointError, match="another file"):
        plan_resume(
            checkpoint(), file=other, producer_id="host:metrics.csv:abab:b10", batch_size=10, start_over=False,
            checkpoint_path=tmp_path / "c",
        )  # fmt: skip
    plan = plan_resume(
        checkpoint(), file=other, producer_id="host:metrics.csv:abab:b10", batch_size=10, start_over=True,
        checkpoint_path=tmp_path / "c",
    )  # fmt: skip
    assert (plan.start, plan.first_sequence) == (None, 8)
    assert plan.ignored_because is not None


def test_the_checkpointer_records_each_acknowledged_batch(tmp_path: Path) -> None:
    """After each ack the file holds that batch's sequence, the position after it, and totals including earlier runs."""
    path = tmp_path / "stream.checkpoint"
    stats = SourceStats()
    earlier = replace(BASE, rows_published=30, rows_read=33, rows_rejected=3)
    record = Checkpointer(path, producer_id="p", batch_size=10, file=FILE, source_stats=stats, before=earlier)
    stats.rows_read, stats.rows_rejected = 10, 0
    record(PublishAck(4, 3, False, 10, Position(500, 41, 0)))
    stats.rows_read, stats.rows_rejected = 21, 1
    record(PublishAck(5, 4, True, 10, Position(620, 52, 0)))
    saved = read_checkpoint(path)
    assert saved is not None
    assert (saved.sequence, saved.position) == (5, Position(620, 52, 0))
    assert (saved.rows_published, saved.rows_read, saved.rows_rejected) == (50, 54, 4)
