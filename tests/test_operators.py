"""The pipeline's operators in virtual time: pulling, pacing, retrying, disposing."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator

import pytest
import reactivex
from reactivex import Observable
from reactivex import operators as ops
from reactivex.notification import OnCompleted, OnError
from reactivex.testing import ReactiveTest, TestScheduler
from reactivex.testing.marbles import marbles_testing

from rxstreamer.model import EncodedBatch, PublishAck
from rxstreamer.operators import pace, publish_with_retry, pull_through
from rxstreamer.retry import PublishError, RetryPolicy
from rxstreamer.sinks import InMemorySink

on_next = ReactiveTest.on_next
on_completed = ReactiveTest.on_completed
on_error = ReactiveTest.on_error


class CountingRows:
    """An iterable of integers that records how many were read, and when, on a TestScheduler."""

    def __init__(self, count: int, scheduler: TestScheduler | None = None) -> None:
        self.count = count
        self.scheduler = scheduler
        self.read = 0
        self.read_at: list[float] = []
        self.closed = False

    def __iter__(self) -> Iterator[int]:
        try:
            for value in range(self.count):
                self.read += 1
                if self.scheduler is not None:
                    self.read_at.append(self.scheduler.clock)
                yield value
        finally:
            self.closed = True


def after(delay: float, scheduler: TestScheduler) -> Callable[[int], Observable[int]]:
    """A stand-in for a publish that takes ``delay`` units and then emits its item."""
    return delays(iter([delay] * 1000), scheduler)


def delays(each: Iterator[float], scheduler: TestScheduler) -> Callable[[int], Observable[int]]:
    """A stand-in for publishes taking successive ``each`` units, each then emitting its item."""

    def publish(item: int) -> Observable[int]:
        return reactivex.timer(next(each), scheduler=scheduler).pipe(ops.map(lambda _: item))

    return publish


def as_text(item: int) -> Observable[str]:
    return reactivex.just(str(item))


# --- pull_through -------------------------------------------------------------------------------------


def test_pull_through_reads_only_the_rows_of_the_next_batch() -> None:
    """Each next() reads exactly one batch worth of rows, not the whole source."""
    rows = CountingRows(1000)
    batches = iter(pull_through(rows, ops.buffer_with_count(3)))
    assert next(batches) == [0, 1, 2]
    assert rows.read == 3
    assert next(batches) == [3, 4, 5]
    assert rows.read == 6


def test_pull_through_keeps_batches_full_when_a_transform_drops_rows() -> None:
    """A filter before batching makes the pull read further, so each batch is still full."""
    rows = CountingRows(20)
    batches = list(
        pull_through(rows, ops.filter(lambda n: n % 3 == 0), ops.map(lambda n: n * 10), ops.buffer_with_count(2))
    )
    assert batches == [[0, 30], [60, 90], [120, 150], [180]]


def test_pull_through_emits_the_last_partial_batch_and_closes_the_source() -> None:
    """The end of the rows flushes the partial batch; the source generator is closed."""
    rows = CountingRows(7)
    assert list(pull_through(rows, ops.buffer_with_count(3))) == [[0, 1, 2], [3, 4, 5], [6]]
    assert rows.closed


def test_pull_through_closes_the_source_when_the_consumer_stops_early() -> None:
    """Closing the batch iterator releases the rows (the file) at once."""
    rows = CountingRows(100)
    batches = iter(pull_through(rows, ops.buffer_with_count(10)))
    next(batches)
    batches.close()  # type: ignore[attr-defined]
    assert rows.closed


def test_pull_through_raises_an_operator_error_from_next() -> None:
    """An exception inside a transform surfaces where the batch is pulled."""

    def explode(n: int) -> int:
        if n == 4:
            raise ValueError("bad row 4")
        return n

    batches = iter(pull_through(range(10), ops.map(explode), ops.buffer_with_count(3)))
    assert next(batches) == [0, 1, 2]
    with pytest.raises(ValueError, match="bad row 4"):
        next(batches)


# --- pace ---------------------------------------------------------------------------------------------


def test_pace_sends_the_first_batch_at_once_then_one_per_interval() -> None:
    """Pulls come at subscription, then every interval; the tick that finds the end completes."""
    scheduler = TestScheduler()
    rows = CountingRows(3, scheduler)
    results = scheduler.start(lambda: pace(rows, 10.0, as_text, scheduler=scheduler))
    assert results.messages == [on_next(200, "0"), on_next(210, "1"), on_next(220, "2"), on_completed(230)]
    assert rows.read_at == [200, 210, 220]
    assert rows.closed


def test_pace_does_not_drift_over_many_ticks() -> None:
    """The 300th pull is due at exactly start + 299 intervals: deadlines are absolute."""
    scheduler = TestScheduler()
    rows = CountingRows(300, scheduler)
    scheduler.start(lambda: pace(rows, 0.5, as_text, scheduler=scheduler), disposed=10_000)
    assert rows.read_at == [200 + 0.5 * k for k in range(300)]


def test_pace_keeps_absolute_deadlines_when_each_publish_takes_time() -> None:
    """Publishes of 0.3 s at a 1 s interval: pulls stay on start + k·1 s and acks on + 0.3 s, no creeping."""
    scheduler = TestScheduler()
    rows = CountingRows(16, scheduler)
    publisher = InMemorySink(latency=0.3, scheduler=scheduler)

    def then(n: int) -> Observable[PublishAck]:
        return publisher.publish(EncodedBatch("producer", n + 1, b"", "text/plain", 1))

    results = scheduler.start(lambda: pace(rows, 1.0, then, scheduler=scheduler), disposed=10_000)
    assert rows.read_at == [
        200.0, 201.0, 202.0, 203.0, 204.0, 205.0, 206.0, 207.0,
        208.0, 209.0, 210.0, 211.0, 212.0, 213.0, 214.0, 215.0,
    ]  # fmt: skip
    assert [message.time for message in results.messages] == [
        200.3, 201.3, 202.3, 203.3, 204.3, 205.3, 206.3, 207.3,
        208.3, 209.3, 210.3, 211.3, 212.3, 213.3, 214.3, 215.3, 216.0,
    ]  # fmt: skip
    assert isinstance(results.messages[-1].value, OnCompleted)


def test_pace_gives_a_slow_publisher_no_queue() -> None:
    """With publishes slower than the interval, a row is read only once the previous publish finished."""
    scheduler = TestScheduler()
    rows = CountingRows(3, scheduler)
    results = scheduler.start(lambda: pace(rows, 10.0, after(25, scheduler), scheduler=scheduler))
    assert rows.read_at == [200, 225, 250]
    assert results.messages == [on_next(225, 0), on_next(250, 1), on_next(275, 2), on_completed(275)]


def test_pace_keeps_the_schedule_when_a_publish_is_a_little_late() -> None:
    """A publish late by less than an interval delays one pull, and the next is back on its deadline."""
    scheduler = TestScheduler()
    rows = CountingRows(4, scheduler)
    then = delays(iter([15.0, 0.0, 0.0, 0.0]), scheduler)
    scheduler.start(lambda: pace(rows, 10.0, then, scheduler=scheduler))
    assert rows.read_at == [200, 215, 220, 230]


def test_pace_restarts_the_schedule_after_a_stall_instead_of_bursting() -> None:
    """After a publish that took several intervals, pulls resume one interval apart, not all at once."""
    scheduler = TestScheduler()
    rows = CountingRows(4, scheduler)
    then = delays(iter([45.0, 0.0, 0.0, 0.0]), scheduler)
    scheduler.start(lambda: pace(rows, 10.0, then, scheduler=scheduler))
    assert rows.read_at == [200, 245, 255, 265]


def test_pace_with_zero_interval_pulls_as_soon_as_the_publish_completes() -> None:
    """Interval 0 means as fast as the publisher accepts: each pull follows the previous acknowledgement."""
    scheduler = TestScheduler()
    rows = CountingRows(3, scheduler)
    results = scheduler.start(lambda: pace(rows, 0.0, after(4, scheduler), scheduler=scheduler))
    assert rows.read_at == [200, 204, 208]
    assert results.messages == [on_next(204, 0), on_next(208, 1), on_next(212, 2), on_completed(212)]


def test_pace_reads_one_item_ahead_while_publishing_and_never_more() -> None:
    """With read_ahead=1 the next row is read as the publish starts; a slow publisher still gets no queue."""
    scheduler = TestScheduler()
    rows = CountingRows(3, scheduler)
    results = scheduler.start(lambda: pace(rows, 10.0, after(25, scheduler), read_ahead=1, scheduler=scheduler))
    assert rows.read_at == [200, 200, 225]
    assert results.messages == [on_next(225, 0), on_next(250, 1), on_next(275, 2), on_completed(275)]


def test_pace_with_read_ahead_completes_with_the_last_publish() -> None:
    """Having read ahead, it knows the end when the last publish completes and needs no further tick."""
    scheduler = TestScheduler()
    rows = CountingRows(2, scheduler)
    results = scheduler.start(lambda: pace(rows, 10.0, after(1, scheduler), read_ahead=1, scheduler=scheduler))
    assert results.messages == [on_next(201, 0), on_next(211, 1), on_completed(211)]


def test_a_read_error_found_ahead_is_reported_after_the_publish_in_flight() -> None:
    """The batch already handed over is still acknowledged first; then the stream ends with the read error."""

    def rows() -> Iterator[int]:
        yield 1
        raise OSError("disk gone")

    scheduler = TestScheduler()
    results = scheduler.start(lambda: pace(rows(), 10.0, after(3, scheduler), read_ahead=1, scheduler=scheduler))
    assert results.messages == [on_next(203, 1), on_error(203, "disk gone")]


def test_pace_stops_at_a_source_error() -> None:
    """An exception while reading ends the stream with on_error at that tick."""

    def rows() -> Iterator[int]:
        yield 1
        raise OSError("disk gone")

    scheduler = TestScheduler()
    results = scheduler.start(lambda: pace(rows(), 10.0, as_text, scheduler=scheduler))
    assert results.messages == [on_next(200, "1"), on_error(210, "disk gone")]


def test_pace_stops_pulling_after_a_publish_error() -> None:
    """A failed publish ends the stream and nothing more is read."""
    scheduler = TestScheduler()
    rows = CountingRows(5, scheduler)

    def then(n: int) -> Observable[int]:
        return reactivex.throw(RuntimeError("refused")) if n == 1 else reactivex.just(n)

    results = scheduler.start(lambda: pace(rows, 10.0, then, scheduler=scheduler))
    assert results.messages == [on_next(200, 0), on_error(210, "refused")]
    assert rows.read == 2
    assert rows.closed


def test_disposing_pace_lets_the_publish_in_flight_finish_and_starts_no_other() -> None:
    """Dispose mid-publish: that batch still arrives, no further row is read, the source closes."""
    scheduler = TestScheduler()
    rows = CountingRows(10, scheduler)
    publisher = InMemorySink(latency=8, scheduler=scheduler)

    def encode(n: int) -> EncodedBatch:
        return EncodedBatch("producer", n + 1, b"", "text/plain", 1)

    def then(n: int) -> Observable[PublishAck]:
        return publisher.publish(encode(n))

    results = scheduler.start(lambda: pace(rows, 10.0, then, scheduler=scheduler), disposed=215)
    assert rows.read_at == [200, 210]
    assert [batch.sequence for batch in publisher.batches] == [
        1,
        2,
    ]  # the second completed at 218, after dispose
    assert [message.value.value.sequence for message in results.messages] == [1]  # type: ignore[union-attr]
    assert publisher.stats.rows == 2
    assert rows.closed


# --- publish_with_retry -------------------------------------------------------------------------------

POLICY = RetryPolicy(initial_backoff=2.0, max_backoff=8.0, multiplier=2.0, max_attempts=0)


def always_full_jitter() -> float:
    """Jitter that always draws the top of the range, so waits equal the backoff bound."""
    return 1.0


def test_retry_resubscribes_only_the_failed_publish() -> None:
    """A publish failing once is tried again after the backoff; the source is subscribed once."""
    with marbles_testing(timespan=1.0) as (start, cold, _, exp):
        marbles = cold("a-----b|", None, None)
        subscriptions: list[int] = []

        def subscribe_counted(_: object) -> Observable[str]:
            subscriptions.append(1)
            return marbles

        source = reactivex.defer(subscribe_counted)
        attempts: dict[str, int] = {"a": 0, "b": 0}

        def publish(item: str) -> Observable[str]:
            attempts[item] += 1
            if item == "a" and attempts["a"] == 1:
                return reactivex.throw(PublishError("UNAVAILABLE", "queue down"))
            return reactivex.just(item.upper())

        expected = exp("--A---B|", None, None)
        results = start(source.pipe(publish_with_retry(publish, POLICY, uniform=always_full_jitter)))
        assert results == expected
        assert attempts == {"a": 2, "b": 1}
        assert len(subscriptions) == 1


def test_retry_backs_off_exponentially_up_to_the_cap() -> None:
    """Waits double from the initial backoff and stop growing at the maximum."""
    scheduler = TestScheduler()
    publisher = InMemorySink(failures=[PublishError("UNAVAILABLE", "down")] * 5, scheduler=scheduler)
    attempts_at: list[float] = []

    def publish(batch: EncodedBatch) -> Observable[PublishAck]:
        attempts_at.append(scheduler.clock)
        return publisher.publish(batch)

    batch = EncodedBatch("p", 1, b"", "text/plain", 3)
    results = scheduler.start(
        lambda: reactivex.just(batch).pipe(
            publish_with_retry(publish, POLICY, scheduler=scheduler, uniform=always_full_jitter)
        )
    )
    assert attempts_at == [200, 202, 206, 214, 222, 230]
    assert results.messages == [on_next(230, PublishAck(1, 0, False, 3)), on_completed(230)]


def test_retry_stops_at_once_on_a_non_retryable_status() -> None:
    """INVALID_ARGUMENT cannot succeed later: one attempt, then the stream errors with that status."""
    scheduler = TestScheduler()
    publisher = InMemorySink(failures=[PublishError("INVALID_ARGUMENT", "bad topic")], scheduler=scheduler)
    batch = EncodedBatch("p", 1, b"", "text/plain", 3)
    results = scheduler.start(
        lambda: reactivex.just(batch).pipe(publish_with_retry(publisher.publish, POLICY, scheduler=scheduler))
    )
    assert results.messages == [on_error(200, "INVALID_ARGUMENT: bad topic")]
    assert publisher.attempts == 1
    notification = results.messages[0].value
    assert isinstance(notification, OnError)
    error = notification.exception
    assert isinstance(error, PublishError)
    assert error.status == "INVALID_ARGUMENT"


def test_retry_gives_up_after_max_attempts_with_the_last_error() -> None:
    """With max_attempts=3 the third failure ends the stream."""
    scheduler = TestScheduler()
    failures = [PublishError("UNAVAILABLE", f"down {n}") for n in range(1, 5)]
    publisher = InMemorySink(failures=failures, scheduler=scheduler)
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=1.0, max_attempts=3)
    batch = EncodedBatch("p", 1, b"", "text/plain", 3)
    results = scheduler.start(
        lambda: reactivex.just(batch).pipe(
            publish_with_retry(publisher.publish, policy, scheduler=scheduler, uniform=always_full_jitter)
        )
    )
    assert results.messages == [on_error(202, "UNAVAILABLE: gave up after 3 attempts over 2.0s: down 3")]
    assert publisher.attempts == 3


def test_retry_gives_up_when_the_retry_time_is_spent() -> None:
    """With max_retry_time=10 a queue that stays down is tried until 10 units after the first attempt."""
    scheduler = TestScheduler()
    publisher = InMemorySink(failures=[PublishError("UNAVAILABLE", "down")] * 100, scheduler=scheduler)
    policy = RetryPolicy(initial_backoff=4.0, max_backoff=4.0, max_retry_time=10.0)
    attempts_at: list[float] = []

    def publish(batch: EncodedBatch) -> Observable[PublishAck]:
        attempts_at.append(scheduler.clock)
        return publisher.publish(batch)

    batch = EncodedBatch("p", 1, b"", "text/plain", 3)
    results = scheduler.start(
        lambda: reactivex.just(batch).pipe(
            publish_with_retry(publish, policy, scheduler=scheduler, uniform=always_full_jitter)
        )
    )
    assert attempts_at == [200, 204, 208, 210]
    assert results.messages == [on_error(210, "UNAVAILABLE: gave up after 4 attempts over 10.0s: down")]


def test_retry_waits_at_least_the_servers_hint() -> None:
    """RESOURCE_EXHAUSTED with a retry-after hint longer than the backoff waits for the hint."""
    scheduler = TestScheduler()
    full = PublishError("RESOURCE_EXHAUSTED", "topic full", retry_after=30.0)
    publisher = InMemorySink(failures=[full], scheduler=scheduler)
    batch = EncodedBatch("p", 1, b"", "text/plain", 3)
    results = scheduler.start(
        lambda: reactivex.just(batch).pipe(
            publish_with_retry(publisher.publish, POLICY, scheduler=scheduler, uniform=always_full_jitter)
        )
    )
    assert results.messages == [on_next(230, PublishAck(1, 0, False, 3)), on_completed(230)]


def test_retry_keeps_batches_in_order_and_reports_each_retry() -> None:
    """The second batch waits for the first one's retries; on_retry hears attempt, wait and status."""
    scheduler = TestScheduler()
    publisher = InMemorySink(
        failures=[PublishError("UNAVAILABLE", "down"), PublishError("ABORTED", "raced")], scheduler=scheduler
    )
    retries: list[tuple[int, int, float, str]] = []

    def on_retry(batch: EncodedBatch, attempt: int, wait: float, error: BaseException) -> None:
        assert isinstance(error, PublishError)
        retries.append((batch.sequence, attempt, wait, error.status))

    batches = [EncodedBatch("p", n, b"", "text/plain", 1) for n in (1, 2)]
    results = scheduler.start(
        lambda: reactivex.from_iterable(batches).pipe(
            publish_with_retry(
                publisher.publish, POLICY, scheduler=scheduler, on_retry=on_retry, uniform=always_full_jitter
            )
        )
    )
    assert [batch.sequence for batch in publisher.batches] == [1, 2]
    assert retries == [(1, 2, 2.0, "UNAVAILABLE"), (1, 3, 4.0, "ABORTED")]
    assert results.messages[-1] == on_completed(206)


