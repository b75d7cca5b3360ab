"""The broker's gRPC edge: the MessageQueue service, the health service and the process entry point.

All queue semantics live in ``store.py``; this module validates requests, maps store outcomes onto gRPC
status codes (so a producer can tell "back off and retry" from "never retry") and manages the server's
life cycle so that subscribers see their streams end cleanly on shutdown. With a data directory it also
opens the durable storage (``database.py``) and reports what each topic recovered.

Every open stream (Subscribe, or a health Watch) holds one of the server's worker threads until it ends,
so streams are counted against ``max_subscribers`` and the pool has ``UNARY_WORKERS`` threads more: open
subscribers can never starve Publish or a health check. A refused stream gives its thread back at once.

What a Publish too large to store gets, by size (``largest`` is the smaller of max_bytes and
max_total_bytes; the test ``test_too_large_publish_status_by_size_band`` pins each answer):

- payload <= largest: stored, or refused as a full topic or broker (RESOURCE_EXHAUSTED, retryable);
- largest < payload, with the whole request <= largest + ``REQUEST_OVERHEAD``: INVALID_ARGUMENT, naming
  the size and the setting that limits it;
- a request above that: gRPC itself refuses to read it, with RESOURCE_EXHAUSTED and the details
  "Received message larger than max (SIZE vs. LIMIT)", before the broker sees it; producers must
  treat that one as final, as it never clears.
"""

from __future__ import annotations

import errno
import math
import re
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from rxstreamer.broker.auth import AuthInterceptor, TokensFileError, TokenStore, reload_on_hangup
from rxstreamer.broker.database import Database
from rxstreamer.broker.episodes import Episodes
from rxstreamer.broker.errors import (
    BrokerFull,
    DataDirError,
    MessageTooLarge,
    SequenceConflict,
    StorageFailed,
    StoreClosed,
    TooManyTopics,
    TopicFull,
)
from rxstreamer.broker.metrics import BrokerCounters
from rxstreamer.broker.store import Ack, Broker, StoredMessage, TopicStore
from rxstreamer.config import ConfigError
from rxstreamer.proto import mq_pb2, mq_pb2_grpc
from rxstreamer.signals import SignalWatch
from rxstreamer.tls import ServerSecurity, is_loopback, server_security

if TYPE_CHECKING:
    from rxstreamer.metrics import Endpoint

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
# a large message would fail with RESOURCE_EXHAUSTED, which producers treat as retryable, forever. Past
# this margin gRPC refuses to read a request at all, so a huge one never reaches the broker's memory.
REQUEST_OVERHEAD = 1 << 20
_GRPC_MAX_LENGTH = (1 << 31) - 1
# Worker threads beyond max_subscribers, for Publish, health checks and refusals: what streams never take.
UNARY_WORKERS = 8

_MAX_PORT = 65_535


# The exit status of a broker whose address another process holds: like a bad setting, the operator's to fix.
EXIT_ADDRESS_IN_USE = 2


class BrokerError(Exception):
    """The broker cannot start as configured; the message is meant for the operator."""


class AddressInUseError(BrokerError):
    """Another process listens on the address: told apart so ``make run`` can stop before streaming into it."""

    def __init__(self, listen: str) -> None:
        super().__init__(
            f"cannot listen on {listen}: port {listen} is in use (address in use); stop what listens there or "
            "choose another address"
        )
        self.listen = listen


