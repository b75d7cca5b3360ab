"""The broker's gRPC edge: the MessageQueue service, the health service and the process entry point.

All queue semantics live in ``store.py``; this module validates requests, maps store outcomes onto gRPC
status codes (so a producer can tell "back off and retry" from "never retry") and manages the server's
life cycle so that subscribers see their streams end cleanly on shutdown. With a data directory it also
opens the durable storage (``datadir.py``) and reports what each topic recovered.
"""

from __future__ import annotations

import math
import re
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from rxstreamer.broker.datadir import DataDir
from rxstreamer.broker.segments import DataDirError
from rxstreamer.broker.store import (
    Broker,
    MessageTooLarge,
    StorageFailed,
    StoreClosed,
    StoredMessage,
    TopicFull,
    TopicStore,
)
from rxstreamer.proto import mq_pb2, mq_pb2_grpc

log = structlog.get_logger()

SERVICE_NAME: str = mq_pb2.DESCRIPTOR.services_by_name["MessageQueue"].full_name
TOPIC_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,255}")
RETRY_AFTER_METADATA = "retry-after-ms"
START_OFFSET_METADATA = "start-offset"

# How often a waiting Subscribe re-checks that its client is still there; publishes and shutdown wake it
# at once, so this only bounds how long a cancelled stream holds its worker thread.
POLL_INTERVAL = 0.5
# Messages sent per store read, so a subscriber far behind never copies the whole log under the lock.
_READ_BATCH = 256
# Time in-flight RPCs get to finish when the process is asked to stop.
STOP_GRACE = 5.0
# Requests carry a payload up to max_bytes plus topic and headers; without raising gRPC's 4 MiB default,
# a large message would fail with RESOURCE_EXHAUSTED, which producers treat as retryable, forever.
_REQUEST_OVERHEAD = 1 << 20
_GRPC_MAX_LENGTH = (1 << 31) - 1

_MAX_PORT = 65_535

_Handler = Callable[[int, FrameType | None], Any] | int | None


class BrokerError(Exception):
    """The broker cannot start as configured; the message is meant for the operator."""


@dataclass(frozen=True)
class BrokerOptions:
    """How to run a broker; the limits apply to each topic separately."""

    listen: str = "127.0.0.1:50051"
    max_messages: int = 100_000
    max_bytes: int = 268_435_456
    retention: float = 0.0  # seconds; 0 keeps messages until the broker stops
    # Each open Subscribe holds a worker thread, so this bounds concurrent subscribers plus publishers.
    max_workers: int = 16
    data_dir: Path | None = None  # None keeps topics in memory only
    fsync: str = "always"  # "always", "interval" or "never"; see segments.py for what each risks
    fsync_interval: float = 0.1  # seconds, for "interval"


class MessageQueueServicer(mq_pb2_grpc.MessageQueueServicer):
    """Serves Publish and Subscribe over a shared set of topics."""

    def __init__(self, topics: Broker, *, poll_interval: float = POLL_INTERVAL) -> None:
        self._topics = topics
        self._poll_interval = poll_interval
        self._full_topics = _FullTopics()

    # The method names are fixed by the generated base class.
    def Publish(  # noqa: N802
        self, request: mq_pb2.PublishRequest, context: grpc.ServicerContext
    ) -> mq_pb2.PublishResponse:
        """Store one message, telling the producer whether to retry (RESOURCE_EXHAUSTED) or not."""
        store = self._topic(request.topic, context)
        try:
            ack = store.append(
                request.payload,
                headers=request.headers,
                producer_id=request.producer_id,
                sequence=request.sequence,
            )
        except TopicFull as full:
            self._full_topics.refused(full)
            if full.retry_after is not None:
                context.set_trailing_metadata(((RETRY_AFTER_METADATA, _milliseconds(full.retry_after)),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(full))
        except MessageTooLarge as too_large:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(too_large))
        except StoreClosed:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the broker is shutting down")
        except StorageFailed as failed:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(failed))
        self._full_topics.accepted(store.name)
        return mq_pb2.PublishResponse(offset=ack.offset, duplicate=ack.duplicate)

    def Subscribe(  # noqa: N802
        self, request: mq_pb2.SubscribeRequest, context: grpc.ServicerContext
    ) -> Iterator[mq_pb2.Message]:
        """Stream retained then live messages until the client leaves or the broker closes.

        The resolved start offset is sent at once as ``start-offset`` initial metadata: it tells a
        client that the subscription is in place (so, with LATEST, which messages it will see) before
        any message exists.
        """
        store = self._topic(request.topic, context)
        position = _start_offset(request, store, context)
        context.send_initial_metadata(((START_OFFSET_METADATA, str(position)),))
        yield from self._stream(store, position, context)

    def _topic(self, name: str, context: grpc.ServicerContext) -> TopicStore:
        """The requested topic; a durable broker that cannot create its log answers UNAVAILABLE."""
        try:
            return self._topics.topic(_checked_topic(name, context))
        except StorageFailed as failed:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(failed))

    def _stream(self, store: TopicStore, position: int, context: grpc.ServicerContext) -> Iterator[mq_pb2.Message]:
        while context.is_active():
            batch = store.read_from(position, limit=_READ_BATCH)
            if batch:
                yield from (_to_proto(message) for message in batch)
                position = batch[-1].offset + 1
            elif store.closed:
                return
            else:
                store.wait_for(position, self._poll_interval)


