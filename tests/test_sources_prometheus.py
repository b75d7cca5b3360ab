"""The Prometheus text format: the pure line parser, the file source on the shared line reader, the real scrape."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone
from itertools import islice
from pathlib import Path

import pytest

from rxstreamer.model import MetricRow, Position, Rejection
from rxstreamer.parsing import REJECTION_REASONS, SENTINEL_LABEL
from rxstreamer.sources import FORMATS, Source, SourceError, format_of, open_source
from rxstreamer.sources.prometheus_text import ExpositionParser, PrometheusRows, parse_exposition

T0 = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)
UUID0 = "GPU-1f027ee8-6e1e-2b8c-0108-3d370e5f0418"
UUID1 = "GPU-9e5b8fec-61bf-5124-a0a9-079af1b65cc6"
GPU0 = f'gpu="0",UUID="{UUID0}",device="nvidia0",modelName="NVIDIA A800-SXM4-80GB",Hostname="node-a"'
GPU1 = f'gpu="1",UUID="{UUID1}",device="nvidia1",modelName="NVIDIA A800-SXM4-80GB",Hostname="node-a"'
K8S = 'container="",namespace="",pod=""'
DRIVER = 'DCGM_FI_DRIVER_VERSION="535.129.03"'


def sample(labels: str = GPU0, value: str = "33", name: str = "DCGM_FI_DEV_GPU_TEMP", timestamp: str = "") -> str:
    return f"{name}{{{labels}}} {value}" + (f" {timestamp}" if timestamp else "")


def parse(text: str, number: int = 7, *, reject_sentinels: bool = True) -> MetricRow | Rejection | None:
    return ExpositionParser(T0, reject_sentinels).line(text, number)


def row_of(result: MetricRow | Rejection | None) -> MetricRow:
    assert isinstance(result, MetricRow), result
    return result


def rejection_of(result: MetricRow | Rejection | None) -> Rejection:
    assert isinstance(result, Rejection), result
    return result


def outcomes(lines: Iterable[str], first_line: int = 1) -> list[tuple[int, str]]:
    """Each result of parse_exposition as (line, "row" or the rejection's reason)."""
    return [
        (result.line, "row" if isinstance(result, MetricRow) else result.reason)
        for result in parse_exposition(lines, default_time=T0, first_line=first_line)
    ]


# --- mapping ------------------------------------------------------------------------------------------


def test_a_dcgm_exporter_line_fills_the_row_fields_and_keeps_the_other_labels() -> None:
    """Labels naming row fields become the fields (and leave labels); the rest stay labels, values as written."""
    text = sample(f'{GPU0},GPU_I_PROFILE="2g.20gb",GPU_I_ID="3",{DRIVER},{K8S}', "78.174000", "DCGM_FI_DEV_POWER_USAGE")
    row = row_of(parse(text, 12))
    assert row == MetricRow(
        T0, "DCGM_FI_DEV_POWER_USAGE", "0", "nvidia0", UUID0, "NVIDIA A800-SXM4-80GB", "node-a", "", "", "",
        78.174, row.labels, 12,
    )  # fmt: skip
    assert dict(row.labels) == {"GPU_I_PROFILE": "2g.20gb", "GPU_I_ID": "3", "DCGM_FI_DRIVER_VERSION": "535.129.03"}
    with pytest.raises(TypeError):
        row.labels["x"] = "y"  # type: ignore[index]


def test_the_kubernetes_labels_fill_their_fields() -> None:
    row = row_of(parse(sample(f'{GPU0},container="trainer",namespace="ml",pod="job-7"')))
    assert (row.container, row.pod, row.namespace) == ("trainer", "job-7", "ml")
    assert dict(row.labels) == {}


@pytest.mark.parametrize(
    ("labels", "field", "expected"),
    [
        (f'gpu="0",UUID="{UUID0}",Hostname="old-host"', "hostname", "old-host"),
        (f'gpu="0",UUID="{UUID0}",hostname="new-host"', "hostname", "new-host"),
        (f'gpu="0",uuid="{UUID0}"', "uuid", UUID0),
        (f'gpu="0",UUID="{UUID0}"', "uuid", UUID0),
        (f'UUID="{UUID0}",modelName="A800"', "model_name", "A800"),
        (f'UUID="{UUID0}",model_name="A800"', "model_name", "A800"),
    ],
    ids=["Hostname", "hostname", "uuid", "UUID", "modelName", "model_name"],
)
def test_both_spellings_of_hostname_uuid_and_model_fill_the_field(labels: str, field: str, expected: str) -> None:
    """dcgm-exporter renamed Hostname to hostname; --use-old-namespace writes uuid; NVLink groups model_name."""
    row = row_of(parse(sample(labels)))
    assert getattr(row, field) == expected
    assert not {"Hostname", "hostname", "UUID", "uuid", "modelName", "model_name"} & set(row.labels)


def test_when_both_spellings_are_present_the_first_fills_the_field_and_the_other_stays_a_label() -> None:
    row = row_of(parse(sample(f'UUID="{UUID0}",Hostname="old",hostname="new"')))
    assert row.hostname == "old"
    assert dict(row.labels) == {"hostname": "new"}


def test_a_counter_without_total_keeps_its_name() -> None:
    """No prometheus_client-style renaming to _total: the name is the one the CSV export uses."""
    lines = [
        "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter",
        sample(GPU0, "213124", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"),
    ]
    (row,) = parse_exposition(lines, default_time=T0)
    assert row_of(row).metric_name == "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"


def test_mig_instances_of_one_gpu_stay_distinct() -> None:
    """MIG instances share gpu and UUID; GPU_I_PROFILE and GPU_I_ID in labels are what tell them apart."""
    lines = [sample(f'{GPU0},GPU_I_PROFILE="2g.20gb",GPU_I_ID="{instance}"', "1410") for instance in (3, 5, 6)]
    rows = [row_of(result) for result in parse_exposition(lines, default_time=T0)]
    assert {row.uuid for row in rows} == {UUID0}
    assert [row.labels["GPU_I_ID"] for row in rows] == ["3", "5", "6"]
    assert len({tuple(sorted(row.labels.items())) for row in rows}) == 3


def test_rows_with_the_same_label_set_share_one_labels_mapping() -> None:
    """The label set is parsed once per distinct text: what keeps the per-sample cost low."""
    parser = ExpositionParser(T0)
    first = row_of(parser.line(sample(f"{GPU0},{DRIVER}", "1", "A"), 1))
    second = row_of(parser.line(sample(f"{GPU0},{DRIVER}", "2", "B"), 2))
    assert first.labels is second.labels


# --- syntax -------------------------------------------------------------------------------------------


def test_label_value_escapes_are_decoded_and_other_backslashes_kept() -> None:
    r"""\" \\ \n are the format's escapes; any other backslash (\t, \d) is kept as written, as Prometheus does."""
    row = row_of(parse(sample(f'UUID="{UUID0}",path="C:\\\\dir\\"x\\"\\nnext\\t\\d"')))
    assert row.labels["path"] == 'C:\\dir"x"\nnext\\t\\d'


def test_an_escaped_uuid_is_decoded_too() -> None:
    row = row_of(parse(sample('UUID="GPU-\\"quoted\\""')))
    assert row.uuid == 'GPU-"quoted"'


def test_braces_and_commas_inside_label_values_are_text() -> None:
    row = row_of(parse(sample(f'UUID="{UUID0}",note="a}},b{{c=\\"d\\", e"')))
    assert row.labels["note"] == 'a},b{c="d", e'


def test_spaces_after_commas_and_a_trailing_comma_read_as_the_plain_label_set() -> None:
    """Some exporter versions print a space after each comma; a trailing comma is valid Prometheus text."""
    plain = row_of(parse(sample(f"{GPU0},{DRIVER}")))
    spaced = row_of(parse(sample(f"{GPU0},{DRIVER}".replace(",", ", ") + ",")))
    assert spaced == plain


def test_blanks_around_tokens_and_a_trailing_carriage_return_are_allowed() -> None:
    plain = row_of(parse(sample()))
    assert row_of(parse("  \t" + sample().replace("} ", "}\t  ") + " \r")) == plain


def test_an_empty_label_set_or_no_labels_at_all_has_no_uuid() -> None:
    assert rejection_of(parse("up{} 1")).reason == "missing_uuid"
    assert rejection_of(parse("up 1")).reason == "missing_uuid"
    assert rejection_of(parse("up 1 1700000000000")).reason == "missing_uuid"


def test_a_timestamp_is_integer_milliseconds_since_the_epoch_in_utc() -> None:
    row = row_of(parse(sample(timestamp="1700000000123")))
    assert row.timestamp == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    before_epoch = row_of(parse(sample(timestamp="-1500")))
    assert before_epoch.timestamp == datetime(1969, 12, 31, 23, 59, 58, 500000, tzinfo=UTC)
    assert row_of(parse(sample())).timestamp == T0


@pytest.mark.parametrize(
    "timestamp", ["1520879607.789", "1e12", "1_700_000_000_000", "soon", "99999999999999999", "\uff11\uff17"]
)
def test_a_timestamp_that_is_not_integer_milliseconds_in_range_is_bad_timestamp(timestamp: str) -> None:
    """OpenMetrics' float seconds are not guessed at; out-of-range and non-ASCII digits are refused too."""
    rejected = rejection_of(parse(sample(timestamp=timestamp), 41))
    assert (rejected.line, rejected.reason) == (41, "bad_timestamp")
    assert repr(timestamp) in rejected.detail


def test_default_time_must_be_aware_and_is_kept_in_utc() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        ExpositionParser(datetime(2026, 1, 1))  # a naive time: the point of the test
    eastern = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=8)))
    row = row_of(ExpositionParser(eastern).line(sample(), 1))
    assert row.timestamp == datetime(2026, 1, 1, 4, tzinfo=UTC)
    assert row.timestamp.utcoffset() == timedelta(0)


