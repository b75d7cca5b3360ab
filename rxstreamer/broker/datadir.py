"""A durable broker's data directory: held by one broker at a time, one log directory per topic.

Layout::

    DIR/.lock            flock()ed by the broker using DIR; holds its pid, for the message a second one gets
    DIR/<topic>/         the topic's segment files (see segments.py)

Topic names may start with "." (".", ".." and ".lock" are all valid), which would clash with the directory
itself, its parent or the lock file. Such a topic's directory starts with "%" instead: "%" is never part
of a topic name, so the mapping is one to one and keeps the name's length within the 255-byte file
name limit. Every other topic's directory is its name.

The lock is an advisory ``fcntl.flock`` on an open file, so the kernel releases it when the holder dies
(even by SIGKILL) and a stale lock file never keeps a restarted broker out.
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
from pathlib import Path

import structlog

from rxstreamer.broker.segments import (
    DEFAULT_SEGMENT_BYTES,
    FSYNC_POLICIES,
    DataDirError,
    Fsync,
    FsyncPolicy,
    SegmentLog,
)
from rxstreamer.broker.store import StorageFailed

log = structlog.get_logger()

LOCK_FILE = ".lock"
_PROBE_FILE = ".write-probe"
_ESCAPED_DOT = "%"
# The names server.TOPIC_PATTERN accepts; only directories that decode to one are taken for topics.
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,255}")


def topic_directory_name(topic: str) -> str:
    """The directory name of ``topic``: the name itself unless it starts with "."."""
    return _ESCAPED_DOT + topic[1:] if topic.startswith(".") else topic


def topic_of_directory(name: str) -> str | None:
    """The topic whose directory is ``name``, or None when ``name`` is not a topic directory."""
    topic = "." + name[1:] if name.startswith(_ESCAPED_DOT) else name
    return topic if _TOPIC.fullmatch(topic) and not name.startswith(".") else None


class DataDir:
    """The data directory of one running broker; create it with ``DataDir.open``.

    Under the ``interval`` policy it runs the flusher thread that fsyncs every log every ``interval``
    seconds, so an idle topic is not left unflushed until its next publish.
    """

    def __init__(
        self,
        path: Path,
        *,
        lock_fd: int,
        policy: FsyncPolicy,
        interval: float,
        segment_bytes: int,
        fsync: Fsync,
    ) -> None:
        self.path = path
        self.policy = policy
        self.interval = interval
        self._lock_fd = lock_fd
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        self._lock = threading.Lock()
        self._logs: list[SegmentLog] = []
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        if policy == "interval":
            self._flusher = threading.Thread(target=self._flush_periodically, name="broker-fsync", daemon=True)
            self._flusher.start()

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        policy: str = "always",
        interval: float = 0.1,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync: Fsync = os.fsync,
    ) -> DataDir:
        """Create (if needed), lock and check ``path``; raises DataDirError with a one-line reason."""
        checked = _checked_policy(policy, interval, segment_bytes)
        _create(path)
        lock_fd = _take_lock(path)
        try:
            _probe_writable(path)
        except DataDirError:
            os.close(lock_fd)
            raise
        return cls(path, lock_fd=lock_fd, policy=checked, interval=interval, segment_bytes=segment_bytes, fsync=fsync)

    def topic_names(self) -> list[str]:
        """Topics with a directory here, sorted; anything else in the directory is logged and left alone."""
        names = []
        with os.scandir(self.path) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue  # the broker's own files
                topic = topic_of_directory(entry.name)
                if topic is None or not entry.is_dir():
                    log.warning("broker.data_dir_entry_ignored", path=entry.path)
                    continue
                names.append(topic)
        return sorted(names)

    def open_log(self, topic: str) -> SegmentLog:
        """The topic's log (its directory created if new), to be recovered before use."""
        directory = self.path / topic_directory_name(topic)
        try:
            existed = directory.is_dir()
            directory.mkdir(exist_ok=True)
            if not existed and self.policy != "never":
                _sync_directory(self.path, self._fsync)
        except OSError as error:
            raise StorageFailed(topic, f"cannot create {directory}: {error.strerror or error}") from error
        segment_log = SegmentLog(
            directory, topic=topic, policy=self.policy, segment_bytes=self._segment_bytes, fsync=self._fsync
        )
        with self._lock:
            self._logs.append(segment_log)
        return segment_log

    def flush(self) -> None:
        """Fsync every log written to since its last flush."""
        with self._lock:
            logs = list(self._logs)
        for segment_log in logs:
            segment_log.flush()

    def close(self) -> None:
        """Stop the flusher and release the lock; the logs are closed by their topics before this."""
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        with self._lock:
            lock_fd, self._lock_fd = self._lock_fd, -1
        if lock_fd >= 0:
            os.close(lock_fd)

    def _flush_periodically(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()


def _checked_policy(policy: str, interval: float, segment_bytes: int) -> FsyncPolicy:
    if interval <= 0:
        raise ValueError(f"fsync_interval must be > 0 seconds, got {interval}")
    if segment_bytes < 1:
        raise ValueError(f"segment_bytes must be >= 1, got {segment_bytes}")
    for known in FSYNC_POLICIES:
        if policy == known:
            return known
    raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, got {policy!r}")


def _create(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataDirError(f"cannot create data directory {path}: {error.strerror or error}") from error
    if not path.is_dir():
        raise DataDirError(f"cannot use data directory {path}: it is not a directory")


def _take_lock(path: Path) -> int:
    """An open descriptor holding the directory's exclusive lock; fails at once if another broker has it."""
    lock_path = path / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise DataDirError(f"cannot write to data directory {path}: {error.strerror or error}") from error
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(fd)
        os.close(fd)
        raise DataDirError(f"data directory {path} is in use by another broker ({holder} holds {lock_path})") from None
    except OSError as error:
        os.close(fd)
        raise DataDirError(f"cannot lock {lock_path}: {error.strerror or error}") from error
    _record_holder(fd)
    return fd


def _lock_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "another process"


def _record_holder(fd: int) -> None:
    """Write our pid into the lock file; only informative, so a failure is not fatal."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as error:
        log.warning("broker.lock_pid_not_written", reason=str(error))


def _probe_writable(path: Path) -> None:
    """Fail at start, not at the first publish, when files cannot be created here."""
    probe = path / _PROBE_FILE
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.close(fd)
        probe.unlink()
    except OSError as error:
        raise DataDirError(f"cannot write to data directory {path}: {error.strerror or error}") from error


def _sync_directory(path: Path, fsync: Fsync) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        fsync(fd)
    finally:
        os.close(fd)
