"""The HTTP endpoint of ``observability.listen``: ``/metrics`` in Prometheus text, ``/healthz`` and ``/readyz``.

Imported only when the endpoint is on: it imports prometheus_client. Three layers, each testable alone:

- Recorders, on the pipeline's side: ``PublishTimer`` wraps the publisher the pipeline is given and times
  every attempt; ``TickLateness`` wraps the pipeline's scheduler and measures how late each pacing tick
  fired against its due time (``pace`` schedules its ticks at absolute times, and nothing else in the
  pipeline does); ``RowTimesEncoder`` notes the newest row of each batch it encodes, kept by
  ``AckedRowTimes`` once the batch is acknowledged. ``build_pipeline`` is called with these in place of
  the sink and the scheduler; its shape does not change. They take a lock, never prometheus_client.
- Rules, pure: ``liveness`` and ``readiness`` turn a ``RunState`` snapshot into a ``Probe``; ``lag_seconds``.
- Exposition: ``StreamerCollector`` reads a snapshot of the run's counts (``RunCounts.now()``, the very
  counts the progress line and ``streamer.stopped`` print) on each scrape, on the HTTP thread; ``Endpoint``
  is a WSGI server on a daemon thread with a router in front of prometheus_client's app, which would
  otherwise answer metrics on every path.
"""

from __future__ import annotations

import socket
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from socketserver import TCPServer, ThreadingMixIn
from typing import TYPE_CHECKING, Any, Final, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import structlog
from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from reactivex import Observable, abc
from reactivex.scheduler.scheduler import Scheduler
from reactivex.typing import AbsoluteTime, RelativeTime

from rxstreamer.config import ConfigError
from rxstreamer.counts import Counts
from rxstreamer.encoding import BatchEncoder, TimestampMode
from rxstreamer.model import EncodedBatch, MetricRow, Position, PublishAck, ReadCounts
from rxstreamer.retry import PublishError
from rxstreamer.sinks.base import Publisher, PublishStats

if TYPE_CHECKING:
    from rxstreamer.sources.scrape import TargetStats

log = structlog.get_logger()

_TState = TypeVar("_TState")

#: Where each thing is served; any other path answers 404 naming these.
PATHS: Final = ("/metrics", "/healthz", "/readyz")
#: Bucket bounds (seconds) of ``rxstreamer_publish_duration_seconds``: a local queue answers in about a
#: millisecond; ``message_queue.publish_timeout`` is 5 s by default.
PUBLISH_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Bucket bounds (seconds) of ``rxstreamer_pacing_lateness_seconds``: a tick is normally late by well under
#: a millisecond; one that waited for a slow publish is late by up to one interval (then pacing restarts).
LATENESS_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: The shortest wait for an acknowledgement that makes the stream count as stalled (see ``stall_after``).
MIN_STALL_S: Final = 1.0


# --- recorders ------------------------------------------------------------------------------------------


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
        self, producer_id: str, *, timestamps: TimestampMode = "original", first_sequence: int = 1, per_gpu_max: int = 0
    ) -> None:
        self.row_times = AckedRowTimes(per_gpu_max)
        self._processing = timestamps == "processing"
        self._stamped_at = datetime.now(UTC)
        super().__init__(producer_id, timestamps=timestamps, first_sequence=first_sequence, clock=self._stamp)

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


# --- rules ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """A probe's answer: 200 with ``ok``, else 503; ``reason`` is the one line of the body."""

    ok: bool
    reason: str


@dataclass(frozen=True)
class RunState:
    """What the probes look at, read at one moment."""

    pipeline_alive: bool  # the pipeline's thread runs
    ended: str | None  # None while streaming; "stopping", "completed" or "failed: ..." once the run ends
    queue_reachable: bool | None  # None until the queue first answered (mq.connected / mq.unreachable)
    waiting_s: float | None  # how long the oldest unacknowledged batch has waited; None when none waits
    stall_after: float  # a wait longer than this is a stall


