"""Test doubles for code built on rxstreamer: a sink that keeps what it gets, one that refuses, a scripted source.

They ship with the package, like OpenTelemetry's in-memory exporter and bytewax's testing sources, so
that a test of your transforms or your own pipeline swaps the edges instead of patching them, and runs
without a broker or a file (and, with a ``TestScheduler``, in virtual time)::

    from rxstreamer.testing import FailingSink, InMemorySink, ScriptedSource, metric_row

- ``InMemorySink``: stores every acknowledged batch (``batches``), with optional latency and scripted
  refusals; the same class as ``rxstreamer.InMemorySink``.
- ``FailingSink``: refuses every publish with one status, or attempts one by one from a script.
- ``ScriptedSource``: rows (and rejections) from a list, positioned and counted like a file source, so
  checkpoints and the run's accounting work with it.
- ``metric_row``: a valid ``MetricRow`` with the fields you care about, for building scripts.

None of this imports gRPC.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from reactivex import abc

from rxstreamer.model import MetricRow, Position, Rejection
from rxstreamer.retry import PublishError
from rxstreamer.sinks.memory import InMemorySink
from rxstreamer.sources import SourceStats

__all__ = ["FailingSink", "InMemorySink", "ScriptedSource", "metric_row"]


class FailingSink(InMemorySink):
    """A sink that refuses publishes with the statuses you give, to test what your code does about it.

    ``FailingSink("UNAVAILABLE")`` refuses every attempt with UNAVAILABLE: a pipeline retries it until its
    ``RetryPolicy`` gives up. ``FailingSink(["UNAVAILABLE", None, "INVALID_ARGUMENT"])`` scripts attempts
    one by one: the first is refused (retryable), the second stored, the third refused for good; every
    attempt after the script is stored. Statuses are gRPC status names, which decide retrying as they do
    for the real sink; ``retry_after`` is the queue's hint in seconds. What is stored, the counts,
    ``latency`` and ``close()`` behave as in ``InMemorySink``.
    """

    def __init__(
        self,
        statuses: str | Sequence[str | None] = "UNAVAILABLE",
        *,
        retry_after: float | None = None,
        latency: float = 0.0,
        scheduler: abc.SchedulerBase | None = None,
    ) -> None:
        super().__init__(latency=latency, scheduler=scheduler)
        self._statuses = statuses
        self._retry_after = retry_after

    def _failure(self, attempt: int) -> PublishError | None:
        closed = super()._failure(attempt)
        if closed is not None:
            return closed
        if isinstance(self._statuses, str):
            status: str | None = self._statuses
        else:
            status = self._statuses[attempt - 1] if attempt <= len(self._statuses) else None
        if status is None:
            return None
        return PublishError(status, f"refused by FailingSink (attempt {attempt})", self._retry_after)


class ScriptedSource:
    """A source that yields the rows of a list, the way ``CsvRows`` yields a file's, without the file.

    ``items`` are ``MetricRow`` (yielded) and ``Rejection`` (counted as read and rejected and handed to
    ``on_reject``, never yielded), so a script can hold the bad records a file would. Like a file source
    it is cold (each iteration replays the script), its ``stats`` accumulate across iterations, and its
    ``position`` is where the input continues: ``offset`` counts the items consumed, ``line`` is the last
    one's line. ``ScriptedSource(items, start=position)`` carries on after a checkpointed position.
    """

    def __init__(
        self,
        items: Iterable[MetricRow | Rejection],
        *,
        start: Position | None = None,
        on_reject: Callable[[Rejection], None] | None = None,
    ) -> None:
        self._items = list(items)
        if start is not None and not 0 <= start.offset <= len(self._items):
            raise ValueError(f"start offset {start.offset} is outside the script's {len(self._items)} items")
        self._start = start or Position(offset=0, line=0)
        self._on_reject = on_reject
        self._position = self._start
        self.stats = SourceStats()

    @property
    def position(self) -> Position:
        return self._position

    def check(self) -> None:
        """Nothing to check: a script has no file to be missing. Here so it fits where a source goes."""

    def __iter__(self) -> Generator[MetricRow, None, None]:
        self.stats.passes += 1
        self._position = self._start
        for offset in range(self._start.offset, len(self._items)):
            item = self._items[offset]
            # Moved before the row is yielded: read right after it, position names the next item.
            self._position = Position(offset + 1, item.line, self._start.pass_number)
            self.stats.rows_read += 1
            if isinstance(item, Rejection):
                self.stats.rows_rejected += 1
                self.stats.rejected_by_reason[item.reason] = self.stats.rejected_by_reason.get(item.reason, 0) + 1
                if self._on_reject is not None:
                    self._on_reject(item)
                continue
            yield item


_EPOCH = datetime(2025, 7, 18, 13, 42, 33, tzinfo=UTC)


def metric_row(line: int = 2, **fields: Any) -> MetricRow:
    """A valid row of GPU 0's utilisation at a fixed time, with ``fields`` replaced (``value=42.0``, say).

    ``line`` defaults to 2, the first data line of a file under its header.
    """
    row = MetricRow(
        timestamp=_EPOCH,
        metric_name="DCGM_FI_DEV_GPU_UTIL",
        gpu_id="0",
        device="nvidia0",
        uuid="GPU-00000000-0000-0000-0000-000000000000",
        model_name="NVIDIA H100 80GB HBM3",
        hostname="host-0",
        container="",
        pod="",
        namespace="",
        value=0.0,
        labels={},
        line=line,
    )
    return row._replace(**fields) if fields else row
