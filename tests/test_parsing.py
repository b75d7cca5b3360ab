"""RowParser, parse_labels and parse_timestamp: CSV records to rows, without files."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from itertools import islice

import pytest

from rxstreamer.generate import generate_records, write_csv
from rxstreamer.model import MetricRow, Rejection
from rxstreamer.parsing import (
    DETAIL_VALUE_CHARS,
    RECORD_REASONS,
    REJECTION_REASONS,
    TEXT_REASONS,
    HeaderError,
    LabelsError,
    RowParser,
    dcgm_sentinel,
    parse_labels,
    parse_timestamp,
)

HEADER = [
    "timestamp",
    "metric_name",
    "gpu_id",
    "device",
    "uuid",
    "modelName",
    "Hostname",
    "container",
    "pod",
    "namespace",
    "value",
    "labels_raw",
]
UUID = "GPU-00000000-0000-4000-8000-0000000000aa"


def record(**changes: str) -> list[str]:
    """A valid record in HEADER order, with some fields replaced by name."""
    fields = {
        "timestamp": "2025-07-18T20:42:34Z",
        "metric_name": "DCGM_FI_DEV_GPU_UTIL",
        "gpu_id": "3",
        "device": "nvidia3",
        "uuid": UUID,
        "modelName": "NVIDIA H100 80GB HBM3",
        "Hostname": "test-host-7",
        "container": "",
        "pod": "",
        "namespace": "",
        "value": "97",
        "labels_raw": 'gpu="3",Hostname="test-host-7"',
    }
    fields.update(changes)
    return [fields[name] for name in HEADER]


def rejection(result: MetricRow | Rejection) -> Rejection:
    assert isinstance(result, Rejection), f"expected a rejection, got {result!r}"
    return result


def row(result: MetricRow | Rejection) -> MetricRow:
    assert isinstance(result, MetricRow), f"expected a row, got {result!r}"
    return result


# Header mapping


def test_header_in_the_export_spelling_maps_every_field() -> None:
    """Each column of the real header lands in its MetricRow field, with the line number carried through."""
    parsed = row(RowParser(HEADER).parse(record(), 5))
    assert parsed == MetricRow(
        timestamp=datetime(2025, 7, 18, 20, 42, 34, tzinfo=UTC),
        metric_name="DCGM_FI_DEV_GPU_UTIL",
        gpu_id="3",
        device="nvidia3",
        uuid=UUID,
        model_name="NVIDIA H100 80GB HBM3",
        hostname="test-host-7",
        container="",
        pod="",
        namespace="",
        value=97.0,
        labels={"gpu": "3", "Hostname": "test-host-7"},
        line=5,
    )


def test_columns_are_found_by_name_in_any_order_and_case() -> None:
    """Reordered columns with other casing and underscores still map to the same fields."""
    spellings = {
        "timestamp": "TimeStamp",
        "metric_name": "MetricName",
        "gpu_id": "GPU_ID",
        "device": "Device",
        "uuid": "UUID",
        "modelName": "model_name",
        "Hostname": "host_name",
        "container": "CONTAINER",
        "pod": "Pod",
        "namespace": "NameSpace",
        "value": "VALUE",
        "labels_raw": "LabelsRaw",
    }
    order = list(reversed(HEADER))
    fields = dict(zip(HEADER, record(), strict=True))
    parser = RowParser([spellings[name] for name in order])
    reordered = row(parser.parse([fields[name] for name in order], 2))
    assert reordered == row(RowParser(HEADER).parse(record(), 2))


def test_unknown_columns_are_ignored() -> None:
    """Extra columns anywhere in the header do not shift or disturb the known ones."""
    header = ["extra_first", *HEADER[:6], "in_the_middle", *HEADER[6:]]
    fields = record()
    parsed = row(RowParser(header).parse(["x", *fields[:6], "y", *fields[6:]], 2))
    assert parsed == row(RowParser(HEADER).parse(fields, 2))


def test_absent_optional_columns_read_as_empty() -> None:
    """With only the required columns, the optional fields are empty strings and labels an empty mapping."""
    parser = RowParser(["value", "uuid", "timestamp", "metric_name"])
    parsed = row(parser.parse(["1.5", UUID, "2025-07-18T20:42:34Z", "DCGM_FI_DEV_POWER_USAGE"], 2))
    assert (parsed.uuid, parsed.metric_name, parsed.value) == (UUID, "DCGM_FI_DEV_POWER_USAGE", 1.5)
    assert (parsed.gpu_id, parsed.device, parsed.model_name, parsed.hostname) == ("", "", "", "")
    assert (parsed.container, parsed.pod, parsed.namespace) == ("", "", "")
    assert dict(parsed.labels) == {}


def test_missing_required_columns_raise_header_error_listing_missing_and_found() -> None:
    """A header without metric_name and value names both, and what it did find, on one line."""
    header = ["timestamp", "uuid", "Hostname", "labels_raw"]
    with pytest.raises(HeaderError) as caught:
        RowParser(header)
    assert caught.value.missing == ("metric_name", "value")
    assert caught.value.found == tuple(header)
    assert str(caught.value) == (
        "missing required column(s) metric_name, value; found: timestamp, uuid, Hostname, labels_raw"
    )


# Rejections


@pytest.mark.parametrize(
    ("changes", "reason", "detail_names"),
    [
        ({"value": "n/a"}, "value_not_numeric", "value='n/a'"),
        ({"value": ""}, "value_not_numeric", "value=''"),
        ({"value": "1_000"}, "value_not_numeric", "value='1_000'"),
        ({"value": "nan"}, "value_not_finite", "value='nan'"),
        ({"value": "-Infinity"}, "value_not_finite", "value='-Infinity'"),
        ({"timestamp": "2025-07-18"}, "bad_timestamp", "timestamp='2025-07-18'"),
        ({"timestamp": ""}, "bad_timestamp", "timestamp=''"),
        ({"uuid": ""}, "missing_uuid", "uuid=''"),
        ({"uuid": "  "}, "missing_uuid", "uuid='  '"),
        ({"metric_name": ""}, "missing_metric_name", "metric_name=''"),
        ({"labels_raw": "gpu=3"}, "bad_labels", "labels_raw='gpu=3'"),
    ],
)
def test_each_bad_field_is_rejected_with_its_reason_and_value(
    changes: dict[str, str], reason: str, detail_names: str
) -> None:
    """One bad field gives a Rejection with its stable code and a detail naming the field and value."""
    rejected = rejection(RowParser(HEADER).parse(record(**changes), 9))
    assert (rejected.line, rejected.reason) == (9, reason)
    assert detail_names in rejected.detail


@pytest.mark.parametrize("width", [11, 13, 1])
def test_wrong_number_of_fields_is_rejected(width: int) -> None:
    """A record with more or fewer fields than the header is rejected as field_count, naming both counts."""
    fields = [*record(), "extra", "extra"][:width]
    rejected = rejection(RowParser(HEADER).parse(fields, 4))
    assert (rejected.line, rejected.reason) == (4, "field_count")
    assert rejected.detail == f"expected 12 fields, found {width}"


def test_rejection_detail_is_truncated() -> None:
    """A huge offending value is cut short in the detail so one bad field cannot flood a log."""
    rejected = rejection(RowParser(HEADER).parse(record(value="x" * 10_000), 2))
    assert rejected.reason == "value_not_numeric"
    assert "x" * DETAIL_VALUE_CHARS in rejected.detail
    assert len(rejected.detail) < DETAIL_VALUE_CHARS + 40


@pytest.mark.parametrize(
    ("text", "number"),
    [("0", 0.0), ("1", 1.0), ("81003", 81003.0), ("117.77", 117.77), (" 42 ", 42.0), ("-3.5", -3.5)],
)
def test_values_are_numbers(text: str, number: float) -> None:
    """Integers and decimals, 0 and 1 included, parse to floats; surrounding spaces are tolerated."""
    parsed = row(RowParser(HEADER).parse(record(value=text), 2))
    assert parsed.value == number
    assert type(parsed.value) is float


# Labels


def test_labels_from_a_csv_line_with_doubled_quotes() -> None:
    """labels_raw as the export writes it (RFC 4180 doubled quotes, commas inside) parses after csv.reader."""
    line = '"x","DCGM_FI_DRIVER_VERSION=""535.1"",job=""a,b"",instance=""h:9400"""\n'
    [fields] = list(csv.reader(io.StringIO(line)))
    assert dict(parse_labels(fields[1])) == {
        "DCGM_FI_DRIVER_VERSION": "535.1",
        "job": "a,b",
        "instance": "h:9400",
    }


