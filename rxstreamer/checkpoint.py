"""Acknowledged checkpoints: how far the input has reached the queue, kept on disk across crashes.

A checkpoint is written after the queue acknowledged a batch, never before, so it can only lag behind
what the queue holds, never run ahead of it. After a crash the streamer resumes at the checkpoint and
re-sends at most the batches that were in flight, each with the identity (producer id, sequence) it had the
first time, so the queue (and any consumer keying on that identity) drops the repeats.

The file is replaced atomically (write a temporary file, fsync it, rename it over the old one, fsync the
directory): a crash at any moment leaves either the old checkpoint or the new one, never half of one. The
system calls that takes go through ``DurableFiles``, a seam that lets tests fail or record each step.

A checkpoint is trusted only as far as it can be checked. Reading one validates every field against the
others (a resumed stream re-sends or skips rows on the strength of these numbers, so a damaged or hand-edited
checkpoint must stop the start, not steer it), and resuming checks it against the input: its byte offset must
lie within the file, on a line break, after a prefix whose fingerprint is the one recorded. Only the prefix
is fingerprinted, so a file that grew by appends since (the way logs grow) resumes where it left off, while a
file that was edited, truncated or replaced is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

from rxstreamer.model import Position, PublishAck, ReadCounts

#: Version 2 fingerprints the prefix a checkpoint covers (version 1 hashed the head of the whole file).
VERSION: Final = 2
#: The window of a prefix fingerprint: the first and the last this many bytes before a checkpoint's offset.
#: Enough to tell apart any two DCGM exports and to notice a rewritten tail, small enough to hash per batch.
FINGERPRINT_BYTES: Final = 64 * 1024
#: A checkpoint is a few hundred bytes; a larger file at its path is something else, and is not read whole.
MAX_CHECKPOINT_BYTES: Final = 64 * 1024
#: The highest last-acknowledged sequence: the next batch's, one more, must still fit the wire's uint64.
MAX_SEQUENCE: Final = 2**64 - 2
#: The fingerprint recorded when the path no longer named the file being streamed (it was rotated away):
#: no file matches it, so such a checkpoint can never resume another file's bytes.
REPLACED: Final = ""

_MOVE_AWAY = "move it away (or delete it) to stream the file from the beginning"
_SHOWN_CHARS = 60


class CheckpointError(Exception):
    """A checkpoint that cannot be used, read or written; the message names the path and says why."""


class _InvalidFieldError(ValueError):
    """One field of a checkpoint document that is missing, of the wrong type, or inconsistent with another."""

    def __init__(self, name: str, value: object, allowed: str) -> None:
        super().__init__(name, value, allowed)
        self.name, self.value, self.allowed = name, value, allowed

    def __str__(self) -> str:
        shown = json.dumps(self.value) if not isinstance(self.value, _Missing) else "(missing)"
        if len(shown) > _SHOWN_CHARS:
            shown = shown[: _SHOWN_CHARS - 3] + "..."
        return f"{self.name} = {shown}: {self.allowed}"


class _Missing:
    """Marks a field the document does not have (``None`` is a value a document can hold)."""


_MISSING = _Missing()


@dataclass(frozen=True)
class FileIdentity:
    """What makes a checkpoint's byte offsets meaningful: the bytes before the offset, unchanged.

    ``fingerprint`` covers the prefix ``[0, prefix)``: sha256 over its length, its first ``FINGERPRINT_BYTES``
    and its last ``FINGERPRINT_BYTES``. The ends catch what changes in practice (another export starts
    with other timestamps and hosts; a rewritten file rarely keeps the bytes just before the offset), and
    the cost stays two small reads however long the file. Bytes appended later are outside the prefix, so
    growth keeps the fingerprint.

    ``head`` is the sha256 of the header line and the first data line: what the default producer id is
    derived from, because it does not change while the file grows (see ``derive_producer_id``).
    ``size`` is the file's size when the identity was taken, recorded for the operator, never compared.
    """

    prefix: int
    fingerprint: str
    head: str
    size: int

    @classmethod
    def of(cls, path: Path, offset: int | None = None) -> FileIdentity:
        """The identity of ``path`` up to ``offset`` (the whole file when None)."""
        return InputFile(path).identity(offset)


class InputFile:
    """The input file as the checkpoints see it: fingerprints at any offset, and only of the file first opened.

    The inode the path names on construction is remembered. If the path later names another file (log
    rotation), identities get the ``REPLACED`` fingerprint instead of one of the newcomer's bytes: the
    streamer is still reading the old file, and a checkpoint must never describe bytes it did not read.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as handle:
            status = os.fstat(handle.fileno())
        self._inode = (status.st_dev, status.st_ino)

    def identity(self, offset: int | None = None) -> FileIdentity:
        """Fingerprint the first ``offset`` bytes (the whole file when None): two reads of at most 64 KiB each."""
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:  # moved away and not (yet) replaced: what was streamed is not at the path
            return FileIdentity(offset or 0, REPLACED, REPLACED, 0)
        with handle:
            status = os.fstat(handle.fileno())
            size = status.st_size
            prefix = size if offset is None else offset
            if (status.st_dev, status.st_ino) != self._inode:
                return FileIdentity(prefix, REPLACED, REPLACED, size)
            fd = handle.fileno()
            first = _read_at(fd, 0, FINGERPRINT_BYTES)
            start = max(prefix - FINGERPRINT_BYTES, 0)
            last = first[start:prefix] if prefix <= len(first) else _read_at(fd, start, prefix - start)
        digest = hashlib.sha256(f"rxstreamer-prefix:{prefix}:".encode())
        head_part = first[: min(prefix, FINGERPRINT_BYTES)]
        for part in (head_part, last):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
        return FileIdentity(prefix, digest.hexdigest(), hashlib.sha256(_header_and_first_line(first)).hexdigest(), size)

    def follows_line_break(self, offset: int) -> bool:
        """Whether ``offset`` is where a line begins: the top of the file, or just after a b"\\n"."""
        if offset == 0:
            return True
        with self.path.open("rb") as handle:
            return _read_at(handle.fileno(), offset - 1, 1) == b"\n"


