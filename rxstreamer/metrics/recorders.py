"""Recorders, on the pipeline's side: they time publishes and pacing ticks and note the newest row of each
acknowledged batch, behind the publisher and scheduler ``build_pipeline`` is given. They take a lock, never
prometheus_client."""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import structlog
from reactivex import Observable, abc
from reactivex.scheduler.scheduler import Scheduler
from reactivex.typing import AbsoluteTime, RelativeTime

from rxstreamer.encoding import BatchEncoder, TimestampMode, WireEncoding
from rxstreamer.metrics.constants import LATENESS_BUCKETS, PUBLISH_BUCKETS
from rxstreamer.model import EncodedBatch, MetricRow, Position, PublishAck, ReadCounts
from rxstreamer.retry import PublishError
from rxstreamer.sinks.base import Publisher, PublishStats

log = structlog.get_logger()

_TState = TypeVar("_TState")


@dataclass(frozen=True)
class HistogramSnapshot:
    bounds: tuple[float, ...]
    counts: tuple[int, ...]  # per bucket, not cumulative; one more than bounds (the +Inf bucket)
    total: float

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus' buckets: (upper bound as Go spells it, observations at or below it), +Inf last."""
        running, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(running)))
        return buckets


class Histogram:
    """Observations counted into fixed buckets, thread-safe; read as a consistent ``HistogramSnapshot``."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = tuple(bounds)
        self._counts = [0] * (len(self._bounds) + 1)
        self._total = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        index = bisect_left(self._bounds, value)  # the first bound >= value: Prometheus' "le"
        with self._lock:
            self._counts[index] += 1
            self._total += value

    def snapshot(self) -> HistogramSnapshot:
        with self._lock:
            return HistogramSnapshot(self._bounds, tuple(self._counts), self._total)


def outcome_of(error: BaseException) -> str:
    """The ``outcome`` label of a failed attempt: the status name the queue answered (a bounded set)."""
    return error.status if isinstance(error, PublishError) else "error"


class PublishTimer:
    """The publisher the pipeline is given: the sink's, with each attempt timed and its outcome counted.

    An attempt's outcome is ``ok``, ``duplicate`` or the status it failed with (``UNAVAILABLE``, ...). It
    also knows since when the oldest unacknowledged batch has been waiting (from its first attempt, retries
    and backoffs included), which is what ``readiness`` calls a stall. The sink's own counts stay the ones
    reported: ``stats`` is the sink's.
    """

    def __init__(self, inner: Publisher, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._inner = inner
        self._clock = clock
        self.durations = Histogram(PUBLISH_BUCKETS)
        self._lock = threading.Lock()
        self._outcomes: dict[str, int] = {}
        self._waiting: dict[int, float] = {}  # sequence -> start of its first attempt, until acknowledged

    @property
    def stats(self) -> PublishStats:
        return self._inner.stats

    def publish(self, batch: EncodedBatch) -> Observable[PublishAck]:
        attempt = self._inner.publish(batch)

        def subscribe(
            observer: abc.ObserverBase[PublishAck], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            started = self._clock()
            with self._lock:
                self._waiting.setdefault(batch.sequence, started)

            def answered(ack: PublishAck) -> None:
                self._ended(batch.sequence, started, "duplicate" if ack.duplicate else "ok")
                observer.on_next(ack)

            def failed(error: Exception) -> None:
                self._ended(batch.sequence, started, outcome_of(error))
                observer.on_error(error)

            return attempt.subscribe(answered, failed, observer.on_completed, scheduler=scheduler)

        return Observable(subscribe)

    def _ended(self, sequence: int, started: float, outcome: str) -> None:
        self.durations.observe(max(self._clock() - started, 0.0))
        with self._lock:
            self._outcomes[outcome] = self._outcomes.get(outcome, 0) + 1
            if outcome in ("ok", "duplicate"):
                self._waiting.pop(sequence, None)

    def outcomes(self) -> dict[str, int]:
        with self._lock:
            return dict(self._outcomes)

    def waiting_for(self) -> float | None:
        """Seconds the oldest unacknowledged batch has waited since its first attempt; None when none waits."""
        with self._lock:
            oldest = min(self._waiting.values(), default=None)
        return None if oldest is None else max(self._clock() - oldest, 0.0)


class TickLateness(Scheduler):
    """The pipeline's scheduler, measuring how late each action scheduled at an absolute time starts.

    In the pipeline only ``pace`` schedules at absolute times (its ticks, due at start + k x interval); the
    retry's backoffs are relative and the first tick is immediate, and both are passed on untimed. So the
    histogram holds each tick's lateness: how long after its due time it fired. Everything is forwarded to
    ``inner``, which runs it on its own thread as before.
    """

    def __init__(self, inner: abc.SchedulerBase) -> None:
        super().__init__()
        self._inner = inner
        self.lateness = Histogram(LATENESS_BUCKETS)

    @property
    def now(self) -> datetime:
        return self._inner.now

    def schedule(self, action: abc.ScheduledAction[_TState], state: _TState | None = None) -> abc.DisposableBase:
        return self._inner.schedule(action, state)

    def schedule_relative(
        self, duetime: RelativeTime, action: abc.ScheduledAction[_TState], state: _TState | None = None
    ) -> abc.DisposableBase:
        return self._inner.schedule_relative(duetime, action, state)

    def schedule_absolute(
        self, duetime: AbsoluteTime, action: abc.ScheduledAction[_TState], state: _TState | None = None
    ) -> abc.DisposableBase:
        due = self.to_datetime(duetime)

        def timed(scheduler: abc.SchedulerBase, state_: _TState | None = None) -> abc.DisposableBase | None:
            self.lateness.observe(max((self._inner.now - due).total_seconds(), 0.0))
            return action(scheduler, state_)

        return self._inner.schedule_absolute(due, timed, state)


class AckedRowTimes:
    """The timestamp of the newest acknowledged row, and per GPU (for at most ``per_gpu_max`` GPUs).

    ``encoded`` notes a batch's newest row (and each GPU's) by sequence when it is encoded; ``acked`` keeps
    them once the queue acknowledged that sequence. Both run on the pipeline thread; ``snapshot`` on the
    HTTP thread. GPUs beyond ``per_gpu_max`` are left out (the first ones acknowledged stay), with one
    ``metrics.per_gpu_capped`` line, so the label's values stay bounded.
    """

    def __init__(self, per_gpu_max: int = 0) -> None:
        self.per_gpu_max = per_gpu_max
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[datetime, dict[str, datetime]]] = {}
        self._newest: datetime | None = None
        self._gpus: dict[str, datetime] = {}
        self._capped = False

    def encoded(self, sequence: int, rows: Sequence[MetricRow], stamp: datetime | None = None) -> None:
        """Note the batch's newest row; ``stamp`` is the time every row was stamped with (processing time)."""
        if not rows:
            return
        newest = stamp if stamp is not None else max(row.timestamp for row in rows)
        gpus: dict[str, datetime] = {}
        if self.per_gpu_max:
            for row in rows:
                moment = stamp if stamp is not None else row.timestamp
                if row.uuid and (row.uuid not in gpus or gpus[row.uuid] < moment):
                    gpus[row.uuid] = moment
        with self._lock:
            self._pending[sequence] = (newest, gpus)

    def acked(self, ack: PublishAck) -> None:
        with self._lock:
            noted = self._pending.pop(ack.sequence, None)
            for older in [sequence for sequence in self._pending if sequence < ack.sequence]:
                del self._pending[older]  # never to be acknowledged: the stream went past them
            if noted is None:
                return
            newest, gpus = noted
            if self._newest is None or newest > self._newest:
                self._newest = newest
            left_out = self._keep(gpus)
        if left_out is not None:
            log.warning(
                "metrics.per_gpu_capped",
                per_gpu_max=self.per_gpu_max,
                left_out=left_out,
                meaning="rxstreamer_gpu_last_sample_age_seconds covers the first GPUs only",
                fix="raise observability.per_gpu_max",
            )

    def _keep(self, gpus: Mapping[str, datetime]) -> str | None:
        """Keep each GPU's newest time (lock held); the first GPU left out, the first time one is."""
        left_out = None
        for uuid, moment in gpus.items():
            known = self._gpus.get(uuid)
            if known is not None:
                if moment > known:
                    self._gpus[uuid] = moment
            elif len(self._gpus) < self.per_gpu_max:
                self._gpus[uuid] = moment
            elif not self._capped:
                self._capped, left_out = True, uuid
        return left_out

    def snapshot(self) -> tuple[datetime | None, dict[str, datetime]]:
        with self._lock:
            return self._newest, dict(self._gpus)


