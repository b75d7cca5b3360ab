"""The JSON lines format: each field rule and rejection, labels, sentinels, positions, loop, stats, validate."""

from __future__ import annotations

import json
from collections.abc import Iterable
from itertools import islice
from pathlib import Path
from typing import Any

import pytest

from rxstreamer.encoding import metric_to_dict, to_metric
from rxstreamer.generate import generate_file
from rxstreamer.model import MetricRow, Position, Rejection
from rxstreamer.parsing import RECORD_REASONS, REJECTION_REASONS, TEXT_REASONS, SentinelMode
from rxstreamer.sources import CsvRows, JsonLinesRows, Source, SourceError, format_of, open_source
from rxstreamer.validate import render_json, render_text, validate_file
from tests.processes import run_command

DROP = object()  # a key to leave out of the record
GOOD: dict[str, Any] = {
    "timestamp": "2025-07-18T20:00:00Z",
    "metric_name": "DCGM_FI_DEV_GPU_UTIL",
    "gpu_id": "0",
    "device": "nvidia0",
    "uuid": "GPU-6513270e-269e-0d37-f2a7-4de452e6b438",
    "model_name": "NVIDIA H100 80GB HBM3",
    "hostname": "dgx-a-001",
    "container": "trainer",
    "pod": "job-7",
    "namespace": "ml",
    "value": 42.5,
    "labels": {"gpu": "0", "job": "dcgm-exporter"},
}
# Every reason a JSON lines source can give: the reader's three, not_json, and the record reasons but the
# CSV's own (field_count, repeated_header: JSON lines have no header and no field count).
JSON_LINES_REASONS = {
    *("field_too_large", "nul_byte", "not_utf8", "not_json", "bad_field", "missing_uuid", "missing_metric_name"),
    *("bad_timestamp", "value_not_numeric", "value_not_finite", "dcgm_sentinel", "bad_labels"),
}


def record(**changes: Any) -> str:
    """GOOD with some keys changed (or left out with DROP), as one JSON line without its line break."""
    fields = {**GOOD, **changes}
    return json.dumps({key: value for key, value in fields.items() if value is not DROP})


def write(path: Path, *lines: str, end: str = "\n") -> Path:
    path.write_text("".join(line + end for line in lines), encoding="utf-8")
    return path


def read(
    path: Path, *, sentinels: SentinelMode = "reject", **options: Any
) -> tuple[list[MetricRow], list[Rejection], JsonLinesRows]:
    rejections: list[Rejection] = []
    source = JsonLinesRows(path, on_reject=rejections.append, sentinels=sentinels, **options)
    return list(source), rejections, source


def reasons(rejections: Iterable[Rejection]) -> list[tuple[int, str]]:
    return [(rejection.line, rejection.reason) for rejection in rejections]


def without_lines(rows: Iterable[MetricRow]) -> list[MetricRow]:
    return [row._replace(line=0) for row in rows]


# A good line


def test_a_line_as_tail_prints_it_becomes_the_row_it_describes(tmp_path: Path) -> None:
    """Every field lands where its name says; the value is a float and the labels a read-only mapping."""
    rows, rejections, _ = read(write(tmp_path / "one.jsonl", record()))
    assert rejections == []
    [row] = rows
    assert row.timestamp.isoformat() == "2025-07-18T20:00:00+00:00"
    assert (row.metric_name, row.gpu_id, row.device, row.uuid) == (
        "DCGM_FI_DEV_GPU_UTIL",
        "0",
        "nvidia0",
        "GPU-6513270e-269e-0d37-f2a7-4de452e6b438",
    )
    assert (row.model_name, row.hostname, row.container, row.pod, row.namespace) == (
        "NVIDIA H100 80GB HBM3",
        "dgx-a-001",
        "trainer",
        "job-7",
        "ml",
    )
    assert row.value == 42.5
    assert type(row.value) is float
    assert dict(row.labels) == {"gpu": "0", "job": "dcgm-exporter"}
    assert row.line == 1
    with pytest.raises(TypeError):
        row.labels["gpu"] = "1"  # type: ignore[index]