class CheckpointedInput(Protocol):
    """What a checkpoint needs of an input: a name for messages, the identity of a prefix, where records begin."""

    @property
    def path(self) -> Path | str: ...

    def identity(self, offset: int | None = None) -> FileIdentity: ...

    def follows_line_break(self, offset: int) -> bool: ...


class ScrapedInput:
    """Live endpoints as the checkpoints see them: offsets are scrape slots (see rxstreamer.sources.scrape).

    Slots only grow and a scrape cannot be read again, so there is no prefix to fingerprint: the identity is
    the set of targets (``digest``), which a checkpoint must match to resume, and every slot is a record start.
    """

    def __init__(self, name: str, digest: str, current_slot: Callable[[], int]) -> None:
        self._name = name
        self._digest = digest
        self._current_slot = current_slot

    @property
    def path(self) -> str:
        return self._name

    def identity(self, offset: int | None = None) -> FileIdentity:
        now = self._current_slot()
        return FileIdentity(now if offset is None else offset, self._digest, self._digest, max(now, offset or 0))

    def follows_line_break(self, offset: int) -> bool:
        return True


def _read_at(fd: int, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset``, fewer only at the end of the file; the descriptor's position is untouched."""
    parts: list[bytes] = []
    while size > 0:
        part = os.pread(fd, size, offset)
        if not part:
            break
        parts.append(part)
        offset += len(part)
        size -= len(part)
    return b"".join(parts)


def _header_and_first_line(head: bytes) -> bytes:
    """The bytes up to the end of the second complete line that is not blank: the header and the first record.

    Fewer lines than that (a file with a header only, or a first record still being written): every
    complete line there is, so a half-written line never counts.
    """
    start = end = found = 0
    while found < 2:
        line_end = head.find(b"\n", start)
        if line_end < 0:
            break
        line = head[start:line_end]
        if line and not line.isspace():
            found += 1
            end = line_end + 1
        start = line_end + 1
    return head[:end]


@dataclass(frozen=True)
class Checkpoint:
    """The last acknowledged batch of one stream and where the input continues after it."""

    producer_id: str
    sequence: int  # the last acknowledged sequence; the next batch gets sequence + 1
    position: Position  # where the input continues after that batch
    batch_size: int
    file: FileIdentity  # the input's prefix up to position.offset
    rows_published: int = 0  # by every run of this stream together, up to this batch
    rows_read: int = 0  # likewise: rows_read = rows_published + rows_rejected + rows_filtered
    rows_rejected: int = 0
    written_at: str = ""

    def to_json(self) -> str:
        document: dict[str, Any] = {"version": VERSION, **asdict(self)}
        return json.dumps(document, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Checkpoint:
        """Parse and validate a checkpoint document; a ``ValueError`` names the first field that is wrong."""
        document = json.loads(text)
        if not isinstance(document, dict):
            raise ValueError(f"not a JSON object but {type(document).__name__}")
        version = document.get("version", _MISSING)
        if type(version) is not int or version != VERSION:
            older = " (written by an older rxstreamer)" if isinstance(version, int) and version < VERSION else ""
            raise _InvalidFieldError(
                "version", version, f"this rxstreamer reads checkpoint version {VERSION} only{older}"
            )
        return _validated(document)


def _get(document: dict[str, Any], name: str, prefix: str = "") -> Any:
    value = document.get(name, _MISSING)
    if value is _MISSING:
        raise _InvalidFieldError(prefix + name, value, "is missing")
    return value


def _integer(
    document: dict[str, Any], name: str, *, prefix: str = "", minimum: int = 0, maximum: int | None = None
) -> int:
    value = _get(document, name, prefix)
    allowed = (
        f"must be an integer >= {minimum}" if maximum is None else f"must be an integer from {minimum} to {maximum}"
    )
    if type(value) is not int or value < minimum or (maximum is not None and value > maximum):
        raise _InvalidFieldError(prefix + name, value, allowed)
    return value


def _text(document: dict[str, Any], name: str, *, prefix: str = "", digest: bool = False, empty: bool = True) -> str:
    value = _get(document, name, prefix)
    if not isinstance(value, str):
        raise _InvalidFieldError(prefix + name, value, "must be a string")
    if not empty and not value:
        raise _InvalidFieldError(prefix + name, value, "must not be empty")
    if digest and value != REPLACED and (len(value) != 64 or value.strip("0123456789abcdef")):
        raise _InvalidFieldError(prefix + name, value, "must be 64 lowercase hex digits (a sha256), or empty")
    return value


def _section(document: dict[str, Any], name: str) -> dict[str, Any]:
    value = _get(document, name)
    if not isinstance(value, dict):
        raise _InvalidFieldError(name, value, "must be a JSON object")
    return value


def _validated(document: dict[str, Any]) -> Checkpoint:
    """The checkpoint a document describes, each field checked for type and range and against the others."""
    sequence = _integer(document, "sequence", maximum=MAX_SEQUENCE)
    where = _section(document, "position")
    offset = _integer(where, "offset", prefix="position.")
    line = _integer(where, "line", prefix="position.")
    pass_number = _integer(where, "pass_number", prefix="position.")
    # Every line holds at least its line break, so lines never outnumber bytes; and the top of the file
    # (offset 0, line 0) is where a stream stands only before its first batch was acknowledged.
    if line > offset or (offset > 0 and line == 0):
        raise _InvalidFieldError(
            "position.line",
            line,
            f"must be from 1 to position.offset ({offset}) when the offset is > 0, 0 when it is 0",
        )
    # A checkpoint is written when a batch was acknowledged, and that batch ends past the header: the top of
    # the file goes with sequence 0 (nothing acknowledged), and only with it. Anything else would skip rows
    # never sent, or re-send rows under new sequence numbers that no consumer could recognise.
    if offset == 0 and sequence > 0:
        raise _InvalidFieldError("position.offset", offset, f"must be > 0 when sequence > 0 (it is {sequence})")
    if offset > 0 and sequence == 0:
        raise _InvalidFieldError("sequence", sequence, f"must be >= 1 when position.offset > 0 (it is {offset})")
    identity = _section(document, "file")
    prefix = _integer(identity, "prefix", prefix="file.")
    if prefix != offset:
        raise _InvalidFieldError(
            "file.prefix", prefix, f"must equal position.offset ({offset}): the bytes fingerprinted"
        )
    rows_read = _integer(document, "rows_read")
    rows_published = _integer(document, "rows_published")
    rows_rejected = _integer(document, "rows_rejected")
    for name, count in (("rows_published", rows_published), ("rows_rejected", rows_rejected)):
        if count > rows_read:
            raise _InvalidFieldError(
                name, count, f"must be <= rows_read ({rows_read}): only rows read are published or rejected"
            )
    return Checkpoint(
        producer_id=_text(document, "producer_id", empty=False),
        sequence=sequence,
        position=Position(offset, line, pass_number),
        batch_size=_integer(document, "batch_size", minimum=1),
        file=FileIdentity(
            prefix=prefix,
            fingerprint=_text(identity, "fingerprint", prefix="file.", digest=True),
            head=_text(identity, "head", prefix="file.", digest=True),
            size=_integer(identity, "size", prefix="file."),
        ),
        rows_published=rows_published,
        rows_read=rows_read,
        rows_rejected=rows_rejected,
        written_at=_text(document, "written_at"),
    )


def read_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint at ``path``, or None when there is none yet; ``CheckpointError`` naming what is wrong."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error.strerror}") from error
    if not stat.S_ISREG(mode):  # checked before opening: opening a FIFO would block
        raise CheckpointError(f"checkpoint {path} is not a regular file; {_MOVE_AWAY}")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CHECKPOINT_BYTES + 1)
    except FileNotFoundError:
        return None  # removed since the stat: there is none
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error.strerror}") from error
    if len(data) > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(
            f"checkpoint {path} is larger than {MAX_CHECKPOINT_BYTES} bytes, so not a checkpoint; {_MOVE_AWAY}"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CheckpointError(
            f"checkpoint {path} is not a valid checkpoint: not UTF-8 text ({error.reason} at byte {error.start + 1}); "
            f"{_MOVE_AWAY}"
        ) from error
    try:
        return Checkpoint.from_json(text)
    except (ValueError, RecursionError) as error:  # json's errors are ValueErrors; deep nesting is RecursionError
        raise CheckpointError(f"checkpoint {path} is not a valid checkpoint: {error}; {_MOVE_AWAY}") from error


class DurableFiles:
    """The system calls of an atomic, durable replace, one method each: the seam tests fail and record.

    Production uses the single ``DURABLE_FILES``; a test subclasses this, overriding a step to raise (ENOSPC,
    EIO) or to log the order of the calls, and hands it to ``write_checkpoint`` or ``Checkpointer``.
    """

    def create(self, path: Path) -> int:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)

    def write(self, fd: int, data: bytes) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def replace(self, source: Path, target: Path) -> None:
        os.replace(source, target)

    def open_directory(self, path: Path) -> int:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def remove(self, path: Path) -> None:
        os.unlink(path)


