"""The metrics endpoint's parts without HTTP: recorders in virtual time, the probes' rules, the collectors.

Each collector is registered in a private ``CollectorRegistry`` and read back through prometheus_client's
own text format and parser, so what is checked is what a scrape would get.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import reactivex
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from reactivex import Observable
from reactivex import operators as ops
from reactivex.testing import TestScheduler
from structlog.testing import capture_logs

from rxstreamer.broker.metrics import REJECTION_REASONS, BrokerCollector, BrokerCounters
from rxstreamer.broker.store import Broker
from rxstreamer.config import ConfigError, load_settings
from rxstreamer.counts import PipelineCounters, RunCounts
from rxstreamer.encoding import BatchEncoder
from rxstreamer.metrics import (
    AckedRowTimes,
    Histogram,
    Probe,
    PublishTimer,
    RowTimesEncoder,
    RunState,
    StreamerCollector,
    StreamerInstruments,
    StreamerView,
    TickLateness,
    lag_seconds,
    liveness,
    readiness,
    router,
    scrape_targets,
    stall_after,
    start_endpoint,
)
from rxstreamer.model import MetricRow, PublishAck
from rxstreamer.operators import pace
from rxstreamer.pipeline import build_pipeline
from rxstreamer.retry import PublishError, RetryPolicy
from rxstreamer.scaling import ScalingCounters, amplify, shard
from rxstreamer.service import _ProgressRate
from rxstreamer.sinks import InMemorySink
from rxstreamer.sources import CsvRows
from rxstreamer.sources.scrape import ScrapeFailedError, ScrapeRows
from rxstreamer.testing import FailingSink, metric_row
from tests.conftest import TEST_DATA_CSV, with_two_bad_rows
from tests.processes import http_get

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scraped(*collectors: Any) -> Samples:
    """What a scrape of a private registry holding ``collectors`` says, parsed back: (name, labels) -> value."""
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    text = generate_latest(registry).decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def labelled(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: found for (sample, labels), found in samples.items() if sample == name}


# --- the streamer's collector reads the run's counts ---------------------------------------------------


def streamer_view(
    counts: RunCounts, instruments: StreamerInstruments, sink: InMemorySink, **overrides: Any
) -> StreamerView:
    fields: dict[str, Any] = {
        "counts": counts.now,
        "publishes": instruments.publisher,
        "ticks": instruments.scheduler,
        "batches_in_flight": lambda: sink.in_flight,
        "queue_reachable": lambda: True,
        "checkpoint_sequence": lambda: None,
        "row_times": instruments.row_times,
    }
    return StreamerView(**{**fields, **overrides})


def test_the_collector_reports_a_replays_scaling_and_schedule_counts(tmp_path: Path) -> None:
    """Amplified, sharded and replayed at its own pace faster than the queue takes it: each scrape matches RunCounts."""
    rows = CsvRows(with_two_bad_rows(tmp_path))
    pipeline_counters, scaling = PipelineCounters(), ScalingCounters()
    scheduler = TestScheduler()
    sink = InMemorySink(latency=0.5, scheduler=scheduler)
    counts = RunCounts(rows, pipeline_counters, sink, scaling)
    encoder = RowTimesEncoder("p")
    instruments = StreamerInstruments.around(sink, scheduler, encoder, clock=lambda: scheduler.clock)
    pipeline = build_pipeline(
        rows, instruments.publisher, encoder, batch_size=100, interval=1.0, retry=RetryPolicy(),
        transforms=[amplify(3, scaling), shard(0, 2, scaling)], scheduler=instruments.scheduler,
        on_ack=instruments.on_ack, counters=pipeline_counters, speed=100,
    )  # fmt: skip
    collector = StreamerCollector(streamer_view(counts, instruments, sink))
    seen: list[tuple[Samples, Any]] = []
    scheduler.schedule_absolute(203.25, lambda *_: seen.append((scraped(collector), counts.now())))
    scheduler.start(lambda: pipeline, disposed=100_000)
    seen.append((scraped(collector), counts.now()))

    for samples, expected in seen:
        assert value(samples, "rxstreamer_rows_copied_total") == expected.rows_copied
        assert value(samples, "rxstreamer_rows_in_other_shards_total") == expected.rows_in_other_shards
        assert value(samples, "rxstreamer_rows_out_of_order_total") == expected.rows_out_of_order
        assert value(samples, "rxstreamer_behind_schedule_seconds") == pytest.approx(expected.behind_schedule_s)
        assert value(samples, "rxstreamer_rows_filtered_total") == expected.rows_filtered == 0  # no transform drops
    end = seen[-1][1]
    assert end.rows_copied == 2 * (end.rows_read - end.rows_rejected) > 0
    assert end.rows_in_other_shards > 0
    assert end.behind_schedule_s > 0  # a group every 10 ms (speed 100), each publish taking 500 ms
    assert end.rows_read + end.rows_copied == end.rows_published + end.rows_rejected + end.rows_in_other_shards


def test_the_collector_reports_the_runs_counts_mid_run_and_at_the_end(tmp_path: Path) -> None:
    """Two bad rows, power rows filtered, a batch read ahead: each scrape says what RunCounts says, field by field."""
    path = with_two_bad_rows(tmp_path)
    rows = CsvRows(path)
    pipeline_counters = PipelineCounters()
    scheduler = TestScheduler()
    sink = InMemorySink(latency=0.5, scheduler=scheduler)
    counts = RunCounts(rows, pipeline_counters, sink)
    encoder = RowTimesEncoder("p")
    instruments = StreamerInstruments.around(sink, scheduler, encoder, clock=lambda: scheduler.clock)

    def not_power(row: MetricRow) -> bool:
        return row.metric_name != "DCGM_FI_DEV_POWER_USAGE"

    pipeline = build_pipeline(
        rows, instruments.publisher, encoder, batch_size=100, interval=1.0, retry=RetryPolicy(), read_ahead=1,
        transforms=[ops.filter(not_power)], scheduler=instruments.scheduler, on_ack=instruments.on_ack,
        counters=pipeline_counters,
    )  # fmt: skip
    collector = StreamerCollector(streamer_view(counts, instruments, sink))
    seen: list[tuple[Samples, Any]] = []
    for at in (202.25, 202.75):  # the third publish on the wire; then acknowledged, and batch 4 read ahead
        scheduler.schedule_absolute(at, lambda *_: seen.append((scraped(collector), counts.now())))
    scheduler.start(lambda: pipeline, disposed=100_000)
    seen.append((scraped(collector), counts.now()))

    for samples, expected in seen:
        assert value(samples, "rxstreamer_rows_read_total") == expected.rows_read
        assert value(samples, "rxstreamer_rows_published_total") == expected.rows_published
        assert labelled(samples, "rxstreamer_rows_rejected_total", "reason") == expected.rejected_by_reason
        assert value(samples, "rxstreamer_rows_filtered_total") == expected.rows_filtered
        assert value(samples, "rxstreamer_rows_in_flight") == expected.rows_in_flight
        assert value(samples, "rxstreamer_batches_published_total") == expected.batches_published
        assert value(samples, "rxstreamer_duplicates_total") == expected.duplicates
    publishing, read_ahead, end = (samples for samples, _ in seen)
    assert (value(publishing, "rxstreamer_rows_in_flight"), value(publishing, "rxstreamer_batches_in_flight")) == (
        200,
        1,
    )
    assert (value(read_ahead, "rxstreamer_rows_in_flight"), value(read_ahead, "rxstreamer_batches_in_flight")) == (
        100,
        0,
    )
    assert labelled(end, "rxstreamer_rows_rejected_total", "reason") == {"field_count": 2}
    assert value(end, "rxstreamer_rows_published_total") == 864
    assert labelled(end, "rxstreamer_publish_attempts_total", "outcome") == {"ok": 9}
    assert value(end, "rxstreamer_publish_duration_seconds_count") == 9
    assert value(end, "rxstreamer_publish_duration_seconds_sum") == pytest.approx(9 * 0.5)  # the sink's latency
    assert value(end, "rxstreamer_publish_duration_seconds_bucket", le="0.5") == 9
    assert value(end, "rxstreamer_publish_duration_seconds_bucket", le="0.25") == 0
    # Nine batches: the first tick is immediate, eight are due at 201..208 and fire on time (a publish takes 0.5
    # of the interval of 1); the end of the file was known from reading ahead, so no tick went looking for it.
    assert value(end, "rxstreamer_pacing_lateness_seconds_count") == 8
    assert value(end, "rxstreamer_pacing_lateness_seconds_sum") == 0
    assert value(end, "rxstreamer_queue_up") == 1
    assert ("rxstreamer_checkpoint_sequence", ()) not in end  # no checkpoint: no series


def test_counters_and_histograms_pass_the_exposition_rules() -> None:
    """Counters end in _total, histograms have cumulative buckets ending in +Inf, and nothing else is exposed."""
    scheduler = TestScheduler()
    sink = InMemorySink()
    instruments = StreamerInstruments.around(sink, scheduler, BatchEncoder("p"))
    view = streamer_view(RunCounts(CsvRows(TEST_DATA_CSV), PipelineCounters(), sink), instruments, sink)
    registry = CollectorRegistry()
    registry.register(StreamerCollector(view))
    families = {
        family.name: family.type for family in text_string_to_metric_families(generate_latest(registry).decode())
    }
    assert families == {
        "rxstreamer_rows_read": "counter",
        "rxstreamer_rows_published": "counter",
        "rxstreamer_rows_rejected": "counter",
        "rxstreamer_rows_filtered": "counter",
        "rxstreamer_rows_copied": "counter",
        "rxstreamer_rows_in_other_shards": "counter",
        "rxstreamer_rows_out_of_order": "counter",
        "rxstreamer_behind_schedule_seconds": "gauge",
        "rxstreamer_rows_in_flight": "gauge",
        "rxstreamer_batches_published": "counter",
        "rxstreamer_duplicates": "counter",
        "rxstreamer_publish_attempts": "counter",
        "rxstreamer_publish_duration_seconds": "histogram",
        "rxstreamer_batches_in_flight": "gauge",
        "rxstreamer_queue_up": "gauge",
        "rxstreamer_pacing_lateness_seconds": "histogram",
    }  # no row times (a plain BatchEncoder), no checkpoint, no scrape targets: no such series


def test_a_histogram_counts_each_value_in_the_first_bucket_that_holds_it() -> None:
    histogram = Histogram((0.1, 1.0))
    for observed in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(observed)
    snapshot = histogram.snapshot()
    assert snapshot.counts == (2, 2, 1)  # "le": 0.1 holds 0.1 itself
    assert snapshot.cumulative() == [("0.1", 2.0), ("1.0", 4.0), ("+Inf", 5.0)]
    assert snapshot.count == 5
    assert snapshot.total == pytest.approx(8.65)


# --- recorders in virtual time -------------------------------------------------------------------------


def test_publish_attempts_are_timed_and_counted_by_outcome_and_a_refused_batch_waits() -> None:
    """A refusal, a store and a duplicate, each answered after 0.25 s of virtual time."""
    scheduler = TestScheduler()
    sink = FailingSink(["UNAVAILABLE", None, None], latency=0.25, scheduler=scheduler)
    timer = PublishTimer(sink, clock=lambda: scheduler.clock)
    encoder = BatchEncoder("p")
    batch = encoder([metric_row()])
    results: list[object] = []
    waits: list[float | None] = []

    def attempt(at: float) -> None:
        def start(*_: Any) -> None:
            timer.publish(batch).subscribe(results.append, results.append)

        scheduler.schedule_absolute(at, start)

    attempt(1.0)
    scheduler.schedule_absolute(2.0, lambda *_: waits.append(timer.waiting_for()))  # refused at 1.25: still waits
    attempt(3.0)
    scheduler.schedule_absolute(4.0, lambda *_: waits.append(timer.waiting_for()))  # stored at 3.25
    attempt(5.0)  # the same batch again: a duplicate
    scheduler.start()

    assert [type(result).__name__ for result in results] == ["PublishError", "PublishAck", "PublishAck"]
    assert timer.outcomes() == {"UNAVAILABLE": 1, "ok": 1, "duplicate": 1}
    assert waits == [pytest.approx(1.0), None]  # waiting since its first attempt, at 1.0
    durations = timer.durations.snapshot()
    assert durations.count == 3
    assert durations.total == pytest.approx(0.75)
    assert timer.stats == sink.stats  # the sink's own counts are the ones reported


def test_the_outcome_of_an_error_that_is_no_publish_error_is_error() -> None:
    scheduler = TestScheduler()

    class Broken(InMemorySink):
        def publish(self, batch: Any) -> Observable[PublishAck]:
            return reactivex.throw(RuntimeError("a bug in a sink"))

    timer = PublishTimer(Broken(), clock=lambda: scheduler.clock)
    timer.publish(BatchEncoder("p")([metric_row()])).subscribe(on_error=lambda _: None)
    assert timer.outcomes() == {"error": 1}


def test_pacing_lateness_is_how_late_each_tick_fired_in_virtual_time() -> None:
    """Interval 1: b's publish takes 1.5, so the tick due at 2.0 fires at 2.5; the others fire on time."""
    scheduler = TestScheduler()
    ticks = TickLateness(scheduler)

    def then(item: str) -> Observable[str]:
        if item == "b":
            return reactivex.timer(1.5, scheduler=scheduler).pipe(ops.map(lambda _: item))
        return reactivex.of(item)

    observer = scheduler.start(lambda: pace(["a", "b", "c", "d"], 1.0, then, scheduler=ticks))  # subscribed at 200
    # a; b answered 1.5 after its tick at 201; c at its tick, late; d; completed at the tick finding no more items
    assert [message.time for message in observer.messages] == [200, 202.5, 202.5, 203, 204]
    lateness = ticks.lateness.snapshot()
    # Ticks at 201 (b), 202.5 (c, due 202), 203 (d) and 204 (the end of the items); the first is not due-timed.
    assert lateness.count == 4
    assert lateness.total == pytest.approx(0.5)
    assert lateness.cumulative()[0] == ("0.0005", 3.0)