def stall_after(stream_interval: float) -> float:
    """How long a batch may wait for its acknowledgement before the stream counts as stalled.

    A healthy queue answers within the interval (that is what pacing at that interval assumes); with a short
    interval, or none, at least ``MIN_STALL_S``, so that an ordinary slow answer is not a stall.
    """
    return max(stream_interval, MIN_STALL_S)


def liveness(state: RunState) -> Probe:
    """``/healthz``: the process and its pipeline thread are alive (a run that has ended is still alive)."""
    if state.ended is not None:
        return Probe(True, f"alive; the run has ended ({state.ended})")
    if not state.pipeline_alive:
        return Probe(False, "the pipeline thread is not running")
    return Probe(True, "alive")


def readiness(state: RunState) -> Probe:
    """``/readyz``: the queue answered the last publish and no batch waits for it longer than ``stall_after``."""
    if state.ended is not None:
        return Probe(False, f"the run has ended ({state.ended})")
    if not state.pipeline_alive:
        return Probe(False, "the pipeline thread is not running")
    if state.queue_reachable is False:
        return Probe(False, "the queue is unreachable (see mq.unreachable)")
    if state.waiting_s is not None and state.waiting_s > state.stall_after:
        return Probe(
            False,
            f"stalled: a batch has waited {state.waiting_s:.1f}s for the queue's acknowledgement "
            f"(more than {state.stall_after:g}s)",
        )
    if state.queue_reachable is None:
        return Probe(False, "the queue has not answered yet")
    return Probe(True, "ready")


def lag_seconds(now: datetime, newest: datetime | None) -> float | None:
    """How old the newest acknowledged row is; never negative (a row stamped ahead of this clock is fresh)."""
    return None if newest is None else max((now - newest).total_seconds(), 0.0)


# --- exposition -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamerView:
    """Where the collector reads each value; every callable is safe to call from the HTTP thread."""

    counts: Callable[[], Counts]
    publishes: PublishTimer
    ticks: TickLateness
    batches_in_flight: Callable[[], int]
    queue_reachable: Callable[[], bool | None]
    checkpoint_sequence: Callable[[], int | None]
    row_times: AckedRowTimes | None = None
    targets: Callable[[], Mapping[str, TargetStats]] | None = None  # when scraping
    wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC)


def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def labelled(
    family: CounterMetricFamily | GaugeMetricFamily, label_values: Iterable[tuple[Sequence[str], float]]
) -> CounterMetricFamily | GaugeMetricFamily:
    for values, value in label_values:
        family.add_metric(list(values), value)
    return family


def histogram(name: str, documentation: str, snapshot: HistogramSnapshot) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, documentation, buckets=snapshot.cumulative(), sum_value=snapshot.total)