DURABLE_FILES: Final = DurableFiles()


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def write_checkpoint(path: Path, checkpoint: Checkpoint, files: DurableFiles = DURABLE_FILES) -> None:
    """Replace the checkpoint atomically and durably, or raise ``CheckpointError`` naming the path and the reason.

    The order is what makes it safe: the new content is on disk (fsync) before the rename makes it the
    checkpoint, and the directory is fsynced so the rename itself survives a machine crash. A failure before
    the rename leaves the previous checkpoint as it was; the temporary file is removed.
    """
    stamped = replace(checkpoint, written_at=datetime.now(UTC).isoformat())
    data = stamped.to_json().encode("utf-8")
    temporary = _temporary(path)
    step = "create the temporary file"
    try:
        fd = files.create(temporary)
        try:
            step = "write the temporary file"
            written = 0
            while written < len(data):
                written += files.write(fd, data[written:])
            step = "fsync the temporary file"
            files.fsync(fd)
        except BaseException:
            _close_quietly(files, fd)
            raise
        step = "close the temporary file"
        files.close(fd)
        step = "rename the temporary file over it"
        files.replace(temporary, path)
    except OSError as error:
        _remove_quietly(files, temporary)
        raise CheckpointError(f"cannot write checkpoint {path}: {step} failed: {_reason(error)}") from error
    step = "open its directory"
    try:
        directory = files.open_directory(path.parent)
        try:
            step = "fsync its directory"
            files.fsync(directory)
        finally:
            _close_quietly(files, directory)
    except OSError as error:
        raise CheckpointError(
            f"cannot write checkpoint {path} durably (it is written, but may not survive a crash): {step} failed: "
            f"{_reason(error)}"
        ) from error


