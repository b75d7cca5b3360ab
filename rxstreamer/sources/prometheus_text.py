"""The Prometheus text exposition format (what dcgm-exporter serves on ``/metrics``), as rows.

Two layers, so that the live scraper can reuse the parsing on HTTP bodies without any file:

- ``ExpositionParser.line`` / ``parse_exposition``: pure. One line of text in, one ``MetricRow``, one
  ``Rejection`` or ``None`` (comments, blank lines) out. A line is judged on its own, so one bad line
  costs that line only, never its neighbours: prometheus_client's parser raises part-way through a scrape
  instead, losing the rest of it.
- ``PrometheusRows``: a ``Source`` over a ``.prom`` file, on the shared bounded ``LineReader`` (bounds,
  positions and resume, BOM, CRLF, NUL, non-UTF-8 and over-long lines are the reader's).

What a sample line becomes. ``name{labels} value [timestamp]``: the sample name is ``metric_name``
exactly as written (a counter without ``_total`` keeps its name: prometheus_client's renaming would make
``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` a different metric from the CSV's). Labels that name a row's
fields become those fields and are not repeated in ``labels``: ``gpu``, ``UUID``/``uuid``, ``device``,
``modelName``/``model_name``, ``Hostname``/``hostname``, ``container``, ``pod``, ``namespace`` (both
spellings of each, because dcgm-exporter renamed ``Hostname`` in 2026 and ``--use-old-namespace`` writes
``uuid``; when a line carries both spellings the first one fills the field and the other stays a label).
Every other label (MIG ``GPU_I_PROFILE``/``GPU_I_ID``, ``DCGM_FI_DRIVER_VERSION``, ``pci_bus_id``, ``le``)
goes into ``labels``, values as written, empty ones included. Label values are unescaped as Prometheus
does (``\\"``, ``\\\\``, ``\\n``; any other backslash is kept as written).

Time. The text format's timestamp is integer milliseconds since the epoch and becomes an aware UTC
datetime; a sample without one (dcgm-exporter never writes one) gets the parser's ``default_time``: for a
file, its modification time, so that re-reading the same file gives the same rows, which batch
de-duplication depends on. OpenMetrics' float-seconds timestamps are rejected as ``bad_timestamp`` rather
than guessed at.

Histograms and summaries are accepted, sample by sample, under their sample names (``x_bucket`` with its
``le`` label, ``x_sum``, ``x_count``, a summary's ``x`` with ``quantile``), like every other sample:
Prometheus itself stores each as a series of its own, and ``le``/``quantile`` stay in ``labels``, so a
consumer can rebuild the family and nothing is dropped in silence. Like any sample they become rows only
with a ``UUID``/``uuid`` label (``missing_uuid`` otherwise), and a NaN quantile is ``value_not_finite``.
``# TYPE`` is remembered per family (``ExpositionParser.types``) for callers that want it; it changes
no row.

What is rejected, one line at a time, checked in this order: ``after_eof`` (anything after OpenMetrics'
``# EOF``), ``not_a_sample`` (no valid metric name, no value, an unclosed ``{``, text after the timestamp),
``bad_labels`` (a label set that is not ``name="value",...``, an invalid or reserved ``__`` label name, a
repeated label), ``missing_uuid``, ``bad_timestamp``, then the value rules every format shares
(``parse_value``): ``value_not_numeric`` (``N/A``; dcgm-exporter's ``ERROR - FAILED TO CONVERT TO STRING``
for array fields), ``value_not_finite`` (NaN, ±Inf) and ``dcgm_sentinel`` (rejected, or with
``sentinels="flag"`` kept with a ``dcgm_sentinel`` label).
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator, Iterable, Iterator, Mapping
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Final, NamedTuple

from rxstreamer.model import MetricRow, Rejection
from rxstreamer.parsing import (
    AFTER_EOF,
    BAD_LABELS,
    BAD_TIMESTAMP,
    LABELS_CACHE_SIZE,
    MISSING_UUID,
    NOT_A_SAMPLE,
    VALUE_NOT_NUMERIC,
    SentinelReading,
    _shown,
    flag_sentinel,
    parse_value,
)
from rxstreamer.sources.base import SourceError
from rxstreamer.sources.lines import RAW_TEXT_CHARS, LinePass, LineSource, open_binary

__all__ = ["ExpositionParser", "PrometheusRows", "parse_exposition"]

_METRIC_NAME: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# One label pair, with the blanks some exporter versions print around it, and what follows it: a comma or
# the end. The value is the unrolled form of (?:[^"\\]|\\.)*: linear, and no backtracking between branches.
_LABEL_PAIR: Final = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"([^"\\]*(?:\\.[^"\\]*)*)"[ \t]*(,|\Z)')
_LABEL_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_LABEL_NAME_AT: Final = re.compile(r"[ \t]*([^ \t=,]*)")
_ESCAPE: Final = re.compile(r'\\([\\"n])')
_UNESCAPED: Final = {"\\": "\\", '"': '"', "n": "\n"}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# int64 milliseconds never need more characters than this; longer text is rejected before int() sees it.
_MAX_TIMESTAMP_CHARS: Final = 20
# Bounds on the per-parser caches: a scrape has a few dozen names and one timestamp, a hostile file many.
_NAMES_CACHE_SIZE: Final = 4096
_TIMES_CACHE_SIZE: Final = 4096
_TYPES_LIMIT: Final = 4096
_KNOWN_TYPES: Final = frozenset({"counter", "gauge", "histogram", "summary", "untyped"})
_EOF: Final = "# EOF"
_EOF_BYTES: Final = b"# EOF"
# Which MetricRow field a label fills: the slot in _LabelSet's first eight entries.
_FIELD_SLOTS: Final = {
    "gpu": 0,
    "device": 1,
    "UUID": 2,
    "uuid": 2,
    "modelName": 3,
    "model_name": 3,
    "Hostname": 4,
    "hostname": 4,
    "container": 5,
    "pod": 6,
    "namespace": 7,
}
_NO_LABELS: Final[Mapping[str, str]] = MappingProxyType({})
_PRESCAN_CHUNK: Final = 64 * 1024


class _LabelSet(NamedTuple):
    """A label set resolved once into the row fields it fills and the labels left over."""

    gpu_id: str
    device: str
    uuid: str
    model_name: str
    hostname: str
    container: str
    pod: str
    namespace: str
    labels: Mapping[str, str]


_EMPTY_SET: Final = _LabelSet("", "", "", "", "", "", "", "", _NO_LABELS)


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    return _ESCAPE.sub(lambda match: _UNESCAPED[match.group(1)], value)


def _explain_labels(raw: str, pos: int) -> str:
    """Why the label set breaks at ``pos``: off the good path, so it can take its time to be precise."""
    name = _LABEL_NAME_AT.match(raw, pos)
    found = name.group(1) if name is not None else ""
    rest = raw[pos:].lstrip(" \t")
    where = f"at character {pos + 1} of the label set"
    if found and _LABEL_NAME.fullmatch(found) is None:
        return f"invalid label name {_shown(found)} {where}: names match [a-zA-Z_][a-zA-Z0-9_]*"
    if not found:
        return f'expected name="value" {where}, found {_shown(rest[:40])}'
    after = rest[len(found) :].lstrip(" \t")
    if not after.startswith("="):
        return f"label {found!r} has no '=' {where}"
    value = after[1:].lstrip(" \t")
    if not value.startswith('"'):
        return f"the value of label {found!r} is not in double quotes {where}"
    return f"the value of label {found!r} does not close with '\"' or is not followed by ',' {where}"


def _parse_label_set(raw: str) -> _LabelSet | str:
    """The fields and labels of ``name="value",...`` (blanks after commas and a trailing comma allowed),
    or a detail saying why it is not one."""
    if not raw or raw.isspace():
        return _EMPTY_SET
    fields = ["", "", "", "", "", "", "", ""]
    filled = [False] * 8
    labels: dict[str, str] = {}
    seen: set[str] = set()
    pos, end = 0, len(raw)
    while True:
        match = _LABEL_PAIR.match(raw, pos)
        if match is None:
            return _explain_labels(raw, pos)
        name, escaped, separator = match.groups()
        if name in seen:
            return f"the label set repeats the label {name!r}"
        if name.startswith("__"):
            return f"label name {name!r} is reserved: names starting with __ are Prometheus' own"
        seen.add(name)
        value = _unescape(escaped)
        slot = _FIELD_SLOTS.get(name)
        if slot is not None and not filled[slot]:
            fields[slot], filled[slot] = value, True
        else:
            labels[name] = value
        pos = match.end()
        if not separator or pos == end or raw[pos:].isspace():  # the end, or a trailing comma
            break
    gpu_id, device, uuid, model_name, hostname, container, pod, namespace = fields
    mapping = MappingProxyType(labels) if labels else _NO_LABELS
    return _LabelSet(gpu_id, device, uuid, model_name, hostname, container, pod, namespace, mapping)


class ExpositionParser:
    """Turns lines of exposition text into rows, one line at a time, remembering what a scrape carries over
    lines: the ``# TYPE`` of each family and whether ``# EOF`` was seen.

    ``default_time`` (timezone-aware) is the time of samples without a timestamp: the scrape's time.
    ``reject_sentinels`` is ``sentinels == "reject"``. ``eof_line`` says that an ``# EOF`` was already
    seen on that line, for a reader that resumes past it. One parser reads one file pass, or the scrapes of one
    target one after the other (``restart``).
    """

    def __init__(self, default_time: datetime, reject_sentinels: bool = True, *, eof_line: int | None = None) -> None:
        if default_time.tzinfo is None or default_time.utcoffset() is None:
            raise ValueError(f"default_time must be timezone-aware, got {default_time.isoformat()}")
        self.default_time = default_time.astimezone(UTC)
        self.reject_sentinels = reject_sentinels
        self.eof_line = eof_line
        self._types: dict[str, str] = {}
        self._names: dict[str, str] = {}  # text before '{' as written -> the validated name
        # Label set text -> what it resolves to. A scrape repeats one label set per GPU for every field, so
        # rows share one mapping and a sample costs a lookup. Filled up to the bound, then kept as it is rather
        # than evicting: families list GPUs in the same order, and an LRU cache smaller than the GPUs of a
        # text would miss on every line, while a full cache still serves the label sets it holds.
        self._label_sets: dict[str, _LabelSet | str] = {}
        self._times: dict[str, datetime] = {}

    def restart(self, default_time: datetime) -> None:
        """Read another text of the same source (the next scrape of a target), keeping what was learnt.

        The caches of names and label sets carry over, so the next scrape's rows share the label mappings of
        the last one: cheaper to parse, and the encoder (whose cache keys on those mappings) hits as well.
        """
        if default_time.tzinfo is None or default_time.utcoffset() is None:
            raise ValueError(f"default_time must be timezone-aware, got {default_time.isoformat()}")
        self.default_time = default_time.astimezone(UTC)
        self.eof_line = None

    @property
    def types(self) -> Mapping[str, str]:
        """The ``# TYPE`` of each family seen so far (the first few thousand), by family name."""
        return MappingProxyType(self._types)

    # PLR0911, PLR0912: one early return per rejection keeps the per-sample path flat and cheap.
    def line(self, text: str, number: int) -> MetricRow | Rejection | None:  # noqa: PLR0911, PLR0912
        """One line without its line break: a row, a rejection, or None for a comment or a blank line.

        ``number`` is the line's number, carried into the row or rejection. Never raises on any text.
        """
        if self.eof_line is not None or not text or text[0] in "# \t":
            return self._unusual(text, number)
        brace = text.find("{")
        if brace < 0:
            return self._no_labels(text, number)
        name = self._names.get(text[:brace])
        if name is None:
            checked = self._name(text[:brace], text, number)
            if isinstance(checked, Rejection):
                return checked
            name = checked
        close = text.rfind("}")
        if close < brace:
            return self._reject(NOT_A_SAMPLE, "a '{' opens the label set and no '}' closes it", text, number)
        tokens = text[close + 1 :].split()
        if len(tokens) == 1:
            value_text, written_time = tokens[0], None
        else:
            shape = self._value_and_time(tokens, text, number)
            if isinstance(shape, Rejection):
                return shape
            value_text, written_time = shape
        raw_labels = text[brace + 1 : close]
        label_set = self._label_sets.get(raw_labels)
        if label_set is None:
            label_set = _parse_label_set(raw_labels)
            if len(self._label_sets) < LABELS_CACHE_SIZE:
                self._label_sets[raw_labels] = label_set
        if isinstance(label_set, str):
            return self._reject(BAD_LABELS, label_set, text, number)
        gpu_id, device, uuid, model_name, hostname, container, pod, namespace, labels = label_set
        if not uuid:
            return self._reject(MISSING_UUID, "the sample has no UUID (or uuid) label, or it is empty", text, number)
        timestamp = self.default_time if written_time is None else self._timestamp(written_time, text, number)
        if isinstance(timestamp, Rejection):
            return timestamp
        if not value_text.isascii():  # float() reads other scripts' digits; Go's ParseFloat does not
            return self._reject(VALUE_NOT_NUMERIC, f"value={_shown(value_text)} is not a number", text, number)
        value = parse_value(value_text, number, reject_sentinels=self.reject_sentinels)
        if isinstance(value, Rejection):
            return Rejection(number, value.reason, value.detail, text[:RAW_TEXT_CHARS])
        if type(value) is SentinelReading:
            labels, value = flag_sentinel(labels, value)
        return MetricRow(
            timestamp, name, gpu_id, device, uuid, model_name, hostname, container, pod, namespace,
            value, labels, number,
        )  # fmt: skip

    def _unusual(self, text: str, number: int) -> MetricRow | Rejection | None:
        """Lines off the sample path: after ``# EOF``, blank, comments, and samples with leading blanks."""
        stripped = text.strip()
        if self.eof_line is not None:
            if not stripped:
                return None
            detail = f"the line comes after the OpenMetrics end marker '# EOF' on line {self.eof_line}"
            return self._reject(AFTER_EOF, detail, text, number)
        if not stripped:
            return None
        if stripped[0] == "#":
            self._comment(stripped, number)
            return None
        return self.line(stripped, number)

    def _comment(self, comment: str, number: int) -> None:
        """Note ``# EOF`` and ``# TYPE``; ``# HELP`` and other comments carry nothing a row needs."""
        if comment == _EOF:
            self.eof_line = number
            return
        words = comment[1:].split(None, 3)
        if len(words) >= 3 and words[0] == "TYPE" and words[2] in _KNOWN_TYPES:
            family = words[1]
            if _METRIC_NAME.fullmatch(family) and (family in self._types or len(self._types) < _TYPES_LIMIT):
                self._types[family] = words[2]

    def _name(self, written: str, text: str, number: int) -> str | Rejection:
        """Validate the text before '{' as a metric name, remembering good ones (bounded)."""
        name = written.rstrip(" \t")
        if not name:
            return self._reject(NOT_A_SAMPLE, "no metric name before the label set", text, number)
        if _METRIC_NAME.fullmatch(name) is None:
            detail = f"invalid metric name {_shown(name)}: names match [a-zA-Z_:][a-zA-Z0-9_:]*"
            return self._reject(NOT_A_SAMPLE, detail, text, number)
        if len(self._names) < _NAMES_CACHE_SIZE:
            self._names[written] = name
        return name

    def _no_labels(self, text: str, number: int) -> Rejection | None:
        """``name value [timestamp]``: valid syntax, but with no labels there is no UUID to make a row of."""
        tokens = text.split()
        if not tokens:  # blank but for whitespace other than blanks and tabs (a lone CR, a form feed)
            return None
        checked = self._name(tokens[0], text, number)
        if isinstance(checked, Rejection):
            return checked
        shape = self._value_and_time(tokens[1:], text, number)
        if isinstance(shape, Rejection):
            return shape
        return self._reject(MISSING_UUID, "the sample has no labels, so no UUID (or uuid) label", text, number)

    def _value_and_time(self, tokens: list[str], text: str, number: int) -> tuple[str, str | None] | Rejection:
        """The value's text and the timestamp's text, if any, from the tokens after the labels.

        More than two tokens after a number is text after the timestamp; after anything else it is a value
        with blanks in it, judged by the value rules: dcgm-exporter's ``ERROR - FAILED TO CONVERT TO STRING``
        for array fields is ``value_not_numeric``, not a broken line.
        """
        if not tokens:
            return self._reject(NOT_A_SAMPLE, "no value after the metric name and labels", text, number)
        if len(tokens) == 1:
            return tokens[0], None
        if len(tokens) == 2:
            return tokens[0], tokens[1]
        rest = " ".join(tokens)
        if _is_number(tokens[0]):
            detail = f"expected a value and at most a timestamp after the labels, found {_shown(rest)}"
            return self._reject(NOT_A_SAMPLE, detail, text, number)
        return rest, None

    def _timestamp(self, written: str, text: str, number: int) -> datetime | Rejection:
        """Integer milliseconds since the epoch as an aware UTC datetime, cached per distinct text."""
        known = self._times.get(written)
        if known is not None:
            return known
        milliseconds = _milliseconds(written)
        if milliseconds is None:
            detail = f"timestamp={_shown(written)} is not integer milliseconds since the epoch"
            return self._reject(BAD_TIMESTAMP, detail, text, number)
        try:
            when = _EPOCH + timedelta(milliseconds=milliseconds)
        except OverflowError:
            detail = f"timestamp={_shown(written)} is outside the years 1 to 9999"
            return self._reject(BAD_TIMESTAMP, detail, text, number)
        if len(self._times) >= _TIMES_CACHE_SIZE:
            self._times.clear()
        self._times[written] = when
        return when

    @staticmethod
    def _reject(reason: str, detail: str, text: str, number: int) -> Rejection:
        return Rejection(number, reason, detail, text[:RAW_TEXT_CHARS])