def test_rows_read_as_json_equal_the_csv_rows_they_were_printed_from(tmp_path: Path) -> None:
    """Generated CSV rows, printed as `tail` prints them, read back as the same rows (line numbers aside)."""
    csv_path = tmp_path / "gen.csv"
    generate_file(csv_path, hosts=2, gpus=4, rows=400, seed=3)
    csv_rows = list(CsvRows(csv_path))
    jsonl = write(tmp_path / "gen.jsonl", *(json.dumps(metric_to_dict(to_metric(row))) for row in csv_rows))
    rows, rejections, source = read(jsonl)
    assert rejections == []
    assert without_lines(rows) == without_lines(csv_rows)
    assert [row.line for row in rows] == list(range(1, 401))
    assert (source.stats.rows_read, source.stats.rows_rejected, source.stats.passes) == (400, 0, 1)


def test_identical_label_sets_share_one_mapping(tmp_path: Path) -> None:
    """Rows with the same labels (object or labels_raw) share one mapping, as CSV rows with one labels_raw do."""
    other = {"gpu": "1", "job": "dcgm-exporter"}
    path = write(
        tmp_path / "shared.jsonl",
        record(),
        record(labels=other),
        record(value=1),
        record(labels=DROP, labels_raw='gpu="1",job="x"'),
        record(labels=DROP, labels_raw='gpu="1",job="x"'),
    )
    rows, _, _ = read(path)
    assert rows[0].labels is rows[2].labels
    assert rows[0].labels is not rows[1].labels
    assert rows[3].labels is rows[4].labels


# Tolerated variants


def test_csv_header_spellings_are_accepted_and_snake_case_wins(tmp_path: Path) -> None:
    """modelName and Hostname stand in for model_name and hostname; when both are given, snake_case counts."""
    path = write(
        tmp_path / "spellings.jsonl",
        record(model_name=DROP, hostname=DROP, modelName="A100", Hostname="node-1"),
        record(model_name="H100", hostname="node-2", modelName="A100", Hostname="node-1"),
        record(model_name=None, hostname=None, modelName="A100", Hostname="node-1"),
    )
    rows, rejections, _ = read(path)
    assert rejections == []
    assert [(row.model_name, row.hostname) for row in rows] == [
        ("A100", "node-1"),
        ("H100", "node-2"),
        ("A100", "node-1"),
    ]


def test_optional_fields_absent_or_null_read_as_empty(tmp_path: Path) -> None:
    """Only timestamp, metric_name, uuid and value are needed; null is the same as leaving a field out."""
    optional = ("gpu_id", "device", "model_name", "hostname", "container", "pod", "namespace", "labels")
    path = write(
        tmp_path / "optional.jsonl",
        record(**dict.fromkeys(optional, DROP)),
        record(**dict.fromkeys(optional, None)),
    )
    rows, rejections, _ = read(path)
    assert rejections == []
    for row in rows:
        assert (row.gpu_id, row.device, row.model_name, row.hostname, row.container, row.pod, row.namespace) == (
            ("",) * 7
        )
        assert dict(row.labels) == {}


def test_unknown_keys_are_ignored(tmp_path: Path) -> None:
    """`tail --with-batch` output (producer_id, sequence, offset) and keys of any type read as the plain line."""
    nested = {"a": [1, {"b": float("nan")}], "c": True}
    extra = {"producer_id": "p-1", "sequence": 7, "offset": 12, "note": None, "nested": nested}
    path = write(tmp_path / "extra.jsonl", record(), record(**extra))
    rows, rejections, _ = read(path)
    assert rejections == []
    assert rows[0]._replace(line=2) == rows[1]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (42, 42.0),
        (-0.5, -0.5),
        (1e16, 1e16),
        (12345678901234567890, 12345678901234567890.0),
        ("42.5", 42.5),
        (" 7 ", 7.0),
        ("1e3", 1000.0),
        (0, 0.0),
    ],
    ids=["int", "negative", "exponent", "big-int", "string", "string-with-spaces", "string-exponent", "zero"],
)
def test_a_value_is_a_json_number_or_a_string_holding_one(tmp_path: Path, value: object, expected: float) -> None:
    """Numbers and numeric strings both read as the float they spell, as the CSV's value column does."""
    rows, rejections, _ = read(write(tmp_path / "value.jsonl", record(value=value)))
    assert rejections == []
    assert [row.value for row in rows] == [expected]