def test_help_type_and_other_comments_yield_nothing_and_types_are_remembered() -> None:
    parser = ExpositionParser(T0)
    comments = [
        "# HELP DCGM_FI_DEV_SM_CLOCK SM clock {frequency} (in MHz) 1 2 3.",
        "# TYPE DCGM_FI_DEV_SM_CLOCK gauge",
        "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter",
        "# TYPE broken",
        "#just a note",
        "   # indented comment",
        "",
        "   ",
    ]
    assert [parser.line(text, number) for number, text in enumerate(comments, 1)] == [None] * len(comments)
    assert dict(parser.types) == {"DCGM_FI_DEV_SM_CLOCK": "gauge", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": "counter"}


def test_line_numbers_count_every_line_from_first_line() -> None:
    lines = ["# HELP A a", "# TYPE A gauge", "", sample(name="A"), "# comment", sample(name="B")]
    assert outcomes(lines, first_line=100) == [(103, "row"), (105, "row")]


def test_lines_after_the_openmetrics_eof_are_rejected_and_say_where_it_was() -> None:
    lines = [sample(), "# EOF", "", sample(), "# HELP A late comment", sample(value="N/A")]
    results = list(parse_exposition(lines, default_time=T0))
    assert [(r.line, "row" if isinstance(r, MetricRow) else r.reason) for r in results] == [
        (1, "row"), (4, "after_eof"), (5, "after_eof"), (6, "after_eof"),
    ]  # fmt: skip
    assert all("line 2" in rejection_of(result).detail for result in results[1:])


# --- rejections ---------------------------------------------------------------------------------------

REJECTED = [
    # (line, expected reason, what the detail must mention)
    ("1abc" + "{" + f'UUID="{UUID0}"' + "} 1", "not_a_sample", "invalid metric name"),
    ("DCGM-FI{" + f'UUID="{UUID0}"' + "} 1", "not_a_sample", "invalid metric name"),
    ("{" + f'UUID="{UUID0}"' + "} 1", "not_a_sample", "no metric name"),
    (sample(value=""), "not_a_sample", "no value"),
    ("DCGM_FI_DEV_GPU_TEMP", "not_a_sample", "no value"),
    ("DCGM_FI_DEV_GPU_TEMP{" + f'UUID="{UUID0}" 33', "not_a_sample", "no '}' closes it"),
    (sample(value="33 1700000000000 extra"), "not_a_sample", "at most a timestamp"),
    (sample(f'{GPU0},gpu="1"'), "bad_labels", "repeats the label 'gpu'"),
    (sample(f'{GPU0},1st="x"'), "bad_labels", "invalid label name '1st'"),
    (sample(f'{GPU0},pci-bus="x"'), "bad_labels", "invalid label name 'pci-bus'"),
    (sample(f'{GPU0},__name__="x"'), "bad_labels", "reserved"),
    (sample(f"{GPU0},device=nvidia0"), "bad_labels", "not in double quotes"),
    (sample(f"{GPU0},flag"), "bad_labels", "has no '='"),
    (sample(f"{GPU0} {DRIVER}"), "bad_labels", "not followed by ','"),
    (sample(f"{GPU0},,{DRIVER}"), "bad_labels", 'expected name="value"'),
    (sample('gpu="0",device="nvidia0"'), "missing_uuid", "no UUID"),
    (sample('gpu="0",UUID=""'), "missing_uuid", "no UUID"),
    (sample(timestamp="12.5"), "bad_timestamp", "'12.5'"),
    (sample(value="N/A"), "value_not_numeric", "'N/A'"),
    (sample(value="ERROR - FAILED TO CONVERT TO STRING"), "value_not_numeric", "'ERROR - FAILED TO CONVERT TO STRING'"),
    (sample(value="\u0661\u0662"), "value_not_numeric", "'\u0661\u0662'"),
    (sample(value="1_000"), "value_not_numeric", "'1_000'"),
    (sample(value="0x1p3"), "value_not_numeric", "'0x1p3'"),
    (sample(value="NaN"), "value_not_finite", "'NaN'"),
    (sample(value="+Inf"), "value_not_finite", "'+Inf'"),
    (sample(value="-Inf"), "value_not_finite", "'-Inf'"),
    (sample(value="9223372036854775794"), "dcgm_sentinel", "not_supported"),
    (sample(value="140737488355328"), "dcgm_sentinel", "blank"),
]


@pytest.mark.parametrize(
    ("text", "reason", "mentions"), REJECTED, ids=[f"{r}-{i}" for i, (_, r, _) in enumerate(REJECTED)]
)
def test_each_bad_line_is_rejected_with_its_reason_line_and_text(text: str, reason: str, mentions: str) -> None:
    rejected = rejection_of(parse(text, 57))
    assert (rejected.line, rejected.reason) == (57, reason)
    assert mentions in rejected.detail
    assert rejected.raw == text


def test_every_exposition_rejection_reason_is_a_listed_stable_code() -> None:
    assert {reason for _, reason, _ in REJECTED} | {"after_eof"} <= set(REJECTION_REASONS)
    assert {"not_a_sample", "after_eof"} <= set(REJECTION_REASONS)


def test_bad_lines_never_take_their_neighbours_with_them() -> None:
    """Every bad line between two good ones costs its own line only, whatever is wrong with it."""
    lines = [sample(GPU1, "1")]
    for text, _, _ in REJECTED:
        lines += [text, sample(GPU1, "2")]
    expected = [(1, "row")]
    for index, (_, reason, _) in enumerate(REJECTED):
        expected += [(2 * index + 2, reason), (2 * index + 3, "row")]
    assert outcomes(lines) == expected


def test_sentinels_are_kept_and_flagged_when_asked() -> None:
    row = row_of(parse(sample(f"{GPU0},{DRIVER}", "9223372036854775794"), reject_sentinels=False))
    assert row.value == 9223372036854775794.0
    assert type(row.value) is float
    assert dict(row.labels) == {"DCGM_FI_DRIVER_VERSION": "535.129.03", SENTINEL_LABEL: "not_supported"}
    plain = row_of(parse(sample(f"{GPU0},{DRIVER}", "12"), reject_sentinels=False))
    assert SENTINEL_LABEL not in plain.labels


# --- histograms and summaries -------------------------------------------------------------------------


def test_histogram_and_summary_samples_are_rows_under_their_sample_names() -> None:
    """Each sample of a family is a row named as written, le / quantile kept in labels; uuid still required."""
    lines = [
        "# TYPE gpu_kernel_seconds histogram",
        f'gpu_kernel_seconds_bucket{{UUID="{UUID0}",le="0.5"}} 3',
        f'gpu_kernel_seconds_bucket{{UUID="{UUID0}",le="+Inf"}} 4',
        f'gpu_kernel_seconds_sum{{UUID="{UUID0}"}} 1.25',
        f'gpu_kernel_seconds_count{{UUID="{UUID0}"}} 4',
        "# TYPE gpu_copy_seconds summary",
        f'gpu_copy_seconds{{UUID="{UUID0}",quantile="0.5"}} 0.01',
        f'gpu_copy_seconds{{UUID="{UUID0}",quantile="0.99"}} NaN',
        'gpu_copy_seconds_count{quantile="0.5"} 7',
    ]
    parser = ExpositionParser(T0)
    results = [parser.line(text, number) for number, text in enumerate(lines, 1)]
    rows = [result for result in results if isinstance(result, MetricRow)]
    assert [(row.metric_name, dict(row.labels), row.value) for row in rows] == [
        ("gpu_kernel_seconds_bucket", {"le": "0.5"}, 3.0),
        ("gpu_kernel_seconds_bucket", {"le": "+Inf"}, 4.0),
        ("gpu_kernel_seconds_sum", {}, 1.25),
        ("gpu_kernel_seconds_count", {}, 4.0),
        ("gpu_copy_seconds", {"quantile": "0.5"}, 0.01),
    ]
    rejected = [(result.line, result.reason) for result in results if isinstance(result, Rejection)]
    assert rejected == [(8, "value_not_finite"), (9, "missing_uuid")]
    assert dict(parser.types) == {"gpu_kernel_seconds": "histogram", "gpu_copy_seconds": "summary"}


# --- the file source ----------------------------------------------------------------------------------

SCRAPE = [
    "# HELP DCGM_FI_DEV_SM_CLOCK SM clock frequency (in MHz).",
    "# TYPE DCGM_FI_DEV_SM_CLOCK gauge",
    sample(GPU0, "1410", "DCGM_FI_DEV_SM_CLOCK"),
    sample(GPU1, "210", "DCGM_FI_DEV_SM_CLOCK"),
    "",
    "# HELP DCGM_FI_DEV_GPU_TEMP GPU temperature (in C).",
    "# TYPE DCGM_FI_DEV_GPU_TEMP gauge",
    sample(GPU0, "33"),
    sample(GPU1, "N/A"),
    sample(GPU1, "27", timestamp="1700000000000"),
    "# TYPE DCGM_FI_DEV_VGPU_PER_PROCESS_UTILIZATION gauge",
    sample(GPU0, "ERROR - FAILED TO CONVERT TO STRING", "DCGM_FI_DEV_VGPU_PER_PROCESS_UTILIZATION"),
    sample(GPU1, "5", "DCGM_FI_DEV_MEM_COPY_UTIL"),
]
GOOD_LINES = [3, 4, 8, 10, 13]
REJECTED_LINES = {9: "value_not_numeric", 12: "value_not_numeric"}
MODIFIED_NS = 1_767_225_600_123_456_789  # 2026-01-01T00:00:00.123456789Z


def write_scrape(path: Path, lines: list[str] = SCRAPE, ending: str = "\n") -> Path:
    path.write_bytes(ending.join(lines).encode() + ending.encode())
    os.utime(path, ns=(MODIFIED_NS, MODIFIED_NS))
    return path


def test_the_file_source_yields_the_good_rows_and_rejects_the_rest_by_line(tmp_path: Path) -> None:
    rejections: list[Rejection] = []
    source = PrometheusRows(write_scrape(tmp_path / "scrape.prom"), on_reject=rejections.append)
    assert isinstance(source, Source)
    source.check()
    rows = list(source)
    assert [row.line for row in rows] == GOOD_LINES
    assert {r.line: r.reason for r in rejections} == REJECTED_LINES
    assert rejections[1].raw == SCRAPE[11]
    stats = source.stats
    assert (stats.rows_read, stats.rows_rejected, stats.passes) == (7, 2, 1)
    assert stats.rows_read == len(rows) + stats.rows_rejected  # comments count nowhere, like blank lines
    assert stats.rejected_by_reason == {"value_not_numeric": 2}


def test_samples_without_a_timestamp_get_the_files_modification_time_on_every_read(tmp_path: Path) -> None:
    """The same rows on every read of an unchanged file: batch digests, retries and resumes depend on it."""
    path = write_scrape(tmp_path / "scrape.prom")
    first = list(PrometheusRows(path))
    second = list(PrometheusRows(path))
    assert first == second
    modified = datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
    assert [row.timestamp for row in first] == [
        modified,
        modified,
        modified,
        datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC),
        modified,
    ]


