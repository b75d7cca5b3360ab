"""``telemetry.workers = N``: one command, N shard processes, one summary and one exit status.

One streamer is one Python process, and its pipeline (parsing, encoding, gRPC) runs on one core at a time,
so a replay of a large recording is bound by one core. ``--workers N`` runs N worker processes instead, worker
i being ``python -m rxstreamer run`` with the user's own arguments, environment and working directory plus
``--shard i/N --workers 1 --log-format json``: exactly the streamer a user could start by hand for shard i,
with its own producer id, checkpoint and quarantine file. The supervisor is not on the data path at all. Its
one job, in this module: start the workers, forward SIGINT/SIGTERM to them, relay their log lines (each with
a ``worker`` field, in the user's log format), aggregate their progress, and end with one ``streamer.stopped``
summing theirs and one exit status.

A worker that dies (a non-zero exit, killed by a signal) is reported in one ``worker.failed`` line and the
others are stopped with SIGTERM, each finishing its publish in flight and writing its checkpoint; the workers
are not restarted. What kills a worker (a queue that refuses a batch for good, a checkpoint that cannot be
written, the out-of-memory killer) would most often kill it again, and a restart inside the command would
hide the failure from whatever runs the command (Kubernetes, systemd, a CI job), which already restarts with
back-off and a record. Since each worker keeps its own checkpoint, running the same command again resumes
every shard where it stopped, so a stop costs nothing but the restart.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import structlog

from rxstreamer.config import ConfigError, Settings, require_readable_file

__all__ = ["run_workers", "shard_path", "worker_command"]

log = structlog.get_logger()

# After a worker was asked to stop: beyond shutdown.timeout (its publish in flight), the time to close its
# channel, write its checkpoint and summary. A worker still running then is frozen or stuck: it is killed.
STOP_MARGIN_S = 10.0
# The counts of streamer.stopped (and streamer.progress) that add up across workers.
_SUMMED = (
    "rows_read",
    "rows_rejected",
    "rows_filtered",
    "rows_in_flight",
    "batches_published",
    "rows_published",
    "duplicates",
)
_PROGRESS = ("rows_read", "rows_rejected", "batches_published", "rows_published")
_SCALED = ("rows_copied", "rows_in_other_shards")  # in the workers' progress lines: each is a shard
# Fields of the workers' summaries that are no counts: not added up.
_NOT_COUNTS = frozenset({"duration_s", "checkpoint_sequence", "rows_per_s", "exit_code"})
# Fields that are no counts but a state of each worker, of which the worst is the command's: the latest.
_WORST = frozenset({"behind_schedule_s"})
_REPLAYED = ("rows_out_of_order", "behind_schedule_s")  # in the workers' progress lines with pace = "original"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def shard_path(path: Path, index: int, workers: int) -> Path:
    """Worker ``index``'s own file beside ``path``: ``checkpoint.json`` → ``checkpoint.shard-0-of-2.json``.

    Each worker is its own stream (its own producer id), so it needs its own checkpoint; the shard count is
    in the name because a checkpoint of shard 0 of 2 is not one of shard 0 of 4.
    """
    return path.with_name(f"{path.stem}.shard-{index}-of-{workers}{path.suffix}")


def worker_command(argv: Sequence[str], settings: Settings, index: int, workers: int) -> list[str]:
    """The command line of worker ``index``: the user's ``run`` arguments, then the flags that make it a shard.

    Later flags win in argparse, so the appended ones override what the user gave (``--workers N`` becomes
    ``--workers 1``, so the worker does not supervise in turn); every other setting reaches the worker the way
    it reached the supervisor (the same arguments, environment, settings file and working directory).
    """
    python = [sys.executable, *(["-P"] if sys.flags.safe_path else []), "-m", "rxstreamer", "run"]
    flags = ["--workers", "1", "--shard", f"{index}/{workers}", "--log-format", "json"]
    telemetry = settings.telemetry
    if telemetry.checkpoint_path is not None:
        flags += ["--checkpoint-path", str(shard_path(telemetry.checkpoint_path, index, workers))]
    if telemetry.rejected_path is not None:
        # Of a CSV file each worker rejects the bad records of its own GPUs (rxstreamer.scaling.skipping_other_shards),
        # so each keeps its own file; of other formats every worker rejects every bad record.
        flags += ["--rejected-path", str(shard_path(telemetry.rejected_path, index, workers))]
    return [*python, *argv, *flags]


def check_workers(settings: Settings) -> None:
    """Refuse, before any worker starts, what N workers cannot do together (exit status 2, one line)."""
    telemetry = settings.telemetry
    workers = telemetry.workers
    if telemetry.shard:
        raise ConfigError(
            "telemetry.shard",
            telemetry.shard,
            f"cannot be combined with telemetry.workers = {workers} (--workers), which gives worker i the shard "
            f"i/{workers} itself: drop --shard, or drop --workers and run one process per shard",
        )
    listen = settings.observability.listen
    if listen and listen.rpartition(":")[2] != "0":
        raise ConfigError(
            "observability.listen",
            listen,
            f"cannot be taken by {workers} worker processes at once: leave it empty, use port 0 (each worker then "
            f"picks a free port and logs it in metrics.started), or run one process per shard (--shard i/{workers})",
        )
    if isinstance(telemetry.metrics_path, Path):
        require_readable_file("telemetry.metrics_path", telemetry.metrics_path)  # said once, not by each worker


def exit_status(returncode: int) -> int:
    """A shell's view of a child's status: killed by signal S is 128 + S (137 for SIGKILL)."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass
class _Worker:
    """One worker process and what the supervisor has learnt about it from its log lines and its exit."""

    index: int
    shard: str
    command: list[str]
    checkpoint: Path | None
    process: subprocess.Popen[str] | None = None
    progress: dict[str, Any] = field(default_factory=dict)  # its last streamer.progress
    summary: dict[str, Any] | None = None  # its streamer.stopped
    signalled: signal.Signals | None = None  # the stop signal the supervisor sent it
    signalled_at: float = 0.0
    killed: bool = False  # by the supervisor, after it did not stop in time
    exit_code: int | None = None  # 128 + S when killed by signal S
    readers: list[threading.Thread] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.exit_code is None

    @property
    def died_of_stop_request(self) -> bool:
        """Killed by the very stop signal the supervisor sent, before its handlers were in place (interpreter
        start-up, when nothing has been read or sent yet): a stop like any other, not a failure."""
        return (
            self.process is not None
            and self.signalled is not None
            and not self.killed
            and self.process.returncode == -self.signalled
        )


class _Supervisor:
    """Runs the workers to their end; ``run`` returns the command's exit status."""

    def __init__(
        self,
        settings: Settings,
        argv: Sequence[str],
        stop: threading.Event,
        stop_signal: Callable[[], str | None],
    ) -> None:
        self._settings = settings
        self._stop = stop
        self._stop_signal = stop_signal
        count = settings.telemetry.workers
        checkpoint = settings.telemetry.checkpoint_path
        self._workers = [
            _Worker(
                index,
                f"{index}/{count}",
                worker_command(argv, settings, index, count),
                None if checkpoint is None else shard_path(checkpoint, index, count),
            )
            for index in range(count)
        ]
        self._events: queue.SimpleQueue[int | str] = queue.SimpleQueue()  # a worker's index, or "signal"
        self._lock = threading.Lock()  # guards each worker's progress and summary (written by its readers)
        self._stopping_because: str | None = None
        self._failures: list[str] = []

    def run(self) -> int:
        started = time.monotonic()
        if self._stop.is_set():  # a stop signal during start-up: nothing to start
            self._stopping_because = f"{self._stop_signal() or 'a stop signal'} received"
            return self._log_summary(time.monotonic() - started)
        self._start_all()
        threading.Thread(target=self._watch_stop, name="rxstreamer-supervisor-stop", daemon=True).start()
        interval = self._settings.logging.progress_interval
        next_progress = started + interval
        while any(worker.running for worker in self._workers):
            try:
                item = self._events.get(timeout=max(0.0, min(next_progress, self._next_kill()) - time.monotonic()))
            except queue.Empty:
                item = None
            if item == "signal":
                name = self._stop_signal() or "SIGTERM"
                self._stop_all(signal.Signals[name], f"{name} received")
            elif isinstance(item, int):
                self._exited(self._workers[item])
            now = time.monotonic()
            if now >= next_progress:
                self._log_progress()
                next_progress = now + interval
            self._kill_overdue(now)
        for worker in self._workers:
            for reader in worker.readers:
                reader.join(timeout=10)  # their last lines (the workers' summaries) may still be on their way
        return self._log_summary(time.monotonic() - started)

    # --- starting and stopping ------------------------------------------------------------------------

    def _start_all(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for worker in self._workers:
            try:
                # A process group of its own: a Ctrl-C at the terminal reaches the supervisor only, which
                # forwards it once (a worker getting it twice, from the terminal and from us, would force-exit).
                worker.process = subprocess.Popen(
                    worker.command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    encoding="utf-8",
                    errors="backslashreplace",
                    env=env,
                    process_group=0,
                )
            except OSError as error:
                worker.exit_code = 1
                self._fail(worker, f"worker {worker.index} could not be started: {error}", error=str(error))
                break
            for stream, name in ((worker.process.stdout, "stdout"), (worker.process.stderr, "stderr")):
                reader = threading.Thread(
                    target=self._read, args=(worker, stream, name), name=f"rxstreamer-worker-{worker.index}-{name}"
                )
                reader.daemon = True
                reader.start()
                worker.readers.append(reader)
            threading.Thread(target=self._wait, args=(worker,), daemon=True).start()
        launched = [worker for worker in self._workers if worker.process is not None]
        log.info(
            "supervisor.started",
            workers=len(self._workers),
            pids=[worker.pid for worker in launched],
            shards=[worker.shard for worker in launched],
            checkpoints=[str(worker.checkpoint) for worker in launched if worker.checkpoint is not None] or None,
        )

    def _wait(self, worker: _Worker) -> None:
        assert worker.process is not None
        worker.process.wait()
        self._events.put(worker.index)

    def _watch_stop(self) -> None:
        self._stop.wait()
        self._events.put("signal")

    def _stop_all(self, signum: signal.Signals, because: str) -> None:
        """Send each running worker the stop signal once (a second one would make it exit at once)."""
        if self._stopping_because is None:
            self._stopping_because = because
            running = [worker for worker in self._workers if worker.running]
            log.info("supervisor.stopping", signal=signum.name, because=because, workers=[w.index for w in running])
        now = time.monotonic()
        for worker in self._workers:
            if worker.running and worker.signalled is None and worker.process is not None:
                worker.signalled, worker.signalled_at = signum, now
                with contextlib.suppress(ProcessLookupError):  # it has just exited: its exit is on its way
                    worker.process.send_signal(signum)

    def _next_kill(self) -> float:
        """When the first signalled worker is overdue (infinity when none is)."""
        grace = self._settings.shutdown.timeout + STOP_MARGIN_S
        due = [w.signalled_at + grace for w in self._workers if w.running and w.signalled and not w.killed]
        return min(due, default=float("inf"))

    def _kill_overdue(self, now: float) -> None:
        grace = self._settings.shutdown.timeout + STOP_MARGIN_S
        for worker in self._workers:
            if worker.running and worker.signalled and not worker.killed and now >= worker.signalled_at + grace:
                assert worker.process is not None
                worker.killed = True
                log.error("worker.killed", worker=worker.index, pid=worker.pid, waited_s=round(grace, 1))
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()

    def _exited(self, worker: _Worker) -> None:
        assert worker.process is not None
        returncode = worker.process.returncode
        worker.exit_code = 0 if worker.died_of_stop_request else exit_status(returncode)
        if worker.exit_code == 0:
            return
        for reader in worker.readers:
            reader.join(timeout=5)  # its own last lines first, then ours about it
        killed_by = signal.Signals(-returncode).name if returncode < 0 else None
        with self._lock:
            summary = dict(worker.summary or {})
        how = f"was killed by {killed_by}" if killed_by else f"exited with status {worker.exit_code}"
        detail = f": {summary['error']}" if summary.get("error") else ""
        self._fail(
            worker,
            f"worker {worker.index} (pid {worker.pid}) {how}{detail}",
            exit_code=worker.exit_code,
            signal=killed_by,
            reason=summary.get("reason"),
            error=summary.get("error"),
        )

    def _fail(self, worker: _Worker, message: str, **fields: object) -> None:
        """Report a worker that died (once) and stop the others: one failure ends the command."""
        self._failures.append(message)
        if not worker.killed:  # a worker the supervisor killed was reported by worker.killed already
            shown = {key: value for key, value in fields.items() if value is not None}
            log.error("worker.failed", worker=worker.index, pid=worker.pid, **shown)
        self._stop_all(signal.SIGTERM, f"worker {worker.index} failed")

    # --- the workers' lines ---------------------------------------------------------------------------

    def _read(self, worker: _Worker, stream: IO[str] | None, name: str) -> None:
        assert stream is not None
        with stream:
            for line in stream:
                self._relay(worker, line, name)

    def _relay(self, worker: _Worker, line: str, stream: str) -> None:
        """Re-emit one line of a worker with its ``worker`` field; keep its progress and its summary instead."""
        entry = _json_object(line)
        if entry is None:
            text = line.rstrip("\n")
            if text:  # not a log line (a traceback, a warning from a library): shown, never lost
                log.warning("worker.output", worker=worker.index, stream=stream, line=text)
            return
        event = str(entry.pop("event"))
        level = str(entry.pop("level", "info"))
        entry.pop("timestamp", None)  # the relayed line is stamped when it is relayed (within milliseconds)
        if event == "streamer.progress":
            with self._lock:
                worker.progress = entry
            return
        if event == "streamer.stopped":
            with self._lock:
                worker.summary = dict(entry)
            if level == "error":
                log.error("worker.stopped", worker=worker.index, pid=worker.pid, **entry)
            else:
                log.info("worker.stopped", worker=worker.index, pid=worker.pid, **entry)
            return
        log.log(_LEVELS.get(level, logging.ERROR), event, worker=worker.index, **entry)

    # --- progress and the summary ---------------------------------------------------------------------

    def _counts(self) -> tuple[dict[str, Any], list[int]]:
        """The workers' counts added up: from each one's summary when it has logged it, else its last progress.

        Every integer field is a count that adds up across workers (rows_read, rows_published, ...), and so is
        every field holding counts by key (rejected_by_reason), whatever fields the streamer logs; the ones that
        are no counts are left out, but for how far behind schedule a replay is: the worst worker's. Also the
        workers that ended without a summary (their counts are the last progress line's, a lower bound).
        """
        totals: dict[str, Any] = {**dict.fromkeys(_SUMMED, 0), "rejected_by_reason": {}}
        without_summary = []
        with self._lock:
            for worker in self._workers:
                source = worker.summary if worker.summary is not None else worker.progress
                if worker.summary is None and worker.exit_code is not None:
                    without_summary.append(worker.index)
                for name, value in source.items():
                    if name in _NOT_COUNTS:
                        continue
                    if name in _WORST and isinstance(value, int | float):
                        totals[name] = max(totals.get(name, 0.0), value)
                    elif _is_count(value):
                        totals[name] = totals.get(name, 0) + value
                    elif isinstance(value, dict) and all(_is_count(count) for count in value.values()):
                        by_key = totals.setdefault(name, {})
                        for key, count in value.items():
                            by_key[key] = by_key.get(key, 0) + count
        return totals, without_summary

    def _log_progress(self) -> None:
        """One ``streamer.progress`` for all workers: their latest counts added up, and their latest rates.

        A worker logs its progress on its own clock, so the sums are up to one interval behind; the rate is
        the sum of the running workers' own ``rows_per_s``, which a difference of lagging sums would make jumpy.
        """
        running = [worker for worker in self._workers if worker.running]
        if not running:
            return
        totals, _ = self._counts()
        with self._lock:
            rate = sum(float(worker.progress.get("rows_per_s", 0.0)) for worker in running)
        shown = {name: totals[name] for name in (*_PROGRESS, *_SCALED, *_REPLAYED) if name in totals}
        log.info("streamer.progress", **shown, rows_per_s=round(rate, 1), workers=[w.index for w in running])

    def _log_summary(self, duration: float) -> int:
        totals, without_summary = self._counts()
        exit_code = max((worker.exit_code or 0 for worker in self._workers), default=0)
        with self._lock:
            reasons = {worker.summary.get("reason") for worker in self._workers if worker.summary is not None}
        if self._failures:
            reason = "error"
        elif self._stopping_because is not None or "signal" in reasons:
            reason = "signal"
        else:
            reason = "completed"
        fields: dict[str, Any] = {
            "reason": reason,
            "workers": len(self._workers),
            **totals,
            "duration_s": round(duration, 3),
            "exit_code": exit_code,
            "exit_codes": [worker.exit_code for worker in self._workers],
        }
        if without_summary:
            fields["workers_without_summary"] = without_summary
        if self._failures:
            log.error("streamer.stopped", **fields, error="; ".join(self._failures))
        else:
            log.info("streamer.stopped", **fields)
        return exit_code


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_object(line: str) -> dict[str, Any] | None:
    """A worker's JSON log line as a dict with an ``event``; None for anything else."""
    if not line.startswith("{"):
        return None
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        return None
    return entry if isinstance(entry, dict) and isinstance(entry.get("event"), str) else None


def run_workers(
    settings: Settings,
    argv: Sequence[str],
    *,
    stop: threading.Event,
    stop_signal: Callable[[], str | None],
) -> int:
    """Run ``settings.telemetry.workers`` shard processes of ``rxstreamer run ARGV`` to their end; the exit status.

    ``argv`` is the user's ``run`` arguments, given to every worker as they are; ``stop`` (set by the process's
    signal watch) and ``stop_signal`` (which signal set it) are forwarded to the workers. The status is 0 when
    every worker ended with 0 (a finished input, or a stop by signal), else the highest of theirs, a worker
    killed by signal S counting as 128 + S. Raises ConfigError before any worker starts for what N workers
    cannot share.
    """
    check_workers(settings)
    return _Supervisor(settings, argv, stop, stop_signal).run()
