"""rxstreamer: DCGM GPU telemetry from files to a message queue, as an RxPY pipeline.

The public API, for extending the pipeline in code::

    from rxstreamer import CsvRows, build_pipeline, ...

- Sources: ``CsvRows`` (lazy, cold, pullable rows of a DCGM CSV) and ``rows_from_csv`` (the same as a
  push observable).
- Operators: ``pull_through`` (row operators run on demand), ``pace`` (an interval that pulls),
  ``publish_with_retry`` (retry one publish, never the stream) and ``retrying`` (the same for one item).
- Composition: ``build_pipeline`` (the whole streamer, with optional extra operators) and
  ``run_streamer`` (the service loop with signals, logging and shutdown).
- Publishing: ``Publisher`` (the interface), ``GrpcPublisher`` and ``InMemoryPublisher``.


Names are imported on first use (PEP 562), so that ``python -m rxstreamer`` reaches its signal handlers before
grpc, protobuf and reactivex are loaded; ``from rxstreamer import X`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rxstreamer.config import ConfigError, Settings, load_settings
    from rxstreamer.encoding import BatchEncoder, decode_batch, encode_batch
    from rxstreamer.grpc_publisher import GrpcPublisher
    from rxstreamer.model import EncodedBatch, MetricRow, PublishAck, Rejection
    from rxstreamer.operators import pace, publish_with_retry, pull_through, retrying
    from rxstreamer.pipeline import build_pipeline, load_transforms
    from rxstreamer.publisher import InMemoryPublisher, Publisher, PublishStats
    from rxstreamer.retry import PublishError, RetryPolicy
    from rxstreamer.service import RunSummary, run_streamer
    from rxstreamer.source import CsvRows, SourceError, rows_from_csv

#: Where each public name lives.
_HOMES = {
    "BatchEncoder": "rxstreamer.encoding",
    "ConfigError": "rxstreamer.config",
    "CsvRows": "rxstreamer.source",
    "EncodedBatch": "rxstreamer.model",
    "GrpcPublisher": "rxstreamer.grpc_publisher",
    "InMemoryPublisher": "rxstreamer.publisher",
    "MetricRow": "rxstreamer.model",
    "PublishAck": "rxstreamer.model",
    "PublishError": "rxstreamer.retry",
    "PublishStats": "rxstreamer.publisher",
    "Publisher": "rxstreamer.publisher",
    "Rejection": "rxstreamer.model",
    "RetryPolicy": "rxstreamer.retry",
    "RunSummary": "rxstreamer.service",
    "Settings": "rxstreamer.config",
    "SourceError": "rxstreamer.source",
    "build_pipeline": "rxstreamer.pipeline",
    "decode_batch": "rxstreamer.encoding",
    "encode_batch": "rxstreamer.encoding",
    "load_settings": "rxstreamer.config",
    "load_transforms": "rxstreamer.pipeline",
    "pace": "rxstreamer.operators",
    "publish_with_retry": "rxstreamer.operators",
    "pull_through": "rxstreamer.operators",
    "retrying": "rxstreamer.operators",
    "rows_from_csv": "rxstreamer.source",
    "run_streamer": "rxstreamer.service",
}

__all__ = [
    "BatchEncoder",
    "ConfigError",
    "CsvRows",
    "EncodedBatch",
    "GrpcPublisher",
    "InMemoryPublisher",
    "MetricRow",
    "PublishAck",
    "PublishError",
    "PublishStats",
    "Publisher",
    "Rejection",
    "RetryPolicy",
    "RunSummary",
    "Settings",
    "SourceError",
    "build_pipeline",
    "decode_batch",
    "encode_batch",
    "load_settings",
    "load_transforms",
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
