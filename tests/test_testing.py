"""The test doubles users get in rxstreamer.testing: the in-memory and failing sinks, the scripted source."""

from __future__ import annotations

import time

import pytest
from reactivex import operators as ops
from reactivex.notification import OnError
from reactivex.testing import TestScheduler

from rxstreamer.encoding import BatchEncoder, decode_batch
from rxstreamer.model import EncodedBatch, MetricRow, Position, PublishAck, ReadCounts, Rejection
from rxstreamer.pipeline import build_pipeline
from rxstreamer.retry import PublishError, RetriesExhaustedError, RetryPolicy
from rxstreamer.sinks import PublishStats, Sink
from rxstreamer.sources import SourceStats
from rxstreamer.sources.base import Counted, Positioned
from rxstreamer.testing import FailingSink, InMemorySink, ScriptedSource, metric_row


def batch(sequence: int, rows: int = 3) -> EncodedBatch:
    return EncodedBatch("p", sequence, f"payload {sequence}".encode(), "text/plain", rows)


def answers(sink: Sink, item: EncodedBatch) -> list[PublishAck | BaseException]:
    """What one synchronous publish emitted: its ack, or the error it ended with."""
    emitted: list[PublishAck | BaseException] = []
    sink.publish(item).subscribe(emitted.append, emitted.append)
    return emitted


# --- InMemorySink --------------------------------------------------------------------------------------


def test_in_memory_sink_counts_a_publish_in_flight_until_its_latency_has_passed() -> None:
    """Latency 0.5 in virtual time: in flight and not idle at 0.4, answered, idle and counted at 0.5."""
    scheduler = TestScheduler()
    sink = InMemorySink(latency=0.5, scheduler=scheduler)
    acks: list[PublishAck] = []
    sink.publish(batch(1)).subscribe(acks.append)
    scheduler.advance_to(0.4)
    assert (sink.in_flight, sink.wait_idle(0.0), acks) == (1, False, [])
    scheduler.advance_to(0.5)
    assert (sink.in_flight, sink.wait_idle(0.0)) == (0, True)
    assert acks == [PublishAck(1, 0, False, 3)]
    assert sink.stats == PublishStats(batches=1, rows=3, duplicates=0)


def test_in_memory_sink_wait_idle_gives_up_after_its_timeout() -> None:
    """A publish that virtual time never answers: wait_idle(0.05) returns False after about 0.05 s, not later."""
    scheduler = TestScheduler()
    sink = InMemorySink(latency=1.0, scheduler=scheduler)
    sink.publish(batch(1)).subscribe()
    started = time.monotonic()
    assert sink.wait_idle(0.05) is False
    assert 0.04 <= time.monotonic() - started < 1.0


def test_a_disposed_publish_still_finishes_and_is_counted() -> None:
    """Disposed before its answer: nothing is delivered, but the batch is stored and counted, like an RPC sent."""
    scheduler = TestScheduler()
    sink = InMemorySink(latency=0.5, scheduler=scheduler)
    delivered: list[PublishAck] = []
    sink.publish(batch(1)).subscribe(delivered.append).dispose()
    scheduler.advance_to(1.0)
    assert delivered == []
    assert [stored.sequence for stored in sink.batches] == [1]
    assert (sink.stats, sink.in_flight) == (PublishStats(1, 3, 0), 0)


def test_close_is_idempotent_and_refuses_later_publishes_with_cancelled() -> None:
    """After close() (twice), a publish fails with CANCELLED, not retryable; what was stored stays."""
    sink = InMemorySink()
    assert answers(sink, batch(1)) == [PublishAck(1, 0, False, 3)]
    sink.close()
    sink.close()
    [refusal] = answers(sink, batch(2))
    assert isinstance(refusal, PublishError)
    assert (refusal.status, refusal.retryable) == ("CANCELLED", False)
    assert sink.closed is True
    assert [stored.sequence for stored in sink.batches] == [1]
    assert (sink.stats, sink.attempts) == (PublishStats(1, 3, 0), 2)


# --- FailingSink ---------------------------------------------------------------------------------------


def test_failing_sink_refuses_every_publish_with_its_status() -> None:
    """FailingSink("UNAVAILABLE"): three attempts, three retryable UNAVAILABLE refusals, nothing stored."""
    sink = FailingSink("UNAVAILABLE", retry_after=2.5)
    refusals = [item for sequence in (1, 2, 3) for item in answers(sink, batch(sequence))]
    assert all(isinstance(item, PublishError) for item in refusals)
    assert [str(item) for item in refusals] == [
        "UNAVAILABLE: refused by FailingSink (attempt 1)",
        "UNAVAILABLE: refused by FailingSink (attempt 2)",
        "UNAVAILABLE: refused by FailingSink (attempt 3)",
    ]
    assert {(item.retry_after, item.retryable) for item in refusals if isinstance(item, PublishError)} == {(2.5, True)}
    assert (sink.batches, sink.stats, sink.attempts) == ([], PublishStats(0, 0, 0), 3)


