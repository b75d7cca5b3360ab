"""Wire format v2: the same rows as v1, each GPU stated once per batch; read back field by field, by both paths.

The expectation is always the rows themselves (their fields, labels and timestamps) or what the v1 encoder,
tied to the CSV by tests/test_encoding.py, gives for them: never a figure written down here.
"""

from __future__ import annotations

import json
import math
import struct
import subprocess
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from rxstreamer import encoding
from rxstreamer.encoding import (
    CONTENT_ENCODING_HEADER,
    CONTENT_TYPE_V1,
    CONTENT_TYPE_V2,
    BatchEncoder,
    TimestampMode,
    UnknownContentTypeError,
    WireEncoding,
    compress_payload,
    decode_batch,
    encode_batch,
    encode_batch_v1,
    encode_batch_v2,
    from_timestamp,
)
from rxstreamer.model import MetricRow
from rxstreamer.proto import mq_pb2, mq_pb2_grpc, telemetry_v2_pb2
from rxstreamer.proto.telemetry_pb2 import GpuMetric, MetricBatch
from rxstreamer.sources import CsvRows
from rxstreamer.tail import TailOptions, _print_message
from tests.conftest import TEST_DATA_CSV
from tests.processes import REPO_ROOT, Broker, broker_process, child_env, rxstreamer_command

NOW = datetime(2026, 3, 4, 5, 6, 7, 890_000, tzinfo=UTC)
MAX_BYTES_PER_ROW = 120  # issue 16: on the real DCGM export, without compression


def batches(rows: Sequence[MetricRow], size: int) -> list[Sequence[MetricRow]]:
    return [rows[at : at + size] for at in range(0, len(rows), size)]


def assert_the_rows(decoded: MetricBatch, rows: Sequence[MetricRow], stamp: datetime | None) -> None:
    """Each metric holds its row's every field, labels and timestamp (``stamp`` when the rows were stamped)."""
    assert len(decoded.metrics) == len(rows)
    for metric, row in zip(decoded.metrics, rows, strict=True):
        assert from_timestamp(metric.timestamp) == (stamp or row.timestamp)
        assert (metric.metric_name, metric.gpu_id, metric.device, metric.uuid, metric.model_name) == row[1:6]
        assert (metric.hostname, metric.container, metric.pod, metric.namespace) == row[6:10]
        assert struct.pack("<d", metric.value) == struct.pack("<d", row.value)  # bit for bit, -0.0 included
        assert dict(metric.labels) == dict(row.labels)


@pytest.mark.realdata
@pytest.mark.parametrize("size", [10, 100, 1000, 2470])
@pytest.mark.parametrize("stamp_rows", [False, True])
def test_the_real_file_round_trips_field_by_field(real_csv: Path, size: int, stamp_rows: bool) -> None:
    """Every batch of the real export decodes to its rows, and to exactly what its v1 encoding decodes to."""
    rows = list(CsvRows(real_csv))
    for sequence, batch in enumerate(batches(rows, size), start=1):
        v2 = encode_batch_v2(batch, producer_id="p", sequence=sequence, created_at=NOW, stamp_rows=stamp_rows)
        v1 = encode_batch_v1(batch, producer_id="p", sequence=sequence, created_at=NOW, stamp_rows=stamp_rows)
        decoded = decode_batch(v2, content_type=CONTENT_TYPE_V2)
        assert_the_rows(decoded, batch, NOW if stamp_rows else None)
        assert decoded == decode_batch(v1, content_type=CONTENT_TYPE_V1)
        assert (decoded.producer_id, decoded.sequence, from_timestamp(decoded.created_at)) == ("p", sequence, NOW)


