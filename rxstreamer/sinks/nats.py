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

Security (``nats_security``): TLS from ``message_queue.tls`` (any of its settings turns it on), and one kind of
credentials: ``message_queue.nats.user`` with its password, the token of ``message_queue.auth``, or
``message_queue.nats.creds_file`` (a ``.creds`` file or an NKey user seed). What no retry can mend ends the run
at once (``refusal``): credentials the servers refuse, a permissions violation, TLS wanted on one side only, a
certificate not trusted. nats-py itself would retry those forever, and would connect in plaintext to a server
that does not offer TLS even when given a TLS context: ``_GuardedClient`` checks the server's INFO before
anything (credentials above all) is sent.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import ssl
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

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
from rxstreamer.sinks.base import AnsweredElsewhere, ResumePoint, SinkOptions
from rxstreamer.tls import client_ssl_context, client_token, is_loopback, read_file

if TYPE_CHECKING:
    from rxstreamer.config.declared import MessageQueueSettings

__all__ = [
    "SUBJECT_PREFIX",
    "InterruptedWaitError",
    "NatsRefusedError",
    "NatsSecurity",
    "NatsSink",
    "connect",
    "message_id",
    "nats_security",
    "refusal",
    "servers_of",
    "subject_covers",
    "unless_set",
]

log = structlog.get_logger()

SUBJECT_PREFIX = "rxstreamer"
MSG_ID_HEADER = "Nats-Msg-Id"
# How far before a checkpoint's time the resume scan still looks: the clocks of the streamer's host and of
# the NATS servers may disagree by this much.
CLOCK_SKEW = timedelta(minutes=5)
_RECONNECT_WAIT_S = 0.25
_FOREVER_S = 365 * 24 * 3600.0
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
    if isinstance(error, NatsRefusedError):
        return error.error
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


# --- security: TLS, credentials, and the refusals no retry mends -----------------------------------------------

_JWT_MARKER = b"-----BEGIN NATS USER JWT-----"
_SEED_MARKER = b"-----BEGIN USER NKEY SEED-----"


@dataclass(frozen=True)
class NatsSecurity:
    """How a NATS client connects: a TLS context (None: plaintext) and at most one kind of credentials.

    The password and the token are kept out of ``repr``; ``auth`` names the kind for messages ("user 'alice'",
    "a token", "the NKey seed in FILE") and never holds a secret.
    """

    tls: ssl.SSLContext | None = None
    tls_hostname: str | None = None
    certificate: bool = False  # a client certificate, for mutual TLS
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    creds_file: Path | None = None  # a .creds file: user JWT and seed
    nkey_seed_file: Path | None = None  # an NKey user seed alone
    auth: str = "no credentials"
    auth_settings: str = "message_queue.nats.user, message_queue.auth.token or message_queue.nats.creds_file"

    @property
    def sends_secret(self) -> bool:
        """Whether CONNECT carries a secret itself (a password, a token); an NKey only signs the server's nonce."""
        return self.password is not None or self.token is not None

    def connect_options(self) -> dict[str, Any]:
        """The keyword arguments of nats-py's ``connect`` for this security."""
        options: dict[str, Any] = {}
        if self.tls is not None:
            options["tls"] = self.tls
            if self.tls_hostname:
                options["tls_hostname"] = self.tls_hostname
        if self.user is not None:
            options.update(user=self.user, password=self.password)
        if self.token is not None:
            options["token"] = self.token
        if self.creds_file is not None:
            options["user_credentials"] = str(self.creds_file)
        if self.nkey_seed_file is not None:
            options["nkeys_seed"] = str(self.nkey_seed_file)
        return options


def nats_security(settings: MessageQueueSettings | None) -> NatsSecurity:
    """The TLS and credentials ``message_queue`` asks for, every file read and checked now (ConfigError, exit 2)."""
    if settings is None:
        return NatsSecurity()
    tls = client_ssl_context(settings)
    hostname = settings.tls.server_name or None
    nats_settings = settings.nats
    chosen: list[tuple[str, str]] = []  # (the setting, what a refusal says to check)
    user = password = None
    creds = seed = None
    auth = "no credentials"
    if nats_settings.user or nats_settings.password_file is not None or nats_settings.password:
        password = _password(settings)
        if not nats_settings.user:
            raise ConfigError("message_queue.nats.user", "", "must be set too: a password is a NATS user's")
        if password is None:
            raise ConfigError(
                "message_queue.nats.password_file", "", f"must be set too (or password): user {nats_settings.user!r}"
            )
        user, auth = nats_settings.user, f"user {nats_settings.user!r}"
        what = "password_file" if nats_settings.password_file is not None else "password"
        chosen.append(("message_queue.nats.user", f"message_queue.nats.user and message_queue.nats.{what}"))
    token = client_token(settings)
    if token is not None:
        auth = "a token"
        name = f"message_queue.auth.{'token_file' if settings.auth.token_file is not None else 'token'}"
        chosen.append((name, name))
    if nats_settings.creds_file is not None:
        creds, seed, auth = _creds(nats_settings.creds_file)
        chosen.append(("message_queue.nats.creds_file", "message_queue.nats.creds_file"))
    if len(chosen) > 1:
        raise ConfigError(chosen[1][0], "(set)", f"set only one kind of NATS credentials: {chosen[0][0]} is set too")
    check = chosen[0][1] if chosen else NatsSecurity.auth_settings
    certificate = settings.tls.cert is not None
    return NatsSecurity(tls, hostname, certificate, user, password, token, creds, seed, auth, check)


