"""One durable topic's log on disk: segment files, recovery after a crash, and reclaiming released space.

A topic directory holds segment files named by the offset of their first record, zero-padded to 20 digits
(``00000000000000000000.log``), each a run of records framed as ``framing.py`` describes. Offsets are
contiguous within and across segments. Only the last segment, the active one, is appended to; a new one is
started when a record would take the active one past ``segment_bytes``, so that released messages can be
deleted a whole file at a time, oldest first. The last segment is never deleted: when every message is
released, an empty segment named by the next offset replaces it, so offsets are never reused, even across
restarts.

Durability, by fsync policy. A record is written with ``write()`` before its publish is acknowledged.
After the broker process dies, even by SIGKILL, everything written is in the operating system's page
cache and reaches the file, so no acknowledged message is lost under any policy. The policy only matters
when the machine itself crashes or loses power:

- ``always``: fsync after each append, before acknowledging it; nothing acknowledged is lost.
- ``interval``: ``flush()`` (called by the data directory's flusher thread every ``fsync_interval``)
  fsyncs what was written since the last flush; up to that long of acknowledged messages can be lost.
- ``never``: the operating system writes back when it chooses (typically within ~30 s on Linux).

A failed fsync leaves the log refusing every append until the broker restarts: the kernel may have thrown
away the dirty pages it failed to write, so carrying on would acknowledge messages on top of a hole.

Recovery reads every segment in order. Damage at the end of the last segment (a record cut short, a bad
checksum, garbage) is what an interrupted append leaves, so it is cut off with a ``broker.log_truncated``
warning. Damage followed by intact records, damage at the end of an earlier segment, a gap in the offsets
or a missing segment mean acknowledged messages would be lost by carrying on: the broker refuses to start
and names the file and byte offset.
"""

from __future__ import annotations

import errno
import os
import re
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from rxstreamer.broker.framing import FramingError, Record, decode, encode, find_next_record
from rxstreamer.broker.store import StorageFailed

log = structlog.get_logger()

FsyncPolicy = Literal["always", "interval", "never"]
FSYNC_POLICIES: tuple[FsyncPolicy, ...] = ("always", "interval", "never")

# Small enough that retention frees space in steps of a few percent of the default max_bytes (256 MiB),
# large enough that a busy topic starts a new file only every few hundred 40 KB messages.
DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024

_SEGMENT_NAME = re.compile(r"(\d{20})\.log")

Fsync = Callable[[int], None]


class DataDirError(Exception):
    """The data on disk cannot be used as it is; the message names the file and what the operator can do."""


def segment_name(base_offset: int) -> str:
    """The file name of the segment whose first record has ``base_offset``; sorts in offset order."""
    return f"{base_offset:020d}.log"


@dataclass
class _Segment:
    base: int
    path: Path
    size: int = 0


