"""Telemetry sources: one module per input format over one shared line reader, chosen by settings.

- ``base``: the ``Source`` protocol every format implements (a cold iterable of ``MetricRow`` with
  ``position``, ``stats`` and ``check()``), ``SourceError`` and ``SourceStats``.
- ``lines``: the format-agnostic bounded line reader (bounds, byte positions and resume, BOM, CRLF, NUL,
  over-long lines, loop passes, shrink and rotation at end of file).
- ``dcgm_csv``: the DCGM CSV format (``CsvRows``) on top of it.
- ``json_lines``: JSON lines (``JsonLinesRows``), one object a line with the CSV's field names, so that what
  ``rxstreamer tail`` prints can be streamed again.
- ``prometheus_text``: the Prometheus text exposition format, a saved dcgm-exporter scrape (``PrometheusRows``),
  with its pure line parser (``ExpositionParser``, ``parse_exposition``) shared with live scraping.
- ``observable``: any source as a cold observable.

``open_source`` picks the format named by ``telemetry.format``; ``"auto"`` picks it by the file's
extension (case-insensitive), and an extension no format claims is a ``SourceError`` asking for the
setting rather than a guess.

Adding a format is one module and one line, as JSON lines was added:

1. A module (``rxstreamer/sources/json_lines.py``) with a class whose constructor takes the options of
   ``SourceOpener`` (``path``, ``loop``, ``on_reject``, ``start``, ``max_field_size``, ``sentinels``) and
   that satisfies ``Source``. A line-based format iterates ``LineReader(...).passes()`` and each pass's
   lines, turns each line into a row or a ``Rejection`` (through ``LineReader.reject``) and reports
   ``position`` and ``stats`` from the reader, as ``dcgm_csv`` and ``json_lines`` do.
2. One entry in ``FORMATS`` below: ``"jsonl": SourceFormat((".jsonl", ".ndjson"), JsonLinesRows),``.

``SOURCE_FORMATS`` (what ``telemetry.format`` accepts) and the auto choice follow from ``FORMATS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rxstreamer.model import Position
from rxstreamer.parsing import SentinelMode
from rxstreamer.sources.base import (
    DEFAULT_MAX_FIELD_SIZE,
    RejectHandler,
    Source,
    SourceError,
    SourceOpener,
    SourceShrankError,
    SourceStats,
)
from rxstreamer.sources.dcgm_csv import CsvRows, rows_from_csv
from rxstreamer.sources.json_lines import JsonLinesRows
from rxstreamer.sources.prometheus_text import PrometheusRows

__all__ = [
    "AUTO",
    "DEFAULT_MAX_FIELD_SIZE",
    "FORMATS",
    "SOURCE_FORMATS",
    "CsvRows",
    "JsonLinesRows",
    "PrometheusRows",
    "RejectHandler",
    "Source",
    "SourceError",
    "SourceFormat",
    "SourceOpener",
    "SourceShrankError",
    "SourceStats",
    "format_of",
    "open_source",
    "rows_from_csv",
]


@dataclass(frozen=True)
class SourceFormat:
    """A registered format: the extensions ``auto`` knows it by, and how to open a source of it."""

    extensions: tuple[str, ...]  # lower case, with the dot
    open: SourceOpener


#: Every format by the name ``telemetry.format`` gives it.
FORMATS: dict[str, SourceFormat] = {
    "csv": SourceFormat((".csv",), CsvRows),
    "jsonl": SourceFormat((".jsonl", ".ndjson"), JsonLinesRows),
    "prometheus": SourceFormat((".prom", ".txt"), PrometheusRows),
}

AUTO = "auto"
#: What ``telemetry.format`` accepts: ``auto`` (by extension) or a format's name.
SOURCE_FORMATS: tuple[str, ...] = (AUTO, *FORMATS)


def format_of(path: Path | str, format: str = AUTO) -> str:
    """The name of the format to read ``path`` with: ``format`` itself, or for ``auto`` the one its extension names.

    Raises ``ValueError`` for a format that is not registered, and ``SourceError`` when ``auto`` meets an
    extension that no format claims.
    """
    if format != AUTO:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(SOURCE_FORMATS)}, got {format!r}")
        return format
    extension = Path(path).suffix.lower()
    for name, known in FORMATS.items():
        if extension in known.extensions:
            return name
    claimed = ", ".join(f"{ext} ({name})" for name, known in FORMATS.items() for ext in known.extensions)
    named = f"the extension {extension!r}" if extension else "no extension"
    raise SourceError(
        f"{path}: cannot tell the format from {named} (telemetry.format = {AUTO!r} knows {claimed}); "
        f"set telemetry.format to one of {', '.join(FORMATS)}"
    )


def open_source(
    path: Path | str,
    format: str = AUTO,
    *,
    loop: bool = False,
    on_reject: RejectHandler | None = None,
    start: Position | None = None,
    max_field_size: int = DEFAULT_MAX_FIELD_SIZE,
    sentinels: SentinelMode = "reject",
) -> Source:
    """A source for ``path`` in ``format`` (see ``format_of``); nothing is read until ``check()`` or ``iter()``."""
    opener = FORMATS[format_of(path, format)].open
    return opener(path, loop=loop, on_reject=on_reject, start=start, max_field_size=max_field_size, sentinels=sentinels)
