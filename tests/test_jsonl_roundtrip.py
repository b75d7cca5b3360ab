"""JSON lines end to end: what `rxstreamer tail` prints streams back into the queue unchanged.

Real processes throughout, on 127.0.0.1: a broker, `rxstreamer run` for each file, and `rxstreamer tail` reading
each topic from the beginning, exactly as a user would save a topic to a file and replay it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from rxstreamer.validate import validate_file
from tests.conftest import TEST_DATA_CSV
from tests.processes import broker_process, run_command, run_streamer

pytestmark = pytest.mark.integration


def stream(address: str, topic: str, path: Path) -> dict[str, Any]:
    """Run the whole file into ``topic`` as fast as the queue takes it; the streamer's closing summary."""
    finished = run_streamer(
        "--metrics-path", str(path), "--mq-address", address, "--topic", topic,
        "--interval", "0s", "--batch-size", "1000",
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr
    summary = finished.summary
    assert summary["reason"] == "completed"
    return summary


def tail(address: str, topic: str, *options: str) -> list[str]:
    """Every line `rxstreamer tail --from-beginning` prints for ``topic``, until a second passes without more."""
    finished = run_command(
        "tail", "--mq-address", address, "--topic", topic, "--from-beginning", "--idle-timeout", "1s", *options
    )
    assert finished.returncode == 0, finished.stderr
    return finished.stdout.splitlines()


def counts(summary: dict[str, Any]) -> tuple[int, int, int]:
    return summary["rows_read"], summary["rows_published"], summary["rows_rejected"]


def test_tail_then_run_then_tail_is_the_identity(tmp_path: Path) -> None:
    """test-data/metrics.csv to topic A, A printed to a .jsonl, that file to topic B: B prints exactly as A did."""
    with broker_process() as broker:
        assert counts(stream(broker.address, "from-csv", TEST_DATA_CSV)) == (960, 960, 0)
        printed = tail(broker.address, "from-csv")
        jsonl = tmp_path / "from-csv.jsonl"
        jsonl.write_text("".join(line + "\n" for line in printed), encoding="utf-8")
        assert counts(stream(broker.address, "from-jsonl", jsonl)) == (960, 960, 0)
        again = tail(broker.address, "from-jsonl")
    assert len(printed) == 960
    assert again == printed


def test_tail_with_batch_output_streams_back_as_the_plain_lines(tmp_path: Path) -> None:
    """`tail --with-batch` adds producer_id, sequence and offset; replayed, they are ignored, nothing else changes."""
    with broker_process() as broker:
        stream(broker.address, "from-csv", TEST_DATA_CSV)
        plain = tail(broker.address, "from-csv")
        with_batch = tail(broker.address, "from-csv", "--with-batch")
        assert {"producer_id", "sequence", "offset"} <= set(json.loads(with_batch[0]))
        jsonl = tmp_path / "with-batch.ndjson"
        jsonl.write_text("".join(line + "\n" for line in with_batch), encoding="utf-8")
        assert counts(stream(broker.address, "from-ndjson", jsonl)) == (960, 960, 0)
        assert tail(broker.address, "from-ndjson") == plain


@pytest.mark.realdata
def test_the_real_export_round_trips_through_json_lines_field_by_field(real_csv: Path, tmp_path: Path) -> None:
    """The real DCGM CSV to a topic, printed to .jsonl, streamed again: every metric equal, in order, to the first."""
    with real_csv.open(newline="", encoding="utf-8") as handle:
        records = sum(1 for _ in csv.DictReader(handle))
    good = validate_file(real_csv).good
    with broker_process() as broker:
        assert counts(stream(broker.address, "real-csv", real_csv)) == (records, good, records - good)
        printed = tail(broker.address, "real-csv")
        jsonl = tmp_path / "real.jsonl"
        jsonl.write_text("".join(line + "\n" for line in printed), encoding="utf-8")
        assert counts(stream(broker.address, "real-jsonl", jsonl)) == (good, good, 0)
        again = tail(broker.address, "real-jsonl")
    before = [json.loads(line) for line in printed]
    after = [json.loads(line) for line in again]
    assert len(before) == len(after) == good
    for number, (first, second) in enumerate(zip(before, after, strict=True), start=1):
        assert list(second) == list(first), f"metric {number}: fields differ"
        for field, value in first.items():
            assert second[field] == value, f"metric {number}: {field} {second[field]!r} != {value!r}"
    assert all(len(metric["labels"]) == 9 for metric in after)
    assert len({metric["uuid"] for metric in after}) == validate_file(jsonl).gpus
