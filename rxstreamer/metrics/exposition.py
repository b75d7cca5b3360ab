"""Exposition: the collector that turns a snapshot of the run's counts (the very counts ``streamer.stopped``
prints) into Prometheus metric families, on the HTTP thread."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from rxstreamer.counts import Counts
from rxstreamer.metrics.recorders import AckedRowTimes, HistogramSnapshot, PublishTimer, TickLateness
from rxstreamer.metrics.rules import lag_seconds

if TYPE_CHECKING:
    from rxstreamer.sources.scrape import TargetStats


@dataclass(frozen=True)
class StreamerView:
    """Where the collector reads each value; every callable is safe to call from the HTTP thread."""

    counts: Callable[[], Counts]
    publishes: PublishTimer
    ticks: TickLateness
    batches_in_flight: Callable[[], int]
    queue_reachable: Callable[[], bool | None]
    checkpoint_sequence: Callable[[], int | None]
    row_times: AckedRowTimes | None = None
    targets: Callable[[], Mapping[str, TargetStats]] | None = None  # when scraping
    wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC)


def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def labelled(
    family: CounterMetricFamily | GaugeMetricFamily, label_values: Iterable[tuple[Sequence[str], float]]
) -> CounterMetricFamily | GaugeMetricFamily:
    for values, value in label_values:
        family.add_metric(list(values), value)
    return family


def histogram(name: str, documentation: str, snapshot: HistogramSnapshot) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, documentation, buckets=snapshot.cumulative(), sum_value=snapshot.total)


class StreamerCollector:
    """The streamer's metrics, read from a snapshot on each scrape (prometheus_client calls ``collect``)."""

    def __init__(self, view: StreamerView) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        view = self._view
        counts = view.counts()
        yield counter(
            "rxstreamer_rows_read_total", "Data rows read from the input (good and rejected).", counts.rows_read
        )
        yield counter(
            "rxstreamer_rows_published_total",
            "Rows the queue acknowledged (in batches it already held too).",
            counts.rows_published,
        )
        yield labelled(
            CounterMetricFamily(
                "rxstreamer_rows_rejected_total", "Rows that could not be parsed, by reason.", labels=["reason"]
            ),
            (([reason], count) for reason, count in sorted(counts.rejected_by_reason.items())),
        )
        yield counter("rxstreamer_rows_filtered_total", "Rows dropped by telemetry.transforms.", counts.rows_filtered)
        yield counter(
            "rxstreamer_rows_copied_total", "Rows made by telemetry.amplify beyond those read.", counts.rows_copied
        )
        yield counter(
            "rxstreamer_rows_in_other_shards_total",
            "Rows telemetry.shard left to the other shards.",
            counts.rows_in_other_shards,
        )
        yield counter(
            "rxstreamer_rows_out_of_order_total",
            "Replaying at the recorded pace: rows stamped earlier than rows already sent, sent at once.",
            counts.rows_out_of_order,
        )
        yield gauge(
            "rxstreamer_behind_schedule_seconds",
            "Replaying at the recorded pace: how far behind the recording's schedule the latest batch went.",
            counts.behind_schedule_s,
        )
        yield gauge("rxstreamer_rows_in_flight", "Rows read into batches not acknowledged yet.", counts.rows_in_flight)
        yield counter("rxstreamer_batches_published_total", "Batches the queue acknowledged.", counts.batches_published)
        yield counter(
            "rxstreamer_duplicates_total",
            "Acknowledged batches the queue already held (re-sent after a lost answer or a restart).",
            counts.duplicates,
        )
        yield labelled(
            CounterMetricFamily(
                "rxstreamer_publish_attempts_total",
                "Publish attempts by outcome: ok, duplicate, or the status the attempt failed with.",
                labels=["outcome"],
            ),
            (([outcome], count) for outcome, count in sorted(view.publishes.outcomes().items())),
        )
        yield histogram(
            "rxstreamer_publish_duration_seconds",
            "Time from a publish attempt to the queue's answer, failures included.",
            view.publishes.durations.snapshot(),
        )
        yield gauge("rxstreamer_batches_in_flight", "Publishes sent and not answered yet.", view.batches_in_flight())
        yield gauge(
            "rxstreamer_queue_up",
            "1 while the queue answers (mq.connected), 0 while it is unreachable or has not answered yet.",
            1 if view.queue_reachable() else 0,
        )
        sequence = view.checkpoint_sequence()
        if sequence is not None:
            yield gauge(
                "rxstreamer_checkpoint_sequence", "The sequence of the last batch written to the checkpoint.", sequence
            )
        yield histogram(
            "rxstreamer_pacing_lateness_seconds",
            "How late each pacing tick fired after its due time.",
            view.ticks.lateness.snapshot(),
        )
        yield from self._rows(view)
        yield from self._targets(view)

    @staticmethod
    def _rows(view: StreamerView) -> Iterator[Metric]:
        if view.row_times is None:
            return
        newest, gpus = view.row_times.snapshot()
        now = view.wall_clock()
        lag = lag_seconds(now, newest)
        if lag is not None:
            yield gauge(
                "rxstreamer_newest_row_lag_seconds",
                "Now minus the timestamp of the newest acknowledged row.",
                lag,
            )
        if view.row_times.per_gpu_max:
            yield labelled(
                GaugeMetricFamily(
                    "rxstreamer_gpu_last_sample_age_seconds",
                    "Now minus the timestamp of the GPU's newest acknowledged row (observability.per_gpu_max GPUs).",
                    labels=["uuid"],
                ),
                (([uuid], lag_seconds(now, moment) or 0.0) for uuid, moment in sorted(gpus.items())),
            )

    @staticmethod
    def _targets(view: StreamerView) -> Iterator[Metric]:
        if view.targets is None:
            return
        targets = view.targets()
        yield labelled(
            GaugeMetricFamily(
                "rxstreamer_scrape_target_up", "1 when the target's last scrape gave samples.", labels=["target"]
            ),
            (([target], 1 if stats.state == "up" else 0) for target, stats in targets.items()),
        )
        scrapes = CounterMetricFamily(
            "rxstreamer_scrapes_total",
            "Scrapes of each target by outcome: ok, or why it failed (timeout, unreachable, http_<status>, ...).",
            labels=["target", "outcome"],
        )
        for target, stats in targets.items():
            scrapes.add_metric([target, "ok"], stats.scrapes_ok)
            for state, count in sorted(stats.failed_by_state.items()):
                scrapes.add_metric([target, state], count)
        yield scrapes


def scrape_targets(source: object) -> Callable[[], dict[str, TargetStats]] | None:
    """When the source scrapes endpoints, a reader of copies of its targets' stats (made on the HTTP thread)."""
    from dataclasses import replace

    from rxstreamer.sources.scrape import ScrapeRows

    if not isinstance(source, ScrapeRows):
        return None

    def read() -> dict[str, TargetStats]:
        return {
            target: replace(stats, failed_by_state=dict(stats.failed_by_state))
            for target, stats in list(source.target_stats.items())
        }

    return read
