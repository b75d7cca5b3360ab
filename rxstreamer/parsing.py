"""CSV records to ``MetricRow``s: pure, so it can be tested without files and reused by any source.

A record is the list of already-unquoted fields that ``csv.reader`` yields. ``RowParser.parse`` runs once per
row, so everything that depends only on the header is worked out once in ``RowParser.__init__``, and the two
strings that repeat across rows (timestamps and ``labels_raw``) are parsed once per distinct value through
bounded caches.

A record that cannot become a row is returned as a ``Rejection`` rather than raised: one bad line in a
million is something to count and report, not a reason to stop the stream. Reasons are stable codes that
callers may count by. ``TEXT_REASONS`` are found by a source before a record is split into fields (the text
itself is unusable); ``RECORD_REASONS`` by ``RowParser.parse`` (and the JSON lines parser), and when a record
has several problems only the first found is reported, checked in the order of ``RECORD_REASONS``.

What is tolerated rather than rejected, because exporters and spreadsheets really do it: columns in any
order and any of the spellings ``_column_key`` folds together; unknown extra columns (ignored, so a newer
exporter adding a column does not break older streamers); optional columns absent (read as empty); spaces
around a number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from operator import itemgetter
from types import MappingProxyType
from typing import Final, Literal, get_args

from rxstreamer.model import MetricRow, Rejection

# Stable rejection codes found in a record's text, before it is split into fields (see rxstreamer.sources.dcgm_csv).
FIELD_TOO_LARGE: Final = "field_too_large"  # a line or record longer than max_field_size
NUL_BYTE: Final = "nul_byte"
NOT_UTF8: Final = "not_utf8"
UNTERMINATED_QUOTE: Final = "unterminated_quote"  # a quoted field that does not close within the bound
CSV_ERROR: Final = "csv_error"  # anything else the csv module refuses, such as a bare carriage return
NOT_JSON: Final = "not_json"  # a JSON lines line that is not one JSON object (see rxstreamer.sources.json_lines)
NOT_A_SAMPLE: Final = "not_a_sample"  # exposition text that is neither a comment nor `name{labels} value [ts]`
AFTER_EOF: Final = "after_eof"  # exposition text after OpenMetrics' `# EOF` end marker
TEXT_REASONS: Final = (
    FIELD_TOO_LARGE,
    NUL_BYTE,
    NOT_UTF8,
    UNTERMINATED_QUOTE,
    CSV_ERROR,
    NOT_JSON,
    NOT_A_SAMPLE,
    AFTER_EOF,
)

# Stable rejection codes found by RowParser.parse, in the order a record is checked.
FIELD_COUNT: Final = "field_count"
REPEATED_HEADER: Final = "repeated_header"  # the header again, as in files concatenated with `cat`
BAD_FIELD: Final = "bad_field"  # a field of the wrong type, where the format has types (JSON lines)
MISSING_UUID: Final = "missing_uuid"
MISSING_METRIC_NAME: Final = "missing_metric_name"
BAD_TIMESTAMP: Final = "bad_timestamp"
VALUE_NOT_NUMERIC: Final = "value_not_numeric"
VALUE_NOT_FINITE: Final = "value_not_finite"
DCGM_SENTINEL: Final = "dcgm_sentinel"
BAD_LABELS: Final = "bad_labels"
RECORD_REASONS: Final = (
    FIELD_COUNT,
    REPEATED_HEADER,
    BAD_FIELD,
    MISSING_UUID,
    MISSING_METRIC_NAME,
    BAD_TIMESTAMP,
    VALUE_NOT_NUMERIC,
    VALUE_NOT_FINITE,
    DCGM_SENTINEL,
    BAD_LABELS,
)
REJECTION_REASONS: Final = (*TEXT_REASONS, *RECORD_REASONS)

SentinelMode = Literal["reject", "flag"]
SENTINEL_MODES: Final[tuple[SentinelMode, ...]] = get_args(SentinelMode)
SENTINEL_LABEL: Final = "dcgm_sentinel"

# DCGM's special values, as dcgm_structs.h (and nvcmvalue.h) define them: a BLANK base per type, and
# NOT_FOUND, NOT_SUPPORTED and NOT_PERMISSIONED at BLANK + 1, + 2 and + 3. Checked against the header text.
DCGM_INT32_BLANK: Final = 0x7FFFFFF0  # 2147483632
DCGM_INT64_BLANK: Final = 0x7FFFFFFFFFFFFFF0  # 9223372036854775792
DCGM_FP64_BLANK: Final = 140737488355328.0  # 2**47: a double still counts by 1 there
SENTINEL_KINDS: Final = ("blank", "not_found", "not_supported", "not_permissioned")
# Exact integer value -> (DCGM's name, kind). Only the named values count: DCGM's own IS_BLANK macros also
# treat everything above BLANK as blank, but outside the int32/int64 top ranges that would swallow real
# readings (an fp64 energy counter may pass 2**47), and the names are what the detail reports.
_SENTINELS: Final[dict[int, tuple[str, str]]] = {
    base + step: (f"DCGM_{family}_{kind.upper()}", kind)
    for family, base in (("INT32", DCGM_INT32_BLANK), ("FP64", int(DCGM_FP64_BLANK)), ("INT64", DCGM_INT64_BLANK))
    for step, kind in enumerate(SENTINEL_KINDS)
}
# No reading below this can be a sentinel: the only per-row cost of the check is one float comparison.
_SMALLEST_SENTINEL: Final = float(DCGM_INT32_BLANK)
_LARGEST_SENTINEL: Final = DCGM_INT64_BLANK + len(SENTINEL_KINDS) - 1

REQUIRED_COLUMNS = ("timestamp", "metric_name", "uuid", "value")
OPTIONAL_COLUMNS = (
    "gpu_id",
    "device",
    "model_name",
    "hostname",
    "container",
    "pod",
    "namespace",
    "labels_raw",
)
# The order MetricRow takes its fields in (labels come from labels_raw, line from the caller).
_ROW_COLUMNS = (
    "timestamp",
    "metric_name",
    "gpu_id",
    "device",
    "uuid",
    "model_name",
    "hostname",
    "container",
    "pod",
    "namespace",
    "value",
    "labels_raw",
)

DETAIL_VALUE_CHARS = 80
TIMESTAMP_CACHE_SIZE = 4096
# labels_raw differs per GPU and metric (it carries __name__), so a cluster of N GPUs has 10 * N distinct
# values: 8192 covers 800 GPUs; beyond that rows stay correct but stop sharing one mapping.
LABELS_CACHE_SIZE = 8192
# An RFC 3339 timestamp is at most about 35 characters; longer strings are rejected without being cached.
_MAX_TIMESTAMP_CHARS = 64

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,
)
_LABEL_PAIR = r'[A-Za-z_][A-Za-z0-9_]*="(?:[^"\\]|\\.)*"'
_LABELS = re.compile(rf"(?:{_LABEL_PAIR}(?:,{_LABEL_PAIR})*,?)?", re.DOTALL)
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"', re.DOTALL)
# The escapes of the Prometheus text format; any other backslash is kept as written, as Prometheus does.
_LABEL_ESCAPE = re.compile(r'\\([\\"n])')
_UNESCAPED = {"\\": "\\", '"': '"', "n": "\n"}
_NO_LABELS: Mapping[str, str] = MappingProxyType({})
# A NamedTuple's own __new__ is a Python function taking the fields as arguments: building the row straight
# from a tuple skips that call, a tenth of a row's parsing (bench/profile_streamer.py).
_new_row = tuple.__new__


class HeaderError(ValueError):
    """The header lacks a column that every row needs, so no row of the file could be parsed."""

    def __init__(self, missing: Sequence[str], found: Sequence[str]) -> None:
        self.missing = tuple(missing)
        self.found = tuple(found)
        super().__init__(f"missing required column(s) {', '.join(self.missing)}; found: {', '.join(self.found)}")


class LabelsError(ValueError):
    """``labels_raw`` is not a ``KEY="value",...`` list."""


def _column_key(name: str) -> str:
    """Fold the spellings seen in exports (``modelName``, ``Hostname``, ``labels_raw``) to one key."""
    return name.strip().lstrip("\ufeff").lower().replace("_", "")


def _header_cell(text: str) -> str:
    """Fold a cell for comparing a record with the header: case and surrounding space (and a BOM, which a
    file concatenated from several exports carries into the middle) do not make a header a data row."""
    return text.strip().lstrip("\ufeff").strip().lower()


def _shown(text: str) -> str:
    """Quote an offending value for a detail message, cut short so one bad field cannot flood a log."""
    if len(text) <= DETAIL_VALUE_CHARS:
        return repr(text)
    return repr(text[:DETAIL_VALUE_CHARS]) + "..."


def _not_numeric(value_text: str, line: int) -> Rejection:
    return Rejection(line, VALUE_NOT_NUMERIC, f"value={_shown(value_text)} is not a number")


def _unescape(match: re.Match[str]) -> str:
    return _UNESCAPED[match.group(1)]


def _parse_labels_uncached(raw: str) -> Mapping[str, str]:
    if not raw:
        return _NO_LABELS
    if _LABELS.fullmatch(raw) is None:
        raise LabelsError(f'labels_raw={_shown(raw)} is not a KEY="value",... list')
    labels: dict[str, str] = {}
    for key, escaped in _LABEL.findall(raw):
        if key in labels:
            raise LabelsError(f"labels_raw repeats the label {key!r}")
        labels[key] = _LABEL_ESCAPE.sub(_unescape, escaped) if "\\" in escaped else escaped
    return MappingProxyType(labels)


@lru_cache(maxsize=LABELS_CACHE_SIZE)
def parse_labels(raw: str) -> Mapping[str, str]:
    """Parse ``KEY="value",...`` (Prometheus label syntax) into a read-only mapping.

    Cached per distinct string, so rows with the same labels share one mapping and the per-row cost is a
    dictionary lookup. Raises ``LabelsError`` when ``raw`` is not a label list, including a repeated key
    (Prometheus rejects those too). A trailing comma is allowed, as in Prometheus.
    """
    return _parse_labels_uncached(raw)


@lru_cache(maxsize=LABELS_CACHE_SIZE)
def _flagged_labels(raw: str, kind: str) -> Mapping[str, str]:
    """The labels of ``raw`` plus ``dcgm_sentinel=<kind>``, shared between rows like ``parse_labels``."""
    return MappingProxyType({**parse_labels(raw), SENTINEL_LABEL: kind})


def dcgm_sentinel(value_text: str) -> tuple[str, str] | None:
    """``(DCGM's name, kind)`` when the text spells one of DCGM's sentinels exactly, else None.

    Compared on the exact number the text spells, not on its float: doubles are 2048 apart near 2**63, so
    ``float("9223372036854775794") == float("9223372036854775792")`` and the float cannot tell NOT_SUPPORTED
    from BLANK (or from a real counter reading next to them). Integer text goes through ``int``, anything
    else (``"140737488355328.000000"``, ``"9.223372036854775794e18"``) through ``Decimal``.
    """
    text = value_text.strip()
    try:
        number = int(text)
    except ValueError:
        try:
            exact = Decimal(text)
        except InvalidOperation:
            return None
        # The bounds first: int() of a huge exponent would build a huge integer.
        if not exact.is_finite() or not DCGM_INT32_BLANK <= exact <= _LARGEST_SENTINEL:
            return None
        if exact != exact.to_integral_value():
            return None
        number = int(exact)
    return _SENTINELS.get(number)


class SentinelReading(float):
    """A value that spells one of DCGM's sentinels, kept (``sentinels = "flag"``) with the kind it is."""

    kind: str

    def __new__(cls, value: float, kind: str) -> SentinelReading:
        reading = super().__new__(cls, value)
        reading.kind = kind
        return reading


def parse_value(value_text: str, line: int, *, reject_sentinels: bool = True) -> float | Rejection:
    """A reading's text as a float, or why it is none, for every format: the rules of ``VALUE_*`` and
    ``DCGM_SENTINEL``. A kept sentinel comes back as a ``SentinelReading``, so the caller can flag its row."""
    try:
        value = float(value_text)  # float() strips surrounding whitespace itself
    except ValueError:
        return _not_numeric(value_text, line)
    if "_" in value_text:  # float() takes Python's 1_000; no exporter writes that
        return _not_numeric(value_text, line)
    if not math.isfinite(value):
        return Rejection(line, VALUE_NOT_FINITE, f"value={_shown(value_text)} is not finite")
    sentinel = dcgm_sentinel(value_text) if value >= _SMALLEST_SENTINEL else None
    if sentinel is None:
        return value
    name, kind = sentinel
    if reject_sentinels:
        return Rejection(
            line, DCGM_SENTINEL, f"value={_shown(value_text)} is DCGM's {kind} sentinel ({name}), not a reading"
        )
    return SentinelReading(value, kind)


def flag_sentinel(labels: Mapping[str, str], value: float) -> tuple[Mapping[str, str], float]:
    """The labels and value a row carries: for a kept sentinel, ``labels`` plus ``dcgm_sentinel=<kind>`` and
    the value as a plain float; anything else as it is."""
    if type(value) is not SentinelReading:
        return labels, value
    return MappingProxyType({**labels, SENTINEL_LABEL: value.kind}), float(value)


@lru_cache(maxsize=TIMESTAMP_CACHE_SIZE)
def parse_timestamp(text: str) -> datetime | None:
    """Parse an RFC 3339 timestamp to an aware UTC datetime, or None when it is not one.

    ``datetime.fromisoformat`` alone would also accept dates without a time and times without an offset;
    a time without an offset is ambiguous, so the RFC 3339 shape is checked first. Cached because an export
    holds a handful of distinct timestamps across millions of rows.
    """
    if _RFC3339.fullmatch(text) is None:
        return None
    try:
        return datetime.fromisoformat(text.upper()).astimezone(UTC)
    except ValueError:  # the right shape but not a real instant, e.g. month 13 or second 60
        return None


class RowParser:
    """Turns the records of one file into rows, using that file's header to find each column by name.

    ``sentinels`` says what to do with a DCGM sentinel value (a reading DCGM could not take): ``"reject"``
    it (reason ``dcgm_sentinel``), or ``"flag"`` it: publish the row, value as written, with the label
    ``dcgm_sentinel=<kind>`` so that a consumer can tell it from a reading. Turning it into 0 or dropping it
    silently would both lie about the GPU.
    """

    def __init__(self, header: Sequence[str], *, sentinels: SentinelMode = "reject") -> None:
        if sentinels not in SENTINEL_MODES:
            raise ValueError(f"sentinels must be one of {', '.join(SENTINEL_MODES)}, got {sentinels!r}")
        self._reject_sentinels = sentinels == "reject"
        self._header = tuple(_header_cell(name) for name in header)
        indexes: dict[str, int] = {}
        for index, name in enumerate(header):
            indexes.setdefault(_column_key(name), index)  # the first of duplicate columns wins
        missing = [name for name in REQUIRED_COLUMNS if _column_key(name) not in indexes]
        if missing:
            raise HeaderError(missing, [name.strip() for name in header])
        self.width = len(header)
        # Absent optional columns read an empty string appended after the last real field.
        self._pad = any(_column_key(name) not in indexes for name in OPTIONAL_COLUMNS)
        self._fields = itemgetter(*(indexes.get(_column_key(name), self.width) for name in _ROW_COLUMNS))
        self.uuid_index = indexes[_column_key("uuid")]  # for a source that looks at the uuid before parsing

    def is_header(self, fields: Sequence[str]) -> bool:
        """Whether ``fields`` is this file's header again (compared without case or surrounding space)."""
        return len(fields) == len(self._header) and tuple(_header_cell(text) for text in fields) == self._header

    # PLR0911: one early return per rejection reason keeps the per-row path flat and cheap.
    def parse(self, fields: Sequence[str], line: int) -> MetricRow | Rejection:  # noqa: PLR0911
        """Parse one record; ``line`` is where it starts in the file, carried into the row or rejection."""
        if len(fields) != self.width:
            return Rejection(line, FIELD_COUNT, f"expected {self.width} fields, found {len(fields)}")
        record = fields
        if self._pad:
            fields = [*fields, ""]
        (
            timestamp_text,
            metric_name,
            gpu_id,
            device,
            uuid,
            model_name,
            hostname,
            container,
            pod,
            namespace,
            value_text,
            labels_raw,
        ) = self._fields(fields)
        if not uuid or uuid.isspace():
            return Rejection(line, MISSING_UUID, f"uuid={_shown(uuid)} is empty")
        if not metric_name or metric_name.isspace():
            return Rejection(line, MISSING_METRIC_NAME, f"metric_name={_shown(metric_name)} is empty")
        timestamp = parse_timestamp(timestamp_text) if len(timestamp_text) <= _MAX_TIMESTAMP_CHARS else None
        if timestamp is None:
            # Checked only here, off the good path: the header's timestamp cell ("timestamp" in some spelling)
            # can never be RFC 3339, so every repeated header reaches this branch.
            if self.is_header(record):
                return Rejection(line, REPEATED_HEADER, "the header line again, in the middle of the data")
            return Rejection(line, BAD_TIMESTAMP, f"timestamp={_shown(timestamp_text)} is not RFC 3339")
        try:  # the common case inline: a plain finite number below every sentinel
            value = float(value_text)
        except ValueError:
            value = math.nan
        if not -math.inf < value < _SMALLEST_SENTINEL or "_" in value_text:  # NaN fails the comparison too
            checked = parse_value(value_text, line, reject_sentinels=self._reject_sentinels)
            if isinstance(checked, Rejection):
                return checked
            value = checked
        try:
            labels = parse_labels(labels_raw)
        except LabelsError as error:
            return Rejection(line, BAD_LABELS, str(error))
        if type(value) is SentinelReading:
            labels, value = _flagged_labels(labels_raw, value.kind), float(value)
        return _new_row(
            MetricRow,
            (
                timestamp,
                metric_name,
                gpu_id,
                device,
                uuid,
                model_name,
                hostname,
                container,
                pod,
                namespace,
                value,
                labels,
                line,
            ),
        )
