"""Replaying a recording at its own cadence, in virtual time: the timeline, the pacer, the whole pipeline."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import reactivex
from reactivex import Observable
from reactivex import operators as ops
from reactivex.notification import OnCompleted, OnNext
from reactivex.testing import ReactiveTest, TestScheduler

from rxstreamer.cadence import Timeline
from rxstreamer.counts import PipelineCounters, RunCounts
from rxstreamer.encoding import BatchEncoder
from rxstreamer.model import MetricRow, PublishAck
from rxstreamer.operators import pace_by_offsets
from rxstreamer.pipeline import build_pipeline
from rxstreamer.retry import RetryPolicy
from rxstreamer.sinks import InMemorySink
from rxstreamer.sources import CsvRows
from tests.conftest import TEST_DATA_CSV

on_next = ReactiveTest.on_next
on_completed = ReactiveTest.on_completed

T0 = datetime(2025, 7, 18, 13, 42, 33, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def row(seconds: float, line: int, host: str = "h1", uuid: str = "GPU-1") -> MetricRow:
    return MetricRow(at(seconds), "DCGM_FI_DEV_GPU_UTIL", "0", "nvidia0", uuid, "H100", host, "", "", "", 1.0, {}, line)


# --- the timeline --------------------------------------------------------------------------------------


def test_groups_are_due_at_their_offset_from_the_first_divided_by_the_speed() -> None:
    timeline = Timeline(speed=10)
    offsets = [timeline.offset(at(s), line) for line, s in enumerate([0, 0, 1, 1, 2.5, 3], start=2)]
    assert offsets == [0, 0, 0.1, 0.1, 0.25, 0.3]


def test_a_row_earlier_than_one_already_seen_is_due_at_once_and_counted() -> None:
    timeline = Timeline()
    assert timeline.offset(at(0), 2) == 0
    assert timeline.offset(at(2), 3) == 2
    assert timeline.offset(at(1), 4, rows=7) is None
    assert timeline.offset(at(3), 5) == 3
    assert timeline.rows_out_of_order == 7


def test_each_pass_of_a_looped_file_follows_the_previous_after_one_mean_gap() -> None:
    """Four groups 1 s apart (the real CSV) repeat every 4 s; a pass starts where line numbers go back down."""
    timeline = Timeline(speed=2)
    one_pass = [(0, 2), (1, 3), (2, 4), (3, 5)]
    offsets = [timeline.offset(at(s), line) for _ in range(3) for s, line in one_pass]
    assert offsets == [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 5.5]
    assert timeline.rows_out_of_order == 0


def test_a_one_timestamp_file_repeats_every_single_group_period() -> None:
    timeline = Timeline(speed=1, single_group_period=5)
    offsets = [timeline.offset(at(0), line) for _ in range(3) for line in (2, 3)]
    assert offsets == [0, 0, 5, 5, 10, 10]


def test_a_speed_must_be_positive() -> None:
    with pytest.raises(ValueError, match="greater than zero"):
        Timeline(speed=0)


# --- pace_by_offsets ----------------------------------------------------------------------------------


class Recorded:
    """Items with offsets, recording when each was read on the scheduler's clock."""

    def __init__(self, offsets: list[float | None], scheduler: TestScheduler) -> None:
        self.offsets = offsets
        self.scheduler = scheduler
        self.read_at: list[float] = []

    def __iter__(self) -> Iterator[int]:
        for index in range(len(self.offsets)):
            self.read_at.append(self.scheduler.clock)
            yield index


def instant(item: int) -> Observable[int]:
    return reactivex.of(item)


def taking(units: list[float], scheduler: TestScheduler) -> Callable[[int], Observable[int]]:
    each = iter(units)

    def publish(item: int) -> Observable[int]:
        return reactivex.timer(next(each), scheduler=scheduler).pipe(ops.map(lambda _: item))

    return publish


def test_items_are_handed_over_at_their_offsets_and_one_offset_serves_many() -> None:
    """Marble: offsets a=0 b=10 c=10 d=40 → a at 200, (bc) at 210, d at 240."""
    scheduler = TestScheduler()
    items = Recorded([0, 10, 10, 40], scheduler)
    results = scheduler.start(lambda: pace_by_offsets(items, items.offsets.__getitem__, instant, scheduler=scheduler))
    assert results.messages == [on_next(200, 0), on_next(210, 1), on_next(210, 2), on_next(240, 3), on_completed(240)]


