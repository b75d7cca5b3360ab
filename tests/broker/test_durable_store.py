"""Durable topics without gRPC: what a restarted broker recovers, deduplicates, releases and deletes."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from rxstreamer.broker.database import DATABASE_FILE, Database
from rxstreamer.broker.errors import DataDirError
from rxstreamer.broker.store import Ack, Broker, SequenceConflict, StorageFailed, TooManyTopics, TopicFull

WALL_START_NS = 1_700_000_000_000_000_000


class Clocks:
    """The retention clock and the wall clock, moved together; a restart gets a new retention clock."""

    def __init__(self) -> None:
        self.monotonic = 1000.0
        self.wall_ns = WALL_START_NS

    def now(self) -> float:
        return self.monotonic

    def wall(self) -> int:
        return self.wall_ns

    def advance(self, seconds: float) -> None:
        self.monotonic += seconds
        self.wall_ns += int(seconds * 1e9)

    def reboot(self) -> None:
        """Monotonic clocks start over on a new boot; only the wall clock carries an age across."""
        self.monotonic = 7.0


def open_broker(
    path: Path,
    clocks: Clocks,
    *,
    retention: float = 0.0,
    max_messages: int = 100,
    max_topics: int | None = None,
    released_id_memory: int = 100_000,
    max_pages: int | None = None,
) -> Broker:
    storage = Database.open(path, policy="always", max_pages=max_pages)
    try:
        return Broker(
            max_messages=max_messages,
            max_bytes=10_000,
            retention=retention,
            max_topics=max_topics,
            clock=clocks.now,
            wall_clock_ns=clocks.wall,
            released_id_memory=released_id_memory,
            storage=storage,
        )
    except BaseException:
        storage.close()
        raise


def restart(
    broker: Broker,
    path: Path,
    clocks: Clocks,
    *,
    retention: float = 0.0,
    max_messages: int = 100,
    released_id_memory: int = 100_000,
) -> Broker:
    """Stop ``broker`` and start another on its directory."""
    broker.close()
    return open_broker(
        path, clocks, retention=retention, max_messages=max_messages, released_id_memory=released_id_memory
    )


def rows(path: Path, query: str) -> list[tuple[object, ...]]:
    """What the database holds, read with a connection of the test's own while no broker has it open."""
    connection = sqlite3.connect(path / DATABASE_FILE)
    try:
        return connection.execute(query).fetchall()
    finally:
        connection.close()


def test_messages_survive_a_restart(tmp_path: Path) -> None:
    """Every stored field comes back, and the next publish takes the next offset."""
    clocks = Clocks()
    broker = open_broker(tmp_path, clocks)
    for sequence in range(3):
        broker.topic("t").append(b"m%d" % sequence, headers={"k": "v"}, producer_id="p", sequence=sequence)
        clocks.advance(1.0)
    before = broker.topic("t").read_from(0)
    broker = restart(broker, tmp_path, clocks)
    after = broker.topic("t").read_from(0)
    assert [(m.offset, m.payload, m.headers, m.producer_id, m.sequence, m.published_at_ns) for m in after] == [
        (m.offset, m.payload, m.headers, m.producer_id, m.sequence, m.published_at_ns) for m in before
    ]
    assert broker.topic("t").append(b"next") == Ack(offset=3, duplicate=False)
    broker.close()


def test_topics_are_found_again_even_when_empty(tmp_path: Path) -> None:
    """A topic only subscribed to still exists, with its offsets, after a restart."""
    clocks = Clocks()
    broker = open_broker(tmp_path, clocks)
    broker.topic("empty")
    broker.topic(".hidden").append(b"x")
    broker = restart(broker, tmp_path, clocks)
    assert broker.names() == [".hidden", "empty"]
    assert broker.topic(".hidden").next_offset == 1
    broker.close()


