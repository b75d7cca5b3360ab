"""The data directory's lock: one broker per directory, released by the kernel however the holder dies.

``DIR/.lock`` is ``fcntl.flock``ed by the broker using DIR and holds its pid, for the message a second
broker gets. The lock is advisory and tied to the open file, so the kernel releases it when the holder
dies (even by SIGKILL) and a stale lock file never keeps a restarted broker out.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import structlog

from rxstreamer.broker.errors import DataDirError

log = structlog.get_logger()

LOCK_FILE = ".lock"
_PROBE_FILE = ".write-probe"


class DirectoryLock:
    """The exclusive hold of one data directory; take it with ``DirectoryLock.take``."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def take(cls, path: Path) -> DirectoryLock:
        """Create (if needed), lock and check ``path``; raises DataDirError with a one-line reason."""
        _create(path)
        fd = _take_lock(path)
        try:
            _probe_writable(path)
        except DataDirError:
            os.close(fd)
            raise
        return cls(path, fd)

    def release(self) -> None:
        """Let another broker have the directory; safe to call more than once."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


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
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
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
