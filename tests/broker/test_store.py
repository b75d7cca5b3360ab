"""The broker's topic log, without gRPC: offsets, bounds, retention, idempotency and waiting."""

from __future__ import annotations

import threading
import time

import pytest

from rxstreamer.broker.store import (
    Broker,
    BrokerFull,
    MessageTooLarge,
    SequenceConflict,
    StoreClosed,
    StoredMessage,
    TooManyTopics,
    TopicFull,
    TopicStore,
)

# Long enough that a missed wake-up fails the test, short enough that it fails fast.
WAKE_TIMEOUT = 5.0
SHORT_WAIT = 0.05


class FakeClock:
    """A settable retention clock, so expiry is tested without sleeping."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_store(
    *,
    max_messages: int = 100,
    max_bytes: int = 10_000,
    retention: float = 0.0,
    clock: FakeClock | None = None,
    released_id_memory: int = 100_000,
) -> TopicStore:
    return TopicStore(
        "t",
        max_messages=max_messages,
        max_bytes=max_bytes,
        retention=retention,
        clock=clock or FakeClock(),
        wall_clock_ns=lambda: 1_700_000_000_123_456_789,
        released_id_memory=released_id_memory,
    )


def offsets(messages: list[StoredMessage]) -> list[int]:
    return [message.offset for message in messages]


def wait_until_readers_block(store: TopicStore, count: int) -> None:
    """Returns once ``count`` readers are inside wait_for, so a wake-up cannot be missed by luck.

    A reader counts itself under the store lock and releases that lock only when it starts waiting, so
    seeing the count means the readers really are asleep on the condition.
    """
    deadline = time.monotonic() + WAKE_TIMEOUT
    while store.waiting < count:
        assert time.monotonic() < deadline, f"only {store.waiting} of {count} readers started waiting"
        threading.Event().wait(0.001)


def test_offsets_start_at_zero_and_increase_by_one() -> None:
    """Each stored message gets the next offset, starting from 0."""
    store = make_store()
    acks = [store.append(b"x") for _ in range(3)]
    assert [(ack.offset, ack.duplicate) for ack in acks] == [(0, False), (1, False), (2, False)]
    assert (store.first_offset, store.next_offset) == (0, 3)


def test_topics_number_their_offsets_independently() -> None:
    """Offsets are per topic, so a busy topic does not shift another's."""
    broker = Broker(max_messages=10, max_bytes=100)
    broker.topic("a").append(b"1")
    broker.topic("a").append(b"2")
    assert broker.topic("b").append(b"3").offset == 0
    assert broker.topic("a").next_offset == 2


def test_stored_message_keeps_what_was_published() -> None:
    """Payload, headers, producer identity and the wall-clock stamp reach readers unchanged."""
    store = make_store()
    headers = {"content-type": "application/x-protobuf"}
    store.append(b"payload", headers=headers, producer_id="p", sequence=7)
    headers["content-type"] = "changed"  # the store keeps its own copy
    [message] = store.read_from(0)
    assert message.payload == b"payload"
    assert message.headers == {"content-type": "application/x-protobuf"}
    assert (message.producer_id, message.sequence) == ("p", 7)
    assert message.published_at_ns == 1_700_000_000_123_456_789
    assert message.topic == "t"


def test_duplicate_is_acked_with_original_offset_and_stored_once() -> None:
    """A re-sent (producer_id, sequence) gets its first offset back and is not stored again."""
    store = make_store()
    store.append(b"a", producer_id="p", sequence=1)
    store.append(b"b", producer_id="p", sequence=2)
    ack = store.append(b"a", producer_id="p", sequence=1)
    assert (ack.offset, ack.duplicate) == (0, True)
    assert [m.payload for m in store.read_from(0)] == [b"a", b"b"]


def test_dedup_identity_is_producer_and_sequence() -> None:
    """Another producer, or another sequence, is a different message."""
    store = make_store()
    store.append(b"a", producer_id="p", sequence=1)
    assert store.append(b"b", producer_id="q", sequence=1).duplicate is False
    assert store.append(b"c", producer_id="p", sequence=2).duplicate is False
    assert store.retained_messages == 3


