"""Hostile files and filesystems, with real streamer (and broker) processes: checkpoints that lie, inputs that
grow, shrink or rotate under the streamer, and places that refuse to be written.

Each test checks the operator's view: the exit status, one line on stderr or the `streamer.stopped` summary,
and what the queue holds, read back with `tail`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rxstreamer.checkpoint import Checkpoint, FileIdentity, write_checkpoint
from rxstreamer.model import Position
from rxstreamer.sources import CsvRows
from tests.conftest import TEST_DATA_CSV
from tests.processes import (
    REPO_ROOT,
    broker_process,
    child_env,
    event,
    finish,
    read_topic,
    run_streamer,
    start_watched_streamer,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

ROWS = 960
SIZE = 399_757  # bytes of test-data/metrics.csv
NOWHERE = "127.0.0.1:1"  # no broker: these runs must stop before they would connect


def data_lines() -> tuple[bytes, list[bytes]]:
    """The header line and the data lines of test-data/metrics.csv, line breaks included."""
    header, *lines = TEST_DATA_CSV.read_bytes().splitlines(keepends=True)
    return header, lines


def position_after(path: Path, rows: int) -> Position:
    reader = CsvRows(path)
    source = iter(reader)
    for _ in range(rows):
        next(source)
    source.close()
    return reader.position


def stops_before_starting(finished: Any) -> str:
    """Exit status 2, exactly one line on stderr and no stream started: that line's message, as the console
    shows it (the streamer runs with JSON logs, so the line is a JSON object: cli.py's ``_fail``)."""
    assert finished.returncode == 2, (finished.stdout, finished.stderr)
    assert "Traceback" not in finished.stderr
    lines = finished.stderr.splitlines()
    assert len(lines) == 1, finished.stderr
    assert all(line.get("event") != "streamer.started" for line in finished.lines)
    error = json.loads(lines[0])
    assert (error["level"], error["exit_code"]) == ("error", 2), error
    assert error["event"].startswith("cli."), error
    return f"rxstreamer: {error['error']}"


# Checkpoints that lie


def lying(document: dict[str, Any], change: str) -> None:
    if change == "offset_zero_later_line":
        document["position"]["offset"] = 0  # the adversarial run's: it re-sent 380 rows under new sequences
    elif change == "negative_offset":
        document["position"]["offset"] = -200
    elif change == "sequence_past_uint64":
        document["sequence"] = 2**64


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ("offset_zero_later_line", "position.line = 381: must be from 1 to position.offset (0)"),
        ("negative_offset", "position.offset = -200: must be an integer >= 0"),
        ("sequence_past_uint64", "sequence = 18446744073709551616: must be an integer from 0 to 18446744073709551614"),
        ("random_bytes", "not UTF-8 text"),
    ],
)
def test_a_checkpoint_that_lies_stops_the_start_with_one_line(tmp_path: Path, change: str, field: str) -> None:
    """Exit 2 and one line naming the checkpoint and the field, before anything is read or sent."""
    path = tmp_path / "stream.checkpoint"
    if change == "random_bytes":
        path.write_bytes(bytes(range(128, 256)) * 8)
    else:
        position = position_after(TEST_DATA_CSV, 380)
        record = Checkpoint(
            producer_id="p", sequence=38, position=position, batch_size=10,
            file=FileIdentity.of(TEST_DATA_CSV, position.offset), rows_published=380, rows_read=380,
        )  # fmt: skip
        write_checkpoint(path, record)
        document = json.loads(path.read_text())
        lying(document, change)
        path.write_text(json.dumps(document))
    finished = run_streamer("--mq-address", NOWHERE, "--batch-size", "10", "--checkpoint-path", str(path))
    message = stops_before_starting(finished)
    assert message.startswith(f"rxstreamer: checkpoint {path} is not a valid checkpoint: ")
    assert field in message


# Places that refuse to be written