@dataclass(frozen=True)
class BrokerOptions:
    """How to run a broker; max_messages, max_bytes and retention apply to each topic separately."""

    listen: str = "127.0.0.1:50051"
    max_messages: int = 100_000
    max_bytes: int = 268_435_456
    retention: float = 0.0  # seconds; 0 keeps messages until the broker stops
    # Open streams (Subscribe and health Watch); each holds a worker thread while it is open.
    max_subscribers: int = 64
    max_topics: int = 1000
    max_total_bytes: int = 1 << 30  # payload bytes retained by all topics together
    data_dir: Path | None = None  # None keeps topics in memory only
    fsync: str = "always"  # "always", "interval" or "never"; see database.py for what each risks
    fsync_interval: float = 0.1  # seconds, for "interval"
    metrics_listen: str = ""  # observability.listen: where /metrics, /healthz and /readyz are served; "": nowhere
    # broker.tls.* and broker.auth.tokens_file (see rxstreamer/tls.py and auth.py); None: off
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    tokens_file: Path | None = None
    allow_plaintext: bool = False  # no broker.plaintext warning for a plaintext non-loopback address

    @property
    def largest_message(self) -> int:
        """The largest payload a topic can ever hold: the smaller of the two byte limits."""
        return min(self.max_bytes, self.max_total_bytes)

    @property
    def max_receive_length(self) -> int:
        """gRPC's receive limit: room for the largest storable payload plus the rest of the request."""
        return min(self.largest_message + REQUEST_OVERHEAD, _GRPC_MAX_LENGTH)


class MessageQueueServicer(mq_pb2_grpc.MessageQueueServicer):
    """Serves Publish and Subscribe over a shared set of topics."""

    def __init__(
        self,
        topics: Broker,
        *,
        streams: StreamSlots | None = None,
        poll_interval: float = POLL_INTERVAL,
        counters: BrokerCounters | None = None,
    ) -> None:
        self._topics = topics
        self._streams = streams if streams is not None else StreamSlots(BrokerOptions.max_subscribers)
        self._counters = counters if counters is not None else BrokerCounters()
        self._poll_interval = poll_interval
        self._episodes = Episodes()

    # The method names are fixed by the generated base class.
    def Publish(  # noqa: N802
        self, request: mq_pb2.PublishRequest, context: grpc.ServicerContext
    ) -> mq_pb2.PublishResponse:
        """Store one message, telling the producer whether to retry (RESOURCE_EXHAUSTED, UNAVAILABLE) or not."""
        topic = _checked_topic(request.topic, context)
        try:
            ack = self._topics.append(
                topic,
                request.payload,
                headers=request.headers,
                producer_id=request.producer_id,
                sequence=request.sequence,
            )
        except TopicFull as full:
            self._counters.refused("topic_full")
            self._topic_full(full)
            _retry_after(context, full.retry_after)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(full))
        except BrokerFull as full:
            self._counters.refused("total_bytes_full")
            self._broker_full(full)
            _retry_after(context, full.retry_after)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(full))
        except TooManyTopics as too_many:
            self._counters.refused("max_topics")
            self._too_many_topics(too_many)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(too_many))
        except MessageTooLarge as too_large:
            self._counters.refused("too_large")
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(too_large))
        except SequenceConflict as conflict:
            self._counters.refused("sequence_conflict")
            # Each conflict stops a producer for good, so there are few: every one is worth a line.
            log.warning(
                "broker.sequence_conflict",
                topic=conflict.topic,
                producer_id=conflict.producer_id,
                sequence=conflict.sequence,
                offset=conflict.offset,
            )
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(conflict))
        except StoreClosed:
            self._counters.refused("shutting_down")
            context.abort(grpc.StatusCode.UNAVAILABLE, "the broker is shutting down")
        except StorageFailed as failed:
            self._counters.refused("storage_failed")
            self._storage_failed(failed)
            context.abort(grpc.StatusCode.UNAVAILABLE, str(failed))
        self._counters.accepted(topic, len(request.payload), duplicate=ack.duplicate)
        if self._episodes.any:
            self._accepted(topic, ack)
        return mq_pb2.PublishResponse(offset=ack.offset, duplicate=ack.duplicate)

    def Subscribe(  # noqa: N802
        self, request: mq_pb2.SubscribeRequest, context: grpc.ServicerContext
    ) -> Iterator[mq_pb2.Message]:
        """Stream retained then live messages until the client leaves or the broker closes.

        The resolved start offset is sent at once as ``start-offset`` initial metadata: it tells a
        client that the subscription is in place (so, with LATEST, which messages it will see) before
        any message exists. Past max_subscribers the stream is refused with RESOURCE_EXHAUSTED.
        """
        with self._streams.hold(context):
            store = self._topic(request.topic, context)
            position = _start_offset(request, store, context)
            context.send_initial_metadata(((START_OFFSET_METADATA, str(position)),))
            context.add_callback(store.wake)  # a client that leaves frees its slot at once
            yield from self._stream(store, position, context)

    def _topic(self, name: str, context: grpc.ServicerContext) -> TopicStore:
        """The requested topic, created if new within max_topics; a storage failure answers UNAVAILABLE."""
        try:
            return self._topics.topic(_checked_topic(name, context))
        except TooManyTopics as too_many:
            self._counters.refused("max_topics")
            self._too_many_topics(too_many)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(too_many))
        except StorageFailed as failed:
            self._counters.refused("storage_failed")
            self._storage_failed(failed)
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

    # -- one log line per episode ------------------------------------------------------------------

    def _topic_full(self, full: TopicFull) -> None:
        if self._episodes.begin(f"topic_full:{full.topic}"):
            log.warning(
                "broker.topic_full",
                topic=full.topic,
                retained_messages=full.retained_messages,
                retained_bytes=full.retained_bytes,
                max_messages=full.max_messages,
                max_bytes=full.max_bytes,
                retry_after=full.retry_after,
            )

    def _broker_full(self, full: BrokerFull) -> None:
        if self._episodes.begin("total_bytes_full"):
            log.warning(
                "broker.total_bytes_full",
                topic=full.topic,
                total_bytes=full.total_bytes,
                max_total_bytes=full.max_total_bytes,
                retry_after=full.retry_after,
            )

    def _too_many_topics(self, too_many: TooManyTopics) -> None:
        if self._episodes.begin("max_topics"):  # topics are never removed: this episode lasts
            log.warning(
                "broker.max_topics_reached",
                topic=too_many.topic,
                topics=too_many.topics,
                max_topics=too_many.max_topics,
            )

    def _storage_failed(self, failed: StorageFailed) -> None:
        if self._episodes.begin("storage"):
            log.error("broker.storage_failed", path=failed.path, reason=failed.reason, topic=failed.topic)

    def _accepted(self, topic: str, ack: Ack) -> None:
        """A publish went through: the episodes it proves over end, each with its own line."""
        if self._episodes.end(f"topic_full:{topic}"):
            log.info("broker.topic_has_room", topic=topic)
        if self._episodes.end("total_bytes_full"):
            log.info("broker.total_bytes_has_room", topic=topic, total_bytes=self._topics.total_bytes)
        if not ack.duplicate and self._episodes.end("storage"):  # a duplicate wrote nothing
            log.info("broker.storage_recovered", topic=topic)