def _milliseconds(text: str) -> int | None:
    """The integer a timestamp spells, or None: no underscores or other scripts' digits, which int() reads."""
    if len(text) > _MAX_TIMESTAMP_CHARS or not text.isascii() or "_" in text:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_exposition(
    lines: Iterable[str], *, default_time: datetime, first_line: int = 1, reject_sentinels: bool = True
) -> Iterator[MetricRow | Rejection]:
    """Rows and rejections of exposition text given as lines without their line breaks, in order.

    One result per sample line; comment and blank lines yield nothing but are numbered, from
    ``first_line``. Split an HTTP body with ``body.split("\\n")``, not ``splitlines()``, which also breaks
    at characters a label value may hold (``\\x1c``, ``\\u2028``...); a trailing ``\\r`` is harmless.
    """
    parse = ExpositionParser(default_time, reject_sentinels).line
    for number, text in enumerate(lines, first_line):
        parsed = parse(text, number)
        if parsed is not None:
            yield parsed


def looks_like_exposition(text: str) -> bool:
    """Whether a file's first non-blank line could start exposition text: a comment or a sample's name.

    What tells a CSV (``timestamp,metric_name,...``) or other text named ``.txt`` from a scrape before any
    row is read, so that a wrong format fails at start-up rather than as a file of rejections.
    """
    stripped = text.strip()
    if stripped.startswith("#"):
        return True
    name = re.split(r"[{ \t]", stripped, maxsplit=1)[0]
    return _METRIC_NAME.fullmatch(name) is not None