def test_a_tick_late_by_more_than_an_interval_restarts_the_schedule_and_counts_from_there() -> None:
    """pace restarts its schedule after a stall longer than an interval: the next tick is due at once."""
    scheduler = TestScheduler()
    ticks = TickLateness(scheduler)

    def then(item: str) -> Observable[str]:
        delay = 3.5 if item == "a" else 0.0
        return reactivex.timer(delay, scheduler=scheduler).pipe(ops.map(lambda _: item))

    scheduler.start(lambda: pace(["a", "b", "c"], 1.0, then, scheduler=ticks))
    lateness = ticks.lateness.snapshot()
    assert lateness.total == pytest.approx(0.0)  # b at 203.5 (restarted, due then), c at 204.5, end at 205.5
    assert lateness.count == 3


def test_relative_and_immediate_schedules_pass_through_untimed() -> None:
    scheduler = TestScheduler()
    ticks = TickLateness(scheduler)
    ran: list[float] = []
    ticks.schedule(lambda *_: ran.append(scheduler.clock))
    ticks.schedule_relative(2.0, lambda *_: ran.append(scheduler.clock))
    scheduler.start()
    assert ran == [0.0, 2.0]
    assert ticks.lateness.snapshot().count == 0
    assert ticks.now == scheduler.now


