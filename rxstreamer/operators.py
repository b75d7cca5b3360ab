"""The pipeline's own RxPY operators: pull rows on demand, pace the pulls, publish with retry.

RxPY is push-based: a source subscribed to emits as fast as it can, and whatever is downstream and
slower queues it (``zip`` with an ``interval`` buffers the whole file). Here the timer is the only thing
that pushes. Each tick *pulls* the next batch through ordinary row operators, so memory holds one batch
whatever the size of the file, and a tick never fires while the previous batch is still being published.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar

from reactivex import Observable, abc
from reactivex import operators as ops
from reactivex.disposable import CompositeDisposable, Disposable, SerialDisposable, SingleAssignmentDisposable
from reactivex.scheduler import TimeoutScheduler

from rxstreamer.retry import PublishError, RetriesExhaustedError, RetryPolicy

_T = TypeVar("_T")
_B = TypeVar("_B")
_A = TypeVar("_A")
_B_contra = TypeVar("_B_contra", contravariant=True)

Operator = Callable[[Observable[Any]], Observable[Any]]


class PullThrough(Iterable[_B]):
    """Rows pushed through RxPY operators one at a time, on demand.

    Iterating yields what the operators emit, and reads only as many rows as it takes to produce the
    next output. That is how a row-level chain such as ``filter → map → buffer_with_count(n)`` stays an
    ordinary RxPY composition while the file is read lazily. The operators must be synchronous (map,
    filter, scan, buffer_with_count, ...); time-based operators belong after pacing.
    """

    def __init__(self, rows: Iterable[Any], operators: tuple[Operator, ...]) -> None:
        self._rows = rows
        self._operators = operators

    def __iter__(self) -> Iterator[_B]:
        return self._pull()

    def _pull(self) -> Generator[_B, None, None]:
        rows = iter(self._rows)
        inlet = _Inlet()
        outputs: deque[_B] = deque()
        failure: list[Exception] = []
        finished: list[bool] = []
        inlet.pipe(*self._operators).subscribe(outputs.append, failure.append, lambda: finished.append(True))
        push = inlet.on_next
        ended = False
        try:
            while True:
                if not (outputs or failure or finished or ended):
                    for row in rows:
                        push(row)
                        if outputs or failure or finished:
                            break
                    else:
                        ended = True
                        inlet.on_completed()
                if outputs:
                    yield outputs.popleft()
                elif failure:
                    raise failure[0]
                else:
                    return
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()  # releases the file when the consumer stops early


class _Inlet(Observable[Any]):
    """The head of a ``pull_through`` chain: hands each row to its one subscriber, the first operator.

    A ``Subject`` would do, at about twice the cost a row (a lock, a check and a copy of its observer list per
    row), which a load generator pays millions of times (docs/benchmarks.md, "Where a row's microseconds go").
    """

    def __init__(self) -> None:
        super().__init__()
        self._observer: abc.ObserverBase[Any] | None = None

    def _subscribe_core(
        self, observer: abc.ObserverBase[Any], scheduler: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        self._observer = observer
        return Disposable()

    def on_next(self, row: Any) -> None:
        if self._observer is not None:
            self._observer.on_next(row)

    def on_completed(self) -> None:
        if self._observer is not None:
            self._observer.on_completed()


def pull_through(rows: Iterable[Any], *operators: Operator) -> PullThrough[Any]:
    """Lazily run ``rows`` through ``operators``; each ``next()`` pulls just enough rows for one output.

    Example:
        >>> batches = pull_through(rows, ops.filter(keep), ops.buffer_with_count(100))
    """
    return PullThrough(rows, operators)


def pace(
    items: Iterable[_B],
    interval: float,
    then: Callable[[_B], Observable[_A]],
    *,
    read_ahead: int = 0,
    scheduler: abc.SchedulerBase | None = None,
) -> Observable[_A]:
    """A timer that pulls one item per tick and hands it to ``then``; the next tick waits for ``then``.

    ``then`` maps an item to the observable of its work (a publish), as ``concat_map``'s mapper does.

    Ticks are due at absolute times (start + k·interval), so pacing does not drift; the first is due at
    subscription. When ``then`` (a publish) is still running at the next due time, the tick waits for it,
    so nothing queues. When ``then`` is late by more than a whole interval (the queue stalled), the schedule
    restarts from that moment instead of bursting to catch up. An interval of 0 hands over the next item as
    soon as ``then`` completes. Disposing stops the ticks; the item already handed to ``then`` is left to
    finish by itself.

    ``read_ahead`` items (at most) are pulled while ``then`` runs, so that reading the next batch overlaps
    with publishing the current one instead of following it. With 0, an item is read only once the
    previous one's ``then`` completed. Either way memory holds a bounded number of items.

    Marble, interval of 2 units, no read-ahead, with ``then`` taking 3 units for ``b``::

        items:   a b c|
        then(a): a|
        then(b):   ---b|
        then(c):        c|
        result:  a----b-c|
    """
    return _paced(items, lambda: _EveryInterval(interval), then, read_ahead=read_ahead, scheduler=scheduler)


def pace_by_offsets(
    items: Iterable[_B],
    offset_of: Callable[[_B], float | None],
    then: Callable[[_B], Observable[_A]],
    *,
    read_ahead: int = 0,
    scheduler: abc.SchedulerBase | None = None,
    on_behind: Callable[[float], None] | None = None,
) -> Observable[_A]:
    """As ``pace``, but each item is due ``offset_of(item)`` seconds after subscription (``None``: at once).

    This is how a recording is replayed at its own cadence (``rxstreamer.cadence.Timeline`` gives the offsets).
    The next item is read as soon as ``then`` completes, to learn when it is due: one item ahead, no more.
    Deadlines are absolute (start + offset), so replay does not drift. When an item is late by more than its
    gap to the previous item (the queue stalled), the schedule moves to that moment, keeping the recording's
    rhythm rather than bursting through it. ``offset_of`` is called once per item, in order; when it keeps state
    (a ``Timeline`` does), make one per subscription (``reactivex.defer``). ``on_behind`` is told, for each
    item, how many seconds behind the schedule of the start it goes: the moves so far plus its own lateness.

    Marble, offsets a=0, b=1, c=1, d=4 (units), ``then`` instant::

        items:  a b c d|
        result: a-(bc)--d|
    """
    return _paced(items, lambda: _AtOffsets(offset_of, on_behind), then, read_ahead=read_ahead, scheduler=scheduler)


def _paced(
    items: Iterable[_B],
    new_cadence: Callable[[], _Cadence[_B]],
    then: Callable[[_B], Observable[_A]],
    *,
    read_ahead: int,
    scheduler: abc.SchedulerBase | None,
) -> Observable[_A]:
    if read_ahead < 0:
        raise ValueError(f"read_ahead must be >= 0, got {read_ahead}")

    def subscribe(observer: abc.ObserverBase[_A], scheduler_: abc.SchedulerBase | None = None) -> abc.DisposableBase:
        clock = scheduler or scheduler_ or TimeoutScheduler.singleton()
        pacer = _Pacer(iter(items), new_cadence(), then, observer, scheduler=clock, read_ahead=read_ahead)
        return pacer.start()

    return Observable(subscribe)


class _Cadence(Protocol[_B_contra]):
    """When the next item is due; kept by one subscription (``start`` resets it)."""

    needs_item: bool  # the due time depends on the item, which must be read first

    def start(self, now: datetime) -> None: ...

    def due(self, item: _B_contra | None, handed_over: int, now: datetime) -> datetime: ...


class _EveryInterval(Generic[_B]):
    """Item k is due at start + k·interval; after a stall of more than an interval, the start moves up."""

    needs_item = False

    def __init__(self, interval: float) -> None:
        self._period = timedelta(seconds=interval)
        self._anchor = datetime.min

    def start(self, now: datetime) -> None:
        self._anchor = now

    def due(self, item: _B | None, handed_over: int, now: datetime) -> datetime:
        due = self._anchor + self._period * handed_over
        if now - due > self._period:
            self._anchor = now - self._period * handed_over
            due = now
        return due


class _AtOffsets(Generic[_B]):
    """Each item at start + its own offset; after a stall of more than the item's gap, the start moves up."""

    needs_item = True

    def __init__(self, offset_of: Callable[[_B], float | None], on_behind: Callable[[float], None] | None) -> None:
        self._offset_of = offset_of
        self._on_behind = on_behind
        self._anchor = datetime.min
        self._previous: timedelta | None = None
        self._moved = timedelta(0)  # how far the anchor moved, all stalls together

    def start(self, now: datetime) -> None:
        self._anchor = now
        self._previous = None
        self._moved = timedelta(0)

    def due(self, item: _B | None, handed_over: int, now: datetime) -> datetime:
        seconds = self._offset_of(item)  # type: ignore[arg-type]  # needs_item: never None here
        if seconds is None:
            return now
        offset = timedelta(seconds=seconds)
        gap = offset - self._previous if self._previous is not None else timedelta(0)
        self._previous = offset
        due = self._anchor + offset
        if gap > timedelta(0) and now - due > gap:
            self._moved += now - due
            self._anchor = now - offset
            due = now
        if self._on_behind is not None:  # behind the first schedule: the moves, and how late this item is
            self._on_behind((self._moved + max(now - due, timedelta(0))).total_seconds())
        return due


