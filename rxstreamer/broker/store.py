"""The broker's per-topic bounded, in-memory log.

Kept free of gRPC so the retention, back-pressure and idempotency rules can be tested directly and
deterministically (the clocks are injectable). The gRPC edge in ``server.py`` only translates.

A full topic refuses new messages instead of dropping old ones: a telemetry producer that is told to
back off can retry, while a silently dropped batch is lost for every subscriber.

A durable topic is the same store with a ``MessageLog`` behind it (``segments.SegmentLog``): each message
is appended to the log before it is stored and acknowledged, and a restarted broker rebuilds the store
from the log. Retained payloads stay in memory as well, so reads never touch the disk; max_bytes bounds
that memory exactly as it does without a log. This module only sees the two small protocols below and
stays free of file I/O.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from rxstreamer.broker.framing import Record

# How many released (producer_id, sequence) ids are remembered, so that a producer retrying long after
# its message expired is still told "duplicate" instead of storing the message a second time.
DEFAULT_RELEASED_ID_MEMORY = 100_000

# Compacting the log list is O(retained); doing it only once the released prefix is large and at least
# half of the list keeps appends amortised O(1).
_COMPACT_MIN_HEAD = 1024

_MessageId = tuple[str, int]


class StoreError(Exception):
    """Base of the reasons a topic refuses a message."""


class TopicFull(StoreError):  # noqa: N818 - the name the project uses
    """The topic is at its retention bound; the producer should back off and retry.

    ``retry_after`` is when (seconds from now) enough retained messages will have expired to make
    room for the refused one, or None when there is no retention time and room appears only if
    limits change.
    """

    def __init__(
        self,
        topic: str,
        *,
        retained_messages: int,
        retained_bytes: int,
        max_messages: int,
        max_bytes: int,
        retry_after: float | None,
    ) -> None:
        self.topic = topic
        self.retained_messages = retained_messages
        self.retained_bytes = retained_bytes
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.retry_after = retry_after
        hint = "" if retry_after is None else f"; room in {retry_after:.3f}s"
        super().__init__(
            f"topic {topic} is full ({retained_messages} messages, {retained_bytes} bytes retained; "
            f"limits {max_messages} messages, {max_bytes} bytes{hint})"
        )


class MessageTooLarge(StoreError):  # noqa: N818 - the name the project uses
    """The payload alone exceeds the topic's byte bound, so retrying can never succeed."""

    def __init__(self, topic: str, *, size: int, max_bytes: int) -> None:
        self.topic = topic
        self.size = size
        self.max_bytes = max_bytes
        super().__init__(f"message of {size} bytes can never fit topic {topic} (max_bytes={max_bytes})")


