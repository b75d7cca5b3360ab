"""Checkpoints: validated field by field, trusted only for the stream and the file prefix they belong to."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from rxstreamer.checkpoint import (
    FINGERPRINT_BYTES,
    MAX_CHECKPOINT_BYTES,
    Checkpoint,
    Checkpointer,
    CheckpointError,
    FileIdentity,
    InputFile,
    plan_resume,
    read_checkpoint,
    resume_mismatch,
    write_checkpoint,
)
from rxstreamer.model import Position, PublishAck, ReadCounts
from rxstreamer.service import derive_producer_id
from rxstreamer.sources import CsvRows
from tests.conftest import TEST_DATA_CSV

HEADER = b"timestamp,metric_name,uuid,value\n"
PRODUCER = "host:metrics.csv:abab:b10"


def csv_bytes(rows: int, first: int = 0) -> bytes:
    """A header and ``rows`` data lines numbered from ``first``: every line is 27 bytes."""
    return b"".join(b"2025-07-18T20:00:%02dZ,m,u,%d\n" % (n % 60, n % 10) for n in range(first, first + rows))


def input_file(tmp_path: Path, rows: int = 100) -> Path:
    path = tmp_path / "metrics.csv"
    path.write_bytes(HEADER + csv_bytes(rows))
    return path


def after_rows(rows: int) -> Position:
    """The position just after the ``rows``-th data line of ``input_file``."""
    return Position(len(HEADER) + 27 * rows, 1 + rows, 0)


def checkpoint_for(path: Path, position: Position, sequence: int = 7) -> Checkpoint:
    return Checkpoint(
        producer_id=PRODUCER,
        sequence=sequence,
        position=position,
        batch_size=10,
        file=FileIdentity.of(path, position.offset),
        rows_published=70,
        rows_read=70,
    )


def plan(path: Path, saved: Checkpoint | None, *, start_over: bool = False, tmp: Path | None = None) -> Any:
    return plan_resume(
        saved, file=InputFile(path), producer_id=PRODUCER, batch_size=10, start_over=start_over,
        checkpoint_path=(tmp or path.parent) / "stream.checkpoint",
    )  # fmt: skip


# The file format


def test_a_checkpoint_round_trips_through_its_file(tmp_path: Path) -> None:
    """What is written is what is read back, and no temporary file is left behind."""
    metrics = input_file(tmp_path)
    saved = checkpoint_for(metrics, after_rows(70))
    path = tmp_path / "stream.checkpoint"
    write_checkpoint(path, saved)
    read = read_checkpoint(path)
    assert read is not None
    assert read.position == Position(1923, 71, 0)
    assert (read.producer_id, read.sequence, read.batch_size, read.rows_published) == (PRODUCER, 7, 10, 70)
    assert read.file == saved.file
    assert (read.file.prefix, read.file.size) == (1923, 2733)
    assert read.written_at  # stamped when written
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["metrics.csv", "stream.checkpoint"]


def test_a_missing_checkpoint_means_start_from_the_top(tmp_path: Path) -> None:
    """No file yet is not an error."""
    assert read_checkpoint(tmp_path / "none.checkpoint") is None


def valid_document(tmp_path: Path) -> dict[str, Any]:
    metrics = input_file(tmp_path)
    document: dict[str, Any] = json.loads(checkpoint_for(metrics, after_rows(70)).to_json())
    return document


def set_field(document: dict[str, Any], dotted: str, value: Any) -> None:
    *sections, name = dotted.split(".")
    for section in sections:
        document = document[section]
    if value is DELETE:
        del document[name]
    else:
        document[name] = value


DELETE = object()


@pytest.mark.parametrize(
    ("changes", "field", "allowed"),
    [
        ({"position.offset": 0}, "position.line = 71", "when the offset is > 0, 0 when it is 0"),
        ({"position.offset": 0, "position.line": 0}, "position.offset = 0", "must be > 0 when sequence > 0"),
        ({"position.offset": -26}, "position.offset = -26", "must be an integer >= 0"),
        ({"position.line": 0}, "position.line = 0", "must be from 1 to position.offset (1923)"),
        ({"position.line": 1924}, "position.line = 1924", "must be from 1 to position.offset (1923)"),
        ({"position.pass_number": -1}, "position.pass_number = -1", "must be an integer >= 0"),
        ({"position.offset": "1923"}, 'position.offset = "1923"', "must be an integer >= 0"),
        ({"position": [1923, 71, 0]}, "position = [1923, 71, 0]", "must be a JSON object"),
        ({"sequence": -1}, "sequence = -1", "must be an integer from 0 to 18446744073709551614"),
        ({"sequence": 2**64}, "sequence = 18446744073709551616", "from 0 to 18446744073709551614"),
        ({"sequence": 2**64 - 1}, "sequence = 18446744073709551615", "from 0 to 18446744073709551614"),
        ({"sequence": 0}, "sequence = 0", "must be >= 1 when position.offset > 0 (it is 1923)"),
        ({"sequence": True}, "sequence = true", "must be an integer"),
        ({"sequence": 7.0}, "sequence = 7.0", "must be an integer"),
        ({"sequence": DELETE}, "sequence = (missing)", "is missing"),
        ({"batch_size": 0}, "batch_size = 0", "must be an integer >= 1"),
        ({"rows_published": 71}, "rows_published = 71", "must be <= rows_read (70)"),
        ({"rows_rejected": 71}, "rows_rejected = 71", "must be <= rows_read (70)"),
        ({"rows_read": -1}, "rows_read = -1", "must be an integer >= 0"),
        ({"producer_id": ""}, 'producer_id = ""', "must not be empty"),
        ({"producer_id": 5}, "producer_id = 5", "must be a string"),
        ({"file.prefix": 1896}, "file.prefix = 1896", "must equal position.offset (1923)"),
        ({"file.fingerprint": "xyz"}, 'file.fingerprint = "xyz"', "must be 64 lowercase hex digits"),
        ({"file.size": -1}, "file.size = -1", "must be an integer >= 0"),
        ({"version": 1}, "version = 1", "reads checkpoint version 2 only (written by an older rxstreamer)"),
        ({"version": "2"}, 'version = "2"', "reads checkpoint version 2 only"),
    ],
)
def test_every_field_is_checked_against_its_range_and_the_others(
    tmp_path: Path, changes: dict[str, Any], field: str, allowed: str
) -> None:
    """An inconsistent checkpoint is a CheckpointError naming the path, the field, its value and what is allowed."""
    document = valid_document(tmp_path)
    for dotted, value in changes.items():
        set_field(document, dotted, value)
    path = tmp_path / "stream.checkpoint"
    path.write_text(json.dumps(document))
    with pytest.raises(CheckpointError) as raised:
        read_checkpoint(path)
    message = str(raised.value)
    assert message.startswith(f"checkpoint {path} is not a valid checkpoint: {field}: ")
    assert allowed in message
    assert message.endswith("move it away (or delete it) to stream the file from the beginning")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (bytes(range(256)) * 4, "not UTF-8 text (invalid start byte at byte 129)"),
        (b'{"version": 2, "producer_id": ', "Expecting value: line 1 column 31"),
        (b"[1, 2]", "not a JSON object but list"),
        (b"[" * 50_000, "maximum recursion depth exceeded"),
        (b"null", "not a JSON object but NoneType"),
    ],
)
def test_garbage_in_the_checkpoint_file_is_a_checkpoint_error(tmp_path: Path, content: bytes, problem: str) -> None:
    """Random bytes, broken JSON and deep nesting are refused with one line, never a traceback."""
    path = tmp_path / "stream.checkpoint"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="is not a valid checkpoint") as raised:
        read_checkpoint(path)
    assert problem in str(raised.value)
    assert str(path) in str(raised.value)


def test_a_huge_file_at_the_checkpoint_path_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    """Anything over 64 KiB is not a checkpoint."""
    path = tmp_path / "stream.checkpoint"
    path.write_bytes(b" " * (MAX_CHECKPOINT_BYTES + 1))
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is larger than 65536 bytes"):
        read_checkpoint(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_fifo_at_the_checkpoint_path_is_refused_without_blocking(tmp_path: Path) -> None:
    """Opening a FIFO for reading would wait for a writer forever; it is refused from its stat."""
    path = tmp_path / "stream.checkpoint"
    os.mkfifo(path)
    with pytest.raises(CheckpointError, match="is not a regular file"):
        read_checkpoint(path)


# The file's identity: the prefix a checkpoint covers


def test_appending_keeps_the_prefix_fingerprint_and_editing_the_prefix_changes_it(tmp_path: Path) -> None:
    """Bytes after the offset do not count; a byte changed before it, at the start or near it, does."""
    path = input_file(tmp_path, rows=100)
    offset = after_rows(70).offset
    before = FileIdentity.of(path, offset)
    with path.open("ab") as file:
        file.write(csv_bytes(50, first=100))
    grown = FileIdentity.of(path, offset)
    assert (grown.fingerprint, grown.head, grown.prefix) == (before.fingerprint, before.head, 1923)
    assert (before.size, grown.size) == (2733, 4083)
    content = path.read_bytes()
    for where in (len(HEADER) + 3, offset - 2):  # in the first and in the last 64 KiB before the offset
        path.write_bytes(content[:where] + b"X" + content[where + 1 :])
        assert FileIdentity.of(path, offset).fingerprint != before.fingerprint


def test_the_prefix_fingerprint_of_a_long_file_reads_its_two_ends(tmp_path: Path) -> None:
    """Beyond 128 KiB the middle is not read (cheap per batch), but both ends of the prefix are."""
    path = input_file(tmp_path, rows=20_000)  # 540 KB
    offset = after_rows(15_000).offset
    before = FileIdentity.of(path, offset)
    content = bytearray(path.read_bytes())
    content[offset - FINGERPRINT_BYTES + 5] ^= 1
    path.write_bytes(bytes(content))
    assert FileIdentity.of(path, offset).fingerprint != before.fingerprint


def test_the_head_and_so_the_default_producer_id_survive_appends_to_a_small_file(tmp_path: Path) -> None:
    """A 1 KB file that grows keeps its producer id; another first record or header gives another one."""
    path = tmp_path / "metrics.csv"
    path.write_bytes(HEADER + csv_bytes(40))
    first = derive_producer_id("dgx-1", path, FileIdentity.of(path), 10)
    with path.open("ab") as file:
        file.write(csv_bytes(3_000, first=40))
    assert derive_producer_id("dgx-1", path, FileIdentity.of(path), 10) == first
    path.write_bytes(HEADER + csv_bytes(40, first=1))
    assert derive_producer_id("dgx-1", path, FileIdentity.of(path), 10) != first
    path.write_bytes(HEADER.replace(b"value", b"VALUE") + csv_bytes(40))
    assert derive_producer_id("dgx-1", path, FileIdentity.of(path), 10) != first


def test_the_head_counts_complete_lines_only(tmp_path: Path) -> None:
    """A first record still being written does not count until its line break arrives; blank lines never do."""
    path = tmp_path / "metrics.csv"
    path.write_bytes(b"\n" + HEADER + b"\n\n2025-07-18T20:00:00Z,m,u,")
    partial = FileIdentity.of(path).head
    path.write_bytes(b"\n" + HEADER)
    assert FileIdentity.of(path).head == partial
    path.write_bytes(b"\n" + HEADER + b"\n\n2025-07-18T20:00:00Z,m,u,1\n")
    complete = FileIdentity.of(path).head
    assert complete != partial
    path.write_bytes(b"\n" + HEADER + b"\n\n2025-07-18T20:00:00Z,m,u,1\nmore,rows,after,it\n")
    assert FileIdentity.of(path).head == complete


def test_a_replaced_path_is_never_fingerprinted_as_the_file_that_was_read(tmp_path: Path) -> None:
    """After a rotation the identity says REPLACED instead of describing the newcomer's bytes."""
    path = input_file(tmp_path)
    opened = InputFile(path)
    path.rename(tmp_path / "metrics.csv.1")
    assert opened.identity(100).fingerprint == ""
    path.write_bytes(HEADER + csv_bytes(100))  # the same bytes, even: another file
    assert opened.identity(100).fingerprint == ""
    assert InputFile(path).identity(100).fingerprint == FileIdentity.of(tmp_path / "metrics.csv.1", 100).fingerprint


