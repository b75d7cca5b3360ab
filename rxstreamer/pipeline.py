"""The streamer's pipeline, composed in one place.

    rows ─▶ your transforms ─▶ batch(n) ─▶ pace(interval) ─▶ encode ─▶ publish with retry

Everything left of ``pace`` is pulled, one batch per tick; everything right of it runs once per batch. To
replay a recording at its own cadence, ``batch`` also cuts at each new timestamp and ``pace_by_offsets``
releases each batch at its timestamp's offset from the first, divided by the speed (``rxstreamer.cadence``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, cast

import reactivex
from reactivex import Observable, abc
from reactivex import operators as ops

from rxstreamer.batching import batcher
from rxstreamer.cadence import Timeline
from rxstreamer.counts import PipelineCounters
from rxstreamer.encoding import BatchEncoder
from rxstreamer.model import EncodedBatch, MetricRow, Position, PublishAck, ReadCounts
from rxstreamer.operators import Operator, pace, pace_by_offsets, pull_through, retrying
from rxstreamer.retry import RetryPolicy
from rxstreamer.sinks import Publisher
from rxstreamer.sources.base import Counted, Positioned

RetryListener = Callable[[EncodedBatch, int, float, BaseException], None]


class Batch(NamedTuple):
    """A batch as pulled from the source, with what the source could say about itself at that moment."""

    rows: list[MetricRow]
    position: Position | None  # where the input continues after this batch
    read: ReadCounts | None  # the source's counts so far, for a checkpoint that names this batch


class EncodingError(Exception):
    """A batch that cannot be encoded: a transform emitted something other than rows, or a sequence overflowed."""


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
    speed: float | None = None,
    by_scrape: bool = False,
) -> Observable[PublishAck]:
    """The whole streamer as one cold observable of acknowledgements; subscribing starts it.

    Each subscription reads ``rows`` afresh; disposing it stops the ticks and releases the file. Up to
    ``read_ahead`` batches are read while one is being published (0: read only after the acknowledgement).
    ``on_ack`` runs inside the stream for each acknowledgement (a checkpoint, say): if it raises, the
    stream ends with that error rather than going on without it. So does any other exception raised
    inside the pipeline (a transform, the encoder, a listener): it reaches the subscriber's ``on_error``.

    With a ``speed``, batches follow the rows' own timestamps (each batch holds one) at that many times the
    recorded pace, instead of one per ``interval``; ``interval`` is then the time between passes of a looped
    file that holds a single timestamp. ``by_scrape`` makes each batch one timestamp of one host.
    """
    counters = counters or PipelineCounters()
    batching = batcher(batch_size, by_scrape=by_scrape, by_timestamp=speed is not None, counted=counters)
    batches = with_positions(pull_through(rows, *transforms, batching), rows, counters)
    publish = retrying(publisher.publish, retry, scheduler=scheduler, on_retry=on_retry)
    after_ack = ops.map(_calling(on_ack)) if on_ack is not None else None

    def encode_and_publish(batch: Batch) -> Observable[PublishAck]:
        acks = publish(encoded(encoder, batch))
        return acks.pipe(after_ack) if after_ack is not None else acks

    if speed is None:
        return pace(batches, interval, encode_and_publish, read_ahead=read_ahead, scheduler=scheduler)
    return reactivex.defer(
        lambda _: pace_by_offsets(
            batches,
            _offsets(Timeline(speed, single_group_period=interval or 1.0), counters),
            encode_and_publish,
            read_ahead=read_ahead,
            scheduler=scheduler,
            on_behind=_behind_into(counters),
        )
    )


def _behind_into(counters: PipelineCounters) -> Callable[[float], None]:
    def record(seconds: float) -> None:
        counters.behind_schedule_s = seconds

    return record


def _offsets(timeline: Timeline, counters: PipelineCounters) -> Callable[[Batch], float | None]:
    """A batch's offset on the timeline, by its first row (a batch holds one timestamp when paced by them)."""

    def offset_of(batch: Batch) -> float | None:
        first = batch.rows[0]
        if not isinstance(first, MetricRow):
            raise EncodingError(f"cannot pace by timestamps: a transform emitted {type(first).__name__}, not MetricRow")
        offset = timeline.offset(first.timestamp, first.line, len(batch.rows))
        counters.rows_out_of_order = timeline.rows_out_of_order
        return offset

    return offset_of


def encoded(encoder: BatchEncoder, batch: Batch) -> EncodedBatch:
    """The batch encoded, or an ``EncodingError`` that says which batch and why, for the stream's on_error."""
    try:
        return encoder(batch.rows, batch.position, batch.read)
    except Exception as error:
        first = batch.rows[0] if batch.rows else None
        hint = "" if isinstance(first, MetricRow) else f" (a transform emitted {type(first).__name__}, not MetricRow)"
        raise EncodingError(
            f"cannot encode a batch of {len(batch.rows)} rows: {type(error).__name__}: {error}{hint}"
        ) from error


def _calling(listener: Callable[[PublishAck], None]) -> Callable[[PublishAck], PublishAck]:
    """A mapper that tells ``listener`` and passes the ack on; as ``map``, its exceptions become on_error.

    Not ``do_action``: when its action raises, reactivex 6.1 calls ``on_error`` and then ``on_next`` anyway.
    """

    def tell(ack: PublishAck) -> PublishAck:
        listener(ack)
        return ack

    return tell


def with_positions(
    batches: Iterable[list[MetricRow]], rows: Iterable[MetricRow], counters: PipelineCounters | None = None
) -> Iterable[Batch]:
    """Pair each batch with the source's position and counts right after it was pulled."""
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
        positioned = self._rows if isinstance(self._rows, Positioned) else None
        counted = self._rows if isinstance(self._rows, Counted) else None
        try:
            for batch in batches:
                self._counters.batches_pulled += 1
                self._counters.rows_batched += len(batch)
                position = positioned.position if positioned is not None else None
                read = None
                if counted is not None:
                    stats = counted.stats
                    read = ReadCounts(stats.rows_read, stats.rows_rejected)
                yield Batch(batch, position, read)
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
