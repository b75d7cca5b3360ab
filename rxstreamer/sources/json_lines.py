"""The JSON lines format: one JSON object a line, with the DCGM CSV's field names, on the shared line reader.

Its reason to exist is that what ``rxstreamer tail`` prints is valid input: a topic read back to a file can be
replayed, edited with ``jq`` or made by any tool that writes JSON, without going through a CSV. The framing
(bounds, positions and resume, BOM, CRLF, NUL, over-long lines, loop) is ``LineReader``'s, as for CSV; what is
JSON here is only how one line becomes one row. There is no header, so a file is usable from its first line
and ``check()`` only opens it.

The rules, chosen so that a line means what the same record means in a CSV:

- ``timestamp`` (an RFC 3339 string), ``metric_name``, ``uuid`` and ``value`` are required. ``gpu_id``,
  ``device``, ``model_name`` (or ``modelName``), ``hostname`` (or ``Hostname``), ``container``, ``pod`` and
  ``namespace`` are optional strings; ``null`` counts as absent. When both spellings are present the
  snake_case one wins, as ``tail`` writes it. Any other key is ignored, so ``tail --with-batch`` output (with
  ``producer_id``, ``sequence``, ``offset``) and a newer producer's extra keys are fine.
- ``value`` is a JSON number or a string holding one, as a CSV field does; either way its text goes through
  ``parse_value``, so the rules are the CSV's to the digit. Numbers are read as ``Decimal``, never as
  ``float``: a float cannot tell DCGM's int64 sentinels from each other or from a counter next to them, and
  ``NaN`` / ``Infinity`` (which Python's json accepts) are kept as text to be rejected as ``value_not_finite``.
  ``true`` / ``false`` are not numbers.
- ``labels`` is an object of string to string (names as Prometheus allows them), or ``labels_raw`` a
  Prometheus-style ``KEY="value",...`` string as in the CSV. Both at once is rejected (``bad_labels``) rather
  than one silently preferred: they can disagree, and nothing writes both.
- A line that is not a JSON object is ``not_json``; a text field of another JSON type is ``bad_field``; a
  ``\\u`` escape that leaves a lone surrogate in a field the row keeps is ``not_utf8``, since it could never be
  sent. A repeated key is read as Python's json reads it: the last one counts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Generator, Mapping
from contextlib import closing
from decimal import Decimal
from operator import itemgetter
from types import MappingProxyType
from typing import Final, cast

from rxstreamer.model import MetricRow, Rejection
from rxstreamer.parsing import (
    BAD_FIELD,
    BAD_LABELS,
    BAD_TIMESTAMP,
    DETAIL_VALUE_CHARS,
    LABELS_CACHE_SIZE,
    MISSING_METRIC_NAME,
    MISSING_UUID,
    NOT_JSON,
    NOT_UTF8,
    SENTINEL_MODES,
    VALUE_NOT_NUMERIC,
    LabelsError,
    SentinelMode,
    SentinelReading,
    _shown,
    flag_sentinel,
    parse_labels,
    parse_timestamp,
    parse_value,
)
from rxstreamer.sources.lines import LinePass, LineSource, raw_text

__all__ = ["JsonLineParser", "JsonLinesRows"]

# The text fields of a row, in MetricRow's order; the second spellings are the CSV header's.
_TEXT_FIELDS: Final = tuple(name for name in MetricRow._fields if name not in ("timestamp", "value", "labels", "line"))
_OTHER_SPELLINGS: Final = {"model_name": "modelName", "hostname": "Hostname"}
_get_text_fields: Final = itemgetter(*_TEXT_FIELDS)
# An RFC 3339 timestamp is at most about 35 characters; longer strings are rejected without being cached.
_MAX_TIMESTAMP_CHARS: Final = 64
_LABEL_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LONE_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_NO_LABELS: Final = parse_labels("")

# Every JSON number (and NaN / Infinity) as a Decimal: exact, so its text is the number as written.
_DECODER: Final = json.JSONDecoder(parse_float=Decimal, parse_int=Decimal, parse_constant=Decimal)
_raw_decode = _DECODER.raw_decode


class _NotJsonError(ValueError):
    """The line is not one JSON object; the message says what it is instead."""


def _json_type(value: object) -> str:
    """The JSON type of a decoded value, with its article, for detail messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, Decimal):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _wrong_type(name: str, value: object, wanted: str) -> str:
    """A detail for a field of the wrong JSON type: ``gpu_id=0 is a number, not a string``.

    Scalars are shown as JSON spells them (cut short like ``_shown``); arrays and objects only by their type,
    since their contents say nothing about what was wanted instead.
    """
    kind = _json_type(value)
    if isinstance(value, str):
        return f"{name}={_shown(value)} is {kind}, not {wanted}"
    if isinstance(value, bool):
        return f"{name}={'true' if value else 'false'} is {kind}, not {wanted}"
    if isinstance(value, Decimal):
        text = str(value)
        text = text if len(text) <= DETAIL_VALUE_CHARS else text[:DETAIL_VALUE_CHARS] + "..."
        return f"{name}={text} is {kind}, not {wanted}"
    return f"{name} is {kind}, not {wanted}"