def test_empty_producer_id_disables_dedup() -> None:
    """Without a producer_id every publish is stored, whatever its sequence."""
    store = make_store()
    first = store.append(b"a", sequence=1)
    second = store.append(b"a", sequence=1)
    assert (first.offset, second.offset, second.duplicate) == (0, 1, False)


def test_full_by_message_count_refuses_without_dropping() -> None:
    """At max_messages a new message is refused and every retained one stays readable."""
    store = make_store(max_messages=2)
    store.append(b"a")
    store.append(b"b")
    with pytest.raises(TopicFull) as refused:
        store.append(b"c")
    assert refused.value.retry_after is None  # no retention: room never appears by itself
    assert (refused.value.retained_messages, refused.value.max_messages) == (2, 2)
    assert [m.payload for m in store.read_from(0)] == [b"a", b"b"]
    assert store.next_offset == 2


def test_full_by_bytes_refuses_without_dropping() -> None:
    """A message that would push the payload bytes past max_bytes is refused; exact fits are kept."""
    store = make_store(max_bytes=10)
    store.append(b"123456")
    store.append(b"1234")  # exactly 10 bytes: still allowed
    with pytest.raises(TopicFull) as refused:
        store.append(b"1")
    assert (refused.value.retained_bytes, refused.value.max_bytes) == (10, 10)
    assert "topic t is full" in str(refused.value)
    assert store.retained_bytes == 10
    assert offsets(store.read_from(0)) == [0, 1]


def test_duplicate_is_acked_even_when_topic_is_full() -> None:
    """A producer retrying an already stored message is told so, rather than to back off."""
    store = make_store(max_messages=1)
    store.append(b"a", producer_id="p", sequence=1)
    ack = store.append(b"a", producer_id="p", sequence=1)
    assert (ack.offset, ack.duplicate) == (0, True)


def test_message_larger_than_max_bytes_is_too_large_not_full() -> None:
    """A payload that can never fit gets its own error, even on an empty topic."""
    store = make_store(max_bytes=4)
    with pytest.raises(MessageTooLarge) as refused:
        store.append(b"12345")
    assert (refused.value.size, refused.value.limit, refused.value.setting) == (5, 4, "broker.max_bytes")
    assert str(refused.value) == (
        "message of 5 bytes can never be stored in topic t: broker.max_bytes = 4 bytes is the largest a message may be"
    )
    assert store.next_offset == 0


def test_retry_after_is_when_the_oldest_message_expires() -> None:
    """With a retention time, a refusal says how long until the oldest message frees its slot."""
    clock = FakeClock()
    store = make_store(max_messages=2, retention=10.0, clock=clock)
    store.append(b"a")
    clock.advance(3.0)
    store.append(b"b")
    clock.advance(1.5)
    with pytest.raises(TopicFull) as refused:
        store.append(b"c")
    assert refused.value.retry_after == pytest.approx(5.5)


def test_retry_after_waits_for_enough_bytes_to_expire() -> None:
    """When the oldest message is too small to make room, the hint covers every message needed."""
    clock = FakeClock()
    store = make_store(max_bytes=10, retention=10.0, clock=clock)
    store.append(b"12")
    clock.advance(1.0)
    store.append(b"1234")
    clock.advance(1.0)
    store.append(b"1234")
    with pytest.raises(TopicFull) as refused:
        store.append(b"12345")  # needs 5 bytes: the first two messages (6 bytes) must expire
    assert refused.value.retry_after == pytest.approx(9.0)


