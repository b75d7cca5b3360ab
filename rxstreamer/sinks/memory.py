"""A queue in a list: the sink that ships for tests, yours included.

It behaves like a real queue where that matters to a pipeline: acknowledgements can take time (on a
scheduler, so virtual time works), attempts can be refused with the statuses a queue uses, a batch
whose ``(producer_id, sequence)`` it already holds is acknowledged as a duplicate at its first offset,
and a publish that has started finishes and is counted even when its subscription is disposed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import reactivex
from reactivex import Observable, abc
from reactivex.disposable import Disposable
from reactivex.scheduler import ImmediateScheduler

from rxstreamer.model import EncodedBatch, PublishAck
from rxstreamer.retry import PublishError
from rxstreamer.sinks.base import PublishStats, StatsRecorder

__all__ = ["InMemorySink"]


class InMemorySink:
    """Stores each acknowledged batch in ``batches``; ``attempts`` counts every publish attempt.

    ``latency`` delays each acknowledgement on ``scheduler`` (virtual time under a TestScheduler).
    ``failures`` are raised by successive publish attempts (``None`` lets an attempt through), which is
    how a test makes the queue refuse, say, the first two attempts with UNAVAILABLE. After ``close()``
    every attempt is refused with CANCELLED, as a closed channel would refuse it.
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        scheduler: abc.SchedulerBase | None = None,
        failures: Iterable[PublishError | None] = (),
    ) -> None:
        if latency > 0 and scheduler is None:
            raise ValueError("a latency needs a scheduler to wait on")
        self._latency = latency
        self._scheduler = scheduler or ImmediateScheduler.singleton()
        self._failures = list(failures)
        self._recorder = StatsRecorder()
        self._seen: dict[tuple[str, int], int] = {}
        self._in_flight = 0
        self._idle = threading.Condition()
        self._closed = False
        self.batches: list[EncodedBatch] = []
        self.attempts = 0

    @property
    def stats(self) -> PublishStats:
        return self._recorder.stats

    @property
    def in_flight(self) -> int:
        with self._idle:
            return self._in_flight

    @property
    def closed(self) -> bool:
        return self._closed

    def publish(self, batch: EncodedBatch) -> Observable[PublishAck]:
        def subscribe(observer: abc.ObserverBase[PublishAck], _: abc.SchedulerBase | None = None) -> Disposable:
            self.attempts += 1
            failure = self._failure(self.attempts)
            listening = [True]
            with self._idle:
                self._in_flight += 1

            def complete(_: abc.SchedulerBase, __: Any = None) -> None:
                outcome = failure if failure is not None else self._store(batch)
                with self._idle:
                    self._in_flight -= 1
                    self._idle.notify_all()
                if not listening[0]:
                    return
                if isinstance(outcome, PublishError):
                    observer.on_error(outcome)
                    return
                observer.on_next(outcome)
                observer.on_completed()

            # Scheduled, not tied to the subscription: a started publish finishes even when disposed.
            self._scheduler.schedule_relative(self._latency, complete)
            return Disposable(lambda: listening.__setitem__(0, False))

        return reactivex.create(subscribe)

    def _failure(self, attempt: int) -> PublishError | None:
        """The refusal for this attempt (1 for the first), if any; subclasses script their own."""
        if self._closed:
            return PublishError("CANCELLED", "the sink is closed")
        return self._failures.pop(0) if self._failures else None

    def wait_idle(self, timeout: float) -> bool:
        """Wait in real time until no acknowledgement is pending; False when ``timeout`` passed first.

        Under a TestScheduler nothing advances while this waits: advance the scheduler instead.
        """
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout=timeout)

    def close(self) -> None:
        """Refuse later publishes; what was stored stays readable. Idempotent."""
        self._closed = True

    def _store(self, batch: EncodedBatch) -> PublishAck:
        identity = (batch.producer_id, batch.sequence)
        if batch.producer_id and identity in self._seen:
            ack = PublishAck(batch.sequence, self._seen[identity], True, batch.rows, batch.position, batch.read)
        else:
            offset = len(self.batches)
            self.batches.append(batch)
            if batch.producer_id:
                self._seen[identity] = offset
            ack = PublishAck(batch.sequence, offset, False, batch.rows, batch.position, batch.read)
        self._recorder.record(ack)
        return ack