def test_whitespace_crlf_blank_lines_and_byte_order_marks_cost_no_row(tmp_path: Path) -> None:
    """Framing noise is the reader's (or the decoder's) business: the rows and their line numbers survive it."""
    path = tmp_path / "noisy.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + record().encode()
        + b"\r\n\r\n"
        + b"   "
        + record(value=1).encode()
        + b"  \t\r\n"
        + b"\n"
        + b"\xef\xbb\xbf"  # a file concatenated after this one brought its own BOM
        + record(value=2).encode()
        + b"\n"
        + record(value=3).encode()  # no final line break
    )
    rows, rejections, _ = read(path)
    assert rejections == []
    assert [(row.line, row.value) for row in rows] == [(1, 42.5), (3, 1.0), (5, 2.0), (6, 3.0)]


def test_escaped_text_is_unescaped_and_a_surrogate_pair_is_fine(tmp_path: Path) -> None:
    """JSON escapes (as `tail` writes non-ASCII) read as the characters they stand for."""
    path = write(tmp_path / "escapes.jsonl", record(pod="caf\u00e9 \U0001f600", labels={"note": 'a "quoted"\nline'}))
    assert "\\ud83d\\ude00" in path.read_text(encoding="utf-8")
    rows, rejections, _ = read(path)
    assert rejections == []
    assert rows[0].pod == "caf\u00e9 \U0001f600"
    assert rows[0].labels == {"note": 'a "quoted"\nline'}


# Labels


def test_labels_raw_reads_as_the_csv_column_does(tmp_path: Path) -> None:
    """labels_raw is parsed with the CSV's parser: escapes, a trailing comma, an empty string."""
    path = write(
        tmp_path / "raw.jsonl",
        record(labels=DROP, labels_raw='gpu="0",job="dcgm-exporter"'),
        record(labels=DROP, labels_raw='note="say \\"hi\\"\\nbye",'),
        record(labels=DROP, labels_raw=""),
    )
    rows, rejections, _ = read(path)
    assert rejections == []
    assert [dict(row.labels) for row in rows] == [
        {"gpu": "0", "job": "dcgm-exporter"},
        {"note": 'say "hi"\nbye'},
        {},
    ]
    assert rows[0].labels == read(write(tmp_path / "object.jsonl", record()))[0][0].labels


# Rejections: each reason, with its line, between two good lines that it does not disturb

CUT_SHORT = record()[:40]  # inside the second key
CUT_OPEN_QUOTE = CUT_SHORT.rindex('"') + 1  # the column where the unterminated string starts

