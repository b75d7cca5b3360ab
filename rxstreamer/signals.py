"""Stop signals for the long-running commands, handled from the first instant of the process.

``python -m rxstreamer`` installs these handlers before it imports anything heavy, so that a SIGTERM sent
while the process is still starting (a pod deleted right after it was scheduled) is a stop request like any
other, honoured as soon as the command can act on it, rather than the default action that kills the process
with status 143 and no log line. SIGHUP, which a closed terminal or a careless ``kill -HUP`` sends, must not
kill a streamer or an in-memory broker (it would lose what it holds): it is logged and otherwise ignored.

Only the standard library is imported at module level; the logger is looked up when a signal arrives.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SignalWatch:
    """Turns SIGINT/SIGTERM into ``stop`` (a second one exits at once) and logs SIGHUP instead of dying of it.

    The handler itself only queues the signal's number (``SimpleQueue.put`` is safe to call from a signal
    handler); a thread of the watch's own does the rest. A handler that logged or set an Event could
    deadlock on a lock the interrupted main thread held (writing a log line, waiting on that same Event).
    ``event_prefix`` names the process in the log lines: ``streamer`` gives ``streamer.sighup_ignored``.
    """

    def __init__(self, event_prefix: str = "process") -> None:
        self.stop = threading.Event()
        self.event_prefix = event_prefix
        self.received: list[signal.Signals] = []
        self.installed = False
        self._pending: queue.SimpleQueue[int] = queue.SimpleQueue()
        threading.Thread(target=self._act_on_signals, name="rxstreamer-signals", daemon=True).start()

    def install(self) -> None:
        """Take over SIGINT, SIGTERM and SIGHUP; only the main thread may do this."""
        for signum in (*STOP_SIGNALS, signal.SIGHUP):
            signal.signal(signum, self._queue_signal)
        self.installed = True

    def uninstall(self) -> None:
        """Give the signals back to Python's defaults."""
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        self.installed = False

    def release(self) -> int | None:
        """Hand the signals back for a command that needs no graceful stop; the exit status if one came already."""
        self.uninstall()
        return 128 + self.received[0] if self.received else None

    @property
    def stop_signal(self) -> str | None:
        """The name of the first stop signal received, for the log line that says why the process stops."""
        return self.received[0].name if self.received else None

    def _queue_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._pending.put(signum)

    def _act_on_signals(self) -> None:
        while True:
            self._act_on(signal.Signals(self._pending.get()))

    def _act_on(self, received: signal.Signals) -> None:
        import structlog

        log = structlog.get_logger()
        if received == signal.SIGHUP:
            log.warning(
                f"{self.event_prefix}.sighup_ignored",
                signal=received.name,
                meaning="nothing is reloaded; restart to apply changes",
            )
            return
        self.received.append(received)
        if len(self.received) > 1:
            log.warning(f"{self.event_prefix}.forced_exit", signal=received.name, exit_code=128 + received)
            os._exit(128 + received)  # asked twice: skip the graceful shutdown
        self.stop.set()


_process_watch: SignalWatch | None = None


def install_process_watch() -> SignalWatch:
    """Install the process-wide watch (once); called first thing by ``python -m rxstreamer``."""
    global _process_watch  # noqa: PLW0603 - one set of signal handlers per process, by nature
    if _process_watch is None:
        _process_watch = SignalWatch()
        _process_watch.install()
    return _process_watch


def process_watch() -> SignalWatch | None:
    """The watch installed at process start, if any (None when a command runs in-process, from a test)."""
    return _process_watch
