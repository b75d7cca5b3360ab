"""Rows to MetricBatch bytes and back, and the JSON shape `tail` prints."""

from __future__ import annotations

import csv
import re
from datetime import UTC, datetime
from types import MappingProxyType

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from rxstreamer import encoding
from rxstreamer.encoding import (
    CONTENT_TYPE,
    BatchEncoder,
    WireEncoding,
    decode_batch,
    encode_batch,
    format_rfc3339,
    from_timestamp,
    metric_to_dict,
    to_metric,
    to_timestamp,
)
from rxstreamer.model import MetricRow
from rxstreamer.proto.telemetry_pb2 import GpuMetric, MetricBatch
from rxstreamer.sources import CsvRows
from tests.conftest import TEST_DATA_CSV

SCRAPE = datetime(2025, 7, 18, 20, 42, 34, tzinfo=UTC)


def row(value: float, uuid: str = "GPU-1", moment: datetime = SCRAPE) -> MetricRow:
    labels = MappingProxyType({"Hostname": "dgx-1", "gpu": "0", "UUID": uuid})
    return MetricRow(
        moment,
        "DCGM_FI_DEV_GPU_TEMP",
        "0",
        "nvidia0",
        uuid,
        "NVIDIA H100",
        "dgx-1",
        "",
        "",
        "",
        value,
        labels,
        2,
    )


def test_a_batch_round_trips_every_field() -> None:
    """Decoding an encoded batch gives back each row's fields, labels, timestamp and the batch identity."""
    rows = [row(41.0), row(42.5, uuid="GPU-2")]
    payload = encode_batch(rows, producer_id="p1", sequence=7, created_at=SCRAPE)
    batch = decode_batch(payload)
    assert (batch.producer_id, batch.sequence) == ("p1", 7)
    assert [metric.value for metric in batch.metrics] == [41.0, 42.5]
    first = batch.metrics[0]
    assert from_timestamp(first.timestamp) == SCRAPE
    assert (first.metric_name, first.gpu_id, first.device, first.uuid) == (
        "DCGM_FI_DEV_GPU_TEMP",
        "0",
        "nvidia0",
        "GPU-1",
    )
    assert (first.model_name, first.hostname, first.container, first.pod, first.namespace) == (
        "NVIDIA H100",
        "dgx-1",
        "",
        "",
        "",
    )
    assert dict(batch.metrics[1].labels) == {"Hostname": "dgx-1", "gpu": "0", "UUID": "GPU-2"}


def test_processing_timestamps_replace_the_rows_own() -> None:
    """With stamp_rows every metric carries the batch's creation time instead of the CSV time."""
    now = datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)
    batch = decode_batch(
        encode_batch([row(1.0), row(2.0)], producer_id="p", sequence=1, created_at=now, stamp_rows=True)
    )
    assert {from_timestamp(metric.timestamp) for metric in batch.metrics} == {now}
    assert from_timestamp(batch.created_at) == now


def test_the_encoder_numbers_batches_consecutively() -> None:
    """Each call takes the next sequence number; rows and content type are recorded for the publisher."""
    encoder = BatchEncoder("p", first_sequence=5, clock=lambda: SCRAPE)
    first, second = encoder([row(1.0)]), encoder([row(1.0), row(2.0)])
    assert (first.sequence, second.sequence) == (5, 6)
    assert (first.rows, second.rows) == (1, 2)
    assert first.content_type == CONTENT_TYPE
    assert decode_batch(second.payload).sequence == 6


def test_rfc3339_matches_the_dcgm_format() -> None:
    """Whole seconds print without a fraction (as in the CSV); fractions keep their digits."""
    assert format_rfc3339(to_timestamp(SCRAPE)) == "2025-07-18T20:42:34Z"
    assert format_rfc3339(to_timestamp(SCRAPE.replace(microsecond=250_000))) == "2025-07-18T20:42:34.25Z"


def test_metric_to_dict_has_the_proto_field_names() -> None:
    """The JSON keys are the GpuMetric fields; labels an object; value a number."""
    batch = decode_batch(encode_batch([row(55.5)], producer_id="p", sequence=1, created_at=SCRAPE))
    shown = metric_to_dict(batch.metrics[0])
    assert list(shown) == [
        "timestamp", "metric_name", "gpu_id", "device", "uuid", "model_name",
        "hostname", "container", "pod", "namespace", "value", "labels",
    ]  # fmt: skip
    assert shown["value"] == 55.5
    assert shown["labels"] == {"Hostname": "dgx-1", "UUID": "GPU-1", "gpu": "0"}


#: The three scrapes of test-data/metrics.csv in seconds since the epoch (2025-07-18T20:00:00Z is 1752868800).
SCRAPE_SECONDS = {
    "2025-07-18T20:00:00Z": 1752868800,
    "2025-07-18T20:00:30Z": 1752868830,
    "2025-07-18T20:01:00Z": 1752868860,
}
#: ``created_at`` of the batches below, 2026-03-04T05:06:07.89Z, and as a protobuf Timestamp.
NOW = datetime(2026, 3, 4, 5, 6, 7, 890_000, tzinfo=UTC)
NOW_STAMP = Timestamp(seconds=1772600767, nanos=890_000_000)
LABEL = re.compile(r'([^=,]+)="([^"]*)"')

