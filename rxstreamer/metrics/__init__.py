"""The HTTP endpoint of ``observability.listen``: ``/metrics`` in Prometheus text, ``/healthz`` and ``/readyz``.

Imported only when the endpoint is on: it imports prometheus_client. Three layers, each a module of this package
and testable alone (``recorders``, ``rules``, ``exposition``), and the HTTP edge (``endpoint``):

- Recorders, on the pipeline's side: ``PublishTimer`` wraps the publisher the pipeline is given and times
  every attempt; ``TickLateness`` wraps the pipeline's scheduler and measures how late each pacing tick
  fired against its due time (``pace`` schedules its ticks at absolute times, and nothing else in the
  pipeline does); ``RowTimesEncoder`` notes the newest row of each batch it encodes, kept by
  ``AckedRowTimes`` once the batch is acknowledged. ``build_pipeline`` is called with these in place of
  the sink and the scheduler; its shape does not change. They take a lock, never prometheus_client.
- Rules, pure: ``liveness`` and ``readiness`` turn a ``RunState`` snapshot into a ``Probe``; ``lag_seconds``.
- Exposition: ``StreamerCollector`` reads a snapshot of the run's counts (``RunCounts.now()``, the very
  counts the progress line and ``streamer.stopped`` print) on each scrape, on the HTTP thread; ``Endpoint``
  is a WSGI server on a daemon thread with a router in front of prometheus_client's app, which would
  otherwise answer metrics on every path.
"""

from rxstreamer.metrics.constants import LATENESS_BUCKETS, MIN_STALL_S, PATHS, PUBLISH_BUCKETS
from rxstreamer.metrics.endpoint import Endpoint, router, start_endpoint
from rxstreamer.metrics.exposition import (
    StreamerCollector,
    StreamerView,
    counter,
    gauge,
    histogram,
    labelled,
    scrape_targets,
)
from rxstreamer.metrics.recorders import (
    AckedRowTimes,
    Histogram,
    HistogramSnapshot,
    PublishTimer,
    RowTimesEncoder,
    StreamerInstruments,
    TickLateness,
    outcome_of,
)
from rxstreamer.metrics.rules import Probe, RunState, lag_seconds, liveness, readiness, stall_after

__all__ = [
    "LATENESS_BUCKETS",
    "MIN_STALL_S",
    "PATHS",
    "PUBLISH_BUCKETS",
    "AckedRowTimes",
    "Endpoint",
    "Histogram",
    "HistogramSnapshot",
    "Probe",
    "PublishTimer",
    "RowTimesEncoder",
    "RunState",
    "StreamerCollector",
    "StreamerInstruments",
    "StreamerView",
    "TickLateness",
    "counter",
    "gauge",
    "histogram",
    "labelled",
    "lag_seconds",
    "liveness",
    "outcome_of",
    "readiness",
    "router",
    "scrape_targets",
    "stall_after",
    "start_endpoint",
]