def rows_at(*seconds_and_uuids: tuple[int, str]) -> list[MetricRow]:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    return [metric_row(timestamp=base + timedelta(seconds=s), uuid=uuid) for s, uuid in seconds_and_uuids]


def test_the_newest_row_counts_once_its_batch_is_acknowledged() -> None:
    times = AckedRowTimes()
    times.encoded(1, rows_at((10, "a"), (30, "a"), (20, "a")))
    times.encoded(2, rows_at((40, "a")))
    assert times.snapshot() == (None, {})  # nothing acknowledged yet
    times.acked(PublishAck(1, 0, False, 3))
    newest, gpus = times.snapshot()
    assert newest == datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)
    assert gpus == {}  # per_gpu_max 0: nothing per GPU
    times.encoded(3, rows_at((5, "a")))  # older rows (a loop's second pass) do not make the newest older
    times.acked(PublishAck(3, 2, False, 1))  # batch 2 is skipped over: forgotten, never counted
    assert times.snapshot()[0] == datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)
    times.acked(PublishAck(2, 1, False, 1))
    assert times.snapshot()[0] == datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)


def test_per_gpu_times_are_capped_with_one_line_when_gpus_are_left_out() -> None:
    times = AckedRowTimes(per_gpu_max=2)
    with capture_logs() as logs:
        times.encoded(1, rows_at((1, "GPU-a"), (2, "GPU-b"), (3, "GPU-a")))
        times.acked(PublishAck(1, 0, False, 3))
        times.encoded(2, rows_at((4, "GPU-c"), (5, "GPU-b")))
        times.acked(PublishAck(2, 1, False, 2))
        times.encoded(3, rows_at((6, "GPU-d")))
        times.acked(PublishAck(3, 2, False, 1))
    base = datetime(2026, 1, 1, tzinfo=UTC)
    assert times.snapshot()[1] == {"GPU-a": base + timedelta(seconds=3), "GPU-b": base + timedelta(seconds=5)}
    assert [(line["event"], line["left_out"]) for line in logs] == [("metrics.per_gpu_capped", "GPU-c")]


