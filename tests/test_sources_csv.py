"""The DCGM CSV format and the registry: rows and rejections, the header, rows_from_csv, open_source."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pytest
from reactivex import operators as ops
from reactivex.notification import OnError
from reactivex.testing import ReactiveTest, TestScheduler

from rxstreamer.generate import HEADER, generate_file, generate_records
from rxstreamer.model import MetricRow, Rejection
from rxstreamer.sources import (
    FORMATS,
    SOURCE_FORMATS,
    CsvRows,
    Source,
    SourceError,
    format_of,
    open_source,
    rows_from_csv,
)
from tests.test_sources_lines import collect, needs_proc, open_descriptors, source_error, write_generated

DATA = Path(__file__).parent / "data"
BAD_ROWS = DATA / "bad_rows.csv"
MULTILINE = DATA / "multiline.csv"
MALFORMED = DATA / "malformed"


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.csv"
    generate_file(path, hosts=4, gpus=8, rows=12_800)
    return path


# Reading


def test_good_rows_come_through_and_bad_ones_are_reported_with_lines() -> None:
    """Bad records go to on_reject with their line and reason while the good ones are still yielded."""
    rows, rejections, source = collect(BAD_ROWS)
    assert [row.line for row in rows] == [2, 8, 11]
    assert [row.value for row in rows] == [42.0, 612.125, 61.0]
    assert [(r.line, r.reason) for r in rejections] == [
        (3, "field_count"),
        (4, "value_not_numeric"),
        (5, "value_not_finite"),
        (6, "bad_timestamp"),
        (7, "missing_uuid"),
        (9, "missing_metric_name"),
        (10, "bad_labels"),
    ]
    assert (source.stats.rows_read, source.stats.rows_rejected, source.stats.passes) == (10, 7, 1)


def test_line_numbers_are_where_records_start_across_blank_lines_and_multiline_fields() -> None:
    """Blank lines are skipped silently and a record spanning lines is numbered by its first line."""
    rows, rejections, source = collect(MULTILINE)
    assert [row.line for row in rows] == [3, 7, 9, 12]
    assert [(r.line, r.reason) for r in rejections] == [(8, "value_not_numeric")]
    assert rows[0].labels["note"] == "line one\nline two"
    assert rows[2].labels["note"] == "a\nb\nc"
    assert (source.stats.rows_read, source.stats.rows_rejected) == (5, 1)


def test_without_on_reject_bad_records_are_still_counted() -> None:
    """Rejections are counted in stats even when nobody listens for them."""
    source = CsvRows(BAD_ROWS)
    assert len(list(source)) == 3
    assert source.stats.rows_rejected == 7


def test_rows_match_the_generated_records(tmp_path: Path) -> None:
    """Every record of a generated file comes back as a row, in file order, with nothing rejected."""
    path = write_generated(tmp_path / "rows.csv", 200)
    rows, rejections, _ = collect(path)
    expected = list(islice(generate_records(hosts=2, gpus=4, scrapes=3, seed=5), 200))
    assert [(row.uuid, row.metric_name, row.value) for row in rows] == [
        (fields[4], fields[1], float(fields[10])) for fields in expected
    ]
    assert rejections == []


def test_an_unterminated_quote_costs_its_line_only(tmp_path: Path) -> None:
    """A quote that never closes is rejected on its first line, and every row after it is still read."""
    path = write_generated(tmp_path / "quote.csv", 6)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2][:100] + b"\n"  # inside a quoted field: the rest of the line is lost
    path.write_bytes(b"".join(lines))
    rows, rejections, source = collect(path)
    assert [(r.line, r.reason) for r in rejections] == [(3, "unterminated_quote")]
    assert rejections[0].raw == lines[2][:100].decode()
    assert [row.line for row in rows] == [2, 4, 5, 6, 7]
    assert source.stats.rows_read == 6


def test_an_open_quote_runs_out_at_max_field_size_not_at_the_end_of_the_file(tmp_path: Path) -> None:
    """A quote that stays open past max_field_size is rejected there; reading resumes on the next line."""
    path = tmp_path / "open.csv"
    good = write_generated(tmp_path / "good.csv", 40).read_bytes().splitlines(keepends=True)
    # Unquoted rows after the open quote: no quote closes it, so only the bound can.
    unquoted = [line.replace(b'"', b"") for line in good[1:]]
    path.write_bytes(b"".join([good[0], b'"2025-07-18T20:00:00Z,open\n', *unquoted]))
    rejections: list[Rejection] = []
    source = CsvRows(path, on_reject=rejections.append, max_field_size=2048)
    rows = list(source)
    assert rejections[0].line == 2
    assert rejections[0].reason == "unterminated_quote"
    assert "still open after max_field_size (2048 bytes)" in rejections[0].detail
    # Unquoted, labels_raw's commas split it into more fields: what matters is that each line is its own record.
    assert [r.line for r in rejections[1:]] == list(range(3, 43))
    assert rows == []
    assert source.stats.rows_read == 41


def test_an_unterminated_quote_explains_why_the_record_was_not_believed(tmp_path: Path) -> None:
    """The detail says whether the quote ran to the end of the file or closed on a record that is no row."""
    path = tmp_path / "quotes.csv"
    lines = [
        "timestamp,metric_name,uuid,value\n",
        '"2025-07-18T20:00:00Z","m","GPU-1","1\n',  # closed by the first quote of the next line
        '"2025-07-18T20:00:00Z","m","GPU-2","2"\n',
        '"2025-07-18T20:00:00Z","m","GPU-3","3\n',  # never closed
    ]
    path.write_text("".join(lines), encoding="utf-8")
    rows, rejections, source = collect(path)
    assert [row.line for row in rows] == [3]
    assert [(r.line, r.reason, r.detail) for r in rejections] == [
        (
            2,
            "unterminated_quote",
            "a quote opened on this line closes only on line 3, and that record is not a valid row "
            "(field_count: expected 4 fields, found 7)",
        ),
        (4, "unterminated_quote", "a quote opened on this line never closes: the file ends inside the quoted field"),
    ]
    assert source.position.offset == path.stat().st_size


def test_a_bare_carriage_return_is_a_csv_error_rejection(tmp_path: Path) -> None:
    """A record the csv module refuses (a lone CR between fields) is rejected and reading goes on."""
    path = write_generated(tmp_path / "cr.csv", 3)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'","', b'"\r"', 1)
    path.write_bytes(b"".join(lines))
    rows, rejections, _ = collect(path)
    assert [(r.line, r.reason) for r in rejections] == [(3, "csv_error")]
    assert [row.line for row in rows] == [2, 4]


def test_rejections_carry_the_raw_text_without_its_line_break(tmp_path: Path) -> None:
    """Rejection.raw is the record as written, minus the CRLF, for a quarantine file to replay."""
    path = tmp_path / "raw.csv"
    bad = '"2025-07-18T20:00:00Z","m","GPU-1","n/a"'
    path.write_bytes(f"timestamp,metric_name,uuid,value\r\n{bad}\r\n".encode())
    _, rejections, _ = collect(path)
    assert [(r.line, r.reason, r.raw) for r in rejections] == [(2, "value_not_numeric", bad)]


def test_invalid_limits_and_modes_are_refused() -> None:
    """A max_field_size under one byte and an unknown sentinel mode fail at construction."""
    with pytest.raises(ValueError, match="max_field_size"):
        CsvRows(BAD_ROWS, max_field_size=0)
    with pytest.raises(ValueError, match="sentinels"):
        CsvRows(BAD_ROWS, sentinels="drop")  # type: ignore[arg-type]


def test_rejected_by_reason_adds_up_to_rows_rejected() -> None:
    """stats.rejected_by_reason counts each reason, and every record read is either yielded or rejected."""
    rows, _, source = collect(BAD_ROWS)
    assert source.stats.rejected_by_reason == {
        "field_count": 1,
        "value_not_numeric": 1,
        "value_not_finite": 1,
        "bad_timestamp": 1,
        "missing_uuid": 1,
        "missing_metric_name": 1,
        "bad_labels": 1,
    }
    assert source.stats.rows_read == len(rows) + sum(source.stats.rejected_by_reason.values())


# The header: problems with the whole file


def test_check_accepts_a_good_file() -> None:
    """check() returns quietly for a readable file with a usable header, bad records notwithstanding."""
    CsvRows(BAD_ROWS).check()


def test_empty_file(tmp_path: Path) -> None:
    """A file with no header line at all is a SourceError."""
    path = tmp_path / "empty.csv"
    path.write_text("\n\n", encoding="utf-8")
    assert source_error(path) == f"{path}: is empty (no header line)"


def test_missing_columns(tmp_path: Path) -> None:
    """A header without required columns is a SourceError listing what is missing."""
    path = tmp_path / "columns.csv"
    path.write_text("timestamp,uuid,labels_raw\n", encoding="utf-8")
    message = source_error(path)
    assert message == f"{path}: missing required column(s) metric_name, value; found: timestamp, uuid, labels_raw"


def test_binary_file(tmp_path: Path) -> None:
    """A file that is not UTF-8 text is refused at the header."""
    path = tmp_path / "binary.csv"
    path.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(128, 256)))
    assert source_error(path).startswith(f"{path}: not UTF-8 text")


def test_utf16_file_is_refused_with_a_hint(tmp_path: Path) -> None:
    """A file saved as UTF-16 (as some spreadsheets do) is refused at the header, saying what it looks like."""
    path = tmp_path / "utf16.csv"
    path.write_bytes((HEADER + "\n").encode("utf-16"))
    assert source_error(path).endswith("it looks like UTF-16, save it as UTF-8")


def test_a_header_after_a_bom_and_blank_lines_maps_the_columns(tmp_path: Path) -> None:
    """The BOM is no part of the first column's name, and blank lines before the header are skipped."""
    path = tmp_path / "bom.csv"
    path.write_bytes(b'\xef\xbb\xbf\n\r\nvalue,uuid,metric_name,timestamp\n"7","GPU-1","m","2025-07-18T20:00:00Z"\n')
    rows, rejections, _ = collect(path)
    assert [(row.line, row.value, row.uuid) for row in rows] == [(4, 7.0, "GPU-1")]
    assert rejections == []


