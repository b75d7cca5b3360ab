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
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import structlog
from reactivex.abc import StartableBase
from reactivex.scheduler import EventLoopScheduler

from rxstreamer.checkpoint import (
    CheckpointedInput,
    Checkpointer,
    FileIdentity,
    InputFile,
    ResumePlan,
    ScrapedInput,
    check_writable,
    plan_resume,
    read_checkpoint,
)
from rxstreamer.config import ConfigError, Settings, require_readable_file, settings_summary
from rxstreamer.config.declared import TelemetrySettings
from rxstreamer.counts import Counts, PipelineCounters, RunCounts
from rxstreamer.encoding import BatchEncoder
from rxstreamer.model import Position, PublishAck, Rejection
from rxstreamer.operators import Operator
from rxstreamer.pipeline import build_pipeline, load_transforms
from rxstreamer.progress_line import start_progress_line
from rxstreamer.quarantine import Quarantine, RejectionReporter
from rxstreamer.queue_status import QueueStatus
from rxstreamer.retry import RetryPolicy
from rxstreamer.scaling import ScalingCounters, amplify, parse_shard, shard, skipping_other_shards
from rxstreamer.sinks import Sink, SinkAddressError, SinkOptions, open_sink, split_address
from rxstreamer.sinks.base import ResumePoint
from rxstreamer.sources import Source, format_of, open_source
from rxstreamer.sources.base import Live
from rxstreamer.sources.lines import LineSource

if TYPE_CHECKING:
    from rxstreamer.metrics import Endpoint, StreamerInstruments

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
    # With telemetry.amplify or telemetry.shard (logged only then), and the accounting reads
    # rows_read + rows_copied = rows_published + rows_rejected + rows_filtered + rows_in_other_shards + rows_in_flight.
    rows_copied: int = 0
    rows_in_other_shards: int = 0
    # With telemetry.pace = "original" (logged only then): rows sent at once for being out of time order, and
    # the seconds the replay fell behind the recording's schedule (the queue or this process too slow for it).
    rows_out_of_order: int = 0
    behind_schedule_s: float = 0.0

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


class _PipelineThread:
    """Makes the pipeline's event-loop thread; an exception that escapes the loop ends the run, not the thread.

    Every callback of the pipeline is meant to turn its exceptions into the stream's ``on_error``; this is
    the net under that, for one that does not: without it the thread would die silently, the main thread
    would wait forever, and a supervisor's SIGTERM would then look like a clean stop.
    """

    def __init__(self, on_crash: Callable[[Exception], None]) -> None:
        self._on_crash = on_crash
        self._thread: threading.Thread | None = None

    def __call__(self, target: Callable[[], None]) -> StartableBase:
        def run() -> None:
            try:
                target()
            except Exception as error:
                log.debug("streamer.pipeline_thread_crashed", exc_info=error)
                self._on_crash(error)

        self._thread = threading.Thread(target=run, name="rxstreamer-pipeline", daemon=True)
        return cast(StartableBase, self._thread)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


class _OffsetWatch:
    """Warns once when the queue hands out offsets lower than before: it restarted without its data.

    An in-memory broker that restarts forgets what it held and which batches it had, so the streamer cannot
    prevent the loss; it can say that it happened, which is what an operator needs to know.
    """

    def __init__(self, address: str) -> None:
        self._address = address
        self._last: int | None = None
        self._warned = False

    def __call__(self, ack: PublishAck) -> None:
        if ack.duplicate:
            return  # a duplicate is answered with the offset it was first stored at: older by nature
        if self._last is not None and ack.offset <= self._last and not self._warned:
            self._warned = True
            log.warning(
                "mq.offsets_went_back",
                address=self._address,
                previous_offset=self._last,
                offset=ack.offset,
                sequence=ack.sequence,
                meaning="the queue restarted without its data: what it held before is lost (an in-memory broker)",
            )
        self._last = ack.offset


def _each(*listeners: Callable[[PublishAck], None] | None) -> Callable[[PublishAck], None]:
    present = [listener for listener in listeners if listener is not None]

    def tell_each(ack: PublishAck) -> None:
        for listener in present:
            listener(ack)

    return tell_each


#: How batches are cut besides every ``batch_size`` rows: at each timestamp (``pace = "original"``), or one
#: per scrape of one host (``batch_by = "scrape"``, which cuts at each timestamp too).
BatchCut = Literal["", "time", "scrape"]