REJECTED = [
    # not_json
    ("prose", "not json at all", "not_json", "not JSON: Expecting value (column 1)"),
    ("cut-short", CUT_SHORT, "not_json", f"not JSON: Unterminated string starting at (column {CUT_OPEN_QUOTE})"),
    ("two-objects", record() + " {}", "not_json", f"not JSON: Extra data (column {len(record()) + 2})"),
    ("array", "[1, 2]", "not_json", "the line is an array, not a JSON object"),
    ("string", '"GPU-1"', "not_json", "the line is a string, not a JSON object"),
    ("number", "42", "not_json", "the line is a number, not a JSON object"),
    ("null", "null", "not_json", "the line is null, not a JSON object"),
    ("deep", "[" * 5000 + "]" * 5000, "not_json", "not JSON this reader can take: nested too deeply"),
    (
        "huge-exponent",
        record(value=DROP)[:-1] + ', "value": 1e99999999999999999999}',
        "not_json",
        "not JSON this reader can take: a number's exponent is out of range",
    ),
    # bad_field
    ("uuid-number", record(uuid=5), "bad_field", "uuid=5 is a number, not a string"),
    ("gpu-id-number", record(gpu_id=0), "bad_field", "gpu_id=0 is a number, not a string"),
    ("metric-name-array", record(metric_name=["a"]), "bad_field", "metric_name is an array, not a string"),
    ("hostname-boolean", record(hostname=True), "bad_field", "hostname=true is a boolean, not a string"),
    (
        "other-spelling",
        record(hostname=DROP, Hostname={"a": 1}),
        "bad_field",
        "Hostname is an object, not a string",
    ),
    ("namespace-number", record(namespace=1.5), "bad_field", "namespace=1.5 is a number, not a string"),
    # missing_uuid, missing_metric_name
    ("uuid-absent", record(uuid=DROP), "missing_uuid", "uuid is missing"),
    ("uuid-null", record(uuid=None), "missing_uuid", "uuid is null"),
    ("uuid-empty", record(uuid=""), "missing_uuid", "uuid='' is empty"),
    ("uuid-blank", record(uuid="  "), "missing_uuid", "uuid='  ' is empty"),
    ("metric-absent", record(metric_name=DROP), "missing_metric_name", "metric_name is missing"),
    ("metric-empty", record(metric_name=""), "missing_metric_name", "metric_name='' is empty"),
    # bad_timestamp
    ("timestamp-absent", record(timestamp=DROP), "bad_timestamp", "timestamp is missing"),
    (
        "no-offset",
        record(timestamp="2025-07-18 20:00:00"),
        "bad_timestamp",
        "timestamp='2025-07-18 20:00:00' is not RFC 3339",
    ),
    (
        "month-13",
        record(timestamp="2025-13-18T20:00:00Z"),
        "bad_timestamp",
        "timestamp='2025-13-18T20:00:00Z' is not RFC 3339",
    ),
    (
        "epoch-seconds",
        record(timestamp=1752868800),
        "bad_timestamp",
        "timestamp=1752868800 is a number, not an RFC 3339 string",
    ),
    # value_not_numeric
    ("value-absent", record(value=DROP), "value_not_numeric", "value is missing"),
    ("value-null", record(value=None), "value_not_numeric", "value is missing"),
    ("value-text", record(value="n/a"), "value_not_numeric", "value='n/a' is not a number"),
    ("value-true", record(value=True), "value_not_numeric", "value=true is a boolean, not a number"),
    ("value-false", record(value=False), "value_not_numeric", "value=false is a boolean, not a number"),
    ("value-array", record(value=[1]), "value_not_numeric", "value is an array, not a number"),
    ("value-underscore", record(value="1_000"), "value_not_numeric", "value='1_000' is not a number"),
    # value_not_finite: Python's json reads these literals; the CSV's rules reject them
    ("nan-literal", record(value=float("nan")), "value_not_finite", "value='NaN' is not finite"),
    ("infinity-literal", record(value=float("inf")), "value_not_finite", "value='Infinity' is not finite"),
    ("minus-infinity", record(value=float("-inf")), "value_not_finite", "value='-Infinity' is not finite"),
    ("nan-string", record(value="nan"), "value_not_finite", "value='nan' is not finite"),
    (
        "overflow",
        record(value=DROP)[:-1] + ', "value": 1e400}',
        "value_not_finite",
        "value='1E+400' is not finite",
    ),
    # dcgm_sentinel, spelled in every way JSON can spell a number
    (
        "int64-int",
        record(value=9223372036854775794),
        "dcgm_sentinel",
        "value='9223372036854775794' is DCGM's not_supported sentinel (DCGM_INT64_NOT_SUPPORTED), not a reading",
    ),
    (
        "int64-exponent",
        record(value=DROP)[:-1] + ', "value": 9.223372036854775794e18}',
        "dcgm_sentinel",
        "value='9223372036854775794' is DCGM's not_supported sentinel (DCGM_INT64_NOT_SUPPORTED), not a reading",
    ),
    (
        "int32-float",
        record(value=2147483632.0),
        "dcgm_sentinel",
        "value='2147483632.0' is DCGM's blank sentinel (DCGM_INT32_BLANK), not a reading",
    ),
    (
        "fp64-string",
        record(value="140737488355330"),
        "dcgm_sentinel",
        "value='140737488355330' is DCGM's not_supported sentinel (DCGM_FP64_NOT_SUPPORTED), not a reading",
    ),
    # bad_labels
    ("labels-string", record(labels="gpu=0"), "bad_labels", "labels='gpu=0' is a string, not an object"),
    ("labels-array", record(labels=[]), "bad_labels", "labels is an array, not an object"),
    ("label-number", record(labels={"gpu": 0}), "bad_labels", "labels['gpu']=0 is a number, not a string"),
    ("label-null", record(labels={"gpu": None}), "bad_labels", "labels['gpu'] is null, not a string"),
    (
        "label-nested",
        record(labels={"gpu": {"id": "0"}}),
        "bad_labels",
        "labels['gpu'] is an object, not a string",
    ),
    (
        "label-name",
        record(labels={"gpu-id": "0"}),
        "bad_labels",
        "labels has the key 'gpu-id', which is not a Prometheus label name",
    ),
    (
        "both",
        record(labels_raw='gpu="0"'),
        "bad_labels",
        "labels and labels_raw are both given; give one",
    ),
    (
        "raw-not-a-list",
        record(labels=DROP, labels_raw="gpu=0"),
        "bad_labels",
        "labels_raw='gpu=0' is not a KEY=\"value\",... list",
    ),
    (
        "raw-repeated",
        record(labels=DROP, labels_raw='gpu="0",gpu="1"'),
        "bad_labels",
        "labels_raw repeats the label 'gpu'",
    ),
    ("raw-number", record(labels=DROP, labels_raw=5), "bad_labels", "labels_raw=5 is a number, not a string"),
    # not_utf8: an unpaired \u escape decodes to text that cannot be sent
    (
        "lone-surrogate",
        record(uuid="GPU-\ud800"),
        "not_utf8",
        "uuid holds a lone surrogate (an unpaired \\u escape), which is not UTF-8 text",
    ),
    (
        "lone-surrogate-label",
        record(labels={"gpu": "\udfff"}),
        "not_utf8",
        "labels['gpu'] holds a lone surrogate (an unpaired \\u escape), which is not UTF-8 text",
    ),
]