class StreamSlots:
    """Counts open streams against max_subscribers, so they can never hold every worker thread."""

    def __init__(self, limit: int, counters: BrokerCounters | None = None) -> None:
        if limit < 1:
            raise ValueError(f"max_subscribers must be >= 1, got {limit}")
        self.limit = limit
        self._counters = counters
        self._open = 0
        self._refusing = False  # logged once until a stream is admitted again
        self._lock = threading.Lock()

    @property
    def open(self) -> int:
        with self._lock:
            return self._open

    @contextmanager
    def hold(self, context: grpc.ServicerContext) -> Iterator[None]:
        """A slot for the stream's lifetime, or RESOURCE_EXHAUSTED at once, giving the worker back."""
        with self._lock:
            refused = self._open >= self.limit
            first_refusal = refused and not self._refusing
            self._refusing = refused
            if not refused:
                self._open += 1
            count = self._open
        if refused:
            if self._counters is not None:
                self._counters.refused("max_subscribers")
            if first_refusal:
                log.warning("broker.max_subscribers_reached", subscribers=count, max_subscribers=self.limit)
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"broker has {count} subscribers, the most broker.max_subscribers allows; close one or raise "
                "broker.max_subscribers (each open stream holds one of the broker's threads)",
            )
        try:
            yield
        finally:
            with self._lock:
                self._open -= 1