def test_retention_releases_old_messages_and_frees_room() -> None:
    """Expired messages are released, readers skip them, and their room takes new messages."""
    clock = FakeClock()
    store = make_store(max_messages=2, retention=10.0, clock=clock)
    store.append(b"a")
    clock.advance(5.0)
    store.append(b"b")
    with pytest.raises(TopicFull):
        store.append(b"c")
    clock.advance(5.0)  # "a" is now 10 s old
    assert store.append(b"c").offset == 2
    assert [m.payload for m in store.read_from(0)] == [b"b", b"c"]
    assert (store.first_offset, store.next_offset) == (1, 3)


def test_retention_zero_keeps_messages_forever() -> None:
    """With retention 0 the clock never releases anything."""
    clock = FakeClock()
    store = make_store(clock=clock)
    store.append(b"a")
    clock.advance(1e9)
    assert offsets(store.read_from(0)) == [0]


def test_duplicate_of_released_message_keeps_original_offset() -> None:
    """A producer retrying after its message expired is still told duplicate, with the first offset."""
    clock = FakeClock()
    store = make_store(retention=1.0, clock=clock)
    store.append(b"a", producer_id="p", sequence=1)
    clock.advance(2.0)
    store.append(b"b")
    ack = store.append(b"a", producer_id="p", sequence=1)
    assert (ack.offset, ack.duplicate) == (0, True)
    assert offsets(store.read_from(0)) == [1]


def test_released_id_memory_is_bounded() -> None:
    """Only the most recently released ids are remembered; older ones are stored again."""
    clock = FakeClock()
    store = make_store(retention=1.0, clock=clock, released_id_memory=2)
    for sequence in range(3):
        store.append(b"x", producer_id="p", sequence=sequence)
    clock.advance(2.0)
    assert store.retained_messages == 0
    assert store.append(b"x", producer_id="p", sequence=2).duplicate is True
    assert store.append(b"x", producer_id="p", sequence=1).duplicate is True
    forgotten = store.append(b"x", producer_id="p", sequence=0)
    assert (forgotten.offset, forgotten.duplicate) == (3, False)


def test_read_from_returns_messages_at_or_after_offset() -> None:
    """Reading starts at the requested offset, and an offset past the end reads nothing."""
    store = make_store()
    for payload in (b"a", b"b", b"c"):
        store.append(payload)
    assert offsets(store.read_from(0)) == [0, 1, 2]
    assert offsets(store.read_from(2)) == [2]
    assert store.read_from(3) == []
    assert store.read_from(100) == []
    assert offsets(store.read_from(0, limit=2)) == [0, 1]


def test_read_from_before_first_retained_starts_at_first_retained() -> None:
    """An offset that already expired is clamped to the oldest message still retained."""
    clock = FakeClock()
    store = make_store(retention=10.0, clock=clock)
    store.append(b"a")
    store.append(b"b")
    clock.advance(6.0)
    store.append(b"c")
    clock.advance(4.0)
    assert offsets(store.read_from(0)) == [2]


def test_log_stays_correct_after_releasing_many_messages() -> None:
    """Long runs of appends and expiry keep offsets and reads consistent."""
    clock = FakeClock()
    store = make_store(max_messages=3000, max_bytes=1_000_000, retention=1.0, clock=clock)
    for _ in range(5):
        for _ in range(2000):
            store.append(b"x")
        clock.advance(1.0)
    store.append(b"last")
    assert store.read_from(0)[0].offset == 10_000
    assert [m.payload for m in store.read_from(9_000)] == [b"last"]
    assert (store.first_offset, store.next_offset, store.retained_bytes) == (10_000, 10_001, 4)


def test_concurrent_appends_get_unique_contiguous_offsets() -> None:
    """Publishers on many threads never share or skip an offset."""
    store = make_store(max_messages=10_000, max_bytes=100_000)
    results: list[int] = []
    results_lock = threading.Lock()

    def publish() -> None:
        mine = [store.append(b"x").offset for _ in range(500)]
        with results_lock:
            results.extend(mine)

    threads = [threading.Thread(target=publish) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAKE_TIMEOUT)
    assert sorted(results) == list(range(4000))