class StreamerCollector:
    """The streamer's metrics, read from a snapshot on each scrape (prometheus_client calls ``collect``)."""

    def __init__(self, view: StreamerView) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        view = self._view
        counts = view.counts()
        yield counter(
            "rxstreamer_rows_read_total", "Data rows read from the input (good and rejected).", counts.rows_read
        )
        yield counter(
            "rxstreamer_rows_published_total",
            "Rows the queue acknowledged (in batches it already held too).",
            counts.rows_published,
        )
        yield labelled(
            CounterMetricFamily(
                "rxstreamer_rows_rejected_total", "Rows that could not be parsed, by reason.", labels=["reason"]
            ),
            (([reason], count) for reason, count in sorted(counts.rejected_by_reason.items())),
        )
        yield counter("rxstreamer_rows_filtered_total", "Rows dropped by telemetry.transforms.", counts.rows_filtered)
        yield gauge("rxstreamer_rows_in_flight", "Rows read into batches not acknowledged yet.", counts.rows_in_flight)
        yield counter("rxstreamer_batches_published_total", "Batches the queue acknowledged.", counts.batches_published)
        yield counter(
            "rxstreamer_duplicates_total",
            "Acknowledged batches the queue already held (re-sent after a lost answer or a restart).",
            counts.duplicates,
        )
        yield labelled(
            CounterMetricFamily(
                "rxstreamer_publish_attempts_total",
                "Publish attempts by outcome: ok, duplicate, or the status the attempt failed with.",
                labels=["outcome"],
            ),
            (([outcome], count) for outcome, count in sorted(view.publishes.outcomes().items())),
        )
        yield histogram(
            "rxstreamer_publish_duration_seconds",
            "Time from a publish attempt to the queue's answer, failures included.",
            view.publishes.durations.snapshot(),
        )
        yield gauge("rxstreamer_batches_in_flight", "Publishes sent and not answered yet.", view.batches_in_flight())
        yield gauge(
            "rxstreamer_queue_up",
            "1 while the queue answers (mq.connected), 0 while it is unreachable or has not answered yet.",
            1 if view.queue_reachable() else 0,
        )
        sequence = view.checkpoint_sequence()
        if sequence is not None:
            yield gauge(
                "rxstreamer_checkpoint_sequence", "The sequence of the last batch written to the checkpoint.", sequence
            )
        yield histogram(
            "rxstreamer_pacing_lateness_seconds",
            "How late each pacing tick fired after its due time.",
            view.ticks.lateness.snapshot(),
        )
        yield from self._rows(view)
        yield from self._targets(view)

    @staticmethod
    def _rows(view: StreamerView) -> Iterator[Metric]:
        if view.row_times is None:
            return
        newest, gpus = view.row_times.snapshot()
        now = view.wall_clock()
        lag = lag_seconds(now, newest)
        if lag is not None:
            yield gauge(
                "rxstreamer_newest_row_lag_seconds",
                "Now minus the timestamp of the newest acknowledged row.",
                lag,
            )
        if view.row_times.per_gpu_max:
            yield labelled(
                GaugeMetricFamily(
                    "rxstreamer_gpu_last_sample_age_seconds",
                    "Now minus the timestamp of the GPU's newest acknowledged row (observability.per_gpu_max GPUs).",
                    labels=["uuid"],
                ),
                (([uuid], lag_seconds(now, moment) or 0.0) for uuid, moment in sorted(gpus.items())),
            )

    @staticmethod
    def _targets(view: StreamerView) -> Iterator[Metric]:
        if view.targets is None:
            return
        targets = view.targets()
        yield labelled(
            GaugeMetricFamily(
                "rxstreamer_scrape_target_up", "1 when the target's last scrape gave samples.", labels=["target"]
            ),
            (([target], 1 if stats.state == "up" else 0) for target, stats in targets.items()),
        )
        scrapes = CounterMetricFamily(
            "rxstreamer_scrapes_total",
            "Scrapes of each target by outcome: ok, or why it failed (timeout, unreachable, http_<status>, ...).",
            labels=["target", "outcome"],
        )
        for target, stats in targets.items():
            scrapes.add_metric([target, "ok"], stats.scrapes_ok)
            for state, count in sorted(stats.failed_by_state.items()):
                scrapes.add_metric([target, state], count)
        yield scrapes


def scrape_targets(source: object) -> Callable[[], dict[str, TargetStats]] | None:
    """When the source scrapes endpoints, a reader of copies of its targets' stats (made on the HTTP thread)."""
    from dataclasses import replace

    from rxstreamer.sources.scrape import ScrapeRows

    if not isinstance(source, ScrapeRows):
        return None

    def read() -> dict[str, TargetStats]:
        return {
            target: replace(stats, failed_by_state=dict(stats.failed_by_state))
            for target, stats in list(source.target_stats.items())
        }

    return read


# --- the HTTP edge --------------------------------------------------------------------------------------


