"""The broker's topics: bounded, in-memory logs with idempotent appends, and the broker-wide caps.

Kept free of gRPC so the retention, back-pressure and idempotency rules can be tested directly and
deterministically (the clocks are injectable). The gRPC edge in ``server.py`` only translates.

A full topic refuses new messages instead of dropping old ones: a telemetry producer that is told to
back off can retry, while a silently dropped batch is lost for every subscriber. The same holds broker-wide:
retention is per topic, so ``max_topics`` and ``max_total_bytes`` are what bound the broker's memory.

Idempotency is by (producer id, sequence) per topic, with a digest of the content: the same identity with
the same content is a re-send and is acknowledged with its first offset; with other content it is two
inputs sharing one producer id, refused as a ``SequenceConflict`` instead of silently dropping rows. The
content is the producer's ``content-digest`` header when it sends one, else the payload: a producer whose
re-encoded batch differs in bytes but not in meaning (a new creation time, rows stamped at processing
time) names what the batch holds, so that its re-send after a crash is still recognised as one.

A durable topic is the same store with a ``MessageLog`` behind it (``database.TopicLog``): each message is
written to the log before it is stored and acknowledged, and a restarted broker rebuilds the store from
the log. Retained payloads stay in memory as well, so reads never touch the disk; the byte limits bound
that memory exactly as they do without a log. This module only sees the small protocols below and stays
free of file I/O.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from rxstreamer.broker.errors import (
    BrokerFull,
    MessageTooLarge,
    SequenceConflict,
    StorageFailed,
    StoreClosed,
    StoreError,
    TooManyTopics,
    TopicFull,
)
from rxstreamer.encoding import CONTENT_DIGEST_HEADER

__all__ = [
    "DEFAULT_RELEASED_ID_MEMORY",
    "Ack",
    "Broker",
    "BrokerFull",
    "ByteBudget",
    "MessageLog",
    "MessageTooLarge",
    "Record",
    "Recovery",
    "ReleasedId",
    "SequenceConflict",
    "Storage",
    "StorageFailed",
    "StoreClosed",
    "StoreError",
    "StoredMessage",
    "TooManyTopics",
    "TopicFull",
    "TopicStore",
    "message_digest",
]

# How many released (producer_id, sequence) ids are remembered, so that a producer retrying long after
# its message expired is still told "duplicate" instead of storing the message a second time.
DEFAULT_RELEASED_ID_MEMORY = 100_000

# Compacting the log list is O(retained); doing it only once the released prefix is large and at least
# half of the list keeps appends amortised O(1).
_COMPACT_MIN_HEAD = 1024

# 16 bytes of BLAKE2b: an accidental collision between two different batches is out of reach (2^-64 at
# four billion messages), and the digest costs ~1 µs per KB.
DIGEST_SIZE = 16

_MessageId = tuple[str, int]


def message_digest(payload: bytes, headers: Mapping[str, str] | None = None) -> bytes:
    """What identifies a message's content, to tell a re-send from another message under a reused identity."""
    declared = headers.get(CONTENT_DIGEST_HEADER) if headers is not None else None
    content = b"declared:" + declared.encode() if declared else payload
    return hashlib.blake2b(content, digest_size=DIGEST_SIZE).digest()


@dataclass(frozen=True, slots=True)
class Record:
    """What a durable topic keeps of one message: everything a subscriber is sent, and the digest."""

    offset: int
    producer_id: str
    sequence: int
    published_at_ns: int
    headers: Mapping[str, str]
    payload: bytes
    digest: bytes


@dataclass(frozen=True, slots=True)
class ReleasedId:
    """The identity of a released message, remembered so that a late re-send is still a duplicate."""

    producer_id: str
    sequence: int
    offset: int
    digest: bytes


@dataclass(frozen=True)
class Recovery:
    """What a durable topic's log holds when the broker starts."""

    next_offset: int  # beyond every offset ever written, released ones included
    released: list[ReleasedId]  # oldest first
    records: list[Record]  # retained, oldest first, contiguous offsets