def test_a_row_times_encoder_encodes_as_the_plain_one_and_stamps_with_its_own_clock() -> None:
    rows = rows_at((1, "GPU-a"), (2, "GPU-b"))
    plain = BatchEncoder("p", first_sequence=7)(rows)
    timed = RowTimesEncoder("p", first_sequence=7)
    batch = timed(rows)
    assert (batch.sequence, batch.rows, batch.content_digest) == (plain.sequence, plain.rows, plain.content_digest)
    timed.row_times.acked(PublishAck(7, 0, False, 2))
    assert timed.row_times.snapshot()[0] == rows[1].timestamp
    before = datetime.now(UTC)
    processing = RowTimesEncoder("p", timestamps="processing", per_gpu_max=4)
    processing(rows)
    processing.row_times.acked(PublishAck(1, 0, False, 2))
    newest, gpus = processing.row_times.snapshot()
    assert newest is not None
    assert before <= newest <= datetime.now(UTC)
    assert gpus == {"GPU-a": newest, "GPU-b": newest}


def test_the_lag_is_now_minus_the_newest_row_and_never_negative() -> None:
    now = datetime(2026, 1, 1, 0, 1, tzinfo=UTC)
    assert lag_seconds(now, None) is None
    assert lag_seconds(now, now - timedelta(seconds=42.5)) == 42.5
    assert lag_seconds(now, now + timedelta(seconds=3)) == 0.0


