"""The NATS JetStream sink against a real three-node cluster on 127.0.0.1 (tests/nats_cluster.py)."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import nats
import pytest

from tests.conftest import TEST_DATA_CSV
from tests.nats_cluster import NatsCluster
from tests.nats_helpers import STREAM, assert_exactly_once, cluster, read_stream
from tests.processes import run_command, run_streamer, start_watched_streamer
from tests.test_streamer_e2e import assert_same_metrics, csv_records

pytestmark = pytest.mark.integration
__all__ = ["cluster"]  # the fixture, imported to be used


def test_a_file_goes_into_a_three_replica_stream_once_and_in_order(cluster: NatsCluster) -> None:
    finished = run_streamer("--mq-address", cluster.address, "--interval", "0s", "--batch-size", "50")
    assert finished.returncode == 0, finished.stderr
    created = [line for line in finished.lines if line.get("event") == "nats.stream_created"]
    assert [(line["stream"], line["replicas"], line["subjects"]) for line in created] == [(STREAM, 3, ["rxstreamer.>"])]
    received = read_stream(cluster.address)
    assert_same_metrics(received, csv_records(TEST_DATA_CSV))
    assert_exactly_once(received, 960)
    again = run_streamer("--mq-address", cluster.address, "--interval", "0s", "--batch-size", "50")
    assert again.summary["duplicates"] == again.summary["batches_published"] == 20  # dropped by Nats-Msg-Id
    assert len(read_stream(cluster.address)) == 960
    # JetStream de-duplicates stream-wide: the same batches to another topic are other messages.
    other = run_streamer("--mq-address", cluster.address, "--interval", "0s", "--batch-size", "50", "--topic", "b")
    assert (other.summary["duplicates"], other.summary["batches_published"]) == (0, 20)
    assert_same_metrics(read_stream(cluster.address, topic="b"), csv_records(TEST_DATA_CSV))


@pytest.mark.realdata
def test_the_real_dcgm_file_round_trips_through_the_cluster(cluster: NatsCluster, real_csv: Path) -> None:
    finished = run_streamer(
        "--metrics-path", str(real_csv), "--mq-address", cluster.address, "--interval", "0s", "--batch-size", "100"
    )
    assert finished.returncode == 0, finished.stderr
    received = read_stream(cluster.address)
    assert len(received) == 2470
    assert_same_metrics(received, csv_records(real_csv))


def test_a_stream_whose_subjects_do_not_take_ours_is_a_bad_setting(cluster: NatsCluster) -> None:
    async def other_stream() -> None:
        connection = await nats.connect(servers=cluster.urls)
        await connection.jetstream().add_stream(name="OTHER", subjects=["other.>"], num_replicas=3)
        await connection.close()

    asyncio.run(other_stream())
    finished = run_streamer("--mq-address", cluster.address, "--nats-stream", "OTHER")
    assert finished.returncode == 2
    (line,) = [json.loads(text) for text in finished.stderr.splitlines()]
    assert (line["event"], line["setting"]) == ("cli.invalid_setting", "message_queue.nats.stream")
    assert line["error"].startswith("invalid setting message_queue.nats.stream = 'OTHER': the stream's subjects")
    assert "do not take 'rxstreamer.gpu-telemetry'" in line["error"]


def test_tail_reads_from_a_stream_sequence_and_new_messages(cluster: NatsCluster) -> None:
    run_streamer("--mq-address", cluster.address, "--interval", "0s", "--batch-size", "100")
    everything = read_stream(cluster.address)
    later = run_command(
        "tail", "--mq-address", cluster.address, "--from-offset", "9", "--idle-timeout", "2s", "--with-batch"
    )
    assert [json.loads(line) for line in later.stdout.splitlines()] == [m for m in everything if m["offset"] >= 9]


def test_a_resumed_streamer_stores_nothing_twice_after_the_duplicate_window(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    """The batches the last run had stored without their acks are found in the stream, not sent again.

    Simulated without a crash: a checkpoint taken early in a run is put back after the run finished, as if
    every later batch had been stored and its ack lost; the restart comes after the stream's one-second
    duplicate window, when JetStream itself no longer drops a re-sent message id.
    """
    checkpoint = tmp_path / "checkpoint.json"
    early = tmp_path / "early.json"
    options = ("--mq-address", cluster.address, "--checkpoint-path", str(checkpoint), "--batch-size", "50")
    window = {"RXSTREAMER_MESSAGE_QUEUE__NATS__DUPLICATE_WINDOW": "1s"}
    first = start_watched_streamer(*options, "--interval", "50ms", settings=window)
    first.wait_for_event("streamer.started")
    deadline = time.monotonic() + 30
    while not (checkpoint.exists() and json.loads(checkpoint.read_text() or "{}").get("sequence", 0) >= 3):
        assert time.monotonic() < deadline, "no checkpoint of batch 3"
        time.sleep(0.02)
    shutil.copy(checkpoint, early)
    resumed_from = json.loads(early.read_text())["sequence"]
    assert first.finish().returncode == 0
    assert len(read_stream(cluster.address)) == 960
    time.sleep(1.5)  # past the duplicate window: only the sink's own look at the stream can tell now
    shutil.copy(early, checkpoint)
    second = run_streamer(*options, "--interval", "0s", settings=window)
    assert second.returncode == 0, second.stderr
    checked = [line for line in second.lines if line.get("event") == "nats.resume_checked"]
    assert checked[0]["stored_after_checkpoint"] == list(range(resumed_from + 1, 21))
    assert second.summary["duplicates"] == 20 - resumed_from
    received = read_stream(cluster.address)
    assert_exactly_once(received, 960)
    assert_same_metrics(received, csv_records(TEST_DATA_CSV))