def batch_cut(telemetry: TelemetrySettings) -> BatchCut:
    """What besides the count cuts this run's batches, for its producer id."""
    if telemetry.batch_by == "scrape":
        return "scrape"
    return "time" if telemetry.pace == "original" else ""


def derive_producer_id(
    instance: str,
    metrics_path: Path,
    file: FileIdentity,
    batch_size: int,
    *,
    amplify: int = 1,
    shard: str = "",
    cut: BatchCut = "",
) -> str:
    """A producer id that stays the same across restarts of the same stream, and only of the same stream.

    The queue deduplicates by (producer id, sequence), and a sequence names the same rows only for the same
    file content cut into batches of the same size; so both are part of the id. The content enters as
    ``file.head``, a hash of the header line and the first data line, not of the whole file or its first
    64 KiB: a file that grows by appends is still the same stream (its checkpoint resumes it, and its old
    batches keep their identity), and that must hold for a small file too, whose first 64 KiB grow with it.
    The first record of a DCGM export carries its first timestamp, GPU UUID and host, which is what tells
    two exports apart. (A file with no complete data line yet gets another id once it has one.)

    ``cut``, ``amplify`` and ``shard`` change what the batches hold, so they are part of it too, when not the
    default (``:scrape``, ``:x3``, ``:shard0of3``): replayed at its own cadence or cut per scrape, the same file
    is another stream, not one whose batches came back different; each shard is a producer of its own, with a
    checkpoint of its own.
    """
    base = f"{instance or socket.gethostname()}:{metrics_path.name}:{file.head[:12]}:b{batch_size}"
    return _scaled_id(base + (f":{cut}" if cut else ""), amplify, shard)


def _scaled_id(producer_id: str, amplify: int, shard: str) -> str:
    return producer_id + (f":x{amplify}" if amplify != 1 else "") + _shard_suffix(shard)


def _shard_suffix(shard: str) -> str:
    """Appended to any producer id, an explicit one too: N shards under one id would clash at the queue."""
    parsed = parse_shard(shard)
    return f":shard{parsed[0]}of{parsed[1]}" if parsed is not None else ""