def test_the_collector_shows_the_lag_and_per_gpu_ages_on_its_wall_clock() -> None:
    sink = InMemorySink()
    encoder = RowTimesEncoder("p", per_gpu_max=8)
    instruments = StreamerInstruments.around(sink, TestScheduler(), encoder)
    encoder(rows_at((10, "GPU-a"), (20, "GPU-b")))
    instruments.on_ack(PublishAck(1, 0, False, 2))
    now = datetime(2026, 1, 1, 0, 1, tzinfo=UTC)
    counts = RunCounts(CsvRows(TEST_DATA_CSV), PipelineCounters(), sink)
    samples = scraped(StreamerCollector(streamer_view(counts, instruments, sink, wall_clock=lambda: now)))
    assert value(samples, "rxstreamer_newest_row_lag_seconds") == 40.0
    assert labelled(samples, "rxstreamer_gpu_last_sample_age_seconds", "uuid") == {"GPU-a": 50.0, "GPU-b": 40.0}


# --- the probes' rules ---------------------------------------------------------------------------------


def state(**changes: Any) -> RunState:
    fields: dict[str, Any] = {
        "pipeline_alive": True,
        "ended": None,
        "queue_reachable": True,
        "waiting_s": None,
        "stall_after": 1.0,
    }
    return RunState(**{**fields, **changes})


@pytest.mark.parametrize(
    ("changes", "ok", "reason"),
    [
        ({}, True, "ready"),
        ({"waiting_s": 0.9}, True, "ready"),  # a publish on its way, within the window
        ({"waiting_s": 1.2}, False, "stalled: a batch has waited 1.2s for the queue's acknowledgement (more than 1s)"),
        ({"queue_reachable": False}, False, "the queue is unreachable (see mq.unreachable)"),
        ({"queue_reachable": False, "waiting_s": 9.0}, False, "the queue is unreachable (see mq.unreachable)"),
        ({"queue_reachable": None}, False, "the queue has not answered yet"),
        ({"queue_reachable": None, "waiting_s": 3.0}, False, "stalled: a batch has waited 3.0s"),
        ({"pipeline_alive": False}, False, "the pipeline thread is not running"),
        ({"ended": "completed"}, False, "the run has ended (completed)"),
        ({"ended": "stopping", "pipeline_alive": False}, False, "the run has ended (stopping)"),
    ],
)
def test_readiness(changes: dict[str, Any], ok: bool, reason: str) -> None:
    probe = readiness(state(**changes))
    assert probe.ok is ok
    assert probe.reason.startswith(reason)


@pytest.mark.parametrize(
    ("changes", "ok", "reason"),
    [
        ({}, True, "alive"),
        ({"queue_reachable": False, "waiting_s": 60.0}, True, "alive"),  # a queue outage is no reason to restart
        ({"pipeline_alive": False}, False, "the pipeline thread is not running"),
        ({"pipeline_alive": False, "ended": "completed"}, True, "alive; the run has ended (completed)"),
    ],
)
def test_liveness(changes: dict[str, Any], ok: bool, reason: str) -> None:
    assert liveness(state(**changes)) == Probe(ok, reason)