@pytest.mark.parametrize("taken", range(len(GOOD_LINES)))
def test_a_source_started_at_a_position_continues_with_the_next_row(tmp_path: Path, taken: int) -> None:
    path = write_scrape(tmp_path / "scrape.prom", ending="\r\n")
    full = list(PrometheusRows(path))
    first = PrometheusRows(path)
    iterator = iter(first)
    head = list(islice(iterator, taken + 1))
    position = first.position
    iterator.close()
    resumed = PrometheusRows(path, start=position)
    resumed.check()
    assert head + list(resumed) == full
    assert resumed.stats.rows_read == resumed.stats.rows_rejected + len(full) - taken - 1


def test_a_resumed_read_past_the_eof_marker_still_rejects_what_follows_it(tmp_path: Path) -> None:
    path = write_scrape(tmp_path / "om.prom", [sample(GPU0, "1"), "# EOF", sample(GPU1, "2"), sample(GPU1, "3")])
    whole: list[Rejection] = []
    assert [row.line for row in PrometheusRows(path, on_reject=whole.append)] == [1]
    assert [(r.line, r.reason) for r in whole] == [(3, "after_eof"), (4, "after_eof")]
    resumed: list[Rejection] = []
    start = Position(offset=len((sample(GPU0, "1") + "\n# EOF\n" + sample(GPU1, "2") + "\n").encode()), line=3)
    assert list(PrometheusRows(path, start=start, on_reject=resumed.append)) == []
    assert [(r.line, r.reason, r.detail) for r in resumed] == [(4, "after_eof", whole[1].detail)]