#: Line 2 of test-data/metrics.csv, its first row, as a GpuMetric, written out by hand.
FIRST_ROW = GpuMetric(
    timestamp=Timestamp(seconds=1752868800),
    metric_name="DCGM_FI_DEV_GPU_UTIL",
    gpu_id="0",
    device="nvidia0",
    uuid="GPU-6513270e-269e-0d37-f2a7-4de452e6b438",
    model_name="NVIDIA H100 80GB HBM3",
    hostname="dgx-a-001",
    value=0.0,
    labels={
        "DCGM_FI_DRIVER_VERSION": "550.54.15",
        "Hostname": "dgx-a-001",
        "UUID": "GPU-6513270e-269e-0d37-f2a7-4de452e6b438",
        "__name__": "DCGM_FI_DEV_GPU_UTIL",
        "device": "nvidia0",
        "gpu": "0",
        "instance": "dgx-a-001:9400",
        "job": "dcgm-exporter",
        "modelName": "NVIDIA H100 80GB HBM3",
    },
)


def from_record(record: dict[str, str], stamp: Timestamp | None) -> GpuMetric:
    """The GpuMetric a record read by Python's csv module must become: an expectation independent of our code."""
    return GpuMetric(
        timestamp=stamp if stamp is not None else Timestamp(seconds=SCRAPE_SECONDS[record["timestamp"]]),
        metric_name=record["metric_name"],
        gpu_id=record["gpu_id"],
        device=record["device"],
        uuid=record["uuid"],
        model_name=record["modelName"],
        hostname=record["Hostname"],
        container=record["container"],
        pod=record["pod"],
        namespace=record["namespace"],
        value=float(record["value"]),
        labels=dict(LABEL.findall(record["labels_raw"])),
    )


def csv_records() -> list[dict[str, str]]:
    with TEST_DATA_CSV.open(newline="") as handle:
        return list(csv.DictReader(handle))


def made_up(value: float, stamp: Timestamp | None) -> GpuMetric:
    """What ``row(value)`` above must become, written out."""
    return GpuMetric(
        timestamp=stamp if stamp is not None else Timestamp(seconds=1752871354),  # SCRAPE, 2025-07-18T20:42:34Z
        metric_name="DCGM_FI_DEV_GPU_TEMP",
        gpu_id="0",
        device="nvidia0",
        uuid="GPU-1",
        model_name="NVIDIA H100",
        hostname="dgx-1",
        value=value,
        labels={"Hostname": "dgx-1", "gpu": "0", "UUID": "GPU-1"},
    )


def test_to_metric_builds_the_first_row_as_written_out_by_hand() -> None:
    """The constructor-built message for the file's first row has exactly the hand-written fields."""
    assert to_metric(next(iter(CsvRows(TEST_DATA_CSV)))) == FIRST_ROW
    assert to_metric(row(-1.5), NOW_STAMP) == made_up(-1.5, NOW_STAMP)


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("stamp_rows", [False, True])
def test_the_fast_encoding_gives_every_row_as_its_csv_record_says(stamp_rows: bool, version: WireEncoding) -> None:
    """All 960 rows of the test data, then zero, negative and huge values: each decodes to its record's fields,
    whichever wire format version carried them."""
    rows = [*CsvRows(TEST_DATA_CSV), row(0.0), row(-1.5), row(1e300)]
    encoded = encode_batch(rows, producer_id="p", sequence=42, created_at=NOW, stamp_rows=stamp_rows, encoding=version)
    stamp = NOW_STAMP if stamp_rows else None
    expected = MetricBatch(
        metrics=[
            *(from_record(record, stamp) for record in csv_records()),
            *(made_up(v, stamp) for v in (0.0, -1.5, 1e300)),
        ],
        producer_id="p",
        sequence=42,
        created_at=NOW_STAMP,
    )
    decoded = decode_batch(encoded)
    assert len(decoded.metrics) == 963
    assert decoded == expected
    if not stamp_rows:
        assert decoded.metrics[0] == FIRST_ROW


def test_the_description_cache_stays_correct_when_it_overflows(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache smaller than the number of distinct GPUs clears itself and still encodes every row right."""
    monkeypatch.setattr(encoding, "_describe", encoding._Descriptions(limit=7))
    rows = list(CsvRows(TEST_DATA_CSV))[:300]
    encoded = encode_batch(rows, producer_id="p", sequence=1, created_at=SCRAPE, encoding="v1")
    expected = MetricBatch(
        metrics=[from_record(record, None) for record in csv_records()[:300]],
        producer_id="p",
        sequence=1,
        created_at=Timestamp(seconds=1752871354),
    )
    assert decode_batch(encoded) == expected
