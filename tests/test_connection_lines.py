"""What an on-call engineer reads when the queue goes away: real processes, their log lines counted."""

from __future__ import annotations

import signal

import pytest

from tests.processes import broker_process, free_port, freeze, start_watched_streamer, thaw

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def test_a_frozen_broker_gives_one_lost_line_and_one_regained_line_with_its_duration() -> None:
    """SIGSTOP the broker mid-stream, SIGCONT it later: one mq.unreachable, one mq.connected with down_for_s."""
    settings = {"RXSTREAMER_MESSAGE_QUEUE__PUBLISH_TIMEOUT": "500ms", "RXSTREAMER_LOGGING__LEVEL": "debug"}
    with broker_process() as broker:
        streamer = start_watched_streamer(
            "--mq-address", broker.address, "--interval", "20ms", "--batch-size", "10", settings=settings
        )
        streamer.wait_for_event("publisher.acked", count=5)
        freeze(broker.process)
        try:
            lost = streamer.wait_for_event("mq.unreachable")
            streamer.wait_for_event("publisher.retry_scheduled", count=2)  # down for a while, retrying
        finally:
            thaw(broker.process)
        finished = streamer.finish(timeout=60)
    assert finished.returncode == 0, finished.stderr
    events = [line["event"] for line in finished.lines]
    assert (events.count("mq.unreachable"), events.count("mq.connected")) == (1, 2)
    assert lost["cause"].startswith("DEADLINE_EXCEEDED")
    regained = [line for line in finished.lines if line["event"] == "mq.connected"][-1]
    assert regained["down_for_s"] > 0
    retries = [line for line in finished.lines if line["event"] == "publisher.retry_scheduled"]
    assert {line["level"] for line in retries} == {"debug"}
    assert finished.summary["rows_published"] == 960


def test_a_broker_absent_beyond_the_alert_time_gives_exactly_one_error_line() -> None:
    """Nothing listening: mq.unreachable, then after 1 s one mq.unreachable_alert at error, then counts only."""
    settings = {
        "RXSTREAMER_MESSAGE_QUEUE__UNREACHABLE_ALERT_AFTER": "1s",
        "RXSTREAMER_LOGGING__PROGRESS_INTERVAL": "300ms",
    }
    streamer = start_watched_streamer("--mq-address", f"127.0.0.1:{free_port()}", settings=settings)
    try:
        streamer.wait_for_event("mq.unreachable_alert")
        streamer.wait_for_event("mq.still_unreachable", count=4)
        streamer.process.send_signal(signal.SIGTERM)
        finished = streamer.finish(timeout=30)
    finally:
        if streamer.process.poll() is None:
            streamer.process.kill()
    assert finished.returncode == 0, finished.stderr
    errors = [line for line in finished.lines if line["level"] == "error"]
    assert [line["event"] for line in errors] == ["mq.unreachable_alert"]
    assert errors[0]["down_for_s"] >= 1.0
    assert [line["event"] for line in finished.lines].count("mq.unreachable") == 1
    assert "publisher.retry_scheduled" not in [line["event"] for line in finished.lines]