class SegmentLog:
    """The append-only log of one topic, in ``directory``; thread-safe.

    ``fsync`` is the call that flushes a file descriptor, injectable so tests can count flushes.
    """

    def __init__(
        self,
        directory: Path,
        *,
        topic: str,
        policy: FsyncPolicy = "always",
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync: Fsync = os.fsync,
    ) -> None:
        if segment_bytes < 1:
            raise ValueError(f"segment_bytes must be >= 1, got {segment_bytes}")
        self.directory = directory
        self.topic = topic
        self.policy = policy
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._fd: int | None = None  # the active segment, open for appending once recovered
        self._next_offset = 0
        self._dirty = False  # written since the last fsync, under the "interval" policy
        self._failure: str | None = None
        self._closed = False

    # -- recovery --------------------------------------------------------------------------------

    def recover(self) -> Iterator[Record]:
        """Every record on disk, oldest first, cutting off a damaged tail; then the log is ready to append.

        Raises DataDirError when damage cannot be cut off without losing acknowledged messages, and
        StorageFailed when the files cannot be read or written.
        """
        try:
            found = self._find_segments()
            if not found:
                self._start_segment(0)
                return
            expected = found[0].base
            for index, segment in enumerate(found):
                _check_continues(segment, expected)
                expected = yield from self._replay(segment, expected, last=index == len(found) - 1)
                self._segments.append(segment)
            self._next_offset = expected
            self._fd = os.open(found[-1].path, os.O_WRONLY | os.O_APPEND)
        except OSError as error:
            raise StorageFailed(self.topic, f"cannot recover {_describe(error)}") from error

    def _find_segments(self) -> list[_Segment]:
        found = []
        for entry in os.scandir(self.directory):
            match = _SEGMENT_NAME.fullmatch(entry.name)
            if match is not None and entry.is_file():
                found.append(_Segment(base=int(match.group(1)), path=Path(entry.path)))
        return sorted(found, key=lambda segment: segment.base)

    def _replay(self, segment: _Segment, expected: int, *, last: bool) -> Generator[Record, None, int]:
        """Yield the segment's records; returns the offset after its last one."""
        data = segment.path.read_bytes()
        position = 0
        while position < len(data):
            try:
                record, end = decode(data, position)
            except FramingError as damage:
                self._cut_tail(segment, data, damage, expected, last=last)
                break
            if record.offset != expected:
                raise DataDirError(
                    f"{segment.path} holds offset {record.offset} at byte {position} where offset {expected} "
                    "belongs; the file is damaged or not this topic's"
                )
            yield record
            expected += 1
            position = end
        segment.size = position
        return expected

    def _cut_tail(self, segment: _Segment, data: bytes, damage: FramingError, expected: int, *, last: bool) -> None:
        intact = find_next_record(data, damage.position + 1, min_offset=expected)
        if intact is not None:
            raise DataDirError(
                f"{segment.path} is corrupt at byte {damage.position} ({damage.reason}) and intact records "
                f"follow at byte {intact}; refusing to start rather than drop acknowledged messages "
                "(restore the file from a backup or move the topic directory away)"
            )
        if not last:
            raise DataDirError(
                f"{segment.path} is damaged at byte {damage.position} ({damage.reason}) but later segments "
                "exist; refusing to start rather than drop acknowledged messages "
                "(restore the file from a backup or move the topic directory away)"
            )
        os.truncate(segment.path, damage.position)
        if self.policy != "never":
            self._sync_path(segment.path)
        log.warning(
            "broker.log_truncated",
            topic=self.topic,
            segment=segment.path.name,
            position=damage.position,
            bytes_cut=len(data) - damage.position,
            reason=damage.reason,
        )

    # -- writing ---------------------------------------------------------------------------------

    @property
    def next_offset(self) -> int:
        """The offset the next record must have."""
        with self._lock:
            return self._next_offset

    def append(self, record: Record) -> None:
        """Write one record, and fsync it under the ``always`` policy, before the caller acknowledges it.

        Raises StorageFailed with nothing appended: a partly written record is cut off again.
        """
        data = encode(record)
        with self._lock:
            fd = self._writable_fd(record)
            if self._segments[-1].size > 0 and self._segments[-1].size + len(data) > self._segment_bytes:
                fd = self._roll(record.offset)
            self._write(fd, data)
            self._next_offset = record.offset + 1
            if self.policy == "always":
                self._sync_or_fail(fd, self._segments[-1].path)
            elif self.policy == "interval":
                self._dirty = True

    def flush(self) -> None:
        """Fsync what was written since the last flush (the ``interval`` policy's flusher calls this).

        The fsync runs on a duplicate descriptor outside the lock, so appends are not held up by it.
        """
        with self._lock:
            if not self._dirty or self._closed or self._failure is not None or self._fd is None:
                return
            self._dirty = False
            path = self._segments[-1].path
            try:
                fd = os.dup(self._fd)
            except OSError as error:
                self._dirty = True
                log.warning("broker.log_flush_failed", topic=self.topic, reason=_describe(error))
                return
        try:
            self._fsync(fd)
        except OSError as error:
            with self._lock:
                self._fail(f"fsync of {path} failed: {_describe(error)}")
        finally:
            os.close(fd)

    def release_before(self, offset: int) -> None:
        """Delete the segments whose records all have offsets below ``offset``; never raises.

        Runs on the store's read and append paths, so a file that cannot be deleted is logged, not raised.
        """
        with self._lock:
            if self._closed or not self._segments:
                return
            while len(self._segments) > 1 and self._segments[1].base <= offset:
                self._delete(self._segments.pop(0))
            active = self._segments[-1]
            if offset >= self._next_offset > active.base and self._failure is None:
                self._replace_released_active()

    def close(self) -> None:
        """Fsync what the ``interval`` policy left unflushed and close the active segment."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            fd, self._fd = self._fd, None
            if fd is None:
                return
            try:
                if self._dirty and self._failure is None:
                    self._sync_or_fail(fd, self._segments[-1].path)
            except StorageFailed:
                pass  # logged by _fail; nothing is acknowledged any more
            finally:
                os.close(fd)

    # -- internals (called with the lock held) ---------------------------------------------------

    def _writable_fd(self, record: Record) -> int:
        if self._closed or self._fd is None:
            raise StorageFailed(self.topic, "the log is closed")
        if self._failure is not None:
            raise StorageFailed(self.topic, f"{self._failure}; restart the broker to recover the log")
        if record.offset != self._next_offset:
            raise ValueError(f"record offset {record.offset} out of order: the log expects {self._next_offset}")
        return self._fd

    def _write(self, fd: int, data: bytes) -> None:
        segment = self._segments[-1]
        try:
            _write_all(fd, data)
        except OSError as error:
            reason = f"write to {segment.path} failed: {_describe(error)}"
            self._undo_write(fd, segment, reason)
            raise StorageFailed(self.topic, reason) from error
        segment.size += len(data)

    def _undo_write(self, fd: int, segment: _Segment, reason: str) -> None:
        """Cut a partly written record off, so the next append does not land behind garbage."""
        try:
            os.ftruncate(fd, segment.size)
        except OSError as error:
            self._fail(f"{reason}, and cutting it off failed: {_describe(error)}")

    def _roll(self, base: int) -> int:
        """Start the segment ``base`` and make it the active one; the old one is complete on disk first."""
        old_fd = self._fd
        assert old_fd is not None
        if self._dirty:
            self._sync_or_fail(old_fd, self._segments[-1].path)
            self._dirty = False
        try:
            return self._start_segment(base)
        except OSError as error:
            raise StorageFailed(self.topic, f"cannot start segment {segment_name(base)}: {_describe(error)}") from error
        finally:
            if self._fd != old_fd:  # the new segment exists, even if its directory entry failed to sync
                os.close(old_fd)

    def _start_segment(self, base: int) -> int:
        path = self.directory / segment_name(base)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self._segments.append(_Segment(base=base, path=path))
        self._fd = fd
        if self.policy != "never":
            self._sync_or_fail_path(self.directory)  # the new file's name must survive a crash too
        return fd

    def _replace_released_active(self) -> None:
        """Every message is released: an empty segment keeps the next offset, so the full one can go."""
        try:
            self._roll(self._next_offset)
        except StorageFailed as error:
            log.warning("broker.segment_roll_failed", topic=self.topic, reason=error.reason)
            return
        self._delete(self._segments.pop(0))

    def _delete(self, segment: _Segment) -> None:
        try:
            segment.path.unlink(missing_ok=True)
        except OSError as error:
            # Left for the next start to find (its records are released) rather than retried on every read.
            log.warning("broker.segment_delete_failed", topic=self.topic, segment=segment.path.name, reason=str(error))
            return
        log.info("broker.segment_deleted", topic=self.topic, segment=segment.path.name, bytes=segment.size)

    def _sync_or_fail(self, fd: int, path: Path) -> None:
        try:
            self._fsync(fd)
        except OSError as error:
            reason = f"fsync of {path} failed: {_describe(error)}"
            self._fail(reason)
            raise StorageFailed(self.topic, reason) from error

    def _sync_or_fail_path(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            self._sync_or_fail(fd, path)
        finally:
            os.close(fd)

    def _sync_path(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            self._fsync(fd)
        finally:
            os.close(fd)

    def _fail(self, reason: str) -> None:
        if self._failure is None:
            self._failure = reason
            log.error("broker.log_failed", topic=self.topic, reason=reason)


def _check_continues(segment: _Segment, expected: int) -> None:
    if segment.base != expected:
        raise DataDirError(
            f"{segment.path} starts at offset {segment.base} but the segment before it ends at offset "
            f"{expected - 1}: a segment file is missing or was renamed"
        )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written == 0:
            raise OSError(errno.EIO, "write accepted no bytes")
        view = view[written:]


def _describe(error: OSError) -> str:
    """One line for an OSError: its reason and, when it has one, the file."""
    reason = error.strerror or str(error)
    return f"{error.filename}: {reason}" if error.filename else reason
