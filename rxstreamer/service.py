"""One run of the streamer as a service: start the pipeline, watch it, stop it cleanly.

Shutdown is disposal. A stop request disposes the subscription on the pipeline's own thread, between
two publishes, so the ticks and any retry timer are cancelled and no new batch starts. The publish
already on the wire is waited for (within ``shutdown.timeout``) and counted, then the channel is closed,
then the scheduler. That order matters: closing the channel first would cut the call in flight.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import structlog
from reactivex.scheduler import EventLoopScheduler

from rxstreamer.checkpoint import Checkpointer, FileIdentity, ResumePlan, plan_resume, read_checkpoint
from rxstreamer.config import ConfigError, Settings, require_readable_file, settings_summary
from rxstreamer.encoding import BatchEncoder
from rxstreamer.grpc_publisher import GrpcPublisher
from rxstreamer.model import EncodedBatch, PublishAck, Rejection
from rxstreamer.operators import Operator
from rxstreamer.pipeline import PipelineCounters, build_pipeline, load_transforms
from rxstreamer.publisher import PublishStats
from rxstreamer.quarantine import Quarantine, RejectionReporter
from rxstreamer.retry import PublishError, RetryPolicy
from rxstreamer.source import CsvRows

log = structlog.get_logger()

StopReason = Literal["completed", "signal", "error"]


@dataclass(frozen=True)
class RunSummary:
    """What a run did, as logged in ``streamer.stopped``.

    Every row read is accounted for: ``rows_read = rows_published + rows_rejected + rows_filtered +
    rows_in_flight``, where filtered rows are those your transforms dropped and rows in flight were read
    but not acknowledged when the run stopped (zero when the file was streamed to its end).
    """

    reason: StopReason
    rows_read: int
    rows_rejected: int
    rows_filtered: int
    rows_in_flight: int
    batches_published: int
    rows_published: int
    duplicates: int
    rejected_by_reason: dict[str, int]
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


def derive_producer_id(instance: str, metrics_path: Path, file: FileIdentity, batch_size: int) -> str:
    """A producer id that stays the same across restarts of the same stream, and only of the same stream.

    The queue deduplicates by (producer id, sequence), and a sequence names the same rows only for the same
    file content cut into batches of the same size; so both are part of the id.
    """
    return f"{instance or socket.gethostname()}:{metrics_path.name}:{file.fingerprint[:12]}:b{batch_size}"


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


@dataclass(frozen=True)
class _Plan:
    """Everything decided before the stream starts: what to read, from where, under which identity."""

    rows: CsvRows
    encoder: BatchEncoder
    transforms: list[Operator]
    checkpointer: Checkpointer | None
    reporter: RejectionReporter
    quarantine: Quarantine | None


def _plan(settings: Settings, transforms: Sequence[Operator]) -> _Plan:
    """Check the file, the transforms, the checkpoint and the quarantine, and decide where to start.

    Raises on any problem, before anything is sent.
    """
    telemetry, queue = settings.telemetry, settings.message_queue
    require_readable_file("telemetry.metrics_path", telemetry.metrics_path)
    file = FileIdentity.of(telemetry.metrics_path)
    producer_id = queue.producer_id or derive_producer_id(
        telemetry.instance, telemetry.metrics_path, file, telemetry.batch_size
    )
    resume = _resume_plan(settings, file, producer_id)
    reporter = RejectionReporter(
        in_full=settings.logging.rejected_rows_in_full, interval=settings.logging.progress_interval
    )
    quarantine = _open_quarantine(telemetry.rejected_path)
    rows = CsvRows(
        telemetry.metrics_path,
        loop=telemetry.loop,
        on_reject=_fan_out(reporter, quarantine),
        start=resume.start,
        max_field_size=telemetry.max_field_size,
        sentinels=telemetry.dcgm_sentinels,
    )
    rows.check()
    checkpointer = None
    if telemetry.checkpoint_path is not None:
        checkpointer = Checkpointer(
            telemetry.checkpoint_path,
            producer_id=producer_id,
            batch_size=telemetry.batch_size,
            file=file,
            source_stats=rows.stats,
            before=resume.before,
        )
    encoder = BatchEncoder(producer_id, timestamps=telemetry.timestamps, first_sequence=resume.first_sequence)
    all_transforms = [*load_transforms(telemetry.transforms), *transforms]
    return _Plan(rows, encoder, all_transforms, checkpointer, reporter, quarantine)


def _resume_plan(settings: Settings, file: FileIdentity, producer_id: str) -> ResumePlan:
    path = settings.telemetry.checkpoint_path
    if path is None:
        return ResumePlan(start=None, first_sequence=1)
    plan = plan_resume(
        read_checkpoint(path),
        file=file,
        producer_id=producer_id,
        batch_size=settings.telemetry.batch_size,
        start_over=settings.telemetry.start_over,
        checkpoint_path=path,
    )
    if plan.ignored_because is not None:
        log.warning("streamer.checkpoint_ignored", path=str(path), reason=plan.ignored_because)
    elif plan.start is not None and plan.before is not None:
        log.info(
            "streamer.resumed",
            path=str(path),
            next_sequence=plan.first_sequence,
            line=plan.start.line + 1,
            offset=plan.start.offset,
            pass_number=plan.start.pass_number,
            rows_published_before=plan.before.rows_published,
        )
    return plan


def _open_quarantine(path: Path | None) -> Quarantine | None:
    if path is None:
        return None
    quarantine = Quarantine(path)
    try:
        quarantine.open()
    except OSError as error:
        raise ConfigError(
            "telemetry.rejected_path", str(path), f"cannot be opened for appending: {error.strerror}"
        ) from error
    return quarantine


def _fan_out(*listeners: Callable[[Rejection], None] | None) -> Callable[[Rejection], None]:
    present = [listener for listener in listeners if listener is not None]

    def tell_all(rejection: Rejection) -> None:
        for listener in present:
            listener(rejection)

    return tell_all


def run_streamer(
    settings: Settings,
    *,
    transforms: Sequence[Operator] = (),
    stop: threading.Event | None = None,
) -> RunSummary:
    """Stream until the file ends, the pipeline fails, or ``stop`` is set (by a signal handler, say).

    Raises ConfigError, SourceError, TransformError or CheckpointError before anything starts when the
    settings, the file, a transform or the checkpoint is unusable; every later failure ends up in the summary.
    """
    telemetry, queue = settings.telemetry, settings.message_queue
    plan = _plan(settings, transforms)
    log.info("streamer.started", producer_id=plan.encoder.producer_id, **settings_summary(settings))

    wake = stop if stop is not None else threading.Event()
    started = time.monotonic()
    scheduler = EventLoopScheduler()
    publisher = GrpcPublisher(
        queue.address,
        queue.topic,
        timeout=queue.publish_timeout,
        scheduler=scheduler,
        on_connectivity=_ConnectionWatch(queue.address),
        background=queue.publish_in_background,
    )
    retry = RetryPolicy(
        initial_backoff=queue.retry.initial_backoff,
        max_backoff=queue.retry.max_backoff,
        multiplier=queue.retry.multiplier,
        max_attempts=queue.retry.max_attempts,
        max_retry_time=queue.max_retry_time,
    )
    counters = PipelineCounters()
    pipeline = build_pipeline(
        plan.rows,
        publisher,
        plan.encoder,
        batch_size=telemetry.batch_size,
        interval=telemetry.stream_interval,
        retry=retry,
        read_ahead=telemetry.read_ahead,
        transforms=plan.transforms,
        scheduler=scheduler,
        on_retry=_log_retry,
        on_ack=plan.checkpointer,
        counters=counters,
    )
    outcome = _Outcome(wake)
    subscription = pipeline.subscribe(outcome.on_next, outcome.on_error, outcome.on_completed)

    while not wake.wait(settings.logging.progress_interval):
        _log_progress(plan, publisher.stats)

    reason: StopReason
    if outcome.finished:
        reason = "error" if outcome.error is not None else "completed"
    else:
        reason = "signal"
        log.info("streamer.stopping", timeout_s=settings.shutdown.timeout, in_flight=publisher.in_flight)
    _shut_down(subscription.dispose, publisher, scheduler, settings.shutdown.timeout)
    plan.reporter.flush()
    if plan.quarantine is not None:
        plan.quarantine.close()
    summary = _summary(
        reason,
        plan=plan,
        published=publisher.stats,
        counters=counters,
        duration=time.monotonic() - started,
        error=outcome.error,
    )
    _log_summary(summary, plan)
    return summary


def _log_progress(plan: _Plan, published: PublishStats) -> None:
    plan.reporter.flush()
    log.info(
        "streamer.progress",
        rows_read=plan.rows.stats.rows_read,
        rows_rejected=plan.rows.stats.rows_rejected,
        batches_published=published.batches,
        rows_published=published.rows,
    )


def _summary(
    reason: StopReason,
    *,
    plan: _Plan,
    published: PublishStats,
    counters: PipelineCounters,
    duration: float,
    error: BaseException | None,
) -> RunSummary:
    source = plan.rows.stats
    return RunSummary(
        reason=reason,
        rows_read=source.rows_read,
        rows_rejected=source.rows_rejected,
        rows_filtered=source.rows_read - source.rows_rejected - counters.rows_batched,
        rows_in_flight=counters.rows_batched - published.rows,
        batches_published=published.batches,
        rows_published=published.rows,
        duplicates=published.duplicates,
        rejected_by_reason=dict(source.rejected_by_reason),
        duration_s=round(duration, 3),
        error=str(error) if error is not None else None,
    )


def _log_summary(summary: RunSummary, plan: _Plan) -> None:
    fields = asdict(summary)
    if plan.checkpointer is not None and plan.checkpointer.last is not None:
        fields["checkpoint_sequence"] = plan.checkpointer.last.sequence
    if plan.quarantine is not None:
        fields["quarantined"] = plan.quarantine.written
    if summary.error is None:
        del fields["error"]
        log.info("streamer.stopped", **fields)
    else:
        log.error("streamer.stopped", **fields)


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