class StoreClosed(StoreError):  # noqa: N818 - the name the project uses
    """The broker is shutting down; nothing is accepted any more."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        super().__init__(f"topic {topic} is closed")


class StorageFailed(StoreError):  # noqa: N818 - in line with the other refusals
    """A durable topic could not write its log, so the message was not stored and must not be acknowledged.

    Worth retrying: a full disk may be freed. After a failed fsync the topic refuses every append until the
    broker restarts, because the kernel may have dropped the data it failed to write.
    """

    def __init__(self, topic: str, reason: str) -> None:
        self.topic = topic
        self.reason = reason
        super().__init__(f"topic {topic} cannot be written to disk: {reason}")


class MessageLog(Protocol):
    """The durable half of a topic: written before an append is acknowledged, replayed on start."""

    def recover(self) -> Iterator[Record]:
        """Every record kept, oldest first; must be consumed fully before any other call."""
        ...

    @property
    def next_offset(self) -> int:
        """The offset the next record gets; beyond every offset ever written, even deleted ones."""
        ...

    def append(self, record: Record) -> None:
        """Write (and, by policy, fsync) one record; raises StorageFailed with nothing appended."""
        ...

    def release_before(self, offset: int) -> None:
        """Records below ``offset`` are released: their disk space may be reclaimed."""
        ...

    def close(self) -> None:
        """Flush by policy and close; called once, after the last append."""
        ...


class Storage(Protocol):
    """Where a durable broker keeps its topics' logs (``datadir.DataDir``)."""

    def topic_names(self) -> list[str]:
        """Topics that have a log, to be recovered when the broker starts."""
        ...

    def open_log(self, topic: str) -> MessageLog:
        """The topic's log, created empty if new; raises StorageFailed when it cannot be."""
        ...

    def close(self) -> None:
        """Release the storage once every log is closed."""
        ...


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One retained message; immutable so readers can share it without copying under the lock."""

    topic: str
    offset: int
    payload: bytes
    headers: Mapping[str, str]
    producer_id: str
    sequence: int
    published_at_ns: int  # wall clock, for the subscriber's published_at
    stored_at: float  # retention clock (monotonic by default)

    @property
    def size(self) -> int:
        """Bytes counted against max_bytes: the payload only, as the limits are documented."""
        return len(self.payload)


@dataclass(frozen=True, slots=True)
class Ack:
    """What a publisher is told: where the message lives and whether it was already there."""

    offset: int
    duplicate: bool


class TopicStore:
    """One topic's log: offsets from 0, bounded by count and payload bytes, optionally time-limited.

    Every public method is thread-safe. Expired messages are released lazily, whenever the topic is
    appended to or read, so no background thread is needed.

    With a ``log``, the store starts with what the log recovers: a message's age is taken from its
    published_at wall-clock stamp (the retention clock does not survive a restart), messages already
    past the retention time are released at once, and their ids are remembered as released ones are.
    Recovered messages count against the limits even beyond them, as dropping any would lose acknowledged
    data; the topic then refuses publishes until enough expire.
    """

    def __init__(
        self,
        name: str,
        *,
        max_messages: int,
        max_bytes: int,
        retention: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ns: Callable[[], int] = time.time_ns,
        released_id_memory: int = DEFAULT_RELEASED_ID_MEMORY,
        log: MessageLog | None = None,
    ) -> None:
        _check_limits(max_messages=max_messages, max_bytes=max_bytes, retention=retention)
        if released_id_memory < 0:
            raise ValueError(f"released_id_memory must be >= 0, got {released_id_memory}")
        self.name = name
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.retention = retention
        self._clock = clock
        self._wall_clock_ns = wall_clock_ns
        self._released_id_memory = released_id_memory
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        # Retained messages are _log[_head:]; a list (not a deque) so reading from an offset is O(1).
        self._log: list[StoredMessage] = []
        self._head = 0
        self._bytes = 0
        self._next_offset = 0
        self._retained_ids: dict[_MessageId, int] = {}
        self._released_ids: OrderedDict[_MessageId, int] = OrderedDict()
        self._closed = False
        self._waiting = 0
        self._message_log = log
        if log is not None:
            self._recover(log)

    # -- writing ---------------------------------------------------------------------------------

    def append(
        self,
        payload: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        producer_id: str = "",
        sequence: int = 0,
    ) -> Ack:
        """Store a message, or acknowledge a re-sent one with its original offset.

        Raises TopicFull, MessageTooLarge or StoreClosed; nothing already stored is ever dropped to
        make room.
        """
        message_id = (producer_id, sequence) if producer_id else None
        with self._lock:
            if self._closed:
                raise StoreClosed(self.name)
            now = self._clock()
            self._release_expired(now)
            if message_id is not None:
                original = self._known_offset(message_id)
                if original is not None:
                    return Ack(offset=original, duplicate=True)
            size = len(payload)
            if size > self.max_bytes:
                raise MessageTooLarge(self.name, size=size, max_bytes=self.max_bytes)
            if not self._fits(size):
                raise self._full(size, now)
            message = StoredMessage(
                topic=self.name,
                offset=self._next_offset,
                payload=payload,
                headers=dict(headers or {}),
                producer_id=producer_id,
                sequence=sequence,
                published_at_ns=self._wall_clock_ns(),
                stored_at=now,
            )
            if self._message_log is not None:
                self._message_log.append(_to_record(message))  # on disk before anyone is told
            self._store(message, message_id)
            return Ack(offset=message.offset, duplicate=False)

    def close(self) -> None:
        """Refuse further appends, close the log, and wake every waiting reader, so open streams can end."""
        with self._changed:
            if self._closed:
                return
            self._closed = True
            self._changed.notify_all()
            if self._message_log is not None:
                self._message_log.close()

    # -- reading ---------------------------------------------------------------------------------

    def read_from(self, offset: int, limit: int | None = None) -> list[StoredMessage]:
        """Retained messages with offset >= ``offset`` (clamped to the oldest retained), oldest first.

        ``limit`` bounds one batch so a subscriber far behind does not copy the whole log at once.
        """
        with self._lock:
            self._release_expired(self._clock())
            first = self._next_offset - (len(self._log) - self._head)
            start = self._head + max(offset - first, 0)
            stop = len(self._log) if limit is None else min(len(self._log), start + max(limit, 0))
            return self._log[start:stop]

    def wait_for(self, offset: int, timeout: float) -> bool:
        """Block until a message with offset >= ``offset`` exists, the store closes, or ``timeout``.

        Returns True when such a message exists. The timeout lets a caller re-check conditions the
        store cannot see, such as a cancelled RPC.
        """
        with self._changed:
            self._waiting += 1
            try:
                self._changed.wait_for(lambda: self._closed or self._next_offset > offset, timeout)
            finally:
                self._waiting -= 1
            return self._next_offset > offset

    @property
    def waiting(self) -> int:
        """Readers blocked in wait_for: subscribers idle at the head of the log."""
        with self._lock:
            return self._waiting

    @property
    def first_offset(self) -> int:
        """Offset of the oldest retained message; equals next_offset when nothing is retained."""
        with self._lock:
            self._release_expired(self._clock())
            return self._next_offset - (len(self._log) - self._head)

    @property
    def next_offset(self) -> int:
        """Offset the next stored message will get."""
        with self._lock:
            return self._next_offset

    @property
    def retained_messages(self) -> int:
        """Messages currently counted against max_messages."""
        with self._lock:
            self._release_expired(self._clock())
            return len(self._log) - self._head

    @property
    def retained_bytes(self) -> int:
        """Payload bytes currently counted against max_bytes."""
        with self._lock:
            self._release_expired(self._clock())
            return self._bytes

    @property
    def closed(self) -> bool:
        """True once close() was called."""
        with self._lock:
            return self._closed

    # -- recovery ------------------------------------------------------------------------------

    def _recover(self, log: MessageLog) -> None:
        """Fill the new store from its log; the log is closed if that fails, as nobody else holds it."""
        try:
            with self._lock:
                now = self._clock()
                wall_now_ns = self._wall_clock_ns()
                for record in log.recover():
                    self._restore(record, now, wall_now_ns)
                self._next_offset = log.next_offset
                log.release_before(self._next_offset - (len(self._log) - self._head))
        except BaseException:
            log.close()
            raise

    # -- internals (called with the lock held) ---------------------------------------------------

    def _restore(self, record: Record, now: float, wall_now_ns: int) -> None:
        """Keep or release one recovered message; its age comes from the wall clock, which outlives the process."""
        age = max((wall_now_ns - record.published_at_ns) / 1e9, 0.0)
        message = StoredMessage(
            topic=self.name,
            offset=record.offset,
            payload=record.payload,
            headers=record.headers,
            producer_id=record.producer_id,
            sequence=record.sequence,
            published_at_ns=record.published_at_ns,
            stored_at=now - age,
        )
        message_id = (record.producer_id, record.sequence) if record.producer_id else None
        # Only a prefix is ever released, as at run time, even if the wall clock went backwards.
        nothing_retained = self._head == len(self._log)
        if nothing_retained and self.retention > 0 and message.stored_at <= now - self.retention:
            self._next_offset = record.offset + 1
            if message_id is not None:
                self._remember_released(message_id, message.offset)
        else:
            self._next_offset = record.offset  # _store takes the offset and moves past it
            self._store(message, message_id)

    def _known_offset(self, message_id: _MessageId) -> int | None:
        original = self._retained_ids.get(message_id)
        if original is None:
            original = self._released_ids.get(message_id)
        return original

    def _fits(self, size: int) -> bool:
        count = len(self._log) - self._head
        return count + 1 <= self.max_messages and self._bytes + size <= self.max_bytes

    def _full(self, size: int, now: float) -> TopicFull:
        return TopicFull(
            self.name,
            retained_messages=len(self._log) - self._head,
            retained_bytes=self._bytes,
            max_messages=self.max_messages,
            max_bytes=self.max_bytes,
            retry_after=self._room_after(size, now),
        )

    def _room_after(self, size: int, now: float) -> float | None:
        """Seconds until expiry frees enough room for ``size`` more bytes and one more message."""
        if self.retention <= 0:
            return None
        count = len(self._log) - self._head
        excess_messages = count + 1 - self.max_messages
        excess_bytes = self._bytes + size - self.max_bytes
        for index in range(self._head, len(self._log)):
            message = self._log[index]
            excess_messages -= 1
            excess_bytes -= message.size
            if excess_messages <= 0 and excess_bytes <= 0:
                return max(message.stored_at + self.retention - now, 0.0)
        # Unreachable while size <= max_bytes: releasing everything always makes room.
        return self.retention

    def _store(self, message: StoredMessage, message_id: _MessageId | None) -> None:
        self._log.append(message)
        self._bytes += message.size
        self._next_offset += 1
        if message_id is not None:
            self._retained_ids[message_id] = message.offset
        self._changed.notify_all()

    def _release_expired(self, now: float) -> None:
        if self.retention <= 0:
            return
        deadline = now - self.retention
        head = self._head
        while self._head < len(self._log) and self._log[self._head].stored_at <= deadline:
            self._release_oldest()
        if self._message_log is not None and self._head > head:
            self._message_log.release_before(self._next_offset - (len(self._log) - self._head))
        if self._head >= _COMPACT_MIN_HEAD and self._head * 2 >= len(self._log):
            del self._log[: self._head]
            self._head = 0

    def _release_oldest(self) -> None:
        message = self._log[self._head]
        self._head += 1
        self._bytes -= message.size
        if message.producer_id:
            message_id = (message.producer_id, message.sequence)
            self._retained_ids.pop(message_id, None)
            self._remember_released(message_id, message.offset)

    def _remember_released(self, message_id: _MessageId, offset: int) -> None:
        if self._released_id_memory == 0:
            return
        self._released_ids[message_id] = offset
        while len(self._released_ids) > self._released_id_memory:
            self._released_ids.popitem(last=False)


class Broker:
    """All topics of one broker, created on first use with the same limits.

    With ``storage`` the broker is durable: every topic found there is recovered when the broker is made,
    and new topics get a log too. Closing the broker closes the storage, which a caller that fails to make
    the broker still has to close itself.
    """

    def __init__(
        self,
        *,
        max_messages: int,
        max_bytes: int,
        retention: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ns: Callable[[], int] = time.time_ns,
        released_id_memory: int = DEFAULT_RELEASED_ID_MEMORY,
        storage: Storage | None = None,
    ) -> None:
        _check_limits(max_messages=max_messages, max_bytes=max_bytes, retention=retention)
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._retention = retention
        self._clock = clock
        self._wall_clock_ns = wall_clock_ns
        self._released_id_memory = released_id_memory
        self._lock = threading.Lock()
        self._topics: dict[str, TopicStore] = {}
        self._closed = False
        self._storage = storage
        if storage is not None:
            self._recover(storage)

    def topic(self, name: str) -> TopicStore:
        """The named topic, created empty if new; after close() a new topic is born closed.

        Raises StorageFailed when a durable broker cannot create the topic's log.
        """
        with self._lock:
            store = self._topics.get(name)
            if store is None:
                if self._closed:
                    store = self._new_store(name, None)
                    store.close()
                else:
                    store = self._new_store(name, None if self._storage is None else self._storage.open_log(name))
                self._topics[name] = store
            return store

    def get(self, name: str) -> TopicStore | None:
        """The named topic if it exists, without creating it."""
        with self._lock:
            return self._topics.get(name)

    def names(self) -> list[str]:
        """Names of the topics created so far, sorted."""
        with self._lock:
            return sorted(self._topics)

    def close(self) -> None:
        """Close every topic, waking all waiting subscribers, then the storage."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            stores = list(self._topics.values())
        for store in stores:
            store.close()
        if self._storage is not None:
            self._storage.close()

    @property
    def closed(self) -> bool:
        """True once close() was called."""
        with self._lock:
            return self._closed

    def _recover(self, storage: Storage) -> None:
        """Recover every stored topic; on failure close the logs already open, so their files are released."""
        try:
            for name in storage.topic_names():
                self._topics[name] = self._new_store(name, storage.open_log(name))
        except BaseException:
            for store in self._topics.values():
                store.close()
            raise

    def _new_store(self, name: str, log: MessageLog | None) -> TopicStore:
        return TopicStore(
            name,
            max_messages=self._max_messages,
            max_bytes=self._max_bytes,
            retention=self._retention,
            clock=self._clock,
            wall_clock_ns=self._wall_clock_ns,
            released_id_memory=self._released_id_memory,
            log=log,
        )


def _to_record(message: StoredMessage) -> Record:
    return Record(
        offset=message.offset,
        producer_id=message.producer_id,
        sequence=message.sequence,
        published_at_ns=message.published_at_ns,
        headers=message.headers,
        payload=message.payload,
    )


def _check_limits(*, max_messages: int, max_bytes: int, retention: float) -> None:
    if max_messages < 1:
        raise ValueError(f"max_messages must be >= 1, got {max_messages}")
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    if retention < 0:
        raise ValueError(f"retention must be >= 0 seconds, got {retention}")