class _Pacer(Generic[_B, _A]):
    """The state of one subscription to ``pace``: what was read, what was handed over, when the next tick is due."""

    def __init__(
        self,
        source: Iterator[_B],
        cadence: _Cadence[_B],
        then: Callable[[_B], Observable[_A]],
        observer: abc.ObserverBase[_A],
        *,
        scheduler: abc.SchedulerBase,
        read_ahead: int,
    ) -> None:
        self._source = source
        self._cadence = cadence
        self._then = then
        self._observer = observer
        self._scheduler = scheduler
        self._read_ahead = read_ahead
        self._ready: deque[_B] = deque()  # read ahead, not yet handed to ``then``
        self._exhausted = False
        self._read_error: Exception | None = None
        self._handed_over = 0
        self._stopped = False
        self._next_tick = SerialDisposable()
        self._current = SerialDisposable()
        # A publish may complete on another thread, or synchronously inside the tick, while the tick is
        # still reading ahead: the lock keeps the source read by one thread at a time.
        self._lock = threading.RLock()

    def start(self) -> abc.DisposableBase:
        self._cadence.start(self._scheduler.now)
        first = self._read_then_schedule if self._cadence.needs_item else self._tick
        self._next_tick.disposable = self._scheduler.schedule(first)
        return CompositeDisposable(self._next_tick, self._current, Disposable(self._dispose))

    def _tick(self, _: abc.SchedulerBase, __: Any = None) -> None:
        with self._lock:
            try:
                self._hand_over_next()
            except Exception as error:  # ``then`` (encoding, a publish) raised: end the stream, not the thread
                self._fail(error)

    def _hand_over_next(self) -> None:
        if self._stopped:
            return
        if not self._ready:
            self._read_one()
        if self._stopped:  # disposed while reading: drop the item unpublished and release the file
            self._close_source()
            return
        if not self._ready:
            self._finish()
            return
        self._handed_over += 1
        self._current.disposable = self._then(self._ready.popleft()).subscribe(
            self._observer.on_next, self._fail, self._then_completed
        )
        while len(self._ready) < self._read_ahead and self._read_one():
            pass  # the publish is on its way: read the next batch meanwhile

    def _read_one(self) -> bool:
        """Pull the next item into ``_ready``; False at the end of the items or on an error (kept for later)."""
        if self._exhausted or self._read_error is not None or self._stopped:
            return False
        try:
            self._ready.append(next(self._source))
        except StopIteration:
            self._exhausted = True
            return False
        except Exception as error:
            self._read_error = error
            return False
        return True

    def _finish(self) -> None:
        """Nothing more to hand over: complete, or report the read error after everything before it."""
        self._stopped = True
        if self._read_error is not None:
            self._close_source()
            self._observer.on_error(self._read_error)
        else:
            self._observer.on_completed()

    def _then_completed(self) -> None:
        with self._lock:
            try:
                self._schedule_next_tick()
            except Exception as error:  # a disposed or broken scheduler: end the stream, not the thread
                self._fail(error)

    def _schedule_next_tick(self) -> None:
        if self._stopped:
            return
        if not self._ready and (self._exhausted or self._read_error is not None):
            self._finish()  # known already: no need to wait for another tick
            return
        if self._cadence.needs_item and not self._ready:  # when it is due depends on what it is: read it first
            self._next_tick.disposable = self._scheduler.schedule(self._read_then_schedule)
            return
        item = self._ready[0] if self._ready else None
        due = self._cadence.due(item, self._handed_over, self._scheduler.now)
        self._next_tick.disposable = self._scheduler.schedule_absolute(due, self._tick)

    def _read_then_schedule(self, _: abc.SchedulerBase, __: Any = None) -> None:
        """Read the next item on the scheduler's thread (not the publish's), then schedule its tick."""
        with self._lock:
            try:
                if not self._stopped:
                    self._read_one()
                self._schedule_next_tick()
            except Exception as error:
                self._fail(error)

    def _fail(self, error: Exception) -> None:
        self._stopped = True
        self._close_source()
        self._observer.on_error(error)

    def _dispose(self) -> None:
        self._stopped = True
        with self._lock:
            self._ready.clear()
            self._close_source()

    def _close_source(self) -> None:
        close = getattr(self._source, "close", None)
        if close is not None:
            # ValueError: closed from inside the source itself (a transform disposing the stream while a batch
            # is being pulled); _hand_over_next closes it once the pull returns.
            with contextlib.suppress(ValueError):
                close()


