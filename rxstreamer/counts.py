"""One view of a run's counts, for everything that reports them: the summary, the progress line, metrics.

Each count has one writer, the part that sees the event: the source counts rows read and rejected, the
pipeline counts rows that reached a batch, the sink counts acknowledgements (on whichever thread the answer
arrives). ``RunCounts`` reads them together and derives, in this one place, what no single part can see:
rows dropped by the transforms and rows still in flight. The accounting it guarantees,
``rows_read = rows_published + rows_rejected + rows_filtered + rows_in_flight``, then holds the same in
every report; with ``telemetry.amplify`` and ``telemetry.shard`` (``rxstreamer.scaling``) the rows copied join
the left side and the rows left to other shards the right:
``rows_read + rows_copied = rows_published + rows_rejected + rows_filtered + rows_in_other_shards +
rows_in_flight``. (Checkpoints are different: they record the counts carried with the acknowledged batch, not
these live ones, which run ahead of it when batches are read ahead.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rxstreamer.scaling import ScalingCounters
from rxstreamer.sinks.base import Publisher
from rxstreamer.sources.base import Counted


@dataclass
class PipelineCounters:
    """What the pipeline pulled, written by the pipeline thread as it cuts batches."""

    batches_pulled: int = 0
    rows_batched: int = 0  # rows that reached a batch: read, parsed, and kept by the transforms
    rows_to_batch: int = 0  # rows the batching step received: batched, or held until their batch is cut
    # Replaying at the recorded cadence (telemetry.pace = "original"):
    rows_out_of_order: int = 0  # rows stamped earlier than rows already sent: sent at once
    behind_schedule_s: float = 0.0  # how far behind the recording's schedule the latest batch went


@dataclass(frozen=True)
class Counts:
    """The counts of a run at one moment; every row read (or copied) is in exactly one of the row outcomes."""

    rows_read: int
    rows_rejected: int
    rows_filtered: int  # dropped by the transforms
    rows_in_flight: int  # read and not acknowledged (yet): in a batch, or held by the batching step for one
    batches_published: int
    rows_published: int
    duplicates: int  # acknowledged batches the queue already held
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    rows_copied: int = 0  # made by telemetry.amplify beyond the rows read
    rows_in_other_shards: int = 0  # left by telemetry.shard to the other instances
    rows_out_of_order: int = 0  # see PipelineCounters
    behind_schedule_s: float = 0.0


class RunCounts:
    """Reads the source's, the pipeline's and the sink's counters as one ``Counts``."""

    def __init__(
        self, source: Counted, pipeline: PipelineCounters, sink: Publisher, scaling: ScalingCounters | None = None
    ) -> None:
        self._source = source
        self._pipeline = pipeline
        self._sink = sink
        self._scaling = scaling if scaling is not None else ScalingCounters()

    def now(self) -> Counts:
        source, published = self._source.stats, self._sink.stats
        # Rows held by the batching step (a batch still being gathered) are in flight, not filtered.
        batched = max(self._pipeline.rows_batched, self._pipeline.rows_to_batch)
        copied, elsewhere = self._scaling.rows_copied, self._scaling.rows_in_other_shards
        return Counts(
            rows_read=source.rows_read,
            rows_rejected=source.rows_rejected,
            rows_filtered=source.rows_read + copied - source.rows_rejected - elsewhere - batched,
            rows_in_flight=batched - published.rows,
            batches_published=published.batches,
            rows_published=published.rows,
            duplicates=published.duplicates,
            rejected_by_reason=dict(source.rejected_by_reason),
            rows_copied=copied,
            rows_in_other_shards=elsewhere,
            rows_out_of_order=self._pipeline.rows_out_of_order,
            behind_schedule_s=round(self._pipeline.behind_schedule_s, 3),
        )