def check_writable(path: Path, files: DurableFiles = DURABLE_FILES) -> None:
    """Fail now, not after the first batch was published, when checkpoints cannot be written at ``path``.

    Creates and removes the temporary file the writes use, which is exactly what each write needs (a
    permission check would be wrong for root and for read-only mounts); a path that is a directory or
    another non-file is refused too, since the rename over it would fail.
    """
    cannot = f"checkpoint {path} (telemetry.checkpoint_path) cannot be written"
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        pass
    except OSError as error:
        raise CheckpointError(f"{cannot}: {_reason(error)}") from error
    else:
        if not stat.S_ISREG(mode):
            raise CheckpointError(f"{cannot}: it exists and is not a regular file")
    temporary = _temporary(path)
    try:
        files.close(files.create(temporary))
        files.remove(temporary)
    except OSError as error:
        raise CheckpointError(f"{cannot}: creating a file in {path.parent} failed: {_reason(error)}") from error


def _close_quietly(files: DurableFiles, fd: int) -> None:
    with contextlib.suppress(OSError):  # the error being handled is the one to report
        files.close(fd)


def _remove_quietly(files: DurableFiles, path: Path) -> None:
    with contextlib.suppress(OSError):  # it may never have been created; the write's own error is the one to report
        files.remove(path)


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