def test_loop_replays_the_file_and_counts_passes(tmp_path: Path) -> None:
    path = write_scrape(tmp_path / "scrape.prom")
    source = PrometheusRows(path, loop=True)
    rows = list(islice(source, 3 * len(GOOD_LINES)))
    assert [row.line for row in rows] == GOOD_LINES * 3
    assert source.stats.passes == 3
    assert source.position.pass_number == 2


def test_loop_over_a_file_of_comments_alone_stops_instead_of_spinning(tmp_path: Path) -> None:
    """Comments are not records: a pass of them yields no row, which is what ends a loop."""
    path = write_scrape(tmp_path / "comments.prom", ["# HELP A a", "# TYPE A gauge"])
    source = PrometheusRows(path, loop=True)
    assert list(source) == []
    assert (source.stats.passes, source.stats.rows_read) == (1, 0)


def test_sentinels_flag_reaches_the_file_source(tmp_path: Path) -> None:
    path = write_scrape(tmp_path / "s.prom", [sample(GPU0, "4294967295"), sample(GPU0, "2147483632")])
    assert [dict(row.labels) for row in PrometheusRows(path, sentinels="flag")] == [{}, {SENTINEL_LABEL: "blank"}]
    rejections: list[Rejection] = []
    assert [row.value for row in PrometheusRows(path, on_reject=rejections.append)] == [4294967295.0]
    assert [(r.line, r.reason) for r in rejections] == [(2, "dcgm_sentinel")]


