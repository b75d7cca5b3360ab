"""The NATS sink under faults, against a real three-node JetStream cluster: the stream's leader killed, a
follower killed, the streamer killed and resumed from its checkpoint. In each, the stream holds every row of
the file exactly once, checked by batch identity (producer, sequence) and by content, row for row."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.nats_cluster import NatsCluster
from tests.nats_helpers import STREAM, assert_exactly_once, cluster, read_stream
from tests.processes import Watched, run_command, run_streamer, start_watched_streamer
from tests.test_streamer_e2e import assert_same_metrics, csv_records

pytestmark = [pytest.mark.integration, pytest.mark.faults]
__all__ = ["cluster"]  # the fixture, imported to be used

ROWS = 12_000
BATCH = 10


@pytest.fixture
def telemetry(tmp_path: Path) -> Path:
    path = tmp_path / "telemetry.csv"
    finished = run_command("generate", "--rows", str(ROWS), "--output", str(path))
    assert finished.returncode == 0, finished.stderr
    return path


def start(cluster: NatsCluster, telemetry: Path, *extra: str) -> Watched:
    return start_watched_streamer(
        "--metrics-path", str(telemetry), "--mq-address", cluster.address, "--interval", "0s",
        "--batch-size", str(BATCH), *extra,
    )  # fmt: skip


def wait_for_checkpoint(path: Path, sequence: int, streamer: Watched) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if json.loads(path.read_text()).get("sequence", 0) >= sequence:
                return
        except (OSError, ValueError):
            pass  # not written yet, or being replaced
        assert streamer.process.poll() is None, f"the streamer ended early: {streamer.finish().stderr}"
        assert time.monotonic() < deadline, f"no checkpoint of batch {sequence} within 60 s"
        time.sleep(0.01)


def events(lines: list[dict[str, Any]], *names: str) -> list[str]:
    return [line["event"] for line in lines if line.get("event") in names]


def assert_the_file_once(cluster: NatsCluster, telemetry: Path) -> None:
    received = read_stream(cluster.address)
    assert_exactly_once(received, ROWS)
    assert_same_metrics(received, csv_records(telemetry))


def test_the_leader_killed_mid_run(cluster: NatsCluster, telemetry: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint.json"
    streamer = start(cluster, telemetry, "--checkpoint-path", str(checkpoint))
    wait_for_checkpoint(checkpoint, 50, streamer)
    leader = cluster.wait_for_leader(STREAM)
    cluster.kill(leader)
    killed_after = json.loads(checkpoint.read_text())["sequence"]
    finished = streamer.finish(timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert finished.summary["reason"] == "completed"
    assert killed_after < ROWS // BATCH, "the run was over before the leader was killed"
    # One line when the queue was lost, one when it was back (the first `mq.connected` is the start).
    seen = events(finished.lines, "mq.unreachable", "mq.connected")
    told = [line for line in finished.lines if str(line.get("event", "")).startswith(("mq.", "publisher.", "nats."))]
    assert seen == ["mq.connected", "mq.unreachable", "mq.connected"], told
    assert cluster.wait_for_leader(STREAM) != leader
    cluster.restart(leader)
    assert_the_file_once(cluster, telemetry)


def test_a_follower_killed_mid_run(cluster: NatsCluster, telemetry: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint.json"
    streamer = start(cluster, telemetry, "--checkpoint-path", str(checkpoint))
    wait_for_checkpoint(checkpoint, 50, streamer)
    leader = cluster.wait_for_leader(STREAM)
    follower = next(name for name in cluster.names if name != leader)
    cluster.kill(follower)
    finished = streamer.finish(timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert finished.summary["rows_published"] == ROWS
    assert_the_file_once(cluster, telemetry)


def test_the_streamer_killed_and_resumed_from_its_checkpoint(
    cluster: NatsCluster, telemetry: Path, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "checkpoint.json"
    streamer = start(cluster, telemetry, "--checkpoint-path", str(checkpoint))
    wait_for_checkpoint(checkpoint, 100, streamer)
    streamer.process.send_signal(signal.SIGKILL)
    assert streamer.finish().returncode == -signal.SIGKILL
    resumed = run_streamer(
        "--metrics-path", str(telemetry), "--mq-address", cluster.address, "--interval", "0s",
        "--batch-size", str(BATCH), "--checkpoint-path", str(checkpoint), timeout=120,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert any(line.get("event") == "streamer.resumed" for line in resumed.lines)
    assert_the_file_once(cluster, telemetry)