def test_the_stall_window_is_the_interval_and_at_least_a_second() -> None:
    assert stall_after(0.0) == 1.0
    assert stall_after(0.1) == 1.0
    assert stall_after(30.0) == 30.0


# --- scraping targets -----------------------------------------------------------------------------------

GOOD = (
    "# TYPE DCGM_FI_DEV_GPU_TEMP gauge\n"
    'DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-a",device="nvidia0",modelName="H100",Hostname="node-1"} 41\n'
)


def test_scrape_targets_are_reported_per_target_and_outcome() -> None:
    """Two scrapes on a virtual clock: one target answers, the other answers HTTP 500 each time."""
    clock = itertools.count(1_000_000, 10)
    now = [float(next(clock))]

    def fetch(url: str, _deadline: float) -> bytes:
        if url.endswith("/bad"):
            raise ScrapeFailedError("http_500", "answered HTTP 500")
        return GOOD.encode()

    sleeps = itertools.count(1)

    def sleep(seconds: float) -> None:
        now[0] += seconds
        if next(sleeps) == 2:
            rows.interrupt()  # waiting for the third scrape: stop there

    rows = ScrapeRows(
        ["http://node-1/good", "http://node-1/bad"], interval=10.0, timeout=5.0, fetch=fetch,
        clock=lambda: now[0], sleep=sleep,
    )  # fmt: skip
    with capture_logs():
        assert len(list(rows)) == 2  # one row from each scrape of the good target
    targets = scrape_targets(rows)
    assert targets is not None
    assert scrape_targets(CsvRows(TEST_DATA_CSV)) is None
    sink = InMemorySink()
    instruments = StreamerInstruments.around(sink, TestScheduler(), BatchEncoder("p"))
    counts = RunCounts(rows, PipelineCounters(), sink)
    samples = scraped(StreamerCollector(streamer_view(counts, instruments, sink, targets=targets)))
    assert labelled(samples, "rxstreamer_scrape_target_up", "target") == {
        "http://node-1/good": 1.0,
        "http://node-1/bad": 0.0,
    }
    scrapes = {
        (dict(labels)["target"], dict(labels)["outcome"]): found
        for (name, labels), found in samples.items()
        if name == "rxstreamer_scrapes_total"
    }
    assert scrapes == {
        ("http://node-1/good", "ok"): 2.0,
        ("http://node-1/bad", "ok"): 0.0,
        ("http://node-1/bad", "http_500"): 2.0,
    }


# --- the broker's collector ----------------------------------------------------------------------------


def test_the_broker_collector_counts_per_topic_and_reason_and_reads_what_topics_hold() -> None:
    topics = Broker(max_messages=2, max_bytes=1000)
    counters = BrokerCounters()
    for topic, payload, sequence in (("a", b"12345", 1), ("a", b"123", 2), ("a", b"123", 2), ("b", b"1", 1)):
        ack = topics.append(topic, payload, producer_id="p", sequence=sequence)
        counters.accepted(topic, len(payload), duplicate=ack.duplicate)
    counters.refused("topic_full")
    counters.refused("topic_full")
    samples = scraped(BrokerCollector(counters, topics, lambda: 3))
    assert labelled(samples, "rxstreamer_broker_messages_total", "topic") == {"a": 2, "b": 1}
    assert labelled(samples, "rxstreamer_broker_bytes_total", "topic") == {"a": 8, "b": 1}
    assert labelled(samples, "rxstreamer_broker_duplicates_total", "topic") == {"a": 1, "b": 0}
    assert labelled(samples, "rxstreamer_broker_retained_messages", "topic") == {"a": 2, "b": 1}
    assert labelled(samples, "rxstreamer_broker_retained_bytes", "topic") == {"a": 8, "b": 1}
    rejections = labelled(samples, "rxstreamer_broker_rejections_total", "reason")
    assert rejections == {reason: 2.0 if reason == "topic_full" else 0.0 for reason in REJECTION_REASONS}
    assert value(samples, "rxstreamer_broker_subscribers") == 3


# --- the router, without a socket, and the endpoint with one -------------------------------------------