def router(metrics: WSGIApplication, health: Callable[[], Probe], ready: Callable[[], Probe]) -> WSGIApplication:
    """``/metrics`` to prometheus_client's app, ``/healthz`` and ``/readyz`` to the probes, 404 elsewhere."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            return metrics(environ, start_response)
        if path not in PATHS:
            return _text(start_response, "404 Not Found", f"not found; the paths are {', '.join(PATHS)}")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _text(start_response, "405 Method Not Allowed", "use GET", [("Allow", "GET, HEAD")])
        try:
            probe = health() if path == "/healthz" else ready()
        except Exception as error:  # a probe must answer, whatever happened to what it reads
            probe = Probe(False, f"the probe failed: {type(error).__name__}: {error}")
        status = "200 OK" if probe.ok else "503 Service Unavailable"
        body = _text(start_response, status, probe.reason)
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else body

    return app


def _text(
    start_response: StartResponse, status: str, line: str, headers: Sequence[tuple[str, str]] = ()
) -> list[bytes]:
    body = (line + "\n").encode()
    start_response(
        status,
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            *headers,
        ],
    )
    return [body]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged: a scrape every 15 s would fill the logs."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never holds the process open
    allow_reuse_address = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host's name up (socket.getfqdn), which can hang without DNS.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()


def _server_class(family: socket.AddressFamily) -> type[_Server]:
    return type("_Server", (_Server,), {"address_family": family})


class Endpoint:
    """The HTTP server of ``observability.listen``, on a daemon thread, until ``close``.

    It answers from the moment it listens: until ``attach`` gives it what to report, ``/healthz`` says
    "starting" (200), ``/readyz`` too (503), and ``/metrics`` has the process metrics only.
    """

    def __init__(self, server: _Server, registry: CollectorRegistry) -> None:
        self._server = server
        self.registry = registry
        self.port: int = server.server_port
        self._health: Callable[[], Probe] = lambda: Probe(True, "starting")
        self._ready: Callable[[], Probe] = lambda: Probe(False, "starting")
        server.set_app(router(make_wsgi_app(registry), self._answer_health, self._answer_ready))
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="rxstreamer-metrics", daemon=True
        )
        self._thread.start()
        self._closed = False

    def _answer_health(self) -> Probe:
        return self._health()  # looked up at each request: ``attach`` replaces it

    def _answer_ready(self) -> Probe:
        return self._ready()

    def attach(self, collector: Any, health: Callable[[], Probe], ready: Callable[[], Probe]) -> None:
        """Report ``collector``'s metrics and answer the probes with ``health`` and ``ready`` from now on."""
        self.registry.register(collector)
        self._health, self._ready = health, ready

    def linger(self, seconds: float, interrupted: Callable[[], bool]) -> None:
        """Keep serving ``seconds`` more (``observability.linger``), or until ``interrupted()`` (a stop signal)."""
        if seconds <= 0 or interrupted():
            return
        log.info("metrics.lingering", linger_s=seconds, port=self.port)
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0 and not interrupted():
            time.sleep(min(remaining, 0.05))

    def close(self) -> None:
        """Stop serving and release the port; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_endpoint(listen: str, setting: str = "observability.listen") -> Endpoint:
    """Listen on ``host:port`` (port 0 picks one) and serve; a bind failure is a ``ConfigError`` on ``setting``."""
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]")
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host or None, int(port_text), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        server = _server_class(family)((str(address[0]), int(address[1])), _QuietHandler)
    except (OSError, UnicodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ConfigError(setting, listen, f"cannot listen there: {reason}") from None
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    endpoint = Endpoint(server, registry)
    shown = f"[{host}]" if ":" in host else host or "0.0.0.0"
    log.info(
        "metrics.started",
        listen=listen,
        port=endpoint.port,
        url=f"http://{shown}:{endpoint.port}/metrics",
        paths=list(PATHS),
    )
    return endpoint
