"""A batch's identity and content: re-sends are duplicates, two inputs under one producer id are a conflict."""

from __future__ import annotations

import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rxstreamer.encoding import BatchEncoder, content_digest
from rxstreamer.model import Position
from rxstreamer.sources import CsvRows
from tests.conftest import TEST_DATA_CSV
from tests.processes import broker_process, child_env, read_topic, run_streamer, rxstreamer_command


def test_re_encoding_the_same_rows_keeps_the_content_digest() -> None:
    """Another creation time and processing timestamps change the payload's bytes, not the content digest."""
    rows = list(CsvRows(TEST_DATA_CSV))[:10]
    position = Position(4163, 11, 0)
    first = BatchEncoder("p", clock=lambda: datetime(2026, 1, 1, tzinfo=UTC))(rows, position)
    again = BatchEncoder("p", timestamps="processing", clock=lambda: datetime(2026, 1, 2, tzinfo=UTC))(rows, position)
    assert first.payload != again.payload
    assert first.content_digest == again.content_digest
    assert len(first.content_digest) == 32


def test_other_rows_or_another_place_give_another_content_digest() -> None:
    """A batch one row longer, one starting a row later, or the same rows on another loop pass: each differs."""
    rows = list(CsvRows(TEST_DATA_CSV))
    digests = {
        content_digest(rows[:10], Position(4163, 11, 0)),
        content_digest(rows[:11], Position(4163, 11, 0)),
        content_digest(rows[1:11], Position(4163, 11, 0)),
        content_digest(rows[:10], Position(4163, 11, 1)),
    }
    assert len(digests) == 4
    assert content_digest([]) == ""


@pytest.mark.integration
@pytest.mark.faults
def test_two_inputs_under_one_producer_id_stop_the_second_with_a_conflict(tmp_path: Path) -> None:
    """The second file's batch 1 clashes with the first file's: exit 1 naming the producer id, no row dropped."""
    other = tmp_path / "other.csv"
    lines = TEST_DATA_CSV.read_text().splitlines(keepends=True)
    other.write_text("".join([lines[0], *lines[:0:-1]]))  # the same rows, last first
    with broker_process() as broker:
        common = ("--mq-address", broker.address, "--interval", "0", "--producer-id", "shared-id")
        first = run_streamer(*common, "--metrics-path", str(TEST_DATA_CSV))
        assert (first.returncode, first.summary["rows_published"]) == (0, 960)
        second = run_streamer(*common, "--metrics-path", str(other))
        assert second.returncode == 1
        summary = second.summary
        assert (summary["reason"], summary["rows_published"], summary["duplicates"]) == ("error", 0, 0)
        assert summary["error"].startswith("FAILED_PRECONDITION: ")
        assert "'shared-id'" in summary["error"]
        assert len(read_topic(broker.address)) == 960


@pytest.mark.integration
def test_a_replay_with_processing_timestamps_is_recognised_as_duplicates() -> None:
    """Re-running the same stream stamps rows anew, yet the queue answers every batch as a duplicate."""
    with broker_process() as broker:
        args = ("--mq-address", broker.address, "--interval", "0", "--timestamps", "processing")
        first = run_streamer(*args)
        again = run_streamer(*args)
        assert (first.returncode, first.summary["duplicates"]) == (0, 0)
        assert (again.returncode, again.summary["reason"], again.summary["duplicates"]) == (0, "completed", 96)
        assert len(read_topic(broker.address)) == 960


@pytest.mark.integration
@pytest.mark.faults
def test_a_batch_larger_than_the_queue_accepts_stops_at_once_naming_the_sizes(tmp_path: Path) -> None:
    """gRPC refuses an over-limit message with RESOURCE_EXHAUSTED: the streamer must not retry it forever."""
    big = tmp_path / "big.csv"
    generated = subprocess.run(
        rxstreamer_command("generate", "--rows", "5000", "--output", str(big)),
        capture_output=True, text=True, env=child_env(), timeout=60, check=False,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    with broker_process("--max-bytes", "1000") as broker:
        finished = run_streamer(
            "--mq-address", broker.address, "--metrics-path", str(big), "--batch-size", "5000", "--interval", "0",
            # v1 states every row in full: 5,000 rows pass gRPC's own 1 MiB limit (v2 would take 90,000)
            settings={"RXSTREAMER_MESSAGE_QUEUE__ENCODING": "v1"},
        )  # fmt: skip
    assert finished.returncode == 1
    assert "publisher.retry_scheduled" not in [line["event"] for line in finished.lines]
    error = finished.summary["error"]
    assert re.fullmatch(
        r"RESOURCE_EXHAUSTED: batch 1 \(5000 rows\) is a \d+-byte message and the queue accepts at most 1049576 "
        r"bytes in one message; lower telemetry.batch_size, or raise the queue's limit \(broker.max_bytes\)",
        error,
    ), error