def publish_with_retry(
    publish: Callable[[_T], Observable[_A]],
    policy: RetryPolicy,
    *,
    scheduler: abc.SchedulerBase | None = None,
    on_retry: Callable[[_T, int, float, BaseException], None] | None = None,
    uniform: Callable[[], float] | None = None,
) -> Callable[[Observable[_T]], Observable[_A]]:
    """Publish each item in order, retrying only the failed publish, never the stream above it.

    ``retry`` placed around a pipeline resubscribes to everything upstream, and upstream is the file:
    rows would be read and published twice. Here each item gets its own chain of attempts (see
    ``retrying``), and items are published one after the other.

    Marble, with the first publish of ``a`` failing with UNAVAILABLE and a backoff of 2 units::

        source:  a-----b|
        publish: #
                   --a|
        result:  --a---b|
    """
    return ops.concat_map(retrying(publish, policy, scheduler=scheduler, on_retry=on_retry, uniform=uniform))


def retrying(
    publish: Callable[[_T], Observable[_A]],
    policy: RetryPolicy,
    *,
    scheduler: abc.SchedulerBase | None = None,
    on_retry: Callable[[_T, int, float, BaseException], None] | None = None,
    uniform: Callable[[], float] | None = None,
) -> Callable[[_T], Observable[_A]]:
    """For one item, an observable that publishes it and retries as ``policy`` allows.

    A failure the policy deems retryable is retried after a backoff timed on ``scheduler`` (by default the
    scheduler it is subscribed on); any other failure ends it with that error, and running out of attempts
    or retry time ends it with ``RetriesExhaustedError``. ``on_retry(item, attempt, wait, error)`` is told
    before each wait, for logging. Disposing it cancels a pending retry, never an attempt already running.
    """

    def attempts(item: _T) -> Observable[_A]:
        def subscribe(
            observer: abc.ObserverBase[_A], scheduler_: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            clock = scheduler or scheduler_ or TimeoutScheduler.singleton()
            return _Attempts(item, publish, policy, observer, clock=clock, on_retry=on_retry, uniform=uniform).start()

        return Observable(subscribe)

    return attempts


class _Attempts(Generic[_T, _A]):
    """The attempts to publish one item: the first, then retries for as long as the policy allows.

    Written out rather than composed from ``catch`` and ``timer``: it runs once per batch, so its cost
    counts, and it holds the item (a batch, hundreds of kilobytes) only until the attempts end, so nothing
    heavy waits in a reference cycle for the garbage collector.
    """

    def __init__(
        self,
        item: _T,
        publish: Callable[[_T], Observable[_A]],
        policy: RetryPolicy,
        observer: abc.ObserverBase[_A],
        *,
        clock: abc.SchedulerBase,
        on_retry: Callable[[_T, int, float, BaseException], None] | None,
        uniform: Callable[[], float] | None,
    ) -> None:
        self._item: _T | None = item
        self._publish = publish
        self._policy = policy
        self._observer = observer
        self._clock = clock
        self._on_retry = on_retry
        self._uniform = uniform
        self._started = clock.now
        self._attempts_made = 0
        self._current = SerialDisposable()

    def start(self) -> abc.DisposableBase:
        self._attempt()
        return CompositeDisposable(self._current, Disposable(self._release))

    def _attempt(self, _: abc.SchedulerBase | None = None, __: Any = None) -> None:
        item = self._item
        if item is None:
            return  # disposed while the retry was due
        self._attempts_made += 1
        attempt = SingleAssignmentDisposable()
        self._current.disposable = attempt  # before subscribing: the attempt may fail synchronously
        try:
            attempt.disposable = self._publish(item).subscribe(self._observer.on_next, self._failed, self._completed)
        except Exception as error:  # raised by the publish call or by a consumer of its answer: end the stream
            self._give_up(error)

    def _completed(self) -> None:
        self._release()
        self._observer.on_completed()

    def _failed(self, error: Exception) -> None:
        try:
            self._retry_or_give_up(error)
        except Exception as unexpected:  # the retry listener or the scheduler raised: end the stream
            self._give_up(unexpected)

    def _retry_or_give_up(self, error: Exception) -> None:
        policy, item = self._policy, self._item
        if item is None:
            return
        if not policy.retryable(error):
            self._give_up(error)
            return
        elapsed = (self._clock.now - self._started).total_seconds()
        if policy.exhausted(self._attempts_made, elapsed):
            assert isinstance(error, PublishError)
            self._give_up(RetriesExhaustedError(error, self._attempts_made, elapsed))
            return
        wait = policy.wait_before_retry(error, self._attempts_made, self._uniform)
        if policy.max_retry_time:
            wait = min(wait, policy.max_retry_time - elapsed)  # the last try comes at the deadline
        if self._on_retry is not None:
            self._on_retry(item, self._attempts_made + 1, wait, error)
        self._current.disposable = self._clock.schedule_relative(wait, self._attempt)

    def _give_up(self, error: Exception) -> None:
        self._release()
        self._current.dispose()  # a retry already scheduled must not run after the stream ended
        self._observer.on_error(error)

    def _release(self) -> None:
        self._item = None
