"""Delivery guarantees with real processes killed and restarted: every row once, by (producer id, sequence).

Each test reads back what the broker holds with `tail` and deduplicates by the batch identity, as a
consumer would. Run these alone with `pytest -m faults`.
"""

from __future__ import annotations

import csv
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from rxstreamer.checkpoint import read_checkpoint
from tests.conftest import TEST_DATA_CSV
from tests.processes import (
    LiveConsumer,
    broker_process,
    event,
    finish,
    free_port,
    read_topic,
    rss_mb,
    run_streamer,
    start_streamer,
    start_watched_streamer,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

ROWS = 960


def file_uuids_and_metrics() -> list[tuple[str, str, float]]:
    with TEST_DATA_CSV.open(newline="") as handle:
        return [(row["uuid"], row["metric_name"], float(row["value"])) for row in csv.DictReader(handle)]


def deduplicated(received: list[dict[str, Any]]) -> list[tuple[str, str, float]]:
    """What a consumer keeps when it drops repeats of a (producer id, sequence): each batch once, in sequence order."""
    first_offset: dict[tuple[str, int], int] = {}
    for metric in received:
        first_offset.setdefault((metric["producer_id"], metric["sequence"]), metric["offset"])
    kept = [
        metric for metric in received if metric["offset"] == first_offset[(metric["producer_id"], metric["sequence"])]
    ]
    kept.sort(key=lambda metric: metric["sequence"])  # stable: rows keep their order within a batch
    return [(metric["uuid"], metric["metric_name"], metric["value"]) for metric in kept]


def held(address: str) -> list[dict[str, Any]]:
    return read_topic(address, with_batch=True)


#: Retries while the queue is down are counted, not logged one by one, but for a debug line each: the tests
#: wait on those to know the streamer is retrying.
DEBUG_LOGS = {"RXSTREAMER_LOGGING__LEVEL": "debug"}


def test_a_broker_killed_mid_stream_and_restarted_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL the durable broker mid-stream, restart it on its data dir: every row arrives exactly once."""
    port = free_port()
    data_dir = tmp_path / "mq"
    with broker_process("--data-dir", str(data_dir), port=port) as broker:
        streamer = start_watched_streamer(
            "--mq-address", broker.address, "--interval", "20ms", "--batch-size", "10", settings=DEBUG_LOGS
        )
        assert len(read_topic(broker.address, idle_timeout=20, count=200)) == 200
        broker.process.kill()
        broker.process.wait(timeout=10)
    # The scenario: the queue is gone for a while. The streamer has noticed, and is retrying.
    streamer.wait_for_event("mq.unreachable")
    streamer.wait_for_event("publisher.retry_scheduled", count=2)
    with broker_process("--data-dir", str(data_dir), port=port) as restarted:
        finished = streamer.finish(timeout=90)
        assert finished.returncode == 0, finished.stderr
        received = held(restarted.address)
    assert deduplicated(received) == file_uuids_and_metrics()
    summary = finished.summary
    assert summary["rows_published"] == ROWS
    assert event(finished.lines, "mq.unreachable")
    assert event(finished.lines, "mq.connected")


def test_a_streamer_killed_mid_stream_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    """SIGKILL the streamer, start it again with the same checkpoint: no row missing, none twice."""
    checkpoint = tmp_path / "stream.checkpoint"
    args = ("--interval", "20ms", "--batch-size", "10", "--checkpoint-path", str(checkpoint))
    with broker_process() as broker:
        first = start_streamer("--mq-address", broker.address, *args)
        assert len(read_topic(broker.address, idle_timeout=20, count=300)) == 300
        first.kill()
        finish(first, timeout=10)
        saved = read_checkpoint(checkpoint)
        assert saved is not None
        assert saved.sequence >= 29  # the broker held batch 30; its checkpoint may have been cut by the kill

        second = run_streamer("--mq-address", broker.address, *args, timeout=90)
        assert second.returncode == 0, second.stderr
        resumed = event(second.lines, "streamer.resumed")
        assert resumed["next_sequence"] == saved.sequence + 1
        assert second.summary["rows_read"] == ROWS - saved.sequence * 10
        received = held(broker.address)
    assert deduplicated(received) == file_uuids_and_metrics()
    assert len(received) == ROWS  # the broker itself stored no batch twice


def test_sigterm_during_a_retry_backoff_exits_in_time_and_resumes_at_the_unacknowledged_batch(tmp_path: Path) -> None:
    """With the broker down, SIGTERM ends the run within shutdown.timeout; the next run picks up where it stopped."""
    port = free_port()
    data_dir = tmp_path / "mq"
    checkpoint = tmp_path / "stream.checkpoint"
    args = ("--interval", "20ms", "--batch-size", "10", "--checkpoint-path", str(checkpoint))
    settings = {"RXSTREAMER_SHUTDOWN__TIMEOUT": "3s", **DEBUG_LOGS}
    with broker_process("--data-dir", str(data_dir), port=port) as broker:
        streamer = start_watched_streamer("--mq-address", broker.address, *args, settings=settings)
        assert len(read_topic(broker.address, idle_timeout=20, count=100)) == 100
        broker.process.kill()
        broker.process.wait(timeout=10)
    streamer.wait_for_event("publisher.retry_scheduled", count=3)  # retrying, its backoff grown past the first
    streamer.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    stopped = streamer.finish(timeout=15)
    assert time.monotonic() - signalled < 3.5
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.summary["reason"] == "signal"
    assert event(stopped.lines, "publisher.retry_scheduled")["status"] == "UNAVAILABLE"
    saved = read_checkpoint(checkpoint)
    assert saved is not None

    with broker_process("--data-dir", str(data_dir), port=port) as restarted:
        second = run_streamer("--mq-address", restarted.address, *args, timeout=90)
        assert second.returncode == 0, second.stderr
        assert event(second.lines, "streamer.resumed")["next_sequence"] == saved.sequence + 1
        received = held(restarted.address)
    assert deduplicated(received) == file_uuids_and_metrics()


def test_a_broker_full_for_a_while_delays_the_stream_with_flat_memory() -> None:
    """A broker that keeps refusing with RESOURCE_EXHAUSTED: the streamer waits, memory stays flat, all rows arrive."""
    with broker_process("--max-messages", "3", "--retention", "500ms") as broker:
        consumer = LiveConsumer(broker.address, idle_timeout=5.0).start()  # returns once subscribed
        streamer = start_streamer("--mq-address", broker.address, "--interval", "0", "--batch-size", "20")
        samples: list[float] = []
        while streamer.poll() is None:
            try:
                samples.append(rss_mb(streamer.pid))
            except (FileNotFoundError, AssertionError):
                break  # it just exited
            time.sleep(0.25)  # the sampling period of the memory measurement, not a wait for an event
        finished = finish(streamer)
        live = consumer.join(timeout=30)
    assert finished.returncode == 0, finished.stderr
    statuses = {line["status"] for line in finished.lines if line["event"] == "publisher.retry_scheduled"}
    assert statuses == {"RESOURCE_EXHAUSTED"}
    assert len(live) == ROWS
    steady = samples[len(samples) // 4 :]  # after start-up
    assert len(steady) >= 4, samples
    assert max(steady) - min(steady) < 5, samples  # MB: no queue builds up while the broker refuses