@pytest.mark.parametrize(("text", "reason", "detail"), [case[1:] for case in REJECTED], ids=[c[0] for c in REJECTED])
def test_a_bad_line_is_rejected_with_its_line_reason_and_detail_and_costs_only_itself(
    tmp_path: Path, text: str, reason: str, detail: str
) -> None:
    """The bad line 2 is rejected with its reason, detail and text; lines 1 and 3 come through untouched."""
    neighbours = [record(), record(uuid="GPU-2", value=3)]
    rows, rejections, source = read(write(tmp_path / "bad.jsonl", neighbours[0], text, neighbours[1]))
    assert [(r.line, r.reason, r.detail) for r in rejections] == [(2, reason, detail)]
    assert rejections[0].raw == text[:4096]
    assert [row.line for row in rows] == [1, 3]
    alone, _, _ = read(write(tmp_path / "good.jsonl", *neighbours))
    assert without_lines(rows) == without_lines(alone)
    assert (source.stats.rows_read, source.stats.rows_rejected, source.stats.rejected_by_reason) == (3, 1, {reason: 1})


def test_the_first_problem_is_reported_in_the_order_of_record_reasons(tmp_path: Path) -> None:
    """bad_field before missing_uuid before missing_metric_name before bad_timestamp before the value, then labels."""
    path = write(
        tmp_path / "order.jsonl",
        record(uuid=DROP, gpu_id=0),
        record(uuid=DROP, metric_name=DROP),
        record(metric_name="", timestamp="yesterday"),
        record(timestamp="yesterday", value="n/a"),
        record(value="n/a", labels="x"),
        record(value=9223372036854775794, labels="x"),
        record(labels="x", uuid="GPU-\ud800"),
    )
    _, rejections, _ = read(path)
    assert reasons(rejections) == [
        (1, "bad_field"),
        (2, "missing_uuid"),
        (3, "missing_metric_name"),
        (4, "bad_timestamp"),
        (5, "value_not_numeric"),
        (6, "dcgm_sentinel"),
        (7, "bad_labels"),
    ]
    order = [RECORD_REASONS.index(reason) for _, reason in reasons(rejections)]
    assert order == sorted(order)


