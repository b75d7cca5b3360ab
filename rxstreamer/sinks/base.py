"""The sink interface: where encoded batches go, and what shutdown may ask of it.

A publish is an observable of one acknowledgement, so the pipeline can time, retry and compose it like
any other RxPY value, and tests can run it in virtual time. A publish that has started is not cancelled
by disposing its subscription: like an RPC already on the wire, it finishes and is counted. That is what
lets shutdown say exactly how many rows the queue holds, and why a sink has a lifecycle beyond
``publish``: shutdown waits until the sink is idle (within a deadline), then closes it.

Two protocols, one inside the other. ``Publisher`` is the part the pipeline uses (``build_pipeline``
only publishes and reads counts); ``Sink`` adds the lifecycle the service needs. Every sink is a
publisher; a test double that only publishes can still drive a pipeline.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

import structlog
from reactivex import Observable, abc

from rxstreamer.model import EncodedBatch, PublishAck
from rxstreamer.retry import PublishError

if TYPE_CHECKING:
    from rxstreamer.config.declared import MessageQueueSettings

log = structlog.get_logger()


@dataclass(frozen=True)
class SinkOptions:
    """What ``open_sink`` hands every sink besides its target and topic.

    ``timeout`` bounds one publish call, in seconds. ``scheduler`` is the pipeline's: a sink that answers
    on another thread hands the answer back through it. ``on_connectivity`` is told connection-state names
    (``READY``, ``TRANSIENT_FAILURE``, ...) when the sink knows them. ``background`` asks for calls on a
    thread of the sink's own, where it has one.
    """

    timeout: float
    scheduler: abc.SchedulerBase
    on_connectivity: Callable[[str], None] | None = None
    background: bool = False
    settings: MessageQueueSettings | None = None  # for a sink's own settings (message_queue.nats, say)
    resume: ResumePoint | None = None


@dataclass(frozen=True)
class ResumePoint:
    """The last batch the checkpoint says was acknowledged, for a sink whose queue forgets re-sends.

    A queue that drops re-sent batches only within a window (JetStream's duplicate window) cannot be left to
    recognise the batch that was in flight when the last run stopped, if that run stopped long enough ago:
    such a sink looks in the queue for batches of this producer after ``sequence``, stored since ``acked_at``.
    """

    producer_id: str
    sequence: int
    acked_at: datetime


@dataclass
class PublishStats:
    """Acknowledged work, counted when the queue answers, whether or not anyone still listens.

    A batch the queue recognised as one it already holds (a retry whose first answer was lost, or a replay
    after a restart) counts as published, since the queue holds its rows; ``duplicates`` says how many.
    """

    batches: int = 0
    rows: int = 0
    duplicates: int = 0


class Publisher(Protocol):
    """Sends one encoded batch; the observable emits the acknowledgement, then completes.

    The observable is cold: each subscription is one attempt, which is how a retry re-sends a batch. A
    refusal is an ``on_error`` with a ``PublishError`` whose ``status`` decides whether it is retried.
    """

    @property
    def stats(self) -> PublishStats:
        """Acknowledged batches, rows and duplicates so far."""
        ...

    def publish(self, batch: EncodedBatch) -> Observable[PublishAck]: ...


class Sink(Publisher, Protocol):
    """A publisher with a lifecycle: the interface the service and its shutdown talk to.

    Shutdown disposes the pipeline, then calls ``wait_idle(remaining time)`` so the publish on the wire is
    answered and counted, then ``close()``. A sink whose publishes finish before their observable
    completes (a synchronous write) has nothing in flight: ``in_flight = 0`` and ``wait_idle`` returning
    True are a complete implementation.
    """

    @property
    def in_flight(self) -> int:
        """Publishes started and not yet answered; logged when a stop signal arrives."""
        ...

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is in flight, for at most ``timeout`` seconds; False when time ran out."""
        ...

    def close(self) -> None:
        """Release the connection or file. Idempotent; a publish still in flight may be cut."""
        ...


class StatsRecorder:
    """Thread-safe counting of acknowledgements, for sinks whose answers arrive on other threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats = PublishStats()

    @property
    def stats(self) -> PublishStats:
        """A copy, so that a reader never sees a half-updated count."""
        with self._lock:
            return PublishStats(self._stats.batches, self._stats.rows, self._stats.duplicates)

    def record(self, ack: PublishAck) -> None:
        with self._lock:
            self._stats.batches += 1
            self._stats.rows += ack.rows
            self._stats.duplicates += ack.duplicate


class AnsweredElsewhere:
    """What a sink whose answers arrive on another thread keeps: acknowledged counts, the publishes in flight,
    a way to wait until none is (``wait_idle``, for shutdown), and the hand-back of each answer to the pipeline's
    thread through its ``scheduler`` (``_answer``). ``_lock`` may guard the sink's own state too.
    """

    def __init__(self, scheduler: abc.SchedulerBase) -> None:
        self._scheduler = scheduler
        self._recorder = StatsRecorder()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0

    @property
    def stats(self) -> PublishStats:
        return self._recorder.stats

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no publish is in flight; False when ``timeout`` seconds passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout=timeout)

    def _publish_started(self) -> None:
        with self._lock:
            self._in_flight += 1

    def _publish_ended(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._idle.notify_all()

    def _answer(
        self, outcome: PublishAck | PublishError, observer: abc.ObserverBase[PublishAck], listening: list[bool]
    ) -> None:
        """One publish ended: hand its outcome to the pipeline's thread, through its scheduler."""
        self._publish_ended()
        if not listening[0]:
            return

        def deliver(_: abc.SchedulerBase, __: object = None) -> None:
            tell_observer(observer, outcome, listening)

        try:
            self._scheduler.schedule(deliver)
        except Exception as error:  # the scheduler is already disposed: nobody is listening any more
            log.debug("publisher.late_answer", error=str(error))


def tell_observer(
    observer: abc.ObserverBase[PublishAck], outcome: PublishAck | PublishError, listening: list[bool]
) -> None:
    """Hand one publish's outcome to its subscriber, unless it stopped listening (disposed) meanwhile.

    An exception raised by what consumes the ack (a checkpoint that cannot be written, say) becomes the
    stream's error rather than escaping into the sink's thread.
    """
    if not listening[0]:
        return
    if isinstance(outcome, PublishError):
        observer.on_error(outcome)
        return
    try:
        observer.on_next(outcome)
    except Exception as error:
        observer.on_error(error)
        return
    observer.on_completed()
