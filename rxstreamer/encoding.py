"""Rows to protobuf bytes, and back. Pure: no I/O, so the wire format is tested on its own.

Encoding is the largest per-row cost after CSV parsing, so ``encode_batch`` does not build a message per
row. A DCGM row repeats everything but its timestamp and value from the previous scrape of the same GPU
and metric (names, uuid, host, nine labels), and a file holds a handful of distinct timestamps. Protobuf's
wire format is a sequence of fields in any order, and concatenated encodings of one message merge into
one, so each row's encoding is three cached or cheap pieces joined: its timestamp field (cached per
timestamp), its descriptive fields (cached per distinct description) and its value (8 bytes).
``to_metric`` builds the same GpuMetric the ordinary way; the tests hold the two to the same result.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import struct
import zlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal

import zstandard
from google.protobuf.timestamp_pb2 import Timestamp

from rxstreamer.model import EncodedBatch, MetricRow, Position, ReadCounts
from rxstreamer.proto.telemetry_pb2 import GpuMetric, MetricBatch

#: What a queue message carrying a MetricBatch says it is, in its content-type header.
CONTENT_TYPE = "application/x-protobuf; messageType=rxstreamer.v1.MetricBatch"
#: The header naming a batch's content (``content_digest``), read by the queue to tell a re-send from a clash.
CONTENT_DIGEST_HEADER = "content-digest"
#: The header naming how a payload is compressed (``gzip`` or ``zstd``); absent when it is not.
CONTENT_ENCODING_HEADER = "content-encoding"

#: ``message_queue.compression``: ``gzip`` is gRPC's own channel compression over gRPC (the payload stays
#: plain), a payload encoding over NATS; ``zstd`` is a payload encoding over both.
Compression = Literal["none", "gzip", "zstd"]
#: What compress_payload uses: zstd's default level, and zlib's default (6), the level gRPC's gzip uses.
ZSTD_LEVEL = 3
GZIP_LEVEL = 6

TimestampMode = Literal["original", "processing"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@lru_cache(maxsize=4096)
def _timestamp_fields(moment: datetime) -> tuple[int, int]:
    delta = moment - _EPOCH
    seconds = delta.days * 86_400 + delta.seconds
    return seconds, delta.microseconds * 1000


def to_timestamp(moment: datetime) -> Timestamp:
    """A protobuf Timestamp for an aware datetime."""
    seconds, nanos = _timestamp_fields(moment)
    return Timestamp(seconds=seconds, nanos=nanos)


def from_timestamp(timestamp: Timestamp) -> datetime:
    """The aware UTC datetime of a protobuf Timestamp (microsecond precision, like datetime)."""
    return datetime.fromtimestamp(timestamp.seconds, UTC).replace(microsecond=timestamp.nanos // 1000)


def to_metric(row: MetricRow, stamp: Timestamp | None = None) -> GpuMetric:
    """One GpuMetric for one row; ``stamp`` replaces the row's own timestamp when given."""
    return GpuMetric(
        timestamp=stamp if stamp is not None else to_timestamp(row.timestamp),
        metric_name=row.metric_name,
        gpu_id=row.gpu_id,
        device=row.device,
        uuid=row.uuid,
        model_name=row.model_name,
        hostname=row.hostname,
        container=row.container,
        pod=row.pod,
        namespace=row.namespace,
        value=row.value,
        labels=row.labels,
    )


# Field keys of the wire format: (field number << 3) | wire type.
_METRICS_KEY = b"\x0a"  # MetricBatch.metrics = 1, length-delimited
_TIMESTAMP_KEY = b"\x0a"  # GpuMetric.timestamp = 1, length-delimited
_VALUE_KEY = b"\x59"  # GpuMetric.value = 11, 64-bit
_pack_double = struct.Struct("<d").pack


@lru_cache(maxsize=1024)
def _varint(number: int) -> bytes:
    out = bytearray()
    while number > 0x7F:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


@lru_cache(maxsize=4096)
def _timestamp_field(moment: datetime) -> bytes:
    body = to_timestamp(moment).SerializeToString()
    return _TIMESTAMP_KEY + _varint(len(body)) + body


class _Descriptions:
    """Serialised descriptive fields (all but timestamp and value) per distinct row description.

    Rows with the same labels_raw share one labels mapping (the parser caches them), so the mapping's
    identity is part of the key; the cache holds the mapping itself so that identity is not reused while
    the entry lives. Bounded: cleared when full, which costs a few re-encodings, never a wrong one.
    """

    def __init__(self, limit: int = 65_536) -> None:
        self._limit = limit
        self._encoded: dict[tuple[object, ...], bytes] = {}
        self._labels_kept: list[object] = []

    def __call__(self, row: MetricRow) -> bytes:
        key = (row[1:10], id(row.labels))
        encoded = self._encoded.get(key)
        if encoded is None:
            if len(self._encoded) >= self._limit:
                self._encoded.clear()
                self._labels_kept.clear()
            description = GpuMetric(
                metric_name=row.metric_name,
                gpu_id=row.gpu_id,
                device=row.device,
                uuid=row.uuid,
                model_name=row.model_name,
                hostname=row.hostname,
                container=row.container,
                pod=row.pod,
                namespace=row.namespace,
                labels=row.labels,
            )
            encoded = description.SerializeToString()
            self._encoded[key] = encoded
            self._labels_kept.append(row.labels)
        return encoded


_describe = _Descriptions()


