"""The on-disk record format of a durable topic: pure encoding and decoding, no files.

Kept apart from the segment file I/O so that the format, and the checks that tell a torn write from
corruption, can be tested byte by byte without a disk.

One record, all integers big-endian::

    header (13 bytes)
      magic      u8    0xA1: marks a record start and is the format version (a new layout gets a new value)
      length     u32   bytes in the body
      body_crc   u32   zlib.crc32 of the body
      header_crc u32   zlib.crc32 of the 9 bytes above
    body (length bytes)
      offset           u64
      published_at_ns  i64   wall clock, Unix nanoseconds
      sequence         u64
      producer_id      u32 byte length, then UTF-8
      header count     u32, then per header: key (u32 length, UTF-8), value (u32 length, UTF-8)
      payload          the rest of the body

The header has its own checksum so that a damaged length is caught as corruption instead of being taken
for a record cut short at the end of the file, and so that scanning for the next intact record after a
damaged one (``find_next_record``) rejects a false start after 13 bytes instead of checksumming a body.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

MAGIC = 0xA1
_MAGIC_BYTE = bytes([MAGIC])
_HEADER = struct.Struct(">BII")  # magic, body length, body crc
_HEADER_CRC = struct.Struct(">I")
HEADER_SIZE = _HEADER.size + _HEADER_CRC.size
_FIXED = struct.Struct(">QqQ")  # offset, published_at_ns, sequence
_LENGTH = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class Record:
    """What a durable topic keeps of one message: everything a subscriber is sent, nothing derived."""

    offset: int
    producer_id: str
    sequence: int
    published_at_ns: int
    headers: Mapping[str, str]
    payload: bytes


class FramingError(ValueError):
    """The bytes at ``position`` are not an intact record."""

    def __init__(self, position: int, reason: str) -> None:
        self.position = position
        self.reason = reason
        super().__init__(f"{reason} at byte {position}")


class TruncatedRecordError(FramingError):
    """The data ends inside a record: what an interrupted append leaves behind."""


class CorruptRecordError(FramingError):
    """The record is complete but fails a check: the bytes changed after they were written."""


def encode(record: Record) -> bytes:
    """The record's bytes, ready to append to a segment."""
    body = _encode_body(record)
    header = _HEADER.pack(MAGIC, len(body), zlib.crc32(body))
    return header + _HEADER_CRC.pack(zlib.crc32(header)) + body


def decode(data: bytes, position: int = 0) -> tuple[Record, int]:
    """The record starting at ``position`` and the position just after it.

    Raises TruncatedRecordError when ``data`` ends before the record does and CorruptRecordError when a check fails.
    """
    length, body_crc = _read_header(data, position)
    start = position + HEADER_SIZE
    end = start + length
    if end > len(data):
        raise TruncatedRecordError(position, f"record of {HEADER_SIZE + length} bytes cut short")
    body = memoryview(data)[start:end]
    if zlib.crc32(body) != body_crc:
        raise CorruptRecordError(position, "record body checksum mismatch")
    return _decode_body(body, position), end


def find_next_record(data: bytes, start: int, *, min_offset: int) -> int | None:
    """Where the next intact record with an offset >= ``min_offset`` starts, at or after ``start``.

    Tells a damaged tail (nothing intact follows, so cutting it loses nothing acknowledged) from damage in
    the middle (intact records follow). The offset bound keeps a record that happens to sit inside some
    payload from counting as a real one.
    """
    position = data.find(_MAGIC_BYTE, start)
    while position != -1:
        try:
            record, _ = decode(data, position)
        except FramingError:
            pass
        else:
            if record.offset >= min_offset:
                return position
        position = data.find(_MAGIC_BYTE, position + 1)
    return None


def _read_header(data: bytes, position: int) -> tuple[int, int]:
    if len(data) - position < HEADER_SIZE:
        raise TruncatedRecordError(position, f"record header cut short ({len(data) - position} of {HEADER_SIZE} bytes)")
    magic, length, body_crc = _HEADER.unpack_from(data, position)
    if magic != MAGIC:
        raise CorruptRecordError(position, f"no record start (byte 0x{magic:02x}, expected 0x{MAGIC:02x})")
    (header_crc,) = _HEADER_CRC.unpack_from(data, position + _HEADER.size)
    if zlib.crc32(memoryview(data)[position : position + _HEADER.size]) != header_crc:
        raise CorruptRecordError(position, "record header checksum mismatch")
    return length, body_crc


def _encode_body(record: Record) -> bytes:
    parts = [_FIXED.pack(record.offset, record.published_at_ns, record.sequence), _text(record.producer_id)]
    parts.append(_LENGTH.pack(len(record.headers)))
    for key, value in record.headers.items():
        parts.append(_text(key))
        parts.append(_text(value))
    parts.append(record.payload)
    return b"".join(parts)


def _text(value: str) -> bytes:
    encoded = value.encode()
    return _LENGTH.pack(len(encoded)) + encoded


def _decode_body(body: memoryview, position: int) -> Record:
    """Parse a body whose checksum matched; a mismatch of its structure is still reported, not assumed."""
    reader = _BodyReader(body, position)
    offset, published_at_ns, sequence = reader.fixed()
    producer_id = reader.text()
    headers = {}
    for _ in range(reader.length()):
        key = reader.text()
        headers[key] = reader.text()
    return Record(
        offset=offset,
        producer_id=producer_id,
        sequence=sequence,
        published_at_ns=published_at_ns,
        headers=headers,
        payload=reader.rest(),
    )


class _BodyReader:
    """Reads a body front to back, turning any overrun or bad UTF-8 into CorruptRecordError."""

    def __init__(self, body: memoryview, position: int) -> None:
        self._body = body
        self._at = 0
        self._position = position

    def fixed(self) -> tuple[int, int, int]:
        values: tuple[int, int, int] = _FIXED.unpack(self._take(_FIXED.size))
        return values

    def length(self) -> int:
        value: int = _LENGTH.unpack(self._take(_LENGTH.size))[0]
        return value

    def text(self) -> str:
        raw = self._take(self.length())
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError as error:
            raise CorruptRecordError(self._position, "record text is not UTF-8") from error

    def rest(self) -> bytes:
        return bytes(self._take(len(self._body) - self._at))

    def _take(self, size: int) -> memoryview:
        end = self._at + size
        if end > len(self._body):
            raise CorruptRecordError(self._position, "record body shorter than its fields")
        chunk = self._body[self._at : end]
        self._at = end
        return chunk