def test_the_line_readers_rejections_cost_one_line_each(tmp_path: Path) -> None:
    """Over-long, NUL and non-UTF-8 lines are the reader's; the lines around them are still rows."""
    good = sample(GPU0, "1").encode()
    path = tmp_path / "bad.prom"
    path.write_bytes(b"\n".join([good, b"x" * 2000, good, b"A{\x00} 1", good, b"A{\xff} 1", good]) + b"\n")
    rejections: list[Rejection] = []
    source = PrometheusRows(path, on_reject=rejections.append, max_field_size=1024)
    assert [row.line for row in source] == [1, 3, 5, 7]
    assert [(r.line, r.reason) for r in rejections] == [(2, "field_too_large"), (4, "nul_byte"), (6, "not_utf8")]
    assert source.stats.rows_read == 7


def test_check_refuses_a_missing_empty_or_non_exposition_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        PrometheusRows(tmp_path / "absent.prom").check()
    with pytest.raises(SourceError, match="is a directory"):
        PrometheusRows(tmp_path).check()
    empty = tmp_path / "empty.prom"
    empty.write_text("\n  \n")
    with pytest.raises(SourceError, match="is empty"):
        PrometheusRows(empty).check()
    csv_file = tmp_path / "metrics.txt"
    csv_file.write_text("timestamp,metric_name,uuid,value\n2026-01-01T00:00:00Z,A,GPU-1,1\n")
    with pytest.raises(SourceError, match=r"line 1 does not start Prometheus exposition text.*telemetry.format"):
        PrometheusRows(csv_file).check()
    utf16 = tmp_path / "utf16.prom"
    utf16.write_bytes("# HELP A a\n".encode("utf-16"))
    with pytest.raises(SourceError, match="UTF-16"):
        PrometheusRows(utf16).check()