def _password(settings: MessageQueueSettings) -> str | None:
    nats_settings = settings.nats
    if nats_settings.password_file is not None:
        text = read_file("message_queue.nats.password_file", nats_settings.password_file).decode("utf-8", "replace")
        password = text.removesuffix("\n").removesuffix("\r")
        if "\n" in password or "\r" in password:
            raise ConfigError("message_queue.nats.password_file", nats_settings.password_file, "must hold one line")
        return password
    return nats_settings.password or None


def _creds(path: Path) -> tuple[Path | None, Path | None, str]:
    """(creds file, seed file, what it is) for ``message_queue.nats.creds_file``, its content checked."""
    setting = "message_queue.nats.creds_file"
    content = read_file(setting, path)
    if importlib.util.find_spec("nkeys") is None:
        raise ConfigError(setting, path, "needs the nkeys package: pip install 'rxstreamer[nats]'")
    nkeys = importlib.import_module("nkeys")
    if _JWT_MARKER in content:
        lines = content.splitlines()
        at = next((i for i, line in enumerate(lines) if _SEED_MARKER in line), None)
        seed = lines[at + 1].strip() if at is not None and at + 1 < len(lines) else b""
        what: tuple[Path | None, Path | None, str] = (path, None, f"the credentials in {path}")
    else:
        seed = content.strip()
        what = (None, path, f"the NKey seed in {path}")
    try:
        if not seed.startswith(b"SU"):
            raise ValueError
        nkeys.from_seed(bytearray(seed)).wipe()
    except Exception:
        raise ConfigError(
            setting, path, "is neither a NATS .creds file nor an NKey user seed (one line starting with SU)"
        ) from None
    return what


class InterruptedWaitError(Exception):
    """``unless_set`` gave up on its awaitable (cancelled): its event was set, or its time ran out."""