# rows_from_csv


def test_observable_emits_every_row_then_completes() -> None:
    """Subscribing emits the file's rows in order and completes, all at subscription time."""
    scheduler = TestScheduler()
    rejections: list[Rejection] = []
    results = scheduler.start(lambda: rows_from_csv(BAD_ROWS, on_reject=rejections.append, scheduler=scheduler))
    expected = list(CsvRows(BAD_ROWS))
    assert results.messages == [
        *(ReactiveTest.on_next(ReactiveTest.subscribed, row) for row in expected),
        ReactiveTest.on_completed(ReactiveTest.subscribed),
    ]
    assert len(rejections) == 7


def test_observable_takes_the_same_limits_as_the_iterable() -> None:
    """rows_from_csv passes max_field_size and sentinels through to CsvRows."""
    rejections: list[Rejection] = []
    rows: list[MetricRow] = []
    rows_from_csv(BAD_ROWS, on_reject=rejections.append, max_field_size=100).subscribe(rows.append)
    assert rows == []
    assert {r.reason for r in rejections} == {"field_too_large"}
    flagged: list[MetricRow] = []
    rows_from_csv(MALFORMED / "dcgm_sentinel.csv", sentinels="flag").subscribe(flagged.append)
    assert len(flagged) == 6


def test_observable_is_cold() -> None:
    """Each subscription reads the file again from the top."""
    observable = rows_from_csv(BAD_ROWS)
    first: list[MetricRow] = []
    second: list[MetricRow] = []
    observable.subscribe(first.append)
    observable.subscribe(second.append)
    assert [row.line for row in first] == [row.line for row in second] == [2, 8, 11]