def test_labels_unescape_prometheus_escapes() -> None:
    r"""\", \\ and \n in a value become a quote, a backslash and a newline; other escapes stay."""
    raw = r'say="he said \"hi\", then left",path="C:\\gpu",text="one\ntwo",tab="a\tb"'
    assert dict(parse_labels(raw)) == {
        "say": 'he said "hi", then left',
        "path": "C:\\gpu",
        "text": "one\ntwo",
        "tab": "a\\tb",
    }


def test_empty_labels_are_an_empty_mapping() -> None:
    """An empty labels_raw is a valid, empty label set."""
    assert dict(parse_labels("")) == {}


def test_labels_allow_a_trailing_comma_and_empty_values() -> None:
    """Prometheus allows a trailing comma and empty label values; so does the parser."""
    assert dict(parse_labels('a="",b="2",')) == {"a": "", "b": "2"}


def test_labels_are_read_only_and_shared_between_equal_strings() -> None:
    """Equal labels_raw strings give the very same read-only mapping, so rows do not each hold a copy."""
    raw = 'gpu="0",UUID="GPU-shared"'
    first = parse_labels(raw)
    second = parse_labels("".join(list(raw)))  # an equal but distinct string object
    assert first is second
    with pytest.raises(TypeError):
        first["gpu"] = "1"  # type: ignore[index]