def call(app: Any, path: str, method: str = "GET") -> tuple[str, dict[str, str], bytes]:
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        answer["status"], answer["headers"] = status, dict(headers)

    body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": method}, start_response))
    return answer["status"], answer["headers"], body


def test_the_router_sends_each_path_to_its_answer() -> None:
    def metrics(environ: Any, start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"the metrics\n"]

    def failing() -> Probe:
        raise RuntimeError("boom")

    app = router(metrics, lambda: Probe(True, "alive"), lambda: Probe(False, "the queue is unreachable"))
    assert call(app, "/metrics")[::2] == ("200 OK", b"the metrics\n")
    assert call(app, "/healthz")[::2] == ("200 OK", b"alive\n")
    status, headers, body = call(app, "/readyz")
    assert (status, body) == ("503 Service Unavailable", b"the queue is unreachable\n")
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert call(app, "/readyz", "HEAD")[::2] == ("503 Service Unavailable", b"")
    assert call(app, "/readyz", "POST")[0] == "405 Method Not Allowed"
    assert call(app, "/")[::2] == ("404 Not Found", b"not found; the paths are /metrics, /healthz, /readyz\n")
    assert call(app, "/metrics/x")[0] == "404 Not Found"  # prometheus_client alone would answer metrics here
    broken = router(metrics, failing, failing)
    assert call(broken, "/healthz")[::2] == ("503 Service Unavailable", b"the probe failed: RuntimeError: boom\n")


def test_the_endpoint_answers_before_and_after_attach_and_frees_its_port() -> None:
    with capture_logs() as logs:
        endpoint = start_endpoint("127.0.0.1:0")
    try:
        base = f"http://127.0.0.1:{endpoint.port}"
        assert logs[0]["event"] == "metrics.started"
        assert logs[0]["port"] == endpoint.port
        assert http_get(base + "/healthz") == (200, "starting\n")
        assert http_get(base + "/readyz") == (503, "starting\n")
        assert "process_cpu_seconds_total" in http_get(base + "/metrics")[1]
        endpoint.attach(BrokerCollector(BrokerCounters(), Broker(max_messages=1, max_bytes=1), lambda: 0),
                        lambda: Probe(True, "alive"), lambda: Probe(True, "ready"))  # fmt: skip
        assert http_get(base + "/readyz") == (200, "ready\n")
        assert "rxstreamer_broker_subscribers 0.0" in http_get(base + "/metrics")[1]
    finally:
        endpoint.close()
    again = start_endpoint(f"127.0.0.1:{endpoint.port}")  # released: the same port can be taken again
    again.close()


def test_an_address_the_endpoint_cannot_take_is_a_bad_setting() -> None:
    endpoint = start_endpoint("127.0.0.1:0")
    try:
        with pytest.raises(ConfigError) as refused:
            start_endpoint(f"127.0.0.1:{endpoint.port}")
    finally:
        endpoint.close()
    assert refused.value.setting == "observability.listen"
    assert str(refused.value) == f"observability.listen = '127.0.0.1:{endpoint.port}': cannot listen there: " + (
        "Address already in use"
    )


@pytest.mark.parametrize(
    ("given", "kept"), [("", ""), ("  ", ""), ("127.0.0.1:9400", "127.0.0.1:9400"), ("[::1]:0", "[::1]:0")]
)
def test_the_listen_setting_is_host_port_or_empty(given: str, kept: str) -> None:
    assert load_settings(overrides={"observability.listen": given}).observability.listen == kept


def test_a_listen_setting_that_is_no_address_is_refused_saying_empty_is_off() -> None:
    with pytest.raises(ConfigError, match=r"must be host:port with a port from 0 to 65535.*; or empty: off"):
        load_settings(overrides={"observability.listen": "metrics"})


def test_the_progress_rate_is_rows_published_per_second_since_the_last_line() -> None:
    now = [100.0]
    rate = _ProgressRate(clock=lambda: now[0])
    now[0] = 110.0
    assert rate(500) == 50.0
    now[0] = 115.0
    assert rate(600) == 20.0
    assert rate(600) == 0.0  # no time passed: no rate rather than a division by zero
    now[0] = 125.0
    assert rate(600) == 0.0


def test_a_publish_error_keeps_its_status_as_the_outcome() -> None:
    from rxstreamer.metrics import outcome_of

    assert outcome_of(PublishError("RESOURCE_EXHAUSTED", "full")) == "RESOURCE_EXHAUSTED"
    assert outcome_of(ValueError("x")) == "error"