async def unless_set(awaitable: Awaitable[_T], event: asyncio.Event, timeout: float | None = None) -> _T:
    """The awaitable's result, unless ``event`` is set or ``timeout`` passes first: then it is cancelled and
    ``InterruptedWaitError`` raised, for the caller to say why (a refused connection, a closed one, time)."""
    task = asyncio.ensure_future(awaitable)
    interrupted = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({task, interrupted}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        interrupted.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise InterruptedWaitError


class NatsRefusedError(Exception):
    """What no retry can mend, met while connecting or on the connection: ``error`` says what and what to set."""

    def __init__(self, error: PublishError) -> None:
        super().__init__(error.message)
        self.error = error


class _RefusedConnectionError(nats.errors.Error):
    """Raised by ``_GuardedClient`` before it sends CONNECT: the client's own refusal, with its message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class _GuardedClient(Client):
    """nats-py's client, which checks the server's INFO before sending CONNECT (and the credentials in it).

    nats-py upgrades to TLS when the server requires it, and otherwise stays in plaintext even when given a TLS
    context: with TLS asked for, that would send the credentials in the clear to a server (or a man in the middle)
    without TLS. So: TLS asked for and not offered is refused; a password or token over plaintext is sent to a
    loopback address only, as gRPC's tokens are.
    """

    def __init__(self, security: NatsSecurity) -> None:
        super().__init__()
        self._security = security

    def _connect_command(self) -> bytes:
        server = self._current_server
        where = "the NATS server" if server is None else f"the NATS server at {server.uri.netloc}"
        secure = bool(self._server_info.get("tls_required"))
        if self._security.tls is not None and not secure:
            raise _RefusedConnectionError(
                f"{where} does not offer TLS and message_queue.tls.* asks for it: enable tls on the servers, or "
                "unset message_queue.tls.*"
            )
        host = "" if server is None else server.uri.hostname or ""
        if self._security.sends_secret and not secure and not is_loopback(host):
            raise _RefusedConnectionError(
                f"{where} does not use TLS: {self._security.auth_settings} is only sent over TLS to an address other "
                "than loopback; enable tls on the servers and set message_queue.tls.ca"
            )
        return super()._connect_command()


def refusal(  # noqa: PLR0911 (one answer per kind of failure)
    error: BaseException, servers: Sequence[str], security: NatsSecurity
) -> PublishError | None:
    """The final error a failure of the connection means, or None when a retry may mend it."""
    where = ", ".join(urlparse(server).netloc for server in servers)
    text = str(error)
    lowered = text.lower()
    if isinstance(error, _RefusedConnectionError):
        return PublishError("FAILED_PRECONDITION", error.message, final=True)
    if isinstance(error, nats.errors.AuthorizationError) or "authorization violation" in lowered:
        if security.auth == "no credentials":
            return PublishError(
                "UNAUTHENTICATED",
                f"authentication failed: the NATS servers at {where} require credentials (Authorization Violation), "
                f"and none are set: set {security.auth_settings}",
                final=True,
            )
        return PublishError(
            "UNAUTHENTICATED",
            f"authentication failed: the NATS servers at {where} refused {security.auth} (Authorization Violation); "
            f"check {security.auth_settings}",
            final=True,
        )
    if "authentication expired" in lowered or "authentication revoked" in lowered:
        return PublishError(
            "UNAUTHENTICATED", f"authentication failed: {text.strip()}; check {security.auth_settings}", final=True
        )
    if "permissions violation" in lowered:
        return PublishError(
            "PERMISSION_DENIED",
            f"the NATS servers refused: {text.strip()} (the user lacks that permission, see Security)",
            final=True,
        )
    if isinstance(error, ssl.SSLCertVerificationError):
        if security.tls is None:
            return PublishError(
                "FAILED_PRECONDITION",
                f"the NATS servers at {where} require TLS, and their certificate is not one the system trusts "
                f"({error.verify_message}): set message_queue.tls.ca to the CA that signed it",
                final=True,
            )
        return PublishError(
            "FAILED_PRECONDITION",
            f"TLS handshake with the NATS servers at {where} failed: {error.verify_message}; check "
            "message_queue.tls.ca and message_queue.tls.server_name",
            final=True,
        )
    if isinstance(error, ssl.SSLError):
        reason = error.reason or type(error).__name__
        if "CERTIFICATE_REQUIRED" in reason.upper() or "BAD_CERTIFICATE" in reason.upper():
            if not security.certificate:
                return PublishError(
                    "FAILED_PRECONDITION",
                    f"the NATS servers at {where} require a client certificate (mutual TLS): set "
                    "message_queue.tls.cert and message_queue.tls.key",
                    final=True,
                )
            return PublishError(
                "FAILED_PRECONDITION",
                f"the NATS servers at {where} refused this client's certificate ({reason}): check "
                "message_queue.tls.cert (signed by a CA the servers trust?)",
                final=True,
            )
        return PublishError(
            "FAILED_PRECONDITION",
            f"TLS handshake with the NATS servers at {where} failed ({reason}); check message_queue.tls.*",
            final=True,
        )
    if "secure connection" in lowered and "required" in lowered:  # the server's -ERR for a client without TLS
        return PublishError(
            "FAILED_PRECONDITION",
            f"the NATS servers at {where} require TLS: set message_queue.tls.ca",
            final=True,
        )
    return None


async def connect(
    servers: Sequence[str],
    security: NatsSecurity,
    *,
    connect_timeout: float,
    error_cb: Callable[[Exception], Awaitable[None]] | None = None,
    **options: Any,
) -> Client:
    """A connection to the first server that answers, tried again and again while none does; NatsRefusedError
    at once for what no retry mends (wrong credentials, a TLS mismatch), which nats-py itself retries forever."""
    if security.tls is not None:
        _quiet_tls_eof_warning()
    client = _GuardedClient(security)
    refused: asyncio.Future[PublishError] = asyncio.get_running_loop().create_future()

    async def on_error(error: Exception) -> None:
        final = refusal(error, servers, security)
        if final is not None and not refused.done():
            refused.set_result(final)
        if error_cb is not None:
            await error_cb(error)

    connecting = asyncio.ensure_future(
        client.connect(
            servers=list(servers),
            connect_timeout=max(1, int(connect_timeout)),
            max_reconnect_attempts=-1,
            error_cb=on_error,
            **security.connect_options(),
            **options,
        )
    )
    waiting: set[asyncio.Future[Any]] = {connecting, refused}
    try:
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the sink closes while no server answers: stop trying
        connecting.cancel()
        raise
    if refused.done():
        connecting.cancel()
        await asyncio.gather(connecting, return_exceptions=True)
        await asyncio.gather(client.close(), return_exceptions=True)
        raise NatsRefusedError(refused.result())
    refused.cancel()
    await connecting
    return client


_TLS_EOF_WARNING = "returning true from eof_received() has no effect when using ssl"


class _NoTlsEofWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != _TLS_EOF_WARNING


def _quiet_tls_eof_warning() -> None:
    """nats-py's TLS transport (a StreamReaderProtocol under ``start_tls``) makes asyncio log this harmless warning
    at every close, as a plain line on stderr among the JSON ones: it is dropped, nothing else of asyncio's."""
    logger = logging.getLogger("asyncio")
    if not any(isinstance(existing, _NoTlsEofWarning) for existing in logger.filters):
        logger.addFilter(_NoTlsEofWarning())


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
        self._security = nats_security(options.settings)  # ConfigError for a TLS, password or creds file
        # No channel compression in NATS: gzip and zstd both compress the payload, named in content-encoding.
        compression = options.settings.compression
        self._payload_encoding = "" if compression == "none" else compression
        self._timeout = options.timeout
        self._on_connectivity = options.on_connectivity
        self._resume = options.resume
        super().__init__(options.scheduler)
        self._closed = False
        self._stored_before: dict[int, int] = {}  # this producer's sequences found stored after the checkpoint
        # Set when no publish can ever succeed: the stream cannot take our batches, the servers refused this
        # client (credentials, permissions, TLS); ``_refused`` wakes whatever waits on the connection then.
        self._refusal: PublishError | None = None
        self._refused = asyncio.Event()
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
            future.add_done_callback(lambda done: self._answer(done.result(), observer, listening))
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
        """One attempt: never raises, and never outlives ``publish_timeout`` (plus a second for the client), nor a
        refusal of the connection (a permissions violation is answered by no reply, only by an error)."""
        try:
            return await self._unless_refused(self._attempt(batch), self._timeout + 1.0)
        except Exception as error:
            if self._refusal is not None:
                return self._refusal
            return publish_error(error)

    async def _unless_refused(self, awaitable: Awaitable[_T], timeout: float) -> _T:
        """The awaitable's result within ``timeout`` (TimeoutError), or NatsRefusedError as soon as the connection
        is refused."""
        try:
            return await unless_set(awaitable, self._refused, timeout)
        except InterruptedWaitError:
            if self._refusal is not None:
                raise NatsRefusedError(self._refusal) from None
            raise TimeoutError from None

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
                self._nc = await connect(
                    self._servers,
                    self._security,
                    connect_timeout=self._timeout,
                    reconnect_time_wait=_RECONNECT_WAIT_S,
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                    closed_cb=self._closed_by_client,
                    error_cb=self._error,
                    name="rxstreamer",
                )
            except NatsRefusedError as refused:  # wrong credentials, a TLS mismatch: no retry mends them
                self._refuse(refused.error)
                self._ready.set()
                return
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
                    await self._unless_refused(self._check_stream(js), _FOREVER_S)
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

    async def _check_stream(self, js: JetStreamContext) -> None:
        await self._ensure_stream(js)
        if self._resume is not None:
            await self._find_stored(js, self._resume)

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
        final = refusal(error, self._servers, self._security)
        if final is not None:
            self._refuse(final)
        log.debug("nats.error", error=str(error))

    async def _closed_by_client(self) -> None:
        """nats-py closes the connection itself after some errors (an authorization violation while connected):
        nothing will reconnect it, so no publish can succeed any more."""
        if self._closed or self._refusal is not None or self._nc is None:  # None: ``connect`` tells why itself
            return
        last = self._nc.last_error if self._nc is not None else None
        final = None if last is None else refusal(last, self._servers, self._security)
        self._refuse(
            final or PublishError("UNAVAILABLE", f"the NATS client closed its connection ({last})", final=True)
        )

    def _refuse(self, error: PublishError) -> None:
        if self._refusal is None:
            self._refusal = error
        self._refused.set()

    # --- between the threads ------------------------------------------------------------------------------

    def _tell(self, state: str) -> None:
        if self._on_connectivity is not None:
            self._on_connectivity(state)

    def _call(self, coroutine: Coroutine[Any, Any, _T] | Awaitable[_T], timeout: float) -> _T | None:
        try:
            return asyncio.run_coroutine_threadsafe(_awaited(coroutine), self._loop).result(timeout)
        except Exception as error:
            log.debug("nats.close_failed", error=str(error))
            return None


async def _awaited(awaitable: Awaitable[_T]) -> _T:
    return await awaitable
