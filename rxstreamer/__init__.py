"""rxstreamer: DCGM GPU telemetry from files to a message queue, as an RxPY pipeline.

The public API, what you compose with (pinned by tests/test_public_api.py, so a change to it is a
deliberate one)::

    from rxstreamer import CsvRows, InMemorySink, build_pipeline, ...

- Sources: ``CsvRows`` (lazy, cold, pullable rows of a DCGM CSV), ``rows_from_csv`` (the same as a push
  observable) and ``SourceError`` (a file that cannot be read at all).
- Sinks: ``Sink`` (the interface: publish, ``wait_idle``, ``close``, ``stats``), ``open_sink`` (the sink an
  address names: ``grpc://host:port`` or a bare ``host:port``), ``GrpcSink``, ``InMemorySink`` and
  ``PublishStats``.
- Operators: ``pull_through`` (row operators run on demand), ``pace`` (an interval that pulls),
  ``publish_with_retry`` (retry one publish, never the stream) and ``retrying`` (the same for one item),
  with ``RetryPolicy`` and ``PublishError``.
- Composition: ``build_pipeline`` (the whole streamer, with optional extra operators), ``load_transforms``
  and ``run_streamer`` (the service loop with signals, logging and shutdown) with its ``RunSummary``.
- Encoding: ``BatchEncoder``, ``encode_batch``, ``decode_batch`` and ``metric_to_dict``; the values that
  flow: ``MetricRow``, ``Rejection``, ``Position``, ``EncodedBatch``, ``PublishAck``.
- Settings: ``load_settings``, ``Settings`` and ``ConfigError``.

Test doubles (``FailingSink``, ``ScriptedSource``, ``metric_row``, and ``InMemorySink`` again) live in
``rxstreamer.testing``, not here: what a test needs stays out of the names production code composes with.

Names are imported on first use (PEP 562), so that ``python -m rxstreamer`` reaches its signal handlers before
grpc, protobuf and reactivex are loaded; ``from rxstreamer import X`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rxstreamer.config import ConfigError, Settings, load_settings
    from rxstreamer.encoding import BatchEncoder, decode_batch, encode_batch, metric_to_dict
    from rxstreamer.model import EncodedBatch, MetricRow, Position, PublishAck, Rejection
    from rxstreamer.operators import pace, publish_with_retry, pull_through, retrying
    from rxstreamer.pipeline import build_pipeline, load_transforms
    from rxstreamer.retry import PublishError, RetryPolicy
    from rxstreamer.service import RunSummary, run_streamer
    from rxstreamer.sinks import InMemorySink, PublishStats, Sink, open_sink
    from rxstreamer.sinks.grpc import GrpcSink
    from rxstreamer.sources import CsvRows, SourceError, rows_from_csv

#: Where each public name lives.
_HOMES = {
    "BatchEncoder": "rxstreamer.encoding",
    "ConfigError": "rxstreamer.config",
    "CsvRows": "rxstreamer.sources",
    "EncodedBatch": "rxstreamer.model",
    "GrpcSink": "rxstreamer.sinks.grpc",
    "InMemorySink": "rxstreamer.sinks",
    "MetricRow": "rxstreamer.model",
    "Position": "rxstreamer.model",
    "PublishAck": "rxstreamer.model",
    "PublishError": "rxstreamer.retry",
    "PublishStats": "rxstreamer.sinks",
    "Rejection": "rxstreamer.model",
    "RetryPolicy": "rxstreamer.retry",
    "RunSummary": "rxstreamer.service",
    "Settings": "rxstreamer.config",
    "Sink": "rxstreamer.sinks",
    "SourceError": "rxstreamer.sources",
    "build_pipeline": "rxstreamer.pipeline",
    "decode_batch": "rxstreamer.encoding",
    "encode_batch": "rxstreamer.encoding",
    "load_settings": "rxstreamer.config",
    "load_transforms": "rxstreamer.pipeline",
    "metric_to_dict": "rxstreamer.encoding",
    "open_sink": "rxstreamer.sinks",
    "pace": "rxstreamer.operators",
    "publish_with_retry": "rxstreamer.operators",
    "pull_through": "rxstreamer.operators",
    "retrying": "rxstreamer.operators",
    "rows_from_csv": "rxstreamer.sources",
    "run_streamer": "rxstreamer.service",
}

__all__ = [
    "BatchEncoder",
    "ConfigError",
    "CsvRows",
    "EncodedBatch",
    "GrpcSink",
    "InMemorySink",
    "MetricRow",
    "Position",
    "PublishAck",
    "PublishError",
    "PublishStats",
    "Rejection",
    "RetryPolicy",
    "RunSummary",
    "Settings",
    "Sink",
    "SourceError",
    "build_pipeline",
    "decode_batch",
    "encode_batch",
    "load_settings",
    "load_transforms",
    "metric_to_dict",
    "open_sink",
    "pace",
    "publish_with_retry",
    "pull_through",
    "retrying",
    "rows_from_csv",
    "run_streamer",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'rxstreamer' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
