"""The reference message-queue broker behind ``rxstreamer mq``.

A small MessageQueue service, so the streamer can be run and tested end to end without external
infrastructure. It honours the contract producers rely on: offsets, idempotent publishing, and
back-pressure (a full topic refuses with RESOURCE_EXHAUSTED) rather than silent loss. Topics live in
memory, or, with a data directory, also in append-only logs on disk that a restarted broker recovers
(``datadir.py``, ``segments.py``, ``framing.py``).
"""

from rxstreamer.broker.server import (
    BrokerError,
    BrokerOptions,
    MessageQueueServicer,
    RunningBroker,
    serve,
    start_broker,
)
from rxstreamer.broker.store import (
    Ack,
    Broker,
    MessageTooLarge,
    StorageFailed,
    StoreClosed,
    StoredMessage,
    StoreError,
    TopicFull,
    TopicStore,
)

__all__ = [
    "Ack",
    "Broker",
    "BrokerError",
    "BrokerOptions",
    "MessageQueueServicer",
    "MessageTooLarge",
    "RunningBroker",
    "StorageFailed",
    "StoreClosed",
    "StoreError",
    "StoredMessage",
    "TopicFull",
    "TopicStore",
    "serve",
    "start_broker",
]