class _ProgressRate:
    """Rows published per second since the last progress line (the first: since the stream started)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._at = clock()
        self._rows = 0

    def __call__(self, rows_published: int) -> float:
        now = self._clock()
        elapsed, published = now - self._at, rows_published - self._rows
        self._at, self._rows = now, rows_published
        return round(published / elapsed, 1) if elapsed > 0 else 0.0


@dataclass(frozen=True)
class _Plan:
    """Everything decided before the stream starts: what to read, from where, under which identity."""

    rows: Source
    encoder: BatchEncoder
    transforms: list[Operator]
    checkpointer: Checkpointer | None
    reporter: RejectionReporter
    quarantine: Quarantine | None
    resume: ResumePoint | None  # the checkpoint resumed from, for a sink that looks for batches stored after it
    progress_rate: _ProgressRate = field(default_factory=_ProgressRate)  # for streamer.progress
    scaling: ScalingCounters | None = None  # with telemetry.amplify or telemetry.shard: what they added and left
    replaying: bool = False  # telemetry.pace = "original": the replay's own counts are reported


@dataclass(frozen=True)
class _Input:
    """What the stream reads, as its checkpoints and its producer id see it, and how to open it at a position."""

    checkpointed: CheckpointedInput
    producer_id: str
    open: Callable[[Position | None, Callable[[Rejection], None]], Source]
    live: bool  # a batch lost in flight cannot be read again: its sequence is skipped on resume


def _plan(settings: Settings, transforms: Sequence[Operator]) -> _Plan:
    """Check the input, the transforms, the checkpoint and the quarantine, and decide where to start.

    Raises on any problem, before anything is sent.
    """
    telemetry = settings.telemetry
    scaling, scaling_operators = _scaling(settings)
    source = telemetry.metrics_path
    read = _scraped_input(settings, source) if isinstance(source, tuple) else _file_input(settings, source)
    resume = _resume_plan(settings, read.checkpointed, read.producer_id, live=read.live)
    reporter = RejectionReporter(
        in_full=settings.logging.rejected_rows_in_full, interval=settings.logging.progress_interval
    )
    quarantine = _open_quarantine(telemetry.rejected_path)
    rows = read.open(resume.start, _fan_out(reporter, quarantine))
    rows.check()
    shard_of_rows = parse_shard(telemetry.shard)
    if scaling is not None and shard_of_rows is not None and isinstance(rows, LineSource):
        rows.skip_uuids(*skipping_other_shards(*shard_of_rows, telemetry.amplify, scaling))
    checkpointer = None
    if telemetry.checkpoint_path is not None:
        checkpointer = Checkpointer(
            telemetry.checkpoint_path,
            producer_id=read.producer_id,
            batch_size=telemetry.batch_size,
            file=read.checkpointed,
            before=resume.before,
        )
    encoding = settings.message_queue.encoding
    encoder = BatchEncoder(
        read.producer_id, timestamps=telemetry.timestamps, first_sequence=resume.first_sequence, encoding=encoding
    )
    if settings.observability.listen:  # the endpoint also reports how old the newest acknowledged row is
        from rxstreamer.metrics import RowTimesEncoder

        encoder = RowTimesEncoder(
            read.producer_id,
            timestamps=telemetry.timestamps,
            first_sequence=resume.first_sequence,
            per_gpu_max=settings.observability.per_gpu_max,
            encoding=encoding,
        )
    all_transforms = [*scaling_operators, *load_transforms(telemetry.transforms), *transforms]
    before = resume.before
    point = None
    if before is not None and before.producer_id == read.producer_id and before.written_at:
        point = ResumePoint(before.producer_id, before.sequence, datetime.fromisoformat(before.written_at))
    return _Plan(
        rows,
        encoder,
        all_transforms,
        checkpointer,
        reporter,
        quarantine,
        point,
        scaling=scaling,
        replaying=telemetry.pace == "original",
    )


def _scaling(settings: Settings) -> tuple[ScalingCounters | None, list[Operator]]:
    """``amplify`` then ``shard`` (rxstreamer.scaling), first among the row operators, with their counters.

    Amplify before shard, so that the copies of one GPU spread over the shards like real GPUs; both before
    your transforms, so that they see the virtual GPUs, and each shard's transforms only its own.

    Amplification is refused with a checkpoint: a batch can end between two copies of one row, and a
    checkpoint's position names a place in the file, not a copy, so a resume would lose the copies after it.
    """
    telemetry = settings.telemetry
    parsed = parse_shard(telemetry.shard)
    if telemetry.amplify == 1 and parsed is None:
        return None, []
    if telemetry.amplify > 1 and telemetry.checkpoint_path is not None:
        raise ConfigError(
            "telemetry.amplify",
            telemetry.amplify,
            "cannot be used with telemetry.checkpoint_path: a batch can end between the copies of one row, which "
            "a checkpoint cannot resume; amplify without a checkpoint (a replay is recognised as duplicates)",
        )
    counters = ScalingCounters()
    operators: list[Operator] = []
    if telemetry.amplify > 1:
        operators.append(amplify(telemetry.amplify, counters))
    if parsed is not None:
        operators.append(shard(*parsed, counters=counters))
    return counters, operators


def _file_input(settings: Settings, path: Path) -> _Input:
    """A file: checked before the checkpoint is touched, its producer id derived from its first record."""
    telemetry = settings.telemetry
    require_readable_file("telemetry.metrics_path", path)
    source_format = format_of(path, telemetry.format)
    try:
        input_file = InputFile(path)
        file = input_file.identity()
    except OSError as error:
        raise ConfigError("telemetry.metrics_path", path, f"cannot be read: {error.strerror or error}") from error
    explicit = settings.message_queue.producer_id
    producer_id = (explicit and explicit + _shard_suffix(telemetry.shard)) or derive_producer_id(
        telemetry.instance,
        path,
        file,
        telemetry.batch_size,
        amplify=telemetry.amplify,
        shard=telemetry.shard,
        cut=batch_cut(telemetry),
    )

    def open_file(start: Position | None, on_reject: Callable[[Rejection], None]) -> Source:
        return open_source(
            path,
            source_format,
            loop=telemetry.loop,
            on_reject=on_reject,
            start=start,
            max_field_size=telemetry.max_field_size,
            sentinels=telemetry.dcgm_sentinels,
        )

    return _Input(input_file, producer_id, open_file, live=False)


def _scraped_input(settings: Settings, targets: tuple[str, ...]) -> _Input:
    """Live endpoints: identified by the set of targets, positioned by scrape slots (rxstreamer.sources.scrape)."""
    from rxstreamer.sources.scrape import ScrapeRows, targets_digest

    telemetry = settings.telemetry
    if telemetry.format not in ("auto", "prometheus"):
        raise ConfigError("telemetry.format", telemetry.format, "endpoints are scraped as prometheus text")
    if telemetry.pace == "original":
        raise ConfigError(
            "telemetry.pace", telemetry.pace, "replays a recording at its own cadence; live endpoints have no recording"
        )
    digest = targets_digest(targets)
    explicit = settings.message_queue.producer_id
    producer_id = (explicit and explicit + _shard_suffix(telemetry.shard)) or _scaled_id(
        f"{telemetry.instance or socket.gethostname()}:scrape:{digest[:12]}:b{telemetry.batch_size}",
        telemetry.amplify,
        telemetry.shard,
    )
    interval = telemetry.scrape_interval
    checkpointed = ScrapedInput(", ".join(targets), digest, lambda: int(time.time() // interval))

    def open_scrape(start: Position | None, on_reject: Callable[[Rejection], None]) -> Source:
        return ScrapeRows(
            targets,
            interval=interval,
            timeout=telemetry.scrape_timeout or interval,
            on_reject=on_reject,
            start=start,
            max_field_size=telemetry.max_field_size,
            sentinels=telemetry.dcgm_sentinels,
        )

    return _Input(checkpointed, producer_id, open_scrape, live=True)


def _resume_plan(settings: Settings, file: CheckpointedInput, producer_id: str, *, live: bool) -> ResumePlan:
    """Where to start, from the checkpoint; first making sure checkpoints can be written at all.

    The write check comes first because a checkpoint that cannot be written is otherwise found only after
    the first batch was published, which is too late for the exit status 2 of a bad setting. A live input
    skips one sequence: the batch in flight when the last run stopped may be stored without its ack having
    arrived, and it cannot be read again, so its number must not name other rows. Without a checkpoint, a
    live input numbers its batches from the clock (microseconds since the epoch): its producer id is the
    same on every restart, and what it reads is new, so starting from 1 again would clash with what the
    queue already holds under those numbers.
    """
    path = settings.telemetry.checkpoint_path
    if path is None:
        return ResumePlan(start=None, first_sequence=_clock_sequence() if live else 1)
    check_writable(path)
    plan = plan_resume(
        read_checkpoint(path),
        file=file,
        producer_id=producer_id,
        batch_size=settings.telemetry.batch_size,
        start_over=settings.telemetry.start_over,
        checkpoint_path=path,
    )
    if live and plan.before is not None:
        plan = replace(plan, first_sequence=plan.first_sequence + 1)
    elif live:  # no checkpoint to continue from: number from the clock, so no restart reuses a sequence
        plan = replace(plan, first_sequence=max(plan.first_sequence, _clock_sequence()))
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
            file_size_at_checkpoint=plan.before.file.size,
            file_size=plan.size_now,
        )
    return plan


def _clock_sequence() -> int:
    """Microseconds since the epoch: larger than any sequence an earlier run of a live input could reach."""
    return time.time_ns() // 1000


def _open_quarantine(path: Path | None) -> Quarantine | None:
    """Open the quarantine before streaming: a path that cannot take even the header fails the start (exit 2)."""
    if path is None:
        return None
    quarantine = Quarantine(path)
    try:
        quarantine.open()
    except OSError as error:
        raise ConfigError(
            "telemetry.rejected_path", str(path), f"cannot be appended to: {error.strerror or error}"
        ) from error
    return quarantine


def _fan_out(*listeners: Callable[[Rejection], None] | None) -> Callable[[Rejection], None]:
    """One ``on_reject`` that tells each listener in turn, letting their exceptions through on purpose.

    It runs inside the source's row iterator, so an exception (a quarantine that cannot be written)
    becomes the iterator's error and ends the stream with reason ``error``: rows the operator asked to
    keep are never dropped silently.
    """
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
    stop_signal: Callable[[], str | None] | None = None,
) -> RunSummary:
    """Stream until the file ends, the pipeline fails, or ``stop`` is set (by a signal handler, say).

    ``stop_signal`` names what set ``stop``, for the ``streamer.stopping`` line.

    Raises ConfigError, SourceError, TransformError or CheckpointError before anything starts when the
    settings, the file, a transform or the checkpoint is unusable; every later failure ends up in the summary.
    """
    telemetry, queue = settings.telemetry, settings.message_queue
    try:
        split_address(queue.address)  # an address no sink serves is a bad setting, refused before anything starts
    except SinkAddressError as error:
        raise ConfigError("message_queue.address", queue.address, str(error)) from error
    plan = _plan(settings, transforms)

    wake = stop if stop is not None else threading.Event()
    started = time.monotonic()
    outcome = _Outcome(wake)
    pipeline_thread = _PipelineThread(outcome.on_error)
    scheduler = EventLoopScheduler(thread_factory=pipeline_thread)
    status = QueueStatus(queue.address, alert_after=queue.unreachable_alert_after)
    endpoint = _start_endpoint(settings)  # before the sink: an address in use stops the start, nothing opened
    sink = _open_sink(
        queue.address,
        queue.topic,
        SinkOptions(
            timeout=queue.publish_timeout,
            scheduler=scheduler,
            on_connectivity=status.connectivity,
            background=queue.publish_in_background,
            settings=queue,
            resume=plan.resume,
        ),
        endpoint,
    )
    # Logged once the sink is open (its module imported, its channel made): from here on, time is streaming.
    log.info("streamer.started", **started_fields(settings, plan.encoder.producer_id))
    log.debug("streamer.settings", **settings_summary(settings))
    if telemetry.loop and telemetry.timestamps == "original":
        log.warning(
            "streamer.loop_repeats_timestamps",
            meaning="each pass re-sends the file's own timestamps: downstream will see the same times repeated",
            fix="--timestamps processing stamps rows with the time they are published",
        )
    retry = RetryPolicy(
        initial_backoff=queue.retry.initial_backoff,
        max_backoff=queue.retry.max_backoff,
        multiplier=queue.retry.multiplier,
        max_attempts=queue.retry.max_attempts,
        max_retry_time=queue.max_retry_time,
    )
    counters = PipelineCounters()
    instruments = _instruments(endpoint, sink, scheduler, plan.encoder)  # None without the endpoint
    pipeline = build_pipeline(
        plan.rows,
        sink if instruments is None else instruments.publisher,
        plan.encoder,
        batch_size=telemetry.batch_size,
        interval=telemetry.stream_interval,
        retry=retry,
        # A live source's read waits for the next scrape: read ahead, it would hold the acks back until then.
        read_ahead=0 if isinstance(plan.rows, Live) else telemetry.read_ahead,
        transforms=plan.transforms,
        scheduler=scheduler if instruments is None else instruments.scheduler,
        on_retry=status.retry,
        on_ack=_each(
            status.acked,
            _OffsetWatch(queue.address),
            plan.checkpointer,
            None if instruments is None else instruments.on_ack,
        ),
        counters=counters,
        speed=telemetry.speed if telemetry.pace == "original" else None,
        by_scrape=telemetry.batch_by == "scrape",
    )
    counts = RunCounts(plan.rows, counters, sink, plan.scaling)
    subscription = pipeline.subscribe(outcome.on_next, outcome.on_error, outcome.on_completed)
    _report_run(endpoint, instruments, settings, plan, sink, counts, status, pipeline_thread, outcome)
    progress_line = start_progress_line(settings, plan.rows, counts.now)  # only for a person at a terminal

    while not wake.wait(settings.logging.progress_interval):
        status.tick()
        _log_progress(plan, counts.now())
    progress_line.stop()  # erased before the stopping and stopped lines

    reason: StopReason
    if outcome.finished:
        reason = "error" if outcome.error is not None else "completed"
    else:
        reason = "signal"
        status.stopping = True  # the publish in flight may still fail: its retry is cancelled, not announced
        if isinstance(plan.rows, Live):
            plan.rows.interrupt()  # a source waiting for its next scrape would hold the pipeline thread
        log.info(
            "streamer.stopping",
            signal=stop_signal() if stop_signal is not None else None,
            timeout_s=settings.shutdown.timeout,
            in_flight=sink.in_flight,
        )
    _shut_down(subscription.dispose, sink, scheduler, settings.shutdown.timeout, pipeline_thread)
    plan.reporter.flush()
    if plan.quarantine is not None:
        plan.quarantine.close()
    summary = _summary(reason, counts.now(), time.monotonic() - started, outcome.error)
    _log_summary(summary, plan)
    _close_endpoint(endpoint, settings.observability.linger, reason, stop_signal)
    return summary


def _open_sink(address: str, topic: str, options: SinkOptions, endpoint: Endpoint | None = None) -> Sink:
    """The sink; when it cannot be opened the run does not start, and ``endpoint`` (metrics) is closed."""
    try:
        return open_sink(address, topic, options)
    except BaseException as error:
        if endpoint is not None:
            endpoint.close()
        if isinstance(error, SinkAddressError):  # a sink whose extra is not installed: a setting it cannot serve
            raise ConfigError("message_queue.address", address, str(error)) from error
        raise


def _start_endpoint(settings: Settings) -> Endpoint | None:
    """The endpoint of ``observability.listen`` when it is set; an address it cannot take is a bad setting."""
    if not settings.observability.listen:
        return None
    from rxstreamer.metrics import start_endpoint  # imports prometheus_client: only when the endpoint is on

    return start_endpoint(settings.observability.listen)


def _instruments(
    endpoint: Endpoint | None, sink: Sink, scheduler: EventLoopScheduler, encoder: BatchEncoder
) -> StreamerInstruments | None:
    """With the endpoint: the sink and the scheduler the pipeline is given, timing publishes and ticks."""
    if endpoint is None:
        return None
    from rxstreamer.metrics import StreamerInstruments

    return StreamerInstruments.around(sink, scheduler, encoder)


def _report_run(  # noqa: PLR0917 - a private helper reading what run_streamer holds
    endpoint: Endpoint | None,
    instruments: StreamerInstruments | None,
    settings: Settings,
    plan: _Plan,
    sink: Sink,
    counts: RunCounts,
    status: QueueStatus,
    thread: _PipelineThread,
    outcome: _Outcome,
) -> None:
    """Serve this run's metrics and probes (with the endpoint): the counts of the summary, read live, and its state."""
    if endpoint is None or instruments is None:
        return
    from rxstreamer.metrics import RunState, StreamerCollector, StreamerView, liveness, readiness, scrape_targets
    from rxstreamer.metrics import stall_after as stall_after_for

    stall_after = stall_after_for(settings.telemetry.stream_interval)
    checkpointer = plan.checkpointer

    def state() -> RunState:
        return RunState(
            pipeline_alive=thread.alive,
            ended=_ended(outcome),
            queue_reachable=status.reachable,
            waiting_s=instruments.publisher.waiting_for(),
            stall_after=stall_after,
        )

    view = StreamerView(
        counts=counts.now,
        publishes=instruments.publisher,
        ticks=instruments.scheduler,
        batches_in_flight=lambda: sink.in_flight,
        queue_reachable=lambda: status.reachable,
        checkpoint_sequence=lambda: checkpointer.last.sequence if checkpointer and checkpointer.last else None,
        row_times=instruments.row_times,
        targets=scrape_targets(plan.rows),
    )
    endpoint.attach(StreamerCollector(view), lambda: liveness(state()), lambda: readiness(state()))


