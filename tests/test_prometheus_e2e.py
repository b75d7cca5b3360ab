"""The real dcgm-exporter scrape end to end: real broker and streamer processes, read back with `tail`, and
`rxstreamer validate` on the command line. The expectation is a plain reading of the text, not our parser."""

from __future__ import annotations

import csv
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.processes import broker_process, read_topic, run_command, run_streamer

pytestmark = [pytest.mark.integration, pytest.mark.realdata]

SAMPLE_LINE = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\{(.*)\} (.+)")
LABEL_PAIR = re.compile(r'(\w+)="([^"]*)"')
FIELDS = {"gpu": "gpu_id", "UUID": "uuid", "device": "device", "modelName": "model_name", "Hostname": "hostname"}
ERROR_VALUE = "ERROR - FAILED TO CONVERT TO STRING"


def rfc3339_of_mtime(path: Path) -> str:
    """The file's modification time, as the queue's consumers see it: RFC 3339, microseconds, Z."""
    modified = os.stat(path).st_mtime_ns
    text = datetime.fromtimestamp(modified // 10**9, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{(modified // 1000) % 10**6:06d}".rstrip("0")
    return text + (f".{fraction}" if fraction else "") + "Z"


def read_scrape(path: Path) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """Each numeric sample as the metric the queue should hold, in file order; the others' line and text."""
    timestamp = rfc3339_of_mtime(path)
    metrics: list[dict[str, Any]] = []
    others: dict[int, str] = {}
    for number, text in enumerate(path.read_text().split("\n"), 1):
        if not text or text.startswith("#"):
            continue
        match = SAMPLE_LINE.fullmatch(text)
        assert match is not None, text
        name, labels_text, value_text = match.groups()
        labels = dict(LABEL_PAIR.findall(labels_text))
        if value_text == ERROR_VALUE:
            others[number] = text
            continue
        metric: dict[str, Any] = {"timestamp": timestamp, "metric_name": name, "value": float(value_text)}
        metric.update({field: labels.pop(label) for label, field in FIELDS.items()})
        metric.update({"container": "", "pod": "", "namespace": "", "labels": labels})
        metrics.append(metric)
    return metrics, others


def test_the_real_scrape_reaches_the_queue_field_by_field(real_prom: Path, tmp_path: Path) -> None:
    """223 samples arrive once, in file order, equal to the text; the 10 ERROR values are rejected by line."""
    expected, errors = read_scrape(real_prom)
    assert (len(expected), len(errors)) == (223, 10)
    quarantine = tmp_path / "rejected.csv"
    with broker_process() as broker:
        finished = run_streamer(
            "--metrics-path", str(real_prom), "--mq-address", broker.address, "--interval", "0s",
            "--batch-size", "50", "--rejected-path", str(quarantine),
        )  # fmt: skip
        assert finished.returncode == 0, finished.stderr
        summary = finished.summary
        assert summary["reason"] == "completed"
        assert (summary["rows_read"], summary["rows_published"], summary["rows_rejected"]) == (233, 223, 10)
        assert summary["rejected_by_reason"] == {"value_not_numeric": 10}
        received = read_topic(broker.address)
    assert len(received) == len(expected)
    for got, want in zip(received, expected, strict=True):
        assert got == want
    rejected = [(line["line"], line["reason"]) for line in finished.lines if line["event"] == "row.rejected"]
    assert rejected == [(number, "value_not_numeric") for number in errors]
    with quarantine.open(newline="") as handle:
        quarantined = list(csv.DictReader(handle))
    assert [(int(row["line"]), row["raw"]) for row in quarantined] == list(errors.items())


def test_validate_reports_the_good_and_the_rejected(real_prom: Path) -> None:
    """`rxstreamer validate` chooses the format by the .prom extension and counts what the streamer would."""
    expected, errors = read_scrape(real_prom)
    text = run_command("validate", str(real_prom))
    assert text.returncode == 1, text.stderr
    assert "rows: 233  good: 223  rejected: 10" in text.stdout
    assert "value_not_numeric: 10" in text.stdout
    assert f"line {min(errors)}: value='{ERROR_VALUE}' is not a number" in text.stdout

    answer = run_command("validate", "--json", str(real_prom))
    assert answer.returncode == 1, answer.stderr
    report = json.loads(answer.stdout)
    assert (report["rows"], report["good"], report["rejected"], report["exit_code"]) == (233, 223, 10, 1)
    assert report["rejected_by_reason"] == {"value_not_numeric": 10}
    assert [example["line"] for example in report["examples"]["value_not_numeric"]] == sorted(errors)[:5]
    assert report["gpus"] == len({metric["uuid"] for metric in expected})
    assert report["metrics"] == sorted({metric["metric_name"] for metric in expected})
    assert report["first_timestamp"] == report["last_timestamp"] == rfc3339_of_mtime(real_prom)
