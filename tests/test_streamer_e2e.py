"""The streamer end to end: real broker process, real streamer process, read back with `tail`."""

from __future__ import annotations

import csv
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_DATA_CSV
from tests.processes import (
    LiveConsumer,
    broker_process,
    event,
    finish,
    free_port,
    read_topic,
    run_streamer,
    start_streamer,
    start_watched_streamer,
)

pytestmark = pytest.mark.integration

LABEL = re.compile(r'([^=,]+)="([^"]*)"')


def csv_records(path: Path) -> list[dict[str, str]]:
    """The file's data rows as Python's csv module reads them: the expectation, independent of our parser."""
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def assert_same_metrics(received: list[dict[str, Any]], expected: list[dict[str, str]]) -> None:
    assert len(received) == len(expected)
    for got, want in zip(received, expected, strict=True):
        assert got["timestamp"] == want["timestamp"]
        assert got["metric_name"] == want["metric_name"]
        assert got["uuid"] == want["uuid"]
        assert got["gpu_id"] == want["gpu_id"]
        assert got["device"] == want["device"]
        assert got["hostname"] == want["Hostname"]
        assert got["model_name"] == want["modelName"]
        assert got["value"] == float(want["value"])
        assert got["labels"] == dict(LABEL.findall(want["labels_raw"]))


def test_every_row_arrives_once_and_in_order() -> None:
    """All 960 rows of test-data/metrics.csv reach the queue once, in file order, field for field."""
    with broker_process() as broker:
        finished = run_streamer("--mq-address", broker.address, "--interval", "0", "--batch-size", "50")
        assert finished.returncode == 0, finished.stderr
        summary = finished.summary
        assert summary["reason"] == "completed"
        assert (summary["rows_read"], summary["rows_published"], summary["rows_rejected"]) == (960, 960, 0)
        assert summary["batches_published"] == 960 // 50 + 1
        assert_same_metrics(read_topic(broker.address), csv_records(TEST_DATA_CSV))


@pytest.mark.realdata
def test_the_real_dcgm_file_round_trips(real_csv: Path) -> None:
    """The real 2,470-row export comes back from the queue equal to the CSV: values, uuids, hosts, times, labels."""
    with broker_process() as broker:
        finished = run_streamer(
            "--metrics-path",
            str(real_csv),
            "--mq-address",
            broker.address,
            "--interval",
            "0",
            "--batch-size",
            "100",
        )
        assert finished.returncode == 0, finished.stderr
        received = read_topic(broker.address)
        assert_same_metrics(received, csv_records(real_csv))
        assert all(len(metric["labels"]) == 9 for metric in received)


def test_a_broker_that_starts_late_still_receives_everything() -> None:
    """A streamer started before the broker, already retrying, keeps retrying until it is up and loses nothing."""
    port = free_port()
    streamer = start_watched_streamer(
        "--mq-address", f"127.0.0.1:{port}", "--interval", "0", "--batch-size", "100",
        settings={"RXSTREAMER_LOGGING__LEVEL": "debug"},  # a retry while the queue is down is a debug line
    )  # fmt: skip
    # The scenario itself: the queue is down when the streamer starts, and it has tried and failed twice.
    streamer.wait_for_event("publisher.retry_scheduled", count=2)
    with broker_process(port=port) as broker:
        finished = streamer.finish()
        assert finished.returncode == 0, finished.stderr
        assert finished.summary["rows_published"] == 960
        assert len(read_topic(broker.address)) == 960
        retries = [line for line in finished.lines if line["event"] == "publisher.retry_scheduled"]
        assert retries
        assert {line["status"] for line in retries} <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
        assert event(finished.lines, "mq.connected")


def test_a_full_broker_slows_the_streamer_without_losing_a_row() -> None:
    """With room for 5 messages released after 300 ms, every batch still arrives, after RESOURCE_EXHAUSTED waits."""
    with broker_process("--max-messages", "5", "--retention", "300ms") as broker:
        # A live consumer, subscribed before the first publish: released messages can no longer be read later.
        consumer = LiveConsumer(broker.address, idle_timeout=5.0).start()
        finished = run_streamer("--mq-address", broker.address, "--interval", "0", "--batch-size", "40")
        live = consumer.join(timeout=30)
        assert finished.returncode == 0, finished.stderr
        assert finished.summary["rows_published"] == 960
        statuses = {line["status"] for line in finished.lines if line["event"] == "publisher.retry_scheduled"}
        assert statuses == {"RESOURCE_EXHAUSTED"}
        assert_same_metrics(live, csv_records(TEST_DATA_CSV))


def test_sigterm_mid_run_exits_0_with_the_published_count_equal_to_what_the_queue_holds() -> None:
    """SIGTERM during a paced run: exit 0 within the shutdown timeout; rows_published is exactly what arrived."""
    with broker_process() as broker:
        streamer = start_streamer("--mq-address", broker.address, "--interval", "100ms", "--batch-size", "10")
        assert len(read_topic(broker.address, idle_timeout=20, count=50)) == 50  # some batches have arrived
        streamer.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        finished = finish(streamer, timeout=15)
        assert time.monotonic() - signalled < 10  # settings.toml: shutdown.timeout = 10s
        assert finished.returncode == 0, finished.stderr
        summary = finished.summary
        assert summary["reason"] == "signal"
        held = read_topic(broker.address)
        assert 50 <= summary["rows_published"] < 960
        assert summary["rows_published"] == len(held)
        assert summary["rows_read"] == summary["rows_published"] + summary["rows_in_flight"]  # nothing unaccounted