class _FullTopics:
    """Logs when a topic starts and stops refusing, instead of once per refused publish."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._full: set[str] = set()

    def refused(self, full: TopicFull) -> None:
        with self._lock:
            if full.topic in self._full:
                return
            self._full.add(full.topic)
            log.warning(
                "broker.topic_full",
                topic=full.topic,
                retained_messages=full.retained_messages,
                retained_bytes=full.retained_bytes,
                max_messages=full.max_messages,
                max_bytes=full.max_bytes,
                retry_after=full.retry_after,
            )

    def accepted(self, topic: str) -> None:
        if topic not in self._full:  # the hot path takes no lock; the locked check below decides
            return
        with self._lock:
            if topic not in self._full:
                return
            self._full.discard(topic)
            log.info("broker.topic_has_room", topic=topic)


class RunningBroker:
    """A started broker: where it listens, its topics, and how to stop it."""

    def __init__(self, *, server: grpc.Server, health_servicer: Any, topics: Broker, port: int, address: str) -> None:
        self._server = server
        self._health = health_servicer
        self.topics = topics
        self.port = port
        self.address = address
        self._stop_lock = threading.Lock()
        self._stopping = False
        self._stopped = threading.Event()

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Report NOT_SERVING, end open streams, then give in-flight RPCs ``grace`` seconds.

        Safe to call more than once; later calls wait for the first to finish.
        """
        with self._stop_lock:
            first = not self._stopping
            self._stopping = True
        if not first:
            self._stopped.wait()
            return
        try:
            self._health.enter_graceful_shutdown()
            self.topics.close()
            self._server.stop(grace).wait()
        finally:
            self._stopped.set()

    def __enter__(self) -> RunningBroker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_broker(options: BrokerOptions) -> RunningBroker:
    """Start serving in background threads; raises BrokerError when the options cannot work.

    A durable broker recovers every topic first, logging ``broker.recovered`` for each.
    """
    topics = _make_topics(options)
    try:
        return _start_serving(options, topics)
    except BaseException:
        topics.close()  # releases the data directory, so it can be used again at once
        raise


def _start_serving(options: BrokerOptions, topics: Broker) -> RunningBroker:
    server = grpc.server(
        ThreadPoolExecutor(max_workers=options.max_workers, thread_name_prefix="broker"),
        options=[
            # Without this, a second broker on the same port would silently share it on Linux.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", min(options.max_bytes + _REQUEST_OVERHEAD, _GRPC_MAX_LENGTH)),
        ],
    )
    mq_pb2_grpc.add_MessageQueueServicer_to_server(MessageQueueServicer(topics), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    port = _bind(server, options.listen)
    server.start()
    return RunningBroker(
        server=server,
        health_servicer=health_servicer,
        topics=topics,
        port=port,
        address=_connect_address(options.listen, port),
    )


def serve(options: BrokerOptions, *, stop_signals: bool = True, stop_event: threading.Event | None = None) -> int:
    """Run a broker until SIGINT/SIGTERM (or ``stop_event``); the process exit code is returned.

    Must be called from the main thread when ``stop_signals`` is true, as Python only installs signal
    handlers there.
    """
    try:
        running = start_broker(options)
    except BrokerError as error:
        log.error("broker.failed", listen=options.listen, reason=str(error))
        return 1
    log.info(
        "broker.started",
        listen=options.listen,
        address=running.address,
        port=running.port,
        max_messages=options.max_messages,
        max_bytes=options.max_bytes,
        retention=options.retention,
        data_dir=None if options.data_dir is None else str(options.data_dir),
        fsync=None if options.data_dir is None else options.fsync,
        fsync_interval=options.fsync_interval if options.data_dir is not None and options.fsync == "interval" else None,
    )
    stop = stop_event if stop_event is not None else threading.Event()
    previous: dict[signal.Signals, _Handler] = {}
    try:
        if stop_signals:
            previous = _install_stop_handlers(stop)
        # Waiting with a timeout keeps the main thread responsive to signals on every platform.
        while not stop.wait(POLL_INTERVAL):
            pass
    finally:
        running.stop(STOP_GRACE)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    log.info("broker.stopped", port=running.port)
    return 0


def _install_stop_handlers(stop: threading.Event) -> dict[signal.Signals, _Handler]:
    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("broker.stopping", signal=signal.Signals(signum).name)
        stop.set()

    previous: dict[signal.Signals, _Handler] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, request_stop)
    return previous