class RowTimesEncoder(BatchEncoder):
    """A ``BatchEncoder`` that also tells ``row_times`` the newest row of each batch it encodes."""

    def __init__(
        self,
        producer_id: str,
        *,
        timestamps: TimestampMode = "original",
        first_sequence: int = 1,
        per_gpu_max: int = 0,
        encoding: WireEncoding = "v2",
    ) -> None:
        self.row_times = AckedRowTimes(per_gpu_max)
        self._processing = timestamps == "processing"
        self._stamped_at = datetime.now(UTC)
        super().__init__(
            producer_id, timestamps=timestamps, first_sequence=first_sequence, clock=self._stamp, encoding=encoding
        )

    def _stamp(self) -> datetime:
        self._stamped_at = datetime.now(UTC)
        return self._stamped_at

    def __call__(
        self, rows: Sequence[MetricRow], position: Position | None = None, read: ReadCounts | None = None
    ) -> EncodedBatch:
        batch = super().__call__(rows, position, read)
        self.row_times.encoded(batch.sequence, rows, self._stamped_at if self._processing else None)
        return batch


@dataclass(frozen=True)
class StreamerInstruments:
    """What ``build_pipeline`` is given instead of the sink and the scheduler, and the ack listener it adds."""

    publisher: PublishTimer
    scheduler: TickLateness
    row_times: AckedRowTimes | None  # when the encoder is a RowTimesEncoder

    @classmethod
    def around(
        cls,
        sink: Publisher,
        scheduler: abc.SchedulerBase,
        encoder: BatchEncoder,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> StreamerInstruments:
        """Instruments for a pipeline publishing to ``sink`` on ``scheduler``; ``clock`` times the publishes."""
        row_times = encoder.row_times if isinstance(encoder, RowTimesEncoder) else None
        return cls(PublishTimer(sink, clock=clock), TickLateness(scheduler), row_times)

    def on_ack(self, ack: PublishAck) -> None:
        if self.row_times is not None:
            self.row_times.acked(ack)
