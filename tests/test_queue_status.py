"""The queue's reachability as a person reads it: one line when lost, one when back, one alert, a count per interval."""

from __future__ import annotations

from structlog.testing import capture_logs

from rxstreamer.model import EncodedBatch, PublishAck
from rxstreamer.queue_status import QueueStatus
from rxstreamer.retry import PublishError

BATCH = EncodedBatch("p", 7, b"", "x", 10)
ACK = PublishAck(7, 70, False, 10)
DEADLINE = PublishError("DEADLINE_EXCEEDED", "Deadline Exceeded")
REFUSED = PublishError("UNAVAILABLE", "failed to connect to all addresses")
FULL = PublishError("RESOURCE_EXHAUSTED", "topic gpu-telemetry is full")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def status_and_clock(alert_after: float = 60.0) -> tuple[QueueStatus, Clock]:
    clock = Clock()
    return QueueStatus("127.0.0.1:50051", alert_after=alert_after, clock=clock), clock


def test_connection_changes_are_logged_once_each_not_per_reconnect_attempt() -> None:
    """Flapping between CONNECTING and TRANSIENT_FAILURE logs one mq.unreachable; READY logs one mq.connected."""
    status, clock = status_and_clock()
    states = ["IDLE", "CONNECTING", "READY", "IDLE", "CONNECTING", "TRANSIENT_FAILURE", "CONNECTING"]
    states += ["TRANSIENT_FAILURE", "CONNECTING", "TRANSIENT_FAILURE", "CONNECTING", "READY", "READY"]
    with capture_logs() as logs:
        for state in states:
            clock.now += 1.5
            status.connectivity(state)
    assert [(entry["event"], entry.get("down_for_s")) for entry in logs] == [
        ("mq.connected", None),
        ("mq.unreachable", None),
        ("mq.connected", 9.0),
    ]


def test_a_frozen_queue_is_one_lost_line_and_one_regained_line_with_the_duration() -> None:
    """Publishes time out on a connection that stays READY: lost at the first, back at the next ack, 12.5 s later."""
    status, clock = status_and_clock()
    with capture_logs(processors=[]) as logs:
        status.connectivity("READY")
        status.acked(ACK)
        for attempt in range(2, 6):
            clock.now += 2.5
            status.retry(BATCH, attempt, 1.0, DEADLINE)
        clock.now += 2.5
        status.acked(ACK)
        status.acked(ACK)
    seen = [(entry["event"], entry["log_level"]) for entry in logs]
    assert seen == [
        ("mq.connected", "info"),
        ("mq.unreachable", "warning"),
        *[("publisher.retry_scheduled", "debug")] * 4,
        ("mq.connected", "info"),
    ]
    assert logs[1]["cause"] == "DEADLINE_EXCEEDED: Deadline Exceeded"
    assert logs[-1]["down_for_s"] == 10.0


def test_a_long_outage_gives_one_error_then_a_count_per_interval() -> None:
    """Down for 60 s: one mq.unreachable_alert at error with the retries so far; then one count per progress tick."""
    status, clock = status_and_clock(alert_after=60.0)
    with capture_logs() as logs:
        status.retry(BATCH, 2, 5.0, REFUSED)  # down at 1000
        for _ in range(20):  # 5 s apart: retries at 1005 ... 1100, a progress tick every 10 s
            clock.now += 5.0
            status.retry(BATCH, 3, 5.0, REFUSED)
            if clock.now % 10 == 0:
                status.tick()
    logs = [entry for entry in logs if entry["log_level"] != "debug"]  # each retry's own line
    lines = [(entry["event"], entry.get("down_for_s"), entry.get("retries")) for entry in logs]
    assert lines[0] == ("mq.unreachable", None, None)
    assert lines[1:] == [
        ("mq.still_unreachable", 10.0, 3),
        ("mq.still_unreachable", 20.0, 2),
        ("mq.still_unreachable", 30.0, 2),
        ("mq.still_unreachable", 40.0, 2),
        ("mq.still_unreachable", 50.0, 2),
        ("mq.unreachable_alert", 60.0, 2),  # at the retry of 1060; the tick of 1060 then has nothing to add
        ("mq.still_unreachable", 70.0, 2),
        ("mq.still_unreachable", 80.0, 2),
        ("mq.still_unreachable", 90.0, 2),
        ("mq.still_unreachable", 100.0, 2),
    ]
    assert [entry["log_level"] for entry in logs].count("error") == 1


def test_a_full_queue_is_not_unreachable_and_its_retries_are_warnings() -> None:
    """RESOURCE_EXHAUSTED is an answer: each retry is a warning line, and nothing says the queue is down."""
    status, _ = status_and_clock()
    with capture_logs() as logs:
        status.retry(BATCH, 2, 0.5, FULL)
        status.tick()
    assert [(entry["event"], entry["log_level"], entry["status"]) for entry in logs] == [
        ("publisher.retry_scheduled", "warning", "RESOURCE_EXHAUSTED")
    ]


def test_after_a_stop_request_no_retry_is_announced() -> None:
    """Once stopping, a failing publish in flight is cancelled, not retried: no retry line at any level."""
    status, _ = status_and_clock()
    status.stopping = True
    with capture_logs() as logs:
        status.retry(BATCH, 2, 0.5, FULL)
        status.retry(BATCH, 2, 0.5, REFUSED)
        status.tick()
    assert [entry["event"] for entry in logs] == ["mq.unreachable"]
