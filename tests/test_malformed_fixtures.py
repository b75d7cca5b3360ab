"""Hand-written messy files in tests/data/malformed: exact good and rejected counts for each.

Each fixture holds made-up hosts and GPUs. Every file is read with a 1 KiB ``max_field_size``, so that an
over-long line needs only a few kilobytes of fixture; the real lines here are about 300 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rxstreamer.model import MetricRow, Rejection
from rxstreamer.parsing import AFTER_EOF, BAD_FIELD, NOT_A_SAMPLE, NOT_JSON, REJECTION_REASONS, SentinelMode
from rxstreamer.sources import CsvRows

MALFORMED = Path(__file__).parent / "data" / "malformed"
MAX_FIELD_SIZE = 1024


@dataclass(frozen=True)
class Expected:
    good_lines: list[int]
    rejected: dict[int, str] = field(default_factory=dict)  # line -> reason


REJECTING = {
    "field_count.csv": Expected([2, 5], {3: "field_count", 4: "field_count"}),
    "value_not_numeric.csv": Expected([4], {2: "value_not_numeric", 3: "value_not_numeric", 5: "value_not_numeric"}),
    "value_not_finite.csv": Expected([5], {2: "value_not_finite", 3: "value_not_finite", 4: "value_not_finite"}),
    "bad_timestamp.csv": Expected([5], {2: "bad_timestamp", 3: "bad_timestamp", 4: "bad_timestamp"}),
    "missing_uuid.csv": Expected([4], {2: "missing_uuid", 3: "missing_uuid"}),
    "missing_metric_name.csv": Expected([3], {2: "missing_metric_name"}),
    "bad_labels.csv": Expected([4], {2: "bad_labels", 3: "bad_labels"}),
    "dcgm_sentinel.csv": Expected(
        [6, 7], {2: "dcgm_sentinel", 3: "dcgm_sentinel", 4: "dcgm_sentinel", 5: "dcgm_sentinel"}
    ),
    "repeated_header.csv": Expected([2, 4, 6], {3: "repeated_header", 5: "repeated_header"}),
    "unterminated_quote.csv": Expected([2, 4, 5], {3: "unterminated_quote"}),
    "unterminated_quote_at_eof.csv": Expected([2, 3], {4: "unterminated_quote"}),
    "field_too_large.csv": Expected([2, 4], {3: "field_too_large", 5: "field_too_large"}),
    "nul_byte.csv": Expected([2, 4], {3: "nul_byte"}),
    "not_utf8.csv": Expected([2, 4], {3: "not_utf8"}),
    "csv_error.csv": Expected([2, 4], {3: "csv_error"}),
}
TOLERATED = {
    "bom.csv": [2, 3],
    "crlf.csv": [2, 3, 4],
    "blank_lines.csv": [4, 7],
    "whitespace.csv": [2, 3, 4],
    "extra_columns.csv": [2, 3],
    "reordered_columns.csv": [2, 3],
    "optional_columns_absent.csv": [2, 3],
    "multiline_field.csv": [2, 4],
    "no_final_newline.csv": [2, 3],
}


def read(name: str, sentinels: SentinelMode = "reject") -> tuple[list[MetricRow], list[Rejection], CsvRows]:
    rejections: list[Rejection] = []
    source = CsvRows(MALFORMED / name, on_reject=rejections.append, max_field_size=MAX_FIELD_SIZE, sentinels=sentinels)
    return list(source), rejections, source


def by_reason(rejections: list[Rejection]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rejection in rejections:
        counts[rejection.reason] = counts.get(rejection.reason, 0) + 1
    return counts


def test_every_fixture_is_in_a_table_and_every_reason_has_a_fixture() -> None:
    """No fixture goes unchecked, and each stable rejection reason is exercised by at least one file."""
    assert sorted(path.name for path in MALFORMED.glob("*.csv")) == sorted([*REJECTING, *TOLERATED])
    covered = {reason for expected in REJECTING.values() for reason in expected.rejected.values()}
    other_formats = {NOT_JSON, BAD_FIELD, NOT_A_SAMPLE, AFTER_EOF}  # JSON lines and Prometheus text: their own tests
    assert covered == set(REJECTION_REASONS) - other_formats


@pytest.mark.parametrize("name", sorted(REJECTING))
def test_rejecting_fixture_publishes_exactly_the_good_rows_and_rejects_the_rest(name: str) -> None:
    """The good rows come through by line; the bad ones are rejected with their reason, and the counts add up."""
    expected = REJECTING[name]
    rows, rejections, source = read(name)
    assert [row.line for row in rows] == expected.good_lines
    assert {rejection.line: rejection.reason for rejection in rejections} == expected.rejected
    assert len(rejections) == len(expected.rejected)
    assert source.stats.rejected_by_reason == by_reason(rejections)
    assert source.stats.rows_read == len(rows) + source.stats.rows_rejected
    assert all(rejection.detail and rejection.raw for rejection in rejections)


@pytest.mark.parametrize("name", sorted(TOLERATED))
def test_tolerated_variant_yields_every_row(name: str) -> None:
    """A BOM, CRLF, blank lines, spaces, extra, reordered or absent optional columns cost no row."""
    rows, rejections, source = read(name)
    assert rejections == []
    assert [row.line for row in rows] == TOLERATED[name]
    assert source.stats.rows_read == len(rows)


def test_tolerated_variants_read_the_same_values_as_a_plain_file() -> None:
    """BOM, CRLF and blank lines change nothing in the rows themselves, only where they sit in the file."""
    plain = [row._replace(line=0) for row in read("bom.csv")[0]]
    assert [row._replace(line=0) for row in read("crlf.csv")[0]][:2] == plain
    assert [row._replace(line=0) for row in read("blank_lines.csv")[0]] == plain
    assert [row._replace(line=0) for row in read("no_final_newline.csv")[0]] == plain


def test_whitespace_around_numbers_is_tolerated() -> None:
    """Values padded with spaces or tabs parse to the numbers they hold."""
    assert [row.value for row in read("whitespace.csv")[0]] == [42.0, 7.5, 1000.0]


def test_reordered_and_extra_columns_map_by_name() -> None:
    """Columns are found by name wherever they are; unknown ones are ignored."""
    reordered = read("reordered_columns.csv")[0]
    assert [(row.hostname, row.uuid[-3:], row.metric_name, row.value) for row in reordered] == [
        ("fixture-host-2", "007", "DCGM_FI_DEV_FB_USED", 81003.0),
        ("fixture-host-2", "008", "DCGM_FI_DEV_FB_USED", 4.0),
    ]
    extra = read("extra_columns.csv")[0]
    assert [(row.gpu_id, row.value) for row in extra] == [("0", 42.0), ("1", 42.0)]


def test_multiline_field_keeps_its_line_break() -> None:
    """A quoted label value spanning two lines is one record, numbered by its first line."""
    rows = read("multiline_field.csv")[0]
    assert rows[0].labels["note"] == "line one\nline two"


def test_sentinels_flagged_are_published_with_a_label_naming_the_kind() -> None:
    """In flag mode every row is published and the sentinel rows carry dcgm_sentinel=<kind>."""
    rows, rejections, _ = read("dcgm_sentinel.csv", sentinels="flag")
    assert rejections == []
    assert [row.labels.get("dcgm_sentinel") for row in rows] == [
        "blank",
        "not_supported",
        "not_permissioned",
        "not_found",
        None,
        None,
    ]
    assert rows[2].value == 2147483635.0


def test_sentinel_rejections_name_the_kind() -> None:
    """In reject mode each sentinel's detail names its kind, told apart even where floats would merge them."""
    details = [rejection.detail for rejection in read("dcgm_sentinel.csv")[1]]
    kinds = ["blank", "not_supported", "not_permissioned", "not_found"]
    assert [kind for detail, kind in zip(details, kinds, strict=True) if f" {kind} " in detail] == kinds
