"""The reference message-queue broker behind ``rxstreamer mq``.

A small in-memory MessageQueue service, so the streamer can be run and tested end to end without
external infrastructure. It honours the contract producers rely on: offsets, idempotent publishing,
and back-pressure (a full topic refuses with RESOURCE_EXHAUSTED) rather than silent loss.
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
    "StoreClosed",
    "StoreError",
    "StoredMessage",
    "TopicFull",
    "TopicStore",
    "serve",
    "start_broker",
]
