"""What every source is, whatever format it reads: the ``Source`` protocol and the types all formats share.

A source is a cold iterable of ``MetricRow``: each ``iter()`` opens the file afresh, reads lazily, and
closing that iterator (``close()`` on the generator, as the pipeline does when it stops) closes the file
at once. There is no ``close()`` on the source itself because nothing stays open between iterations.
Beside the rows it offers what the service and the pipeline need and nothing more: ``position`` for
checkpoints (``Positioned`` in ``rxstreamer.pipeline``), ``stats`` for the run's accounting
(``Counted``) and ``check()`` to fail fast before anything is sent.

Problems are split by scope, the same for every format: a problem with the whole file is a
``SourceError`` with a one-line message; a problem with one record is a ``Rejection`` handed to
``on_reject`` while the good rows keep coming.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from rxstreamer.model import MetricRow, Position, Rejection
from rxstreamer.parsing import SentinelMode

__all__ = [
    "DEFAULT_MAX_FIELD_SIZE",
    "Live",
    "RejectHandler",
    "Source",
    "SourceError",
    "SourceOpener",
    "SourceShrankError",
    "SourceStats",
]

RejectHandler = Callable[[Rejection], None]

# The bound on one record in bytes, for every format: what keeps memory flat whatever a file holds.
DEFAULT_MAX_FIELD_SIZE = 64 * 1024


class SourceError(Exception):
    """The file as a whole cannot be read in its format; the message names the path and the reason."""


class SourceShrankError(SourceError):
    """The file got shorter while it was being read (truncated in place): rows it held were lost unread."""


@dataclass
class SourceStats:
    """Running counts for one source, accumulated over all its passes and iterations.

    Every data record counts in ``rows_read`` whatever became of it, so ``rows_read`` is always the rows
    yielded plus ``rows_rejected``; blank lines are not records and count nowhere.
    """

    rows_read: int = 0  # data records read: good, rejected, repeated headers and over-long lines alike
    rows_rejected: int = 0
    passes: int = 0  # passes over the file started
    rejected_by_reason: dict[str, int] = field(default_factory=dict)


@runtime_checkable
class Positioned(Protocol):
    """A row iterable that can say where it is, so that acknowledged batches can be checkpointed."""

    @property
    def position(self) -> Position: ...


@runtime_checkable
class Counted(Protocol):
    """A row iterable that counts what it read and rejected, so that batches and reports can carry the totals."""

    @property
    def stats(self) -> SourceStats: ...


@runtime_checkable
class Source(Protocol):
    """Rows of one telemetry file, read lazily and afresh on every iteration.

    - ``iter(source)`` opens the file and yields its good rows; closing the generator closes the file.
    - ``position``: where the input continues, just after the last record consumed; a source of the same
      format started there (``start=position``) carries on with the next record.
    - ``stats``: records read and rejected, accumulated across iterations and passes.
    - ``check()``: open the file and read what the format needs before the first row (a header),
      raising ``SourceError`` so that a bad file fails at start-up rather than mid-stream.
    """

    def __iter__(self) -> Generator[MetricRow, None, None]: ...

    @property
    def position(self) -> Position: ...

    @property
    def stats(self) -> SourceStats: ...

    def check(self) -> None: ...


@runtime_checkable
class Live(Protocol):
    """A source that waits for its data (a scrape on a schedule) and so never ends by itself.

    ``interrupt()`` is called from another thread when the stream is asked to stop: the source stops
    waiting and ends its iteration, so that stopping does not wait for the next scrape.
    """

    def interrupt(self) -> None: ...


class SourceOpener(Protocol):
    """How a format makes its source: the options every format takes, so the registry can pass them on.

    ``max_field_size`` bounds one record in bytes; ``sentinels`` says what to do with DCGM's sentinel
    values, which every DCGM format can carry.
    """

    def __call__(
        self,
        path: Path | str,
        *,
        loop: bool = ...,
        on_reject: RejectHandler | None = ...,
        start: Position | None = ...,
        max_field_size: int = ...,
        sentinels: SentinelMode = ...,
    ) -> Source: ...