def test_observable_reports_file_errors_on_error(tmp_path: Path) -> None:
    """A SourceError reaches the observer as on_error, not as an exception out of subscribe."""
    scheduler = TestScheduler()
    results = scheduler.start(lambda: rows_from_csv(tmp_path / "missing.csv", scheduler=scheduler))
    [message] = results.messages
    assert message.time == ReactiveTest.subscribed
    assert isinstance(message.value, OnError)
    assert isinstance(message.value.exception, SourceError)


@needs_proc
def test_disposing_the_observable_mid_stream_closes_the_file(big_csv: Path) -> None:
    """take(n) disposing an endless looped source stops the read and closes the file."""
    descriptors_while_reading: list[int] = []
    seen: list[MetricRow] = []
    completed: list[bool] = []

    def on_next(row: MetricRow) -> None:
        seen.append(row)
        descriptors_while_reading.append(len(open_descriptors(big_csv)))

    rows_from_csv(big_csv, loop=True).pipe(ops.take(5)).subscribe(
        on_next=on_next, on_completed=lambda: completed.append(True)
    )
    assert [row.line for row in seen] == [2, 3, 4, 5, 6]
    assert completed == [True]
    assert descriptors_while_reading == [1] * 5
    assert open_descriptors(big_csv) == []


# The registry