def test_rows_with_equal_labels_share_one_mapping() -> None:
    """Two parsed rows with the same labels_raw hold the same mapping object."""
    parser = RowParser(HEADER)
    first = row(parser.parse(record(value="1"), 2))
    second = row(parser.parse(record(value="2"), 3))
    assert first.labels is second.labels


@pytest.mark.parametrize(
    "raw",
    [
        "gpu=0",
        'gpu="0',
        'gpu="0"uuid="x"',
        '="0"',
        'gpu="0",,uuid="x"',
        'gpu="0",gpu="1"',
        ' gpu="0"',
        'a-b="0"',
    ],
)
def test_malformed_labels_raise(raw: str) -> None:
    """Unquoted values, unterminated quotes, missing separators, bad names and repeated keys are errors."""
    with pytest.raises(LabelsError):
        parse_labels(raw)


# Timestamps


@pytest.mark.parametrize(
    ("text", "instant"),
    [
        ("2025-07-18T20:42:34Z", datetime(2025, 7, 18, 20, 42, 34, tzinfo=UTC)),
        ("2025-07-18T20:42:34+00:00", datetime(2025, 7, 18, 20, 42, 34, tzinfo=UTC)),
        ("2025-07-18T22:42:34+02:00", datetime(2025, 7, 18, 20, 42, 34, tzinfo=UTC)),
        ("2025-07-18T15:12:34-05:30", datetime(2025, 7, 18, 20, 42, 34, tzinfo=UTC)),
        ("2025-07-18T20:42:34.5Z", datetime(2025, 7, 18, 20, 42, 34, 500_000, tzinfo=UTC)),
        ("2025-07-18T20:42:34.123456789Z", datetime(2025, 7, 18, 20, 42, 34, 123_456, tzinfo=UTC)),
        ("2025-07-18t20:42:34z", datetime(2025, 7, 18, 20, 42, 34, tzinfo=UTC)),
    ],
)
def test_rfc3339_timestamps_become_utc(text: str, instant: datetime) -> None:
    """RFC 3339 with Z, offsets or fractions parses to the same instant, expressed in UTC."""
    parsed = parse_timestamp(text)
    assert parsed == instant
    assert parsed is not None
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text",
    [
        "2025-07-18",
        "2025-07-18T20:42:34",
        "2025-07-18T20:42Z",
        "2025-13-01T00:00:00Z",
        "2025-07-18T20:42:60Z",
        "1752871354",
        "yesterday",
        " 2025-07-18T20:42:34Z",
    ],
)
def test_non_rfc3339_timestamps_are_rejected(text: str) -> None:
    """Dates alone, times without an offset, impossible dates and epoch numbers are not timestamps."""
    assert parse_timestamp(text) is None
    assert rejection(RowParser(HEADER).parse(record(timestamp=text), 2)).reason == "bad_timestamp"