def _file_time(path: Path) -> datetime:
    """The file's modification time, exactly (from nanoseconds), as UTC: the same on every read of it."""
    try:
        modified = os.stat(path).st_mtime_ns
    except OSError as error:
        raise SourceError(f"{path}: cannot be read: {error.strerror}") from None
    return _EPOCH + timedelta(microseconds=modified // 1000)


def _eof_line_before(path: Path, offset: int) -> int | None:
    """The number of the ``# EOF`` line before byte ``offset``, if any: what a resumed read must know so
    that lines after the marker are rejected as on a read from the top. Reads in bounded chunks."""
    line = 0
    at_line_start = True
    read = 0
    with open_binary(path) as file:
        while read < offset:
            raw = file.readline(_PRESCAN_CHUNK)
            if not raw:
                return None
            read += len(raw)
            if at_line_start:
                line += 1
                if raw.strip() == _EOF_BYTES and raw.endswith(b"\n"):
                    return line
            at_line_start = raw.endswith(b"\n")
    return None


class PrometheusRows(LineSource):
    """The rows of one exposition text file (a saved scrape), read lazily and afresh on every iteration:
    a ``Source``, with the options and behaviour of ``CsvRows`` (loop, resume from ``start``, bounds).

    Comment lines are not records: like blank lines they count nowhere, so ``rows_read`` stays rows
    yielded plus rows rejected. Samples without a timestamp get the file's modification time, taken
    when each pass opens the file: a re-read of an unchanged file yields identical rows.
    """

    def check(self) -> None:
        """Open the file and look at its first line, raising ``SourceError`` so that a missing, empty or
        unreadable file, or one that is plainly not exposition text, fails before anything is sent."""
        self._lines.check(self._first_line)

    def _first_line(self, lines: LinePass) -> None:
        text = lines.first_line("first line")
        if text is None:
            raise SourceError(f"{self.path}: is empty (no samples)")
        if not looks_like_exposition(text):
            raise SourceError(
                f"{self.path}: line {lines.line} does not start Prometheus exposition text "
                f"(neither a '#' comment nor a metric name): {_shown(text.strip())}; "
                "if the file is in another format, set telemetry.format"
            )

    def __iter__(self) -> Generator[MetricRow, None, None]:
        at = self._lines  # ``at.line`` is the number of the line just handed over
        stats = at.stats
        reject = self._reject_record()
        resume_at = self.start.offset if self.start is not None else 0
        with closing(at.passes()) as passes:
            for lines in passes:
                eof_line = _eof_line_before(self.path, resume_at) if resume_at else None
                resume_at = 0  # later passes start from the top
                parse = ExpositionParser(_file_time(self.path), self.sentinels == "reject", eof_line=eof_line).line
                for text in lines:
                    parsed = parse(text.rstrip("\r\n"), at.line)
                    if parsed is None:
                        stats.rows_read -= 1  # a comment is not a record, like a blank line
                    elif isinstance(parsed, Rejection):
                        reject(parsed)
                    else:
                        yield parsed