def resume_mismatch(checkpoint: Checkpoint, current: FileIdentity, producer_id: str, batch_size: int) -> str | None:
    """Why this checkpoint cannot continue this stream, or None when it can.

    ``current`` is the input's identity now, up to the checkpoint's offset. Resuming replays batches by
    sequence number, which is only safe when the same rows fall into the same batches: the bytes before the
    offset unchanged (bytes appended after it are new rows, and welcome), cut with the same batch size,
    under the same producer id.
    """
    offset = checkpoint.position.offset
    if current.size < offset:
        return (
            f"the file is now {current.size} bytes, shorter than the checkpoint's offset {offset} "
            "(it was truncated or replaced)"
        )
    if checkpoint.file.fingerprint == REPLACED:
        return "the file it was written for was replaced (rotated) while it was being streamed"
    if current.fingerprint != checkpoint.file.fingerprint:
        return f"the first {offset} bytes of the file differ from those it was written for (changed or replaced)"
    if checkpoint.batch_size != batch_size:
        return f"it was written with telemetry.batch_size = {checkpoint.batch_size}, not {batch_size}"
    if checkpoint.producer_id != producer_id:
        return f"it belongs to producer {checkpoint.producer_id!r}, not {producer_id!r}"
    return None


@dataclass(frozen=True)
class ResumePlan:
    """Where a run starts and how it numbers its batches, decided from the checkpoint found (if any)."""

    start: Position | None  # None: from the top of the file
    first_sequence: int
    before: Checkpoint | None = None  # the checkpoint resumed from, with the totals of the runs before
    ignored_because: str | None = None  # set when start_over discarded a checkpoint that did not fit
    size_now: int | None = None  # the input's size when the plan was made, to report growth since