# Round trip


def test_generated_rows_round_trip_through_csv_and_parser() -> None:
    """Generated records written as CSV and read back parse to rows whose fields equal the originals."""
    records = list(islice(generate_records(hosts=2, gpus=2, scrapes=1, seed=3), 40))
    text = io.StringIO(newline="")
    write_csv(text, records)
    text.seek(0)
    reader = csv.reader(text)
    parser = RowParser(next(reader))
    for line, (fields, original) in enumerate(zip(reader, records, strict=True), start=2):
        parsed = row(parser.parse(fields, line))
        assert parsed.timestamp.strftime("%Y-%m-%dT%H:%M:%SZ") == original[0]
        assert [*parsed[1:10], parsed.value] == [*original[1:10], float(original[10])]
        assert parsed.labels["UUID"] == parsed.uuid
        assert parsed.labels["__name__"] == parsed.metric_name
        assert parsed.labels["Hostname"] == parsed.hostname
        assert parsed.labels["device"] == parsed.device


# DCGM sentinels

SENTINEL_CASES = [
    ("2147483632", "blank", "DCGM_INT32_BLANK"),
    ("2147483633", "not_found", "DCGM_INT32_NOT_FOUND"),
    ("2147483634", "not_supported", "DCGM_INT32_NOT_SUPPORTED"),
    ("2147483635", "not_permissioned", "DCGM_INT32_NOT_PERMISSIONED"),
    ("9223372036854775792", "blank", "DCGM_INT64_BLANK"),
    ("9223372036854775793", "not_found", "DCGM_INT64_NOT_FOUND"),
    ("9223372036854775794", "not_supported", "DCGM_INT64_NOT_SUPPORTED"),
    ("9223372036854775795", "not_permissioned", "DCGM_INT64_NOT_PERMISSIONED"),
    ("140737488355328", "blank", "DCGM_FP64_BLANK"),
    ("140737488355329.000000", "not_found", "DCGM_FP64_NOT_FOUND"),
    ("1.40737488355330e14", "not_supported", "DCGM_FP64_NOT_SUPPORTED"),
    (" 140737488355331.0 ", "not_permissioned", "DCGM_FP64_NOT_PERMISSIONED"),
    ("9.223372036854775794e18", "not_supported", "DCGM_INT64_NOT_SUPPORTED"),
]


@pytest.mark.parametrize(("text", "kind", "name"), SENTINEL_CASES)
def test_dcgm_sentinels_are_recognised_by_their_exact_value(text: str, kind: str, name: str) -> None:
    """Each of DCGM's twelve sentinels, written as an integer or a decimal, is named with its kind."""
    assert dcgm_sentinel(text) == (name, kind)


@pytest.mark.parametrize(("text", "kind", "name"), SENTINEL_CASES)
def test_dcgm_sentinels_are_rejected_naming_the_kind(text: str, kind: str, name: str) -> None:
    """In the default reject mode a sentinel value is a dcgm_sentinel rejection whose detail names the kind."""
    rejected = rejection(RowParser(HEADER).parse(record(value=text), 6))
    assert (rejected.line, rejected.reason) == (6, "dcgm_sentinel")
    assert f"DCGM's {kind} sentinel ({name})" in rejected.detail