class MessageLog(Protocol):
    """The durable half of a topic: written before an append is acknowledged, read back on start."""

    def recover(self) -> Recovery:
        """Everything the log holds; called once, before any other call."""
        ...

    def append(self, record: Record) -> None:
        """Write one record (durably, by policy); raises StorageFailed with nothing written."""
        ...

    def release(self, before: int, remember_from: int) -> None:
        """Records below ``before`` are released (their ids remembered from ``remember_from`` on); never raises."""
        ...

    def close(self) -> None:
        """Called once, after the last append."""
        ...


class Storage(Protocol):
    """Where a durable broker keeps its topics (``database.Database``)."""

    def topic_names(self) -> list[str]:
        """Topics stored, to be recovered when the broker starts."""
        ...

    def open_log(self, topic: str) -> MessageLog:
        """The topic's log, created empty if new; raises StorageFailed with nothing created when it cannot be."""
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
    digest: bytes = b""  # of the payload; empty when there is no producer id to deduplicate by

    @property
    def size(self) -> int:
        """Bytes counted against max_bytes: the payload only, as the limits are documented."""
        return len(self.payload)


@dataclass(frozen=True, slots=True)
class Ack:
    """What a publisher is told: where the message lives and whether it was already there."""

    offset: int
    duplicate: bool


class _Known(NamedTuple):
    offset: int
    digest: bytes


