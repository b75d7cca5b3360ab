"""Read a topic back: every metric the queue holds or receives, one JSON object per line.

This is how users (and the integration tests) see exactly what arrived. The subscription runs on a
background thread feeding a queue, so the main thread can stop on a count, an idle timeout or Ctrl-C
without depending on the stream producing anything.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import grpc
from google.protobuf.message import DecodeError

from rxstreamer.encoding import (
    CONTENT_ENCODING_HEADER,
    METRIC_BATCH_CONTENT_TYPES,
    PayloadEncodingError,
    decode_batch,
    metric_to_dict,
)
from rxstreamer.proto import mq_pb2, mq_pb2_grpc
from rxstreamer.proto.telemetry_pb2 import MetricBatch
from rxstreamer.tls import ClientSecurity, client_security, explain_unavailable

if TYPE_CHECKING:
    from rxstreamer.config.declared import MessageQueueSettings


class TailError(Exception):
    """The queue could not be read; the message says why in one line."""


@dataclass(frozen=True)
class TailOptions:
    address: str
    topic: str
    from_beginning: bool = False
    from_offset: int | None = None
    count: int | None = None  # stop after this many metrics
    idle_timeout: float | None = None  # stop when nothing arrived for this long
    with_batch: bool = False  # add producer_id, sequence and offset to each line
    settings: MessageQueueSettings | None = None  # for message_queue.tls and message_queue.auth


_END = object()
# The initial metadata rxstreamer.broker sends on Subscribe (not imported: tail runs without the broker extra).
START_OFFSET_METADATA = "start-offset"
PROBE_TIMEOUT_S = 5.0  # a probe only adds a notice; a broker that does not answer it gets none


@dataclass(frozen=True)
class _Notice:
    text: str


def tail(options: TailOptions, out: TextIO, notify: Callable[[str], None] | None = None) -> int:
    """Print metrics until a stop condition; returns how many were printed.

    ``notify`` hears, once the subscription is in place, why nothing may come for a while: the topic holds
    no messages, or the offset asked for is past its end. Otherwise a silent wait looks like a hang.
    """
    security = client_security(options.settings, options.address)  # ConfigError for a TLS or token file
    channel = security.channel(options.address)
    try:
        stub = mq_pb2_grpc.MessageQueueStub(channel)
        call = stub.Subscribe(_request(options))
        received: queue.Queue[object] = queue.Queue(maxsize=64)
        explain = (lambda: _why_waiting(stub, call, options)) if notify else (lambda: None)
        reader = threading.Thread(target=_pump, args=(call, received, explain), daemon=True, name="tail-reader")
        reader.start()
        try:
            return _print_until_done(received, options, out, notify, security)
        finally:
            call.cancel()
    finally:
        channel.close()


def _why_waiting(stub: mq_pb2_grpc.MessageQueueStub, call: Any, options: TailOptions) -> str | None:
    """Why nothing may arrive soon, from the start offsets the broker announces, or None.

    The broker creates a topic on first use, so a topic that does not exist and one that holds nothing
    look the same from here: both "hold no messages". The offsets are read with two short probing
    subscriptions (EARLIEST and LATEST) besides the real one. Those reads are not one atomic look: a message
    published in between can hide the notice, or outdate it by that message, which tail then prints anyway.
    """
    start = _start_offset(call)
    if start is None:  # the call failed (reported as such) or the broker does not announce offsets
        return None
    latest = options.from_offset is None and not options.from_beginning
    first = start if options.from_beginning else _probe(stub, options.topic, mq_pb2.START_POSITION_EARLIEST)
    following = start if latest else _probe(stub, options.topic, mq_pb2.START_POSITION_LATEST)
    if first is None or following is None:
        return None
    topic = options.topic
    if options.from_offset is not None and options.from_offset > following:
        where = f"offset {options.from_offset} is past the end of topic {topic!r} (next offset {following})"
        return f"{where}; waiting for new messages"
    if first == following:
        return f"topic {topic!r} holds no messages yet; waiting"
    return None


def _probe(stub: mq_pb2_grpc.MessageQueueStub, topic: str, start: mq_pb2.StartPosition.ValueType) -> int | None:
    call = stub.Subscribe(mq_pb2.SubscribeRequest(topic=topic, start=start), timeout=PROBE_TIMEOUT_S)
    try:
        return _start_offset(call)
    finally:
        call.cancel()


def _start_offset(call: Any) -> int | None:
    """The ``start-offset`` the broker sent first; None when the call failed before or sent none."""
    try:
        metadata = call.initial_metadata() or ()
    except grpc.RpcError:
        return None
    for key, value in metadata:
        if key == START_OFFSET_METADATA and str(value).isdigit():
            return int(value)
    return None


def _request(options: TailOptions) -> mq_pb2.SubscribeRequest:
    if options.from_offset is not None:
        return mq_pb2.SubscribeRequest(
            topic=options.topic, start=mq_pb2.START_POSITION_OFFSET, offset=options.from_offset
        )
    start = mq_pb2.START_POSITION_EARLIEST if options.from_beginning else mq_pb2.START_POSITION_LATEST
    return mq_pb2.SubscribeRequest(topic=options.topic, start=start)


def _pump(call: Iterator[mq_pb2.Message], received: queue.Queue[object], explain: Callable[[], str | None]) -> None:
    notice = explain()
    if notice is not None:
        received.put(_Notice(notice))
    try:
        for message in call:
            received.put(message)
    except grpc.RpcError as error:
        received.put(error)
    received.put(_END)


def _print_until_done(
    received: queue.Queue[object],
    options: TailOptions,
    out: TextIO,
    notify: Callable[[str], None] | None,
    security: ClientSecurity | None = None,
) -> int:
    printed = 0
    while options.count is None or printed < options.count:
        try:
            item = received.get(timeout=options.idle_timeout)
        except queue.Empty:
            break  # idle: nothing more is coming soon
        if item is _END:
            break
        if isinstance(item, _Notice):
            if notify is not None:
                notify(item.text)
            continue
        if isinstance(item, grpc.RpcError):
            if isinstance(item, grpc.Call) and item.code() == grpc.StatusCode.CANCELLED:
                break
            raise TailError(_describe(item, options.address, security))
        assert isinstance(item, mq_pb2.Message)
        printed += _print_message(item, options, out, limit=None if options.count is None else options.count - printed)
    return printed


def _print_message(message: mq_pb2.Message, options: TailOptions, out: TextIO, limit: int | None) -> int:
    content_type = message.headers.get("content-type")  # names the version; without it, the payload does
    if content_type is not None and content_type not in METRIC_BATCH_CONTENT_TYPES:
        return 0  # not telemetry: another producer shares the topic
    try:
        batch = decode_batch(message.payload, message.headers.get(CONTENT_ENCODING_HEADER, ""), content_type)
    except PayloadEncodingError as error:
        raise TailError(f"message at offset {message.offset} cannot be read: {error}") from error
    except DecodeError as error:
        raise TailError(f"message at offset {message.offset} is not a MetricBatch: {error}") from error
    return print_batch(batch, message.offset, options, out, limit)


def print_batch(batch: MetricBatch, offset: int, options: TailOptions, out: TextIO, limit: int | None) -> int:
    """A batch's metrics as JSON lines (at most ``limit``), whichever queue it came from."""
    metrics = batch.metrics if limit is None else batch.metrics[:limit]
    for metric in metrics:
        line = metric_to_dict(metric)
        if options.with_batch:
            line.update(producer_id=batch.producer_id, sequence=batch.sequence, offset=offset)
        out.write(json.dumps(line) + "\n")
    out.flush()
    return len(metrics)


def _describe(error: grpc.RpcError, address: str, security: ClientSecurity | None = None) -> str:
    if isinstance(error, grpc.Call):
        code = error.code()
        mismatch = None
        if code == grpc.StatusCode.UNAVAILABLE and security is not None:
            mismatch = explain_unavailable(error.details() or "", address, security)
        if mismatch is not None:
            return mismatch
        if code == grpc.StatusCode.UNAVAILABLE:
            return f"cannot reach the message queue at {address}: {error.details()}"
        return f"{code.name}: {error.details()}"
    return str(error)
