"""The gRPC sink: publish encoded batches to a MessageQueue service at ``grpc://host:port`` (or ``host:port``).

Each publish is one ``Publish`` call with a deadline, made without blocking the pipeline's thread: gRPC's own
threads carry it (``future()``), and its answer is handed back through the pipeline's scheduler, so every
operator still runs on that one thread while the thread reads (``read_ahead``) the next batch meanwhile.
Measured side by side on two cores (docs/benchmarks.md, "Overlap"), that is 1.1 to 1.4 times as fast as the
blocking call it replaced, at batch 1000, 100 and 10. ``background=True`` makes the blocking call on a
publishing thread of its own instead (``message_queue.publish_in_background``); handing work between Python
threads under the GIL makes that the slowest of the three. A call already sent is never cancelled by disposal:
shutdown waits for it (``wait_idle``), because cutting it would leave the queue holding rows the streamer cannot
account for.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import grpc
import reactivex
import structlog
from reactivex import Observable, abc
from reactivex.disposable import Disposable

from rxstreamer.encoding import CONTENT_DIGEST_HEADER, CONTENT_ENCODING_HEADER, compress_payload
from rxstreamer.model import EncodedBatch, PublishAck
from rxstreamer.proto import mq_pb2, mq_pb2_grpc
from rxstreamer.retry import PublishError
from rxstreamer.sinks.base import AnsweredElsewhere, SinkOptions
from rxstreamer.tls import ClientSecurity, client_security, explain_unavailable

log = structlog.get_logger()

__all__ = ["GrpcSink", "publish_error"]

#: Reconnect quickly after the queue comes back: gRPC's own default waits up to two minutes.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


#: What a call may end with: the server's answer, or the channel closed before (ValueError) or during it.
_CALL_ERRORS = (grpc.RpcError, ValueError, grpc.FutureCancelledError)

#: How gRPC's own size check words its refusal: "Received message larger than max (5242885 vs. 4194304)".
_TOO_LARGE = re.compile(r"larger than max \((\d+) vs\. (\d+)\)")


def publish_error(
    error: grpc.RpcError, batch: EncodedBatch | None = None, security: tuple[str, ClientSecurity] | None = None
) -> PublishError:
    """A PublishError carrying the status name and the server's retry hint, if it sent one.

    A message over the server's receive limit is refused by gRPC itself with RESOURCE_EXHAUSTED, the status
    of a full topic, which is retried; the same batch can never fit, so that one is made final, with a
    message that names the sizes and what to change.
    """
    status = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (error.details() if isinstance(error, grpc.Call) else None) or str(error)
    retry_after: float | None = None
    if isinstance(error, grpc.Call):
        for key, value in error.trailing_metadata() or ():
            if key == "retry-after-ms" and isinstance(value, str) and value.isdigit():
                retry_after = int(value) / 1000
    too_large = _TOO_LARGE.search(details) if status == grpc.StatusCode.RESOURCE_EXHAUSTED else None
    if too_large is not None:
        size, limit = too_large.groups()
        what = f"batch {batch.sequence} ({batch.rows} rows)" if batch is not None else "the batch"
        return PublishError(
            status.name,
            f"{what} is a {size}-byte message and the queue accepts at most {limit} bytes in one message; "
            "lower telemetry.batch_size, or raise the queue's limit (broker.max_bytes)",
            final=True,
        )
    if status == grpc.StatusCode.UNAUTHENTICATED:
        return PublishError(status.name, f"the queue refused this client's token ({details})", final=True)
    if status == grpc.StatusCode.UNAVAILABLE and security is not None:
        mismatch = explain_unavailable(details, *security)  # TLS on one side only: no retry mends it
        if mismatch is not None:
            return PublishError(status.name, mismatch, final=True)
    return PublishError(status.name, details, retry_after)


class GrpcSink(AnsweredElsewhere):
    """Publishes to one topic of a MessageQueue over one channel; ``address`` is a gRPC target (``host:port``)."""

    def __init__(self, address: str, topic: str, options: SinkOptions) -> None:
        self.address = address
        self._topic = topic
        self._timeout = options.timeout
        compression = options.settings.compression if options.settings is not None else "none"
        # gzip is gRPC's own, per call (the payload stays plain); zstd compresses the payload, named in a header.
        self._call_compression = grpc.Compression.Gzip if compression == "gzip" else None
        self._payload_encoding = "zstd" if compression == "zstd" else ""
        on_connectivity, background = options.on_connectivity, options.background
        self._security = client_security(options.settings, address)  # ConfigError for a TLS or token file
        self._channel = self._security.channel(address, options=_CHANNEL_OPTIONS)
        self._stub = mq_pb2_grpc.MessageQueueStub(self._channel)
        super().__init__(options.scheduler)
        self._calls = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rxstreamer-publish") if background else None
        self._closed = False
        self._on_connectivity = on_connectivity
        if on_connectivity is not None:
            self._channel.subscribe(self._connectivity_changed, try_to_connect=True)

    def publish(self, batch: EncodedBatch) -> Observable[PublishAck]:
        payload = compress_payload(batch.payload, self._payload_encoding)  # once per batch, not per attempt
        headers = {"content-type": batch.content_type, CONTENT_DIGEST_HEADER: batch.content_digest}
        if self._payload_encoding:
            headers[CONTENT_ENCODING_HEADER] = self._payload_encoding

        def subscribe(observer: abc.ObserverBase[PublishAck], _: abc.SchedulerBase | None = None) -> Disposable:
            request = mq_pb2.PublishRequest(
                topic=self._topic,
                payload=payload,
                headers=headers,
                producer_id=batch.producer_id,
                sequence=batch.sequence,
            )
            listening = [True]
            self._publish_started()
            if self._calls is not None:
                self._calls.submit(self._call, request, batch, observer, listening)
            else:
                self._call_without_blocking(request, batch, observer, listening)
            return Disposable(lambda: listening.__setitem__(0, False))

        return reactivex.create(subscribe)

    def _call(
        self,
        request: mq_pb2.PublishRequest,
        batch: EncodedBatch,
        observer: abc.ObserverBase[PublishAck],
        listening: list[bool],
    ) -> None:
        """The blocking call, on the publishing thread (``background``)."""
        call = partial(self._stub.Publish, request, timeout=self._timeout, compression=self._call_compression)
        self._settle(call, batch, observer, listening)

    def _call_without_blocking(
        self,
        request: mq_pb2.PublishRequest,
        batch: EncodedBatch,
        observer: abc.ObserverBase[PublishAck],
        listening: list[bool],
    ) -> None:
        """The call carried by gRPC's threads; its answer is settled on one of them (or here, if it is over)."""
        try:
            call = self._stub.Publish.future(request, timeout=self._timeout, compression=self._call_compression)
        except _CALL_ERRORS as error:  # the channel was closed under the call
            self._answer(self._failed(error, batch), observer, listening)
            return
        call.add_done_callback(lambda finished: self._settle(finished.result, batch, observer, listening))

    def _settle(
        self,
        response: Callable[[], mq_pb2.PublishResponse],
        batch: EncodedBatch,
        observer: abc.ObserverBase[PublishAck],
        listening: list[bool],
    ) -> None:
        """Get the call's ``response`` (or the error it ended with) and answer the publish with it."""
        try:
            answered = response()
        except _CALL_ERRORS as error:
            self._answer(self._failed(error, batch), observer, listening)
        else:
            self._answer(self._acked(answered, batch), observer, listening)

    def _acked(self, response: mq_pb2.PublishResponse, batch: EncodedBatch) -> PublishAck:
        # Counted at once: the ack is real even if the pipeline was disposed meanwhile.
        ack = PublishAck(batch.sequence, response.offset, response.duplicate, batch.rows, batch.position, batch.read)
        self._recorder.record(ack)
        return ack

    def _failed(self, error: BaseException, batch: EncodedBatch) -> PublishError:
        if isinstance(error, grpc.RpcError):
            return publish_error(error, batch, (self.address, self._security))
        # ValueError from a closed channel, FutureCancelledError from one closed during the call
        return PublishError("CANCELLED", f"the publish was cut as the channel closed: {type(error).__name__} {error}")

    def _connectivity_changed(self, state: grpc.ChannelConnectivity) -> None:
        if self._on_connectivity is not None:
            self._on_connectivity(state.name)

    def close(self) -> None:
        """Close the channel; any call still in flight is cancelled. Call ``wait_idle`` first.

        Idempotent, and guarded rather than relying on gRPC tolerating a second close: every path out of a
        run may close the sink without knowing whether another already did.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._on_connectivity is not None:
            self._channel.unsubscribe(self._connectivity_changed)
        self._channel.close()
        if self._calls is not None:
            self._calls.shutdown(wait=False)