def test_the_new_reasons_are_stable_codes_in_the_reason_tuples() -> None:
    """not_json is found in a line's text, bad_field in a record; both are counted like every other reason."""
    assert "not_json" in TEXT_REASONS
    assert "bad_field" in RECORD_REASONS
    assert RECORD_REASONS.index("bad_field") < RECORD_REASONS.index("missing_uuid")


def test_every_reason_json_lines_can_give_is_exercised_here() -> None:
    """The table above and the reader test below cover every reason a line can get; each is a registered code."""
    covered = {case[2] for case in REJECTED} | {"field_too_large", "nul_byte", "not_utf8"}
    assert covered == JSON_LINES_REASONS
    assert JSON_LINES_REASONS.issubset(REJECTION_REASONS)


def test_the_reader_rejects_long_lines_nul_bytes_and_bad_utf8_by_line(tmp_path: Path) -> None:
    """Over-long lines, NUL bytes and bytes that are not UTF-8 are the reader's rejections, each costing its line."""
    path = tmp_path / "framing.jsonl"
    path.write_bytes(
        b"\n".join(
            [
                record().encode(),
                record(pod="x" * 5000).encode(),
                record(value=2).encode(),
                record(pod="a\0b").encode().replace(b"\\u0000", b"\0"),
                b'{"pod": "\xff"}',
                record(value=3).encode(),
            ]
        )
        + b"\n"
    )
    rows, rejections, source = read(path, max_field_size=1024)
    assert reasons(rejections) == [(2, "field_too_large"), (4, "nul_byte"), (5, "not_utf8")]
    assert [(row.line, row.value) for row in rows] == [(1, 42.5), (3, 2.0), (6, 3.0)]
    assert source.stats.rows_read == len(rows) + source.stats.rows_rejected == 6


def test_rejections_carry_the_line_without_its_break_cut_short(tmp_path: Path) -> None:
    """A rejection's raw text is the line as read (no CRLF), at most 4096 characters, for the quarantine file."""
    long_bad = record(uuid=DROP, pod="p" * 10_000)
    path = write(tmp_path / "raw.jsonl", "oops", long_bad, end="\r\n")
    _, rejections, _ = read(path)
    assert [r.raw for r in rejections] == ["oops", long_bad[:4096]]


# Sentinels


def test_sentinels_are_flagged_instead_of_rejected_when_asked(tmp_path: Path) -> None:
    """sentinels="flag" keeps the row with the value as written and dcgm_sentinel=<kind> among its labels."""
    path = write(
        tmp_path / "sentinels.jsonl",
        record(value=9223372036854775794),
        record(value="2147483632", labels=DROP, labels_raw='gpu="0"'),
        record(value=42),
    )
    rows, rejections, _ = read(path, sentinels="flag")
    assert rejections == []
    assert [dict(row.labels) for row in rows] == [
        {"gpu": "0", "job": "dcgm-exporter", "dcgm_sentinel": "not_supported"},
        {"gpu": "0", "dcgm_sentinel": "blank"},
        {"gpu": "0", "job": "dcgm-exporter"},
    ]
    assert [row.value for row in rows] == [9223372036854775794.0, 2147483632.0, 42.0]
    assert all(type(row.value) is float for row in rows)
    rejected, rejections, _ = read(path, sentinels="reject")
    assert [row.line for row in rejected] == [3]
    assert reasons(rejections) == [(1, "dcgm_sentinel"), (2, "dcgm_sentinel")]


# Positions, resume, loop, stats


