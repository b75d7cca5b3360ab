"""Stopping a run while the real broker is frozen mid-publish: the publish in flight is waited for and counted.

The broker runs as a process and is frozen with SIGSTOP, so a publish made then stays on the wire until
SIGCONT. A transform sees each row as it is pulled: when it sees the first row of the second batch it freezes
the broker and sets the stop event, so the stop always arrives with that batch about to be (or being) sent.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
from reactivex import Observable
from reactivex import operators as ops
from structlog.testing import capture_logs

from rxstreamer.config import load_settings
from rxstreamer.model import MetricRow
from rxstreamer.service import RunSummary, run_streamer
from tests.conftest import TEST_DATA_CSV
from tests.processes import Broker, broker_process, freeze, read_topic, thaw

pytestmark = [pytest.mark.integration, pytest.mark.faults]

BATCH = 10
#: How long the frozen broker must keep a stopping streamer waiting: the stop must not cut the publish.
STILL_WAITING = 0.5


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    with broker_process() as running:
        yield running


class StopMidStream:
    """Runs ``run_streamer`` on a thread; freezes the broker and stops the run at the first row of batch 2."""

    def __init__(self, broker: Broker, topic: str, *, background: bool, read_ahead: int, interval: str) -> None:
        self.broker = broker
        self.stop = threading.Event()
        self.summary: RunSummary | None = None
        self.failure: BaseException | None = None
        self.logs: list[MutableMapping[str, Any]] = []
        self._rows_seen = 0
        self._settings = load_settings(
            None,
            overrides={
                "telemetry.metrics_path": str(TEST_DATA_CSV),
                "telemetry.batch_size": BATCH,
                "telemetry.stream_interval": interval,
                "telemetry.read_ahead": read_ahead,
                "message_queue.address": broker.address,
                "message_queue.topic": topic,
                "message_queue.publish_in_background": background,
                "message_queue.publish_timeout": "20s",
                "shutdown.timeout": "10s",
            },
            environ={},
        )
        self.thread = threading.Thread(target=self._run, name="streamer-under-test", daemon=True)

    def _on_row(self, _: MetricRow) -> None:
        self._rows_seen += 1
        if self._rows_seen == BATCH + 1:  # the first row of batch 2: batch 1 was handed over already
            freeze(self.broker.process)
            self.stop.set()

    def _freeze_at_batch_2(self, rows: Observable[MetricRow]) -> Observable[MetricRow]:
        return rows.pipe(ops.do_action(self._on_row))

    def _run(self) -> None:
        try:
            self.summary = run_streamer(self._settings, transforms=[self._freeze_at_batch_2], stop=self.stop)
        except BaseException as error:
            self.failure = error

    def __enter__(self) -> StopMidStream:
        self._capture = capture_logs()
        self.logs = self._capture.__enter__()
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        thaw(self.broker.process)  # whatever happened, never leave the broker frozen
        self.thread.join(timeout=30)
        self._capture.__exit__(None, None, None)

    def finished(self) -> RunSummary:
        thaw(self.broker.process)
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the run did not end within 30 s of SIGCONT"
        assert self.failure is None, repr(self.failure)
        assert self.summary is not None
        return self.summary


def held_rows(broker: Broker, topic: str) -> int:
    return len(read_topic(broker.address, topic, idle_timeout=0.5))


@pytest.mark.parametrize("background", [False, True], ids=["on-the-pipeline-thread", "in-background"])
def test_a_stop_waits_for_the_publish_in_flight_and_counts_it(broker: Broker, background: bool) -> None:
    """Stopped with batch 2 on the wire to a frozen broker: the run waits, then reports 20 rows, as the queue holds."""
    topic = f"shutdown-in-flight-{background}".lower()
    with StopMidStream(broker, topic, background=background, read_ahead=0, interval="0s") as run:
        assert run.stop.wait(20), "the stream never reached batch 2"
        run.thread.join(timeout=STILL_WAITING)
        assert run.thread.is_alive(), (
            f"the run ended within {STILL_WAITING}s of the stop while the broker was frozen: "
            f"it did not wait for the publish in flight ({run.summary})"
        )
        summary = run.finished()
    assert summary.reason == "signal"
    assert (summary.rows_read, summary.rows_published, summary.batches_published) == (20, 20, 2)
    assert (summary.rows_rejected, summary.rows_filtered, summary.rows_in_flight) == (0, 0, 0)
    assert summary.error is None
    assert held_rows(broker, topic) == 20
    assert not [entry for entry in run.logs if entry["event"] == "streamer.publish_cut"]


@pytest.mark.parametrize("background", [False, True], ids=["on-the-pipeline-thread", "in-background"])
def test_rows_read_ahead_when_the_stop_comes_are_reported_in_flight(broker: Broker, background: bool) -> None:
    """read_ahead=1, stopped as batch 2 is read ahead: 20 read = 10 published + 10 in flight, and the queue holds 10."""
    topic = f"shutdown-read-ahead-{background}".lower()
    # A 5 s interval: the stop is handled long before batch 2's tick is due, so batch 2 is read but never sent.
    with StopMidStream(broker, topic, background=background, read_ahead=1, interval="5s") as run:
        assert run.stop.wait(20), "the stream never reached batch 2"
        summary = run.finished()
    assert summary.reason == "signal"
    assert (summary.rows_read, summary.rows_published, summary.rows_in_flight) == (20, 10, 10)
    assert (summary.rows_rejected, summary.rows_filtered, summary.batches_published) == (0, 0, 1)
    assert summary.rows_read == (
        summary.rows_published + summary.rows_rejected + summary.rows_filtered + summary.rows_in_flight
    )
    assert held_rows(broker, topic) == 10
