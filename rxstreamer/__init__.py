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
"""

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