def mixed_file(path: Path) -> Path:
    """Good rows, bad lines and blank lines mixed, so positions have to skip all of them."""
    return write(
        path,
        record(value=1),
        "",
        record(value=2),
        "garbage",
        record(value=3),
        record(value=4, uuid=""),
        "",
        record(value=5),
        record(value=6),
    )


@pytest.mark.parametrize("after", [1, 2, 3, 4, 5])
def test_a_source_started_at_a_position_continues_with_the_next_row_and_the_same_lines(
    tmp_path: Path, after: int
) -> None:
    """A position taken after the n-th row resumes with row n + 1, same line numbers, same later rejections."""
    path = mixed_file(tmp_path / "mixed.jsonl")
    whole, whole_rejections, _ = read(path)
    assert [row.line for row in whole] == [1, 3, 5, 8, 9]
    assert reasons(whole_rejections) == [(4, "not_json"), (6, "missing_uuid")]
    first = JsonLinesRows(path, on_reject=lambda rejection: None)
    rows = first.__iter__()
    taken = list(islice(rows, after))
    position = first.position
    rows.close()
    assert position.line == taken[-1].line
    resumed, resumed_rejections, source = read(path, start=position)
    source.check()
    assert taken + resumed == whole
    assert reasons(resumed_rejections) == [r for r in reasons(whole_rejections) if r[0] > position.line]


def test_a_start_position_inside_a_line_is_refused_at_check(tmp_path: Path) -> None:
    """A position that does not follow a line break cannot be where a record begins: SourceError at start-up."""
    path = mixed_file(tmp_path / "mixed.jsonl")
    source = JsonLinesRows(path, start=Position(offset=5, line=1))
    with pytest.raises(SourceError, match="does not follow a line break"):
        source.check()


def test_loop_replays_from_the_top_with_line_numbers_and_passes(tmp_path: Path) -> None:
    """With loop=True the file comes round again; stats count every pass, rejections included."""
    path = mixed_file(tmp_path / "mixed.jsonl")
    rejections: list[Rejection] = []
    source = JsonLinesRows(path, loop=True, on_reject=rejections.append)
    rows = list(islice(source, 12))
    assert [row.line for row in rows] == [1, 3, 5, 8, 9] * 2 + [1, 3]
    assert [row.value for row in rows[:5]] == [1.0, 2.0, 3.0, 5.0, 6.0]
    assert source.stats.passes == 3
    assert source.position.pass_number == 2
    assert source.stats.rows_read == 12 + source.stats.rows_rejected
    assert reasons(rejections) == [(4, "not_json"), (6, "missing_uuid")] * 2


def test_loop_stops_when_a_pass_yields_no_row(tmp_path: Path) -> None:
    """A file of bad lines only would spin forever in loop mode: one pass, then the stream ends."""
    path = write(tmp_path / "bad.jsonl", "nope", record(uuid=""))
    rows, rejections, source = read(path, loop=True)
    assert rows == []
    assert (source.stats.passes, source.stats.rows_read, source.stats.rows_rejected) == (1, 2, 2)
    assert len(rejections) == 2


def test_stats_add_up_over_iterations(tmp_path: Path) -> None:
    """rows_read is always rows yielded plus rows rejected, and rejected_by_reason sums to rows_rejected."""
    path = mixed_file(tmp_path / "mixed.jsonl")
    source = JsonLinesRows(path)
    yielded = len(list(source)) + len(list(source))
    stats = source.stats
    assert (yielded, stats.rows_rejected, stats.passes) == (10, 4, 2)
    assert stats.rows_read == yielded + stats.rows_rejected
    assert stats.rejected_by_reason == {"not_json": 2, "missing_uuid": 2}


# The file as a whole


def test_check_fails_fast_on_a_file_that_cannot_be_read(tmp_path: Path) -> None:
    """A missing file or a directory is a SourceError from check(), with the path, before any row."""
    with pytest.raises(SourceError, match=r"nope\.jsonl: no such file$"):
        JsonLinesRows(tmp_path / "nope.jsonl").check()
    directory = tmp_path / "dir.jsonl"
    directory.mkdir()
    with pytest.raises(SourceError, match="is a directory"):
        JsonLinesRows(directory).check()