def test_duplicate_is_recognised_after_a_restart(tmp_path: Path) -> None:
    """A producer re-sending after the broker restarted gets its original offset back, stored once."""
    clocks = Clocks()
    broker = open_broker(tmp_path, clocks)
    broker.topic("t").append(b"a", producer_id="p", sequence=1)
    broker.topic("t").append(b"b", producer_id="p", sequence=2)
    broker = restart(broker, tmp_path, clocks)
    assert broker.topic("t").append(b"a", producer_id="p", sequence=1) == Ack(offset=0, duplicate=True)
    assert broker.topic("t").retained_messages == 2
    broker.close()


def test_duplicate_of_a_message_released_while_down_is_recognised(tmp_path: Path) -> None:
    """A message that expired while the broker was down is released, but its id is still remembered."""
    clocks = Clocks()
    broker = open_broker(tmp_path, clocks, retention=10.0)
    broker.topic("t").append(b"a", producer_id="p", sequence=1)
    clocks.advance(5.0)
    broker.topic("t").append(b"b", producer_id="p", sequence=2)
    broker.close()
    clocks.advance(7.0)  # "a" is 12 s old, "b" 7 s
    clocks.reboot()
    broker = open_broker(tmp_path, clocks, retention=10.0)
    store = broker.topic("t")
    assert [m.offset for m in store.read_from(0)] == [1]
    assert store.append(b"a", producer_id="p", sequence=1) == Ack(offset=0, duplicate=True)
    broker.close()


def test_retention_counts_time_spent_down(tmp_path: Path) -> None:
    """A recovered message is released when its age since publishing, not since recovery, passes retention."""
    clocks = Clocks()
    broker = open_broker(tmp_path, clocks, retention=10.0)
    broker.topic("t").append(b"a")
    broker.close()
    clocks.advance(4.0)
    clocks.reboot()
    broker = open_broker(tmp_path, clocks, retention=10.0)
    assert broker.topic("t").retained_messages == 1
    clocks.advance(6.0)
    assert broker.topic("t").retained_messages == 0
    broker.close()


def test_released_rows_are_deleted_and_offsets_are_not_reused(tmp_path: Path) -> None:
    """Retention deletes released rows (keeping their ids); offsets carry on after everything is released."""
    clocks = Clocks()
    broker = open_broker(tmp_path, clocks, retention=10.0)
    store = broker.topic("t")
    for sequence in range(3):
        store.append(b"x", producer_id="p", sequence=sequence)
        clocks.advance(4.0)
    assert store.first_offset == 1  # offset 0 is 12 s old
    clocks.advance(8.0)  # everything released
    assert store.first_offset == 3
    broker.close()
    assert rows(tmp_path, "SELECT count(*) FROM messages") == [(0,)]
    assert rows(tmp_path, "SELECT producer_id, sequence, offset FROM released_ids ORDER BY offset") == [
        ("p", 0, 0),
        ("p", 1, 1),
        ("p", 2, 2),
    ]
    broker = open_broker(tmp_path, clocks, retention=10.0)
    assert broker.topic("t").append(b"y").offset == 3
    broker.close()


def test_released_ids_are_remembered_across_restarts_within_the_memory(tmp_path: Path) -> None:
    """A re-send of a message released before the restart is a duplicate; the oldest ids beyond the memory go."""
    clocks = Clocks()
    broker = open_broker(tmp_path, clocks, retention=1.0, released_id_memory=2)
    for sequence in range(3):
        broker.topic("t").append(b"m%d" % sequence, producer_id="p", sequence=sequence)
    clocks.advance(2.0)
    assert broker.topic("t").retained_messages == 0
    broker = restart(broker, tmp_path, clocks, retention=1.0, released_id_memory=2)
    store = broker.topic("t")
    assert store.append(b"m2", producer_id="p", sequence=2) == Ack(offset=2, duplicate=True)
    assert store.append(b"m1", producer_id="p", sequence=1) == Ack(offset=1, duplicate=True)
    with pytest.raises(SequenceConflict):
        store.append(b"other", producer_id="p", sequence=1)
    assert store.append(b"m0", producer_id="p", sequence=0) == Ack(offset=3, duplicate=False)  # forgotten
    broker.close()
    assert rows(tmp_path, "SELECT sequence FROM released_ids ORDER BY offset") == [(1,), (2,)]


