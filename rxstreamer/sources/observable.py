"""Any source as a cold observable, for callers that want push rather than pull.

Kept apart from the sources themselves so that a format is only about reading its file: each format's
``rows_from_*`` is one call to ``rows_observable``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import reactivex
from reactivex import abc
from reactivex.disposable import CompositeDisposable, Disposable
from reactivex.scheduler import CurrentThreadScheduler

from rxstreamer.model import MetricRow
from rxstreamer.sources.base import Source

__all__ = ["rows_observable"]


def rows_observable(
    open_source: Callable[[], Source], *, scheduler: abc.SchedulerBase | None = None
) -> reactivex.Observable[MetricRow]:
    """The rows of a new source from ``open_source`` per subscription: each subscription reads afresh.

    Emits every good row and completes; any exception (a ``SourceError``) goes to ``on_error``. Disposing
    stops the read and closes the file at once. Rows are emitted in one scheduled action, like
    ``reactivex.from_iterable``; for paced reading pull from the source instead.
    """

    def subscribe(
        observer: abc.ObserverBase[MetricRow], subscribe_scheduler: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        chosen = scheduler or subscribe_scheduler or CurrentThreadScheduler.singleton()
        disposed = False

        def emit(_: abc.SchedulerBase, __: Any = None) -> None:
            rows = iter(open_source())
            try:
                for row in rows:
                    if disposed:
                        return
                    observer.on_next(row)
            except Exception as error:  # like from_iterable: any failure ends the stream
                observer.on_error(error)
            else:
                if not disposed:
                    observer.on_completed()
            finally:
                rows.close()

        def dispose() -> None:
            nonlocal disposed
            disposed = True

        return CompositeDisposable(chosen.schedule(emit), Disposable(dispose))

    return reactivex.create(subscribe)