def test_check_accepts_a_file_that_starts_with_a_comment_a_sample_or_a_bom(tmp_path: Path) -> None:
    for name, text, rows in [
        ("c.prom", "# HELP A a\n", 0),
        ("s.prom", sample() + "\n", 1),
        ("b.prom", "\ufeff" + sample(), 1),
    ]:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        PrometheusRows(path).check()
        assert len(list(PrometheusRows(path))) == rows


def test_the_constructor_refuses_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_field_size"):
        PrometheusRows(tmp_path / "a.prom", max_field_size=0)
    with pytest.raises(ValueError, match="sentinels"):
        PrometheusRows(tmp_path / "a.prom", sentinels="drop")  # type: ignore[arg-type]


def test_the_registry_opens_prom_and_txt_files_as_prometheus(tmp_path: Path) -> None:
    assert FORMATS["prometheus"].extensions == (".prom", ".txt")
    for name in ("scrape.prom", "scrape.PROM", "metrics.txt"):
        path = write_scrape(tmp_path / name)
        assert format_of(path) == "prometheus"
        source = open_source(path, on_reject=lambda rejection: None, sentinels="flag", max_field_size=4096)
        assert isinstance(source, PrometheusRows)
        assert [row.line for row in source] == GOOD_LINES
    named_otherwise = write_scrape(tmp_path / "scrape.data")
    assert [row.line for row in open_source(named_otherwise, "prometheus")] == GOOD_LINES