# Resuming


def test_resuming_continues_after_the_last_acknowledged_batch(tmp_path: Path) -> None:
    """A fitting checkpoint: start at its position, with the next sequence number."""
    path = input_file(tmp_path)
    saved = checkpoint_for(path, after_rows(70))
    resumed = plan(path, saved)
    assert (resumed.start, resumed.first_sequence, resumed.before) == (Position(1923, 71, 0), 8, saved)


def test_a_file_that_grew_by_appends_resumes_after_the_checkpoint(tmp_path: Path) -> None:
    """Appended rows are new rows: the stream goes on where it stopped, with the next sequence."""
    path = input_file(tmp_path)
    saved = checkpoint_for(path, after_rows(100))  # it had reached the end of the file
    with path.open("ab") as file:
        file.write(csv_bytes(30, first=100))
    resumed = plan(path, saved)
    assert (resumed.start, resumed.first_sequence, resumed.size_now) == (Position(2733, 101, 0), 8, 3543)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda content: content[:1000], "the file is now 1000 bytes, shorter than the checkpoint's offset 1923"),
        (lambda content: content[:40] + b"9" + content[41:], "the first 1923 bytes of the file differ"),
        (lambda content: content[:1800] + b"X" + content[1801:], "the first 1923 bytes of the file differ"),
        (lambda content: HEADER + csv_bytes(100, first=1), "the first 1923 bytes of the file differ"),
    ],
    ids=["truncated", "edited_at_the_start", "edited_before_the_offset", "another_file"],
)
def test_a_file_changed_before_the_offset_is_refused_unless_starting_over(
    tmp_path: Path, change: Any, reason: str
) -> None:
    """Refused with the reason by default; with start_over read from the top, sequences not reused."""
    path = input_file(tmp_path)
    saved = checkpoint_for(path, after_rows(70))
    path.write_bytes(change(path.read_bytes()))
    with pytest.raises(CheckpointError) as raised:
        plan(path, saved)
    assert str(raised.value).startswith(f"checkpoint {tmp_path / 'stream.checkpoint'} cannot resume this stream: ")
    assert reason in str(raised.value)
    over = plan(path, saved, start_over=True)
    assert (over.start, over.first_sequence) == (None, 8)
    assert over.ignored_because is not None
    assert reason in over.ignored_because