def test_a_checkpoint_directory_that_refuses_files_stops_the_start(tmp_path: Path) -> None:
    """A checkpoint path under a regular file: exit 2 naming the path, before the first batch."""
    blocker = tmp_path / "state"
    blocker.write_text("a file, not a directory\n")
    path = blocker / "stream.checkpoint"
    finished = run_streamer("--mq-address", NOWHERE, "--checkpoint-path", str(path))
    message = stops_before_starting(finished)
    assert message == f"rxstreamer: checkpoint {path} (telemetry.checkpoint_path) cannot be written: Not a directory"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_device_as_rejected_path_stops_the_start() -> None:
    """--rejected-path /dev/full cannot take the header: exit 2 naming the setting, the path and ENOSPC."""
    finished = run_streamer("--mq-address", NOWHERE, "--rejected-path", "/dev/full")
    message = stops_before_starting(finished)
    assert message == (
        "rxstreamer: invalid setting telemetry.rejected_path = '/dev/full': cannot be appended to: "
        "No space left on device"
    )


def streamer_with_file_size_limit(limit: int, *args: str) -> subprocess.Popen[str]:
    """`rxstreamer run` whose files may not grow past ``limit`` bytes (RLIMIT_FSIZE): writes beyond fail, EFBIG.

    Python ignores SIGXFSZ, so the write fails as on a full disk instead of killing the process. The limit
    is set inside the child, not in a preexec_fn, which is unsafe while the test has threads.
    """
    code = (
        "import resource, runpy, sys; "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
        f"sys.argv = ['rxstreamer', *{['run', '--log-format', 'json', *args]!r}]; "
        "runpy.run_module('rxstreamer', run_name='__main__')"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
        cwd=REPO_ROOT,
    )  # fmt: skip


def test_a_rejected_path_that_fills_mid_run_ends_the_stream_with_reason_error(tmp_path: Path) -> None:
    """The quarantine refuses a write halfway: streamer.stopped with reason error naming path and reason, exit 1."""
    header, lines = data_lines()
    bad = b'"2025-07-18T20:00:00Z","DCGM_FI_DEV_GPU_UTIL","0","nvidia0","GPU-1","m","h","","","","n/a",""\n'
    metrics = tmp_path / "metrics.csv"
    metrics.write_bytes(header + b"".join(lines[:100]) + b"".join(line + bad for line in lines[100:]))
    rejected = tmp_path / "rejected.csv"
    with broker_process() as broker:
        process = streamer_with_file_size_limit(
            4096, "--metrics-path", str(metrics), "--mq-address", broker.address, "--interval", "0",
            "--batch-size", "50", "--rejected-path", str(rejected),
        )  # fmt: skip
        finished = finish(process)
        published = read_topic(broker.address)
    assert finished.returncode == 1, finished.stderr
    assert "Traceback" not in finished.stderr
    summary = finished.summary
    assert summary["reason"] == "error"
    assert f"to telemetry.rejected_path {rejected}: File too large" in summary["error"]
    assert 0 < summary["quarantined"] < 860
    assert len(rejected.read_bytes()) <= 4096
    assert 100 <= len(published) < ROWS


# Inputs that grow, shrink or rotate


def held(address: str) -> list[dict[str, Any]]:
    return read_topic(address, with_batch=True)


def test_a_file_that_grew_by_appends_resumes_after_its_checkpoint(tmp_path: Path) -> None:
    """500 rows streamed, 460 appended, streamed again: the second run sends only the new rows, sequences go on."""
    header, lines = data_lines()
    metrics = tmp_path / "metrics.csv"
    metrics.write_bytes(header + b"".join(lines[:500]))
    checkpoint = tmp_path / "stream.checkpoint"
    args = (
        "--metrics-path",
        str(metrics),
        "--interval",
        "0",
        "--batch-size",
        "50",
        "--checkpoint-path",
        str(checkpoint),
    )
    with broker_process() as broker:
        first = run_streamer("--mq-address", broker.address, *args)
        assert first.returncode == 0, first.stderr
        with metrics.open("ab") as file:
            file.write(b"".join(lines[500:]))
        second = run_streamer("--mq-address", broker.address, *args)
        assert second.returncode == 0, second.stderr
        received = held(broker.address)
    resumed = event(second.lines, "streamer.resumed")
    assert (resumed["next_sequence"], resumed["line"]) == (11, 502)
    assert resumed["file_size"] == SIZE > resumed["file_size_at_checkpoint"]
    assert (first.summary["rows_published"], second.summary["rows_published"]) == (500, 460)
    producer = event(first.lines, "streamer.started")["producer_id"]
    assert event(second.lines, "streamer.started")["producer_id"] == producer
    assert {metric["producer_id"] for metric in received} == {producer}
    assert sorted({metric["sequence"] for metric in received}) == list(range(1, 21))
    assert len(received) == ROWS  # nothing sent twice
    with TEST_DATA_CSV.open() as expected:
        uuids = [line.split('","')[4] for line in list(expected)[1:]]
    assert [metric["uuid"] for metric in sorted(received, key=lambda metric: metric["sequence"])] == uuids


