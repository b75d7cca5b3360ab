"""What the NATS sink's tests share: the cluster fixture, reading a stream back with the real `tail`, and the
exactly-once check (each batch identity once, each row of the file once, in order)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.nats_cluster import NatsCluster, cluster_for_test
from tests.processes import run_command

STREAM = "GPU_TELEMETRY"


@pytest.fixture
def cluster() -> Iterator[NatsCluster]:
    yield from cluster_for_test()


def read_stream(
    address: str,
    topic: str = "gpu-telemetry",
    stream: str = STREAM,
    settings: dict[str, str] | None = None,
    count: int | None = None,
) -> list[dict[str, Any]]:
    """Every metric of the topic in the stream, from its first message, as `rxstreamer tail --with-batch` prints;
    ``settings`` are RXSTREAMER_ variables (TLS and credentials, say). With ``count``, the first ``count`` metrics,
    without waiting for the stream to stay idle."""
    finished = run_command(
        "tail",
        "--mq-address",
        address,
        "--topic",
        topic,
        "--nats-stream",
        stream,
        "--from-beginning",
        "--idle-timeout",
        "3s",
        "--with-batch",
        *(() if count is None else ("--count", str(count))),
        env=settings,
    )
    assert finished.returncode == 0, finished.stderr
    return [json.loads(line) for line in finished.stdout.splitlines()]


def assert_exactly_once(received: list[dict[str, Any]], expected_rows: int) -> None:
    """Each (producer, sequence) is one message, each message one batch of consecutive rows, no row twice."""
    offsets: dict[tuple[str, int], int] = {}
    for metric in received:
        identity = (metric["producer_id"], metric["sequence"])
        assert offsets.setdefault(identity, metric["offset"]) == metric["offset"], f"{identity} stored twice"
    sequences = sorted(sequence for _, sequence in offsets)
    assert sequences == list(range(1, len(sequences) + 1)), "a batch is missing or out of its place"
    assert len(received) == expected_rows


def file_rows(path: Path) -> int:
    with path.open() as handle:
        return sum(1 for line in handle if line.strip()) - 1  # the header