@pytest.mark.realdata
@pytest.mark.parametrize("size", [10, 100, 1000])
def test_the_real_file_takes_at_most_120_bytes_a_row(real_csv: Path, size: int) -> None:
    """Issue 16's bound, uncompressed, at the batch sizes the benchmarks report (v1: about 422)."""
    rows = list(CsvRows(real_csv))
    payloads = [encode_batch_v2(b, producer_id="p", sequence=1, created_at=NOW) for b in batches(rows, size)]
    v1_bytes = sum(len(encode_batch_v1(b, producer_id="p", sequence=1, created_at=NOW)) for b in batches(rows, size))
    v2_bytes = sum(map(len, payloads))
    assert v2_bytes / len(rows) <= MAX_BYTES_PER_ROW
    assert v2_bytes < v1_bytes / 3


def row(
    metric: str = "DCGM_FI_DEV_GPU_TEMP",
    uuid: str = "GPU-1",
    labels: dict[str, str] | None = None,
    value: float = 1.0,
    moment: datetime = NOW,
    **fields: str,
) -> MetricRow:
    described = {"gpu_id": "0", "device": "nvidia0", "model_name": "NVIDIA H100", "hostname": "dgx-1"}
    described |= {"container": "", "pod": "", "namespace": ""} | fields
    return MetricRow(
        moment,
        metric,
        described["gpu_id"],
        described["device"],
        uuid,
        described["model_name"],
        described["hostname"],
        described["container"],
        described["pod"],
        described["namespace"],
        value,
        MappingProxyType(labels if labels is not None else {}),
        2,
    )


def dcgm_labels(metric: str, uuid: str, **changes: str) -> dict[str, str]:
    """dcgm-exporter's labels for ``row(metric, uuid)``: five copy a field, __name__ the metric name."""
    labels = {"DCGM_FI_DRIVER_VERSION": "550.54.15", "Hostname": "dgx-1", "UUID": uuid, "__name__": metric}
    labels |= {"device": "nvidia0", "gpu": "0", "instance": "dgx-1:9400", "job": "dcgm", "modelName": "NVIDIA H100"}
    return labels | changes


ODD_ROWS = [
    row(labels=dcgm_labels("DCGM_FI_DEV_GPU_TEMP", "GPU-1")),
    row("DCGM_FI_DEV_POWER_USAGE", labels=dcgm_labels("DCGM_FI_DEV_POWER_USAGE", "GPU-1"), value=-0.0),
    row(labels=dcgm_labels("DCGM_FI_DEV_GPU_TEMP", "GPU-1", __name__="something else")),  # not a copy: kept
    row(labels=dcgm_labels("DCGM_FI_DEV_GPU_TEMP", "GPU-1", Hostname="DGX-1", gpu="7")),
    row(labels={}, value=math.inf),
    row(labels={"Hostname": "dgx-1"}, value=-1e300),  # only some copies
    row(uuid="GPU-2", labels=dcgm_labels("X", "GPU-2"), value=5e-324),  # __name__ of another metric
    row("", uuid="", labels={"": ""}, gpu_id="", device="", model_name="", hostname=""),  # every string empty
    row(
        "DCGM_FI_DEV_FB_USED",
        uuid="GPU-ü",
        labels={"pod": "trainer-0", "namespace": "ml", "container": "main", "note": "naïve ✓", "modelName": "x"},
        container="main",
        pod="trainer-0",
        namespace="ml",
        model_name="NVIDIA A100 ✓",
        moment=NOW - timedelta(microseconds=1),
    ),
]


@pytest.mark.parametrize("stamp_rows", [False, True])
def test_labels_that_copy_a_field_are_put_back_exactly(stamp_rows: bool) -> None:
    """Copies left out and put back, near-copies kept, empty strings, odd values: all as the rows say."""
    payload = encode_batch_v2(ODD_ROWS, producer_id="p", sequence=3, created_at=NOW, stamp_rows=stamp_rows)
    decoded = decode_batch(payload)
    assert_the_rows(decoded, ODD_ROWS, NOW if stamp_rows else None)
    v1 = encode_batch_v1(ODD_ROWS, producer_id="p", sequence=3, created_at=NOW, stamp_rows=stamp_rows)
    assert decoded == decode_batch(v1)


