"""Reading one field of a CSV line without the csv module, as a shard does to pass over others' records."""

from __future__ import annotations

import csv
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from rxstreamer.sources.dcgm_csv import leading_field

# Characters that matter to CSV, and a few that do not.
CSV_TEXT = st.text(alphabet=st.sampled_from(['"', ",", "\r", "\n", " ", "a", "b", "\ufeff", "\\"]), max_size=40)


def csv_field(text: str, index: int) -> str | None:
    """What csv.reader makes of the line's field ``index``, when the line is one whole record with more after it."""
    try:
        records = list(csv.reader([text]))
    except csv.Error:
        return None
    if len(records) != 1 or len(records[0]) <= index + 1:
        return None
    return records[0][index]


@given(CSV_TEXT, st.integers(min_value=0, max_value=4))
def test_whenever_it_reads_a_field_it_is_the_field_csv_reads(text: str, index: int) -> None:
    field = leading_field(text, index)
    if field is not None:
        assert field == csv_field(text, index)


@given(st.lists(st.text(alphabet=st.sampled_from(["a", "b", " ", ",", "-"]), max_size=8), min_size=3, max_size=8))
def test_fields_written_by_csv_quoting_all_are_read(fields: list[str]) -> None:
    """The shape of the real export (every field quoted, no quote inside) is always read."""
    written = _quoted_all(fields)
    for index in range(len(fields) - 1):
        assert leading_field(written, index) == fields[index]


def test_the_uuid_of_every_line_of_the_test_data_is_read_as_csv_reads_it() -> None:
    lines = Path("test-data/metrics.csv").read_text().splitlines(keepends=True)[1:]
    assert [leading_field(line, 4) for line in lines] == [next(csv.reader([line]))[4] for line in lines]


def test_a_line_that_leaves_a_quote_open_is_not_read() -> None:
    """The record goes on to the next line: skipping this line alone would leave the rest as records."""
    assert leading_field('"a","b","c","d","GPU-1","labels with "" open\n', 4) is None


def test_a_field_csv_reads_differently_is_not_read() -> None:
    assert leading_field('"a"b,"c"\n', 0) is None  # csv: 'ab'
    assert leading_field('a"b,"c"\n', 0) is None  # csv: 'a"b'
    assert leading_field('"a,b","c"\n', 0) == "a,b"
    assert leading_field('"a"\n', 0) is None  # the last field carries the line break


def _quoted_all(fields: list[str]) -> str:
    class Line:
        text = ""

        def write(self, chunk: str) -> None:
            self.text += chunk

    line = Line()
    csv.writer(line, quoting=csv.QUOTE_ALL, lineterminator="\n").writerow(fields)
    return line.text
