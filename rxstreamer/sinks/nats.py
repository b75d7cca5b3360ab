"""The NATS JetStream sink: each batch one message on ``rxstreamer.<topic>``, de-duplicated by its identity.

``message_queue.address = "nats://h1:4222,nats://h2:4222,..."`` names every seed server of the cluster. A
batch is published as one JetStream message: the encoded ``MetricBatch`` as payload, with the headers
``Nats-Msg-Id: <topic>/<producer_id>:<sequence>`` (the topic because JetStream de-duplicates stream-wide), the
content type and the content digest. The publish
acknowledgement (the stream sequence, and whether JetStream found the message id already stored) becomes
the ``PublishAck`` that drives checkpoints, exactly as the gRPC broker's answer does.

Exactly once, in two parts. Within the stream's ``duplicate_window`` JetStream drops a re-sent message id
itself, so a retry after an ambiguous failure (a timeout during a leader election, a lost connection)
stores nothing twice. Beyond the window it no longer remembers: a streamer restarted from its checkpoint
long after a crash would store again the batch that was in flight when it died, if JetStream had stored it
without the ack arriving. So, when resuming (``SinkOptions.resume``), the sink reads the stream backwards
from its end, over the messages stored since the checkpoint was written, and remembers the sequences of
this producer stored after the checkpoint's; such a batch, when the pipeline comes to it, is answered as
a duplicate with its stored offset instead of being sent. The read is bounded by time (the checkpoint's
``acked_at``, less a margin for clock skew), not by a count, so other producers' messages in between
cannot hide one.

nats-py is asyncio; the pipeline is not. The sink runs one event loop on a thread of its own; ``publish``
hands the coroutine to it and the answer comes back on the pipeline's thread through its scheduler. Every
pending acknowledgement has a deadline (``message_queue.publish_timeout``), whatever the client does.
Initial connection is retried in the background like reconnection, so a cluster that is down at start
behaves like a gRPC broker that is down: publishes fail as UNAVAILABLE and are retried.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Coroutine
from datetime import timedelta
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
import reactivex
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from reactivex import Observable, abc
from reactivex.disposable import Disposable

from rxstreamer.config import ConfigError
from rxstreamer.encoding import CONTENT_DIGEST_HEADER, CONTENT_ENCODING_HEADER, compress_payload
from rxstreamer.model import EncodedBatch, PublishAck
from rxstreamer.retry import PublishError
from rxstreamer.sinks.base import AnsweredElsewhere, ResumePoint, SinkOptions, tell_observer

__all__ = ["SUBJECT_PREFIX", "NatsSink", "message_id", "servers_of", "subject_covers"]

log = structlog.get_logger()

SUBJECT_PREFIX = "rxstreamer"
MSG_ID_HEADER = "Nats-Msg-Id"
# How far before a checkpoint's time the resume scan still looks: the clocks of the streamer's host and of
# the NATS servers may disagree by this much.
CLOCK_SKEW = timedelta(minutes=5)
_RECONNECT_WAIT_S = 0.25
_T = TypeVar("_T")


def servers_of(target: str) -> list[str]:
    """``h1:4222,nats://h2:4222`` (an address without its first ``nats://``) as a list of server URLs."""
    return [f"nats://{part.strip().removeprefix('nats://')}" for part in target.split(",") if part.strip()]


def message_id(topic: str, batch: EncodedBatch) -> str:
    """``<topic>/<producer_id>:<sequence>``. JetStream de-duplicates across the whole stream, every subject
    of it: without the topic, the same file streamed to a second topic would be dropped as duplicates."""
    return f"{topic}/{batch.producer_id}:{batch.sequence}"


def subject_covers(pattern: str, subject: str) -> bool:
    """Whether a stream subject (with NATS wildcards ``*`` and ``>``) takes messages on ``subject``."""
    wanted, tokens = pattern.split("."), subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens) or (token != "*" and token != tokens[index]):
            return False
    return len(wanted) == len(tokens)


def publish_error(error: BaseException) -> PublishError:  # noqa: PLR0911 (one answer per kind of failure)
    """What a failed JetStream publish means for the retry policy: retried unless no retry can mend it."""
    if isinstance(error, nats.js.errors.NoStreamResponseError | nats.errors.NoRespondersError):
        return PublishError("UNAVAILABLE", "no JetStream server answered for the subject (no stream leader yet?)")
    if isinstance(error, nats.js.errors.ServiceUnavailableError | nats.js.errors.ServerError):
        return PublishError("UNAVAILABLE", f"JetStream answered {error.code}: {error.description or 'unavailable'}")
    if isinstance(error, nats.js.errors.APIError):
        status = "NOT_FOUND" if error.code == 404 else "FAILED_PRECONDITION"
        return PublishError(status, f"JetStream refused the batch: {error.code} {error.description}", final=True)
    if isinstance(error, nats.errors.MaxPayloadError):
        return PublishError(
            "RESOURCE_EXHAUSTED",
            f"{error}; lower telemetry.batch_size, or raise the servers' max_payload",
            final=True,
        )
    if isinstance(error, TimeoutError | asyncio.TimeoutError):
        return PublishError("DEADLINE_EXCEEDED", "no acknowledgement within message_queue.publish_timeout")
    if isinstance(error, nats.errors.Error | OSError):
        return PublishError("UNAVAILABLE", f"{type(error).__name__}: {error}")
    return PublishError("UNKNOWN", f"{type(error).__name__}: {error}")