def test_a_gpu_and_a_host_are_stated_once() -> None:
    """Ten metrics of eight GPUs of one host: eight resources, one host, ten names; the rows refer to them."""
    rows = [
        row(f"METRIC_{m}", uuid=f"GPU-{g}", labels=dcgm_labels(f"METRIC_{m}", f"GPU-{g}", gpu=str(g)), gpu_id=str(g))
        for m in range(10)
        for g in range(8)
    ]
    message = telemetry_v2_pb2.MetricBatch()
    message.ParseFromString(encode_batch_v2(rows, producer_id="p", sequence=1, created_at=NOW))
    assert (len(message.hosts), len(message.resources), len(message.metric_names)) == (1, 8, 10)
    assert dict(message.hosts[0].labels) == {
        "DCGM_FI_DRIVER_VERSION": "550.54.15",
        "instance": "dgx-1:9400",
        "job": "dcgm",
    }
    assert list(message.resource_host) == []  # one host: every index 0, left out
    assert list(message.time) == []  # one time
    assert [message.resources[r].uuid for r in message.resource] == [r.uuid for r in rows]
    assert [message.metric_names[n] for n in message.metric_name] == [r.metric_name for r in rows]
    assert_the_rows(decode_batch(message.SerializeToString()), rows, None)


def test_the_encoding_is_the_ordinary_protobuf_one() -> None:
    """The hand-joined bytes parse as v2 and serialise back to themselves with protobuf's own code."""
    payload = encode_batch_v2(ODD_ROWS, producer_id="p", sequence=9, created_at=NOW)
    message = telemetry_v2_pb2.MetricBatch()
    message.ParseFromString(payload)
    again = telemetry_v2_pb2.MetricBatch()
    again.ParseFromString(message.SerializeToString())
    assert again == message
    assert len(message.SerializeToString()) == len(payload)  # nothing unknown, nothing left over


TEXT = st.text(alphabet="ab-0Ü", max_size=3)
LABEL_KEYS = st.sampled_from(["__name__", "gpu", "device", "UUID", "modelName", "Hostname", "pod", "x", ""])


@st.composite
def rows_strategy(draw: st.DrawFn) -> list[MetricRow]:
    """Rows whose fields and labels come from tiny alphabets: many copies, near-copies and shared GPUs."""
    count = draw(st.integers(0, 30))
    drawn = []
    for _ in range(count):
        fields = {name: draw(TEXT) for name in ("gpu_id", "device", "model_name", "hostname", "pod")}
        metric, uuid = draw(TEXT), draw(TEXT)
        own = {"__name__": metric, "gpu": fields["gpu_id"], "UUID": uuid, "Hostname": fields["hostname"]}
        keys = draw(st.lists(LABEL_KEYS, max_size=5, unique=True))
        labels = {key: own[key] if key in own and draw(st.booleans()) else draw(TEXT) for key in keys}
        value = draw(st.floats(allow_nan=False))
        moment = NOW + timedelta(seconds=draw(st.integers(0, 3)), microseconds=draw(st.integers(0, 2)))
        drawn.append(row(metric, uuid, labels, value, moment, **fields))
    return drawn


@given(rows_strategy(), st.booleans())
@settings(max_examples=200, deadline=None)
def test_any_rows_round_trip_as_v1_gives_them(rows: list[MetricRow], stamp_rows: bool) -> None:
    payload = encode_batch_v2(rows, producer_id="p", sequence=1, created_at=NOW, stamp_rows=stamp_rows)
    decoded = decode_batch(payload)
    assert_the_rows(decoded, rows, NOW if stamp_rows else None)
    assert decoded == decode_batch(
        encode_batch_v1(rows, producer_id="p", sequence=1, created_at=NOW, stamp_rows=stamp_rows)
    )