class ByteBudget:
    """Payload bytes retained by all topics together, against broker.max_total_bytes; thread-safe.

    Its lock is only ever taken last (inside a topic's), so it cannot take part in a deadlock.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"max_total_bytes must be >= 1, got {limit}")
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        """Count ``size`` more bytes if they fit; False (and nothing counted) if they do not."""
        with self._lock:
            if self._used + size > self.limit:
                return False
            self._used += size
            return True

    def add(self, size: int) -> None:
        """Count recovered bytes, even beyond the limit: they were acknowledged and must be kept."""
        with self._lock:
            self._used += size

    def give_back(self, size: int) -> None:
        with self._lock:
            self._used -= size

    @property
    def used(self) -> int:
        with self._lock:
            return self._used


class TopicStore:
    """One topic's log: offsets from 0, bounded by count and payload bytes, optionally time-limited.

    Every public method is thread-safe. Expired messages are released lazily, whenever the topic is
    appended to or read (or swept by the broker when it is full), so no background thread is needed.

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
        budget: ByteBudget | None = None,
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
        self._budget = budget
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        # Retained messages are _log[_head:]; a list (not a deque) so reading from an offset is O(1).
        self._log: list[StoredMessage] = []
        self._head = 0
        self._bytes = 0
        self._next_offset = 0
        self._retained_ids: dict[_MessageId, _Known] = {}
        self._released_ids: OrderedDict[_MessageId, _Known] = OrderedDict()
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

        Raises TopicFull, BrokerFull, MessageTooLarge, SequenceConflict, StoreClosed or StorageFailed;
        nothing already stored is ever dropped to make room.
        """
        message_id = (producer_id, sequence) if producer_id else None
        digest = message_digest(payload, headers) if message_id is not None else b""  # outside the lock: O(size)
        with self._lock:
            if self._closed:
                raise StoreClosed(self.name)
            now = self._clock()
            self._release_expired(now)
            if message_id is not None:
                known = self._known(message_id)
                if known is not None:
                    if known.digest != digest:
                        raise SequenceConflict(
                            self.name, producer_id=producer_id, sequence=sequence, offset=known.offset
                        )
                    return Ack(offset=known.offset, duplicate=True)
            size = len(payload)
            self._check_size(size)
            if not self._fits(size):
                raise self._full(size, now)
            self._take_budget(size)
            message = StoredMessage(
                topic=self.name,
                offset=self._next_offset,
                payload=payload,
                headers=dict(headers or {}),
                producer_id=producer_id,
                sequence=sequence,
                published_at_ns=self._wall_clock_ns(),
                stored_at=now,
                digest=digest,
            )
            if self._message_log is not None:
                try:
                    self._message_log.append(_to_record(message))  # on disk before anyone is told
                except BaseException:
                    if self._budget is not None:
                        self._budget.give_back(size)
                    raise
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

    def wake(self) -> None:
        """Wake every reader in wait_for, so one whose client left notices at once instead of at its timeout."""
        with self._changed:
            self._changed.notify_all()

    def release_expired(self) -> None:
        """Release what retention says is due now; the broker sweeps idle topics with it when it is full."""
        with self._lock:
            self._release_expired(self._clock())

    def next_expiry(self) -> float | None:
        """Seconds until the oldest retained message expires; None without retention or messages."""
        with self._lock:
            if self.retention <= 0 or self._head == len(self._log):
                return None
            return max(self._log[self._head].stored_at + self.retention - self._clock(), 0.0)

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
            return self._first_retained()

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
                recovery = log.recover()
                now = self._clock()
                wall_now_ns = self._wall_clock_ns()
                for released in recovery.released:
                    self._remember_released(
                        (released.producer_id, released.sequence), _Known(released.offset, released.digest)
                    )
                for record in recovery.records:
                    self._restore(record, now, wall_now_ns)
                self._next_offset = max(self._next_offset, recovery.next_offset)
                log.release(self._first_retained(), self._remembered_from())
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
            digest=record.digest,
        )
        message_id = (record.producer_id, record.sequence) if record.producer_id else None
        # Only a prefix is ever released, as at run time, even if the wall clock went backwards.
        nothing_retained = self._head == len(self._log)
        if nothing_retained and self.retention > 0 and message.stored_at <= now - self.retention:
            self._next_offset = record.offset + 1
            if message_id is not None:
                self._remember_released(message_id, _Known(message.offset, message.digest))
        else:
            self._next_offset = record.offset  # _store takes the offset and moves past it
            if self._budget is not None:
                self._budget.add(message.size)
            self._store(message, message_id)

    def _known(self, message_id: _MessageId) -> _Known | None:
        known = self._retained_ids.get(message_id)
        if known is None:
            known = self._released_ids.get(message_id)
        return known

    def _check_size(self, size: int) -> None:
        limit, setting = self.max_bytes, "broker.max_bytes"
        if self._budget is not None and self._budget.limit < limit:
            limit, setting = self._budget.limit, "broker.max_total_bytes"
        if size > limit:
            raise MessageTooLarge(self.name, size=size, limit=limit, setting=setting)

    def _fits(self, size: int) -> bool:
        count = len(self._log) - self._head
        return count + 1 <= self.max_messages and self._bytes + size <= self.max_bytes

    def _take_budget(self, size: int) -> None:
        if self._budget is not None and not self._budget.take(size):
            raise BrokerFull(
                self.name, total_bytes=self._budget.used, max_total_bytes=self._budget.limit, retry_after=None
            )

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
            self._retained_ids[message_id] = _Known(message.offset, message.digest)
        self._changed.notify_all()

    def _first_retained(self) -> int:
        return self._next_offset - (len(self._log) - self._head)

    def _remembered_from(self) -> int:
        """The offset of the oldest released id still remembered; everything below it is forgotten."""
        for known in self._released_ids.values():
            return known.offset
        return self._first_retained()

    def _release_expired(self, now: float) -> None:
        if self.retention <= 0:
            return
        deadline = now - self.retention
        head = self._head
        while self._head < len(self._log) and self._log[self._head].stored_at <= deadline:
            self._release_oldest()
        if self._message_log is not None and self._head > head:
            self._message_log.release(self._first_retained(), self._remembered_from())
        if self._head >= _COMPACT_MIN_HEAD and self._head * 2 >= len(self._log):
            del self._log[: self._head]
            self._head = 0

    def _release_oldest(self) -> None:
        message = self._log[self._head]
        self._head += 1
        self._bytes -= message.size
        if self._budget is not None:
            self._budget.give_back(message.size)
        if message.producer_id:
            message_id = (message.producer_id, message.sequence)
            self._retained_ids.pop(message_id, None)
            self._remember_released(message_id, _Known(message.offset, message.digest))

    def _remember_released(self, message_id: _MessageId, known: _Known) -> None:
        if self._released_id_memory == 0:
            return
        self._released_ids[message_id] = known
        while len(self._released_ids) > self._released_id_memory:
            self._released_ids.popitem(last=False)


class Broker:
    """All topics of one broker, created on first use with the same limits, within the broker-wide caps.

    With ``storage`` the broker is durable: every topic found there is recovered when the broker is made,
    and new topics get a log too. Closing the broker closes the storage, which a caller that fails to make
    the broker still has to close itself. ``max_topics`` and ``max_total_bytes`` of None mean no cap;
    recovered topics and bytes count against the caps but are all kept, even beyond them.
    """

    def __init__(
        self,
        *,
        max_messages: int,
        max_bytes: int,
        retention: float = 0.0,
        max_topics: int | None = None,
        max_total_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ns: Callable[[], int] = time.time_ns,
        released_id_memory: int = DEFAULT_RELEASED_ID_MEMORY,
        storage: Storage | None = None,
    ) -> None:
        _check_limits(max_messages=max_messages, max_bytes=max_bytes, retention=retention)
        if max_topics is not None and max_topics < 1:
            raise ValueError(f"max_topics must be >= 1, got {max_topics}")
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._retention = retention
        self._max_topics = max_topics
        self._budget = None if max_total_bytes is None else ByteBudget(max_total_bytes)
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

        Raises TooManyTopics past max_topics, and StorageFailed when a durable broker cannot create the
        topic's log (nothing of the topic is left behind then).
        """
        with self._lock:
            store = self._topics.get(name)
            if store is None:
                if self._closed:
                    store = self._new_store(name, None)
                    store.close()
                else:
                    if self._max_topics is not None and len(self._topics) >= self._max_topics:
                        raise TooManyTopics(name, topics=len(self._topics), max_topics=self._max_topics)
                    store = self._new_store(name, None if self._storage is None else self._storage.open_log(name))
                self._topics[name] = store
            return store

    def append(
        self,
        topic: str,
        payload: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        producer_id: str = "",
        sequence: int = 0,
    ) -> Ack:
        """Append to the named topic (created if new), as TopicStore.append does, within the broker-wide caps.

        When all topics together are full, messages that retention already lets go are released in every
        topic (idle topics release nothing by themselves) before the publish is refused with BrokerFull.
        """
        store = self.topic(topic)
        try:
            return store.append(payload, headers=headers, producer_id=producer_id, sequence=sequence)
        except BrokerFull:
            self._release_expired_everywhere()
        try:
            return store.append(payload, headers=headers, producer_id=producer_id, sequence=sequence)
        except BrokerFull as full:
            raise BrokerFull(
                full.topic,
                total_bytes=full.total_bytes,
                max_total_bytes=full.max_total_bytes,
                retry_after=self._earliest_expiry(),
            ) from None

    def get(self, name: str) -> TopicStore | None:
        """The named topic if it exists, without creating it."""
        with self._lock:
            return self._topics.get(name)

    def names(self) -> list[str]:
        """Names of the topics created so far, sorted."""
        with self._lock:
            return sorted(self._topics)

    @property
    def total_bytes(self) -> int:
        """Payload bytes retained by all topics (counted only with max_total_bytes)."""
        return 0 if self._budget is None else self._budget.used

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

    def _stores(self) -> list[TopicStore]:
        with self._lock:
            return list(self._topics.values())

    def _release_expired_everywhere(self) -> None:
        for store in self._stores():  # one topic lock at a time, never nested
            store.release_expired()

    def _earliest_expiry(self) -> float | None:
        expiries = [expiry for store in self._stores() if (expiry := store.next_expiry()) is not None]
        return min(expiries, default=None)

    def _recover(self, storage: Storage) -> None:
        """Recover every stored topic; on failure close the logs already open."""
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
            budget=self._budget,
        )


def _to_record(message: StoredMessage) -> Record:
    return Record(
        offset=message.offset,
        producer_id=message.producer_id,
        sequence=message.sequence,
        published_at_ns=message.published_at_ns,
        headers=message.headers,
        payload=message.payload,
        digest=message.digest,
    )


def _check_limits(*, max_messages: int, max_bytes: int, retention: float) -> None:
    if max_messages < 1:
        raise ValueError(f"max_messages must be >= 1, got {max_messages}")
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    if retention < 0:
        raise ValueError(f"retention must be >= 0 seconds, got {retention}")