def _ended(outcome: _Outcome) -> str | None:
    """None while the run streams; how it ends once it does (the probes' words)."""
    if outcome.finished:
        return "completed" if outcome.error is None else f"failed: {describe_error(outcome.error)}"
    return "stopping" if outcome.wake.is_set() else None


def _close_endpoint(
    endpoint: Endpoint | None, linger: float, reason: StopReason, stop_signal: Callable[[], str | None] | None
) -> None:
    """After a run that ended by itself, serve ``observability.linger`` more (a stop signal cuts it), then stop."""
    if endpoint is None:
        return
    if reason != "signal":
        endpoint.linger(linger, lambda: stop_signal is not None and stop_signal() is not None)
    endpoint.close()


def started_fields(settings: Settings, producer_id: str) -> dict[str, object]:
    """What ``streamer.started`` shows: the settings this command uses, most telling first.

    The source, then where it goes and as whom, then how; optional features only when on. The broker's
    settings (and every other one) are in the ``streamer.settings`` line, at debug level.
    """
    telemetry, shown = settings.telemetry, settings_summary(settings)
    names = [
        "telemetry.metrics_path",
        "telemetry.format",
        "message_queue.address",
        "message_queue.topic",
        "producer_id",
        "telemetry.batch_size",
        "telemetry.stream_interval",
        "telemetry.loop",
        "telemetry.timestamps",
    ]
    if isinstance(telemetry.metrics_path, tuple):
        names[2:2] = ["telemetry.scrape_interval", "telemetry.scrape_timeout"]
    if telemetry.checkpoint_path is not None:
        names.append("telemetry.checkpoint_path")
    if telemetry.rejected_path is not None:
        names.append("telemetry.rejected_path")
    if telemetry.read_ahead != 1:
        names.append("telemetry.read_ahead")
    if telemetry.amplify != 1:
        names.append("telemetry.amplify")
    if telemetry.shard:
        names.append("telemetry.shard")
    return {name: producer_id if name == "producer_id" else shown[name] for name in names}


