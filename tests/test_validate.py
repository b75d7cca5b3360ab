"""validate_file and its renderings: what a file holds, what is wrong with it, and the exit code."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rxstreamer.generate import generate_file
from rxstreamer.sources import SourceError
from rxstreamer.validate import Example, render_json, render_text, validate_file

DATA = Path(__file__).parent / "data"
MALFORMED = DATA / "malformed"


@pytest.mark.realdata
def test_the_real_export_is_clean(real_csv: Path) -> None:
    """The real DCGM file: 2,470 good rows from 247 GPUs on 31 hosts, 10 metrics, nothing rejected, exit 0."""
    report = validate_file(real_csv)
    assert (report.rows, report.good, report.rejected) == (2470, 2470, 0)
    assert (report.gpus, report.hosts, len(report.metrics)) == (247, 31, 10)
    assert report.first_timestamp == datetime(2025, 7, 18, 20, 42, 34, tzinfo=UTC)
    assert report.last_timestamp == datetime(2025, 7, 18, 20, 42, 37, tzinfo=UTC)
    assert report.exit_code == 0


def test_a_generated_file_is_clean(tmp_path: Path) -> None:
    """A generated file validates with every row good and the fleet it was generated for."""
    path = tmp_path / "gen.csv"
    generate_file(path, hosts=3, gpus=4, scrapes=2, seed=1)
    report = validate_file(path)
    assert (report.rows, report.good, report.rejected, report.exit_code) == (240, 240, 0, 0)
    assert (report.gpus, report.hosts, len(report.metrics)) == (12, 3, 10)
    assert report.rejected_by_reason == {}
    assert report.examples == {}


def test_rejections_are_counted_by_reason_with_examples_and_exit_1() -> None:
    """bad_rows.csv: 3 good, 7 rejected, one example per reason with its line, and exit code 1."""
    report = validate_file(DATA / "bad_rows.csv")
    assert (report.rows, report.good, report.rejected, report.exit_code) == (10, 3, 7, 1)
    assert sum(report.rejected_by_reason.values()) == 7
    assert report.examples["value_not_numeric"] == [
        Example(
            4,
            "value='n/a' is not a number",
            (DATA / "bad_rows.csv").read_text(encoding="utf-8").splitlines()[3],
        )
    ]
    assert (report.gpus, report.hosts) == (3, 1)


def test_examples_keep_the_first_few_of_each_reason(tmp_path: Path) -> None:
    """Of many rejections for one reason only the first `examples` are kept, in file order."""
    path = tmp_path / "many.csv"
    path.write_text(
        "timestamp,metric_name,uuid,value\n" + "".join(f"2025-07-18T20:00:00Z,m,GPU-{n},bad{n}\n" for n in range(50)),
        encoding="utf-8",
    )
    report = validate_file(path, examples=3)
    assert report.rejected_by_reason == {"value_not_numeric": 50}
    assert [example.line for example in report.examples["value_not_numeric"]] == [2, 3, 4]
    assert "... and 47 more" in render_text(report)


def test_sentinel_mode_and_field_limit_are_those_of_the_streamer() -> None:
    """validate_file reads with the streamer's limits: sentinels flagged or rejected, max_field_size applied."""
    rejecting = validate_file(MALFORMED / "dcgm_sentinel.csv")
    assert (rejecting.good, rejecting.rejected_by_reason) == (2, {"dcgm_sentinel": 4})
    flagging = validate_file(MALFORMED / "dcgm_sentinel.csv", sentinels="flag")
    assert (flagging.good, flagging.rejected, flagging.flagged_sentinels, flagging.exit_code) == (6, 0, 4, 0)
    limited = validate_file(MALFORMED / "field_too_large.csv", max_field_size=1024)
    assert limited.rejected_by_reason == {"field_too_large": 2}
    # Under the 64 KiB default the same lines are short enough to be parsed, and fail on their content instead.
    assert validate_file(MALFORMED / "field_too_large.csv").rejected_by_reason == {"bad_labels": 1, "field_count": 1}


def test_a_file_that_cannot_be_read_raises_source_error(tmp_path: Path) -> None:
    """A missing file or one without the required columns is a SourceError, for the CLI's exit status 2."""
    with pytest.raises(SourceError, match="no such file"):
        validate_file(tmp_path / "missing.csv")
    bad_header = tmp_path / "header.csv"
    bad_header.write_text("a,b,c\n1,2,3\n", encoding="utf-8")
    with pytest.raises(SourceError, match="missing required column"):
        validate_file(bad_header)


def test_the_format_is_chosen_as_the_streamer_chooses_it(tmp_path: Path) -> None:
    """auto goes by the extension and refuses one it does not know; an explicit format reads any name."""
    path = tmp_path / "bad_rows.dat"
    path.write_bytes((DATA / "bad_rows.csv").read_bytes())
    with pytest.raises(SourceError, match=r"cannot tell the format from the extension '\.dat'"):
        validate_file(path)
    report = validate_file(path, format="csv")
    assert (report.rows, report.good, report.rejected, report.exit_code) == (10, 3, 7, 1)


def test_a_header_only_file_is_clean_but_says_so(tmp_path: Path) -> None:
    """No data rows is not an error, but the report notes it."""
    path = tmp_path / "empty.csv"
    path.write_text("timestamp,metric_name,uuid,value\n", encoding="utf-8")
    report = validate_file(path)
    assert (report.rows, report.exit_code, report.first_timestamp) == (0, 0, None)
    assert "note: the file has a header but no data rows" in render_text(report)


def test_text_rendering_leads_with_the_verdict_and_lists_each_reason() -> None:
    """The text report starts with OK or PROBLEMS FOUND and shows each reason, count and example line."""
    text = render_text(validate_file(DATA / "bad_rows.csv"))
    first, counts = text.splitlines()[:2]
    assert first.endswith(": PROBLEMS FOUND")
    assert counts == "  rows: 10  good: 3  rejected: 7"
    assert "    bad_timestamp: 1\n      line 6: timestamp='2025-07-18 20:00' is not RFC 3339\n" in text
    assert "  time range: 2025-07-18T20:00:00Z .. 2025-07-18T20:00:01Z\n" in text
    assert render_text(validate_file(MALFORMED / "bom.csv")).splitlines()[0].endswith(": OK")


def test_json_rendering_round_trips_the_report() -> None:
    """The JSON report is one object with the counts, examples, timestamps and exit code."""
    report = validate_file(DATA / "bad_rows.csv")
    document = json.loads(render_json(report))
    assert document["exit_code"] == 1
    assert (document["rows"], document["good"], document["rejected"]) == (10, 3, 7)
    assert document["rejected_by_reason"] == report.rejected_by_reason
    assert document["examples"]["missing_uuid"][0]["line"] == 7
    assert document["first_timestamp"] == "2025-07-18T20:00:00Z"
    assert document["metrics"] == report.metrics


def test_bad_bytes_render_safely(tmp_path: Path) -> None:
    """Raw text of a non-UTF-8 line is escaped in both renderings, never a crash or raw bytes."""
    report = validate_file(MALFORMED / "not_utf8.csv")
    assert report.rejected_by_reason == {"not_utf8": 1}
    assert "\\xf6" in report.examples["not_utf8"][0].raw
    assert "not_utf8: 1" in render_text(report)
    assert json.loads(render_json(report))["examples"]["not_utf8"][0]["raw"] == report.examples["not_utf8"][0].raw