def test_a_checkpoint_written_after_a_rotation_never_resumes(tmp_path: Path) -> None:
    """Its REPLACED fingerprint matches no file, not even the same bytes at the path."""
    path = input_file(tmp_path)
    saved = replace(checkpoint_for(path, after_rows(70)), file=FileIdentity(1923, "", "", 2733))
    with pytest.raises(CheckpointError, match="was replaced \\(rotated\\) while it was being streamed"):
        plan(path, saved)


def test_an_offset_inside_a_line_is_refused_unless_starting_over(tmp_path: Path) -> None:
    """Its prefix may match (a checkpoint forged, or ended on a line still being written): it does not fit."""
    path = input_file(tmp_path)
    inside = checkpoint_for(path, Position(1920, 71, 0))
    with pytest.raises(CheckpointError, match=r"its position.offset = 1920 is not at a line break of .*metrics.csv"):
        plan(path, inside)
    assert plan(path, inside, start_over=True).start is None


def test_a_checkpoint_at_the_end_of_a_file_without_a_final_line_break_resumes_there(tmp_path: Path) -> None:
    """Nothing follows the offset, so nothing can be cut in two: the restart reads nothing more and ends."""
    path = tmp_path / "metrics.csv"
    path.write_bytes(TEST_DATA_CSV.read_bytes().rstrip(b"\n"))
    end = Position(path.stat().st_size, 961, 0)
    resumed = plan(path, checkpoint_for(path, end, sequence=96))
    assert (resumed.start, resumed.first_sequence) == (end, 97)
    assert list(CsvRows(path, start=end)) == []


