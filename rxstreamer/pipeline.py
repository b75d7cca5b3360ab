"""The streamer's pipeline, composed in one place.

    rows ─▶ your transforms ─▶ buffer_with_count(n) ─▶ pace(interval) ─▶ encode ─▶ publish with retry

Everything left of ``pace`` is pulled, one batch per tick; everything right of it runs once per batch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

from reactivex import Observable, abc, compose
from reactivex import operators as ops

from rxstreamer.encoding import BatchEncoder
from rxstreamer.model import EncodedBatch, MetricRow, PublishAck
from rxstreamer.operators import Operator, pace, publish_with_retry, pull_through
from rxstreamer.publisher import Publisher
from rxstreamer.retry import RetryPolicy

RetryListener = Callable[[EncodedBatch, int, float, BaseException], None]


def build_pipeline(
    rows: Iterable[MetricRow],
    publisher: Publisher,
    encoder: BatchEncoder,
    *,
    batch_size: int,
    interval: float,
    retry: RetryPolicy,
    transforms: Sequence[Operator] = (),
    scheduler: abc.SchedulerBase | None = None,
    on_retry: RetryListener | None = None,
) -> Observable[PublishAck]:
    """The whole streamer as one cold observable of acknowledgements; subscribing starts it.

    Each subscription reads ``rows`` afresh; disposing it stops the ticks and releases the file.
    """
    batches = pull_through(rows, *transforms, ops.buffer_with_count(batch_size))
    publish = publish_with_retry(publisher.publish, retry, scheduler=scheduler, on_retry=on_retry)
    return pace(batches, interval, compose(ops.map(encoder), publish), scheduler=scheduler)


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
