"""A durable broker's topics in one SQLite database: what is acknowledged is on disk, and nothing twice.

Layout of the data directory::

    DIR/.lock               flock()ed by the broker using DIR (see dirlock.py)
    DIR/broker.sqlite3      every topic: the database, in write-ahead-log mode
    DIR/broker.sqlite3-wal  its write-ahead log (SQLite's own; folded into the database when it closes)

One connection serves the whole broker, its use serialised by a lock, so a topic costs no file descriptor:
the broker holds three (lock, database, log) however many topics it has. The connection uses exclusive
locking, as the directory lock already keeps every other broker out; SQLite then keeps the log's index in
process memory instead of a shared-memory file.

Tables: ``topics`` (a name, and the offset below which everything is released, so offsets are never
reused), ``messages`` (one row per retained message, with a UNIQUE key on (topic, producer_id, sequence)
for producers that have an id) and ``released_ids`` (the identities, with their payload digests, of
released messages the broker still remembers, so a late re-send is still a duplicate after a restart).
Releasing a message deletes its row; the database file does not shrink, SQLite reuses the freed pages.

Durability, by ``broker.fsync`` policy. Every publish is one transaction, committed before it is
acknowledged; a commit hands its pages to the operating system, so after the broker process dies, even by
SIGKILL, SQLite replays its log on the next start and no acknowledged message is lost under any policy. The
policy only matters when the machine itself crashes or loses power:

- ``always`` (synchronous=FULL): each commit is fsynced before the acknowledgement; nothing acknowledged
  is lost.
- ``interval`` (synchronous=NORMAL): commits are not fsynced; a checkpoint every ``fsync_interval`` fsyncs
  the log (and SQLite checkpoints on its own every ~4 MB written). A power loss can lose the
  acknowledged messages of the last interval (plus the time a checkpoint takes), never corrupt the
  database.
- ``never`` (synchronous=OFF): SQLite never fsyncs; the operating system writes back when it chooses
  (typically within ~30 s on Linux). A power loss can lose that much, and, as SQLite documents for this
  mode, may corrupt the database, which the next start then refuses.

At start the database is checked with ``PRAGMA quick_check`` (it reads every page: about a second per GB);
a file that is not a SQLite database, or a damaged one, is refused with a one-line message and never
repaired or truncated. A write that fails (a full disk, an I/O error) refuses the publish as StorageFailed;
after an I/O error every later write is refused until the broker restarts, because the kernel may have
dropped pages it failed to write, so carrying on could acknowledge messages on top of a hole.
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


class Database:
    """The data directory of one running broker (``Storage`` for ``store.Broker``); open it with ``open``.

    Under the ``interval`` policy it runs the thread that checkpoints every ``interval`` seconds, so an
    idle broker's last messages are not left unflushed until the next write.
    """

    def __init__(
        self,
        path: Path,
        *,
        connection: sqlite3.Connection,
        lock: DirectoryLock,
        policy: FsyncPolicy,
        interval: float,
    ) -> None:
        self.path = path
        self.file = path / DATABASE_FILE
        self.policy = policy
        self.interval = interval
        self._connection = connection
        self._directory_lock = lock
        self._lock = threading.Lock()
        self._closed = False
        self._failure: str | None = None
        self._unflushed = False  # committed since the last checkpoint, under the "interval" policy
        self._last_background_failure: str | None = None
        self._stop = threading.Event()
        self._checkpointer: threading.Thread | None = None
        if policy == "interval":
            self._checkpointer = threading.Thread(
                target=self._checkpoint_periodically, name="broker-fsync", daemon=True
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
        except BaseException:
            lock.release()
            raise
        return cls(path, connection=connection, lock=lock, policy=checked, interval=interval)

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
        topic_id = self._write(topic, lambda db: db.execute("INSERT INTO topics (name) VALUES (?)", (topic,)).lastrowid)
        assert topic_id is not None
        return TopicLog(self, topic, topic_id)

    def close(self) -> None:
        """Stop the checkpointer, close the connection (SQLite folds its log in) and release the directory."""
        self._stop.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._connection.close()
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

    def _write(self, topic: str, statements: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``statements`` in one transaction, committed (and fsynced, by policy) before returning."""
        with self._lock:
            if self._closed:
                raise StorageFailed(topic, "the database is closed", path=str(self.file))
            if self._failure is not None:
                raise StorageFailed(topic, f"{self._failure}; restart the broker to write again", path=str(self.file))
            try:
                self._connection.execute("BEGIN IMMEDIATE")
                result = statements(self._connection)
                self._connection.execute("COMMIT")
            except sqlite3.Error as error:
                self._roll_back()
                raise self._failed(topic, error) from error
            self._unflushed = True
            return result

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

    def _checkpoint_periodically(self) -> None:
        while not self._stop.wait(self.interval):
            self._checkpoint()

    def _checkpoint(self) -> None:
        """Fsync what was committed since the last checkpoint (the "interval" policy)."""
        with self._lock:
            if not self._unflushed or self._closed or self._failure is not None:
                return
            try:
                self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as error:
                failed = self._failed("*", error)
            else:
                self._unflushed = False
                self._last_background_failure = None
                return
        self._background_failure("broker.checkpoint_failed", "*", failed)


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
        self._database._write(
            self.topic,
            lambda db: db.execute(
                "INSERT INTO messages (topic_id, offset, producer_id, sequence, published_at_ns, headers, payload,"
                " digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            ),
        )

    def release(self, before: int, remember_from: int) -> None:
        """Delete the rows below ``before``, keeping the ids of those at or above ``remember_from``; never raises.

        Runs on the store's read and append paths, so a failure is logged and the work left for the next
        release, which deletes everything below its own bound.
        """
        nothing_to_forget = self._remembered_from is None or remember_from <= self._remembered_from
        if before <= self._released_before and nothing_to_forget:
            return
        try:
            self._database._write(self.topic, lambda db: self._release(db, before, remember_from))
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
        connection.execute("PRAGMA locking_mode = EXCLUSIVE")
        (mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode != "wal":
            raise DataDirError(f"cannot use database {file}: write-ahead logging is unavailable (journal_mode {mode})")
        connection.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[policy]}")
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
