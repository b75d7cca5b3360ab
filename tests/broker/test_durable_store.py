"""Durable topics without gRPC: what a restarted broker recovers, deduplicates, releases and deletes."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from rxstreamer.broker.datadir import DataDir, topic_directory_name
from rxstreamer.broker.framing import Record, encode
from rxstreamer.broker.segments import segment_name
from rxstreamer.broker.store import Ack, Broker, StorageFailed, TopicFull

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
    segment_bytes: int = 1 << 20,
    fsync_fails: bool = False,
) -> Broker:
    def fsync(fd: int) -> None:
        if fsync_fails:
            raise OSError(errno.EIO, "Input/output error")

    storage = DataDir.open(path, policy="always", segment_bytes=segment_bytes, fsync=fsync)
    return Broker(
        max_messages=max_messages,
        max_bytes=10_000,
        retention=retention,
        clock=clocks.now,
        wall_clock_ns=clocks.wall,
        storage=storage,
    )


def restart(
    broker: Broker,
    path: Path,
    clocks: Clocks,
    *,
    retention: float = 0.0,
    max_messages: int = 100,
    fsync_fails: bool = False,
) -> Broker:
    """Stop ``broker`` and start another on its directory (with the policy "always", close adds no flush)."""
    broker.close()
    return open_broker(path, clocks, retention=retention, max_messages=max_messages, fsync_fails=fsync_fails)


def topic_files(path: Path, topic: str = "t") -> list[str]:
    return sorted(file.name for file in (path / topic_directory_name(topic)).iterdir())


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


def test_released_segments_are_deleted_and_offsets_are_not_reused(tmp_path: Path) -> None:
    """Retention deletes segments whole once all their messages are released; offsets carry on after."""
    clocks = Clocks()
    one_record = len(encode(Record(0, "", 0, WALL_START_NS, {}, b"x")))
    broker = open_broker(tmp_path, clocks, retention=10.0, segment_bytes=2 * one_record)
    store = broker.topic("t")
    for _ in range(3):  # segments 0 (offsets 0, 1) and 2 (offset 2)
        store.append(b"x")
        clocks.advance(3.0)
    assert topic_files(tmp_path) == [segment_name(0), segment_name(2)]
    clocks.advance(1.0)  # offset 0 is 10 s old: segment 0 still holds offset 1
    assert (store.first_offset, topic_files(tmp_path)) == (1, [segment_name(0), segment_name(2)])
    clocks.advance(3.0)  # offset 1 expires: segment 0 is all released
    assert (store.first_offset, topic_files(tmp_path)) == (2, [segment_name(2)])
    clocks.advance(3.0)  # everything released: an empty segment keeps the next offset
    assert (store.first_offset, topic_files(tmp_path)) == (3, [segment_name(3)])
    broker = restart(broker, tmp_path, clocks, retention=10.0)
    assert broker.topic("t").append(b"y").offset == 3
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


def test_storage_failure_refuses_the_publish(tmp_path: Path) -> None:
    """A message whose log write fails is neither stored nor acknowledged, and takes no offset."""
    clocks = Clocks()
    broker = open_broker(tmp_path, clocks)
    broker.topic("t").append(b"a")
    broker = restart(broker, tmp_path, clocks, fsync_fails=True)
    store = broker.topic("t")
    with pytest.raises(StorageFailed, match="topic t cannot be written to disk: fsync of"):
        store.append(b"b")
    assert (store.next_offset, store.retained_messages) == (1, 1)
    broker.close()


def test_topic_made_after_close_touches_no_disk(tmp_path: Path) -> None:
    """A closed broker's storage is released, so a topic asked for late gets no directory."""
    broker = open_broker(tmp_path, Clocks())
    broker.close()
    assert broker.topic("late").closed is True
    assert not (tmp_path / "late").exists()