def _decode(text: str) -> dict[str, object]:
    """The line's object, or ``_NotJsonError`` saying why there is none.

    ``raw_decode`` first: it skips the two regular expressions ``decode`` spends on surrounding whitespace,
    a fifth of the time per line. Whatever it does not take (leading space, trailing data, any error) goes
    through ``_decode_fully``, whose verdict and message are the standard ones.
    """
    try:
        record, end = _raw_decode(text)
    except (ValueError, RecursionError, ArithmeticError):
        record, end = _decode_fully(text), len(text)
    if end != len(text) and not text[end:].isspace():
        record = _decode_fully(text)
    if not isinstance(record, dict):
        raise _NotJsonError(f"the line is {_json_type(record)}, not a JSON object")
    return record


def _decode_fully(text: str) -> object:
    """The slow path: a byte-order mark left by concatenated files is not held against the line.

    The line break is cut first, so that an error's column is on the line rather than past its end.
    """
    try:
        return _DECODER.decode(text.lstrip("\ufeff").rstrip("\r\n"))
    except json.JSONDecodeError as error:
        raise _NotJsonError(f"not JSON: {error.msg} (column {error.colno})") from None
    except RecursionError:
        raise _NotJsonError("not JSON this reader can take: nested too deeply") from None
    except ArithmeticError:  # decimal.InvalidOperation: an exponent beyond what Decimal can hold
        raise _NotJsonError("not JSON this reader can take: a number's exponent is out of range") from None


def _text_fields(record: dict[str, object]) -> tuple[str, ...] | str:
    """The text fields in MetricRow's order, or why not: one look when all are strings, as ``tail`` writes them."""
    try:
        texts: tuple[str, ...] = _get_text_fields(record)
    except KeyError:  # an optional field left out, or spelled as in the CSV header
        return _text_fields_slowly(record)
    for text in texts:
        if type(text) is not str:
            return _text_fields_slowly(record)
    return texts


def _text_fields_slowly(record: dict[str, object]) -> tuple[str, ...] | str:
    """The text fields when the quick look found one absent, null or not a string: the values, or why not.

    Absent and null read as empty (the required ones are then rejected as missing by the caller), the second
    spelling stands in for an absent first one, and any other JSON type is a ``bad_field``.
    """
    values: list[str] = []
    for name in _TEXT_FIELDS:
        key, value = name, record.get(name)
        if value is None and name in _OTHER_SPELLINGS:
            key = _OTHER_SPELLINGS[name]
            value = record.get(key)
        if value is None:
            value = ""
        if not isinstance(value, str):
            return _wrong_type(key, value, "a string")
        values.append(value)
    return tuple(values)


def _checked_labels(labels: dict[str, object]) -> Mapping[str, str] | str:
    """A ``labels`` object as a read-only mapping, or why it is not one: the same names ``labels_raw`` allows."""
    for name, value in labels.items():
        if _LABEL_NAME.fullmatch(name) is None:
            return f"labels has the key {_shown(name)}, which is not a Prometheus label name"
        if not isinstance(value, str):
            return _wrong_type(f"labels[{name!r}]", value, "a string")
    return MappingProxyType(cast(dict[str, str], dict(labels)))  # every value was just checked