class NatsSink(AnsweredElsewhere):
    """Publishes to one subject of a JetStream stream over one connection to the cluster."""

    def __init__(self, target: str, topic: str, options: SinkOptions) -> None:
        if options.settings is None:
            raise ValueError("the NATS sink needs the message_queue settings (SinkOptions.settings)")
        self.address = target
        self._servers = servers_of(target)
        self._topic = topic
        self._subject = f"{SUBJECT_PREFIX}.{topic}"
        self._settings = options.settings.nats
        # No channel compression in NATS: gzip and zstd both compress the payload, named in content-encoding.
        compression = options.settings.compression
        self._payload_encoding = "" if compression == "none" else compression
        self._timeout = options.timeout
        self._scheduler = options.scheduler
        self._on_connectivity = options.on_connectivity
        self._resume = options.resume
        super().__init__()
        self._closed = False
        self._stored_before: dict[int, int] = {}  # this producer's sequences found stored after the checkpoint
        self._refusal: PublishError | None = None  # set when the stream can never take our batches
        self._permission_error: str | None = None
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rxstreamer-nats", daemon=True)
        self._thread.start()
        self._connecting = asyncio.run_coroutine_threadsafe(self._connect_until_closed(), self._loop)
        self._ready.wait(options.timeout)
        if self._refusal is not None and self._refusal.status == "INVALID_SETTING":
            self.close()
            raise ConfigError("message_queue.nats.stream", self._settings.stream, self._refusal.message)

    def publish(self, batch: EncodedBatch) -> Observable[PublishAck]:
        def subscribe(observer: abc.ObserverBase[PublishAck], _: abc.SchedulerBase | None = None) -> Disposable:
            listening = [True]
            self._publish_started()
            future = asyncio.run_coroutine_threadsafe(self._publish(batch), self._loop)
            future.add_done_callback(lambda done: self._answered(done.result(), observer, listening))
            return Disposable(lambda: listening.__setitem__(0, False))

        return reactivex.create(subscribe)

    def close(self) -> None:
        """Close the connection (what is in flight is cut: call ``wait_idle`` first) and stop the loop."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._connecting.cancel()
        if self._nc is not None:
            self._call(self._nc.close(), timeout=2.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=2.0)

    # --- on the event loop --------------------------------------------------------------------------------

    async def _publish(self, batch: EncodedBatch) -> PublishAck | PublishError:
        """One attempt: never raises, and never outlives ``publish_timeout`` (plus a second for the client)."""
        try:
            return await asyncio.wait_for(self._attempt(batch), self._timeout + 1.0)
        except Exception as error:
            if self._permission_error is not None:
                return PublishError("PERMISSION_DENIED", self._permission_error, final=True)
            return publish_error(error)

    async def _attempt(self, batch: EncodedBatch) -> PublishAck | PublishError:
        if self._refusal is not None:
            return self._refusal
        if self._js is None:
            return PublishError("UNAVAILABLE", f"not connected to any of {', '.join(self._servers)} yet")
        if self._resume is not None and batch.producer_id == self._resume.producer_id:
            stored = self._stored_before.get(batch.sequence)
            if stored is not None:  # stored by the last run, its ack lost: answered without sending it again
                return self._ack(batch, stored, duplicate=True)
        headers = {
            MSG_ID_HEADER: message_id(self._topic, batch),
            "content-type": batch.content_type,
            CONTENT_DIGEST_HEADER: batch.content_digest,
        }
        payload = batch.payload
        if self._payload_encoding:
            headers[CONTENT_ENCODING_HEADER] = self._payload_encoding
            payload = compress_payload(payload, self._payload_encoding)
        ack = await self._js.publish(self._subject, payload, timeout=self._timeout, headers=headers)
        return self._ack(batch, ack.seq, duplicate=bool(ack.duplicate))

    def _ack(self, batch: EncodedBatch, offset: int, *, duplicate: bool) -> PublishAck:
        ack = PublishAck(batch.sequence, offset, duplicate, batch.rows, batch.position, batch.read)
        self._recorder.record(ack)
        return ack

    async def _connect_until_closed(self) -> None:
        """Connect (again and again while no server answers), then check the stream and look for stored batches."""
        while not self._closed:
            try:
                self._nc = await nats.connect(
                    servers=self._servers,
                    connect_timeout=max(1, int(self._timeout)),
                    reconnect_time_wait=_RECONNECT_WAIT_S,
                    max_reconnect_attempts=-1,
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                    error_cb=self._error,
                    name="rxstreamer",
                )
            except Exception as error:  # no server answered: like a broker that is down, retried
                self._tell("TRANSIENT_FAILURE")
                log.debug("nats.connect_failed", servers=self._servers, error=str(error))
                await asyncio.sleep(_RECONNECT_WAIT_S * 4)
                continue
            break
        if self._nc is None:
            return
        js = self._nc.jetstream(timeout=self._timeout)
        try:
            while not self._closed:
                try:
                    await self._ensure_stream(js)
                    if self._resume is not None:
                        await self._find_stored(js, self._resume)
                except Exception as error:
                    if self._refusal is None and publish_error(error).retryable:  # no leader yet, say
                        log.debug("nats.stream_not_ready", stream=self._settings.stream, error=str(error))
                        await asyncio.sleep(_RECONNECT_WAIT_S * 4)
                        continue
                    if self._refusal is None:
                        self._refusal = PublishError(
                            "FAILED_PRECONDITION", f"cannot use the stream: {error}", final=True
                        )
                else:
                    self._js = js
                    self._tell("READY")
                break
        finally:
            self._ready.set()

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        """Create the stream when it is missing; refuse one whose subjects do not take ours."""
        name = self._settings.stream
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            replicas = self._settings.replicas or (3 if len(self._servers) >= 3 else 1)
            config = StreamConfig(
                name=name,
                subjects=[f"{SUBJECT_PREFIX}.>"],
                num_replicas=replicas,
                duplicate_window=self._settings.duplicate_window,
            )
            await js.add_stream(config)
            log.info(
                "nats.stream_created",
                stream=name,
                subjects=config.subjects,
                replicas=replicas,
                duplicate_window_s=self._settings.duplicate_window,
            )
            return
        subjects = list(info.config.subjects or [])
        if not any(subject_covers(pattern, self._subject) for pattern in subjects):
            self._refusal = PublishError(
                "INVALID_SETTING",
                f"the stream's subjects {subjects} do not take {self._subject!r}: add {SUBJECT_PREFIX}.> to them, "
                "or name another stream",
                final=True,
            )
            raise ValueError(self._refusal.message)

    async def _find_stored(self, js: JetStreamContext, resume: ResumePoint) -> None:
        """This producer's batches after the checkpoint's, stored since it was written (see the module docstring)."""
        info = await js.stream_info(self._settings.stream)
        first, last = info.state.first_seq, info.state.last_seq
        since = resume.acked_at - CLOCK_SKEW
        prefix = f"{self._topic}/{resume.producer_id}:"
        scanned = 0
        for seq in range(last, max(first, 1) - 1, -1):
            try:
                message = await js.get_msg(self._settings.stream, seq)
            except nats.js.errors.NotFoundError:
                continue  # deleted or purged
            scanned += 1
            msg_id = (message.headers or {}).get(MSG_ID_HEADER, "")
            if msg_id.startswith(prefix) and msg_id[len(prefix) :].isdigit():
                sequence = int(msg_id[len(prefix) :])
                if sequence <= resume.sequence:
                    break  # the checkpoint's own batch or older: everything after it was seen
                self._stored_before[sequence] = seq
            if message.time is not None and message.time < since:
                break
        log.info(
            "nats.resume_checked",
            stream=self._settings.stream,
            scanned=scanned,
            stored_after_checkpoint=sorted(self._stored_before),
        )

    async def _disconnected(self) -> None:
        if not self._closed:  # closing disconnects too: that is no outage
            self._tell("TRANSIENT_FAILURE")

    async def _reconnected(self) -> None:
        # Not "READY": a connection to another server says nothing of the stream (its leader may be the server
        # that was lost, and an election takes seconds). The next acknowledgement says the queue is back.
        log.debug("nats.reconnected", server=str(self._nc.connected_url) if self._nc is not None else None)

    async def _error(self, error: Exception) -> None:
        text = str(error)
        if "permissions violation" in text.lower():
            self._permission_error = f"the NATS server refused: {text.strip()}"
        log.debug("nats.error", error=text)

    # --- between the threads ------------------------------------------------------------------------------

    def _tell(self, state: str) -> None:
        if self._on_connectivity is not None:
            self._on_connectivity(state)

    def _answered(
        self, outcome: PublishAck | PublishError, observer: abc.ObserverBase[PublishAck], listening: list[bool]
    ) -> None:
        self._publish_ended()
        if not listening[0]:
            return

        def deliver(_: abc.SchedulerBase, __: Any = None) -> None:
            tell_observer(observer, outcome, listening)

        try:
            self._scheduler.schedule(deliver)
        except Exception as error:  # the scheduler is disposed: nobody listens any more
            log.debug("publisher.late_answer", error=str(error))

    def _call(self, coroutine: Coroutine[Any, Any, _T] | Awaitable[_T], timeout: float) -> _T | None:
        try:
            return asyncio.run_coroutine_threadsafe(_awaited(coroutine), self._loop).result(timeout)
        except Exception as error:
            log.debug("nats.close_failed", error=str(error))
            return None


async def _awaited(awaitable: Awaitable[_T]) -> _T:
    return await awaitable