def _log_progress(plan: _Plan, counts: Counts) -> None:
    plan.reporter.flush()
    scaled: dict[str, object] = {}
    if plan.scaling is not None:
        scaled = {"rows_copied": counts.rows_copied, "rows_in_other_shards": counts.rows_in_other_shards}
    if plan.replaying:
        scaled.update(rows_out_of_order=counts.rows_out_of_order, behind_schedule_s=counts.behind_schedule_s)
    log.info(
        "streamer.progress",
        rows_read=counts.rows_read,
        rows_rejected=counts.rows_rejected,
        batches_published=counts.batches_published,
        rows_published=counts.rows_published,
        rows_per_s=plan.progress_rate(counts.rows_published),
        **scaled,
    )


def _summary(reason: StopReason, counts: Counts, duration: float, error: BaseException | None) -> RunSummary:
    return RunSummary(
        reason=reason,
        rows_read=counts.rows_read,
        rows_rejected=counts.rows_rejected,
        rows_filtered=counts.rows_filtered,
        rows_in_flight=counts.rows_in_flight,
        batches_published=counts.batches_published,
        rows_published=counts.rows_published,
        duplicates=counts.duplicates,
        rejected_by_reason=counts.rejected_by_reason,
        duration_s=round(duration, 3),
        error=describe_error(error) if error is not None else None,
        rows_copied=counts.rows_copied,
        rows_in_other_shards=counts.rows_in_other_shards,
        rows_out_of_order=counts.rows_out_of_order,
        behind_schedule_s=counts.behind_schedule_s,
    )


