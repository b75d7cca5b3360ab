"""The streamer's pipeline, composed in one place.

    rows ─▶ your transforms ─▶ buffer_with_count(n) ─▶ pace(interval) ─▶ encode ─▶ publish with retry

Everything left of ``pace`` is pulled, one batch per tick; everything right of it runs once per batch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast, runtime_checkable

from reactivex import Observable, abc
from reactivex import operators as ops

from rxstreamer.encoding import BatchEncoder
from rxstreamer.model import EncodedBatch, MetricRow, Position, PublishAck
from rxstreamer.operators import Operator, pace, pull_through, retrying
from rxstreamer.publisher import Publisher
from rxstreamer.retry import RetryPolicy

RetryListener = Callable[[EncodedBatch, int, float, BaseException], None]
Batch = tuple[list[MetricRow], Position | None]


@dataclass
class PipelineCounters:
    """What the pipeline pulled, for the accounting that ties rows read to rows published."""

    batches_pulled: int = 0
    rows_batched: int = 0  # rows that reached a batch: read, parsed, and kept by the transforms


@runtime_checkable
class Positioned(Protocol):
    """A source that can say where it is, so that acknowledged batches can be checkpointed."""

    @property
    def position(self) -> Position: ...


def build_pipeline(
    rows: Iterable[MetricRow],
    publisher: Publisher,
    encoder: BatchEncoder,
    *,
    batch_size: int,
    interval: float,
    retry: RetryPolicy,
    read_ahead: int = 0,
    transforms: Sequence[Operator] = (),
    scheduler: abc.SchedulerBase | None = None,
    on_retry: RetryListener | None = None,
    on_ack: Callable[[PublishAck], None] | None = None,
    counters: PipelineCounters | None = None,
) -> Observable[PublishAck]:
    """The whole streamer as one cold observable of acknowledgements; subscribing starts it.

    Each subscription reads ``rows`` afresh; disposing it stops the ticks and releases the file. Up to
    ``read_ahead`` batches are read while one is being published (0: read only after the acknowledgement).
    ``on_ack`` runs inside the stream for each acknowledgement (a checkpoint, say): if it raises, the
    stream ends with that error rather than going on without it.
    """
    batches = with_positions(pull_through(rows, *transforms, ops.buffer_with_count(batch_size)), rows, counters)
    publish = retrying(publisher.publish, retry, scheduler=scheduler, on_retry=on_retry)

    def encode_and_publish(batch: Batch) -> Observable[PublishAck]:
        batch_rows, position = batch
        acks = publish(encoder(batch_rows, position))
        return acks.pipe(ops.do_action(on_ack)) if on_ack is not None else acks

    return pace(batches, interval, encode_and_publish, read_ahead=read_ahead, scheduler=scheduler)


def with_positions(
    batches: Iterable[list[MetricRow]], rows: Iterable[MetricRow], counters: PipelineCounters | None = None
) -> Iterable[Batch]:
    """Pair each batch with the source's position right after it was pulled: where the input continues."""
    return _WithPositions(batches, rows, counters or PipelineCounters())


class _WithPositions(Iterable[Batch]):
    """Re-iterable, like the rows: each iteration pulls the batches afresh."""

    def __init__(
        self, batches: Iterable[list[MetricRow]], rows: Iterable[MetricRow], counters: PipelineCounters
    ) -> None:
        self._batches = batches
        self._rows = rows
        self._counters = counters

    def __iter__(self) -> Iterator[Batch]:
        return self._pair()

    def _pair(self) -> Generator[Batch, None, None]:
        batches = iter(self._batches)
        rows = self._rows if isinstance(self._rows, Positioned) else None
        try:
            for batch in batches:
                self._counters.batches_pulled += 1
                self._counters.rows_batched += len(batch)
                yield batch, rows.position if rows is not None else None
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()


class TransformError(Exception):
    """A ``telemetry.transforms`` entry that cannot be loaded; the message names the entry."""


def load_transforms(specs: Sequence[str]) -> list[Operator]:
    """Import each ``"package.module:function"`` and call it to get the RxPY operator it provides."""
    return [_load_transform(spec) for spec in specs]


def _load_transform(spec: str) -> Operator:
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise TransformError(f"cannot import {module_name!r} for transform {spec!r}: {error}") from error
    factory: Any = getattr(module, attribute, None)
    if not callable(factory):
        raise TransformError(f"transform {spec!r}: {module_name} has no callable {attribute!r}")
    try:
        operator = factory()
    except Exception as error:
        raise TransformError(f"transform {spec!r} failed when called: {error}") from error
    if not callable(operator):
        raise TransformError(
            f"transform {spec!r} returned {type(operator).__name__}, not an RxPY operator "
            "(a function from Observable to Observable)"
        )
    return cast(Operator, operator)