def encode_batch(
    rows: Sequence[MetricRow],
    *,
    producer_id: str,
    sequence: int,
    created_at: datetime,
    stamp_rows: bool = False,
) -> bytes:
    """Serialise rows as one MetricBatch; with ``stamp_rows`` every row carries ``created_at``."""
    stamp = _timestamp_field(created_at) if stamp_rows else None
    parts: list[bytes] = []
    append = parts.append
    for row in rows:
        timestamp = stamp if stamp is not None else _timestamp_field(row.timestamp)
        description = _describe(row)
        append(_METRICS_KEY)
        append(_varint(len(timestamp) + len(description) + 9))
        append(timestamp)
        append(description)
        append(_VALUE_KEY)
        append(_pack_double(row.value))
    envelope = MetricBatch(producer_id=producer_id, sequence=sequence, created_at=to_timestamp(created_at))
    append(envelope.SerializeToString())
    return b"".join(parts)


class PayloadEncodingError(ValueError):
    """A payload's content-encoding is unknown, or its bytes are not what that encoding makes."""


def compress_payload(payload: bytes, encoding: str) -> bytes:
    """The payload compressed with ``encoding`` (``zstd``, ``gzip``; ``none`` or empty: unchanged)."""
    if encoding in ("", "none", "identity"):
        return payload
    if encoding == "zstd":
        return zstandard.compress(payload, ZSTD_LEVEL)
    if encoding == "gzip":
        return gzip.compress(payload, compresslevel=GZIP_LEVEL, mtime=0)
    raise PayloadEncodingError(f"unknown content-encoding {encoding!r} (known: gzip, zstd)")


def decompress_payload(payload: bytes, encoding: str) -> bytes:
    """The inverse of compress_payload; raises PayloadEncodingError for an unknown encoding or corrupt bytes."""
    if encoding in ("", "none", "identity"):
        return payload
    try:
        if encoding == "zstd":
            return zstandard.decompress(payload)
        if encoding == "gzip":
            return gzip.decompress(payload)
    except (zstandard.ZstdError, OSError, EOFError, zlib.error) as error:
        raise PayloadEncodingError(f"payload is not valid {encoding}: {error}") from error
    raise PayloadEncodingError(f"unknown content-encoding {encoding!r} (this rxstreamer reads: gzip, zstd)")


def decode_batch(payload: bytes, content_encoding: str = "") -> MetricBatch:
    """Parse a queue payload back into a MetricBatch, first undoing its ``content-encoding`` header's value.

    Raises google.protobuf.message.DecodeError, or PayloadEncodingError for an unknown or broken encoding.
    """
    batch = MetricBatch()
    batch.ParseFromString(decompress_payload(payload, content_encoding))
    return batch


class BatchEncoder:
    """Gives each batch its identity (producer id and the next sequence number) and encodes it.

    The identity is fixed here, once per batch and before the first publish attempt, so every retry of
    a batch carries the same sequence and the queue can recognise it as the same message.
    """

    def __init__(
        self,
        producer_id: str,
        *,
        timestamps: TimestampMode = "original",
        first_sequence: int = 1,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.producer_id = producer_id
        self._stamp_rows = timestamps == "processing"
        self._sequences = itertools.count(first_sequence)
        self._clock = clock or (lambda: datetime.now(UTC))

    def __call__(
        self, rows: Sequence[MetricRow], position: Position | None = None, read: ReadCounts | None = None
    ) -> EncodedBatch:
        sequence = next(self._sequences)
        payload = encode_batch(
            rows,
            producer_id=self.producer_id,
            sequence=sequence,
            created_at=self._clock(),
            stamp_rows=self._stamp_rows,
        )
        return EncodedBatch(
            self.producer_id, sequence, payload, CONTENT_TYPE, len(rows), position, read, content_digest(rows, position)
        )


def content_digest(rows: Sequence[MetricRow], position: Position | None = None) -> str:
    """A digest of what a batch holds that re-encoding does not change, unlike the payload's bytes.

    The payload carries its creation time, and with ``timestamps = "processing"`` each row's time of
    publishing, so a batch re-sent after a crash differs in bytes from the first copy. The queue needs to
    tell that re-send (the same rows: a duplicate) from another input under the same producer id and
    sequence (a conflict); this names the rows by where they are and what the first and last one say,
    which differ between two inputs unless they agree on both ends of the batch, and costs the same for a
    batch of ten rows as for one of ten thousand.
    """
    if not rows:
        return ""
    ends = [
        (row.line, row.timestamp.isoformat(), row.metric_name, row.uuid, repr(row.value)) for row in (rows[0], rows[-1])
    ]
    where = (position.offset, position.pass_number) if position is not None else None
    described = repr((len(rows), ends, where)).encode()
    return hashlib.blake2b(described, digest_size=16).hexdigest()


def metric_to_dict(metric: GpuMetric) -> dict[str, Any]:
    """A GpuMetric as a JSON-ready dict with the field names of the .proto and an RFC 3339 timestamp."""
    return {
        "timestamp": format_rfc3339(metric.timestamp),
        "metric_name": metric.metric_name,
        "gpu_id": metric.gpu_id,
        "device": metric.device,
        "uuid": metric.uuid,
        "model_name": metric.model_name,
        "hostname": metric.hostname,
        "container": metric.container,
        "pod": metric.pod,
        "namespace": metric.namespace,
        "value": metric.value,
        "labels": dict(sorted(metric.labels.items())),
    }


def format_rfc3339(timestamp: Timestamp) -> str:
    """RFC 3339 in UTC with a ``Z``; fractional seconds only when there are any, as DCGM writes them."""
    moment = datetime.fromtimestamp(timestamp.seconds, UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if timestamp.nanos:
        text += f".{timestamp.nanos:09d}".rstrip("0")
    return text + "Z"
