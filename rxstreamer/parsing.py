"""CSV records to ``MetricRow``s: pure, so it can be tested without files and reused by any source.

A record is the list of already-unquoted fields that ``csv.reader`` yields. ``RowParser.parse`` runs once per
row, so everything that depends only on the header is worked out once in ``RowParser.__init__``, and the two
strings that repeat across rows (timestamps and ``labels_raw``) are parsed once per distinct value through
bounded caches.

A record that cannot become a row is returned as a ``Rejection`` rather than raised: one bad line in a
million is something to count and report, not a reason to stop the stream. Reasons are stable codes that
callers may count by; when a record has several problems only the first found is reported, checked in the
order of ``REJECTION_REASONS``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from operator import itemgetter
from types import MappingProxyType

from rxstreamer.model import MetricRow, Rejection

# Stable rejection codes, in the order a record is checked.
FIELD_COUNT = "field_count"
MISSING_UUID = "missing_uuid"
MISSING_METRIC_NAME = "missing_metric_name"
BAD_TIMESTAMP = "bad_timestamp"
VALUE_NOT_NUMERIC = "value_not_numeric"
VALUE_NOT_FINITE = "value_not_finite"
BAD_LABELS = "bad_labels"
REJECTION_REASONS = (
    FIELD_COUNT,
    MISSING_UUID,
    MISSING_METRIC_NAME,
    BAD_TIMESTAMP,
    VALUE_NOT_NUMERIC,
    VALUE_NOT_FINITE,
    BAD_LABELS,
)

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
    """Turns the records of one file into rows, using that file's header to find each column by name."""

    def __init__(self, header: Sequence[str]) -> None:
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

    # PLR0911: one early return per rejection reason keeps the per-row path flat and cheap.
    def parse(self, fields: Sequence[str], line: int) -> MetricRow | Rejection:  # noqa: PLR0911
        """Parse one record; ``line`` is where it starts in the file, carried into the row or rejection."""
        if len(fields) != self.width:
            return Rejection(line, FIELD_COUNT, f"expected {self.width} fields, found {len(fields)}")
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
            return Rejection(line, BAD_TIMESTAMP, f"timestamp={_shown(timestamp_text)} is not RFC 3339")
        try:
            value = float(value_text)  # float() strips surrounding whitespace itself
        except ValueError:
            return _not_numeric(value_text, line)
        if "_" in value_text:  # float() takes Python's 1_000; no exporter writes that
            return _not_numeric(value_text, line)
        if not math.isfinite(value):
            return Rejection(line, VALUE_NOT_FINITE, f"value={_shown(value_text)} is not finite")
        try:
            labels = parse_labels(labels_raw)
        except LabelsError as error:
            return Rejection(line, BAD_LABELS, str(error))
        return MetricRow(
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
        )