def test_conflict_is_detected_after_a_restart(tmp_path: Path) -> None:
    """The digest is stored with the message, so other content under a recovered id is still refused."""
    clocks = Clocks()
    broker = open_broker(tmp_path, clocks)
    broker.topic("t").append(b"file a", producer_id="p", sequence=1)
    broker = restart(broker, tmp_path, clocks)
    with pytest.raises(SequenceConflict, match="producer 'p' already published sequence 1 with different content"):
        broker.topic("t").append(b"file b", producer_id="p", sequence=1)
    assert broker.topic("t").append(b"file a", producer_id="p", sequence=1) == Ack(offset=0, duplicate=True)
    broker.close()


def test_many_topics_cost_no_file_descriptors(tmp_path: Path) -> None:
    """A thousand topics open nothing beyond the database's own few descriptors."""
    clocks = Clocks()
    broker = open_broker(tmp_path, clocks)
    broker.topic("first").append(b"x")
    before = len(os.listdir("/proc/self/fd"))
    for index in range(1000):
        broker.topic(f"t{index}").append(b"x")
    assert len(os.listdir("/proc/self/fd")) <= before  # other tests' channels may still be closing theirs
    broker = restart(broker, tmp_path, clocks)
    assert len(broker.names()) == 1001
    broker.close()


def test_recovered_messages_count_against_the_limits(tmp_path: Path) -> None:
    """A restart does not reset how full a topic is."""
    clocks = Clocks()
    broker = open_broker(tmp_path, clocks, max_messages=2)
    broker.topic("t").append(b"a")
    broker.topic("t").append(b"b")
    broker = restart(broker, tmp_path, clocks, max_messages=2)
    with pytest.raises(TopicFull):
        broker.topic("t").append(b"c")
    broker.close()


def test_messages_beyond_lowered_limits_are_kept(tmp_path: Path) -> None:
    """Restarting with smaller limits keeps every acknowledged message; the topic is full until they go."""
    clocks = Clocks()
    broker = open_broker(tmp_path, clocks)
    for payload in (b"a", b"b", b"c"):
        broker.topic("t").append(payload)
    broker = restart(broker, tmp_path, clocks, max_messages=1)
    assert [m.payload for m in broker.topic("t").read_from(0)] == [b"a", b"b", b"c"]
    with pytest.raises(TopicFull):
        broker.topic("t").append(b"d")
    broker.close()


def test_full_database_refuses_the_publish_and_stores_nothing(tmp_path: Path) -> None:
    """A message SQLite cannot write (the database is at its size cap) is neither stored, acked, nor numbered."""
    clocks = Clocks()
    broker = open_broker(tmp_path, clocks)
    broker.topic("t").append(b"a")
    broker.close()
    pages = rows(tmp_path, "PRAGMA page_count")[0][0]
    assert isinstance(pages, int)
    broker = open_broker(tmp_path, clocks, max_pages=pages)
    store = broker.topic("t")
    with pytest.raises(StorageFailed) as refused:
        store.append(os.urandom(8_000))
    assert refused.value.reason == "database or disk is full (SQLITE_FULL)"
    assert refused.value.path == str(tmp_path / DATABASE_FILE)
    assert (store.next_offset, store.retained_messages) == (1, 1)
    assert store.append(b"b").offset == 1  # not sticky: room may come back (here: the small row fits)
    broker = restart(broker, tmp_path, clocks)
    assert [m.payload for m in broker.topic("t").read_from(0)] == [b"a", b"b"]
    broker.close()