def test_wait_for_returns_at_once_when_message_exists() -> None:
    """A reader behind the log does not wait at all."""
    store = make_store()
    store.append(b"a")
    assert store.wait_for(0, timeout=WAKE_TIMEOUT) is True


def test_wait_for_times_out_without_new_messages() -> None:
    """With nothing new, waiting ends after the timeout and says so."""
    store = make_store()
    store.append(b"a")
    assert store.wait_for(1, timeout=SHORT_WAIT) is False


def test_wait_for_is_woken_by_append() -> None:
    """A waiting reader wakes as soon as a message at its offset is stored."""
    store = make_store()
    outcome: list[bool] = []

    def reader() -> None:
        outcome.append(store.wait_for(0, timeout=WAKE_TIMEOUT))

    thread = threading.Thread(target=reader)
    started = time.monotonic()
    thread.start()
    wait_until_readers_block(store, 1)
    store.append(b"a")
    thread.join(WAKE_TIMEOUT)
    assert outcome == [True]
    assert time.monotonic() - started < WAKE_TIMEOUT / 2  # woken, not timed out


def test_close_wakes_waiters_and_refuses_appends() -> None:
    """close() releases every waiting reader at once and later appends fail with StoreClosed."""
    store = make_store()
    outcomes: list[bool] = []

    def reader() -> None:
        outcomes.append(store.wait_for(0, timeout=WAKE_TIMEOUT))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    wait_until_readers_block(store, 3)
    store.close()
    for thread in threads:
        thread.join(WAKE_TIMEOUT)
    assert outcomes == [False, False, False]
    assert time.monotonic() - started < WAKE_TIMEOUT / 2  # woken, not timed out
    assert store.waiting == 0
    assert store.closed is True
    with pytest.raises(StoreClosed):
        store.append(b"late")


def test_broker_creates_each_topic_once() -> None:
    """The same name always yields the same store; get() never creates one."""
    broker = Broker(max_messages=10, max_bytes=100)
    assert broker.get("a") is None
    store = broker.topic("a")
    assert broker.topic("a") is store
    assert broker.get("a") is store
    broker.topic("b")
    assert broker.names() == ["a", "b"]


def test_broker_close_closes_existing_and_later_topics() -> None:
    """After close() every topic, even one created later, refuses appends."""
    broker = Broker(max_messages=10, max_bytes=100)
    existing = broker.topic("a")
    broker.close()
    assert broker.closed is True
    assert existing.closed is True
    assert broker.topic("new").closed is True


@pytest.mark.parametrize(
    ("max_messages", "max_bytes", "retention"),
    [(0, 10, 0.0), (10, 0, 0.0), (10, 10, -1.0)],
)
def test_invalid_limits_are_rejected(max_messages: int, max_bytes: int, retention: float) -> None:
    """Limits that make every publish fail, or time run backwards, are configuration errors."""
    with pytest.raises(ValueError, match="must be"):
        TopicStore("t", max_messages=max_messages, max_bytes=max_bytes, retention=retention)


# -- a reused identity with other content ------------------------------------------------------------


def test_reused_identity_with_other_content_is_a_conflict_not_a_duplicate() -> None:
    """Two inputs under one producer id: the second content is refused, naming producer and sequence."""
    store = make_store()
    store.append(b"file-a batch 1", producer_id="host:metrics.csv", sequence=1)
    with pytest.raises(SequenceConflict) as refused:
        store.append(b"file-b batch 1", producer_id="host:metrics.csv", sequence=1)
    assert str(refused.value) == (
        "producer 'host:metrics.csv' already published sequence 1 with different content: two inputs share one "
        "producer id (give each input its own message_queue.producer_id, or leave it unset to derive one per "
        "input); topic t holds the first at offset 0"
    )
    assert [m.payload for m in store.read_from(0)] == [b"file-a batch 1"]
    assert store.next_offset == 1


