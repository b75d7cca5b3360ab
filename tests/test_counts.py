"""One view of a run's counts: every row read is published, rejected, filtered or in flight, at any moment."""

from __future__ import annotations

from pathlib import Path

from reactivex import operators as ops
from reactivex.testing import TestScheduler

from rxstreamer.counts import Counts, PipelineCounters, RunCounts
from rxstreamer.encoding import BatchEncoder
from rxstreamer.model import MetricRow
from rxstreamer.pipeline import build_pipeline
from rxstreamer.retry import RetryPolicy
from rxstreamer.sinks import InMemorySink
from rxstreamer.sources import CsvRows
from tests.conftest import with_two_bad_rows


def test_counts_mid_run_and_at_the_end_account_for_every_row(tmp_path: Path) -> None:
    """Two bad rows, power rows filtered out, a batch read ahead: the four outcomes add up to rows read."""
    path = with_two_bad_rows(tmp_path)
    rows = CsvRows(path)
    pipeline_counters = PipelineCounters()
    scheduler = TestScheduler()
    sink = InMemorySink(latency=0.5, scheduler=scheduler)
    counts = RunCounts(rows, pipeline_counters, sink)

    def not_power(row: MetricRow) -> bool:
        return row.metric_name != "DCGM_FI_DEV_POWER_USAGE"

    no_power = ops.filter(not_power)
    pipeline = build_pipeline(
        rows, sink, BatchEncoder("p"), batch_size=100, interval=1.0, retry=RetryPolicy(), read_ahead=1,
        transforms=[no_power], scheduler=scheduler, counters=pipeline_counters,
    )  # fmt: skip
    seen: list[Counts] = []
    scheduler.schedule_absolute(202.75, lambda *_: seen.append(counts.now()))  # 3 acks, batch 4 read ahead
    scheduler.start(lambda: pipeline, disposed=100_000)
    middle, end = seen[0], counts.now()
    assert (middle.rows_published, middle.batches_published, middle.rows_in_flight) == (300, 3, 100)
    assert middle.rows_read == middle.rows_published + middle.rows_rejected + middle.rows_filtered + 100
    assert (end.rows_read, end.rows_rejected, end.rows_filtered, end.rows_in_flight) == (962, 2, 96, 0)
    assert (end.rows_published, end.batches_published, end.duplicates) == (864, 9, 0)
    assert end.rejected_by_reason == {"field_count": 2}
