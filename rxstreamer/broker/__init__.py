"""The reference message-queue broker behind ``rxstreamer mq``.

A small MessageQueue service, so the streamer can be run and tested end to end without external
infrastructure. It honours the contract producers rely on: offsets, idempotent publishing (a reused
identity with other content is refused, never acknowledged as a duplicate), and back-pressure (a full
topic or broker refuses with RESOURCE_EXHAUSTED) rather than silent loss. Topics live in memory, or, with
a data directory, also in one SQLite database that a restarted broker recovers.

Modules: ``store`` (topics and the broker-wide caps, no I/O), ``errors`` (the refusals), ``database``
(the durable store), ``dirlock`` (one broker per data directory), ``server`` (the gRPC edge and the
process), ``ready`` (waits until a broker answers SERVING, for ``make run``), ``signals`` and ``episodes``
(what the process does with signals and how it logs trouble), ``metrics`` (what ``--metrics-listen`` reports),
``auth`` (the tokens file, its rights, and the interceptor checking every call).

Its own dependencies (the gRPC health service) come with the ``broker`` extra, which the streamer does not
need. Without them, importing this package raises ImportError, which ``rxstreamer mq`` turns into one
line saying what to install.
"""

from rxstreamer.broker.database import Database
from rxstreamer.broker.errors import (
    BrokerFull,
    DataDirError,
    MessageTooLarge,
    SequenceConflict,
    StorageFailed,
    StoreClosed,
    StoreError,
    TooManyTopics,
    TopicFull,
)
from rxstreamer.broker.server import (
    BrokerError,
    BrokerOptions,
    MessageQueueServicer,
    RunningBroker,
    serve,
    start_broker,
)
from rxstreamer.broker.store import Ack, Broker, StoredMessage, TopicStore

__all__ = [
    "Ack",
    "Broker",
    "BrokerError",
    "BrokerFull",
    "BrokerOptions",
    "DataDirError",
    "Database",
    "MessageQueueServicer",
    "MessageTooLarge",
    "RunningBroker",
    "SequenceConflict",
    "StorageFailed",
    "StoreClosed",
    "StoreError",
    "StoredMessage",
    "TooManyTopics",
    "TopicFull",
    "TopicStore",
    "serve",
    "start_broker",
]
