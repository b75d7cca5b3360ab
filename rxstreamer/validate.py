"""``rxstreamer validate FILE``: read a telemetry file the way the streamer would and say what is in it.

The point is to find out before streaming (or after a run that rejected rows) exactly what is wrong with a
file: how many rows would be published, how many rejected and why, with line numbers to look at, and
what the good rows cover. It opens the file through ``open_source``, choosing the format and applying the
limits the way the streamer does, so the two can never disagree about a row.

Exit codes, for scripts and CI: 0 when every row is good, 1 when any row was rejected; a file that cannot
be read at all raises ``SourceError`` (the command line maps it to 2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rxstreamer.model import Rejection
from rxstreamer.parsing import SENTINEL_LABEL, SentinelMode
from rxstreamer.sources import AUTO, DEFAULT_MAX_FIELD_SIZE, format_of, open_source

__all__ = ["Example", "ValidationReport", "render_error_json", "render_json", "render_text", "validate_file"]

# How much of a rejected record the text report shows; the JSON report carries Rejection.raw as it is.
_TEXT_RAW_CHARS = 120


@dataclass(frozen=True)
class Example:
    """One rejected record, to show where to look."""

    line: int
    detail: str
    raw: str


@dataclass(frozen=True)
class ValidationReport:
    """What reading a file found: counts, examples of each problem, and what the good rows cover."""

    path: str
    rows: int  # data records read: good + rejected
    good: int
    rejected: int
    rejected_by_reason: dict[str, int]
    examples: dict[str, list[Example]]  # per reason, the first few, in file order
    gpus: int  # distinct uuids among good rows
    hosts: int  # distinct non-empty hostnames among good rows
    metrics: list[str]  # distinct metric names among good rows, sorted
    first_timestamp: datetime | None
    last_timestamp: datetime | None
    sentinels: SentinelMode
    flagged_sentinels: int = 0  # good rows carrying a dcgm_sentinel label (sentinels="flag")
    max_field_size: int = DEFAULT_MAX_FIELD_SIZE
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 when the file is clean, 1 when any row was rejected."""
        return 1 if self.rejected else 0


class _Examples:
    """Keeps the first ``limit`` rejections of each reason: the report stays small however bad the file."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.by_reason: dict[str, list[Example]] = {}

    def __call__(self, rejection: Rejection) -> None:
        kept = self.by_reason.setdefault(rejection.reason, [])
        if len(kept) < self.limit:
            kept.append(Example(rejection.line, rejection.detail, rejection.raw))


def validate_file(
    path: Path | str,
    *,
    max_field_size: int = DEFAULT_MAX_FIELD_SIZE,
    sentinels: SentinelMode = "reject",
    examples: int = 5,
    format: str = AUTO,
) -> ValidationReport:
    """Read the whole file once and report on it; raises ``SourceError`` when it cannot be read at all.

    ``format`` is ``telemetry.format``: ``auto`` chooses by the file's extension, as the streamer does.

    Memory grows with the distinct GPUs, hosts and metrics of the good rows (a cluster, not the file) and
    with ``examples`` per reason, never with the number of rows.
    """
    if examples < 0:
        raise ValueError(f"examples must not be negative, got {examples}")
    kept = _Examples(examples)
    source = open_source(path, format, on_reject=kept, max_field_size=max_field_size, sentinels=sentinels)
    source.check()
    uuids: set[str] = set()
    hosts: set[str] = set()
    metrics: set[str] = set()
    first: datetime | None = None
    last: datetime | None = None
    good = flagged = 0
    for row in source:
        good += 1
        uuids.add(row.uuid)
        if row.hostname:
            hosts.add(row.hostname)
        metrics.add(row.metric_name)
        if first is None or row.timestamp < first:
            first = row.timestamp
        if last is None or row.timestamp > last:
            last = row.timestamp
        if SENTINEL_LABEL in row.labels:
            flagged += 1
    stats = source.stats
    notes = []
    if stats.rows_read == 0:  # only CSV has a header; a scrape of comments alone has no records either
        has_header = format_of(path, format) == "csv"
        notes.append("the file has a header but no data rows" if has_header else "the file has no data rows")
    return ValidationReport(
        path=str(path),
        rows=stats.rows_read,
        good=good,
        rejected=stats.rows_rejected,
        rejected_by_reason=dict(sorted(stats.rejected_by_reason.items(), key=lambda item: (-item[1], item[0]))),
        examples={reason: kept.by_reason[reason] for reason in sorted(kept.by_reason)},
        gpus=len(uuids),
        hosts=len(hosts),
        metrics=sorted(metrics),
        first_timestamp=first,
        last_timestamp=last,
        sentinels=sentinels,
        flagged_sentinels=flagged,
        max_field_size=max_field_size,
        notes=notes,
    )


def _timestamp(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def render_text(report: ValidationReport) -> str:
    """The report for a person at a terminal: a verdict first, then what to fix, then what is there."""
    verdict = "OK" if report.exit_code == 0 else "PROBLEMS FOUND"
    lines = [
        f"{report.path}: {verdict}",
        f"  rows: {report.rows}  good: {report.good}  rejected: {report.rejected}",
    ]
    if report.rejected_by_reason:
        lines.append("  rejected by reason:")
        for reason, count in report.rejected_by_reason.items():
            lines.append(f"    {reason}: {count}")
            for example in report.examples.get(reason, []):
                lines.append(f"      line {example.line}: {example.detail}")
                if example.raw:
                    lines.append(f"        {_cut(example.raw, _TEXT_RAW_CHARS)!r}")
            shown = len(report.examples.get(reason, []))
            if count > shown:
                lines.append(f"      ... and {count - shown} more")
    lines.append(f"  GPUs: {report.gpus}  hosts: {report.hosts}  metrics: {len(report.metrics)}")
    if report.metrics:
        lines.append(f"    {', '.join(report.metrics[:20])}{', ...' if len(report.metrics) > 20 else ''}")
    if report.first_timestamp is not None:
        lines.append(f"  time range: {_timestamp(report.first_timestamp)} .. {_timestamp(report.last_timestamp)}")
    if report.flagged_sentinels:
        lines.append(f"  rows flagged with a DCGM sentinel value: {report.flagged_sentinels}")
    lines.extend(f"  note: {note}" for note in report.notes)
    return "\n".join(lines) + "\n"


def render_json(report: ValidationReport) -> str:
    """The report for a program: one JSON object, timestamps in RFC 3339, ``exit_code`` included."""
    document: dict[str, Any] = {
        "path": report.path,
        "exit_code": report.exit_code,
        "rows": report.rows,
        "good": report.good,
        "rejected": report.rejected,
        "rejected_by_reason": report.rejected_by_reason,
        "examples": {
            reason: [{"line": e.line, "detail": e.detail, "raw": e.raw} for e in examples]
            for reason, examples in report.examples.items()
        },
        "gpus": report.gpus,
        "hosts": report.hosts,
        "metrics": report.metrics,
        "first_timestamp": _timestamp(report.first_timestamp),
        "last_timestamp": _timestamp(report.last_timestamp),
        "sentinels": report.sentinels,
        "flagged_sentinels": report.flagged_sentinels,
        "max_field_size": report.max_field_size,
        "notes": report.notes,
    }
    return json.dumps(document, indent=2) + "\n"


def render_error_json(path: Path | str, error: str, exit_code: int) -> str:
    """``validate --json`` when there is no report (the file cannot be read, a setting is bad): still one JSON
    object, with the ``path``, the ``error`` and the ``exit_code`` the command exits with."""
    return json.dumps({"path": str(path), "exit_code": exit_code, "error": error}, indent=2) + "\n"
