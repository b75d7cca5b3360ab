"""TLS and tokens for every gRPC connection: the files the settings name, read into gRPC credentials.

Every file is read once, when the command starts; one that is missing or unreadable is a ConfigError naming
its setting (exit status 2). No error message, log line or exception here ever holds a file's content.

Clients (the streamer's sink and ``tail``): TLS is on when ``message_queue.tls.ca`` or ``.cert`` is set. A
token (``message_queue.auth.token_file``, or ``.token``) is sent as call credentials, which gRPC only sends on
a secure channel: without TLS, a loopback address gets ``grpc.local_channel_credentials`` (which carries them),
and any other address is refused, so a token never crosses a network in the clear. Plaintext to an address
other than loopback is allowed (the deployment may terminate TLS elsewhere) with one warning.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from rxstreamer.config import ConfigError

if TYPE_CHECKING:
    from rxstreamer.config.declared import MessageQueueSettings

log = structlog.get_logger()

TOKEN_METADATA = "authorization"
TOKEN_SCHEME = "Bearer "

#: What gRPC's details say when a connection failed in its TLS handshake (or met TLS where it expected none).
_HANDSHAKE = re.compile(r"handshake|ssl|tls|certificate|wrong_version_number|alpn|verification check", re.IGNORECASE)


def read_file(setting: str, path: Path) -> bytes:
    """The file's bytes; a ConfigError naming ``setting`` when it is missing, unreadable or empty."""
    try:
        content = path.read_bytes()
    except OSError as error:
        raise ConfigError(setting, path, f"cannot be read: {error.strerror or type(error).__name__}") from None
    if not content.strip():
        raise ConfigError(setting, path, "is empty")
    return content


def is_loopback(target: str) -> bool:
    """Whether a gRPC target (``host:port``, ``[::1]:port``, ``unix:...``) stays on this machine."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    host = target.rpartition(":")[0].strip("[]") if ":" in target else target
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def looks_like_handshake_failure(details: str) -> bool:
    """Whether gRPC's details for UNAVAILABLE describe a TLS handshake failure (no retry can mend that)."""
    return _HANDSHAKE.search(details) is not None


@dataclass(frozen=True)
class ClientSecurity:
    """How a client connects: credentials (None: plaintext), channel options, and what it says about itself."""

    credentials: grpc.ChannelCredentials | None
    options: tuple[tuple[str, Any], ...]
    tls: bool
    token: bool
    certificate: bool = False  # a client certificate, for mutual TLS

    def channel(self, target: str, options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
        every = [*(options or []), *self.options]
        if self.credentials is None:
            return grpc.insecure_channel(target, options=every)
        return grpc.secure_channel(target, self.credentials, options=every)


def client_security(settings: MessageQueueSettings | None, target: str) -> ClientSecurity:
    """The credentials ``message_queue.tls`` and ``message_queue.auth`` ask for, to connect to ``target``."""
    if settings is None:
        return ClientSecurity(None, (), tls=False, token=False)
    tls, auth = settings.tls, settings.auth
    token = _token(settings)
    use_tls = tls.ca is not None or tls.cert is not None or tls.key is not None
    options: tuple[tuple[str, Any], ...] = ()
    channel: grpc.ChannelCredentials | None = None
    if use_tls:
        if (tls.cert is None) != (tls.key is None):
            missing = "message_queue.tls.key" if tls.key is None else "message_queue.tls.cert"
            raise ConfigError(missing, "", "must be set too: mutual TLS needs both cert and key")
        channel = grpc.ssl_channel_credentials(
            root_certificates=None if tls.ca is None else read_file("message_queue.tls.ca", tls.ca),
            private_key=None if tls.key is None else read_file("message_queue.tls.key", tls.key),
            certificate_chain=None if tls.cert is None else read_file("message_queue.tls.cert", tls.cert),
        )
        if tls.server_name:
            options = (("grpc.ssl_target_name_override", tls.server_name),)
    elif token is not None:
        if not is_loopback(target):
            setting = "message_queue.auth.token_file" if auth.token_file is not None else "message_queue.auth.token"
            raise ConfigError(
                setting,
                auth.token_file if auth.token_file is not None else "(set)",
                f"a token is only sent over TLS to {target}: set message_queue.tls.ca (plaintext carries a token "
                "to loopback addresses only)",
            )
        channel = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
    elif not is_loopback(target):
        log.warning(
            "mq.plaintext",
            address=target,
            meaning="connecting without TLS to an address other than loopback; set message_queue.tls.ca for TLS",
        )
    if token is not None:
        assert channel is not None
        channel = grpc.composite_channel_credentials(channel, grpc.access_token_call_credentials(token))
    return ClientSecurity(channel, options, tls=use_tls, token=token is not None, certificate=tls.cert is not None)


def client_token(settings: MessageQueueSettings) -> str | None:
    """The token ``message_queue.auth`` names (its file read now), or None; a ConfigError for a bad file."""
    return _token(settings)


def client_ssl_context(settings: MessageQueueSettings, *, force: bool = False) -> ssl.SSLContext | None:
    """An ``ssl.SSLContext`` from ``message_queue.tls``, for clients that take one (NATS); None when no TLS setting
    is set (and not ``force``). Without ``ca`` the system's CAs are trusted. Files are checked as for gRPC: one that
    is missing, unreadable, empty or not PEM is a ConfigError naming its setting (never quoting the file)."""
    tls = settings.tls
    if not force and tls.ca is None and tls.cert is None and tls.key is None and not tls.server_name:
        return None
    if (tls.cert is None) != (tls.key is None):
        missing = "message_queue.tls.key" if tls.key is None else "message_queue.tls.cert"
        raise ConfigError(missing, "", "must be set too: mutual TLS needs both cert and key")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if tls.ca is not None:
        ca = read_file("message_queue.tls.ca", tls.ca)
        try:
            context.load_verify_locations(cadata=ca.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError):
            raise ConfigError("message_queue.tls.ca", tls.ca, "holds no PEM certificate") from None
    if tls.cert is not None and tls.key is not None:
        read_file("message_queue.tls.cert", tls.cert)
        read_file("message_queue.tls.key", tls.key)
        try:
            context.load_cert_chain(str(tls.cert), str(tls.key))
        except (ssl.SSLError, ValueError):
            raise ConfigError(
                "message_queue.tls.cert", tls.cert, "and message_queue.tls.key are not a PEM certificate and its key"
            ) from None
    return context


def _token(settings: MessageQueueSettings) -> str | None:
    auth = settings.auth
    if auth.token_file is not None:
        token = read_file("message_queue.auth.token_file", auth.token_file).decode("utf-8", "replace").strip()
        if not token or any(character.isspace() for character in token):
            raise ConfigError("message_queue.auth.token_file", auth.token_file, "must hold one token on one line")
        return token
    return auth.token.strip() or None


@dataclass(frozen=True)
class ServerSecurity:
    """How the broker listens: credentials (None: plaintext) and whether clients must show a certificate."""

    credentials: grpc.ServerCredentials | None
    tls: bool
    mutual: bool


def server_security(tls_cert: Path | None, tls_key: Path | None, client_ca: Path | None, token: bool) -> ServerSecurity:
    """The broker's credentials from ``broker.tls``; with tokens and no TLS, local credentials (loopback only)."""
    if tls_cert is None and tls_key is None:
        if client_ca is not None:
            raise ConfigError("broker.tls.cert", "", "must be set: broker.tls.client_ca needs TLS (cert and key)")
        if token:  # carries the clients' call credentials on loopback connections
            return ServerSecurity(grpc.local_server_credentials(grpc.LocalConnectionType.LOCAL_TCP), False, False)
        return ServerSecurity(None, tls=False, mutual=False)
    if tls_cert is None or tls_key is None:
        missing = "broker.tls.cert" if tls_cert is None else "broker.tls.key"
        raise ConfigError(missing, "", "must be set too: TLS needs both broker.tls.cert and broker.tls.key")
    pair = (read_file("broker.tls.key", tls_key), read_file("broker.tls.cert", tls_cert))
    ca = None if client_ca is None else read_file("broker.tls.client_ca", client_ca)
    credentials = grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)
    return ServerSecurity(credentials, tls=True, mutual=ca is not None)