def test_an_empty_file_is_fine_there_is_no_header(tmp_path: Path) -> None:
    """No header is needed: an empty file checks and reads as no rows; the first line is already data."""
    empty = write(tmp_path / "empty.jsonl")
    JsonLinesRows(empty).check()
    assert read(empty)[0] == []
    assert [row.line for row in read(write(tmp_path / "one.jsonl", record()))[0]] == [1]


def test_invalid_limits_and_modes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_field_size"):
        JsonLinesRows(tmp_path / "x.jsonl", max_field_size=0)
    with pytest.raises(ValueError, match="sentinels"):
        JsonLinesRows(tmp_path / "x.jsonl", sentinels="drop")  # type: ignore[arg-type]


# The registry and validate


@pytest.mark.parametrize("name", ["metrics.jsonl", "METRICS.NDJSON", "tail.Jsonl"])
def test_auto_picks_json_lines_by_the_extension(tmp_path: Path, name: str) -> None:
    """.jsonl and .ndjson, in any case, open as JsonLinesRows, a Source."""
    path = write(tmp_path / name, record(), "bad")
    assert format_of(path) == "jsonl"
    source = open_source(path, on_reject=lambda rejection: None)
    assert isinstance(source, JsonLinesRows)
    assert isinstance(source, Source)
    assert [row.line for row in source] == [1]
    assert source.stats.rows_rejected == 1


def test_an_explicit_format_reads_any_file_name_as_json_lines(tmp_path: Path) -> None:
    """format="jsonl" reads a file whatever it is called, with the options handed on."""
    path = write(tmp_path / "export.log", record(value=9223372036854775794), record(pod="x" * 200))
    rejections: list[Rejection] = []
    source = open_source(path, "jsonl", on_reject=rejections.append, max_field_size=100, sentinels="flag")
    assert isinstance(source, JsonLinesRows)
    assert list(source) == []
    assert reasons(rejections) == [(1, "field_too_large"), (2, "field_too_large")]
    flagged = list(open_source(path, "jsonl", sentinels="flag"))
    assert [row.labels["dcgm_sentinel"] for row in flagged[:1]] == ["not_supported"]


def bad_jsonl(path: Path) -> Path:
    return write(
        path,
        record(),
        "{",
        record(uuid=DROP),
        record(uuid="GPU-2", hostname="dgx-b"),
        record(gpu_id=1),
        "[]",
        record(value=float("nan")),
    )


def test_validate_summarises_a_json_lines_file(tmp_path: Path) -> None:
    """validate_file reads .jsonl through the registry: counts, reasons with examples, fleet, exit code 1."""
    report = validate_file(bad_jsonl(tmp_path / "bad.jsonl"))
    assert (report.rows, report.good, report.rejected, report.exit_code) == (7, 2, 5, 1)
    assert report.rejected_by_reason == {"not_json": 2, "bad_field": 1, "missing_uuid": 1, "value_not_finite": 1}
    assert [(e.line, e.detail) for e in report.examples["not_json"]] == [
        (2, "not JSON: Expecting property name enclosed in double quotes (column 2)"),
        (6, "the line is an array, not a JSON object"),
    ]
    assert (report.gpus, report.hosts, report.metrics) == (2, 2, ["DCGM_FI_DEV_GPU_UTIL"])
    assert "not_json: 2" in render_text(report)
    assert json.loads(render_json(report))["rejected_by_reason"] == report.rejected_by_reason


def test_validate_command_reports_a_json_lines_file_as_json(tmp_path: Path) -> None:
    """`rxstreamer validate --json FILE.jsonl` exits 1 for a file with rejections and says why, by reason."""
    finished = run_command("validate", "--json", str(bad_jsonl(tmp_path / "bad.jsonl")))
    assert finished.returncode == 1, finished.stderr
    report = json.loads(finished.stdout)
    assert (report["rows"], report["good"], report["rejected"]) == (7, 2, 5)
    assert report["rejected_by_reason"]["not_json"] == 2
    assert [example["line"] for example in report["examples"]["bad_field"]] == [5]