def while_streaming(tmp_path: Path, change: Callable[[Path], None]) -> tuple[Any, list[dict[str, Any]]]:
    """Stream a copy of test-data (20 batches, at least 1.9 s by pacing); after the first ack, ``change`` it."""
    metrics = tmp_path / "metrics.csv"
    metrics.write_bytes(TEST_DATA_CSV.read_bytes())
    with broker_process() as broker:
        streamer = start_watched_streamer(
            "--metrics-path", str(metrics), "--mq-address", broker.address, "--interval", "100ms",
            "--batch-size", "50", settings={"RXSTREAMER_LOGGING__LEVEL": "debug"},
        )  # fmt: skip
        streamer.wait_for_event("publisher.acked")
        change(metrics)
        finished = streamer.finish()
        return finished, read_topic(broker.address)


def test_a_file_truncated_mid_run_ends_with_reason_error(tmp_path: Path) -> None:
    """Cut to 5000 bytes after the first batch: exit 1, reason error, the error names path, sizes and offset."""
    finished, received = while_streaming(tmp_path, lambda path: os.truncate(path, 5000))
    assert finished.returncode == 1, finished.stderr
    summary = finished.summary
    assert summary["reason"] == "error"
    assert summary["error"].startswith(
        f"{tmp_path / 'metrics.csv'} shrank from {SIZE} to 5000 bytes while being read at offset "
    )
    assert 50 <= len(received) < ROWS


def test_a_file_rotated_mid_run_is_streamed_to_its_end_and_reported(tmp_path: Path) -> None:
    """Renamed away and replaced after the first batch: every old row sent, source.rotated logged, exit 0."""

    def rotate(path: Path) -> None:
        path.rename(path.with_name("metrics.csv.1"))
        path.write_bytes(TEST_DATA_CSV.read_bytes()[:3000])

    finished, received = while_streaming(tmp_path, rotate)
    assert finished.returncode == 0, finished.stderr
    assert finished.summary["reason"] == "completed"
    assert finished.summary["rows_published"] == ROWS
    rotated = event(finished.lines, "source.rotated")
    assert (rotated["level"], rotated["path"], rotated["now_names"]) == (
        "warning",
        str(tmp_path / "metrics.csv"),
        "another file",
    )
    assert len(received) == ROWS


def test_a_checkpoint_of_a_rotated_file_does_not_resume_the_new_one(tmp_path: Path) -> None:
    """Checkpoints written after the rotation carry no fingerprint of the newcomer: the restart is refused."""
    metrics = tmp_path / "metrics.csv"
    metrics.write_bytes(TEST_DATA_CSV.read_bytes())
    checkpoint = tmp_path / "stream.checkpoint"
    args = (
        "--metrics-path",
        str(metrics),
        "--interval",
        "100ms",
        "--batch-size",
        "50",
        "--checkpoint-path",
        str(checkpoint),
    )
    with broker_process() as broker:
        streamer = start_watched_streamer(
            "--mq-address", broker.address, *args, settings={"RXSTREAMER_LOGGING__LEVEL": "debug"}
        )
        streamer.wait_for_event("publisher.acked")
        metrics.rename(tmp_path / "metrics.csv.1")
        metrics.write_bytes(TEST_DATA_CSV.read_bytes())  # the same bytes, but another file
        assert streamer.finish().returncode == 0
        again = run_streamer("--mq-address", broker.address, *args)
    message = stops_before_starting(again)
    assert "the file it was written for was replaced (rotated) while it was being streamed" in message
