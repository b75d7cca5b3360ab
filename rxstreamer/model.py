"""The values that flow through the pipeline.

Rows are NamedTuples rather than dataclasses: they are created once per CSV line on the hot path, and a
tuple is several times cheaper to build than a frozen dataclass while being just as immutable. Use
``row._replace(value=...)`` in a transform to derive a changed row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple


class MetricRow(NamedTuple):
    """One DCGM reading, parsed from one CSV record."""

    timestamp: datetime  # timezone-aware, UTC
    metric_name: str
    gpu_id: str
    device: str
    uuid: str
    model_name: str
    hostname: str
    container: str
    pod: str
    namespace: str
    value: float
    labels: Mapping[str, str]  # read-only; shared between rows with the same labels_raw
    line: int  # line number in the source file where the record starts (1 is the header)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record that could not become a MetricRow, and why."""

    line: int
    reason: str  # a stable code, e.g. "field_count", "value_not_numeric"
    detail: str  # a human-readable explanation naming the offending field and value
    # The record's text as read (without its final line break), cut to a bound: enough to find, fix and replay
    # the record from a quarantine file, never so much that one runaway line can flood memory or a log.
    raw: str = ""


@dataclass(frozen=True, slots=True)
class Position:
    """A place in a source file to continue from: just after the last record consumed."""

    offset: int  # byte offset where the next record starts
    line: int  # physical lines consumed so far; the next record starts on line + 1
    pass_number: int = 0  # 0-based replay pass, when looping


@dataclass(frozen=True, slots=True)
class ReadCounts:
    """How many rows the source had read and rejected when a batch was cut, counted from the run's start.

    Carried with the batch, like its ``Position``, because the source's live counts run ahead of what was
    acknowledged when batches are read ahead: a checkpoint must record the counts of the batch it names.
    """

    rows_read: int
    rows_rejected: int


@dataclass(frozen=True, slots=True)
class EncodedBatch:
    """A batch ready to publish: its identity is fixed before the first attempt, so retries reuse it."""

    producer_id: str
    sequence: int
    payload: bytes
    content_type: str
    rows: int
    position: Position | None = None  # where the input continues after this batch, when known
    read: ReadCounts | None = None  # the source's counts when this batch was cut, when known
    # Names what the batch holds, the same each time the same rows are encoded (the payload is not: it carries
    # its creation time); sent as the ``content-digest`` header so the queue can tell a re-send from a clash.
    content_digest: str = ""


@dataclass(frozen=True, slots=True)
class PublishAck:
    """The queue's answer to a successful publish."""

    sequence: int
    offset: int
    duplicate: bool
    rows: int
    position: Position | None = None  # copied from the EncodedBatch, for checkpoints
    read: ReadCounts | None = None  # likewise