@pytest.mark.parametrize(
    "text",
    [
        "2147483631",
        "2147483636",
        "9223372036854775791",
        "9223372036854775796",
        "9223372036854775807",
        "140737488355327",
        "140737488355332",
        "140737488355328.5",
        "2147483632.25",
        "1e300",
        "-2147483632",
    ],
)
def test_values_next_to_sentinels_are_readings(text: str) -> None:
    """Neighbours of the sentinels are ordinary numbers, although some are the same double as a sentinel."""
    assert dcgm_sentinel(text) is None
    assert row(RowParser(HEADER).parse(record(value=text), 2)).value == float(text)


def test_floats_cannot_tell_int64_sentinels_apart_but_the_parser_does() -> None:
    """float() merges 2**63-16 .. 2**63-13 with their neighbours; the kinds still differ, and a reading is kept."""
    texts = ["9223372036854775792", "9223372036854775794", "9223372036854775791"]
    assert len({float(text) for text in texts}) == 1
    assert [dcgm_sentinel(text) for text in texts] == [
        ("DCGM_INT64_BLANK", "blank"),
        ("DCGM_INT64_NOT_SUPPORTED", "not_supported"),
        None,
    ]


def test_flag_mode_publishes_the_value_with_a_dcgm_sentinel_label() -> None:
    """In flag mode the row is kept, value as written, with dcgm_sentinel=<kind> added to its labels."""
    parser = RowParser(HEADER, sentinels="flag")
    flagged = row(parser.parse(record(value="2147483634"), 3))
    assert flagged.value == 2147483634.0
    assert dict(flagged.labels) == {"gpu": "3", "Hostname": "test-host-7", "dcgm_sentinel": "not_supported"}
    assert flagged.labels is row(parser.parse(record(value="2147483634"), 4)).labels
    plain = row(parser.parse(record(), 5))
    assert "dcgm_sentinel" not in plain.labels


def test_flag_mode_still_rejects_bad_labels() -> None:
    """Flagging a sentinel does not excuse labels that cannot be parsed."""
    parser = RowParser(HEADER, sentinels="flag")
    assert rejection(parser.parse(record(value="2147483632", labels_raw="gpu=0"), 2)).reason == "bad_labels"


def test_unknown_sentinel_mode_is_refused() -> None:
    """Only reject and flag are modes."""
    with pytest.raises(ValueError, match="sentinels must be one of reject, flag"):
        RowParser(HEADER, sentinels="zero")  # type: ignore[arg-type]


# Repeated headers


@pytest.mark.parametrize(
    "fields",
    [
        HEADER,
        [name.upper() for name in HEADER],
        [f"  {name} " for name in HEADER],
        ["\ufefftimestamp", *HEADER[1:]],
    ],
    ids=["same", "upper", "spaced", "bom"],
)
def test_the_header_again_is_a_repeated_header_rejection(fields: list[str]) -> None:
    """The header line in the middle of the data, in any case or spacing, is repeated_header, not bad_timestamp."""
    rejected = rejection(RowParser(HEADER).parse(fields, 40))
    assert (rejected.line, rejected.reason) == (40, "repeated_header")


def test_a_header_with_other_columns_is_not_a_repeated_header() -> None:
    """Only this file's own header counts; a record of other column names is a plain bad row."""
    other = ["timestamp", *HEADER[1:-1], "labels"]
    assert rejection(RowParser(HEADER).parse(other, 2)).reason == "bad_timestamp"


def test_rejection_reasons_are_unique_stable_codes() -> None:
    """Every reason is listed once, and text-level and record-level reasons do not overlap."""
    assert len(set(REJECTION_REASONS)) == len(REJECTION_REASONS) == len(TEXT_REASONS) + len(RECORD_REASONS)
    assert all(reason.isidentifier() and reason.islower() for reason in REJECTION_REASONS)
