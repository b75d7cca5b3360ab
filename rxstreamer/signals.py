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
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: A stop signal this soon after the first is the same request delivered twice, not a second one: ``timeout``
#: signals its command and then its process group, and a service manager that signals every process of a
#: service (systemd's default) reaches each ``--workers`` process both directly and through the supervisor.
#: Someone asking again, to skip the graceful stop, does so later than that.
REPEAT_WINDOW_S = 0.5


class SignalWatch:
    """Turns SIGINT/SIGTERM into ``stop`` (a second one, ``REPEAT_WINDOW_S`` or more after the first, exits at once)
    and logs SIGHUP instead of dying of it.

    The signal's number reaches a thread of the watch's own through ``signal.set_wakeup_fd``, written by the C
    handler in whichever thread the kernel delivered the signal to; the Python handler does nothing. Python runs
    its handlers only in the main thread, when that thread next runs Python code: a signal delivered to another
    thread (a gRPC thread, say) while the main thread waits for its next progress line would have been acted
    on up to 10 s late, and never while the supervisor waits without a timeout. A handler that logged or set
    an Event could also deadlock on a lock the interrupted main thread held. ``event_prefix`` names the
    process in the log lines: ``streamer`` gives ``streamer.sighup_ignored``.
    """

    def __init__(self, event_prefix: str = "process", clock: Callable[[], float] = time.monotonic) -> None:
        self.stop = threading.Event()
        self.event_prefix = event_prefix
        self.received: list[signal.Signals] = []
        self._clock = clock
        self._first_at = 0.0
        self.installed = False
        self._numbers, self._wakeup = os.pipe()  # the C handler writes each signal's number, a byte, to _wakeup
        os.set_blocking(self._wakeup, False)
        threading.Thread(target=self._act_on_signals, name="rxstreamer-signals", daemon=True).start()

    def install(self) -> None:
        """Take over SIGINT, SIGTERM and SIGHUP; only the main thread may do this."""
        for signum in (*STOP_SIGNALS, signal.SIGHUP):
            signal.signal(signum, _noted_by_the_wakeup_fd)
        signal.set_wakeup_fd(self._wakeup, warn_on_full_buffer=False)
        self.installed = True

    def uninstall(self) -> None:
        """Give the signals back to Python's defaults."""
        signal.set_wakeup_fd(-1)
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

    def _act_on_signals(self) -> None:
        while True:
            for number in os.read(self._numbers, 64):
                if number in _WATCHED:
                    self._act_on(signal.Signals(number))

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
        now = self._clock()
        if self.received and now - self._first_at < REPEAT_WINDOW_S:
            log.info(
                f"{self.event_prefix}.signal_repeated", signal=received.name, after_s=round(now - self._first_at, 3)
            )
            return
        self.received.append(received)
        if len(self.received) > 1:
            log.warning(f"{self.event_prefix}.forced_exit", signal=received.name, exit_code=128 + received)
            self._exit(128 + received)  # asked twice: skip the graceful shutdown
            return
        self._first_at = now
        self.stop.set()

    @staticmethod
    def _exit(status: int) -> None:
        os._exit(status)


_WATCHED = frozenset(int(signum) for signum in (*STOP_SIGNALS, signal.SIGHUP))


def _noted_by_the_wakeup_fd(_signum: int, _frame: FrameType | None) -> None:
    """Python's handler, which must exist for the C handler to stay in place: the watch's thread acts instead."""


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
