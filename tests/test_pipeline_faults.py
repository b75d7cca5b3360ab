"""Any exception raised inside the pipeline ends the stream through on_error: never a dead thread, never a hang.

Each test injects a fault at one place where a callback runs (encoder, acknowledgement listener, retry listener,
publish call, a retry's timer, the source's rejection handler, the scheduler's thread) and checks that the
subscriber is told with that error, at the virtual time it happened, and that nothing else is published after.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reactivex import Observable
from reactivex import operators as ops
from reactivex.notification import OnError, OnNext
from reactivex.scheduler import EventLoopScheduler
from reactivex.testing import TestScheduler
from reactivex.testing.recorded import Recorded

from rxstreamer.encoding import BatchEncoder
from rxstreamer.model import EncodedBatch, MetricRow, PublishAck, Rejection
from rxstreamer.pipeline import EncodingError, build_pipeline
from rxstreamer.retry import PublishError, RetryPolicy
from rxstreamer.service import _OffsetWatch, _PipelineThread
from rxstreamer.sinks import InMemorySink
from rxstreamer.sources import CsvRows
from tests.conftest import TEST_DATA_CSV


def run_pipeline(
    scheduler: TestScheduler,
    publisher: Any,
    *,
    rows: Any = None,
    encoder: BatchEncoder | None = None,
    transforms: list[Callable[[Observable[Any]], Observable[Any]]] | None = None,
    on_ack: Callable[[PublishAck], None] | None = None,
    on_retry: Callable[[EncodedBatch, int, float, BaseException], None] | None = None,
) -> list[Recorded[Any]]:
    results = scheduler.start(
        lambda: build_pipeline(
            rows if rows is not None else CsvRows(TEST_DATA_CSV),
            publisher,
            encoder or BatchEncoder("p"),
            batch_size=100,
            interval=1.0,
            retry=RetryPolicy(initial_backoff=0.5, max_backoff=0.5),
            transforms=transforms or [],
            scheduler=scheduler,
            on_ack=on_ack,
            on_retry=on_retry,
        ),
        disposed=100_000,
    )
    return list(results.messages)


def error_of(messages: list[Recorded[Any]]) -> tuple[float, Exception]:
    """The stream's last message, which must be its error."""
    last = messages[-1]
    assert isinstance(last.value, OnError), f"the stream ended with {last.value}, not an error"
    return last.time, last.value.exception


def acked_sequences(messages: list[Recorded[Any]]) -> list[int]:
    return [message.value.value.sequence for message in messages if isinstance(message.value, OnNext)]


def test_a_transform_that_emits_no_rows_ends_the_stream_with_an_encoding_error() -> None:
    """A transform mapping rows to strings: the first batch fails to encode, at subscription, naming the type."""
    scheduler = TestScheduler()
    publisher = InMemorySink(scheduler=scheduler)
    messages = run_pipeline(scheduler, publisher, transforms=[ops.map(lambda _: "not a row")])
    time, error = error_of(messages)
    assert time == 200.0
    assert isinstance(error, EncodingError)
    assert "a transform emitted str, not MetricRow" in str(error)
    assert publisher.batches == []


def test_a_sequence_past_uint64_ends_the_stream_with_an_encoding_error() -> None:
    """A first sequence of 2**64 (from a corrupt checkpoint) cannot be encoded: error, nothing published."""
    scheduler = TestScheduler()
    publisher = InMemorySink(scheduler=scheduler)
    messages = run_pipeline(scheduler, publisher, encoder=BatchEncoder("p", first_sequence=2**64))
    _, error = error_of(messages)
    assert isinstance(error, EncodingError)
    assert "ValueError" in str(error)
    assert publisher.batches == []


def test_an_acknowledgement_listener_that_raises_ends_the_stream_after_that_batch() -> None:
    """The checkpoint writer failing on the third ack: error at that ack's time, no fourth batch published."""
    scheduler = TestScheduler()
    publisher = InMemorySink(latency=0.25, scheduler=scheduler)

    def fail_on_third(ack: PublishAck) -> None:
        if ack.sequence == 3:
            raise OSError(28, "No space left on device")

    messages = run_pipeline(scheduler, publisher, on_ack=fail_on_third)
    time, error = error_of(messages)
    assert (time, str(error)) == (202.25, "[Errno 28] No space left on device")
    assert acked_sequences(messages) == [1, 2]
    assert [batch.sequence for batch in publisher.batches] == [1, 2, 3]


def test_a_retry_listener_that_raises_ends_the_stream() -> None:
    """The retry logger raising when the first publish is refused: the stream fails at once, no retry runs."""
    scheduler = TestScheduler()
    publisher = InMemorySink(scheduler=scheduler, failures=[PublishError("UNAVAILABLE", "down")])

    def broken_logger(batch: EncodedBatch, attempt: int, wait: float, error: BaseException) -> None:
        raise RuntimeError("log sink closed")

    messages = run_pipeline(scheduler, publisher, on_retry=broken_logger)
    time, error = error_of(messages)
    assert (time, str(error)) == (200.0, "log sink closed")
    assert publisher.attempts == 1