def test_topic_that_cannot_be_created_leaves_nothing_behind(tmp_path: Path) -> None:
    """A topic whose row cannot be written, or that is one too many, is not there after a restart."""
    clocks = Clocks()
    broker = open_broker(tmp_path, clocks, max_topics=2)
    broker.topic("a").append(b"x" * 3000)
    broker.topic("b")
    with pytest.raises(TooManyTopics):
        broker.topic("c")
    broker.close()
    pages = rows(tmp_path, "PRAGMA page_count")[0][0]
    assert isinstance(pages, int)
    broker = open_broker(tmp_path, clocks, max_pages=pages)
    for index in range(200):  # fill the last free pages with topic rows until one fails
        try:
            broker.topic(f"t{index:03d}-" + "n" * 200)
        except StorageFailed:
            failed = f"t{index:03d}-" + "n" * 200
            break
    else:
        raise AssertionError("the database never filled up")
    assert failed not in broker.names()
    broker = restart(broker, tmp_path, clocks)
    assert failed not in broker.names()
    assert "c" not in broker.names()
    broker.close()


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    """A SQLite file that is not the broker's, where its database belongs, is refused and left alone."""
    connection = sqlite3.connect(tmp_path / DATABASE_FILE)
    connection.execute("CREATE TABLE other (x)")
    connection.close()
    with pytest.raises(DataDirError) as refused:
        Database.open(tmp_path)
    assert (
        str(refused.value)
        == f"{tmp_path / DATABASE_FILE} is not a broker database (SQLite application_id 0): move it away"
    )
    assert rows(tmp_path, "SELECT name FROM sqlite_schema") == [("other",)]


def test_second_open_of_a_directory_is_refused(tmp_path: Path) -> None:
    """The directory lock keeps a second broker out, naming the holder."""
    first = Database.open(tmp_path)
    try:
        with pytest.raises(DataDirError, match=rf"^data directory {tmp_path} is in use by another broker \(pid "):
            Database.open(tmp_path)
    finally:
        first.close()
    Database.open(tmp_path).close()


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("random", "file is not a database (SQLITE_NOTADB)"),
        ("page", "Page 3: btreeInitPage() returns error code 11"),
    ],
)
def test_corrupt_database_is_refused_never_repaired(tmp_path: Path, damage: str, problem: str) -> None:
    """Random bytes, or a page overwritten, stop the start with one line; the file is left as it was."""
    clocks = Clocks()
    broker = open_broker(tmp_path, clocks)
    for index in range(20):
        broker.topic(f"t{index}").append(os.urandom(2000))
    broker.close()
    database = tmp_path / DATABASE_FILE
    if damage == "random":
        database.write_bytes(b"garbage!" * 8192)
    else:
        data = bytearray(database.read_bytes())
        page_size = int.from_bytes(data[16:18], "big")
        data[2 * page_size : 3 * page_size] = b"\xa5" * page_size  # page 3: not a valid b-tree page
        database.write_bytes(bytes(data))
    damaged = database.read_bytes()
    with pytest.raises(DataDirError) as refused:
        open_broker(tmp_path, clocks)
    message = str(refused.value)
    assert message.startswith(f"database {database} is corrupt (")
    assert problem in message
    assert message.endswith(
        "); refusing to start rather than lose acknowledged messages "
        f"(restore it from a backup, or move it and {DATABASE_FILE}-wal away to start empty)"
    )
    assert "\n" not in message
    assert database.read_bytes() == damaged
    database.unlink()  # the refused start released the directory: once the file is moved away, it starts empty
    broker = open_broker(tmp_path, clocks)
    assert broker.names() == []
    broker.close()


def test_topic_made_after_close_touches_no_disk(tmp_path: Path) -> None:
    """A closed broker's storage is released, so a topic asked for late gets no directory."""
    broker = open_broker(tmp_path, Clocks())
    broker.close()
    assert broker.topic("late").closed is True
    assert rows(tmp_path, "SELECT name FROM topics") == []
