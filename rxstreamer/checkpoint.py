"""Acknowledged checkpoints: how far the input has reached the queue, kept on disk across crashes.

A checkpoint is written after the queue acknowledged a batch, never before, so it can only lag behind
what the queue holds, never run ahead of it. After a crash the streamer resumes at the checkpoint and
re-sends at most the batches that were in flight, each with the identity (producer id, sequence) it had the
first time, so the queue (and any consumer keying on that identity) drops the repeats.

The file is replaced atomically (write a temporary file, fsync it, rename it over the old one, fsync the
directory): a crash at any moment leaves either the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rxstreamer.model import Position, PublishAck
from rxstreamer.source import SourceStats

VERSION = 1
#: How much of the file's head identifies it. Enough to differ between any two DCGM exports (timestamps,
#: hosts and values are in the first rows), small enough to hash at every start.
FINGERPRINT_BYTES = 64 * 1024


class CheckpointError(Exception):
    """A checkpoint that cannot be used as it is; the message says why and what to do."""


@dataclass(frozen=True)
class FileIdentity:
    """What makes a checkpoint's byte offsets meaningful: the same file, unchanged."""

    size: int
    fingerprint: str  # sha256 of the first FINGERPRINT_BYTES bytes

    @classmethod
    def of(cls, path: Path) -> FileIdentity:
        with path.open("rb") as handle:
            head = handle.read(FINGERPRINT_BYTES)
            size = os.fstat(handle.fileno()).st_size
        return cls(size=size, fingerprint=hashlib.sha256(head).hexdigest())


@dataclass(frozen=True)
class Checkpoint:
    """The last acknowledged batch of one stream and where the input continues after it."""

    producer_id: str
    sequence: int  # the last acknowledged sequence; the next batch gets sequence + 1
    position: Position  # where the input continues after that batch
    batch_size: int
    file: FileIdentity
    rows_published: int = 0  # by every run of this stream together, up to this batch
    rows_read: int = 0  # likewise: rows_read = rows_published + rows_rejected + rows_filtered
    rows_rejected: int = 0
    written_at: str = ""

    def to_json(self) -> str:
        document: dict[str, Any] = {"version": VERSION, **asdict(self)}
        return json.dumps(document, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Checkpoint:
        document = json.loads(text)
        if document.pop("version", None) != VERSION:
            raise ValueError(f"unsupported checkpoint version (this streamer writes version {VERSION})")
        return cls(
            producer_id=str(document["producer_id"]),
            sequence=int(document["sequence"]),
            position=Position(**document["position"]),
            batch_size=int(document["batch_size"]),
            file=FileIdentity(**document["file"]),
            rows_published=int(document.get("rows_published", 0)),
            rows_read=int(document.get("rows_read", 0)),
            rows_rejected=int(document.get("rows_rejected", 0)),
            written_at=str(document.get("written_at", "")),
        )


def read_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint at ``path``, or None when there is none yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error.strerror}") from error
    try:
        return Checkpoint.from_json(text)
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"checkpoint {path} is not a valid checkpoint ({error}); move it away or set "
            "telemetry.start_over = true (--start-over) to stream the file from the beginning"
        ) from error


def write_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Replace the checkpoint atomically and durably."""
    stamped = replace(checkpoint, written_at=datetime.now(UTC).isoformat())
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(stamped.to_json())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def resume_mismatch(checkpoint: Checkpoint, file: FileIdentity, producer_id: str, batch_size: int) -> str | None:
    """Why this checkpoint cannot continue this stream, or None when it can.

    Resuming replays batches by sequence number, which is only safe when the same rows fall into the same
    batches: the same file, unchanged, cut with the same batch size, under the same producer id.
    """
    if checkpoint.file != file:
        what = "size" if checkpoint.file.size != file.size else "content"
        return f"it was written for another file (the {what} differs)"
    if checkpoint.batch_size != batch_size:
        return f"it was written with telemetry.batch_size = {checkpoint.batch_size}, not {batch_size}"
    if checkpoint.producer_id != producer_id:
        return f"it belongs to producer {checkpoint.producer_id!r}, not {producer_id!r}"
    if checkpoint.position.offset > file.size:
        return "its position lies beyond the end of the file"
    return None


@dataclass(frozen=True)
class ResumePlan:
    """Where a run starts and how it numbers its batches, decided from the checkpoint found (if any)."""

    start: Position | None  # None: from the top of the file
    first_sequence: int
    before: Checkpoint | None = None  # the checkpoint resumed from, with the totals of the runs before
    ignored_because: str | None = None  # set when start_over discarded a checkpoint that did not fit


def plan_resume(
    checkpoint: Checkpoint | None,
    *,
    file: FileIdentity,
    producer_id: str,
    batch_size: int,
    start_over: bool,
    checkpoint_path: Path,
) -> ResumePlan:
    """Continue after the checkpoint when it fits this stream; otherwise refuse, or start over if asked.

    Starting over keeps counting sequences after the old checkpoint's: reusing a sequence number for
    different rows would make the queue drop them as duplicates of the old batch.
    """
    if checkpoint is None:
        return ResumePlan(start=None, first_sequence=1)
    mismatch = resume_mismatch(checkpoint, file, producer_id, batch_size)
    if mismatch is None and not start_over:
        return ResumePlan(checkpoint.position, checkpoint.sequence + 1, checkpoint)
    if mismatch is not None and not start_over:
        raise CheckpointError(
            f"checkpoint {checkpoint_path} cannot resume this stream: {mismatch}; set telemetry.start_over = true "
            "(--start-over) to stream the file from the beginning, or point telemetry.checkpoint_path elsewhere"
        )
    same_producer = checkpoint.producer_id == producer_id
    return ResumePlan(
        start=None,
        first_sequence=checkpoint.sequence + 1 if same_producer else 1,
        ignored_because=mismatch or "start_over is set",
    )


class Checkpointer:
    """Records each acknowledged batch of one stream; called inside the pipeline after every ack.

    Acknowledgements arrive in sequence order (one publish at a time), and the next batch is read only
    after the ack, so at each ack the source has read exactly up to that batch: the source's counts are
    the checkpoint's counts.
    """

    def __init__(
        self,
        path: Path,
        *,
        producer_id: str,
        batch_size: int,
        file: FileIdentity,
        source_stats: SourceStats,
        before: Checkpoint | None = None,
    ) -> None:
        self.path = path
        self._producer_id = producer_id
        self._batch_size = batch_size
        self._file = file
        self._source_stats = source_stats
        self._before = before
        self._rows_published = 0
        self.last: Checkpoint | None = None

    def __call__(self, ack: PublishAck) -> None:
        if ack.position is None:
            return  # a source that cannot say where it is: nothing to resume from
        self._rows_published += ack.rows
        before = self._before
        checkpoint = Checkpoint(
            producer_id=self._producer_id,
            sequence=ack.sequence,
            position=ack.position,
            batch_size=self._batch_size,
            file=self._file,
            rows_published=self._rows_published + (before.rows_published if before else 0),
            rows_read=self._source_stats.rows_read + (before.rows_read if before else 0),
            rows_rejected=self._source_stats.rows_rejected + (before.rows_rejected if before else 0),
        )
        write_checkpoint(self.path, checkpoint)
        self.last = checkpoint