def test_a_non_retryable_answer_stops_the_stream_with_an_error() -> None:
    """A batch the broker can never accept (larger than a topic may hold) ends the run: reason error, exit 1."""
    with broker_process("--max-bytes", "2000") as broker:
        finished = run_streamer("--mq-address", broker.address, "--interval", "0", "--batch-size", "50")
        assert finished.returncode == 1
        summary = finished.summary
        assert summary["reason"] == "error"
        assert "INVALID_ARGUMENT" in summary["error"]
        assert summary["rows_published"] == 0
        assert "Traceback" not in finished.stdout + finished.stderr


def test_malformed_rows_are_reported_and_every_good_row_is_published(tmp_path: Path) -> None:
    """Bad rows are rejected with their line numbers; every good row still reaches the queue."""
    lines = TEST_DATA_CSV.read_text().splitlines()
    bad = lines[:6]
    bad[2] = bad[2].replace('"DCGM_FI_DEV_GPU_UTIL"', '""', 1)  # line 3: no metric name
    bad[4] = re.sub(r',"[^"]*","DCGM_FI_DRIVER', ',"hot","DCGM_FI_DRIVER', bad[4], count=1)  # line 5: value "hot"
    bad.append('"2025-07-18T20:00:00Z","DCGM_FI_DEV_GPU_UTIL","0"')  # line 7: 3 fields
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(bad) + "\n")
    quarantine = tmp_path / "rejected.csv"
    with broker_process() as broker:
        finished = run_streamer(
            "--metrics-path", str(path), "--mq-address", broker.address, "--interval", "0",
            "--rejected-path", str(quarantine),
        )  # fmt: skip
        assert finished.returncode == 0, finished.stderr
        rejected = [(line["line"], line["reason"]) for line in finished.lines if line["event"] == "row.rejected"]
        assert rejected == [(3, "missing_metric_name"), (5, "value_not_numeric"), (7, "field_count")]
        summary = finished.summary
        assert (summary["rows_read"], summary["rows_rejected"], summary["rows_published"]) == (6, 3, 3)
        assert (summary["rows_filtered"], summary["rows_in_flight"]) == (0, 0)
        assert summary["rejected_by_reason"] == {"missing_metric_name": 1, "value_not_numeric": 1, "field_count": 1}
        assert summary["quarantined"] == 3
        assert len(read_topic(broker.address)) == 3
    with quarantine.open(newline="") as handle:
        quarantined = list(csv.DictReader(handle))
    assert [(row["line"], row["reason"]) for row in quarantined] == [
        ("3", "missing_metric_name"), ("5", "value_not_numeric"), ("7", "field_count"),
    ]  # fmt: skip
    assert [row["raw"] for row in quarantined] == [bad[2], bad[4], bad[6]]


def test_rows_dropped_by_a_transform_are_accounted_as_filtered(tmp_path: Path) -> None:
    """A transform loaded from settings runs in the service; the rows it drops show up as rows_filtered."""
    (tmp_path / "keep_power.py").write_text(
        "from reactivex import operators as ops\n\n"
        "def only_power():\n"
        "    return ops.filter(lambda row: row.metric_name == 'DCGM_FI_DEV_POWER_USAGE')\n"
    )
    settings = {"RXSTREAMER_TELEMETRY__TRANSFORMS": '["keep_power:only_power"]', "PYTHONPATH": str(tmp_path)}
    with broker_process() as broker:
        finished = run_streamer(
            "--mq-address", broker.address, "--interval", "0", "--batch-size", "25", settings=settings
        )
        assert finished.returncode == 0, finished.stderr
        summary = finished.summary
        assert (summary["rows_read"], summary["rows_published"], summary["rows_filtered"]) == (960, 96, 864)
        assert summary["rows_in_flight"] == 0
        assert {metric["metric_name"] for metric in read_topic(broker.address)} == {"DCGM_FI_DEV_POWER_USAGE"}


@pytest.mark.parametrize(
    ("args", "setting"),
    [
        (["--batch-size", "0"], "telemetry.batch_size"),
        (["--batch-size", "ten"], "telemetry.batch_size"),
        (["--interval=-1s"], "telemetry.stream_interval"),
        (["--interval", "soon"], "telemetry.stream_interval"),
        (["--mq-address", "no-port-here"], "message_queue.address"),
        (["--metrics-path", "does/not/exist.csv"], "telemetry.metrics_path"),
        (["--timestamps", "local"], "telemetry.timestamps"),
        (["--config", "missing.toml"], "--config"),
    ],
)
def test_bad_settings_exit_2_with_one_line_and_no_traceback(args: list[str], setting: str) -> None:
    """Each unusable setting is named in a single line on stderr, with exit status 2, before anything starts."""
    finished = run_streamer(*args, timeout=30)
    assert finished.returncode == 2
    assert finished.stderr.count("\n") == 1, finished.stderr
    assert setting in finished.stderr
    assert "Traceback" not in finished.stderr
    assert finished.stdout == ""


def test_a_file_without_the_required_columns_exits_2(tmp_path: Path) -> None:
    """A CSV missing columns is refused before streaming, naming what is missing."""
    path = tmp_path / "wrong.csv"
    path.write_text("time,name,reading\n1,2,3\n")
    finished = run_streamer("--metrics-path", str(path), timeout=30)
    assert finished.returncode == 2
    assert "missing" in finished.stderr
    assert "uuid" in finished.stderr
    assert "Traceback" not in finished.stderr
