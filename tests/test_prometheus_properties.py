"""Properties of the Prometheus text parser over generated input: label values survive escaping, no line
crashes it, bad lines never cost good ones, and a file's counts always add up.

As in tests/test_properties.py: a few hundred examples per property, no deadline, no example database.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rxstreamer.model import MetricRow, Rejection
from rxstreamer.parsing import REJECTION_REASONS
from rxstreamer.sources import SourceError
from rxstreamer.sources.prometheus_text import ExpositionParser, PrometheusRows, parse_exposition

PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
T0 = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)
UUID = "GPU-5022ce43-b44a-987b-71c3-dee05378a618"
# Label names that fill row fields; any other valid name stays in labels.
FIELD_LABELS = {"gpu", "UUID", "uuid", "device", "modelName", "model_name", "Hostname", "hostname", "container"}
FIELD_LABELS |= {"pod", "namespace"}


def escape(value: str) -> str:
    """A label value as the exposition format writes it (backslash first, so the others are not doubled)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,20}", fullmatch=True).filter(
    lambda name: not name.startswith("__") and name not in FIELD_LABELS
)
metric_names = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,30}", fullmatch=True)
# Below DCGM's smallest sentinel (2**31 - 16), so that a good line is a row in either sentinel mode.
values = st.one_of(
    st.integers(-(10**12), 2 * 10**9).map(str),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=2e9).map(repr),
)
timestamps = st.one_of(st.none(), st.integers(-(10**12), 10**13))

# Pieces of exposition text that make parsers go wrong, mixed with arbitrary text.
TRICKY = [
    "{", "}", '"', "\\", "=", ",", " ", "\t", "#", "# EOF", "# TYPE x gauge", "NaN", "+Inf", "N/A", "__name__",
    f'UUID="{UUID}"', 'gpu="0"', "9223372036854775794", "1e400", "1_0", "\r", "\x00", "\u2028", "DCGM_FI_DEV",
]  # fmt: skip
piece = st.one_of(st.sampled_from(TRICKY), st.text(max_size=12))
garbage_line = st.lists(piece, max_size=12).map(lambda pieces: "".join(pieces).replace("\n", " "))


@PROPERTY_SETTINGS
@given(value=st.text(max_size=200), name=label_names)
def test_any_label_value_survives_escaping(value: str, name: str) -> None:
    """Whatever a label value holds (quotes, backslashes, line breaks, braces, any script), it reads back."""
    text = f'DCGM_FI_DEV_GPU_TEMP{{UUID="{UUID}",{name}="{escape(value)}"}} 33'
    row = ExpositionParser(T0).line(text, 1)
    assert isinstance(row, MetricRow), row
    assert dict(row.labels) == {name: value}


@PROPERTY_SETTINGS
@given(uuid=st.text(min_size=1, max_size=80), hostname=st.text(max_size=80))
def test_any_uuid_and_hostname_survive_escaping(uuid: str, hostname: str) -> None:
    text = f'm{{Hostname="{escape(hostname)}", UUID="{escape(uuid)}",}} 1'
    row = ExpositionParser(T0).line(text, 1)
    assert isinstance(row, MetricRow), row
    assert (row.uuid, row.hostname, dict(row.labels)) == (uuid, hostname, {})


@PROPERTY_SETTINGS
@given(text=st.one_of(garbage_line, st.text(max_size=300)), reject=st.booleans())
def test_no_line_crashes_the_parser(text: str, reject: bool) -> None:
    """Any text is a row, a rejection with a listed reason and the line's number, or None: never an exception."""
    result = ExpositionParser(T0, reject).line(text, 99)
    if isinstance(result, Rejection):
        assert result.reason in REJECTION_REASONS
        assert result.line == 99
        assert result.detail
    elif isinstance(result, MetricRow):
        assert result.uuid
        assert result.line == 99
    else:
        assert result is None


@st.composite
def good_lines(draw: st.DrawFn) -> str:
    """A valid sample with a uuid: a row whatever lines surround it."""
    extra = draw(st.dictionaries(label_names, st.text(max_size=20), max_size=4))
    labels = [f'UUID="{escape(draw(st.text(min_size=1, max_size=40)))}"']
    labels += [f'{name}="{escape(value)}"' for name, value in extra.items()]
    draw(st.randoms()).shuffle(labels)
    separator = draw(st.sampled_from([",", ", "]))
    trailing = draw(st.sampled_from(["", ","]))
    stamp = draw(timestamps)
    tail = "" if stamp is None else f" {stamp}"
    return f"{draw(metric_names)}{{{separator.join(labels)}{trailing}}} {draw(values)}{tail}"


@PROPERTY_SETTINGS
@given(
    lines=st.lists(
        st.one_of(good_lines().map(lambda line: (True, line)), garbage_line.map(lambda line: (False, line))),
        max_size=30,
    ).map(lambda lines: [(good, line) for good, line in lines if good or line.strip() != "# EOF"])
)
def test_bad_lines_never_take_good_ones_with_them(lines: list[tuple[bool, str]]) -> None:
    """Interleaved with garbage (the end marker aside, which ends a scrape by design), every good line yields
    the row it yields on its own, under its own line number."""
    results = {result.line: result for result in parse_exposition([line for _, line in lines], default_time=T0)}
    for number, (good, text) in enumerate(lines, 1):
        if good:
            alone = ExpositionParser(T0).line(text, number)
            assert isinstance(alone, MetricRow), (text, alone)
            assert results[number] == alone


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prometheus_properties")


@PROPERTY_SETTINGS
@given(
    chunks=st.lists(
        st.one_of(
            good_lines().map(str.encode),
            garbage_line.map(lambda text: text.encode("utf-8", "surrogatepass")),
            st.binary(max_size=30),
            st.sampled_from([b"\n", b"\r\n", b"\xef\xbb\xbf", b"\xff", b"# HELP x y\n"]),
        ),
        max_size=30,
    ),
    limit=st.integers(1, 400),
)
def test_a_file_of_anything_gives_counts_that_add_up(workdir: Path, chunks: list[bytes], limit: int) -> None:
    """Any bytes: a file-level SourceError from check(), or rows and rejections that account for every record."""
    path = workdir / "anything.prom"
    path.write_bytes(b"\n".join(chunks))
    events: list[tuple[str, int]] = []
    source = PrometheusRows(path, on_reject=lambda r: events.append((r.reason, r.line)), max_field_size=limit)
    with contextlib.suppress(SourceError):
        source.check()
    events += [("row", row.line) for row in source]
    stats = source.stats
    rows = sum(1 for kind, _ in events if kind == "row")
    assert stats.rows_read == rows + stats.rows_rejected == len(events)
    assert {kind for kind, _ in events} <= {"row", *REJECTION_REASONS}
    lines = sorted(line for _, line in events)
    assert lines == sorted(set(lines)), "each line is reported once"
