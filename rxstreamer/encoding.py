"""Rows to protobuf bytes, and back. Pure: no I/O, so the wire format is tested on its own.

Encoding is the largest per-row cost after CSV parsing, so ``encode_batch`` does not build a message per
row. A DCGM row repeats everything but its timestamp and value from the previous scrape of the same GPU
and metric (names, uuid, host, nine labels), and a file holds a handful of distinct timestamps. Protobuf's
wire format is a sequence of fields in any order, and concatenated encodings of one message merge into
one, so each row's encoding is three cached or cheap pieces joined: its timestamp field (cached per
timestamp), its descriptive fields (cached per distinct description) and its value (8 bytes).
``to_metric`` builds the same GpuMetric the ordinary way; the tests hold the two to the same result.

That is wire format version 1 (``rxstreamer.v1.MetricBatch``, 422 bytes a row on the real DCGM export,
nearly all of it the description repeated on every row). Version 2 (``rxstreamer.v2.MetricBatch``,
protos/rxstreamer/proto/telemetry_v2.proto), the default, states each distinct GPU once per batch, each
distinct string once, and the rows as four packed columns (resource, metric name, time, value); labels that
are exact copies of a row's own fields (``__name__``, ``Hostname``, ``UUID``...) are left out and put back
on decoding. The content type names the version, and ``decode_batch`` gives back the same v1
``MetricBatch`` for both, so consumers see the same rows whichever a producer sends.
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
from operator import attrgetter, itemgetter
from typing import Any, Literal, cast

import zstandard
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from rxstreamer.model import EncodedBatch, MetricRow, Position, ReadCounts
from rxstreamer.proto import telemetry_v2_pb2 as v2
from rxstreamer.proto.telemetry_pb2 import GpuMetric, MetricBatch

#: The wire format versions: ``v1`` a GpuMetric per row, ``v2`` each GPU and string stated once per batch.
WireEncoding = Literal["v1", "v2"]
#: What a queue message carrying a MetricBatch says it is, in its content-type header, per version.
CONTENT_TYPE_V1 = "application/x-protobuf; messageType=rxstreamer.v1.MetricBatch"
CONTENT_TYPE_V2 = "application/x-protobuf; messageType=rxstreamer.v2.MetricBatch"
CONTENT_TYPES: dict[WireEncoding, str] = {"v1": CONTENT_TYPE_V1, "v2": CONTENT_TYPE_V2}
#: The content type of what BatchEncoder publishes by default.
CONTENT_TYPE = CONTENT_TYPE_V2
#: Every content type ``decode_batch`` reads: a consumer skips messages of any other (not telemetry).
METRIC_BATCH_CONTENT_TYPES = frozenset(CONTENT_TYPES.values())
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


def _encode_varint(number: int) -> bytes:
    out = bytearray()
    while number > 0x7F:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


_varint = lru_cache(maxsize=16_384)(_encode_varint)


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
    encoding: WireEncoding = "v2",
) -> bytes:
    """Serialise rows as one MetricBatch of version ``encoding``; with ``stamp_rows`` every row carries
    ``created_at``. ``decode_batch`` reads both versions back as the same rows."""
    encode = encode_batch_v2 if encoding == "v2" else encode_batch_v1
    return encode(rows, producer_id=producer_id, sequence=sequence, created_at=created_at, stamp_rows=stamp_rows)


def encode_batch_v1(
    rows: Sequence[MetricRow],
    *,
    producer_id: str,
    sequence: int,
    created_at: datetime,
    stamp_rows: bool = False,
) -> bytes:
    """Serialise rows as one v1 MetricBatch (a GpuMetric per row); kept for consumers that read only v1."""
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


# --- version 2 ---------------------------------------------------------------------------------------------

#: The labels v2 leaves out when they copy a field of their row exactly: label key -> (its bit in
#: Host.field_labels, the MetricRow index of the field). The names are dcgm-exporter's own.
_FIELD_LABELS: dict[str, tuple[int, int]] = {
    "__name__": (1, 1),
    "gpu": (2, 2),
    "device": (4, 3),
    "UUID": (8, 4),
    "modelName": (16, 5),
    "Hostname": (32, 6),
    "container": (64, 7),
    "pod": (128, 8),
    "namespace": (256, 9),
}
_ALL_FIELD_LABELS = sum(bit for bit, _ in _FIELD_LABELS.values())
# Field keys of v2's MetricBatch: tables of entries (length-delimited), then packed columns.
_V2_HOST_KEY = b"\x2a"  # hosts = 5
_V2_RESOURCE_ENTRY_KEY = b"\x32"  # resources = 6
_V2_RESOURCE_HOST_KEY = b"\x3a"  # resource_host = 7
_V2_METRIC_NAME_ENTRY_KEY = b"\x42"  # metric_names = 8
_V2_TIME_KEY = b"\x4a"  # times = 9
_V2_RESOURCE_KEY = b"\x52"  # resource = 10
_V2_METRIC_NAME_KEY = b"\x5a"  # metric_name = 11
_V2_SAMPLE_TIME_KEY = b"\x62"  # time = 12
_V2_VALUE_KEY = b"\x6a"  # value = 13

_description_of = itemgetter(slice(1, 10))  # a row's fields but timestamp, value and labels
_labels_of = itemgetter(11)
_names_of = itemgetter(1)
_moments_of = itemgetter(0)
_values_of = itemgetter(10)


class _Entry:
    """A table entry of v2 (a Host or a Resource), encoded once as the MetricBatch field that states it.

    Hashed by identity, so finding a batch's distinct entries (``dict.fromkeys``) never hashes their strings.
    """

    __slots__ = ("encoded", "host")

    def __init__(self, encoded: bytes, host: _Entry | None = None) -> None:
        self.encoded = encoded
        self.host = host  # a Resource's Host


_encoded_of = attrgetter("encoded")
_host_of = attrgetter("host")


class _Resources:
    """The v2 Resource (and through it the Host) of each distinct row description, encoded once.

    Keyed like ``_Descriptions`` (the row's fields and the identity of its labels mapping, held here so the
    identity is not reused), so a row costs one dictionary look-up; a miss works out which labels copy a
    field and finds or encodes the GPU's Resource and Host, which rows of every metric of that GPU (and
    GPUs of the same host) share. Bounded: cleared when full, so a batch spanning a clear at worst states
    a GPU or a host twice.
    """

    def __init__(self, limit: int = 65_536) -> None:
        self._limit = limit
        self.described: dict[tuple[object, ...], _Entry] = {}
        self._hosts: dict[tuple[object, ...], _Entry] = {}
        self._gpus: dict[tuple[object, ...], _Entry] = {}
        self._labels_kept: list[object] = []

    def describe(self, key: tuple[object, ...], row: MetricRow) -> _Entry:
        if len(self.described) >= self._limit:
            self.described.clear()
            self._hosts.clear()
            self._gpus.clear()
            self._labels_kept.clear()
        bits = 0
        kept: dict[str, str] = {}
        for name, value in row.labels.items():
            copy = _FIELD_LABELS.get(name)
            if copy is not None and row[copy[1]] == value:
                bits |= copy[0]
            else:
                kept[name] = value
        shared = (row.hostname, row.model_name, row.container, row.pod, row.namespace)
        host_key = (*shared, *sorted(kept.items()), bits)
        host = self._hosts.get(host_key)
        if host is None:
            hostname, model_name, container, pod, namespace = shared
            message = v2.Host(
                hostname=hostname,
                model_name=model_name,
                container=container,
                pod=pod,
                namespace=namespace,
                labels=kept,
                field_labels=bits,
            )
            host = self._hosts[host_key] = _Entry(_length_delimited(_V2_HOST_KEY, _serialized(message)))
        gpu_key = (row.uuid, row.gpu_id, row.device, host)
        gpu = self._gpus.get(gpu_key)
        if gpu is None:
            resource = v2.Resource(uuid=row.uuid, gpu_id=row.gpu_id, device=row.device)
            gpu = self._gpus[gpu_key] = _Entry(_length_delimited(_V2_RESOURCE_ENTRY_KEY, _serialized(resource)), host)
        self.described[key] = gpu
        self._labels_kept.append(row.labels)
        return gpu


def _serialized(message: v2.Host | v2.Resource) -> bytes:
    return message.SerializeToString(deterministic=True)  # labels in key order: equal hosts, equal bytes


_resources = _Resources()
#: ``_VARINTS[n]`` is n as a varint: a table, so a column is encoded by one ``map`` over it. Grown by
#: replacing it (never in place), so a thread reading the old one still reads a correct table.
_VARINTS: list[bytes] = [_encode_varint(number) for number in range(1024)]


def _varint_table(size: int) -> list[bytes]:
    """``_VARINTS``, first grown to at least ``size`` entries."""
    global _VARINTS  # noqa: PLW0603 - replaced whole, see above
    table = _VARINTS
    if len(table) < size:
        table = _VARINTS = [*table, *map(_encode_varint, range(len(table), 2 * size))]
    return table


def _length_delimited(key: bytes, body: bytes) -> bytes:
    return key + _varint(len(body)) + body


@lru_cache(maxsize=4096)
def _v2_name_field(name: str) -> bytes:
    return _length_delimited(_V2_METRIC_NAME_ENTRY_KEY, name.encode())


@lru_cache(maxsize=4096)
def _v2_time_field(moment: datetime) -> bytes:
    return _length_delimited(_V2_TIME_KEY, to_timestamp(moment).SerializeToString())


@lru_cache(maxsize=1024)
def _doubles(count: int) -> Callable[..., bytes]:
    """Packs ``count`` doubles (little-endian, as protobuf writes them): compiled once per batch length."""
    return struct.Struct(f"<{count}d").pack


def encode_batch_v2(
    rows: Sequence[MetricRow],
    *,
    producer_id: str,
    sequence: int,
    created_at: datetime,
    stamp_rows: bool = False,
) -> bytes:
    """Serialise rows as one v2 MetricBatch: tables of distinct hosts, GPUs, names and times, then columns.

    Every loop over rows or table entries is a C loop (``map`` over itemgetters, dictionary look-ups and
    the varint table): each row's Resource is found in a cache keyed as v1's descriptions are, with its
    Resource and Host already encoded; the tables are dictionaries that keep first-seen order, and each
    column is one join of varints. Python code runs for a GPU only the first time it is seen. A column whose
    table has one entry is left out (every index 0), which also spares its work.
    """
    envelope = v2.MetricBatch(producer_id=producer_id, sequence=sequence, created_at=to_timestamp(created_at))
    if not rows:
        return envelope.SerializeToString()
    count = len(rows)
    keys = list(zip(map(_description_of, rows), map(id, map(_labels_of, rows)), strict=True))
    found = list(map(_resources.described.get, keys))
    if None in found:
        describe = _resources.describe
        for at, described in enumerate(found):
            if described is None:
                found[at] = describe(keys[at], rows[at])
    entries = cast("list[_Entry]", found)
    gpus = dict.fromkeys(entries)  # the distinct entries, in first-seen order
    table = _VARINTS if count <= len(_VARINTS) else _varint_table(count)
    parts: list[bytes] = []
    if len(gpus) > 1:
        hosts_of_gpus = list(map(_host_of, gpus))
        hosts = dict(zip(dict.fromkeys(hosts_of_gpus), table, strict=False))
        parts += map(_encoded_of, hosts)
        parts += map(_encoded_of, gpus)
        if len(hosts) > 1:
            column = b"".join(map(hosts.__getitem__, hosts_of_gpus))
            parts += (_V2_RESOURCE_HOST_KEY, _varint(len(column)), column)
        column = b"".join(map(dict(zip(gpus, table, strict=False)).__getitem__, entries))
        parts += (_V2_RESOURCE_KEY, _varint(len(column)), column)
    else:
        (gpu,) = gpus
        parts += (cast("_Entry", gpu.host).encoded, gpu.encoded)
    names = list(map(_names_of, rows))
    distinct_names = dict(zip(dict.fromkeys(names), table, strict=False))
    parts += map(_v2_name_field, distinct_names)
    if len(distinct_names) > 1:
        column = b"".join(map(distinct_names.__getitem__, names))
        parts += (_V2_METRIC_NAME_KEY, _varint(len(column)), column)
    if stamp_rows:
        parts.append(_v2_time_field(created_at))
    else:
        moments = list(map(_moments_of, rows))
        times = dict(zip(dict.fromkeys(moments), table, strict=False))
        parts += map(_v2_time_field, times)
        if len(times) > 1:
            column = b"".join(map(times.__getitem__, moments))
            parts += (_V2_SAMPLE_TIME_KEY, _varint(len(column)), column)
    parts += (_V2_VALUE_KEY, _varint(8 * count), _doubles(count)(*map(_values_of, rows)))
    parts.append(envelope.SerializeToString())
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


class UnknownContentTypeError(ValueError):
    """A content type that names no MetricBatch version this rxstreamer reads."""


def decode_batch(payload: bytes, content_encoding: str = "", content_type: str | None = None) -> MetricBatch:
    """Parse a queue payload back into a (v1) MetricBatch, first undoing its ``content-encoding`` header's value.

    ``content_type`` (the message's header) names the version; without it the payload says: v2 reserves
    v1's field 1, so a payload that begins with it is v1, and one that holds v2's tables is v2. Both give the
    same MetricBatch, so a consumer reads a topic of mixed versions the same way.

    Raises google.protobuf.message.DecodeError, PayloadEncodingError for an unknown or broken encoding, or
    UnknownContentTypeError for a content type naming neither version.
    """
    plain = decompress_payload(payload, content_encoding)
    if content_type == CONTENT_TYPE_V1 or (content_type is None and plain[:1] == _METRICS_KEY):
        return _decode_v1(plain)
    if content_type is not None and content_type != CONTENT_TYPE_V2:
        raise UnknownContentTypeError(f"content-type {content_type!r} is not a MetricBatch this rxstreamer reads")
    if plain[:1] == _METRICS_KEY:
        raise DecodeError(f"a v1 payload (it holds v1's metrics) under the content-type {content_type!r}")
    batch = v2.MetricBatch()
    batch.ParseFromString(plain)
    if content_type is None and not (batch.value or batch.resources or batch.hosts):
        return _decode_v1(plain)  # no rows: the same envelope either way, or a v1 batch in another field order
    return _v1_of(batch)


def _decode_v1(plain: bytes) -> MetricBatch:
    batch = MetricBatch()
    batch.ParseFromString(plain)
    return batch


def _v1_of(batch: v2.MetricBatch) -> MetricBatch:
    """The v1 MetricBatch of a v2 one, with every row's GpuMetric as v1 states it.

    Like the v1 encoder, it joins bytes instead of building a message per row: each host's and resource's
    share of a GpuMetric is serialised once, each distinct (resource, metric name, time) once from those,
    and the rows are joined by C loops and parsed by protobuf in one call.
    """
    count = len(batch.value)
    columns = [list(column) or [0] * count for column in (batch.resource, batch.metric_name, batch.time)]
    if any(len(column) != count for column in columns):
        raise DecodeError(f"v2 MetricBatch: columns of unequal length ({[len(c) for c in columns]}, {count} values)")
    samples = list(zip(*columns, strict=True))
    try:
        names = [_varint(len(name)) + name for name in map(str.encode, batch.metric_names)]  # length-prefixed
        resources = _v1_resource_parts(batch)
        times = [_length_delimited(_TIMESTAMP_KEY, time.SerializeToString()) for time in batch.times]
        starts: dict[tuple[int, int, int], bytes] = {}  # a row's bytes but its value, per distinct sample
        for resource, name, time in dict.fromkeys(samples):
            description = _v1_description(*resources[resource], names[name])
            timestamp = times[time]
            length = _varint(len(timestamp) + len(description) + 9)
            starts[(resource, name, time)] = _METRICS_KEY + length + timestamp + description + _VALUE_KEY
    except IndexError as error:
        raise DecodeError(f"v2 MetricBatch: an index past the end of its table ({error})") from error
    envelope = MetricBatch(producer_id=batch.producer_id, sequence=batch.sequence)
    if batch.HasField("created_at"):
        envelope.created_at.CopyFrom(batch.created_at)
    rows = itertools.chain.from_iterable(
        zip(map(starts.__getitem__, samples), map(_pack_double, batch.value), strict=True)
    )
    return _decode_v1(b"".join(itertools.chain(rows, (envelope.SerializeToString(),))))


# GpuMetric's field keys (metric_name = 2 ... namespace = 10, labels = 12) and a labels entry's (1 and 2).
_GPU_METRIC_NAME_KEY = b"\x12"
_GPU_METRIC_LABELS_KEY = b"\x62"
_NAME_LABEL = _varint(len("__name__")) + b"__name__"


def _v1_field(key: int, text: str) -> bytes:
    """A GpuMetric string field (nothing for "", as protobuf writes it)."""
    return _length_delimited(bytes([key << 3 | 2]), text.encode()) if text else b""


def _v1_label(key: bytes, value: bytes) -> bytes:
    """One GpuMetric.labels entry from its length-prefixed key and value."""
    return _length_delimited(_GPU_METRIC_LABELS_KEY, b"\x0a" + key + b"\x12" + value)


def _v1_labels(labels: dict[str, str]) -> bytes:
    return b"".join(_v1_label(*(_varint(len(t)) + t for t in map(str.encode, pair))) for pair in labels.items())


#: The labels a v2 Host's field_labels put back, by where their value is: the resource's own fields
#: (GpuMetric 3..5, MetricRow 2..4), the host's (6..10, 5..9); __name__ (the metric name) is added per row.
_GPU_LABELS = {name: bit for name, (bit, field) in _FIELD_LABELS.items() if 2 <= field <= 4}
_HOST_LABELS = {name: (bit, field) for name, (bit, field) in _FIELD_LABELS.items() if field >= 5}


def _v1_resource_parts(batch: v2.MetricBatch) -> list[tuple[bytes, bool]]:
    """Each resource's share of every GpuMetric of it, serialised (all but timestamp, metric name, value and
    the ``__name__`` label), and whether its rows' labels hold ``__name__``, which depends on the row.

    Worked out per distinct Host and Resource and cached by their encoding: a consumer sees the same GPUs
    batch after batch, so most batches cost a look-up per resource.
    """
    hosts = [_v1_host_part(host.SerializeToString(deterministic=True)) for host in batch.hosts]
    resource_host = list(batch.resource_host) or [0] * len(batch.resources)
    if len(resource_host) != len(batch.resources):
        raise DecodeError(f"v2 MetricBatch: {len(resource_host)} resource_host for {len(batch.resources)} resources")
    return [
        _v1_resource_part(resource.SerializeToString(), *hosts[host])
        for resource, host in zip(batch.resources, resource_host, strict=True)
    ]


@lru_cache(maxsize=16_384)  # 1,600 GPUs of 10 metrics; about 400 bytes each
def _v1_description(part: bytes, with_name: bool, name: bytes) -> bytes:
    """A GpuMetric's bytes but its timestamp and value: the length-prefixed metric ``name``, its resource's
    ``part`` and, when that resource's rows carry it, the ``__name__`` label. Cached like the parts: a consumer
    sees the same GPUs and metrics batch after batch (the part is the cached object, so its hash is kept)."""
    description = _GPU_METRIC_NAME_KEY + name + part
    return description + _v1_label(_NAME_LABEL, name) if with_name else description


@lru_cache(maxsize=4096)
def _v1_host_part(encoded: bytes) -> tuple[bytes, int]:
    """A Host's share of a GpuMetric, serialised (fields 6..10 and its labels), and its field_labels."""
    host = v2.Host()
    host.ParseFromString(encoded)
    bits = host.field_labels
    if bits & ~_ALL_FIELD_LABELS:
        raise DecodeError(f"v2 Host: field_labels {bits:#x} has bits this rxstreamer does not know")
    fields = (host.model_name, host.hostname, host.container, host.pod, host.namespace)
    labels = dict(host.labels)
    labels.update((name, fields[field - 5]) for name, (bit, field) in _HOST_LABELS.items() if bits & bit)
    encoded_fields = [_v1_field(number, text) for number, text in enumerate(fields, start=6)]
    return b"".join(encoded_fields) + _v1_labels(labels), bits