def test_the_resource_cache_stays_correct_when_it_overflows(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache smaller than the number of distinct GPUs clears itself mid-batch and still encodes every row."""
    monkeypatch.setattr(encoding, "_resources", encoding._Resources(limit=7))
    rows = list(CsvRows(TEST_DATA_CSV))[:300]
    payload = encode_batch_v2(rows, producer_id="p", sequence=1, created_at=NOW)
    assert_the_rows(decode_batch(payload), rows, None)


@pytest.mark.parametrize("timestamps", ["original", "processing"])
def test_both_versions_give_the_same_batch_and_digest(timestamps: TimestampMode) -> None:
    """BatchEncoder names the version in the content type; the rows, identity and digest are the same."""
    rows = list(CsvRows(TEST_DATA_CSV))[:200]
    made = {
        version: BatchEncoder("p", timestamps=timestamps, clock=lambda: NOW, encoding=version)(rows)
        for version in ("v1", "v2")
    }
    assert (made["v1"].content_type, made["v2"].content_type) == (CONTENT_TYPE_V1, CONTENT_TYPE_V2)
    assert made["v1"].content_digest == made["v2"].content_digest != ""
    assert len(made["v2"].payload) < len(made["v1"].payload) / 3
    decoded = {version: decode_batch(batch.payload, content_type=batch.content_type) for version, batch in made.items()}
    assert decoded["v1"] == decoded["v2"]
    assert_the_rows(decoded["v2"], rows, NOW if timestamps == "processing" else None)
    assert BatchEncoder("p").content_type == CONTENT_TYPE_V2  # the default
    later = BatchEncoder("p", timestamps=timestamps, clock=lambda: NOW + timedelta(hours=1))(rows)
    assert later.payload != made["v2"].payload
    assert later.content_digest == made["v2"].content_digest


def test_the_version_is_read_from_the_content_type_or_the_payload() -> None:
    rows = list(CsvRows(TEST_DATA_CSV))[:20]
    v1 = encode_batch(rows, producer_id="p", sequence=1, created_at=NOW, encoding="v1")
    v2 = encode_batch(rows, producer_id="p", sequence=1, created_at=NOW)
    expected = decode_batch(v1, content_type=CONTENT_TYPE_V1)
    assert len(expected.metrics) == 20
    assert decode_batch(v1) == decode_batch(v2) == decode_batch(v2, content_type=CONTENT_TYPE_V2) == expected
    versions: tuple[WireEncoding, ...] = ("v1", "v2")
    for version in versions:  # no rows: the envelope alone, the same either way
        empty = encode_batch([], producer_id="p", sequence=4, created_at=NOW, encoding=version)
        assert decode_batch(empty) == MetricBatch(producer_id="p", sequence=4, created_at=expected.created_at)
    with pytest.raises(UnknownContentTypeError, match="text/plain"):
        decode_batch(v2, content_type="text/plain")
    with pytest.raises(DecodeError, match="v1 payload"):
        decode_batch(v1, content_type=CONTENT_TYPE_V2)


def broken(change: str) -> bytes:
    message = telemetry_v2_pb2.MetricBatch()
    message.ParseFromString(encode_batch_v2(ODD_ROWS, producer_id="p", sequence=1, created_at=NOW))
    if change == "index":
        message.metric_name[0] = len(message.metric_names)
    elif change == "column":
        del message.value[-1]
    elif change == "bits":
        message.hosts[0].field_labels |= 1 << 12
    elif change == "resource_host":
        message.resource_host.append(0)
    return message.SerializeToString()


@pytest.mark.parametrize("change", ["index", "column", "bits", "resource_host"])
def test_a_broken_v2_batch_is_a_decode_error(change: str) -> None:
    """Never rows made up from a wrong index: tail reports a DecodeError as a message it cannot read."""
    with pytest.raises(DecodeError):
        decode_batch(broken(change), content_type=CONTENT_TYPE_V2)


def tail_lines(message: mq_pb2.Message, with_batch: bool = True) -> list[dict[str, object]]:
    out = _Out()
    _print_message(message, TailOptions(address="", topic="t", with_batch=with_batch), out, limit=None)  # type: ignore[arg-type]
    return [json.loads(line) for line in out.text.splitlines()]


class _Out:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("timestamps", ["original", "processing"])
def test_tail_prints_the_same_lines_for_both_versions(timestamps: TimestampMode) -> None:
    rows = list(CsvRows(TEST_DATA_CSV))[:50]
    printed = []
    for version in ("v1", "v2"):
        batch = BatchEncoder("p", timestamps=timestamps, clock=lambda: NOW, encoding=version)(rows)
        for headers in ({"content-type": batch.content_type}, {}):  # with and without the header
            printed.append(tail_lines(mq_pb2.Message(offset=5, payload=batch.payload, headers=headers)))
    assert len(printed[0]) == 50
    assert all(lines == printed[0] for lines in printed)
    assert [line["uuid"] for line in printed[0]] == [r.uuid for r in rows]


# --- end to end, through the real broker and `rxstreamer tail` ----------------------------------------------


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    with broker_process() as running:
        yield running


@pytest.mark.integration
def test_tail_reads_a_topic_of_mixed_versions(broker: Broker) -> None:
    """v1 and v2 batches of the same rows (plain and zstd) published to the broker print the same lines."""
    rows = list(CsvRows(TEST_DATA_CSV))[:40]
    published = []
    with grpc.insecure_channel(broker.address) as channel:
        stub = mq_pb2_grpc.MessageQueueStub(channel)
        for sequence, (version, compression) in enumerate(
            [("v1", "none"), ("v2", "none"), ("v1", "zstd"), ("v2", "zstd")], start=1
        ):
            batch = BatchEncoder("mixed", first_sequence=sequence, clock=lambda: NOW, encoding=version)(rows)  # type: ignore[arg-type]
            headers = {"content-type": batch.content_type}
            if compression != "none":
                headers[CONTENT_ENCODING_HEADER] = compression
            payload = compress_payload(batch.payload, compression)
            request = mq_pb2.PublishRequest(
                topic="mixed-versions", payload=payload, headers=headers, producer_id="mixed", sequence=sequence
            )
            stub.Publish(request, timeout=10)
            published.append(len(payload))
    command = rxstreamer_command(
        "tail", "--mq-address", broker.address, "--topic", "mixed-versions", "--from-beginning", "--idle-timeout", "1s"
    )
    finished = subprocess.run(
        command, check=True, capture_output=True, text=True, env=child_env(), cwd=REPO_ROOT, timeout=60
    )
    lines = [json.loads(line) for line in finished.stdout.splitlines()]
    assert len(lines) == 4 * len(rows)
    first = lines[: len(rows)]
    assert all(lines[at : at + len(rows)] == first for at in range(0, len(lines), len(rows)))
    expected = [GpuMetric(uuid=r.uuid, metric_name=r.metric_name, value=r.value, labels=dict(r.labels)) for r in rows]
    shown = [
        GpuMetric(uuid=line["uuid"], metric_name=line["metric_name"], value=line["value"], labels=line["labels"])
        for line in first
    ]
    assert shown == expected
    assert published[1] < published[0] / 3  # the v2 payload is the smaller one


@pytest.mark.integration
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_streamer_publishes_the_version_message_queue_encoding_names(broker: Broker, version: str) -> None:
    """`message_queue.encoding` reaches the wire: the stored batches carry that version's content type."""
    topic = f"encoding-{version}"
    command = rxstreamer_command(
        "run", "--metrics-path", str(TEST_DATA_CSV), "--mq-address", broker.address, "--topic", topic,
        "--interval", "0s", "--batch-size", "500", "--log-format", "json",
    )  # fmt: skip
    env = {**child_env(), "RXSTREAMER_MESSAGE_QUEUE__ENCODING": version}
    subprocess.run(command, check=True, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)
    with grpc.insecure_channel(broker.address) as channel:
        stub = mq_pb2_grpc.MessageQueueStub(channel)
        request = mq_pb2.SubscribeRequest(topic=topic, start=mq_pb2.START_POSITION_EARLIEST)
        stream = stub.Subscribe(request, timeout=30)
        stored = [next(stream), next(stream)]
        stream.cancel()
    expected = CONTENT_TYPE_V1 if version == "v1" else CONTENT_TYPE_V2
    assert [message.headers["content-type"] for message in stored] == [expected, expected]
    assert sum(len(decode_batch(m.payload, content_type=expected).metrics) for m in stored) == 960
