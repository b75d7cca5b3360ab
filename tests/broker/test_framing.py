"""The durable log's record format, byte by byte and without a disk."""

from __future__ import annotations

import pytest

from rxstreamer.broker.framing import (
    HEADER_SIZE,
    CorruptRecordError,
    Record,
    TruncatedRecordError,
    decode,
    encode,
    find_next_record,
)


def make_record(offset: int = 0, payload: bytes = b"payload") -> Record:
    return Record(
        offset=offset,
        producer_id="streamer-ä",
        sequence=2**64 - 1,
        published_at_ns=1_700_000_000_123_456_789,
        headers={"content-type": "application/x-protobuf", "empty": ""},
        payload=payload,
    )


def flipped(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def test_round_trip_keeps_every_field() -> None:
    """A decoded record equals the encoded one, including non-ASCII text and extreme integers."""
    record = make_record()
    data = encode(record)
    assert decode(data) == (record, len(data))


def test_round_trip_of_empty_record() -> None:
    """No headers, no producer and an empty payload are encoded too."""
    record = Record(offset=5, producer_id="", sequence=0, published_at_ns=-1, headers={}, payload=b"")
    assert decode(encode(record))[0] == record


def test_records_decode_one_after_another() -> None:
    """decode returns where the next record starts, so a segment is read front to back."""
    first, second = make_record(0, b"a"), make_record(1, b"bb")
    data = encode(first) + encode(second)
    decoded_first, position = decode(data)
    decoded_second, end = decode(data, position)
    assert (decoded_first, decoded_second, end) == (first, second, len(data))


@pytest.mark.parametrize("keep", [0, 1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 5, -1])
def test_truncated_record_is_detected(keep: int) -> None:
    """A record cut anywhere, in its header or its body, is reported as truncated at its start."""
    data = b"x" * 3 + encode(make_record())
    with pytest.raises(TruncatedRecordError) as truncated:
        decode(data[: 3 + keep] if keep >= 0 else data[:-1], 3)
    assert truncated.value.position == 3


def test_bad_body_checksum_is_detected() -> None:
    """One flipped payload bit fails the body checksum."""
    data = encode(make_record())
    with pytest.raises(CorruptRecordError, match="body checksum"):
        decode(flipped(data, len(data) - 1))


def test_bad_length_is_corruption_not_truncation() -> None:
    """A damaged length field fails the header checksum instead of passing for a record cut short."""
    data = encode(make_record())
    with pytest.raises(CorruptRecordError, match="header checksum"):
        decode(flipped(data, 2))


def test_wrong_magic_is_detected() -> None:
    """Bytes that do not start with the magic/version byte are not a record."""
    with pytest.raises(CorruptRecordError, match="no record start"):
        decode(b"\x00" * 64)


def test_find_next_record_skips_garbage() -> None:
    """After damage, the next intact record is found wherever it starts."""
    garbage = b"\xa1\x00\x01garbage\xa1"
    data = garbage + encode(make_record(7))
    assert find_next_record(data, 0, min_offset=7) == len(garbage)


def test_find_next_record_finds_nothing_in_a_damaged_tail() -> None:
    """A torn last record and garbage after it contain no intact record."""
    data = encode(make_record())[:-3] + b"\xa1\xa1junk"
    assert find_next_record(data, 1, min_offset=0) is None


def test_find_next_record_ignores_older_offsets() -> None:
    """A record embedded in a payload with an offset already passed does not count as a real one."""
    inner = encode(make_record(0))
    outer = encode(make_record(5, payload=inner))
    assert find_next_record(outer, 1, min_offset=6) is None
    assert find_next_record(outer, 1, min_offset=0) is not None
