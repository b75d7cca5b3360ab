"""A durable broker's topics in one SQLite database: what is acknowledged is on disk, and nothing twice.

Layout of the data directory::

    DIR/.lock               flock()ed by the broker using DIR (see dirlock.py)
    DIR/broker.sqlite3      every topic: the database, in write-ahead-log mode
    DIR/broker.sqlite3-wal  its write-ahead log (SQLite's own; folded into the database when it closes)
    DIR/broker.sqlite3-shm  the log's index, shared by the broker's two connections (SQLite's own)

Two connections serve the whole broker, so a topic costs no file descriptor: the broker holds six (lock,
database and log twice, index) however many topics it has. One does every read and write, its use
serialised by a lock; the other is the checkpointer's, so that copying the log into the database does not
hold up publishes. SQLite's locking is the ordinary one, so other processes can read the database while
the broker runs; the directory lock keeps every other broker out, and nothing else should write to it.

Tables: ``topics`` (a name, and the offset below which everything is released, so offsets are never
reused), ``messages`` (one row per retained message, with a UNIQUE key on (topic, producer_id, sequence)
for producers that have an id) and ``released_ids`` (the identities, with their payload digests, of
released messages the broker still remembers, so a late re-send is still a duplicate after a restart).
Releasing a message deletes its row; the database file does not shrink, SQLite reuses the freed pages
(secure_delete=FAST: without also writing them out zeroed).

Each message is written twice: appended to the log by its commit, then copied into the database by a
checkpoint. The checkpointer thread does the copying on its own connection whenever about a MiB more was
committed (``_CHECKPOINT_STEP_BYTES``), in the background and in small steps, so that a publish hardly
ever waits for it and it never keeps a CPU from publishes for long. SQLite starts the log over from its
beginning, rather than growing it, only at a commit that finds it all copied: so once the log has grown by
4 MiB, the checkpointer copies again until a pass ends with nothing committed meanwhile, and after three
that did not, copies the rest holding the lock. Should it fall far behind, SQLite checkpoints on the
publishing connection itself past 64 MiB of log.

Durability, by ``broker.fsync`` policy. Every publish is one transaction, committed before it is
acknowledged; a commit hands its pages to the operating system, so after the broker process dies, even by
SIGKILL, SQLite replays its log on the next start and no acknowledged message is lost under any policy. The
policy only matters when the machine itself crashes or loses power:

- ``always`` (synchronous=FULL): each commit is fsynced before the acknowledgement; nothing acknowledged
  is lost. Checkpoints fsync the database before the log can start over.
- ``interval`` (synchronous=NORMAL): commits are not fsynced; the checkpointer checkpoints every
  ``fsync_interval`` (besides its steps), and each checkpoint fsyncs the log before copying it and the
  database after. A power loss can lose the acknowledged messages of the last interval (plus the time a
  checkpoint takes), never corrupt the database.
- ``never`` (synchronous=OFF): SQLite never fsyncs; the operating system writes back when it chooses
  (typically within ~30 s on Linux). A power loss can lose that much, and, as SQLite documents for this
  mode, may corrupt the database, which the next start then refuses.

At start the database is checked with ``PRAGMA quick_check`` (it reads every page: about a second per GB);
a file that is not a SQLite database, or a damaged one, is refused with a one-line message and never
repaired or truncated. A write that fails (a full disk, an I/O error) refuses the publish as StorageFailed;
after an I/O error, a checkpoint's included, every later write is refused until the broker restarts,
because the kernel may have dropped pages it failed to write, so carrying on could acknowledge messages on
top of a hole.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, get_args

import structlog

from rxstreamer.broker.dirlock import DirectoryLock
from rxstreamer.broker.errors import DataDirError, StorageFailed
from rxstreamer.broker.store import Record, Recovery, ReleasedId
from rxstreamer.config import FsyncPolicy  # declared with broker.fsync: config cannot import the broker

log = structlog.get_logger()

_T = TypeVar("_T")

FSYNC_POLICIES: tuple[FsyncPolicy, ...] = get_args(FsyncPolicy)
DATABASE_FILE = "broker.sqlite3"

_SYNCHRONOUS: dict[FsyncPolicy, str] = {"always": "FULL", "interval": "NORMAL", "never": "OFF"}
# "RXSQ": tells a broker database from any other SQLite file put in the directory.
APPLICATION_ID = 0x52585351
SCHEMA_VERSION = 1
# The checkpointer copies the log into the database each time about this much was committed: in small
# steps, so that it never keeps a CPU from the publishes for long.
_CHECKPOINT_STEP_BYTES = 1 << 20
# Once the log has grown by this much since it last started over, the checkpointer copies all of it, so
# that the next commit starts it over from its beginning: its file keeps about this size and is overwritten
# in place rather than grown, which also makes its fsyncs cheaper.
_RESTART_BYTES = 4 << 20
# Passes without the lock that try to leave the log all copied, before one holds the lock to make sure.
_QUIET_PASSES = 3
# What a commit adds to the log besides its payload: the pages a row touches other than its overflow pages
# (table leaf and parent, one page per index, the database header; 4 KiB each), with their frame headers.
_COMMIT_OVERHEAD_BYTES = 5 * 4096
# Past this many pages of log (64 MiB at SQLite's 4 KiB pages), which only a checkpointer fallen far behind
# lets accumulate, SQLite checkpoints on the committing connection itself.
_SELF_CHECKPOINT_PAGES = 16384
# Errors after which the database is not written to again until a restart: the data may be damaged.
_STICKY_ERRORS = frozenset({sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_DAMAGED = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_OLD_SEGMENT = re.compile(r"\d{20}\.log")

_SCHEMA = """
CREATE TABLE topics (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    first_offset INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    topic_id INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    producer_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    published_at_ns INTEGER NOT NULL,
    headers TEXT NOT NULL,
    payload BLOB NOT NULL,
    digest BLOB NOT NULL,
    UNIQUE (topic_id, offset)
) STRICT;
CREATE UNIQUE INDEX messages_identity ON messages (topic_id, producer_id, sequence) WHERE producer_id <> '';
CREATE TABLE released_ids (
    topic_id INTEGER NOT NULL,
    producer_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    digest BLOB NOT NULL,
    PRIMARY KEY (topic_id, producer_id, sequence)
) STRICT, WITHOUT ROWID;
CREATE INDEX released_ids_offset ON released_ids (topic_id, offset);
"""

_INSERT_MESSAGE = (
    "INSERT INTO messages (topic_id, offset, producer_id, sequence, published_at_ns, headers, payload, digest)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


class Database:
    """The data directory of one running broker (``Storage`` for ``store.Broker``); open it with ``open``.

    It runs the checkpointer thread, which copies the write-ahead log into the database on its own
    connection while publishes go on; under the ``interval`` policy it also does so every ``interval``
    seconds, so an idle broker's last messages are not left unflushed until the next write.
    """

    def __init__(
        self,
        path: Path,
        *,
        connection: sqlite3.Connection,
        checkpoint_connection: sqlite3.Connection,
        lock: DirectoryLock,
        policy: FsyncPolicy,
        interval: float,
    ) -> None:
        self.path = path
        self.file = path / DATABASE_FILE
        self.policy = policy
        self.interval = interval
        self._connection = connection
        self._checkpoint_connection = checkpoint_connection  # used by the checkpointer thread only
        self._directory_lock = lock
        self._lock = threading.Lock()  # serialises the use of self._connection
        self._closed = False
        self._failure: str | None = None
        self._commits = 0  # transactions committed so far
        self._log_bytes = 0  # about how much the log has grown since it last started over
        self._step_bytes = 0  # about how much it has grown since the checkpointer was last woken
        self._checkpointed_commits = 0  # commits copied into the database, as far as the checkpointer knows
        self._last_background_failure: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_continually, name="broker-checkpoint", daemon=True
        )
        self._checkpointer.start()

    @classmethod
    def open(
        cls, path: Path, *, policy: str = "always", interval: float = 0.1, max_pages: int | None = None
    ) -> Database:
        """Lock ``path`` (created if needed) and open, check or create its database.

        Raises DataDirError with a one-line reason, and ValueError for a bad policy or interval.
        ``max_pages`` caps the database's size in pages, as a full disk would (tests use it).
        """
        checked = _checked_policy(policy, interval)
        lock = DirectoryLock.take(path)
        try:
            _refuse_segment_logs(path)
            connection = _connect(path / DATABASE_FILE, checked, max_pages)
            try:
                checkpoint_connection = _connect_checkpointer(path / DATABASE_FILE, checked)
            except BaseException:
                connection.close()
                raise
        except BaseException:
            lock.release()
            raise
        return cls(
            path,
            connection=connection,
            checkpoint_connection=checkpoint_connection,
            lock=lock,
            policy=checked,
            interval=interval,
        )

    # -- Storage ---------------------------------------------------------------------------------

    def topic_names(self) -> list[str]:
        """Every stored topic, sorted."""
        try:
            rows = self._read("*", lambda db: db.execute("SELECT name FROM topics ORDER BY name").fetchall())
        except StorageFailed as failed:
            raise DataDirError(f"cannot read the topics of database {self.file}: {failed.reason}") from failed
        return [str(name) for (name,) in rows]

    def open_log(self, topic: str) -> TopicLog:
        """The topic's log, its row committed first if the topic is new (nothing is left when that fails)."""
        row = self._read(topic, lambda db: db.execute("SELECT id FROM topics WHERE name = ?", (topic,)).fetchone())
        if row is not None:
            return TopicLog(self, topic, int(row[0]))
        topic_id = self._insert(topic, "INSERT INTO topics (name) VALUES (?)", (topic,), size=len(topic))
        return TopicLog(self, topic, topic_id)

    def close(self) -> None:
        """Stop the checkpointer, close the connections (SQLite folds the log in) and release the directory."""
        self._stop.set()
        self._wake.set()
        self._checkpointer.join()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # The checkpointer's connection first: the last one to close checkpoints and removes the log.
            for connection in (self._checkpoint_connection, self._connection):
                try:
                    connection.close()
                except sqlite3.Error as error:  # what was committed is in the log, replayed at the next start
                    log.warning("broker.database_close_failed", path=str(self.file), reason=_describe(error))
        self._directory_lock.release()

    # -- what TopicLog uses ----------------------------------------------------------------------

    def _read(self, topic: str, query: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            if self._closed:
                raise StorageFailed(topic, "the database is closed", path=str(self.file))
            try:
                return query(self._connection)
            except sqlite3.Error as error:
                raise self._failed(topic, error) from error

    def _insert(self, topic: str, statement: str, parameters: tuple[object, ...], *, size: int) -> int:
        """Run one INSERT as a transaction of its own, committed (and fsynced, by policy) before returning.

        ``size`` is about how many bytes the row holds. Returns the new row's rowid.
        """
        with self._lock:
            self._check_writable(topic)
            try:
                rowid = self._connection.execute(statement, parameters).lastrowid
            except sqlite3.Error as error:
                self._roll_back()
                raise self._failed(topic, error) from error
            self._committed(size)
        assert rowid is not None
        return rowid

    def _write(self, topic: str, statements: Callable[[sqlite3.Connection], _T], *, size: int) -> _T:
        """Run ``statements`` in one transaction, committed (and fsynced, by policy) before returning.

        ``size`` is about how many bytes they write.
        """
        with self._lock:
            self._check_writable(topic)
            try:
                self._connection.execute("BEGIN IMMEDIATE")
                result = statements(self._connection)
                self._connection.execute("COMMIT")
            except sqlite3.Error as error:
                self._roll_back()
                raise self._failed(topic, error) from error
            self._committed(size)
            return result

    def _check_writable(self, topic: str) -> None:
        if self._closed:
            raise StorageFailed(topic, "the database is closed", path=str(self.file))
        if self._failure is not None:
            raise StorageFailed(topic, f"{self._failure}; restart the broker to write again", path=str(self.file))

    def _committed(self, size: int) -> None:
        """Count a commit (with the lock held); wake the checkpointer each time the log has grown a step."""
        self._commits += 1
        self._log_bytes += size + _COMMIT_OVERHEAD_BYTES
        self._step_bytes += size + _COMMIT_OVERHEAD_BYTES
        if self._step_bytes >= _CHECKPOINT_STEP_BYTES:
            self._step_bytes = 0
            self._wake.set()

    def _failed(self, topic: str, error: sqlite3.Error) -> StorageFailed:
        reason = _describe(error)
        if error.sqlite_errorcode & 0xFF in _STICKY_ERRORS and self._failure is None:
            self._failure = reason
        return StorageFailed(topic, reason, path=str(self.file))

    def _roll_back(self) -> None:
        if self._connection.in_transaction:
            # SQLite rolls back by itself after the errors that make ROLLBACK fail.
            with contextlib.suppress(sqlite3.Error):
                self._connection.execute("ROLLBACK")

    def _background_failure(self, event: str, topic: str, error: StorageFailed) -> None:
        """Log a failure of work nobody waits for (release, checkpoint), once until it succeeds again."""
        if error.reason != self._last_background_failure:
            self._last_background_failure = error.reason
            log.warning(event, topic=topic, path=error.path, reason=error.reason)

    # -- the checkpointer thread -----------------------------------------------------------------

    def _checkpoint_continually(self) -> None:
        timeout = self.interval if self.policy == "interval" else None
        while not self._stop.is_set():
            self._wake.wait(timeout)
            self._wake.clear()
            if not self._stop.is_set():
                self._checkpoint()

    def _checkpoint(self) -> None:
        """Copy the log into the database (a checkpoint pass); let the log start over once it has grown.

        A pass runs on the checkpointer's own connection without the lock, so publishes go on meanwhile.
        It copies what was committed when it began; unless the policy is ``never`` it fsyncs the log first
        (the ``interval`` policy's flush) and the database after. Once the log has grown by
        ``_RESTART_BYTES``, all of it is copied (``_copy_all``).
        """
        with self._lock:
            if self._closed or self._failure is not None:
                return
            commits = self._commits
            start_over = self._log_bytes >= _RESTART_BYTES
        if commits == self._checkpointed_commits:
            return
        try:
            if start_over:
                self._copy_all(commits)
            elif self._checkpoint_pass() is not None:
                self._checkpointed_commits = commits
        except sqlite3.Error as error:
            with self._lock:
                failed = self._failed("*", error)
            self._background_failure("broker.checkpoint_failed", "*", failed)
            return
        self._last_background_failure = None

    def _copy_all(self, commits: int) -> None:
        """Copy all of the log, so that the next commit starts it over (SQLite does only then).

        Passes run without the lock until one ends with nothing committed since it began; should
        ``_QUIET_PASSES`` in a row not, a last pass holds the lock. ``commits`` were made before the first.
        """
        for _ in range(_QUIET_PASSES):
            copied_all = self._checkpoint_pass()
            if copied_all is None:
                return
            self._checkpointed_commits = commits
            with self._lock:
                if copied_all and self._commits == commits:
                    self._log_bytes = 0
                    return
                commits = self._commits
        with self._lock:
            if self._closed or self._failure is not None:
                return
            if self._checkpoint_pass() is not None:
                self._checkpointed_commits = self._commits
                self._log_bytes = 0

    def _checkpoint_pass(self) -> bool | None:
        """One passive checkpoint on the checkpointer's connection.

        Returns whether it copied all of the log it found, or None if SQLite was running another checkpoint.
        """
        ((busy, frames, copied),) = self._checkpoint_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        return None if busy else bool(frames == copied)


class TopicLog:
    """One topic's rows in the shared database (``MessageLog`` for ``store.TopicStore``); holds no file."""

    def __init__(self, database: Database, topic: str, topic_id: int) -> None:
        self._database = database
        self.topic = topic
        self._id = topic_id
        self._released_before = 0  # rows below this offset are deleted, as far as this log knows
        self._remembered_from: int | None = None  # no released id below this is kept; None: none kept

    def recover(self) -> Recovery:
        """The topic's retained rows and remembered ids; raises DataDirError when they do not add up."""
        try:
            first_offset, released, rows = self._database._read(self.topic, self._load)
        except StorageFailed as failed:
            raise DataDirError(
                f"cannot read topic {self.topic} from database {self._database.file}: {failed.reason}"
            ) from failed
        records = [self._record(row) for row in rows]
        for expected, record in enumerate(records, start=first_offset):
            if record.offset != expected:
                raise DataDirError(
                    f"database {self._database.file} holds offset {record.offset} of topic {self.topic} where "
                    f"offset {expected} belongs; it was changed by something other than the broker"
                )
        self._released_before = first_offset
        self._remembered_from = released[0].offset if released else None
        return Recovery(
            next_offset=first_offset + len(records),
            released=released,
            records=records,
        )

    def append(self, record: Record) -> None:
        """Insert and commit the message; raises StorageFailed with nothing written."""
        row = (
            self._id,
            record.offset,
            record.producer_id,
            record.sequence,
            record.published_at_ns,
            json.dumps(dict(record.headers), separators=(",", ":"), sort_keys=True),
            record.payload,
            record.digest,
        )
        self._database._insert(self.topic, _INSERT_MESSAGE, row, size=len(record.payload))

    def release(self, before: int, remember_from: int) -> None:
        """Delete the rows below ``before``, keeping the ids of those at or above ``remember_from``; never raises.

        Runs on the store's read and append paths, so a failure is logged and the work left for the next
        release, which deletes everything below its own bound.
        """
        nothing_to_forget = self._remembered_from is None or remember_from <= self._remembered_from
        if before <= self._released_before and nothing_to_forget:
            return
        try:
            self._database._write(self.topic, lambda db: self._release(db, before, remember_from), size=0)
        except StorageFailed as failed:
            self._database._background_failure("broker.release_failed", self.topic, failed)
            return
        self._released_before = max(self._released_before, before)
        self._remembered_from = remember_from

    def close(self) -> None:
        """Nothing to close: the topic's rows live in the shared database, closed by the broker."""

    def _load(self, db: sqlite3.Connection) -> tuple[int, list[ReleasedId], list[tuple[object, ...]]]:
        (first_offset,) = db.execute("SELECT first_offset FROM topics WHERE id = ?", (self._id,)).fetchone()
        released = [
            ReleasedId(producer_id=str(producer), sequence=int(sequence), offset=int(offset), digest=bytes(digest))
            for producer, sequence, offset, digest in db.execute(
                "SELECT producer_id, sequence, offset, digest FROM released_ids WHERE topic_id = ? ORDER BY offset",
                (self._id,),
            )
        ]
        rows = db.execute(
            "SELECT offset, producer_id, sequence, published_at_ns, headers, payload, digest FROM messages"
            " WHERE topic_id = ? ORDER BY offset",
            (self._id,),
        ).fetchall()
        return int(first_offset), released, rows

    def _record(self, row: tuple[object, ...]) -> Record:
        offset, producer_id, sequence, published_at_ns, headers, payload, digest = row
        try:
            decoded = json.loads(str(headers))
        except ValueError:
            decoded = None
        if not isinstance(decoded, dict):
            raise DataDirError(
                f"database {self._database.file} holds unreadable headers at offset {offset} of topic {self.topic}"
            )
        return Record(
            offset=_int(offset),
            producer_id=str(producer_id),
            sequence=_int(sequence),
            published_at_ns=_int(published_at_ns),
            headers={str(key): str(value) for key, value in decoded.items()},
            payload=bytes(payload) if isinstance(payload, bytes | bytearray | memoryview) else b"",
            digest=bytes(digest) if isinstance(digest, bytes | bytearray | memoryview) else b"",
        )

    def _release(self, db: sqlite3.Connection, before: int, remember_from: int) -> None:
        db.execute(
            "INSERT OR REPLACE INTO released_ids (topic_id, producer_id, sequence, offset, digest)"
            " SELECT topic_id, producer_id, sequence, offset, digest FROM messages"
            " WHERE topic_id = ? AND offset < ? AND offset >= ? AND producer_id <> ''",
            (self._id, before, remember_from),
        )
        db.execute("DELETE FROM messages WHERE topic_id = ? AND offset < ?", (self._id, before))
        db.execute("DELETE FROM released_ids WHERE topic_id = ? AND offset < ?", (self._id, remember_from))
        db.execute("UPDATE topics SET first_offset = ? WHERE id = ? AND first_offset < ?", (before, self._id, before))


def _int(value: object) -> int:
    if not isinstance(value, int):
        raise TypeError(f"expected an integer column, got {value!r}")
    return value


def _checked_policy(policy: str, interval: float) -> FsyncPolicy:
    if interval <= 0:
        raise ValueError(f"fsync_interval must be > 0 seconds, got {interval}")
    for known in FSYNC_POLICIES:
        if policy == known:
            return known
    raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, got {policy!r}")


def _refuse_segment_logs(path: Path) -> None:
    """The segment-log format of earlier brokers is not read: refuse rather than seem to have lost it."""
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            with os.scandir(entry.path) as files:
                if any(_OLD_SEGMENT.fullmatch(file.name) for file in files):
                    raise DataDirError(
                        f"data directory {path} holds topic logs of the old segment format ({entry.path}); this "
                        f"broker keeps topics in {path / DATABASE_FILE} and does not read them: move them away"
                    )


def _connect(file: Path, policy: FsyncPolicy, max_pages: int | None) -> sqlite3.Connection:
    """Open the database, refusing a damaged or foreign one; create the schema in a new one."""
    try:
        connection = sqlite3.connect(file, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as error:
        raise DataDirError(f"cannot open database {file}: {_describe(error)}") from error
    try:
        (mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode != "wal":
            raise DataDirError(f"cannot use database {file}: write-ahead logging is unavailable (journal_mode {mode})")
        connection.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[policy]}")
        connection.execute(f"PRAGMA wal_autocheckpoint = {_SELF_CHECKPOINT_PAGES}")
        connection.execute("PRAGMA secure_delete = FAST")  # freed pages are reused, not also zeroed in the log
        _check_integrity(connection, file)
        if _check_schema(connection, file) and policy != "never":
            _sync_directory(file.parent)  # SQLite syncs the directory for its log, not for a new database
        if max_pages is not None:
            connection.execute(f"PRAGMA max_page_count = {int(max_pages)}")
    except sqlite3.Error as error:
        connection.close()
        if error.sqlite_errorcode & 0xFF in _DAMAGED:
            raise DataDirError(_corrupt(file, _describe(error))) from error
        raise DataDirError(f"cannot use database {file}: {_describe(error)}") from error
    except BaseException:
        connection.close()
        raise
    return connection


def _connect_checkpointer(file: Path, policy: FsyncPolicy) -> sqlite3.Connection:
    """The checkpointer's connection to the database ``_connect`` opened; it fsyncs as the policy says."""
    try:
        connection = sqlite3.connect(file, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as error:
        raise DataDirError(f"cannot open database {file}: {_describe(error)}") from error
    try:
        connection.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[policy]}")
    except sqlite3.Error as error:
        connection.close()
        raise DataDirError(f"cannot use database {file}: {_describe(error)}") from error
    return connection


def _check_integrity(connection: sqlite3.Connection, file: Path) -> None:
    answer = [str(line) for (line,) in connection.execute("PRAGMA quick_check").fetchall()]
    if answer != ["ok"]:
        # SQLite's report spans lines and starts with a "*** in database main ***" banner: keep one line.
        problems = [part for line in answer for part in line.splitlines() if part and not part.startswith("***")]
        more = f" and {len(problems) - 1} more problems" if len(problems) > 1 else ""
        raise DataDirError(_corrupt(file, f"{problems[0] if problems else 'no answer'}{more}"))


def _check_schema(connection: sqlite3.Connection, file: Path) -> bool:
    """Refuse a foreign or newer database; create the schema in an empty one (then True)."""
    (application_id,) = connection.execute("PRAGMA application_id").fetchone()
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    (tables,) = connection.execute("SELECT count(*) FROM sqlite_schema").fetchone()
    if application_id == 0 and tables == 0:
        connection.executescript(
            f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA application_id = {APPLICATION_ID};"
            f" PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        )
        return True
    if application_id != APPLICATION_ID:
        raise DataDirError(f"{file} is not a broker database (SQLite application_id {application_id}): move it away")
    if version != SCHEMA_VERSION:
        raise DataDirError(f"database {file} has schema version {version}; this broker reads version {SCHEMA_VERSION}")
    return False


def _sync_directory(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as error:
        raise DataDirError(f"cannot sync data directory {path}: {error.strerror or error}") from error


def _corrupt(file: Path, problem: str) -> str:
    return (
        f"database {file} is corrupt ({problem}); refusing to start rather than lose acknowledged messages "
        f"(restore it from a backup, or move it and {file.name}-wal away to start empty)"
    )


def _describe(error: sqlite3.Error) -> str:
    """One line for a SQLite error: its message and extended code (SQLite does not pass on errno)."""
    name = getattr(error, "sqlite_errorname", "")
    return f"{error} ({name})" if name else str(error)