def test_disposing_during_a_backoff_cancels_the_retry() -> None:
    """A dispose while waiting to retry means no further attempt is made."""
    scheduler = TestScheduler()
    publisher = InMemorySink(failures=[PublishError("UNAVAILABLE", "down")], scheduler=scheduler)
    batch = EncodedBatch("p", 1, b"", "text/plain", 3)
    scheduler.start(
        lambda: reactivex.just(batch).pipe(
            publish_with_retry(publisher.publish, POLICY, scheduler=scheduler, uniform=always_full_jitter)
        ),
        disposed=201,
    )
    assert publisher.attempts == 1
    assert publisher.batches == []


def test_a_finished_publish_keeps_no_reference_to_its_batch() -> None:
    """Once acknowledged, a batch is freed at once, not left to the cyclic GC inside RxPY's retry machinery."""

    class Heavy:
        """Stands in for an encoded batch of hundreds of kilobytes."""

    scheduler = TestScheduler()
    publisher = InMemorySink(failures=[PublishError("UNAVAILABLE", "down")], scheduler=scheduler)
    made: list[weakref.ref[Heavy]] = []

    def encode(_: int) -> Heavy:
        heavy = Heavy()
        made.append(weakref.ref(heavy))
        return heavy

    def publish(heavy: Heavy) -> Observable[PublishAck]:
        return publisher.publish(EncodedBatch("p", 1, b"", "text/plain", 1))

    retrying = publish_with_retry(publish, POLICY, scheduler=scheduler, uniform=always_full_jitter)
    gc.disable()  # only reference counting frees anything now
    try:
        scheduler.start(lambda: reactivex.just(1).pipe(ops.map(encode), retrying))
        assert publisher.batches  # published, after one retry
        assert made[0]() is None
    finally:
        gc.enable()