@lru_cache(maxsize=65_536)
def _v1_resource_part(encoded: bytes, host_part: bytes, bits: int) -> tuple[bytes, bool]:
    """A Resource's share of a GpuMetric, its host's included, and whether its rows hold ``__name__``."""
    resource = v2.Resource()
    resource.ParseFromString(encoded)
    fields = (resource.gpu_id, resource.device, resource.uuid)
    labels = {name: fields[index] for index, (name, bit) in enumerate(_GPU_LABELS.items()) if bits & bit}
    encoded_fields = [_v1_field(number, text) for number, text in enumerate(fields, start=3)]
    return b"".join(encoded_fields) + host_part + _v1_labels(labels), bool(bits & 1)


class BatchEncoder:
    """Gives each batch its identity (producer id and the next sequence number) and encodes it.

    The identity is fixed here, once per batch and before the first publish attempt, so every retry of
    a batch carries the same sequence and the queue can recognise it as the same message. ``encoding``
    picks the wire format version (v2 unless consumers that read only v1 remain), named by the batch's
    ``content_type``.
    """

    def __init__(
        self,
        producer_id: str,
        *,
        timestamps: TimestampMode = "original",
        first_sequence: int = 1,
        clock: Callable[[], datetime] | None = None,
        encoding: WireEncoding = "v2",
    ) -> None:
        self.producer_id = producer_id
        self.encoding: WireEncoding = encoding
        self.content_type = CONTENT_TYPES[encoding]
        self._encode = encode_batch_v2 if encoding == "v2" else encode_batch_v1
        self._stamp_rows = timestamps == "processing"
        self._sequences = itertools.count(first_sequence)
        self._clock = clock or (lambda: datetime.now(UTC))

    def __call__(
        self, rows: Sequence[MetricRow], position: Position | None = None, read: ReadCounts | None = None
    ) -> EncodedBatch:
        sequence = next(self._sequences)
        payload = self._encode(
            rows,
            producer_id=self.producer_id,
            sequence=sequence,
            created_at=self._clock(),
            stamp_rows=self._stamp_rows,
        )
        return EncodedBatch(
            self.producer_id,
            sequence,
            payload,
            self.content_type,
            len(rows),
            position,
            read,
            content_digest(rows, position),
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
