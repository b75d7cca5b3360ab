"""The stop-signal policy of ``SignalWatch``, on a clock the test moves: the first stop signal stops, one within
``REPEAT_WINDOW_S`` of it is the same request, a later one exits at once."""

from __future__ import annotations

import signal
import threading

from structlog.testing import capture_logs

from rxstreamer.signals import REPEAT_WINDOW_S, SignalWatch


class _Watch(SignalWatch):
    """A watch whose forced exit is recorded instead of ending the test run."""

    def __init__(self, clock: list[float]) -> None:
        super().__init__("streamer", clock=lambda: clock[0])
        self.exits: list[int] = []

    def _exit(self, status: int) -> None:  # type: ignore[override]  # recorded, not os._exit
        self.exits.append(status)


def test_a_stop_signal_repeated_within_the_window_is_one_request_and_a_later_one_forces_the_exit() -> None:
    now = [100.0]
    watch = _Watch(now)
    with capture_logs() as logs:
        watch._act_on(signal.SIGTERM)
        assert watch.stop.is_set()
        now[0] += REPEAT_WINDOW_S / 10  # timeout's second kill, systemd's and the supervisor's
        watch._act_on(signal.SIGTERM)
        now[0] += REPEAT_WINDOW_S * 0.8
        watch._act_on(signal.SIGINT)
        assert (watch.received, watch.exits) == ([signal.SIGTERM], [])
        now[0] += REPEAT_WINDOW_S  # someone asking again
        watch._act_on(signal.SIGINT)
    assert watch.exits == [130]
    assert [(line["event"], line["signal"]) for line in logs] == [
        ("streamer.signal_repeated", "SIGTERM"),
        ("streamer.signal_repeated", "SIGINT"),
        ("streamer.forced_exit", "SIGINT"),
    ]
    assert logs[0]["after_s"] == round(REPEAT_WINDOW_S / 10, 3)


def test_sighup_neither_stops_nor_counts_as_a_first_stop_signal() -> None:
    now = [0.0]
    watch = _Watch(now)
    with capture_logs() as logs:
        watch._act_on(signal.SIGHUP)
        now[0] += REPEAT_WINDOW_S * 3
        watch._act_on(signal.SIGTERM)
    assert (watch.stop.is_set(), watch.received, watch.exits) == (True, [signal.SIGTERM], [])
    assert [line["event"] for line in logs] == ["streamer.sighup_ignored"]


def test_a_stop_signal_delivered_to_another_thread_stops_at_once_while_the_main_thread_waits() -> None:
    """The kernel may hand a process's signal to any thread. Python runs its handlers in the main thread only,
    once that thread runs Python code again, so a main thread waiting (for its next progress line, 10 s) would
    have held the stop back that long; the watch hears it through the wakeup fd instead."""
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    watch = SignalWatch("streamer")
    parked = threading.Event()
    other = threading.Thread(target=parked.wait, args=(30,), daemon=True)
    other.start()
    watch.install()
    try:
        assert other.ident is not None
        signal.pthread_kill(other.ident, signal.SIGTERM)  # to that thread, not to the main one
        assert watch.stop.wait(timeout=10)  # the main thread waits here, as the service's does
        assert watch.stop_signal == "SIGTERM"
    finally:
        watch.uninstall()
        parked.set()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
