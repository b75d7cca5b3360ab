"""Cutting rows into batches: by count, at a change of timestamp, or one scrape of one host at a time.

Each is an RxPY operator with ``buffer_with_count``'s contract (lists in arrival order, the last partial list
on completion, no empty list, errors passed on), written as one closure over a list: ``buffer_with_count``
builds a window subject and a ``to_list`` per batch, which at 10 rows a batch costs more than the rows do
(bench/batching.py). All are synchronous, so they run inside ``pull_through`` and memory holds one batch;
``batch_per_scrape`` holds at most one partial batch per host of the current timestamp.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Protocol, TypeVar

from reactivex import Observable, abc

from rxstreamer.model import MetricRow

_T = TypeVar("_T")
_NOTHING: Any = object()


class Arrivals(Protocol):
    """Where a batching step counts the rows it received, cut into a batch yet or still held (PipelineCounters):
    without it, a report taken mid-batch could not tell rows held from rows a transform dropped."""

    rows_to_batch: int


def batch(
    size: int, *, split_on: Callable[[_T], Hashable] | None = None, counted: Arrivals | None = None
) -> Callable[[Observable[_T]], Observable[list[_T]]]:
    """Lists of up to ``size`` items; with ``split_on``, a list also ends where that key of the items changes.

    ``batch(n)`` is ``buffer_with_count(n)``. ``batch(n, split_on=timestamp)`` never puts two timestamps in
    one list, which is what replaying a recording at its own cadence needs: one list, one moment.

    Example, ``batch(2, split_on=str.lower)`` over ``a A A b B c`` gives ``[a, A] [A] [b, B] [c]``.
    ``counted.rows_to_batch`` counts every item received.
    """
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")

    def operator(source: Observable[_T]) -> Observable[list[_T]]:
        def subscribe(
            observer: abc.ObserverBase[list[_T]], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            held: list[_T] = []
            last_key: Hashable = _NOTHING

            def on_next(item: _T) -> None:
                nonlocal held, last_key
                if counted is not None:
                    counted.rows_to_batch += 1
                if split_on is not None:
                    key = split_on(item)
                    if held and key != last_key:
                        full, held = held, []
                        observer.on_next(full)
                    last_key = key
                held.append(item)
                if len(held) >= size:
                    full, held = held, []
                    observer.on_next(full)

            def on_completed() -> None:
                if held:
                    observer.on_next(held)
                observer.on_completed()

            return source.subscribe(on_next, observer.on_error, on_completed, scheduler=scheduler)

        return Observable(subscribe)

    return operator


def batch_per_scrape(
    size: int, counted: Arrivals | None = None
) -> Callable[[Observable[MetricRow]], Observable[list[MetricRow]]]:
    """One batch per host and timestamp (split at ``size``): the consistent snapshot one scrape of one host is.

    dcgm-exporter reports every GPU of a host at once; an export interleaves the hosts (the real CSV holds one
    metric of every GPU, then the next metric). Rows are held per host until the timestamp changes, then each
    host's rows go out together, hosts in the order they first appeared; a host's batch that reaches ``size``
    goes out at once, so memory holds less than ``size`` rows per host. Rows keep their order within a host.
    """
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")

    def operator(source: Observable[MetricRow]) -> Observable[list[MetricRow]]:
        def subscribe(
            observer: abc.ObserverBase[list[MetricRow]], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            by_host: dict[str, list[MetricRow]] = {}
            moment: list[Any] = [_NOTHING]

            def flush() -> None:
                for rows in by_host.values():
                    if rows:
                        observer.on_next(rows)
                by_host.clear()

            def on_next(row: MetricRow) -> None:
                if counted is not None:
                    counted.rows_to_batch += 1
                if row.timestamp != moment[0]:
                    flush()
                    moment[0] = row.timestamp
                rows = by_host.get(row.hostname)
                if rows is None:
                    rows = by_host[row.hostname] = []
                rows.append(row)
                if len(rows) >= size:
                    by_host[row.hostname] = []  # keeps the host's place in the order of this timestamp
                    observer.on_next(rows)

            def on_completed() -> None:
                flush()
                observer.on_completed()

            return source.subscribe(on_next, observer.on_error, on_completed, scheduler=scheduler)

        return Observable(subscribe)

    return operator


def _timestamp(row: MetricRow) -> Hashable:
    return row.timestamp


def batcher(
    size: int, *, by_scrape: bool, by_timestamp: bool, counted: Arrivals | None = None
) -> Callable[[Observable[Any]], Observable[list[Any]]]:
    """The batching step of the pipeline for its settings: by scrape, by timestamp (for original cadence), by count."""
    if by_scrape:
        return batch_per_scrape(size, counted)
    return batch(size, split_on=_timestamp if by_timestamp else None, counted=counted)