class _LabelSets:
    """One shared mapping per distinct ``labels`` object, as ``parse_labels`` does per ``labels_raw`` string.

    Rows with the same labels then share one mapping, which is what the encoder's description cache keys by:
    without sharing, every row would be encoded from scratch. The key is the object's items in the order
    written (a JSON value that is not a string never equals a string, so a hit is the same labels exactly).
    Bounded: cleared when full, which costs a few rebuilds, never a wrong mapping.
    """

    def __init__(self, limit: int = LABELS_CACHE_SIZE) -> None:
        self._limit = limit
        self._known: dict[tuple[tuple[str, object], ...], Mapping[str, str]] = {}

    def __call__(self, labels: object) -> Mapping[str, str] | str:
        if not isinstance(labels, dict):
            return _wrong_type("labels", labels, "an object")
        if not labels:
            return _NO_LABELS
        key = tuple(labels.items())
        try:
            known = self._known.get(key)
        except TypeError:  # an array or object among the values: not hashable, and not valid either
            return _checked_labels(labels)
        if known is not None:
            return known
        checked = _checked_labels(labels)
        if not isinstance(checked, str):
            if len(self._known) >= self._limit:
                self._known.clear()
            self._known[key] = checked
        return checked


def _labels_raw(labels_raw: object) -> Mapping[str, str] | str:
    """``labels_raw`` parsed as the CSV's column is, or why it cannot be."""
    if not isinstance(labels_raw, str):
        return _wrong_type("labels_raw", labels_raw, "a string")
    try:
        return parse_labels(labels_raw)
    except LabelsError as error:
        return str(error)


def _value_text(value: object) -> str | None:
    """The text of a JSON number, or of a string as a CSV field holds it; None for any other JSON type."""
    if isinstance(value, Decimal):
        return str(value)  # exact: the digits as written, in Decimal's spelling (1E+16), which float() reads
    if isinstance(value, str):
        return value
    return None


def _lone_surrogate(row: MetricRow) -> str | None:
    """The first field of ``row`` holding a lone surrogate (from a ``\\u`` escape), which UTF-8 cannot carry."""
    for name, text in zip(_TEXT_FIELDS, row[1:10], strict=True):
        if _LONE_SURROGATE.search(text):
            return name
    for name, text in row.labels.items():
        if _LONE_SURROGATE.search(text):
            return f"labels[{name!r}]"
    return None