def test_the_next_item_is_read_when_the_previous_is_done_one_ahead_and_no_more() -> None:
    """Reading item k+1 is what tells when it is due: it happens right after item k's publish, not before."""
    scheduler = TestScheduler()
    items = Recorded([0, 100, 200], scheduler)
    publish = taking([5, 5, 5], scheduler)
    scheduler.start(lambda: pace_by_offsets(items, items.offsets.__getitem__, publish, scheduler=scheduler))
    assert items.read_at == [200, 205, 305]


def test_replay_does_not_drift_over_many_groups_with_slow_publishes() -> None:
    """1,000 groups 1 unit apart, each publish taking 0.4: group k still reaches the queue at 200 + k + 0.4."""
    scheduler = TestScheduler()
    offsets: list[float | None] = [float(k) for k in range(1000)]
    items = Recorded(offsets, scheduler)
    publish = taking([0.4] * 1000, scheduler)
    results = scheduler.start(
        lambda: pace_by_offsets(items, offsets.__getitem__, publish, scheduler=scheduler),
        disposed=100_000,
    )
    times = [message.time for message in results.messages if isinstance(message.value, OnNext)]
    assert times == pytest.approx([200.4 + k for k in range(1000)])


def test_after_a_stall_longer_than_the_gap_the_rhythm_resumes_from_then_without_a_burst() -> None:
    """Groups 10 apart; group 1's publish ends at 245, 25 after group 2 was due: 2 goes then, 3 ten later."""
    scheduler = TestScheduler()
    items = Recorded([0, 10, 20, 30], scheduler)
    publish = taking([0, 35, 0, 0], scheduler)
    behind: list[float] = []
    results = scheduler.start(
        lambda: pace_by_offsets(items, items.offsets.__getitem__, publish, scheduler=scheduler, on_behind=behind.append)
    )
    assert [message.time for message in results.messages] == [200, 245, 245, 255, 255]
    assert behind == [0, 0, 25, 25]  # item 2 found the schedule 25 behind and moved it; item 3 kept to it


def test_a_little_lateness_is_absorbed_and_the_schedule_kept() -> None:
    scheduler = TestScheduler()
    items = Recorded([0, 10, 20], scheduler)
    publish = taking([0, 15, 0], scheduler)
    behind: list[float] = []
    results = scheduler.start(
        lambda: pace_by_offsets(items, items.offsets.__getitem__, publish, scheduler=scheduler, on_behind=behind.append)
    )
    assert [message.time for message in results.messages] == [200, 225, 225, 225]
    assert behind == [0, 0, 5]  # 5 late, less than the gap: the schedule stays, the lateness is told


def test_an_item_without_an_offset_goes_at_once() -> None:
    scheduler = TestScheduler()
    items = Recorded([0, 50, None, 60], scheduler)
    results = scheduler.start(lambda: pace_by_offsets(items, items.offsets.__getitem__, instant, scheduler=scheduler))
    assert results.messages == [on_next(200, 0), on_next(250, 1), on_next(250, 2), on_next(260, 3), on_completed(260)]


def test_disposing_stops_a_replay_waiting_for_its_next_group() -> None:
    scheduler = TestScheduler()
    items = Recorded([0, 100, 200], scheduler)
    results = scheduler.start(
        lambda: pace_by_offsets(items, items.offsets.__getitem__, instant, scheduler=scheduler), disposed=250
    )
    assert results.messages == [on_next(200, 0)]
    assert items.read_at == [200, 200]  # item 1, read to learn when it is due, is never handed over


# --- the whole pipeline ---------------------------------------------------------------------------------


def recording(passes: int = 1) -> list[MetricRow]:
    """The real CSV's shape in small: four timestamps one second apart, 3, 3, 1 and 3 rows on two hosts."""
    rows = []
    for _ in range(passes):
        line = 2
        for seconds, count in ((0, 3), (1, 3), (2, 1), (3, 3)):
            for index in range(count):
                rows.append(row(seconds, line, host=f"h{index % 2}", uuid=f"GPU-{index}"))
                line += 1
    return rows


def replay(
    rows: list[MetricRow], scheduler: TestScheduler, *, speed: float, batch_size: int = 2, by_scrape: bool = False
) -> tuple[list[tuple[float, PublishAck]], InMemorySink, PipelineCounters]:
    sink = InMemorySink(latency=0.01, scheduler=scheduler)
    counters = PipelineCounters()
    results = scheduler.start(
        lambda: build_pipeline(
            rows,
            sink,
            BatchEncoder("cadence"),
            batch_size=batch_size,
            interval=0,
            retry=RetryPolicy(),
            scheduler=scheduler,
            counters=counters,
            speed=speed,
            by_scrape=by_scrape,
        ),
        disposed=100_000,
    )
    assert isinstance(results.messages[-1].value, OnCompleted)
    acks: list[tuple[float, PublishAck]] = [
        (message.time, message.value.value) for message in results.messages if isinstance(message.value, OnNext)
    ]
    return acks, sink, counters


