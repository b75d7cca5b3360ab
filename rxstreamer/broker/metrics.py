"""What the broker counts for its metrics, and the collector ``rxstreamer mq --metrics-listen`` serves them with.

``BrokerCounters`` is always there and costs a lock per publish: the servicer tells it each message stored,
each duplicate and each refusal. ``BrokerCollector`` reads it, the topics and the open streams on each scrape;
it imports prometheus_client only then, so a broker without the endpoint never loads it. Topic labels are
bounded by ``broker.max_topics`` (only topics that exist are counted); reasons by the list below.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from rxstreamer.broker.store import Broker

#: Why a publish (or a stream) was refused: the ``reason`` label of ``rxstreamer_broker_rejections_total``.
REJECTION_REASONS: Final = (
    "topic_full",  # the topic holds broker.max_messages or broker.max_bytes (RESOURCE_EXHAUSTED, retryable)
    "total_bytes_full",  # all topics hold broker.max_total_bytes (RESOURCE_EXHAUSTED, retryable)
    "max_topics",  # a new topic past broker.max_topics (RESOURCE_EXHAUSTED)
    "too_large",  # a payload no topic can ever hold (INVALID_ARGUMENT)
    "sequence_conflict",  # a (producer id, sequence) held with other content (FAILED_PRECONDITION)
    "storage_failed",  # the database could not be written (UNAVAILABLE)
    "shutting_down",  # the broker is stopping (UNAVAILABLE)
    "max_subscribers",  # a Subscribe or health Watch past broker.max_subscribers (RESOURCE_EXHAUSTED)
)


@dataclass(frozen=True)
class BrokerCounts:
    """The counters at one moment, copied."""

    messages: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    rejections: dict[str, int] = field(default_factory=dict)


class BrokerCounters:
    """Messages, payload bytes and duplicates per topic, and refusals per reason, since the broker started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: dict[str, int] = {}
        self._bytes: dict[str, int] = {}
        self._duplicates: dict[str, int] = {}
        self._rejections: dict[str, int] = {}

    def accepted(self, topic: str, size: int, *, duplicate: bool) -> None:
        """A publish was acknowledged: stored (``size`` payload bytes), or recognised as a duplicate."""
        with self._lock:
            if duplicate:
                self._duplicates[topic] = self._duplicates.get(topic, 0) + 1
            else:
                self._messages[topic] = self._messages.get(topic, 0) + 1
                self._bytes[topic] = self._bytes.get(topic, 0) + size

    def refused(self, reason: str) -> None:
        """A publish or a stream was refused for ``reason`` (one of ``REJECTION_REASONS``)."""
        with self._lock:
            self._rejections[reason] = self._rejections.get(reason, 0) + 1

    def snapshot(self) -> BrokerCounts:
        with self._lock:
            return BrokerCounts(dict(self._messages), dict(self._bytes), dict(self._duplicates), dict(self._rejections))


class BrokerCollector:
    """The broker's metrics, read on each scrape (on the HTTP thread)."""

    def __init__(self, counters: BrokerCounters, topics: Broker, subscribers: Callable[[], int]) -> None:
        self._counters = counters
        self._topics = topics
        self._subscribers = subscribers

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        counts = self._counters.snapshot()
        names = self._topics.names()
        per_topic = (
            (
                "rxstreamer_broker_messages_total",
                "Messages stored, per topic, since the broker started.",
                counts.messages,
            ),
            (
                "rxstreamer_broker_bytes_total",
                "Payload bytes stored, per topic, since the broker started.",
                counts.bytes,
            ),
            (
                "rxstreamer_broker_duplicates_total",
                "Publishes acknowledged as duplicates (already held), per topic.",
                counts.duplicates,
            ),
        )
        for name, documentation, values in per_topic:
            family = CounterMetricFamily(name, documentation, labels=["topic"])
            for topic in sorted(set(names) | set(values)):
                family.add_metric([topic], values.get(topic, 0))
            yield family
        rejections = CounterMetricFamily(
            "rxstreamer_broker_rejections_total", "Publishes and streams refused, by reason.", labels=["reason"]
        )
        for reason in sorted(set(REJECTION_REASONS) | set(counts.rejections)):
            rejections.add_metric([reason], counts.rejections.get(reason, 0))
        yield rejections
        retained_messages = GaugeMetricFamily(
            "rxstreamer_broker_retained_messages", "Messages the topic holds now.", labels=["topic"]
        )
        retained_bytes = GaugeMetricFamily(
            "rxstreamer_broker_retained_bytes", "Payload bytes the topic holds now.", labels=["topic"]
        )
        for topic in names:
            store = self._topics.get(topic)
            if store is not None:
                retained_messages.add_metric([topic], store.retained_messages)
                retained_bytes.add_metric([topic], store.retained_bytes)
        yield retained_messages
        yield retained_bytes
        yield GaugeMetricFamily(
            "rxstreamer_broker_subscribers",
            "Open Subscribe and health Watch streams (each holds a worker thread).",
            value=self._subscribers(),
        )
