"""One run of the streamer as a service: start the pipeline, watch it, stop it cleanly.

Shutdown is disposal. A stop request disposes the subscription on the pipeline's own thread, between
two publishes, so the ticks and any retry timer are cancelled and no new batch starts. The publish
already on the wire is waited for (within ``shutdown.timeout``) and counted, then the channel is closed,
then the scheduler. That order matters: closing the channel first would cut the call in flight.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import structlog
from reactivex.scheduler import EventLoopScheduler

from rxstreamer.config import Settings, require_readable_file, settings_summary
from rxstreamer.encoding import BatchEncoder
from rxstreamer.grpc_publisher import GrpcPublisher
from rxstreamer.model import EncodedBatch, PublishAck, Rejection
from rxstreamer.operators import Operator
from rxstreamer.pipeline import build_pipeline, load_transforms
from rxstreamer.retry import PublishError, RetryPolicy
from rxstreamer.source import CsvRows

log = structlog.get_logger()

StopReason = Literal["completed", "signal", "error"]


@dataclass(frozen=True)
class RunSummary:
    """What a run did, as logged in ``streamer.stopped``."""

    reason: StopReason
    rows_read: int
    rows_rejected: int
    batches_published: int
    rows_published: int
    duplicates: int
    duration_s: float
    error: str | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.reason == "error" else 0


class _Outcome:
    """How the pipeline ended, written on the pipeline thread and read by the main thread."""

    def __init__(self, wake: threading.Event) -> None:
        self.wake = wake
        self.finished = False
        self.error: BaseException | None = None

    def on_next(self, ack: PublishAck) -> None:
        log.debug(
            "publisher.acked",
            sequence=ack.sequence,
            offset=ack.offset,
            rows=ack.rows,
            duplicate=ack.duplicate,
        )

    def on_error(self, error: BaseException) -> None:
        self.error = error
        self.finished = True
        self.wake.set()

    def on_completed(self) -> None:
        self.finished = True
        self.wake.set()


class _ConnectionWatch:
    """Logs when the queue becomes unreachable and when it is back: once each, not per reconnect try."""

    def __init__(self, address: str) -> None:
        self._address = address
        self._reachable: bool | None = None

    def __call__(self, state: str) -> None:
        if state == "READY":
            reachable = True
        elif state == "TRANSIENT_FAILURE":
            reachable = False
        else:
            return  # IDLE, CONNECTING: on the way to one of the two
        if reachable != self._reachable:
            self._reachable = reachable
            if reachable:
                log.info("mq.connected", address=self._address)
            else:
                log.warning("mq.unreachable", address=self._address)


def default_producer_id() -> str:
    """A producer id unique to this run, so that two runs never deduplicate each other's batches."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _log_rejection(rejection: Rejection) -> None:
    log.warning("row.rejected", line=rejection.line, reason=rejection.reason, detail=rejection.detail)


def _log_retry(batch: EncodedBatch, attempt: int, wait: float, error: BaseException) -> None:
    status = error.status if isinstance(error, PublishError) else type(error).__name__
    log.warning(
        "publisher.retry_scheduled",
        sequence=batch.sequence,
        attempt=attempt,
        wait_s=round(wait, 3),
        status=status,
        error=str(error),
    )


def run_streamer(
    settings: Settings,
    *,
    transforms: Sequence[Operator] = (),
    stop: threading.Event | None = None,
) -> RunSummary:
    """Stream until the file ends, the pipeline fails, or ``stop`` is set (by a signal handler, say).

    Raises ConfigError, SourceError or TransformError before anything starts when the settings, the file
    or a transform is unusable; every later failure ends up in the summary instead.
    """
    telemetry, queue = settings.telemetry, settings.message_queue
    require_readable_file("telemetry.metrics_path", telemetry.metrics_path)
    rows = CsvRows(telemetry.metrics_path, loop=telemetry.loop, on_reject=_log_rejection)
    rows.check()
    all_transforms = [*load_transforms(telemetry.transforms), *transforms]
    encoder = BatchEncoder(queue.producer_id or default_producer_id(), timestamps=telemetry.timestamps)
    log.info("streamer.started", producer_id=encoder.producer_id, **settings_summary(settings))

    wake = stop if stop is not None else threading.Event()
    started = time.monotonic()
    scheduler = EventLoopScheduler()
    publisher = GrpcPublisher(
        queue.address,
        queue.topic,
        timeout=queue.publish_timeout,
        scheduler=scheduler,
        on_connectivity=_ConnectionWatch(queue.address),
    )
    retry = RetryPolicy(
        initial_backoff=queue.retry.initial_backoff,
        max_backoff=queue.retry.max_backoff,
        multiplier=queue.retry.multiplier,
        max_attempts=queue.retry.max_attempts,
    )
    pipeline = build_pipeline(
        rows,
        publisher,
        encoder,
        batch_size=telemetry.batch_size,
        interval=telemetry.stream_interval,
        retry=retry,
        transforms=all_transforms,
        scheduler=scheduler,
        on_retry=_log_retry,
    )
    outcome = _Outcome(wake)
    subscription = pipeline.subscribe(outcome.on_next, outcome.on_error, outcome.on_completed)

    while not wake.wait(settings.logging.progress_interval):
        stats = publisher.stats
        log.info(
            "streamer.progress",
            rows_read=rows.stats.rows_read,
            rows_rejected=rows.stats.rows_rejected,
            batches_published=stats.batches,
            rows_published=stats.rows,
        )

    reason: StopReason
    if outcome.finished:
        reason = "error" if outcome.error is not None else "completed"
    else:
        reason = "signal"
        log.info("streamer.stopping", timeout_s=settings.shutdown.timeout, in_flight=publisher.in_flight)
    _shut_down(subscription.dispose, publisher, scheduler, settings.shutdown.timeout)

    stats = publisher.stats
    summary = RunSummary(
        reason=reason,
        rows_read=rows.stats.rows_read,
        rows_rejected=rows.stats.rows_rejected,
        batches_published=stats.batches,
        rows_published=stats.rows,
        duplicates=stats.duplicates,
        duration_s=round(time.monotonic() - started, 3),
        error=str(outcome.error) if outcome.error is not None else None,
    )
    fields = asdict(summary)
    if summary.error is None:
        del fields["error"]
        log.info("streamer.stopped", **fields)
    else:
        log.error("streamer.stopped", **fields)
    return summary


def _shut_down(
    dispose: Callable[[], None], publisher: GrpcPublisher, scheduler: EventLoopScheduler, timeout: float
) -> None:
    """Dispose on the pipeline thread, let the publish in flight end, close the channel, stop the thread."""
    deadline = time.monotonic() + timeout
    disposed = threading.Event()

    def dispose_on_pipeline_thread(*_: object) -> None:
        dispose()
        disposed.set()

    scheduler.schedule(dispose_on_pipeline_thread)
    if not disposed.wait(max(deadline - time.monotonic(), 0)):
        log.warning("streamer.dispose_timeout", timeout_s=timeout)
    if not publisher.wait_idle(max(deadline - time.monotonic(), 0)):
        log.warning("streamer.publish_cut", in_flight=publisher.in_flight, timeout_s=timeout)
    publisher.close()
    scheduler.dispose()
