"""Where batches go: the ``Publisher`` interface, its accounting, and an in-memory implementation.

A publish is an observable of one acknowledgement, so the pipeline can time, retry and compose it like
any other RxPY value, and tests can run it in virtual time. A publish that has started is not cancelled
by disposing its subscription: like an RPC already on the wire, it finishes and is counted. That is what
lets shutdown say exactly how many rows the queue holds.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import reactivex
from reactivex import Observable, abc
from reactivex.disposable import Disposable
from reactivex.scheduler import ImmediateScheduler

from rxstreamer.model import EncodedBatch, PublishAck
from rxstreamer.retry import PublishError


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
    """Sends one encoded batch to a queue; the observable emits the acknowledgement, then completes."""

    @property
    def stats(self) -> PublishStats: ...

    def publish(self, batch: EncodedBatch) -> Observable[PublishAck]: ...


class StatsRecorder:
    """Thread-safe counting of acknowledgements, shared by the publishers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats = PublishStats()

    @property
    def stats(self) -> PublishStats:
        with self._lock:
            return PublishStats(self._stats.batches, self._stats.rows, self._stats.duplicates)

    def record(self, ack: PublishAck) -> None:
        with self._lock:
            self._stats.batches += 1
            self._stats.rows += ack.rows
            self._stats.duplicates += ack.duplicate


class InMemoryPublisher:
    """A queue in a list: for tests and for users who test their own pipelines.

    ``latency`` delays each acknowledgement on ``scheduler`` (virtual time under a TestScheduler).
    ``failures`` are raised by successive publish attempts (``None`` lets an attempt through), which is
    how a test makes the queue refuse, say, the first two attempts with UNAVAILABLE.
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
        self.batches: list[EncodedBatch] = []
        self.attempts = 0

    @property
    def stats(self) -> PublishStats:
        return self._recorder.stats

    def publish(self, batch: EncodedBatch) -> Observable[PublishAck]:
        def subscribe(observer: abc.ObserverBase[PublishAck], _: abc.SchedulerBase | None = None) -> Disposable:
            self.attempts += 1
            failure = self._failures.pop(0) if self._failures else None
            listening = [True]

            def complete(_: abc.SchedulerBase, __: Any = None) -> None:
                if failure is not None:
                    if listening[0]:
                        observer.on_error(failure)
                    return
                ack = self._store(batch)
                if listening[0]:
                    observer.on_next(ack)
                    observer.on_completed()

            # Scheduled, not tied to the subscription: a started publish finishes even when disposed.
            self._scheduler.schedule_relative(self._latency, complete)
            return Disposable(lambda: listening.__setitem__(0, False))

        return reactivex.create(subscribe)

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