def test_the_pipeline_sends_each_timestamp_at_its_time_in_batches_that_never_mix_two() -> None:
    scheduler = TestScheduler()
    acks, _, _ = replay(recording(), scheduler, speed=1)
    assert [(round(time - 200, 2), ack.rows) for time, ack in acks] == [
        (0.01, 2), (0.02, 1), (1.01, 2), (1.02, 1), (2.01, 1), (3.01, 2), (3.02, 1),
    ]  # fmt: skip


def test_at_speed_ten_the_same_rhythm_takes_a_tenth_of_the_time() -> None:
    scheduler = TestScheduler()
    acks, _, _ = replay(recording(), scheduler, speed=10, batch_size=10)
    assert [round(time - 200, 3) for time, _ in acks] == [0.01, 0.11, 0.21, 0.31]


def test_by_scrape_each_batch_is_one_timestamp_of_one_host() -> None:
    scheduler = TestScheduler()
    acks, sink, _ = replay(recording(), scheduler, speed=1, batch_size=10, by_scrape=True)
    assert [ack.rows for _, ack in acks] == [2, 1, 2, 1, 1, 2, 1]
    assert len(sink.batches) == 7


def test_a_looped_recording_keeps_its_rhythm_pass_after_pass() -> None:
    scheduler = TestScheduler()
    acks, _, counters = replay(recording(passes=3), scheduler, speed=1, batch_size=10)
    assert [round(time - 200, 2) for time, _ in acks] == [k + 0.01 for k in range(12)]
    assert counters.rows_out_of_order == 0


def test_rows_out_of_time_order_are_sent_at_once_and_counted() -> None:
    scheduler = TestScheduler()
    rows = [row(0, 2), row(5, 3), row(2, 4), row(2, 5), row(6, 6)]
    acks, _, counters = replay(rows, scheduler, speed=1, batch_size=10)
    assert [(round(time - 200, 2), ack.rows) for time, ack in acks] == [(0.01, 1), (5.01, 1), (5.02, 2), (6.01, 1)]
    assert counters.rows_out_of_order == 2


def test_a_queue_too_slow_for_the_recording_is_reported_as_time_behind_schedule() -> None:
    """Publishes of 2.5 s against groups 1 s apart: each later group finds itself 1.5 s late, and says so."""
    scheduler = TestScheduler()
    sink = InMemorySink(latency=2.5, scheduler=scheduler)
    counters = PipelineCounters()
    rows = [row(seconds, line) for line, seconds in enumerate(range(4), start=2)]
    scheduler.start(
        lambda: build_pipeline(
            rows, sink, BatchEncoder("slow"), batch_size=10, interval=0, retry=RetryPolicy(),
            scheduler=scheduler, counters=counters, speed=1,
        ),
        disposed=100_000,
    )  # fmt: skip
    assert len(sink.batches) == 4
    assert counters.behind_schedule_s == pytest.approx(1.5 * 3)


def test_batches_of_one_group_published_slowly_are_told_further_and_further_behind() -> None:
    """One timestamp in three batches, each publish 5 units: the group's last batch goes 10 behind its time."""
    scheduler = TestScheduler()
    items = Recorded([0, 0, 0], scheduler)
    behind: list[float] = []
    scheduler.start(
        lambda: pace_by_offsets(
            items, items.offsets.__getitem__, taking([5, 5, 5], scheduler), scheduler=scheduler, on_behind=behind.append
        )
    )
    assert behind == [0, 5, 10]


def test_rows_held_for_a_batch_still_gathered_are_in_flight_when_the_run_stops() -> None:
    """Stopped while test-data's second scrape (30 s later) is awaited at speed 1: nothing counts as filtered."""
    scheduler = TestScheduler()
    rows = CsvRows(TEST_DATA_CSV)
    sink = InMemorySink(latency=0.01, scheduler=scheduler)
    counters = PipelineCounters()
    counts = RunCounts(rows, counters, sink)
    pipeline = build_pipeline(
        rows, sink, BatchEncoder("held"), batch_size=1000, interval=0, retry=RetryPolicy(), scheduler=scheduler,
        counters=counters, speed=1, by_scrape=True,
    )  # fmt: skip
    scheduler.start(lambda: pipeline, disposed=215)  # the first scrape sent; the second read and held
    stopped = counts.now()
    assert stopped.rows_published == 320
    assert stopped.rows_filtered == 0
    assert stopped.rows_read == stopped.rows_published + stopped.rows_in_flight
    assert stopped.rows_in_flight > 0