def test_the_formats_and_the_extensions_auto_knows_them_by() -> None:
    """telemetry.format takes auto or a registered format, each claiming its extensions."""
    assert SOURCE_FORMATS == ("auto", "csv", "jsonl", "prometheus")
    assert {name: known.extensions for name, known in FORMATS.items()} == {
        "csv": (".csv",),
        "jsonl": (".jsonl", ".ndjson"),
        "prometheus": (".prom", ".txt"),
    }


@pytest.mark.parametrize("name", ["metrics.csv", "METRICS.CSV", "dcgm.export.Csv"])
def test_auto_picks_csv_by_the_extension_in_any_case(tmp_path: Path, name: str) -> None:
    """A .csv file, however the extension is spelled, opens as CsvRows and reads as one."""
    path = tmp_path / name
    path.write_bytes(BAD_ROWS.read_bytes())
    assert format_of(path) == "csv"
    source = open_source(path, on_reject=lambda rejection: None)
    assert isinstance(source, CsvRows)
    assert isinstance(source, Source)
    assert [row.line for row in source] == [2, 8, 11]
    assert source.stats.rows_rejected == 7


def test_an_explicit_format_overrides_the_extension(tmp_path: Path) -> None:
    """format="csv" reads a file whatever it is called, with the options handed on."""
    path = tmp_path / "metrics.txt"
    path.write_bytes(BAD_ROWS.read_bytes())
    rejections: list[Rejection] = []
    source = open_source(path, "csv", on_reject=rejections.append, max_field_size=100)
    source.check()
    assert list(source) == []
    assert {r.reason for r in rejections} == {"field_too_large"}
    looped = open_source(path, "csv", loop=True, sentinels="flag", start=source.position)
    assert [row.line for row in islice(looped, 2)] == [2, 8]


@pytest.mark.parametrize(
    ("name", "named"), [("metrics.dat", "the extension '.dat'"), ("metrics", "no extension")], ids=["dat", "none"]
)
def test_auto_refuses_an_extension_no_format_claims(tmp_path: Path, name: str, named: str) -> None:
    """Auto does not guess: the SourceError names the extension, the known ones, and the setting to use."""
    path = tmp_path / name
    with pytest.raises(SourceError) as raised:
        open_source(path)
    assert str(raised.value) == (
        f"{path}: cannot tell the format from {named} (telemetry.format = 'auto' knows .csv (csv), .jsonl (jsonl), "
        ".ndjson (jsonl), .prom (prometheus), .txt (prometheus)); set telemetry.format to one of csv, jsonl, prometheus"
    )


def test_an_unknown_format_name_is_refused() -> None:
    """A format that is not registered is a ValueError listing the ones that are."""
    with pytest.raises(ValueError, match=r"^format must be one of auto, csv, jsonl, prometheus, got 'parquet'$"):
        open_source(BAD_ROWS, "parquet")
