"""``rxstreamer tail`` for a NATS JetStream stream: the same JSON lines as for the gRPC broker.

An ordered consumer (ephemeral, flow-controlled, re-created by the client after a failover) reads the
topic's subject ``rxstreamer.<topic>`` of ``message_queue.nats.stream``: from its first message
(``--from-beginning``), from a stream sequence (``--from-offset``: the offset is the stream sequence, as in
the streamer's acknowledgements), or only new messages. The offset printed with ``--with-batch`` is the
message's stream sequence; the producer id and sequence are the batch's own (as in its ``Nats-Msg-Id``).

It connects as the streamer does (``message_queue.tls``, and the user, token or creds of ``message_queue.nats``
and ``message_queue.auth``), and stops at once, with the reason, on what no retry mends: credentials refused,
a permissions violation, TLS on one side only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TextIO, TypeVar

import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from rxstreamer.encoding import CONTENT_ENCODING_HEADER, METRIC_BATCH_CONTENT_TYPES, PayloadEncodingError, decode_batch
from rxstreamer.retry import PublishError
from rxstreamer.sinks import split_address
from rxstreamer.sinks.nats import (
    SUBJECT_PREFIX,
    InterruptedWaitError,
    NatsRefusedError,
    NatsSecurity,
    connect,
    nats_security,
    publish_error,
    refusal,
    servers_of,
    unless_set,
)
from rxstreamer.tail import TailError, TailOptions, print_batch

__all__ = ["tail_nats"]

_CONNECT_TIMEOUT_S = 5
SUBSCRIBE_PATIENCE_S = 30.0
_FOREVER_S = 365 * 24 * 3600.0
_T = TypeVar("_T")


def tail_nats(options: TailOptions, out: TextIO, stream: str) -> int:
    """Print the topic's metrics from ``stream`` until a stop condition; returns how many were printed."""
    return asyncio.run(_tail(options, out, stream))


async def _tail(options: TailOptions, out: TextIO, stream: str) -> int:
    _, target = split_address(options.address)
    servers = servers_of(target)
    security = nats_security(options.settings)  # ConfigError for a TLS, password or creds file
    refused = _Refusal(servers, security)
    try:
        connection = await connect(
            servers, security, connect_timeout=_CONNECT_TIMEOUT_S, error_cb=refused.note, closed_cb=refused.closed
        )
    except NatsRefusedError as error:
        raise TailError(error.error.message) from None
    except Exception as error:
        raise TailError(f"cannot reach the NATS servers at {options.address}: {error}") from None
    try:
        subscription = await refused.unless(_subscribe(connection.jetstream(), options, stream))
        printed = 0
        while options.count is None or printed < options.count:
            try:
                message = await refused.unless(subscription.next_msg(timeout=options.idle_timeout or _FOREVER_S))
            except nats.errors.TimeoutError:
                break  # idle: nothing more is coming soon
            limit = None if options.count is None else options.count - printed
            printed += _print(message, options, out, limit)
        return printed
    finally:
        await connection.close()


async def _subscribe(js: JetStreamContext, options: TailOptions, stream: str) -> JetStreamContext.PushSubscription:
    """An ordered consumer of the topic; retried while the cluster cannot answer (an election after a server
    was lost takes seconds), for at most ``SUBSCRIBE_PATIENCE_S``."""
    deadline = time.monotonic() + SUBSCRIBE_PATIENCE_S
    while True:
        try:
            return await js.subscribe(
                f"{SUBJECT_PREFIX}.{options.topic}", stream=stream, ordered_consumer=True, config=_start(options)
            )
        except nats.js.errors.NotFoundError:
            raise TailError(f"the stream {stream!r} does not exist at {options.address}") from None
        except nats.errors.Error as error:
            if not publish_error(error).retryable or time.monotonic() > deadline:
                raise TailError(f"cannot read stream {stream!r}: {error}") from None
            await asyncio.sleep(0.5)


class _Refusal:
    """The first error no retry mends on the connection (a permissions violation is answered by no reply, only by
    this error): ``unless`` ends any wait with it as a TailError."""

    def __init__(self, servers: list[str], security: NatsSecurity) -> None:
        self._servers, self._security = servers, security
        self._error: PublishError | None = None
        self._event = asyncio.Event()

    async def note(self, error: Exception) -> None:
        final = refusal(error, self._servers, self._security)
        if final is not None and self._error is None:
            self._error = final
            self._event.set()

    async def closed(self) -> None:
        self._event.set()  # closed by the client itself (not by us: we close only after the last wait)

    async def unless(self, awaitable: Awaitable[_T]) -> _T:
        try:
            return await unless_set(awaitable, self._event)
        except InterruptedWaitError:
            raise TailError(
                self._error.message if self._error is not None else "the NATS connection was closed"
            ) from None


def _start(options: TailOptions) -> ConsumerConfig:
    if options.from_offset is not None:
        return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(options.from_offset, 1))
    return ConsumerConfig(deliver_policy=DeliverPolicy.ALL if options.from_beginning else DeliverPolicy.NEW)


def _print(message: Msg, options: TailOptions, out: TextIO, limit: int | None) -> int:
    headers = message.headers or {}
    content_type = headers.get("content-type")  # names the version; without it, the payload does
    if content_type is not None and content_type not in METRIC_BATCH_CONTENT_TYPES:
        return 0  # not telemetry: another producer shares the subject
    offset = message.metadata.sequence.stream
    try:
        batch = decode_batch(message.data, headers.get(CONTENT_ENCODING_HEADER, ""), content_type)
    except PayloadEncodingError as error:
        raise TailError(f"message {offset} of the stream cannot be read: {error}") from error
    except DecodeError as error:
        raise TailError(f"message {offset} of the stream is not a MetricBatch: {error}") from error
    return print_batch(batch, offset, options, out, limit)