# --- the real scrape ----------------------------------------------------------------------------------

SAMPLE_LINE = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\{(.*)\} (.+)")
LABEL_PAIR = re.compile(r'(\w+)="([^"]*)"')
FIELD_LABELS = {"gpu", "UUID", "device", "modelName", "Hostname"}


def independent_reading(path: Path) -> tuple[list[tuple[object, ...]], dict[int, str]]:
    """The scrape read with a plain regex, apart from our parser: (line, name, value, fields, labels) of each
    numeric sample, and the line and value text of the others."""
    rows: list[tuple[object, ...]] = []
    others: dict[int, str] = {}
    for number, text in enumerate(path.read_text().split("\n"), 1):
        if not text or text.startswith("#"):
            continue
        match = SAMPLE_LINE.fullmatch(text)
        assert match is not None, text
        name, labels_text, value_text = match.groups()
        labels = dict(LABEL_PAIR.findall(labels_text))
        try:
            value = float(value_text)
        except ValueError:
            others[number] = value_text
            continue
        fields = (labels["gpu"], labels["UUID"], labels["device"], labels["modelName"], labels["Hostname"])
        extra = {key: item for key, item in labels.items() if key not in FIELD_LABELS}
        rows.append((number, name, value, fields, extra))
    return rows, others


@pytest.mark.realdata
def test_the_real_a800_scrape_reads_as_the_text_says(real_prom: Path) -> None:
    """223 numeric samples become rows equal to a plain reading of the text, in file order; the 10 array
    fields that dcgm-exporter printed as ERROR are rejected by line."""
    expected_rows, expected_others = independent_reading(real_prom)
    assert (len(expected_rows), len(expected_others)) == (223, 10)
    assert set(expected_others.values()) == {"ERROR - FAILED TO CONVERT TO STRING"}
    rejections: list[Rejection] = []
    source = PrometheusRows(real_prom, on_reject=rejections.append)
    source.check()
    rows = list(source)
    got = [
        (row.line, row.metric_name, row.value, (row.gpu_id, row.uuid, row.device, row.model_name, row.hostname),
         dict(row.labels))
        for row in rows
    ]  # fmt: skip
    assert got == expected_rows
    assert {r.line: r.reason for r in rejections} == dict.fromkeys(expected_others, "value_not_numeric")
    assert all("ERROR - FAILED TO CONVERT TO STRING" in r.detail for r in rejections)
    assert (source.stats.rows_read, source.stats.rows_rejected) == (233, 10)
    mig = {(row.uuid, row.labels.get("GPU_I_ID")) for row in rows if "GPU_I_PROFILE" in row.labels}
    assert len(mig) == 3  # one GPU, three MIG instances, never merged
    modified = os.stat(real_prom).st_mtime_ns
    assert {row.timestamp for row in rows} == {
        datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=modified // 1000)
    }
