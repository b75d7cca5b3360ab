"""GrpcSink against the real broker served in-process on 127.0.0.1: acks, errors, threads, accounting."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from reactivex.scheduler import EventLoopScheduler, ImmediateScheduler

from rxstreamer.broker import BrokerOptions, RunningBroker, start_broker
from rxstreamer.model import EncodedBatch, Position, PublishAck
from rxstreamer.retry import PublishError
from rxstreamer.sinks import PublishStats, SinkOptions
from rxstreamer.sinks.grpc import GrpcSink
from tests.processes import free_port

pytestmark = pytest.mark.integration

TOPIC = "gpu-telemetry"


@pytest.fixture
def broker() -> Iterator[RunningBroker]:
    running = start_broker(BrokerOptions(listen="127.0.0.1:0"))
    yield running
    running.stop(grace=0)


@pytest.fixture
def publisher(broker: RunningBroker) -> Iterator[GrpcSink]:
    opened = GrpcSink(broker.address, TOPIC, SinkOptions(timeout=5.0, scheduler=ImmediateScheduler.singleton()))
    yield opened
    opened.close()


def batch(sequence: int, rows: int = 3, position: Position | None = None, producer_id: str = "p") -> EncodedBatch:
    return EncodedBatch(producer_id, sequence, f"payload {sequence}".encode(), "text/plain", rows, position)


def answer(publisher: GrpcSink, item: EncodedBatch) -> PublishAck | BaseException:
    """The one answer of a publish, waited for (gRPC's threads carry the call): the ack, or the error it ended with."""
    answers: list[PublishAck | BaseException] = []
    completed: list[bool] = []
    over = threading.Event()

    def on_error(error: BaseException) -> None:
        answers.append(error)
        over.set()

    def on_completed() -> None:
        completed.append(True)
        over.set()

    publisher.publish(item).subscribe(answers.append, on_error, on_completed)
    assert over.wait(10.0), "no answer within 10 s"
    assert len(answers) == 1, answers
    assert completed == ([] if isinstance(answers[0], BaseException) else [True])
    return answers[0]


def test_an_ack_carries_the_batch_identity_the_stored_offset_rows_and_position(publisher: GrpcSink) -> None:
    """Two batches stored at offsets 0 and 1; each ack repeats the sequence, row count and input position."""
    first = answer(publisher, batch(7, rows=3, position=Position(offset=120, line=4)))
    second = answer(publisher, batch(8, rows=5, position=Position(offset=300, line=9, pass_number=1)))
    assert first == PublishAck(7, 0, False, 3, Position(offset=120, line=4))
    assert second == PublishAck(8, 1, False, 5, Position(offset=300, line=9, pass_number=1))


def test_a_batch_the_broker_already_holds_is_acknowledged_as_a_duplicate(
    publisher: GrpcSink, broker: RunningBroker
) -> None:
    """Publishing (p, 7) again answers duplicate=True with the first offset; the topic holds it once."""
    answer(publisher, batch(6))
    first = answer(publisher, batch(7))
    again = answer(publisher, batch(7))
    assert first == PublishAck(7, 1, False, 3)
    assert again == PublishAck(7, 1, True, 3)
    assert broker.topics.topic(TOPIC).next_offset == 2


def test_stats_count_batches_rows_and_duplicates(publisher: GrpcSink) -> None:
    """Three acks of 3, 5 and 5 rows, the last a duplicate: 3 batches, 13 rows, 1 duplicate."""
    assert publisher.stats == PublishStats(0, 0, 0)
    answer(publisher, batch(1, rows=3))
    answer(publisher, batch(2, rows=5))
    answer(publisher, batch(2, rows=5))
    assert publisher.stats == PublishStats(batches=3, rows=13, duplicates=1)


def test_an_absent_broker_is_unavailable() -> None:
    """Nothing listening on the port: the publish ends with PublishError UNAVAILABLE, and nothing is counted."""
    absent = GrpcSink(
        f"127.0.0.1:{free_port()}", TOPIC, SinkOptions(timeout=5.0, scheduler=ImmediateScheduler.singleton())
    )
    try:
        error = answer(absent, batch(1))
        assert isinstance(error, PublishError)
        assert error.status == "UNAVAILABLE"
        assert error.retry_after is None
        assert absent.stats == PublishStats(0, 0, 0)
        assert absent.in_flight == 0
    finally:
        absent.close()


def test_a_full_topics_retry_hint_becomes_retry_after() -> None:
    """A topic of one message kept 60 s refuses the second with RESOURCE_EXHAUSTED and a hint of about 60 s."""
    with start_broker(BrokerOptions(listen="127.0.0.1:0", max_messages=1, retention=60.0)) as full:
        publisher = GrpcSink(full.address, TOPIC, SinkOptions(timeout=5.0, scheduler=ImmediateScheduler.singleton()))
        try:
            answer(publisher, batch(1))
            error = answer(publisher, batch(2))
        finally:
            publisher.close()
    assert isinstance(error, PublishError)
    assert error.status == "RESOURCE_EXHAUSTED"
    assert error.retry_after is not None
    assert 55.0 < error.retry_after <= 60.0


def test_a_full_topic_without_retention_sends_no_retry_hint() -> None:
    """With no retention, room never appears by itself: RESOURCE_EXHAUSTED without a retry_after."""
    with start_broker(BrokerOptions(listen="127.0.0.1:0", max_messages=1)) as full:
        publisher = GrpcSink(full.address, TOPIC, SinkOptions(timeout=5.0, scheduler=ImmediateScheduler.singleton()))
        try:
            answer(publisher, batch(1))
            error = answer(publisher, batch(2))
        finally:
            publisher.close()
    assert isinstance(error, PublishError)
    assert (error.status, error.retry_after) == ("RESOURCE_EXHAUSTED", None)


def test_wait_idle_is_true_at_once_when_nothing_is_in_flight(publisher: GrpcSink) -> None:
    """Before and after a publish, nothing is in flight: wait_idle(0) answers True without waiting."""
    assert publisher.wait_idle(0.0) is True
    answer(publisher, batch(1))
    assert publisher.in_flight == 0
    assert publisher.wait_idle(0.0) is True


@pytest.mark.parametrize("background", [False, True], ids=["on-grpc-threads", "in-background"])
def test_publishes_answer_on_the_pipeline_schedulers_thread(broker: RunningBroker, background: bool) -> None:
    """The call runs elsewhere (gRPC's threads, or the publishing thread), but the ack (and completion) arrive on
    the scheduler's thread: every operator of the pipeline runs on that one thread."""
    scheduler = EventLoopScheduler()
    publisher = GrpcSink(broker.address, TOPIC, SinkOptions(timeout=5.0, scheduler=scheduler, background=background))
    loop_thread: list[threading.Thread] = []
    scheduler.schedule(lambda *_: loop_thread.append(threading.current_thread()))
    acks: list[tuple[PublishAck, threading.Thread]] = []
    completed: list[threading.Thread] = []
    done = threading.Event()

    def completed_on(_: object = None) -> None:
        completed.append(threading.current_thread())
        done.set()

    try:
        publisher.publish(batch(1)).subscribe(
            lambda ack: acks.append((ack, threading.current_thread())), completed_on, completed_on
        )
        assert done.wait(10.0), "no answer within 10 s"
        assert publisher.wait_idle(5.0) is True
    finally:
        publisher.close()
        scheduler.dispose()
    assert acks == [(PublishAck(1, 0, False, 3), loop_thread[0])]
    assert completed == [loop_thread[0]]
    assert loop_thread[0] is not threading.current_thread()
    assert publisher.stats == PublishStats(1, 3, 0)


@pytest.mark.parametrize("background", [False, True], ids=["on-grpc-threads", "in-background"])
def test_close_after_use_is_safe_and_idempotent(broker: RunningBroker, background: bool) -> None:
    """close() after a publish raises nothing, twice over; the counts stay as they were."""
    scheduler = EventLoopScheduler()
    options = SinkOptions(timeout=5.0, scheduler=scheduler, background=background, on_connectivity=lambda _: None)
    publisher = GrpcSink(broker.address, TOPIC, options)
    done = threading.Event()
    publisher.publish(batch(1)).subscribe(on_completed=done.set, on_error=lambda _: done.set())
    assert done.wait(10.0), "no answer within 10 s"
    assert publisher.wait_idle(5.0) is True
    publisher.close()
    publisher.close()
    scheduler.dispose()
    assert publisher.stats == PublishStats(1, 3, 0)


def test_a_publish_leaves_the_calling_thread_free_while_the_call_is_on_the_wire(broker: RunningBroker) -> None:
    """subscribe() returns before the answer: the pipeline's thread reads the next batch meanwhile (read_ahead).

    The call is made on the scheduler's thread, where the answer is delivered too: a blocking call would
    deliver it before subscribe() returned.
    """
    scheduler = EventLoopScheduler()
    publisher = GrpcSink(broker.address, TOPIC, SinkOptions(timeout=5.0, scheduler=scheduler))
    answers: list[object] = []
    done = threading.Event()

    def publish(*_: object) -> None:
        publisher.publish(batch(1)).subscribe(answers.append, on_completed=done.set)
        answers.append("subscribe returned")

    try:
        scheduler.schedule(publish)
        assert done.wait(10.0), "no answer within 10 s"
    finally:
        publisher.close()
        scheduler.dispose()
    assert answers == ["subscribe returned", PublishAck(1, 0, False, 3)]