def test_conflict_is_detected_for_released_messages_too() -> None:
    """A remembered released id keeps its digest: other content under it is still a conflict."""
    clock = FakeClock()
    store = make_store(retention=1.0, clock=clock)
    store.append(b"a", producer_id="p", sequence=1)
    clock.advance(2.0)
    assert store.retained_messages == 0
    with pytest.raises(SequenceConflict):
        store.append(b"not a", producer_id="p", sequence=1)
    assert store.append(b"a", producer_id="p", sequence=1).duplicate is True


def test_conflict_is_refused_even_when_the_topic_is_full() -> None:
    """Identity is checked before room, as for duplicates, so the answer does not depend on fullness."""
    store = make_store(max_messages=1)
    store.append(b"a", producer_id="p", sequence=1)
    with pytest.raises(SequenceConflict):
        store.append(b"b", producer_id="p", sequence=1)


# -- broker-wide caps ---------------------------------------------------------------------------------


def test_topic_past_max_topics_is_refused_and_not_created() -> None:
    """The topic that would be one too many is refused, naming the setting; existing topics still work."""
    broker = Broker(max_messages=10, max_bytes=100, max_topics=2)
    broker.append("a", b"x")
    broker.append("b", b"x")
    with pytest.raises(TooManyTopics) as refused:
        broker.append("c", b"x")
    assert str(refused.value) == (
        "broker has 2 topics, the most broker.max_topics (2) allows; topic c cannot be created "
        "(use an existing topic or raise broker.max_topics)"
    )
    assert broker.names() == ["a", "b"]
    assert broker.append("a", b"y").offset == 1


def test_total_bytes_across_topics_are_capped() -> None:
    """Topics each within max_bytes are refused together past max_total_bytes, nothing dropped."""
    broker = Broker(max_messages=10, max_bytes=100, max_total_bytes=10)
    broker.append("a", b"123456")
    with pytest.raises(BrokerFull) as refused:
        broker.append("b", b"12345")
    assert (refused.value.total_bytes, refused.value.max_total_bytes, refused.value.retry_after) == (6, 10, None)
    assert str(refused.value) == (
        "broker is full: its topics hold 6 bytes, the most broker.max_total_bytes (10) allows; topic b cannot take more"
    )
    assert broker.append("b", b"1234").offset == 0
    assert broker.total_bytes == 10


def test_broker_full_sweeps_idle_topics_and_hints_the_earliest_expiry() -> None:
    """Expired messages of an idle topic free room at once; otherwise the hint is the oldest expiry."""
    clock = FakeClock()
    broker = Broker(max_messages=10, max_bytes=100, max_total_bytes=10, retention=10.0, clock=clock)
    broker.append("idle", b"12345")
    clock.advance(4.0)
    broker.append("busy", b"12345")
    with pytest.raises(BrokerFull) as refused:
        broker.append("busy", b"1")
    assert refused.value.retry_after == 6.0  # "idle" expires first
    clock.advance(6.0)  # "idle" has expired but nobody reads it: the broker sweeps it
    assert broker.append("busy", b"1").offset == 1
    assert broker.get("idle") is not None
    assert broker.total_bytes == 6


def test_message_larger_than_max_total_bytes_is_too_large() -> None:
    """When the broker-wide cap is the smaller limit, a message above it can never fit: named as such."""
    broker = Broker(max_messages=10, max_bytes=100, max_total_bytes=10)
    with pytest.raises(MessageTooLarge) as refused:
        broker.append("t", b"x" * 11)
    assert (refused.value.limit, refused.value.setting) == (10, "broker.max_total_bytes")


def test_released_and_refused_bytes_are_given_back() -> None:
    """The broker-wide count follows releases, and a refused publish takes nothing from it."""
    clock = FakeClock()
    broker = Broker(max_messages=1, max_bytes=100, max_total_bytes=50, retention=1.0, clock=clock)
    broker.append("t", b"x" * 10)
    with pytest.raises(TopicFull):
        broker.append("t", b"y" * 10)
    assert broker.total_bytes == 10
    clock.advance(2.0)
    broker.append("t", b"z" * 20)
    assert broker.total_bytes == 20
