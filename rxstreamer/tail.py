"""Read a topic back: every metric the queue holds or receives, one JSON object per line.

This is how users (and the integration tests) see exactly what arrived. The subscription runs on a
background thread feeding a queue, so the main thread can stop on a count, an idle timeout or Ctrl-C
without depending on the stream producing anything.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

import grpc
from google.protobuf.message import DecodeError

from rxstreamer.encoding import CONTENT_TYPE, decode_batch, metric_to_dict
from rxstreamer.proto import mq_pb2, mq_pb2_grpc


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


_END = object()


def tail(options: TailOptions, out: TextIO) -> int:
    """Print metrics until a stop condition; returns how many were printed."""
    channel = grpc.insecure_channel(options.address)
    try:
        call = mq_pb2_grpc.MessageQueueStub(channel).Subscribe(_request(options))
        received: queue.Queue[object] = queue.Queue(maxsize=64)
        reader = threading.Thread(target=_pump, args=(call, received), daemon=True, name="tail-reader")
        reader.start()
        try:
            return _print_until_done(received, options, out)
        finally:
            call.cancel()
    finally:
        channel.close()


def _request(options: TailOptions) -> mq_pb2.SubscribeRequest:
    if options.from_offset is not None:
        return mq_pb2.SubscribeRequest(
            topic=options.topic, start=mq_pb2.START_POSITION_OFFSET, offset=options.from_offset
        )
    start = mq_pb2.START_POSITION_EARLIEST if options.from_beginning else mq_pb2.START_POSITION_LATEST
    return mq_pb2.SubscribeRequest(topic=options.topic, start=start)


def _pump(call: Iterator[mq_pb2.Message], received: queue.Queue[object]) -> None:
    try:
        for message in call:
            received.put(message)
    except grpc.RpcError as error:
        received.put(error)
    received.put(_END)


def _print_until_done(received: queue.Queue[object], options: TailOptions, out: TextIO) -> int:
    printed = 0
    while options.count is None or printed < options.count:
        try:
            item = received.get(timeout=options.idle_timeout)
        except queue.Empty:
            break  # idle: nothing more is coming soon
        if item is _END:
            break
        if isinstance(item, grpc.RpcError):
            if isinstance(item, grpc.Call) and item.code() == grpc.StatusCode.CANCELLED:
                break
            raise TailError(_describe(item, options.address))
        assert isinstance(item, mq_pb2.Message)
        printed += _print_message(item, options, out, limit=None if options.count is None else options.count - printed)
    return printed


def _print_message(message: mq_pb2.Message, options: TailOptions, out: TextIO, limit: int | None) -> int:
    if message.headers.get("content-type", CONTENT_TYPE) != CONTENT_TYPE:
        return 0  # not telemetry: another producer shares the topic
    try:
        batch = decode_batch(message.payload)
    except DecodeError as error:
        raise TailError(f"message at offset {message.offset} is not a MetricBatch: {error}") from error
    metrics = batch.metrics if limit is None else batch.metrics[:limit]
    for metric in metrics:
        line = metric_to_dict(metric)
        if options.with_batch:
            line.update(producer_id=batch.producer_id, sequence=batch.sequence, offset=message.offset)
        out.write(json.dumps(line) + "\n")
    out.flush()
    return len(metrics)


def _describe(error: grpc.RpcError, address: str) -> str:
    if isinstance(error, grpc.Call):
        code = error.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            return f"cannot reach the message queue at {address}: {error.details()}"
        return f"{code.name}: {error.details()}"
    return str(error)