def describe_error(error: BaseException) -> str:
    """One line for the summary: our own errors say what happened; anything else also says what it is."""
    if type(error).__module__.startswith("rxstreamer."):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _log_summary(summary: RunSummary, plan: _Plan) -> None:
    fields = asdict(summary)
    if plan.checkpointer is not None and plan.checkpointer.last is not None:
        fields["checkpoint_sequence"] = plan.checkpointer.last.sequence
    if plan.quarantine is not None:
        fields["quarantined"] = plan.quarantine.written
    if plan.scaling is None:  # neither amplify nor shard: both are 0, and the line stays as it always was
        del fields["rows_copied"], fields["rows_in_other_shards"]
    if not plan.replaying:
        del fields["rows_out_of_order"], fields["behind_schedule_s"]
    if summary.error is None:
        del fields["error"]
        log.info("streamer.stopped", **fields)
    else:
        log.error("streamer.stopped", **fields)


def _shut_down(
    dispose: Callable[[], None],
    sink: Sink,
    scheduler: EventLoopScheduler,
    timeout: float,
    pipeline_thread: _PipelineThread,
) -> None:
    """Dispose on the pipeline thread, let the publish in flight end, close the sink, stop the thread."""
    deadline = time.monotonic() + timeout
    disposed = threading.Event()

    def dispose_on_pipeline_thread(*_: object) -> None:
        dispose()
        disposed.set()

    if pipeline_thread.alive:
        scheduler.schedule(dispose_on_pipeline_thread)
    else:  # it crashed: nothing else runs the pipeline any more, so this thread may dispose it
        dispose_on_pipeline_thread()
    if not disposed.wait(max(deadline - time.monotonic(), 0)):
        log.warning("streamer.dispose_timeout", timeout_s=timeout)
    if not sink.wait_idle(max(deadline - time.monotonic(), 0)):
        log.warning("streamer.publish_cut", in_flight=sink.in_flight, timeout_s=timeout)
    sink.close()
    scheduler.dispose()