def test_failing_sink_follows_its_script_attempt_by_attempt_then_accepts() -> None:
    """["UNAVAILABLE", None, "INVALID_ARGUMENT"]: refused, stored, refused for good, then stored."""
    sink = FailingSink(["UNAVAILABLE", None, "INVALID_ARGUMENT"])
    outcomes = [answers(sink, batch(sequence)) for sequence in (1, 2, 3, 4)]
    shown = [
        [f"{item.status} retryable={item.retryable}" if isinstance(item, PublishError) else item for item in each]
        for each in outcomes
    ]
    assert shown == [
        ["UNAVAILABLE retryable=True"],
        [PublishAck(2, 0, False, 3)],
        ["INVALID_ARGUMENT retryable=False"],
        [PublishAck(4, 1, False, 3)],
    ]
    assert [stored.sequence for stored in sink.batches] == [2, 4]


def test_a_pipeline_gives_up_on_a_failing_sink_when_its_policy_runs_out() -> None:
    """Three attempts allowed, every one refused: the stream ends with RetriesExhaustedError after three."""
    scheduler = TestScheduler()
    sink = FailingSink("UNAVAILABLE", scheduler=scheduler)
    pipeline = build_pipeline(
        ScriptedSource([metric_row(2), metric_row(3)]),
        sink,
        BatchEncoder("p"),
        batch_size=2,
        interval=1.0,
        retry=RetryPolicy(initial_backoff=0.1, max_backoff=0.1, max_attempts=3),
        scheduler=scheduler,
    )
    messages = scheduler.start(lambda: pipeline, disposed=1_000).messages
    assert len(messages) == 1
    assert isinstance(messages[0].value, OnError)
    error = messages[0].value.exception
    assert isinstance(error, RetriesExhaustedError)
    assert (error.status, error.attempts, sink.attempts) == ("UNAVAILABLE", 3, 3)


# --- ScriptedSource ------------------------------------------------------------------------------------

REJECTED = Rejection(line=4, reason="value_not_numeric", detail="value 'n/a' is not a number", raw='"n/a"')
SCRIPT: list[MetricRow | Rejection] = [
    metric_row(2, value=1.0),
    metric_row(3, value=2.0),
    REJECTED,
    metric_row(5, value=3.0),
    metric_row(6, value=4.0),
]


def test_a_scripted_source_yields_its_rows_and_counts_its_rejections() -> None:
    """Four rows yielded in order; the rejection is counted, handed to on_reject and never yielded."""
    rejected: list[Rejection] = []
    source = ScriptedSource(SCRIPT, on_reject=rejected.append)
    assert [(row.line, row.value) for row in source] == [(2, 1.0), (3, 2.0), (5, 3.0), (6, 4.0)]
    assert rejected == [REJECTED]
    assert source.stats == SourceStats(
        rows_read=5, rows_rejected=1, passes=1, rejected_by_reason={"value_not_numeric": 1}
    )
    assert source.position == Position(offset=5, line=6)


def test_a_scripted_source_is_cold_and_positioned_after_each_row() -> None:
    """Each iteration replays the script; read right after a row, position names the next item."""
    source = ScriptedSource(SCRIPT)
    positions = [source.position for _ in source]
    assert positions == [Position(1, 2), Position(2, 3), Position(4, 5), Position(5, 6)]
    assert len(list(source)) == 4
    assert (source.stats.rows_read, source.stats.rows_rejected, source.stats.passes) == (10, 2, 2)


def test_a_scripted_source_started_at_a_position_carries_on_after_it() -> None:
    """start=Position(2, 3), after the first two rows: the rejection is consumed, then rows 5 and 6 follow."""
    source = ScriptedSource(SCRIPT, start=Position(2, 3))
    assert [row.line for row in source] == [5, 6]
    assert source.stats == SourceStats(
        rows_read=3, rows_rejected=1, passes=1, rejected_by_reason={"value_not_numeric": 1}
    )
    with pytest.raises(ValueError, match="start offset 6 is outside the script's 5 items"):
        ScriptedSource(SCRIPT, start=Position(6, 7))


def test_acks_through_a_scripted_source_carry_the_positions_and_counts_a_checkpoint_needs() -> None:
    """Batches of two: each ack names where the input continues and what was read; resuming there goes on."""
    source = ScriptedSource(SCRIPT)
    assert isinstance(source, Positioned)
    assert isinstance(source, Counted)
    sink = InMemorySink()
    acks = (
        build_pipeline(source, sink, BatchEncoder("p"), batch_size=2, interval=0, retry=RetryPolicy())
        .pipe(ops.to_list())
        .run()
    )
    assert acks == [
        PublishAck(1, 0, False, 2, Position(2, 3), ReadCounts(rows_read=2, rows_rejected=0)),
        PublishAck(2, 1, False, 2, Position(5, 6), ReadCounts(rows_read=5, rows_rejected=1)),
    ]
    values = [metric.value for stored in sink.batches for metric in decode_batch(stored.payload).metrics]
    assert values == [1.0, 2.0, 3.0, 4.0]
    resumed = ScriptedSource(SCRIPT, start=acks[0].position)
    assert [row.value for row in resumed] == [3.0, 4.0]


def test_metric_row_is_a_valid_row_with_the_fields_given() -> None:
    """Defaults for everything, the given line and fields replaced."""
    row = metric_row(7, value=42.0, uuid="GPU-1")
    assert (row.line, row.value, row.uuid, row.metric_name) == (7, 42.0, "GPU-1", "DCGM_FI_DEV_GPU_UTIL")
    assert metric_row() == metric_row(2)