class _CountedHealth:
    """The standard health service, with each Watch stream counted as a subscriber (it holds a thread too)."""

    def __init__(self, inner: Any, streams: StreamSlots) -> None:
        self._inner = inner
        self._streams = streams

    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 - gRPC's name
        return self._inner.Check(request, context)

    def List(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 - gRPC's name
        return self._inner.List(request, context)

    def Watch(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:  # noqa: N802 - gRPC's name
        with self._streams.hold(context):
            yield from self._inner.Watch(request, context)


class RunningBroker:
    """A started broker: where it listens, its topics, and how to stop it."""

    def __init__(
        self,
        *,
        server: grpc.Server,
        health_servicer: Any,
        topics: Broker,
        port: int,
        address: str,
        counters: BrokerCounters | None = None,
        streams: StreamSlots | None = None,
        security: ServerSecurity | None = None,
        tokens: TokenStore | None = None,
    ) -> None:
        self.security = security if security is not None else ServerSecurity(None, tls=False, mutual=False)
        self.tokens = tokens  # reloaded on SIGHUP by serve
        self._server = server
        self._health = health_servicer
        self.topics = topics
        self.port = port
        self.address = address
        self.counters = counters if counters is not None else BrokerCounters()  # what its metrics report
        self.streams = streams
        self._stop_lock = threading.Lock()
        self._stopping = False
        self._stopped = threading.Event()

    @property
    def serving(self) -> bool:
        """True until ``stop`` is called."""
        with self._stop_lock:
            return not self._stopping

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
    security, tokens = _security(options)  # a bad TLS or tokens file: ConfigError (exit 2) before recovery
    topics = _make_topics(options)
    try:
        return _start_serving(options, topics, security, tokens)
    except BaseException:
        topics.close()  # releases the data directory, so it can be used again at once
        raise


def _security(options: BrokerOptions) -> tuple[ServerSecurity, TokenStore | None]:
    tokens = None
    if options.tokens_file is not None:
        try:
            tokens = TokenStore(options.tokens_file)
        except TokensFileError as error:
            raise ConfigError("broker.auth.tokens_file", options.tokens_file, str(error)) from None
    security = server_security(options.tls_cert, options.tls_key, options.tls_client_ca, token=tokens is not None)
    if tokens is not None and not security.tls and not is_loopback(options.listen):
        raise ConfigError(
            "broker.auth.tokens_file",
            options.tokens_file,
            f"tokens need TLS on {options.listen} (not loopback): set broker.tls.cert and broker.tls.key",
        )
    return security, tokens


def _start_serving(
    options: BrokerOptions, topics: Broker, security: ServerSecurity, tokens: TokenStore | None = None
) -> RunningBroker:
    counters = BrokerCounters()
    try:
        streams = StreamSlots(options.max_subscribers, counters)
    except ValueError as error:
        raise BrokerError(f"invalid broker limits: {error}") from error
    server = grpc.server(
        ThreadPoolExecutor(max_workers=options.max_subscribers + UNARY_WORKERS, thread_name_prefix="broker"),
        options=[
            # Without this, a second broker on the same port would silently share it on Linux.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", options.max_receive_length),
        ],
        interceptors=[] if tokens is None else [AuthInterceptor(tokens, counters.refused)],
    )
    mq_pb2_grpc.add_MessageQueueServicer_to_server(
        MessageQueueServicer(topics, streams=streams, counters=counters), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(_CountedHealth(health_servicer, streams), server)
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    port = _bind(server, options.listen, security.credentials)
    server.start()
    return RunningBroker(
        server=server,
        health_servicer=health_servicer,
        topics=topics,
        port=port,
        address=_connect_address(options.listen, port),
        counters=counters,
        streams=streams,
        security=security,
        tokens=tokens,
    )


def serve(
    options: BrokerOptions,
    *,
    stop_signals: bool = True,
    stop_event: threading.Event | None = None,
    stop_signal: Callable[[], str | None] | None = None,
) -> int:
    """Run a broker until SIGINT/SIGTERM (or ``stop_event``); the process exit code is returned.

    0 after a clean stop; 2, after one line on stderr, when another process holds the address (the operator's
    to fix, like a bad setting); 1, after ``broker.failed``, when the broker cannot start for another reason.
    An ``options.metrics_listen`` that cannot be listened on raises ConfigError (naming observability.listen)
    before the broker starts.

    With ``stop_signals`` it installs its own handlers first thing, before the data directory is recovered
    (so it must run on the main thread): SIGINT and SIGTERM stop it cleanly, even while it starts, and
    SIGHUP is logged as ``broker.sighup_ignored`` and changes nothing. A process that takes its signals
    earlier than this (the CLI, before its imports) passes ``stop_signals=False``, the ``stop_event`` its
    handlers set, and ``stop_signal`` naming the signal that set it, for the ``broker.stopping`` line.
    """
    watch = SignalWatch("broker") if stop_signals else None
    if watch is not None:
        watch.install()
        stop_event, stop_signal = watch.stop, (lambda: watch.stop_signal)
    try:
        return _serve(options, _StopRequests(stop_event or threading.Event(), stop_signal))
    finally:
        if watch is not None:
            watch.uninstall()


class _StopRequests:
    """What the main loop waits on: the event the signal handlers set, and the name of the signal that set it."""

    def __init__(self, event: threading.Event, signal_name: Callable[[], str | None] | None) -> None:
        self._event = event
        self._signal_name = signal_name

    def wait(self, timeout: float) -> bool:
        """True once a stop is requested, waiting up to ``timeout``."""
        if not self._event.wait(timeout):
            return False
        name = self._signal_name() if self._signal_name is not None else None
        if name is not None:
            log.info("broker.stopping", signal=name)
        return True


def _serve(options: BrokerOptions, stop: _StopRequests) -> int:
    """Serve the metrics endpoint (when set) for as long as the broker runs: taken first, as a bad setting is."""
    endpoint = _start_endpoint(options.metrics_listen)
    try:
        return _serve_broker(options, stop, endpoint)
    finally:
        if endpoint is not None:
            endpoint.close()


def _start_endpoint(listen: str) -> Endpoint | None:
    if not listen:
        return None
    from rxstreamer.metrics import start_endpoint  # imports prometheus_client: only when the endpoint is on

    return start_endpoint(listen)  # raises ConfigError naming observability.listen (exit status 2)


def _report_broker(endpoint: Endpoint, running: RunningBroker) -> None:
    from rxstreamer.broker.metrics import BrokerCollector
    from rxstreamer.metrics import Probe

    streams = running.streams
    collector = BrokerCollector(running.counters, running.topics, lambda: 0 if streams is None else streams.open)

    def health() -> Probe:
        return Probe(True, "serving" if running.serving else "stopping")

    def ready() -> Probe:
        return Probe(True, "serving") if running.serving else Probe(False, "the broker is stopping")

    endpoint.attach(collector, health, ready)


def _serve_broker(options: BrokerOptions, stop: _StopRequests, endpoint: Endpoint | None) -> int:
    try:
        running = start_broker(options)
    except AddressInUseError as error:
        # One line on stderr, like every setting the operator must fix; no log line around it.
        print(f"rxstreamer mq: {error}", file=sys.stderr)
        return EXIT_ADDRESS_IN_USE
    except BrokerError as error:
        log.error("broker.failed", listen=options.listen, reason=str(error))
        return 1
    if endpoint is not None:
        _report_broker(endpoint, running)
    try:
        log.info(
            "broker.started",
            listen=options.listen,
            address=running.address,
            port=running.port,
            max_messages=options.max_messages,
            max_bytes=options.max_bytes,
            retention=options.retention,
            max_subscribers=options.max_subscribers,
            max_topics=options.max_topics,
            max_total_bytes=options.max_total_bytes,
            data_dir=None if options.data_dir is None else str(options.data_dir),
            fsync=None if options.data_dir is None else options.fsync,
            fsync_interval=options.fsync_interval
            if options.data_dir is not None and options.fsync == "interval"
            else None,
            tls=running.security.tls,
            mutual_tls=running.security.mutual,
            tokens_file=None if options.tokens_file is None else str(options.tokens_file),
        )
        if not running.security.tls and not options.allow_plaintext and not is_loopback(options.listen):
            log.warning(
                "broker.plaintext",
                listen=options.listen,
                meaning="clients reach this broker without TLS from other machines; set broker.tls.cert and "
                "broker.tls.key, or broker.allow_plaintext = true where TLS ends in front of it",
            )
        give_back_sighup = reload_on_hangup(running.tokens) if running.tokens is not None else None
        # A signal that came while the broker started is waiting here already: it stops the broker at once.
        while not stop.wait(POLL_INTERVAL):
            pass
        if give_back_sighup is not None:
            give_back_sighup()
    finally:
        running.stop(STOP_GRACE)
    log.info("broker.stopped", port=running.port)
    return 0


def _make_topics(options: BrokerOptions) -> Broker:
    storage = _open_storage(options)
    try:
        topics = _recover_topics(options, storage)
    except BaseException:
        if storage is not None:
            storage.close()  # unlocks the data directory
        raise
    _log_recovered(topics)
    return topics


def _recover_topics(options: BrokerOptions, storage: Database | None) -> Broker:
    try:
        return Broker(
            max_messages=options.max_messages,
            max_bytes=options.max_bytes,
            retention=options.retention,
            max_topics=options.max_topics,
            max_total_bytes=options.max_total_bytes,
            storage=storage,
        )
    except ValueError as error:  # the limits are checked before any topic is recovered
        raise BrokerError(f"invalid broker limits: {error}") from error
    except (DataDirError, StorageFailed) as error:
        raise BrokerError(f"cannot recover data directory {options.data_dir}: {error}") from error


def _open_storage(options: BrokerOptions) -> Database | None:
    if options.data_dir is None:
        return None
    try:
        return Database.open(options.data_dir, policy=options.fsync, interval=options.fsync_interval)
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


def _bind(server: grpc.Server, listen: str, credentials: grpc.ServerCredentials | None = None) -> int:
    """Bind ``listen``, turning both failure styles of grpc (0 or RuntimeError) into BrokerError.

    A port another process holds is found by a probe first, so the operator gets AddressInUseError's one line
    rather than grpc's own multi-line complaint on stderr; the probe runs again after a grpc failure, for a
    port taken in between.
    """
    port_text = listen.rpartition(":")[2]
    if port_text.isdigit() and int(port_text) > _MAX_PORT:
        # grpc would silently bind the port number modulo 65536.
        raise BrokerError(f"cannot listen on {listen}: port {port_text} is above {_MAX_PORT}")
    if _in_use(listen):
        server.stop(None)
        raise AddressInUseError(listen)
    try:
        port = server.add_insecure_port(listen) if credentials is None else server.add_secure_port(listen, credentials)
    except RuntimeError as error:
        server.stop(None)
        if _in_use(listen):
            raise AddressInUseError(listen) from error
        raise BrokerError(f"cannot listen on {listen}: {error}") from error
    if port == 0:
        server.stop(None)
        if _in_use(listen):
            raise AddressInUseError(listen)
        raise BrokerError(f"cannot listen on {listen}: the address is invalid or already in use")
    return port


def _in_use(listen: str) -> bool:
    """Whether binding ``host:port`` fails with EADDRINUSE (as grpc binds it, with SO_REUSEADDR).

    Anything else (a unix socket, port 0, a name that does not resolve) is False: grpc's bind decides then.
    """
    host, _, port_text = listen.rpartition(":")
    if listen.startswith("unix:") or not port_text.isdigit() or int(port_text) == 0:
        return False
    host = host.strip("[]")
    try:
        addresses = socket.getaddrinfo(host or None, int(port_text), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        return False
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    return True
    return False


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


def _retry_after(context: grpc.ServicerContext, seconds: float | None) -> None:
    if seconds is not None:
        context.set_trailing_metadata(((RETRY_AFTER_METADATA, _milliseconds(seconds)),))


def _milliseconds(seconds: float) -> str:
    """Round up, so a client sleeping that long finds the room there."""
    return str(max(1, math.ceil(seconds * 1000)))
