"""One view of a run's counts, for everything that reports them: the summary, the progress line, metrics.

Each count has one writer, the part that sees the event: the source counts rows read and rejected, the
pipeline counts rows that reached a batch, the sink counts acknowledgements (on whichever thread the answer
arrives). ``RunCounts`` reads them together and derives, in this one place, what no single part can see:
rows dropped by the transforms and rows still in flight. The accounting it guarantees,
``rows_read = rows_published + rows_rejected + rows_filtered + rows_in_flight``, then holds the same in
every report. (Checkpoints are different: they record the counts carried with the acknowledged batch, not
these live ones, which run ahead of it when batches are read ahead.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rxstreamer.sinks.base import Publisher
from rxstreamer.sources.base import Counted


@dataclass
class PipelineCounters:
    """What the pipeline pulled, written by the pipeline thread as it cuts batches."""

    batches_pulled: int = 0
    rows_batched: int = 0  # rows that reached a batch: read, parsed, and kept by the transforms


@dataclass(frozen=True)
class Counts:
    """The counts of a run at one moment; every row read is in exactly one of the four row outcomes."""

    rows_read: int
    rows_rejected: int
    rows_filtered: int  # dropped by the transforms
    rows_in_flight: int  # in a batch that was not acknowledged (yet)
    batches_published: int
    rows_published: int
    duplicates: int  # acknowledged batches the queue already held
    rejected_by_reason: dict[str, int] = field(default_factory=dict)


class RunCounts:
    """Reads the source's, the pipeline's and the sink's counters as one ``Counts``."""

    def __init__(self, source: Counted, pipeline: PipelineCounters, sink: Publisher) -> None:
        self._source = source
        self._pipeline = pipeline
        self._sink = sink

    def now(self) -> Counts:
        source, published = self._source.stats, self._sink.stats
        batched = self._pipeline.rows_batched
        return Counts(
            rows_read=source.rows_read,
            rows_rejected=source.rows_rejected,
            rows_filtered=source.rows_read - source.rows_rejected - batched,
            rows_in_flight=batched - published.rows,
            batches_published=published.batches,
            rows_published=published.rows,
            duplicates=published.duplicates,
            rejected_by_reason=dict(source.rejected_by_reason),
        )
