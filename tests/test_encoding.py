"""Rows to MetricBatch bytes and back, and the JSON shape `tail` prints."""

from __future__ import annotations

from datetime import UTC, datetime
from types import MappingProxyType

import pytest

from rxstreamer import encoding
from rxstreamer.encoding import (
    CONTENT_TYPE,
    BatchEncoder,
    decode_batch,
    encode_batch,
    format_rfc3339,
    from_timestamp,
    metric_to_dict,
    to_metric,
    to_timestamp,
)
from rxstreamer.model import MetricRow
from rxstreamer.proto.telemetry_pb2 import MetricBatch
from rxstreamer.source import CsvRows
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


def reference_batch(rows: list[MetricRow], *, sequence: int, created_at: datetime, stamp_rows: bool) -> MetricBatch:
    """The same batch built the ordinary way, one GpuMetric constructor per row."""
    stamp = to_timestamp(created_at) if stamp_rows else None
    return MetricBatch(
        metrics=[to_metric(row, stamp) for row in rows],
        producer_id="p",
        sequence=sequence,
        created_at=to_timestamp(created_at),
    )


@pytest.mark.parametrize("stamp_rows", [False, True])
def test_the_fast_encoding_equals_building_each_message(stamp_rows: bool) -> None:
    """Field-by-field equal to constructor-built messages for every row of the test data, zeros included."""
    rows = [*CsvRows(TEST_DATA_CSV), row(0.0), row(-1.5), row(1e300)]
    now = datetime(2026, 3, 4, 5, 6, 7, 890_000, tzinfo=UTC)
    encoded = encode_batch(rows, producer_id="p", sequence=42, created_at=now, stamp_rows=stamp_rows)
    assert decode_batch(encoded) == reference_batch(rows, sequence=42, created_at=now, stamp_rows=stamp_rows)


def test_the_description_cache_stays_correct_when_it_overflows(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache smaller than the number of distinct GPUs clears itself and still encodes every row right."""
    monkeypatch.setattr(encoding, "_describe", encoding._Descriptions(limit=7))
    rows = list(CsvRows(TEST_DATA_CSV))[:300]
    encoded = encode_batch(rows, producer_id="p", sequence=1, created_at=SCRAPE)
    assert decode_batch(encoded) == reference_batch(rows, sequence=1, created_at=SCRAPE, stamp_rows=False)