class _RaisingPublisher:
    """A publisher whose publish call itself raises on the given attempts (a bug in a user's sink, say)."""

    def __init__(self, scheduler: TestScheduler, raise_on: set[int]) -> None:
        self.inner = InMemorySink(scheduler=scheduler, failures=[PublishError("UNAVAILABLE", "down")])
        self.raise_on = raise_on
        self.calls = 0

    @property
    def stats(self) -> Any:
        return self.inner.stats

    def publish(self, batch: EncodedBatch) -> Observable[PublishAck]:
        self.calls += 1
        if self.calls in self.raise_on:
            raise KeyError(f"call {self.calls}")
        return self.inner.publish(batch)


def test_a_publish_call_that_raises_ends_the_stream() -> None:
    """A publish function raising instead of returning an observable: the stream fails at once."""
    scheduler = TestScheduler()
    publisher = _RaisingPublisher(scheduler, raise_on={1})
    messages = run_pipeline(scheduler, publisher)
    time, error = error_of(messages)
    assert (time, str(error)) == (200.0, "'call 1'")


def test_a_publish_call_that_raises_on_a_retry_timer_ends_the_stream() -> None:
    """The first attempt is refused (retryable); the retry, run by the backoff timer, raises: error then."""
    scheduler = TestScheduler()
    publisher = _RaisingPublisher(scheduler, raise_on={2})
    messages = run_pipeline(scheduler, publisher)
    time, error = error_of(messages)
    assert str(error) == "'call 2'"
    assert 200.0 < time <= 200.5  # after the jittered backoff of at most 0.5
    assert publisher.inner.batches == []


def test_a_rejection_handler_that_raises_ends_the_stream_after_the_batches_before_it(tmp_path: Path) -> None:
    """The quarantine failing on the first bad row: the batches read before it are published, then the error."""
    path = tmp_path / "bad.csv"
    lines = TEST_DATA_CSV.read_text().splitlines(keepends=True)
    path.write_text("".join([*lines[:251], "not,a,row\n", *lines[251:]]))  # a bad record after 250 good ones

    def quarantine_full(rejection: Rejection) -> None:
        raise OSError(28, f"No space left on device (line {rejection.line})")

    scheduler = TestScheduler()
    publisher = InMemorySink(scheduler=scheduler)
    messages = run_pipeline(scheduler, publisher, rows=CsvRows(path, on_reject=quarantine_full))
    _, error = error_of(messages)
    assert str(error) == "[Errno 28] No space left on device (line 252)"
    assert acked_sequences(messages) == [1, 2]


def test_the_pipeline_thread_reports_an_exception_that_escapes_its_loop() -> None:
    """An action that raises on the event-loop thread is reported as the run's error instead of killing it silently."""
    errors: list[Exception] = []
    told = threading.Event()

    def on_crash(error: Exception) -> None:
        errors.append(error)
        told.set()

    thread = _PipelineThread(on_crash)
    scheduler = EventLoopScheduler(thread_factory=thread)

    def explode(*_: object) -> None:
        raise ZeroDivisionError("bug")

    scheduler.schedule(explode)
    assert told.wait(5.0)
    assert [str(error) for error in errors] == ["bug"]
    assert not thread.alive
    scheduler.dispose()


def test_offsets_that_go_back_are_reported_once() -> None:
    """An in-memory broker that restarted hands out offsets from 0 again: one warning, not one per batch."""
    from structlog.testing import capture_logs

    watch = _OffsetWatch("127.0.0.1:1")
    acks = [PublishAck(1, 7, False, 10), PublishAck(2, 8, False, 10), PublishAck(2, 3, True, 10)]
    acks += [PublishAck(3, 0, False, 10), PublishAck(4, 1, False, 10), PublishAck(5, 0, False, 10)]
    with capture_logs() as logs:
        for ack in acks:
            watch(ack)
    assert [(entry["event"], entry["previous_offset"], entry["offset"]) for entry in logs] == [
        ("mq.offsets_went_back", 8, 0)
    ]


def test_reading_ahead_carries_each_batchs_own_counts_to_its_acknowledgement() -> None:
    """With read_ahead=1 the source runs a batch ahead; each ack still carries the counts at its own batch."""
    scheduler = TestScheduler()
    publisher = InMemorySink(latency=0.5, scheduler=scheduler)
    rows = CsvRows(TEST_DATA_CSV)
    results = scheduler.start(
        lambda: build_pipeline(
            rows,
            publisher,
            BatchEncoder("p"),
            batch_size=100,
            interval=1.0,
            retry=RetryPolicy(),
            read_ahead=1,
            scheduler=scheduler,
        ),
        disposed=100_000,
    )
    acks = [message.value.value for message in results.messages if isinstance(message.value, OnNext)]
    assert [(ack.read.rows_read if ack.read else None) for ack in acks] == [*range(100, 1000, 100)[:9], 960]
    assert rows.stats.rows_read == 960


def test_an_observable_source_of_rows_without_counts_carries_none() -> None:
    """A plain iterable of rows (no stats, no position): batches carry neither, and publish as before."""
    scheduler = TestScheduler()
    publisher = InMemorySink(scheduler=scheduler)
    rows: list[MetricRow] = list(CsvRows(TEST_DATA_CSV))[:150]
    messages = run_pipeline(scheduler, publisher, rows=rows)
    acks = [message.value.value for message in messages if isinstance(message.value, OnNext)]
    assert [(ack.sequence, ack.rows, ack.position, ack.read) for ack in acks] == [
        (1, 100, None, None),
        (2, 50, None, None),
    ]