def explain_unavailable(details: str, target: str, security: ClientSecurity) -> str | None:
    """A one-line explanation when UNAVAILABLE means a TLS mismatch, which no retry can mend; else None.

    gRPC says so itself when this client's handshake fails ("Tls handshake failed", a certificate it does not
    trust, a plaintext server). A plaintext client meeting a TLS broker, and a client without a certificate
    meeting a broker that requires one, only see "Socket closed": a short probe of the address tells those apart
    from a broker that went away.
    """
    if looks_like_handshake_failure(details):
        if "WRONG_VERSION_NUMBER" in details:
            return f"TLS handshake with {target} failed: the queue does not speak TLS (unset message_queue.tls.*)"
        return f"TLS handshake with {target} failed ({_reason(details)}); check message_queue.tls.ca and server_name"
    if "socket closed" not in details.lower() or target.startswith("unix"):
        return None
    probed = _probe_tls(target, with_certificate=security.certificate)
    if probed == "tls" and not security.tls:
        return f"the queue at {target} speaks TLS and this client connects in plaintext: set message_queue.tls.ca"
    if probed == "certificate_required":
        return (
            f"the queue at {target} requires a client certificate (mutual TLS): set message_queue.tls.cert and "
            "message_queue.tls.key"
        )
    return None


def _reason(details: str) -> str:
    found = re.search(r"SSL routines:OPENSSL_internal:([A-Z_]+)", details)
    if found:
        return found.group(1)
    if "hostname verification" in details.lower():
        return "the certificate does not name this host"
    return "see the queue's certificate"


def _probe_tls(target: str, *, with_certificate: bool, timeout: float = 1.0) -> str | None:
    """ "tls" when ``target`` completes a TLS handshake, "certificate_required" when it then asks for a
    certificate this client lacks; None when it does not speak TLS or cannot be reached."""
    import socket

    host, _, port = target.rpartition(":")
    if not port.isdigit():
        return None
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as raw,
            context.wrap_socket(raw) as wrapped,
        ):
            if with_certificate:
                return "tls"
            # A broker that requires a certificate closes the connection right after the TLS 1.3 handshake (with
            # or without an alert); one that does not waits for the client to speak first, and the read times out.
            try:
                closed = wrapped.recv(1) == b""
            except ssl.SSLError as error:
                closed = "CERTIFICATE_REQUIRED" in str(error).upper() or "EOF" in str(error).upper()
            except OSError:  # the read timed out: the connection is open
                closed = False
            return "certificate_required" if closed else "tls"
    except (OSError, ssl.SSLError):
        return None