class JsonLineParser:
    """Turns one line of JSON into a row or a ``Rejection``; holds the label sets shared between rows.

    Each line is checked in the order of ``RECORD_REASONS``: the text fields' types (``bad_field``), uuid,
    metric name, timestamp, value, then labels, and only the first problem found is reported.
    """

    def __init__(self, *, sentinels: SentinelMode = "reject") -> None:
        if sentinels not in SENTINEL_MODES:
            raise ValueError(f"sentinels must be one of {', '.join(SENTINEL_MODES)}, got {sentinels!r}")
        self._reject_sentinels = sentinels == "reject"
        self._label_sets = _LabelSets()

    def parse(self, text: str, line: int) -> MetricRow | Rejection:
        """Parse one line (line break included or not); ``line`` is its number, carried into the row or rejection."""
        try:
            record = _decode(text)
        except _NotJsonError as error:
            return Rejection(line, NOT_JSON, str(error), raw_text(text))
        parsed = self._row(record, line)
        if isinstance(parsed, Rejection):
            return Rejection(line, parsed.reason, parsed.detail, raw_text(text))
        if "\\u" in text:  # only an escape can make a lone surrogate: the reader decoded the line as UTF-8
            field = _lone_surrogate(parsed)
            if field is not None:
                detail = f"{field} holds a lone surrogate (an unpaired \\u escape), which is not UTF-8 text"
                return Rejection(line, NOT_UTF8, detail, raw_text(text))
        return parsed

    # PLR0911: one early return per rejection reason keeps the per-line path flat and cheap.
    def _row(self, record: dict[str, object], line: int) -> MetricRow | Rejection:  # noqa: PLR0911
        """The row of a decoded line, or why not (a ``Rejection`` without the raw text, which ``parse`` adds)."""
        texts = _text_fields(record)
        if isinstance(texts, str):
            return Rejection(line, BAD_FIELD, texts)
        metric_name, gpu_id, device, uuid, model_name, hostname, container, pod, namespace = texts
        if not uuid or uuid.isspace():
            return Rejection(line, MISSING_UUID, _empty(record, "uuid", uuid))
        if not metric_name or metric_name.isspace():
            return Rejection(line, MISSING_METRIC_NAME, _empty(record, "metric_name", metric_name))
        get = record.get
        stamp = get("timestamp")
        timestamp = parse_timestamp(stamp) if isinstance(stamp, str) and len(stamp) <= _MAX_TIMESTAMP_CHARS else None
        if timestamp is None:
            return Rejection(line, BAD_TIMESTAMP, _bad_timestamp(stamp))
        value_text = _value_text(get("value"))
        if value_text is None:
            return Rejection(line, VALUE_NOT_NUMERIC, _not_a_number(get("value")))
        value = parse_value(value_text, line, reject_sentinels=self._reject_sentinels)
        if isinstance(value, Rejection):
            return value
        labels = self._labels(get("labels"), get("labels_raw"))
        if isinstance(labels, str):
            return Rejection(line, BAD_LABELS, labels)
        if type(value) is SentinelReading:
            labels, value = flag_sentinel(labels, value)
        return MetricRow(
            timestamp, metric_name, gpu_id, device, uuid, model_name, hostname, container, pod, namespace, value,
            labels, line,
        )  # fmt: skip

    def _labels(self, labels: object, labels_raw: object) -> Mapping[str, str] | str:
        """The row's labels from whichever of ``labels`` and ``labels_raw`` is given, or why there are none."""
        if labels is not None:
            if labels_raw is not None:
                return "labels and labels_raw are both given; give one"
            return self._label_sets(labels)
        if labels_raw is not None:
            return _labels_raw(labels_raw)
        return _NO_LABELS


def _empty(record: dict[str, object], name: str, text: str) -> str:
    if record.get(name) is None:
        return f"{name} is missing" if name not in record else f"{name} is null"
    return f"{name}={_shown(text)} is empty"


def _bad_timestamp(stamp: object) -> str:
    if stamp is None:
        return "timestamp is missing"
    if isinstance(stamp, str):
        return f"timestamp={_shown(stamp)} is not RFC 3339"
    return _wrong_type("timestamp", stamp, "an RFC 3339 string")


def _not_a_number(value: object) -> str:
    if value is None:
        return "value is missing"
    return _wrong_type("value", value, "a number")


class JsonLinesRows(LineSource):
    """The rows of one JSON lines file, read lazily and afresh on every iteration: a ``Source``.

    Takes the options every format takes (see ``SourceOpener``), with the meanings ``CsvRows`` gives them:
    ``loop`` replays the file from the top (a pass from the top without a good row stops it), ``start`` (a
    ``position`` taken earlier) continues there with the same line numbers, ``max_field_size`` bounds a line
    in bytes, and ``sentinels`` rejects or flags DCGM's sentinel values. ``stats`` accumulates across passes
    and iterations.
    """

    def _prepare(self) -> None:
        self._parser = JsonLineParser(sentinels=self.sentinels)

    def check(self) -> None:
        """Open the file (and check ``start`` against it), so a missing or unreadable file fails at start-up.

        There is no header to read: every line stands on its own.
        """
        self._lines.check(_no_preamble)

    def __iter__(self) -> Generator[MetricRow, None, None]:
        at = self._lines  # the position: ``at.line`` is the number of the line just handed over
        reject = self._reject_record()
        parse = self._parser.parse
        with closing(at.passes()) as passes:
            for lines in passes:
                for text in lines:
                    parsed = parse(text, at.line)
                    if isinstance(parsed, Rejection):
                        reject(parsed)
                    else:
                        yield parsed


def _no_preamble(lines: LinePass) -> None:
    """JSON lines have no header: every line is a record."""