def plan_resume(
    checkpoint: Checkpoint | None,
    *,
    file: CheckpointedInput,
    producer_id: str,
    batch_size: int,
    start_over: bool,
    checkpoint_path: Path,
) -> ResumePlan:
    """Continue after the checkpoint when it fits this stream; otherwise refuse, or start over if asked.

    Starting over keeps counting sequences after the old checkpoint's: reusing a sequence number for
    different rows would make the queue drop them as duplicates of the old batch. An offset inside a line
    (its prefix unchanged, so the checkpoint ended after a last line that had no line break yet, and the
    file has grown since) does not fit either: resuming there would turn the rest of that line into a row.
    """
    if checkpoint is None:
        return ResumePlan(start=None, first_sequence=1)
    offset = checkpoint.position.offset
    current = file.identity(offset)
    mismatch = resume_mismatch(checkpoint, current, producer_id, batch_size)
    if mismatch is None and offset < current.size and not file.follows_line_break(offset):
        mismatch = (
            f"its position.offset = {offset} is not at a line break of {file.path}: the line before it had not "
            "ended when it was read (or the checkpoint was edited), and the file has grown since"
        )
    if mismatch is None and not start_over:
        return ResumePlan(checkpoint.position, checkpoint.sequence + 1, checkpoint, size_now=current.size)
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
        size_now=current.size,
    )


class Checkpointer:
    """Records each acknowledged batch of one stream; called inside the pipeline after every ack.

    Acknowledgements arrive in sequence order (one publish at a time). The counts come with each ack (the
    source's counts when its batch was cut), not from the source's live counts, which run ahead of the
    acknowledged batch when batches are read ahead: a checkpoint holds exactly what was acknowledged. Each
    checkpoint fingerprints the input's prefix up to its own offset, so that a restart can tell an input
    that only grew since from one that changed.
    """

    def __init__(
        self,
        path: Path,
        *,
        producer_id: str,
        batch_size: int,
        file: CheckpointedInput,
        before: Checkpoint | None = None,
        files: DurableFiles = DURABLE_FILES,
    ) -> None:
        self.path = path
        self._producer_id = producer_id
        self._batch_size = batch_size
        self._file = file
        self._before = before
        self._files = files
        self._rows_published = 0
        self.last: Checkpoint | None = None

    def __call__(self, ack: PublishAck) -> None:
        if ack.position is None:
            return  # a source that cannot say where it is: nothing to resume from
        self._rows_published += ack.rows
        read = ack.read or ReadCounts(self._rows_published, 0)  # a source that does not count: what was published
        before = self._before
        try:
            identity = self._file.identity(ack.position.offset)
        except OSError as error:
            raise CheckpointError(
                f"cannot write checkpoint {self.path}: cannot fingerprint {self._file.path}: {_reason(error)}"
            ) from error
        checkpoint = Checkpoint(
            producer_id=self._producer_id,
            sequence=ack.sequence,
            position=ack.position,
            batch_size=self._batch_size,
            file=identity,
            rows_published=self._rows_published + (before.rows_published if before else 0),
            rows_read=read.rows_read + (before.rows_read if before else 0),
            rows_rejected=read.rows_rejected + (before.rows_rejected if before else 0),
        )
        write_checkpoint(self.path, checkpoint, self._files)
        self.last = checkpoint