@pytest.mark.parametrize(
    ("batch_size", "producer", "expected"),
    [
        (10, PRODUCER, None),
        (20, PRODUCER, "telemetry.batch_size = 10, not 20"),
        (10, "someone-else", "belongs to producer"),
    ],
)
def test_a_checkpoint_fits_only_the_same_batch_size_and_producer(
    tmp_path: Path, batch_size: int, producer: str, expected: str | None
) -> None:
    """Any difference that would put other rows under the same sequence numbers is named."""
    path = input_file(tmp_path)
    saved = checkpoint_for(path, after_rows(70))
    mismatch = resume_mismatch(saved, FileIdentity.of(path, 1923), producer, batch_size)
    if expected is None:
        assert mismatch is None
    else:
        assert mismatch is not None
        assert expected in mismatch


def test_the_checkpointer_records_each_acknowledged_batch(tmp_path: Path) -> None:
    """After each ack the file holds that batch's sequence, the position after it, its prefix, and the totals."""
    metrics = input_file(tmp_path)
    path = tmp_path / "stream.checkpoint"
    earlier = replace(checkpoint_for(metrics, after_rows(30)), rows_published=30, rows_read=33, rows_rejected=3)
    record = Checkpointer(path, producer_id="p", batch_size=10, file=InputFile(metrics), before=earlier)
    record(PublishAck(4, 3, False, 10, after_rows(40), ReadCounts(10, 0)))
    record(PublishAck(5, 4, True, 10, after_rows(50), ReadCounts(21, 1)))
    saved = read_checkpoint(path)
    assert saved is not None
    assert (saved.sequence, saved.position) == (5, Position(1383, 51, 0))
    assert saved.file == FileIdentity.of(metrics, 1383)
    assert (saved.rows_published, saved.rows_read, saved.rows_rejected) == (50, 54, 4)