def _make_topics(options: BrokerOptions) -> Broker:
    if options.max_workers < 1:
        raise BrokerError(f"max_workers must be >= 1, got {options.max_workers}")
    storage = _open_storage(options)
    try:
        topics = _recover_topics(options, storage)
    except BaseException:
        if storage is not None:
            storage.close()  # unlocks the data directory
        raise
    _log_recovered(topics)
    return topics


def _recover_topics(options: BrokerOptions, storage: DataDir | None) -> Broker:
    try:
        return Broker(
            max_messages=options.max_messages,
            max_bytes=options.max_bytes,
            retention=options.retention,
            storage=storage,
        )
    except ValueError as error:  # the limits are checked before any topic is recovered
        raise BrokerError(f"invalid broker limits: {error}") from error
    except (DataDirError, StorageFailed) as error:
        raise BrokerError(f"cannot recover data directory {options.data_dir}: {error}") from error


def _open_storage(options: BrokerOptions) -> DataDir | None:
    if options.data_dir is None:
        return None
    try:
        return DataDir.open(options.data_dir, policy=options.fsync, interval=options.fsync_interval)
    except ValueError as error:
        raise BrokerError(f"invalid durability settings: {error}") from error
    except DataDirError as error:
        raise BrokerError(str(error)) from error


def _log_recovered(topics: Broker) -> None:
    for name in topics.names():
        store = topics.topic(name)
        next_offset = store.next_offset
        log.info(
            "broker.recovered",
            topic=name,
            messages=store.retained_messages,
            bytes=store.retained_bytes,
            first_offset=store.first_offset,
            last_offset=next_offset - 1 if next_offset > 0 else None,
        )


def _bind(server: grpc.Server, listen: str) -> int:
    """Bind ``listen``, turning both failure styles of grpc (0 or RuntimeError) into BrokerError."""
    port_text = listen.rpartition(":")[2]
    if port_text.isdigit() and int(port_text) > _MAX_PORT:
        # grpc would silently bind the port number modulo 65536.
        raise BrokerError(f"cannot listen on {listen}: port {port_text} is above {_MAX_PORT}")
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError as error:
        server.stop(None)
        raise BrokerError(f"cannot listen on {listen}: {error}") from error
    if port == 0:
        server.stop(None)
        raise BrokerError(f"cannot listen on {listen}: the address is invalid or already in use")
    return port


def _connect_address(listen: str, port: int) -> str:
    """An address clients on this machine can dial: the bound port, with wildcard hosts as loopback."""
    if listen.startswith("unix:"):
        return listen
    host = listen.rpartition(":")[0]
    if host in ("", "0.0.0.0", "[::]", "*"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def _checked_topic(topic: str, context: grpc.ServicerContext) -> str:
    if not topic:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "topic is required")
    if TOPIC_PATTERN.fullmatch(topic) is None:
        context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"invalid topic {topic[:300]!r}: it must match {TOPIC_PATTERN.pattern}",
        )
    return topic


def _start_offset(request: mq_pb2.SubscribeRequest, store: TopicStore, context: grpc.ServicerContext) -> int:
    """Resolve the start position; an offset beyond the log waits for that offset to be published."""
    if request.start == mq_pb2.START_POSITION_EARLIEST:
        return store.first_offset
    if request.start == mq_pb2.START_POSITION_OFFSET:
        return request.offset
    if request.start != mq_pb2.START_POSITION_LATEST:  # proto3 enums are open: any number can arrive
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown start position {request.start}")
    return store.next_offset


def _to_proto(message: StoredMessage) -> mq_pb2.Message:
    proto = mq_pb2.Message(
        topic=message.topic,
        offset=message.offset,
        payload=message.payload,
        headers=message.headers,
        producer_id=message.producer_id,
        sequence=message.sequence,
    )
    proto.published_at.FromNanoseconds(message.published_at_ns)
    return proto


def _milliseconds(seconds: float) -> str:
    """Round up, so a client sleeping that long finds the room there."""
    return str(max(1, math.ceil(seconds * 1000)))
